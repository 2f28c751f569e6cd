"""Runs whole-scene jobs in the service: queued in the store, tiles through the shared batchers at low priority.

A job's scene (an upload saved on the jobs volume, or a remote COG read by ranges) is opened,
read window by window, blended and written by decode workers (:class:`~mapex_serve.jobs.scene.JobScene`
in :mod:`mapex_serve.decode.job_session`), as ``/predict`` uploads are: with a GPU engine a mask
job's rows are split into strip-aligned parts, one a worker, so that a lone scene gets every worker
(``part_count``). With ``MAPEX_DECODE_WORKERS=0`` the same work runs in service threads, one part
after another. The service sends each batch of tiles to the specialist's batcher as ``BACKGROUND``
work (an interactive request's tiles always go first) and records each strip of final rows as the
worker writes it. Memory is the window, the batch and one strip.
A worker that dies under a job is replaced; the job resumes on the fresh one after its recorded
strips, and fails (``DecodeUnavailableError``: submit it again) if that worker dies too.

State lives in the store, so a restart loses nothing finished: jobs that were running go back to
the queue and resume after their last recorded strip (up to ``MAPEX_JOB_MAX_ATTEMPTS`` starts);
finished results expire after ``MAPEX_JOB_TTL_H``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import numpy as np

from mapex_serve.acquired import acquisition, raster_sensed
from mapex_serve.archives import unpack_file
from mapex_serve.batcher import BACKGROUND
from mapex_serve.cores import service_cores
from mapex_serve.decode.pool import DecodePool, DecodeUnavailableError, WorkerLostError, part_count, run_all
from mapex_serve.decode.slab import SlabSpaceError
from mapex_serve.dimap import file_sensed
from mapex_serve.errors import MapexError
from mapex_serve.inputs import SourceFile
from mapex_serve.jobs.models import MAX_ITEMS, JobError, JobProgress, JobRequest, JobStatus
from mapex_serve.jobs.notify import notify
from mapex_serve.jobs.outputs import STRIP_ROWS, strip_name
from mapex_serve.jobs.scene import JobPlan, JobScene, checked_route, scene_tiles
from mapex_serve.jobs.signing import from_planetary_computer, resigned, signed_item
from mapex_serve.jobs.sources import (
    ResolvedSources,
    archive_at,
    fetch_archive,
    one_acquisition,
    redacted,
    resolve_stac,
    resolve_urls,
    self_link,
    stac_items,
)
from mapex_serve.jobs.store import JobRecord, JobStore, StripRecord, now
from mapex_serve.predict import pipeline, unreadable_as_400
from mapex_serve.repository import Manifest
from mapex_serve.state import ServiceState
from mapex_serve.tiling import TileBatch
from mapex_serve.units import UnitOverrides

if TYPE_CHECKING:
    from mapex_serve.decode.job_session import JobStep
    from mapex_serve.decode.pool import WorkerJob

__all__ = ["JobRunner", "Progress", "fetched_sources", "resolve_sources"]

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
    saved: float = 0.0  # when ``done`` was last written to the store

    @property
    def eta_s(self) -> float | None:
        elapsed, run = time.monotonic() - self.started, self.done - self.done_at_start
        if run <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) / (run / elapsed)


def resolve_sources(request: JobRequest, uploads: list[tuple[str, Path]], prefixes: list[str],
                    max_unpacked: int, planetary_computer_sas: str = "") -> ResolvedSources:
    """The scene's files: the saved upload (its archives unpacked, to at most ``max_unpacked`` bytes), the URLs, or
    the STAC item's assets (a Planetary Computer item's signed by ``planetary_computer_sas``, unless empty). URLs
    among which is an archive are left to fetch when the job starts (``fetch``): a download of a gigabyte would hold
    the POST, past any proxy's patience."""
    if uploads:
        return _unpacked_sources(uploads, max_unpacked)
    if request.url:
        urls = [request.url] if isinstance(request.url, str) else request.url
        in_place = resolve_urls(urls, prefixes)  # checks every URL before anything is read
        archives = [archive_at(u, max_unpacked) for u in urls]  # every URL sniffed: an S3 archive is refused now
        return _dated(ResolvedSources([], fetch=list(zip(urls, archives, strict=True))) if any(archives) else in_place)
    resolved = [_item_sources(item, item_url, request.assets, prefixes, planetary_computer_sas)
                for item, item_url in stac_items(request.stac_item, prefixes, MAX_ITEMS)]
    return _dated(resolved[0] if len(resolved) == 1 else one_acquisition(resolved))


