"""One job's scene from its files to its result files: what a decode worker, or the service itself, drives.

Opening routes the files and decides their units. ``start`` cuts the tiles of a part of the
scene: the rows ``[r0, r1)`` of a mask job (strip-aligned: the strips not yet recorded, or one of
the parts a job is split into across decode workers), the whole scene for a class head. ``add``
blends a batch's probabilities, writing final rows to strips on disk (mask heads), or aggregates
them (class heads). ``finish`` ends the part and, once the strips cover the scene, writes the
result files (the COGs, the GeoJSON) and returns the job's summary. All of it is GDAL and numpy
work: in a decode worker by default, in a service thread when there are none (``MAPEX_DECODE_WORKERS=0``).
The store stays with the service: strips written here are handed over by ``take_strips`` to be recorded.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from mapex_serve.decode.parts import merge_masked
from mapex_serve.inputs import RequestScene
from mapex_serve.jobs.models import JobRequest, JobRequestError
from mapex_serve.jobs.outputs import (
    NODATA_LABEL,
    PROBABILITY_SCALE,
    RESULT_BLOCK_CACHE,
    StripWriter,
    block_cache_at_most,
    write_cog,
)
from mapex_serve.jobs.sources import ResolvedSources
from mapex_serve.jobs.store import StripRecord
from mapex_serve.predict import Prediction, UnreadableRasterError, open_and_route, overlap_for, tile_batches
from mapex_serve.repository import Manifest
from mapex_serve.responses import as_geotiff, as_json, grid_report, inputs_summary, palette
from mapex_serve.routing import Route
from mapex_serve.scene_reader import SceneReader
from mapex_serve.tiling import ClassAggregator, MaskBlender, TileBatch, tile_cells
from mapex_serve.units import UnitOverrides
from mapex_serve.vectorize import mask_polygons

__all__ = ["JobPlan", "JobScene", "checked_route", "opened_scene", "scene_tiles"]


@dataclass(frozen=True)
class JobPlan:
    """What a job's scene needs wherever it runs (picklable: a decode worker gets it as it is)."""

    task: str
    request: JobRequest
    sources: ResolvedSources
    folder: Path
    max_pixels: int
    max_batch: int
    #: The execution provider of each specialist's engine, for the summary.
    providers: Mapping[str, str]


def overrides_for(request: JobRequest, sources: ResolvedSources) -> UnitOverrides:
    """The catalogue's units, scale and offset, with what the caller says winning over them."""
    caller = UnitOverrides.parse(request.units, request.scale, request.offset, request.pixel_size, request.reflectance,
                                 request.backscatter, request.bbox, request.mask_threshold, request.aoi)
    cat = sources.overrides

    def merged(which: str) -> dict:
        mine, theirs = getattr(caller, which), getattr(cat, which)
        return dict(mine) if None in mine else {**theirs, **mine}  # the caller's "every band" beats per-band entries

    return UnitOverrides(merged("units"), merged("scale"), merged("offset"), caller.pixel_size, caller.reflectance,
                         caller.backscatter, caller.bbox, caller.mask_threshold, caller.aoi)


def opened_scene(request: JobRequest, sources: ResolvedSources, manifests: Sequence[Manifest],
                 max_pixels: int) -> tuple[RequestScene, Route, SceneReader]:
    """``(scene, route, reader)``: the files opened, routed and their units decided (GDAL work: not on the loop)."""
    bands = request.bands.split(",") if request.bands else sources.bands
    return open_and_route(sources.files, bands, manifests, request.modality, overrides_for(request, sources), max_pixels,
                          max_unpacked=0, items=sources.items)  # a job's files are read where they lie: none unpacked


def checked_route(request: JobRequest, sources: ResolvedSources, manifests: Sequence[Manifest],
                  max_pixels: int) -> dict[str, Any]:
    """What a job's scene is checked for before it runs (opened, routed, its units decided on a sample, its
    ``geojson_classes`` known to the specialist), and its route as the job's status gives it: the specialist, the
    bands it reads and the scene's size. GDAL work: not on the loop."""
    scene, route, reader = opened_scene(request, sources, manifests, max_pixels)
    scene.close()
    m = route.manifest
    try:
        request.geojson_classes_for(m.classes)
    except ValueError as e:
        raise JobRequestError(str(e)) from None
    return {"specialist": m.name, "version": m.version, "bands": list(route.bands), "width": reader.width,
            "height": reader.height}


