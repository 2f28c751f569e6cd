"""Runs whole-scene jobs in the service: queued in the store, tiles through the shared batchers at low priority.

A job reads its scene window by window (an upload saved on the jobs volume, or a remote COG read
by ranges), sends each batch of tiles to the specialist's batcher as ``BACKGROUND`` work (an
interactive request's tiles always go first), blends in a worker thread and hands final rows to
a :class:`~mapex_serve.jobs.outputs.StripWriter`. Memory is the window, the batch and one strip.

State lives in the store, so a restart loses nothing finished: jobs that were running go back to
the queue and resume after their last recorded strip (up to ``MAPEX_JOB_MAX_ATTEMPTS`` starts);
finished results expire after ``MAPEX_JOB_TTL_H``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from mapex_serve.batcher import BACKGROUND
from mapex_serve.errors import MapexError
from mapex_serve.inputs import RequestScene, SourceFile
from mapex_serve.jobs.models import JobRequest
from mapex_serve.jobs.outputs import NODATA_LABEL, PROBABILITY_SCALE, StripWriter, strip_name, write_cog
from mapex_serve.jobs.sources import ResolvedSources, fetch_item, redacted, resolve_stac, resolve_urls
from mapex_serve.jobs.store import JobRecord, JobStore, StripRecord, now
from mapex_serve.predict import (
    Prediction,
    UnreadableRasterError,
    open_and_route,
    overlap_for,
    pipeline,
    unreadable_as_400,
)
from mapex_serve.repository import Manifest
from mapex_serve.responses import as_geotiff, as_json, grid_report, inputs_summary, palette
from mapex_serve.routing import Route
from mapex_serve.scene_reader import SceneReader
from mapex_serve.state import ServiceState
from mapex_serve.tiling import ClassAggregator, MaskBlender, Tile, TileBatch, read_batches, tile_cells, tile_grid
from mapex_serve.units import UnitOverrides
from mapex_serve.vectorize import mask_polygons

__all__ = ["JobRunner", "Progress", "opened_scene", "resolve_sources"]

log = logging.getLogger("mapex_serve.jobs")

#: How often a running job's progress is written to the store (the live figure is in memory).
_SAVE_EVERY_S = 1.0


@dataclass
class Progress:
    """A running job's progress in this process: tiles, and the rate since it (re)started."""

    done: int
    total: int
    started: float
    done_at_start: int

    @property
    def eta_s(self) -> float | None:
        elapsed, run = time.monotonic() - self.started, self.done - self.done_at_start
        if run <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) / (run / elapsed)


def resolve_sources(request: JobRequest, uploads: list[tuple[str, Path]], prefixes: list[str]) -> ResolvedSources:
    """The scene's files: the saved upload, the URLs, or the STAC item's assets."""
    if uploads:
        return ResolvedSources([SourceFile(name, str(path)) for name, path in uploads])
    if request.url:
        return resolve_urls([request.url] if isinstance(request.url, str) else request.url, prefixes)
    item, item_url = request.stac_item, None
    if isinstance(item, str):
        item, item_url = fetch_item(item, prefixes), item
    return resolve_stac(item, request.assets, item_url, prefixes)


def overrides_for(request: JobRequest, sources: ResolvedSources) -> UnitOverrides:
    """The catalogue's units, scale and offset, with what the caller says winning over them."""
    caller = UnitOverrides.parse(request.units, request.scale, request.offset)
    cat = sources.overrides

    def merged(which: str) -> dict:
        mine, theirs = getattr(caller, which), getattr(cat, which)
        return dict(mine) if None in mine else {**theirs, **mine}  # the caller's "every band" beats per-band entries

    return UnitOverrides(merged("units"), merged("scale"), merged("offset"))