def _dated(sources: ResolvedSources, sensed: Iterable[tuple[datetime, datetime]] = ()) -> ResolvedSources:
    """``sources`` with when they were acquired: as their STAC item says, else as their files' names (or URLs), the
    SNAP headers of their files (on the volume or by URL), ``sensed`` (their archives' metadata) and their GDAL
    metadata (OPERA's, HLS's) do (``mapex_serve.acquired``)."""
    if sources.acquired is not None:
        return sources
    names = [f.path if f.remote else f.name for f in sources.files] + [url for url, _ in sources.fetch]
    headers = [span for f in sources.files if not f.remote and (span := file_sensed(Path(f.path))) is not None]
    acquired = acquisition(names, [*headers, *sensed])
    if acquired is None:  # the files opened (by URL too) only when nothing else dates them
        headers += [span for f in sources.files if (span := raster_sensed(f.path)) is not None]
        acquired = acquisition(names, [*headers, *sensed])
    return replace(sources, acquired=acquired)


def _item_sources(item: Any, item_url: str | None, assets: list[str] | None, prefixes: list[str],
                  planetary_computer_sas: str) -> ResolvedSources:
    signing = bool(planetary_computer_sas) and isinstance(item, dict) and from_planetary_computer(item, item_url)
    resolved = resolve_stac(signed_item(item, planetary_computer_sas) if signing else item, assets, item_url, prefixes)
    url = item_url or self_link(item)
    return replace(resolved, planetary_computer=signing, acquired=_acquired(item), item_urls=[url] if url else [])


def _acquired(item: Any) -> str | None:
    """The item's ``datetime``, else its ``start_datetime`` (a composite's); None where it states neither."""
    properties = item.get("properties") if isinstance(item, dict) else None
    if not isinstance(properties, dict):
        return None
    return next((properties[k] for k in ("datetime", "start_datetime") if isinstance(properties.get(k), str)), None)


def fetched_sources(fetch: list[tuple[str, bool]], prefixes: list[str], max_unpacked: int, downloads: Path,
                    fetching: Callable[[int], bool]) -> ResolvedSources:
    """A job's URLs when it starts (``ResolvedSources.fetch``): each archive among them fetched into ``downloads``
    (``fetching``: as ``fetch_archive``'s) and unpacked there, the others read in place."""
    in_place = resolve_urls([url for url, _ in fetch], prefixes).files
    saved = [(f.name, fetch_archive(url, downloads / f"url{i:02d}", max_unpacked, fetching=fetching)) if archive else f
             for i, ((url, archive), f) in enumerate(zip(fetch, in_place, strict=True))]
    return _unpacked_sources(saved, max_unpacked)


def _unpacked_sources(saved: list[tuple[str, Path] | SourceFile], max_unpacked: int) -> ResolvedSources:
    """Files saved on the jobs volume (``(name, path)``: an upload, a fetched archive), each archive among them
    unpacked beside it, and files read in place; dated (``_dated``)."""
    files, archives, sensed, room = [], [], [], max_unpacked
    for entry in saved:
        if isinstance(entry, SourceFile):
            files.append(entry)
            continue
        name, path = entry
        archive = unpack_file(name, path, room)
        if archive is None:
            files.append(SourceFile(name, str(path)))
            continue
        room -= archive.size
        archives.append(archive.report())
        sensed += archive.sensed
        files += [SourceFile(m.name, str(m.content)) for m in archive.files]
    return _dated(ResolvedSources(files, archives=archives), sensed)