def scene_tiles(height: int, width: int, tile: int) -> int:
    """The tiles of a scene's grid."""
    overlap = overlap_for(tile)
    return len(tile_cells(height, tile, overlap)) * len(tile_cells(width, tile, overlap))


class JobScene:
    """A job's open scene: tiles out, probabilities in, strips and result files written to ``plan.folder``."""

    def __init__(self, plan: JobPlan, manifests: Sequence[Manifest]) -> None:
        self.plan = plan
        self.scene, self.route, self.reader = opened_scene(plan.request, plan.sources, manifests, plan.max_pixels)
        self.manifest = self.route.manifest
        self.batches: Iterator[TileBatch] = iter(())
        self.total = self.done = self.seen = 0  # tiles of the part being run, done, and run with a valid pixel
        self._rows: tuple[int, int] | None = None
        self._first_row, self._columns = 0, 1  # the part's first tile row; tiles in a row
        self._strips: list[StripRecord] = []  # every strip of the scene, those known before included
        self._taken = 0  # how many of them the service has recorded
        self._blender: MaskBlender | None = None
        self._aggregator: ClassAggregator | None = None

    def __enter__(self) -> JobScene:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self, rows: tuple[int, int] | None, known: Sequence[StripRecord] = ()) -> None:
        """The tiles that scene rows ``[r0, r1)`` need (None: no tile, only the results to write), ``known`` the
        strips recorded outside those rows. Class heads always run the whole scene (their results are in memory)."""
        manifest, reader, g = self.manifest, self.reader, self.reader.grid
        size, k = manifest.tile_size, len(manifest.classes)
        if manifest.head == "class":
            rows, known = (0, g.height), ()
        self._strips, self._taken = list(known), len(known)
        r0, r1 = rows or (0, 0)
        todo, self.batches = tile_batches(reader, manifest, self.plan.max_batch, (r0, r1))
        self.total, self.done, self._rows = len(todo), 0, rows
        self._columns = len(tile_cells(g.width, size, overlap_for(size)))
        self._first_row = todo[0].row if todo else 0
        if manifest.head == "class":
            self._aggregator = ClassAggregator(len(tile_cells(g.height, size, overlap_for(size))), self._columns, k)
        elif todo:
            writer = StripWriter(self._strip_folder, crs=g.crs, transform=g.transform, height=g.height, width=g.width,
                                 n_classes=k, probabilities=self.plan.request.probabilities, resume_row=r0,
                                 end_row=r1, masked=reader.masked, record=self._strips.append)
            self._blender = MaskBlender(g.height, g.width, k, size, overlap_for(size), sink=writer.add,
                                        start_row=todo[0].row_off,
                                        keep_probabilities=self.plan.request.probabilities)

    @property
    def _strip_folder(self) -> Path:
        return self.plan.folder / "strips"

    def add(self, batch: TileBatch, probs: np.ndarray) -> None:
        """One batch's probabilities, in the batch's order (blended before ``probs`` is written again)."""
        (self._blender or self._aggregator).add_batch(batch.tiles, probs, batch.valid)
        self.seen += len(batch.tiles)
        last = batch.tiles[-1]  # skipped tiles (all invalid) count as done: the total is the part's
        self.done = (last.row - self._first_row) * self._columns + last.col + 1

    def take_strips(self) -> list[StripRecord]:
        """The strips written since the last call, for the store (a resumed job starts after the recorded ones)."""
        new, self._taken = self._strips[self._taken:], len(self._strips)
        return new

    def finish(self) -> dict[str, Any] | None:
        """The part's last rows to strips; once the strips cover the scene, the result files and the job's summary
        (None: other parts are still to come)."""
        self.done = self.total
        if self.manifest.head == "class":
            return self._class_results()
        if self._blender is not None:
            self._blender.finish(until=self._rows[1])
            self._blender = None
        if sum(s.height for s in self._strips) < self.reader.grid.height:
            return None
        return self._mask_results()

    def close(self) -> None:
        self.scene.close()

    def _mask_results(self) -> dict[str, Any]:
        manifest, route, request, g, folder = self.manifest, self.route, self.plan.request, self.reader.grid, \
            self.plan.folder
        strips = sorted(self._strips, key=lambda s: s.row)
        pixels = np.sum([s.stats["pixels"] for s in strips], axis=0)
        areas = [s.stats["area_m2"] for s in strips]
        area = None if any(a is None for a in areas) else np.sum(areas, axis=0)
        masked = merge_masked(s.stats["masked"] for s in strips)
        if int(pixels.sum()) == 0:
            reasons = ", ".join(f"{n:,} {why}" for why, n in masked.items())
            raise UnreadableRasterError(f"the raster has no valid pixels (all nodata, NaN or masked: {reasons})")
        common = dict(crs=g.crs, transform=g.transform, width=g.width, height=g.height)
        inputs = [b.report() for b in self.scene.bands]
        tags = {"specialist": manifest.name, "version": str(manifest.version), "bands": ",".join(route.bands),
                "classes": ",".join(f"{i}={c}" for i, c in enumerate(manifest.classes)),
                "inputs": json.dumps([i for i in inputs if i["used"]])}
        write_cog(self._strip_folder, "labels", folder / "result.tif", strips, bands=1,
                  descriptions=[f"{manifest.task} class"], metadata=tags, colors=palette(len(manifest.classes)),
                  **common)
        outputs = ["geotiff", "json"]
        if request.probabilities:
            write_cog(self._strip_folder, "probabilities", folder / "probabilities.tif", strips,
                      bands=len(manifest.classes), descriptions=[f"probability of {c}" for c in manifest.classes],
                      metadata=tags, scale=1 / PROBABILITY_SCALE, **common)
            outputs.append("probabilities")
        if request.geojson and g.crs is not None:
            include = request.geojson_classes_for(manifest.classes)
            with block_cache_at_most(RESULT_BLOCK_CACHE), rasterio.open(folder / "result.tif") as ds:
                collection = mask_polygons(rasterio.band(ds, 1), classes=manifest.classes, crs=g.crs,
                                           transform=g.transform, nodata=NODATA_LABEL, include=include,
                                           simplify=request.simplify, min_area_m2=request.min_area_m2)
            _write_json(folder / "result.geojson", collection)
            outputs.append("geojson")
        shutil.rmtree(self._strip_folder, ignore_errors=True)
        total = int(pixels.sum())
        classes = {}
        for i, name in enumerate(manifest.classes):
            entry: dict[str, Any] = {"pixels": int(pixels[i]), "fraction": float(pixels[i]) / total}
            if area is not None:
                entry |= {"area_m2": float(area[i]), "area_km2": float(area[i]) / 1e6}
            classes[name] = entry
        return {"task": manifest.task, "specialist": manifest.name, "version": manifest.version,
                "bands": list(route.bands), "provider": self.plan.providers[manifest.name],
                "data": f"model trained on {manifest.data} data", "classes": classes, "valid_pixels": total,
                "inputs": inputs,
                "grid": grid_report(g.crs, g.transform, g.width, g.height, self.reader.resampled, self.scene.mosaicked,
                                    self.reader.ground),
                "masked_pixels": {"total": sum(masked.values()), "by_reason": masked},
                "catalogue": self.plan.sources.described, "acquired": self.plan.sources.acquired,
                **({"archives": self.plan.sources.archives} if self.plan.sources.archives else {}), "outputs": outputs}

    def _class_results(self) -> dict[str, Any]:
        """Class heads: one label per tile, aggregated in memory; the GeoTIFF and the summary."""
        if self.seen == 0:
            raise UnreadableRasterError("the raster has no valid pixels (all nodata, NaN or masked)")
        manifest, g, size = self.manifest, self.reader.grid, self.manifest.tile_size
        p = Prediction(self.route, {"crs": g.crs, "transform": g.transform, "width": g.width, "height": g.height},
                       classes=self._aggregator.result(), tile_stride=size - overlap_for(size),
                       tile_rows=tile_cells(g.height, size, overlap_for(size)),
                       tile_cols=tile_cells(g.width, size, overlap_for(size)),
                       inputs=[b.report() for b in self.scene.bands], masked=self.reader.masked(),
                       resampled=self.reader.resampled, mosaicked=self.scene.mosaicked,
                       archives=self.plan.sources.archives)
        folder = self.plan.folder
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "result.tif.tmp"
        tmp.write_bytes(as_geotiff(p))
        os.replace(tmp, folder / "result.tif")
        summary = as_json(p, self.plan.providers[manifest.name])
        summary["inputs_used"] = inputs_summary(p)
        summary["catalogue"] = self.plan.sources.described  # as mask heads' summaries say it
        summary["acquired"] = self.plan.sources.acquired
        summary["outputs"] = ["geotiff", "json"]
        return summary


def _write_json(path: Path, body: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(tmp, path)