def opened_scene(request: JobRequest, sources: ResolvedSources, manifests: list[Manifest],
                 max_pixels: int) -> tuple[RequestScene, Route, SceneReader]:
    """``(scene, route, reader)``: the files opened, routed and their units decided (GDAL work: run in a thread)."""
    bands = request.bands.split(",") if request.bands else sources.bands
    return open_and_route(sources.files, bands, manifests, request.modality, overrides_for(request, sources), max_pixels)


def _sources_to_json(sources: ResolvedSources) -> dict[str, Any]:
    o = sources.overrides
    return {"files": [{"name": f.name, "path": f.path, "nodata": list(f.nodata) if f.nodata else None}
                      for f in sources.files],
            "bands": sources.bands, "units": dict(o.units), "scale": dict(o.scale), "offset": dict(o.offset),
            "described": sources.described}


def _sources_from_json(d: dict[str, Any]) -> ResolvedSources:
    files = [SourceFile(f["name"], f["path"], tuple(f["nodata"]) if f["nodata"] else None) for f in d["files"]]
    return ResolvedSources(files, d["bands"], UnitOverrides(d["units"], d["scale"], d["offset"]), d["described"])


class JobRunner:
    """The jobs of one service: submission, a dispatcher that runs ``job_concurrency`` at once, cancel, expiry."""

    def __init__(self, state: ServiceState, store: JobStore) -> None:
        self.state, self.store = state, store
        self.settings = state.settings
        self.progress: dict[str, Progress] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: jobs that were running go back to the queue (they resume from their strips)."""
        for job in self.store.in_state("running"):
            log.info("job %s was running when the service stopped; it resumes", job.id)
            self.store.update(job.id, state="queued")

    def start(self) -> None:
        self.recover()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._dispatch(), name="jobs-dispatch"),
                       loop.create_task(self._expire_loop(), name="jobs-expire")]

    async def stop(self) -> None:
        """Stop running jobs where they are: they stay queued and resume on the next start."""
        for task in [*self._tasks, *self._running.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running.values(), return_exceptions=True)
        self.store.close()

    # -- the API's operations -----------------------------------------------------------------------

    def submit(self, task: str, request: JobRequest, sources: ResolvedSources, route: dict[str, Any],
               job_id: str | None = None) -> JobRecord:
        record = JobRecord(job_id or new_id(), task, "queued",
                           {"options": request.model_dump(mode="json"), "sources": _sources_to_json(sources)},
                           created=now(), route=route)
        self.store.create(record)
        self._wake.set()
        return record

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job; its partial files are removed."""
        self._cancelled.add(job_id)
        self.store.update(job_id, state="cancelled", finished=now())
        if job_id in self._running:
            self._running[job_id].cancel()
        else:
            self._remove_partials(job_id)

    # -- running ------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()
            free = self.settings.job_concurrency - len(self._running)
            waiting = [j for j in self.store.in_state("queued") if j.id not in self._running]
            for job in waiting[:max(free, 0)]:
                task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
                self._running[job.id] = task
                task.add_done_callback(lambda _t, i=job.id: (self._running.pop(i, None), self._wake.set()))
            await self._wake.wait()

    async def _run(self, job: JobRecord) -> None:
        if job.id in self._cancelled:
            return
        attempts = job.attempts + 1
        if attempts > self.settings.job_max_attempts:
            self._fail(job.id, "JobInterruptedError", f"the job was started {job.attempts} times and interrupted each "
                       f"time (MAPEX_JOB_MAX_ATTEMPTS); submit it again")
            return
        self.store.update(job.id, state="running", attempts=attempts, started=job.started or now())
        try:
            summary = await self._execute(job)
        except asyncio.CancelledError:
            if job.id in self._cancelled:
                self._remove_partials(job.id)
            else:  # the service is stopping: the job stays to be resumed
                self.store.update(job.id, state="queued")
            raise
        except MapexError as e:
            self._fail(job.id, type(e).__name__, redacted(str(e), _sources_from_json(job.request["sources"]).files))
        except Exception as e:  # noqa: BLE001 - a job's failure is recorded, never the service's
            log.exception("job %s failed", job.id)
            self._fail(job.id, "InternalError", f"the job failed unexpectedly ({type(e).__name__}: {e}); the service "
                       f"log has the details")
        else:
            self.store.update(job.id, state="done", finished=now(), summary=summary)
            self._remove_inputs(job.id)
        finally:
            self.progress.pop(job.id, None)

    def _fail(self, job_id: str, error: str, detail: str) -> None:
        self.store.update(job_id, state="failed", finished=now(), error={"error": error, "detail": detail})
        self._remove_partials(job_id)

    async def _execute(self, job: JobRecord) -> dict[str, Any]:
        request = JobRequest.model_validate(job.request["options"])
        sources = _sources_from_json(job.request["sources"])
        manifests = [s.manifest for s in self.state.registry.for_task(job.task)]
        scene, route, reader = await asyncio.to_thread(opened_scene, request, sources, manifests,
                                                       self.settings.job_max_pixels)
        with scene, unreadable_as_400():
            manifest = route.manifest
            folder = self.store.folder(job.id)
            if job.route and (job.route.get("specialist"), job.route.get("version")) != (manifest.name, manifest.version):
                log.info("job %s now routes to %s v%s: it starts over", job.id, manifest.name, manifest.version)
                self.store.clear_strips(job.id)  # strips of another model version do not mix with this one's
                self.store.update(job.id, route={**job.route, "specialist": manifest.name, "version": manifest.version})
            if manifest.head == "mask":
                return await self._run_mask(job, request, route, reader, scene, folder)
            return await self._run_classes(job, route, reader, scene, folder)

    def _tiles(self, reader: SceneReader, manifest: Manifest, resume_row: int) -> tuple[list[Tile], list[Tile], int]:
        """The grid, the tiles still to run (those reaching below ``resume_row``: whole tile rows, a suffix of the
        grid) and the first row they start at."""
        size = manifest.tile_size
        tiles = tile_grid(reader.height, reader.width, size, overlap_for(size))
        todo = [t for t in tiles if int(t.window.row_off) + size > resume_row]
        return tiles, todo, (int(todo[0].window.row_off) if todo else 0)

    async def _feed(self, job_id: str, reader: SceneReader, route: Any, tiles: list, todo: list,
                    add: Callable[[Any, np.ndarray], None]) -> int:
        """Every tile of ``todo`` read, run at background priority and handed to ``add`` in a worker thread."""
        manifest = route.manifest
        batcher = self.state.batchers[manifest.name]
        progress = Progress(len(tiles) - len(todo), len(tiles), time.monotonic(), len(tiles) - len(todo))
        columns = tiles[-1].col + 1
        self.progress[job_id] = progress
        self.store.update(job_id, tiles_total=len(tiles), tiles_done=progress.done)
        batches = read_batches(reader, todo, self.settings.max_batch, [b.mean for b in manifest.bands])
        saved, seen = time.monotonic(), 0

        async def consume(batch: TileBatch, probs: np.ndarray) -> None:
            nonlocal saved, seen
            await asyncio.to_thread(add, batch, probs)
            seen += len(batch.tiles)
            last = batch.tiles[-1]  # skipped tiles (all invalid) count as done: the total is the grid's
            progress.done = last.row * columns + last.col + 1
            if time.monotonic() - saved > _SAVE_EVERY_S:
                self.store.update(job_id, tiles_done=progress.done)
                saved = time.monotonic()

        await pipeline(batches, lambda batch, _k: batcher.submit(batch.data, admit=False, priority=BACKGROUND),
                       consume, ahead=batcher.runners + 1)
        progress.done = len(tiles)
        self.store.update(job_id, tiles_done=len(tiles))
        return seen

    async def _run_mask(self, job: JobRecord, request: JobRequest, route: Any, reader: SceneReader, scene: Any,
                        folder: Path) -> dict[str, Any]:
        manifest = route.manifest
        size, k, g = manifest.tile_size, len(manifest.classes), reader.grid
        strips = self._finished_strips(job.id, folder / "strips")
        resume_row = sum(s.height for s in strips)
        if resume_row:
            log.info("job %s resumes at row %d of %d", job.id, resume_row, g.height)
        writer = StripWriter(folder / "strips", crs=g.crs, transform=g.transform, height=g.height, width=g.width,
                             n_classes=k, probabilities=request.probabilities, resume_row=resume_row,
                             masked=reader.masked, record=lambda s: self.store.add_strip(job.id, s))
        tiles, todo, start = self._tiles(reader, manifest, resume_row)
        if todo:
            blender = MaskBlender(g.height, g.width, k, size, overlap_for(size), sink=writer.add, start_row=start,
                                  keep_probabilities=request.probabilities)

            def add(batch: Any, probs: np.ndarray) -> None:
                blender.add_batch(batch.tiles, probs, batch.valid)

            await self._feed(job.id, reader, route, tiles, todo, add)
            await asyncio.to_thread(blender.finish)
        strips = self.store.strips(job.id)
        return await asyncio.to_thread(self._mask_results, job, request, route, scene, reader, folder, strips)

    def _finished_strips(self, job_id: str, folder: Path) -> list[StripRecord]:
        """The strips recorded and on disk, contiguous from the top (a resumed job starts after them)."""
        done = []
        for s in self.store.strips(job_id):
            if s.row != sum(d.height for d in done) or not (folder / strip_name("labels", s.index)).exists():
                break
            done.append(s)
        return done

    def _mask_results(self, job: JobRecord, request: JobRequest, route: Any, scene: Any, reader: SceneReader,
                      folder: Path, strips: list[StripRecord]) -> dict[str, Any]:
        manifest, g = route.manifest, reader.grid
        pixels = np.sum([s.stats["pixels"] for s in strips], axis=0)
        areas = [s.stats["area_m2"] for s in strips]
        area = None if any(a is None for a in areas) else np.sum(areas, axis=0)
        masked: dict[str, int] = {}
        for s in strips:
            for why, n in s.stats["masked"].items():
                masked[why] = masked.get(why, 0) + n
        if int(pixels.sum()) == 0:
            reasons = ", ".join(f"{n:,} {why}" for why, n in masked.items())
            raise UnreadableRasterError(f"the raster has no valid pixels (all nodata, NaN or masked: {reasons})")
        common = dict(crs=g.crs, transform=g.transform, width=g.width, height=g.height)
        inputs = [b.report() for b in scene.bands]
        tags = {"specialist": manifest.name, "version": str(manifest.version), "bands": ",".join(route.bands),
                "classes": ",".join(f"{i}={c}" for i, c in enumerate(manifest.classes)),
                "inputs": json.dumps([i for i in inputs if i["used"]])}
        write_cog(folder / "strips", "labels", folder / "result.tif", strips, bands=1,
                  descriptions=[f"{manifest.task} class"], metadata=tags, colors=palette(len(manifest.classes)),
                  **common)
        outputs = ["geotiff", "json"]
        if request.probabilities:
            write_cog(folder / "strips", "probabilities", folder / "probabilities.tif", strips,
                      bands=len(manifest.classes), descriptions=[f"probability of {c}" for c in manifest.classes],
                      metadata=tags, scale=1 / PROBABILITY_SCALE, **common)
            outputs.append("probabilities")
        if request.geojson and g.crs is not None:
            include = request.geojson_classes_for(manifest.classes)
            with rasterio.open(folder / "result.tif") as ds:
                collection = mask_polygons(rasterio.band(ds, 1), classes=manifest.classes, crs=g.crs,
                                           transform=g.transform, nodata=NODATA_LABEL, include=include,
                                           simplify=request.simplify, min_area_m2=request.min_area_m2)
            _write_json(folder / "result.geojson", collection)
            outputs.append("geojson")
        shutil.rmtree(folder / "strips", ignore_errors=True)
        self.store.clear_strips(job.id)
        total = int(pixels.sum())
        classes = {}
        for i, name in enumerate(manifest.classes):
            entry: dict[str, Any] = {"pixels": int(pixels[i]), "fraction": float(pixels[i]) / total}
            if area is not None:
                entry |= {"area_m2": float(area[i]), "area_km2": float(area[i]) / 1e6}
            classes[name] = entry
        return {"task": manifest.task, "specialist": manifest.name, "version": manifest.version,
                "bands": list(route.bands), "provider": self.state.registry.specialists[manifest.name].engine.provider,
                "data": f"model trained on {manifest.data} data", "classes": classes, "valid_pixels": total,
                "inputs": inputs,
                "grid": grid_report(g.crs, g.transform, g.width, g.height, reader.resampled),
                "masked_pixels": {"total": sum(masked.values()), "by_reason": masked},
                "catalogue": job.request["sources"]["described"], "outputs": outputs}

    async def _run_classes(self, job: JobRecord, route: Any, reader: SceneReader, scene: Any,
                           folder: Path) -> dict[str, Any]:
        """Class heads: one label per tile, small enough to aggregate in memory; the run starts over on resume."""
        manifest = route.manifest
        size, k, g = manifest.tile_size, len(manifest.classes), reader.grid
        tiles, todo, _ = self._tiles(reader, manifest, 0)
        rows, cols = max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1
        aggregator = ClassAggregator(rows, cols, k)

        def add(batch: Any, probs: np.ndarray) -> None:
            for tile, p, valid in zip(batch.tiles, probs, batch.valid, strict=True):
                aggregator.add(tile, p, valid)

        if await self._feed(job.id, reader, route, tiles, todo, add) == 0:
            raise UnreadableRasterError("the raster has no valid pixels (all nodata, NaN or masked)")
        p = Prediction(route, {"crs": g.crs, "transform": g.transform, "width": g.width, "height": g.height},
                       classes=aggregator.result(), tile_stride=size - overlap_for(size),
                       tile_rows=tile_cells(g.height, size, overlap_for(size)),
                       tile_cols=tile_cells(g.width, size, overlap_for(size)),
                       inputs=[b.report() for b in scene.bands], masked=reader.masked(), resampled=reader.resampled)
        folder.mkdir(parents=True, exist_ok=True)
        data = await asyncio.to_thread(as_geotiff, p)
        tmp = folder / "result.tif.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / "result.tif")
        summary = as_json(p, self.state.registry.specialists[manifest.name].engine.provider)
        summary["inputs_used"] = inputs_summary(p)
        summary["outputs"] = ["geotiff", "json"]
        return summary

    # -- files and expiry ---------------------------------------------------------------------------

    def _remove_inputs(self, job_id: str) -> None:
        shutil.rmtree(self.store.folder(job_id) / "input", ignore_errors=True)

    def _remove_partials(self, job_id: str) -> None:
        """A failed or cancelled job keeps its state and error, not its files."""
        shutil.rmtree(self.store.folder(job_id), ignore_errors=True)
        self.store.clear_strips(job_id)

    def expire(self) -> int:
        """Remove the results of jobs finished more than ``job_ttl_h`` ago; their state stays (GET answers 410)."""
        old = self.store.finished_before(now() - self.settings.job_ttl_h * 3600)
        for job in old:
            shutil.rmtree(self.store.folder(job.id), ignore_errors=True)
            self.store.update(job.id, expired=True)
        return len(old)

    async def _expire_loop(self) -> None:
        every = min(self.settings.job_ttl_h * 3600 / 10, 600)
        while True:
            await asyncio.to_thread(self.expire)
            await asyncio.sleep(every)


def new_id() -> str:
    return uuid.uuid4().hex


def _write_json(path: Path, body: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(tmp, path)