def _sources_to_json(sources: ResolvedSources) -> dict[str, Any]:
    o = sources.overrides
    return {"files": [{"name": f.name, "path": f.path, "nodata": list(f.nodata) if f.nodata else None}
                      for f in sources.files],
            "bands": sources.bands, "units": dict(o.units), "scale": dict(o.scale), "offset": dict(o.offset),
            "described": sources.described, "archives": sources.archives, "fetch": sources.fetch,
            "items": sources.items, "planetary_computer": sources.planetary_computer, "acquired": sources.acquired,
            "item_urls": sources.item_urls}


def _sources_from_json(d: dict[str, Any]) -> ResolvedSources:
    """Jobs recorded before archives were read have no ``archives`` or ``fetch``."""
    files = [SourceFile(f["name"], f["path"], tuple(f["nodata"]) if f["nodata"] else None) for f in d["files"]]
    return ResolvedSources(files, d["bands"], UnitOverrides(d["units"], d["scale"], d["offset"]), d["described"],
                           d.get("archives", []), [(url, archive) for url, archive in d.get("fetch", [])],
                           d.get("items", False), d.get("planetary_computer", False), d.get("acquired"),
                           d.get("item_urls", []))


class JobRunner:
    """The jobs of one service: submission, a dispatcher that runs ``job_concurrency`` at once, cancel, expiry."""

    def __init__(self, state: ServiceState, store: JobStore) -> None:
        self.state, self.store = state, store
        self.settings = state.settings
        self.progress: dict[str, Progress] = {}
        self.fetched: dict[str, int] = {}  # bytes of its archive a job fetching one has so far
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._notifying: set[asyncio.Task[bool]] = set()  # notifications under way (held: a loop keeps weak refs)

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
        """Stop running jobs where they are: they stay queued and resume on the next start; notifications under way
        are dropped."""
        for task in [*self._tasks, *self._running.values(), *self._notifying]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running.values(), *self._notifying, return_exceptions=True)
        self.store.close()

    # -- the API's operations -----------------------------------------------------------------------

    def submit(self, task: str, request: JobRequest, sources: ResolvedSources, route: dict[str, Any],
               job_id: str | None = None, base_url: str = "") -> JobRecord:
        """Queue a job; ``base_url``: the service's as its sender reached it, for the result URLs it is notified of."""
        record = JobRecord(job_id or new_id(), task, "queued",
                           {"options": request.model_dump(mode="json"), "sources": _sources_to_json(sources),
                            "base_url": base_url},
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
        self._ended(job_id)

    def status(self, record: JobRecord) -> JobStatus:
        """The job as ``GET /jobs/{id}`` reports it: its progress live while it runs, its result URLs once done."""
        live = self.progress.get(record.id)
        done, total = (live.done, live.total) if live else (record.tiles_done, record.tiles_total)
        outputs = (record.summary or {}).get("outputs", []) if record.state == "done" and not record.expired else []
        return JobStatus(
            id=record.id, task=record.task, state=record.state, created=record.created, started=record.started,
            finished=record.finished, attempts=record.attempts,
            progress=JobProgress(tiles_done=done, tiles_total=total, fraction=done / total if total else 0.0,
                                 eta_s=live.eta_s if live else None, fetched_bytes=self.fetched.get(record.id)),
            route=record.route, error=JobError(**record.error) if record.error else None,
            results={f: f"/jobs/{record.id}/result?format={f}" for f in [*outputs, "stac"] if outputs},
            expired=record.expired)

    def _ended(self, job_id: str) -> None:
        """Tell the job's ``notify`` URL, where it gave one, that it ended (``mapex_serve.jobs.notify``)."""
        record = self.store.get(job_id)
        url = (record.request.get("options") or {}).get("notify") if record else None
        if not url:
            return
        status = self.status(record).model_dump(mode="json")
        status["results"] = {f: urljoin(record.request.get("base_url") or "", u) for f, u in status["results"].items()}
        secret = self.settings.job_notify_secret
        task = asyncio.get_running_loop().create_task(
            notify(url, status, secret.get_secret_value() if secret else None), name=f"notify-{job_id}")
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

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
            recorded = self.store.get(job.id) or job  # its sources once an archive URL was fetched
            self._fail(job.id, type(e).__name__, redacted(str(e), _sources_from_json(recorded.request["sources"]).files))
        except Exception as e:  # noqa: BLE001 - a job's failure is recorded, never the service's
            log.exception("job %s failed", job.id)
            self._fail(job.id, "InternalError", f"the job failed unexpectedly ({type(e).__name__}: {e}); the service "
                       f"log has the details")
        else:
            self.store.update(job.id, state="done", finished=now(), summary=summary)
            self.store.clear_strips(job.id)
            self._remove_inputs(job.id)
            self._ended(job.id)
        finally:
            self.progress.pop(job.id, None)

    def _fail(self, job_id: str, error: str, detail: str) -> None:
        self.store.update(job_id, state="failed", finished=now(), error={"error": error, "detail": detail})
        self._remove_partials(job_id)
        self._ended(job_id)

    async def _execute(self, job: JobRecord) -> dict[str, Any]:
        """The job in a decode worker (tried on a fresh one if its worker dies), or here when there are none."""
        request = JobRequest.model_validate(job.request["options"])
        specialists = self.state.registry.for_task(job.task)
        manifests = [s.manifest for s in specialists]
        sources = _sources_from_json(job.request["sources"])
        if sources.planetary_computer and self.settings.planetary_computer_sas:
            sources = await asyncio.to_thread(resigned, sources, self.settings.planetary_computer_sas)
        if sources.fetch:
            sources = await self._fetch(job, request, sources, manifests)
        plan = JobPlan(job.task, request, sources, self.store.folder(job.id),
                       self.settings.job_max_pixels, self.settings.max_batch,
                       {s.manifest.name: s.engine.provider for s in specialists})
        pool = self.state.decode
        if pool is not None:
            try:
                for attempt in (1, 2):
                    try:
                        return await self._run_in_worker(job, plan, pool, [m.name for m in manifests])
                    except WorkerLostError as e:
                        if attempt == 2:
                            raise DecodeUnavailableError(
                                f"the decode worker died twice while running this job ({e}); submit it again; if it "
                                f"happens again the file may crash GDAL") from None
                        log.warning("%s during job %s; it resumes on a fresh worker", e, job.id)
            except SlabSpaceError as e:  # no room in shared memory for its tiles: run it in this process
                log.warning("job %s runs in the service process: %s", job.id, e)
        return await self._run_here(job, plan, manifests)

    async def _fetch(self, job: JobRecord, request: JobRequest, sources: ResolvedSources,
                     manifests: list[Manifest]) -> ResolvedSources:
        """A job given the URL of an archive: fetched and unpacked now, then checked as ``POST /jobs`` checks the
        other sources (opened, routed, its units decided), and recorded; what it finds wrong fails the job."""
        def fetching(size: int) -> bool:
            self.fetched[job.id] = size
            return job.id not in self._cancelled

        log.info("job %s fetches %s", job.id, ", ".join(url for url, archive in sources.fetch if archive))
        try:
            fetched = await asyncio.to_thread(fetched_sources, sources.fetch, self.settings.job_url_prefixes,
                                              self.settings.job_max_upload_bytes, self.store.folder(job.id) / "input",
                                              fetching)
        finally:
            self.fetched.pop(job.id, None)
        route = await asyncio.to_thread(checked_route, request, fetched, manifests, self.settings.job_max_pixels)
        self.store.update(job.id, request={**job.request, "sources": _sources_to_json(fetched)}, route=route)
        return fetched

    async def _run_in_worker(self, job: JobRecord, plan: JobPlan, pool: DecodePool,
                             specialists: list[str]) -> dict[str, Any]:
        """Opened, tiled, blended and written by decode workers; the service runs the batches and keeps the store.

        A mask job's rows still to run are split into parts across the workers (one a worker where the
        engine is off the CPU, fewer on it: ``part_count``; a lone scene would otherwise get one worker's
        speed); each part writes its own strips, and once every part is done one worker writes the result
        files from them.
        """
        async with pool.job(plan, specialists, self.settings.max_batch) as first:
            opened = first.opened
            manifest = self.state.registry.specialists[opened.specialist].manifest
            known = self._resume(job, manifest)
            count = part_count(self.settings.job_parts, plan.providers[manifest.name], pool.size, service_cores())
            parts = self._parts(manifest, known, opened.height, count)
            progress = self._track(job.id, opened.tiles, opened.height, known, parts)
            submit = self._submitter(manifest.name)

            async def run_part(session: WorkerJob, i: int, rows: tuple[int, int] | None,
                               known_strips: list[StripRecord]) -> JobStep:
                started = await session.start(rows, known_strips)
                progress.started(i, started.total)

                def stepped(step: JobStep) -> int:
                    self._advance(job.id, progress.done(i, step.done), step.strips)
                    return step.size

                final = await session.run(submit, stepped)
                self._advance(job.id, progress.done(i, final.done), final.strips, save=True)
                return final

            async def run_part_on_another(i: int) -> JobStep:
                async with pool.job(plan, specialists, self.settings.max_batch) as session:
                    return await run_part(session, i, parts[i], [])

            if len(parts) <= 1:  # one part (one worker, small scene, class head; none: results only): results here
                final = await run_part(first, 0, parts[0] if parts else None, known)
                if final.summary is not None:
                    return final.summary
            else:
                log.info("job %s runs in %d parts on the decode workers: rows %s", job.id, len(parts),
                         ", ".join(f"{r0}-{r1}" for r0, r1 in parts))
                await run_all([run_part(first, 0, parts[0], []), *(run_part_on_another(i) for i in range(1, len(parts)))])
        async with pool.job(plan, specialists, self.settings.max_batch) as last:  # every strip is there
            await last.start(None, self._finished_strips(job.id))
            final = await last.run(submit, lambda step: step.size)
        if final.summary is None:
            raise RuntimeError("the job's strips do not cover its scene after every part ran")
        return final.summary

    async def _run_here(self, job: JobRecord, plan: JobPlan, manifests: list[Manifest]) -> dict[str, Any]:
        """The same work in this process: GDAL and numpy in threads, off the event loop, its parts one after another."""
        scene = await asyncio.to_thread(JobScene, plan, manifests)
        with scene, unreadable_as_400():
            g = scene.reader.grid
            known = self._resume(job, scene.manifest)
            parts = self._parts(scene.manifest, known, g.height, 1)
            progress = self._track(job.id, scene_tiles(g.height, g.width, scene.manifest.tile_size), g.height, known,
                                   parts)
            batcher = self.state.batchers[scene.manifest.name]
            submit = self._submitter(scene.manifest.name)
            summary = None
            for i, rows in enumerate(parts or [None]):
                await asyncio.to_thread(scene.start, rows, self._finished_strips(job.id))
                progress.started(i, scene.total)

                async def consume(batch: TileBatch, probs: np.ndarray, i: int = i) -> None:
                    await asyncio.to_thread(scene.add, batch, probs)
                    self._advance(job.id, progress.done(i, scene.done), scene.take_strips())

                await pipeline(scene.batches, lambda batch, _k: submit(batch.data), consume, ahead=batcher.ahead)
                summary = await asyncio.to_thread(scene.finish)
                self._advance(job.id, progress.done(i, scene.total), scene.take_strips(), save=True)
            if summary is None:
                raise RuntimeError("the job's strips do not cover its scene after every part ran")
            return summary

    @staticmethod
    def _parts(manifest: Manifest, known: list[StripRecord], height: int, workers: int) -> list[tuple[int, int]]:
        """The rows each part runs: a class head's whole scene, or a mask job's rows without a recorded strip."""
        if manifest.head == "class":
            return [(0, height)]
        return job_parts([s.index for s in known], height, workers)

    def _submitter(self, specialist: str) -> Callable[..., Awaitable[np.ndarray]]:
        """A job's tiles go to the shared batcher as background work: interactive requests' tiles go first.
        ``submit(tiles, out=None)``: ``out``, where the engine writes the outputs (a decode worker's slot)."""
        batcher = self.state.batchers[specialist]
        return lambda tiles, out=None: batcher.submit(tiles, admit=False, priority=BACKGROUND, out=out)

    def _resume(self, job: JobRecord, manifest: Manifest) -> list[StripRecord]:
        """The strips a mask job keeps from its earlier runs (none if it now routes to another model version)."""
        route = (self.store.get(job.id) or job).route
        if route and (route.get("specialist"), route.get("version")) != (manifest.name, manifest.version):
            log.info("job %s now routes to %s v%s: it starts over", job.id, manifest.name, manifest.version)
            self.store.clear_strips(job.id)  # strips of another model version do not mix with this one's
            self.store.update(job.id, route={**route, "specialist": manifest.name, "version": manifest.version})
        if manifest.head != "mask":
            return []
        strips = self._finished_strips(job.id)
        if strips:
            log.info("job %s resumes at row %d: %d of its strips are done", job.id,
                     min(set(range(len(strips) + 1)) - {s.index for s in strips}) * STRIP_ROWS, len(strips))
        return strips

    def _track(self, job_id: str, tiles: int, height: int, known: list[StripRecord],
               parts: list[tuple[int, int]]) -> _PartsProgress:
        """The job's progress, live for ``GET /jobs/{id}`` and in the store: from its recorded rows' share."""
        progress = _PartsProgress(Progress(0, tiles, time.monotonic(), 0), height, known, parts)
        self.progress[job_id] = progress.progress
        self.store.update(job_id, tiles_total=tiles, tiles_done=progress.progress.done)
        return progress

    def _advance(self, job_id: str, progress: Progress, strips: list[StripRecord], *, save: bool = False) -> None:
        """Strips recorded as they are written (a restart resumes after them); progress saved every second."""
        for strip in strips:
            self.store.add_strip(job_id, strip)
        if save or time.monotonic() - progress.saved > _SAVE_EVERY_S:
            self.store.update(job_id, tiles_done=progress.done)
            progress.saved = time.monotonic()

    def _finished_strips(self, job_id: str) -> list[StripRecord]:
        """The strips recorded and on disk, in any order (the parts of a split job finish when they finish)."""
        folder = self.store.folder(job_id) / "strips"
        return [s for s in self.store.strips(job_id)
                if s.row == s.index * STRIP_ROWS and (folder / strip_name("labels", s.index)).exists()]

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


#: A job is split across decode workers in parts of at least this many strips: each part also reads
#: the tile row above its first row, and a part's session costs an open of the scene.
MIN_PART_STRIPS = 2


def job_parts(done: Iterable[int], height: int, workers: int) -> list[tuple[int, int]]:
    """The rows ``[r0, r1)`` of the strips not ``done``, in up to ``workers`` strip-aligned parts of about equal size
    (more where the strips left are not contiguous: a part never spans a done strip)."""
    finished = set(done)
    missing = [i for i in range(-(-height // STRIP_ROWS)) if i not in finished]
    if not missing:
        return []
    size = -(-len(missing) // max(1, min(workers, len(missing) // MIN_PART_STRIPS)))
    parts = []
    for chunk in (missing[i : i + size] for i in range(0, len(missing), size)):
        start = prev = chunk[0]
        for i in [*chunk[1:], None]:
            if i != prev + 1:  # a gap (or the chunk's end): the run so far is a part
                parts.append((start * STRIP_ROWS, min(height, (prev + 1) * STRIP_ROWS)))
                start = i
            prev = i
    return parts


@dataclass
class _PartsProgress:
    """A job's progress over its parts: each part's share of the rows, scaled to the grid's tiles."""

    progress: Progress
    height: int
    known: list[StripRecord]
    parts: list[tuple[int, int]]

    def __post_init__(self) -> None:
        self._totals = [0] * max(len(self.parts), 1)
        self._done = [0] * max(len(self.parts), 1)
        self._known_rows = sum(s.height for s in self.known)
        p = self.progress  # a resumed job starts at its recorded rows' share: its rate (and ETA) counts from there
        p.done = p.done_at_start = min(p.total, round(p.total * self._known_rows / self.height))

    def started(self, i: int, total: int) -> None:
        self._totals[i] = total

    def done(self, i: int, done: int) -> Progress:
        """``done`` tiles of part ``i``: the job's progress, updated."""
        self._done[i] = done
        rows = self._known_rows + sum((r1 - r0) * d / t for (r0, r1), d, t in
                                      zip(self.parts, self._done, self._totals, strict=False) if t)
        self.progress.done = min(self.progress.total, round(self.progress.total * rows / self.height))
        return self.progress
