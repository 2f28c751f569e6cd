"""A mask job's outputs, written as the blender finishes rows: strips on disk, then one COG for the scene.

Rows arrive from the blender (``tiling.RowBand``) in order; every ``STRIP_ROWS`` of them (one row
of COG blocks) become a small GeoTIFF of their own, written to a temporary name and renamed, and
recorded in the store with what they hold (class pixels and areas, masked pixels by reason). A
service killed mid-way resumes after its last recorded strip. When every strip is there, a VRT
stacks them and GDAL's COG driver writes the scene's Cloud-Optimised GeoTIFF (internal tiles,
overviews) from it, block by block: memory is a strip and GDAL's block cache, never the scene; the
cache is bounded while the COG is written (``RESULT_BLOCK_CACHE``).
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import Affine

from mapex_serve.areas import class_areas, known_row_areas_m2
from mapex_serve.jobs.store import StripRecord
from mapex_serve.tiling import RowBand

__all__ = ["NODATA_LABEL", "PROBABILITY_SCALE", "RESULT_BLOCK_CACHE", "STRIP_ROWS", "StripWriter", "block_cache_at_most",
           "strip_name", "write_cog"]

STRIP_ROWS = 512  # the COG's block size: a strip is one row of its blocks
NODATA_LABEL = 255
PROBABILITY_SCALE = 254  # a probability p is stored as round(254 p); 255 is nodata
_COG_OPTIONS = {"compress": "deflate", "blocksize": STRIP_ROWS, "bigtiff": "if_safer", "num_threads": "all_cpus"}
#: GDAL's block cache (bytes) while a whole-scene result is passed over once: the COG driver writing it, polygonize
#: reading it. Both fill whatever cache they are given for no gain (20,000²: the probabilities' COG 6.8 s and +380
#: MiB of RSS with 256 MiB, 7.0 s and +144 MiB with 64; the labels' polygons 9.7 s and +311 MiB, 10.0 s and +119
#: MiB), and the decode worker's cache is full of the input's blocks, no longer needed.
RESULT_BLOCK_CACHE = 64 * 2**20


class StripWriter:
    """Collects final rows into strips, writes each once whole, and records it (``record`` is the store's)."""

    def __init__(self, folder: Path, *, crs: Any, transform: Affine, height: int, width: int, n_classes: int,
                 probabilities: bool, resume_row: int, masked: Callable[[tuple[int, int]], dict[str, int]],
                 record: Callable[[StripRecord], None], end_row: int | None = None) -> None:
        self.folder, self.crs, self.transform = folder, crs, transform
        self.height, self.width, self.n_classes = height, width, n_classes
        self.probabilities = probabilities
        self._masked, self._record = masked, record
        self._row_areas = known_row_areas_m2(crs, transform, height, width)
        folder.mkdir(parents=True, exist_ok=True)
        self._next = resume_row  # the next scene row this writer keeps
        self._end = height if end_row is None else end_row  # rows [resume_row, end_row): one part of a job
        self._start = resume_row
        self._labels = np.empty((0, width), np.uint8)
        self._probs = np.empty((n_classes, 0, width), np.uint8)

    def add(self, band: RowBand) -> None:
        """A band of final rows; rows outside ``[resume_row, end_row)`` (strips done or another part's) are dropped."""
        skip, stop = max(self._next - band.row, 0), min(len(band.labels), self._end - band.row)
        if skip >= stop:
            return
        labels = band.labels[skip:stop]
        self._labels = np.concatenate([self._labels, labels])
        if self.probabilities:
            if band.probabilities is None:
                raise ValueError("probabilities were asked for but the blender does not keep them")
            probs = band.probabilities[:, skip:stop]
            scaled = np.rint(probs * PROBABILITY_SCALE).astype(np.uint8)
            scaled[:, ~band.covered[skip:stop]] = NODATA_LABEL
            self._probs = np.concatenate([self._probs, scaled], axis=1)
        self._next += len(labels)
        self._flush(final=self._next >= self._end)

    def _flush(self, final: bool) -> None:
        while len(self._labels) >= STRIP_ROWS or (final and len(self._labels)):
            n = min(STRIP_ROWS, len(self._labels))
            self._write(self._start, self._labels[:n], self._probs[:, :n] if self.probabilities else None)
            self._labels = self._labels[n:]
            self._probs = self._probs[:, n:]
            self._start += n

    def _write(self, row: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        index = row // STRIP_ROWS
        transform = self.transform @ Affine.translation(0, row)
        _write_tiff(self.folder / strip_name("labels", index), labels[None], self.crs, transform)
        if probs is not None:
            _write_tiff(self.folder / strip_name("probabilities", index), probs, self.crs, transform)
        counts, areas = class_areas(labels, self._row_areas, self.n_classes, nodata=NODATA_LABEL, row0=row)
        stats = {"pixels": counts.tolist(), "area_m2": None if areas is None else areas.tolist(),
                 "masked": self._masked((row, row + len(labels)))}
        self._record(StripRecord(index, row, len(labels), stats))


def strip_name(kind: str, index: int) -> str:
    """The file of strip ``index`` of ``kind`` (labels or probabilities)."""
    return f"{kind}-{index:05d}.tif"


def _write_tiff(path: Path, data: np.ndarray, crs: Any, transform: Affine) -> None:
    """One strip, whole or not at all: written beside, then renamed over."""
    tmp = path.with_suffix(".tmp")
    count, height, width = data.shape
    with rasterio.open(tmp, "w", driver="GTiff", count=count, height=height, width=width, dtype="uint8", crs=crs,
                       transform=transform, nodata=NODATA_LABEL, tiled=True, blockxsize=STRIP_ROWS,
                       blockysize=STRIP_ROWS, compress="deflate") as dst:
        dst.write(data)
    os.replace(tmp, path)


def _vrt(folder: Path, kind: str, strips: Sequence[StripRecord], *, crs: Any, transform: Affine, width: int,
         height: int, bands: int, descriptions: Sequence[str], metadata: dict[str, str],
         colors: np.ndarray | None, scale: float | None) -> Path:
    """A VRT stacking the strips of ``kind`` into the scene (GDAL reads it block by block)."""
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = crs.to_wkt() if crs else ""
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    md = ET.SubElement(root, "Metadata")
    for k, v in metadata.items():
        ET.SubElement(md, "MDI", key=k).text = v
    for b in range(1, bands + 1):
        band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band=str(b))
        ET.SubElement(band, "Description").text = descriptions[b - 1]
        ET.SubElement(band, "NoDataValue").text = str(NODATA_LABEL)
        if scale is not None:
            ET.SubElement(band, "Offset").text = "0"
            ET.SubElement(band, "Scale").text = repr(scale)
        if colors is not None:
            ET.SubElement(band, "ColorInterp").text = "Palette"
            table = ET.SubElement(band, "ColorTable")
            for rgb in colors:
                ET.SubElement(table, "Entry", c1=str(rgb[0]), c2=str(rgb[1]), c3=str(rgb[2]), c4="255")
        for s in strips:
            src = ET.SubElement(band, "SimpleSource")
            ET.SubElement(src, "SourceFilename", relativeToVRT="1").text = strip_name(kind, s.index)
            ET.SubElement(src, "SourceBand").text = str(b)
            ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(width), ySize=str(s.height))
            ET.SubElement(src, "DstRect", xOff="0", yOff=str(s.row), xSize=str(width), ySize=str(s.height))
    path = folder / f"{kind}.vrt"
    ET.ElementTree(root).write(path)
    return path


def write_cog(strip_folder: Path, kind: str, out: Path, strips: Sequence[StripRecord], *, crs: Any,
              transform: Affine, width: int, height: int, bands: int, descriptions: Sequence[str],
              metadata: dict[str, str], colors: np.ndarray | None = None, scale: float | None = None) -> Path:
    """The strips of ``kind`` as one COG at ``out`` (nearest overviews for labels, average for probabilities)."""
    covered = sum(s.height for s in strips)
    if covered != height:
        raise RuntimeError(f"the strips cover {covered} of {height} rows; the job must run again")
    vrt = _vrt(strip_folder, kind, strips, crs=crs, transform=transform, width=width, height=height, bands=bands,
               descriptions=descriptions, metadata=metadata, colors=colors, scale=scale)
    tmp = out.with_suffix(".tmp")
    with block_cache_at_most(RESULT_BLOCK_CACHE):
        gdal_copy(str(vrt), str(tmp), driver="COG", overview_resampling="average" if scale else "nearest",
                  **_COG_OPTIONS)
    os.replace(tmp, out)
    return out


class _BlockCacheBound:
    """GDAL's block cache at most a limit while any writer is inside (shrinking it drops the oldest blocks), its size
    given back when the last one leaves.

    The size is the process's: without decode workers, jobs write their COGs in the service's threads, and two
    that overlap must not leave it small. Not ``rasterio.Env(GDAL_CACHEMAX=...)``: leaving one nested in another
    (the decode worker's, for its life) does not give the size back, and the worker's later reads would go on with
    the smaller cache.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._before = 0

    @contextmanager
    def at_most(self, limit: int) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._before = get_gdal_config("GDAL_CACHEMAX")
                set_gdal_config("GDAL_CACHEMAX", min(self._before, limit))
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    set_gdal_config("GDAL_CACHEMAX", self._before)


block_cache_at_most = _BlockCacheBound().at_most
