"""Reading the stacked scene: windows of physical values from every band, with a reason for each invalid pixel.

Bands sit in one or more files; those on the scene grid are read as they are, the others through a
``WarpedVRT`` onto it (bilinear for reflectance and backscatter, nearest for quality layers), window
by window. Each band's values go through its unit conversion; nodata, masks, alpha, NaN, values
with no dB (power <= 0) and quality layers (SCL, Fmask, dataMask, a cloud probability past its
threshold) give a reason code per pixel, kept in one uint8 raster so that the response counts
every masked pixel once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.features import geometry_mask
from rasterio.io import DatasetReaderBase
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from mapex_serve.bands import BANDS, QUALITY_LAYERS, QualityLayer
from mapex_serve.dimap import SnapBand
from mapex_serve.planet import PlanetProduct
from mapex_serve.rasters import BandIdentity
from mapex_serve.remote import read_failure
from mapex_serve.thresholds import Cut
from mapex_serve.units import Conversion

if TYPE_CHECKING:
    from mapex_serve.ground import GroundScale

__all__ = ["VALID", "Grid", "InputBand", "SceneReader"]

VALID = 0
_ALL_ROWS = 2**62  # rows past any file's: every row
_NODATA, _NOT_FINITE, _UNDEFINED, _NO_FACTOR, _ZERO_FILL, _OUTSIDE = 1, 2, 3, 4, 5, 6
_BASE_REASONS = {_NODATA: "nodata, mask or alpha band", _NOT_FINITE: "NaN or infinite value",
                 _UNDEFINED: "no dB value (linear power <= 0)",
                 _NO_FACTOR: "no gamma0 to sigma0 factor (its nodata, or <= 0)",
                 _ZERO_FILL: "0 in every band: a fill (Earth Engine's masked pixels)",
                 _OUTSIDE: "outside the area of interest (aoi=)"}


@dataclass
class Grid:
    """The scene grid every band is read on: the finest of the files, cropped to their overlap, or that extent in
    the model's pixel size (``mapex_serve.ground``). (Also each file's own grid, which the scene grid is chosen
    from.)"""

    crs: object
    transform: rasterio.Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset: DatasetReaderBase) -> Grid:
        """A dataset's grid as GDAL read it."""
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    def extent(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` whatever the sign of the pixel size (ungeoreferenced files have y down)."""
        xs, ys = zip(*(self.transform @ corner for corner in
                       ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))), strict=True)
        return min(xs), min(ys), max(xs), max(ys)

    def window(self, west: float, south: float, east: float, north: float) -> Window:
        """The pixels (fractional) that the box covers, whichever way the rows run: rasterio's ``from_bounds`` refuses
        a south-up grid (y ascending, as rioxarray writes an array whose y coordinate ascends)."""
        cols, rows = zip(*(~self.transform @ (x, y) for x in (west, east) for y in (south, north)), strict=True)
        return Window(min(cols), min(rows), max(cols) - min(cols), max(rows) - min(rows))


@dataclass
class InputBand:
    """One band of one file of the request, what it is, and (once routed) how its values are converted."""

    file: str
    index: int
    dataset: DatasetReaderBase
    identity: BandIdentity
    landsat: bool = False
    #: The Landsat Collection 2 layer among the request's bands (``QA_PIXEL``) that says its band numbers are
    #: Landsat's, where no name of its files does (``bands.landsat_collection_layers``).
    landsat_layer: str | None = None
    conversion: Conversion | None = None
    #: Nodata the file does not declare to GDAL but its catalogue or header does (a STAC item's ``raster:bands``,
    #: SNAP's DIMAP header).
    nodata: float | None = None
    #: What the file's SNAP header says of the band (``mapex_serve.dimap``), or None.
    snap: SnapBand | None = None
    #: The Planet asset the band's file is (``mapex_serve.planet``), or None.
    planet: PlanetProduct | None = None
    #: The file's grid where it was read from its tags and ``dataset`` opened without it (``geokeys``); None: the
    #: dataset's own.
    file_grid: Grid | None = None
    #: A factor from gamma0 to sigma0 that the other bands were read through (``mapex_serve.backscatter``).
    factor_applied: bool = False
    #: A cloud probability or clear score: where it masks, and whose cut that is (``mapex_serve.thresholds``).
    masks: str | None = None

    @property
    def georeference(self) -> Grid:
        """The grid of the band's file."""
        return self.file_grid or Grid.of(self.dataset)

    def report(self) -> dict:
        identity = self.identity
        mapped = identity.canonical or (identity.quality and f"quality layer {identity.quality}") or (
            identity.sigma0_factor and "gamma0 to sigma0 factor") or None
        out = {"file": self.file, "band": self.index, "found": identity.found, "rule": identity.rule,
               "mapped_to": mapped, "used": False}
        if self.conversion is not None:
            out |= {"used": True, "conversions": list(self.conversion.steps)}
        elif identity.quality or self.factor_applied:
            out["used"] = True
        if self.masks:
            out["masks"] = self.masks
        return out


@dataclass
class _Source:
    """Where bands are read from on the scene grid: a dataset (maybe resampled) and its 1-based indexes."""

    dataset: DatasetReaderBase
    window_offset: tuple[int, int]  # (row, col) of the scene grid's origin in ``dataset``
    indexes: list[int]
    positions: list[int]  # where those bands go in the reader's output, in the same order
    nodata: list[float | None]  # per band: a nodata value the file does not declare, or None
    warped: bool = False  # read through a WarpedVRT: a window's rows are not the file's
    remote: str | None = None  # the file's name, when it is read by URL (a job's source)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Stored values (k, h, w) and inside-the-data masks (k, h, w) of an in-scene window, one GDAL call each."""
        r, c = self.window_offset
        w = Window(window.col_off + c, window.row_off + r, window.width, window.height)
        values, inside = self.dataset.read(self.indexes, window=w), self.dataset.read_masks(self.indexes, window=w) > 0
        for k, nodata in enumerate(self.nodata):
            if nodata is not None:
                inside[k] &= ~np.isnan(values[k]) if np.isnan(nodata) else values[k] != nodata
        return values, inside


class SceneReader:
    """Windows of the stacked scene as physical float32 values with a reason code per invalid pixel.

    Implements what the tiler reads from (``height``, ``width``, ``count``, ``read``). Every pixel's reason is
    also kept in one uint8 raster so that the response can count masked pixels once each, however
    many overlapping tiles read them.
    """

    def __init__(self, grid: Grid, used: Sequence[InputBand], quality: Sequence[InputBand], stack: ExitStack,
                 sigma0_factor: InputBand | None = None, to_sigma0: Sequence[InputBand] = (),
                 cuts: Mapping[str, Cut] | None = None) -> None:
        """``sigma0_factor``: the factor from gamma0 to sigma0 by which the bands ``to_sigma0`` (gamma0, in dB once
        converted) are read as sigma0 (``mapex_serve.backscatter``); ``cuts``: where each continuous quality layer
        masks (``mapex_serve.thresholds``)."""
        self.grid = grid
        self.height, self.width = grid.height, grid.width
        self.bands = list(used)
        self.count = len(self.bands)
        self.quality = list(quality)
        self.resampled: list[str] = []
        #: The scene's and the model's pixel sizes on the ground, where the model records its (``ground``).
        self.ground: GroundScale | None = None
        self._vrts: dict[tuple[int, Resampling], WarpedVRT] = {}
        self._sources = self._group(used, Resampling.bilinear, stack)
        self._quality_sources = self._group(quality, Resampling.nearest, stack)
        self._factor_sources = self._group([sigma0_factor], Resampling.bilinear, stack) if sigma0_factor else []
        self._to_sigma0 = [i for i, b in enumerate(self.bands) if any(b is c for c in to_sigma0)]
        filled = [i for i, b in enumerate(self.bands) if _zero_may_be_fill(b)]
        #: Bands whose 0, in every one of them at once, is a fill (two at least: one band's 0 may be real).
        self._zero_fill = filled if len(filled) >= 2 else []
        self.reasons_text: dict[int, str] = dict(_BASE_REASONS)
        self._rules: list[tuple[QualityLayer, dict[str, int], float | None]] = []
        for b in quality:
            layer = QUALITY_LAYERS[b.identity.quality]
            whys = [*(layer.invalid_values or {}).values(), *(layer.invalid_bits or {}).values()]
            cut = None
            if layer.threshold is not None:
                given = (cuts or {}).get(layer.name)
                cut = given.value if given else layer.threshold.default
                whys.append(_past(layer, cut))
            codes = {}
            for why in whys:
                codes[why] = len(self.reasons_text) + 1
                self.reasons_text[codes[why]] = why
            self._rules.append((layer, codes, cut))
        #: A scene small enough for ``samples`` to read whole: its stored values and masks, which windows then slice.
        self._whole: tuple[list, list] | None = None
        self._reasons: np.ndarray | None = None  # reasons of the rows still being read, from _band_top down
        self._band_top = 0
        self._row_counts = np.zeros((0, 0), np.int64)
        #: For an upload read while it arrives (``decode.arriving``): called with the rows ``[0, r)`` of a file a
        #: read needs, before GDAL reads them; it returns once their bytes are in.
        self.wait_rows: Callable[[int], None] | None = None
        #: The request's polygon of interest in the grid's CRS (``aoi.Aoi.in_crs``): pixels whose centres lie
        #: outside it are masked, before any other reason counts them.
        self.aoi: dict[str, Any] | None = None

    def _group(self, bands: Sequence[InputBand], resampling: Resampling, stack: ExitStack) -> list[_Source]:
        """One source per dataset: bands on the scene grid are read as they are, others through a WarpedVRT."""
        sources: dict[int, _Source] = {}
        g = self.grid
        for position, b in enumerate(bands):
            key = id(b.dataset)
            if key not in sources:
                ds, offset, own = b.dataset, None, b.georeference
                if own.crs == g.crs and (own.transform.a, own.transform.e) == (g.transform.a, g.transform.e):
                    col, row = ~own.transform @ (g.transform.c, g.transform.f)
                    if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
                        offset = (round(row), round(col))
                if offset is None:
                    given = {} if b.file_grid is None else {"src_crs": own.crs, "src_transform": own.transform}
                    ds = WarpedVRT(b.dataset, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                                   resampling=resampling, **given)
                    stack.callback(ds.close)
                    offset = (0, 0)
                    if b.file not in self.resampled:
                        self.resampled.append(b.file)
                remote = b.file if b.dataset.name.startswith(("/vsicurl/", "/vsis3/", "/vsigs/")) else None
                sources[key] = _Source(ds, offset, [], [], [], warped=ds is not b.dataset, remote=remote)
            sources[key].indexes.append(b.index)
            sources[key].positions.append(position)
            sources[key].nodata.append(b.nodata)
        return list(sources.values())

    def _stored(self, sources: list[_Source], n: int, window: Window) -> tuple[list, list]:
        stored, inside = [None] * n, [None] * n
        for s in sources:
            if self.wait_rows is not None:
                r, _c = s.window_offset
                self.wait_rows(_ALL_ROWS if s.warped else r + int(window.row_off + window.height))
            try:
                values, masks = s.read(window)
            except RasterioIOError as e:
                if s.remote is None or (failure := read_failure(s.remote, e)) is None:
                    raise
                raise failure from None
            for k, position in enumerate(s.positions):
                stored[position], inside[position] = values[k], masks[k]
        return stored, inside

    def _stored_of(self, window: Window) -> tuple[list, list]:
        """The bands' stored values and masks of ``window``: sliced from the whole scene if ``samples`` read it."""
        if self._whole is None:
            return self._stored(self._sources, len(self.bands), window)
        rows, cols = window.toslices()
        return [v[rows, cols] for v in self._whole[0]], [m[rows, cols] for m in self._whole[1]]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(physical (C, h, w) float32, reasons (h, w) uint8)`` of an in-scene window, read-only; reason 0 is valid.

        The tiler reads a row of tiles as one window (``tiling.read_tiles``) and slices the tiles from it.
        """
        physical, reasons = self._read_window(window)
        self._record(window, reasons)
        return physical, reasons

    def _read_window(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Physical values and reasons of ``window``, read from every source (arrays made read-only)."""
        h, w = int(window.height), int(window.width)
        physical = np.empty((len(self.bands), h, w), np.float32)
        reasons = np.zeros((h, w), np.uint8)
        if self.aoi is not None:
            outside = geometry_mask([self.aoi], (h, w), window_transform(window, self.grid.transform))
            _mark(reasons, outside, _OUTSIDE)
        stored, inside = self._stored_of(window)
        if self._zero_fill:
            _mark(reasons, np.logical_and.reduce([stored[i] == 0 for i in self._zero_fill]), _ZERO_FILL)
        for i, b in enumerate(self.bands):
            physical[i] = b.conversion.apply(stored[i])
            _mark(reasons, ~inside[i], _NODATA)
            if stored[i].dtype.kind == "f":
                _mark(reasons, ~np.isfinite(stored[i]), _NOT_FINITE)
            _mark(reasons, ~np.isfinite(physical[i]), _UNDEFINED)
        if self._factor_sources:
            (factor,), (known,) = self._stored(self._factor_sources, 1, window)
            with np.errstate(divide="ignore", invalid="ignore"):
                shift = (10 * np.log10(factor)).astype(np.float32)  # sigma0 = gamma0 x factor, in dB
            _mark(reasons, ~known | ~np.isfinite(shift), _NO_FACTOR)
            for i in self._to_sigma0:
                physical[i] += shift
        values, inside = self._stored(self._quality_sources, len(self.quality), window)
        for (layer, codes, cut), v, ok in zip(self._rules, values, inside, strict=True):
            _mark(reasons, ~ok, _NODATA)
            if cut is not None:
                _mark(reasons, ~np.isfinite(v), _NOT_FINITE)
                _mark(reasons, v > cut if layer.threshold.invalid == "above" else v < cut, codes[_past(layer, cut)])
                continue
            v = v.astype(np.int64)
            for value, why in (layer.invalid_values or {}).items():
                _mark(reasons, v == value, codes[why])
            for bit, why in (layer.invalid_bits or {}).items():
                _mark(reasons, (v & (1 << bit)) != 0, codes[why])
        physical.flags.writeable = reasons.flags.writeable = False
        return physical, reasons

    def _record(self, window: Window, reasons: np.ndarray) -> None:
        """Keep the window's reasons in the band of rows still being read; count the rows above it, once each.

        Windows come in the tile grid's row-major order, so once a window starts at row ``r`` no later
        one reads above ``r``: those rows are final and counted per row (memory is a band of rows plus
        one count per row and reason, never a scene-sized raster). A window above the band re-reads
        rows already counted.
        """
        r, c = int(window.row_off), int(window.col_off)
        h, w = reasons.shape
        if self._reasons is None:
            self._reasons = np.zeros((0, self.width), np.uint8)
            self._row_counts = np.zeros((self.height, len(self.reasons_text) + 1), np.int64)
        if r > self._band_top:
            self._count_rows(min(r, self._band_top + len(self._reasons)))
            self._band_top = max(self._band_top, r)  # rows between the band and r were never read: nothing to count
        if r + h <= self._band_top:
            return
        if r < self._band_top:  # partly above the band: those rows are counted already
            reasons, h, r = reasons[self._band_top - r:], h - (self._band_top - r), self._band_top
        need = r + h - self._band_top
        if need > len(self._reasons):
            grown = np.zeros((need, self.width), np.uint8)
            grown[: len(self._reasons)] = self._reasons
            self._reasons = grown
        self._reasons[r - self._band_top: r - self._band_top + h, c: c + w] = reasons

    def _count_rows(self, until: int) -> None:
        """Rows ``[band_top, until)`` are final: count their reasons per row and drop them from the band."""
        n = until - self._band_top
        if n <= 0:
            return
        final = self._reasons[:n]
        codes = np.unique(final) if final.any() else ()  # most rows are all valid: a pass instead of a sort or hash
        for code in codes:
            if code:
                self._row_counts[self._band_top: until, code] = np.count_nonzero(final == code, axis=1)
        self._reasons = self._reasons[n:].copy()
        self._band_top = until

    def masked(self, rows: tuple[int, int] | None = None) -> dict[str, int]:
        """Invalid pixels of the scene read so far (of ``rows`` [lo, hi) when given), by reason, each counted once."""
        if self._reasons is None:
            return {}
        lo, hi = rows or (0, self.height)
        counts = self._row_counts[lo:hi].sum(axis=0)
        band = self._reasons[max(lo - self._band_top, 0): max(hi - self._band_top, 0)]
        counts += np.bincount(band.ravel(), minlength=len(counts))[: len(counts)]
        return {self.reasons_text[code]: int(n) for code, n in enumerate(counts) if code and n}

    def _windows_to_sample(self, size: int) -> list[Window]:
        first = self._sources[0]
        return list(_sample_windows(self.height, self.width, size, first.dataset.block_shapes[0], first.window_offset))

    def samples(self, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each band's valid stored and physical values at up to 5 x 5 windows of ``size`` px spread over the scene."""
        parts: list[list[np.ndarray]] = [[] for _ in self.bands]
        for window in self._windows_to_sample(size):
            stored, inside = self._stored(self._sources, len(self.bands), window)
            if (window.width, window.height) == (self.width, self.height):  # the scene, read whole: tiles slice it
                self._whole = stored, inside  # (a tile-sized upload is read once, not twice)
            for i in range(len(self.bands)):
                parts[i].append(stored[i][inside[i]])
        out = []
        for b, chunks in zip(self.bands, parts, strict=True):
            values = np.concatenate(chunks)
            out.append((values, b.conversion.apply(values)))
        return out

    def threshold_samples(self, size: int) -> list[tuple[InputBand, np.ndarray]]:
        """Each continuous quality layer's finite values inside its data, at the windows ``samples`` reads."""
        at = [i for i, (_layer, _codes, cut) in enumerate(self._rules) if cut is not None]
        if not at:
            return []
        parts: list[list[np.ndarray]] = [[] for _ in at]
        for window in self._windows_to_sample(size):
            values, inside = self._stored(self._quality_sources, len(self.quality), window)
            for k, i in enumerate(at):
                parts[k].append(values[i][inside[i] & np.isfinite(values[i])])
        return [(self.quality[i], np.concatenate(chunks)) for i, chunks in zip(at, parts, strict=True)]


def _zero_may_be_fill(b: InputBand) -> bool:
    """Whether ``b`` is a float band of reflectance or dB that declares no nodata and has no mask: where every such
    band of a scene holds exactly 0, the pixel is a fill, not a surface. Earth Engine exports masked pixels (the
    clouds a user masked, Sentinel-1's masked swath edges) as 0 unless told a noData; as reflectance they would be
    black ground, as dB bright radar returns, in all bands at once, which no surface gives. (Integer reflectance's
    0 is no data band by band: ``units.zero_is_nodata``.)"""
    i = b.index - 1
    return (BANDS[b.identity.canonical].unit in ("reflectance", "dB") and np.dtype(b.dataset.dtypes[i]).kind == "f"
            and b.nodata is None and b.dataset.nodatavals[i] is None
            and MaskFlags.all_valid in b.dataset.mask_flag_enums[i])


def _past(layer: QualityLayer, cut: float) -> str:
    """The reason a continuous layer's masked pixels are counted under: ``Cloud Score+ clear score below 0.6``."""
    return f"{layer.description} {layer.threshold.invalid} {cut:g}"


def _mark(reasons: np.ndarray, where: np.ndarray, code: int) -> None:
    """Give ``code`` to the pixels of ``where`` that have no reason yet (the first reason found is kept)."""
    reasons[where & (reasons == VALID)] = code


def _sample_windows(height: int, width: int, size: int, block: tuple[int, int] = (1, 1),
                    offset: tuple[int, int] = (0, 0)) -> Iterator[Window]:
    """Up to 5 x 5 windows of ``size`` px spread over the scene, never overlapping, each inside one of the file's
    ``block``s where blocks are at least that large (``offset``: the scene's origin in the file).

    An axis shorter than five windows is read whole, once: overlapping windows read a 128 px
    upload 6.25 times over, most of the cost of a small request (docs/performance.md). A window
    across a block edge decodes two or four blocks: in a 4096² scene of deflate 256 px blocks the
    spread-out windows decoded 64 blocks (0.13 s before the first tile), aligned ones 25.
    """
    def spans(n: int, b: int, off: int) -> list[tuple[int, int]]:
        if n <= 5 * size:
            return [(0, n)]
        starts = [int(start) for start in np.linspace(0, n - size, 5)]
        if size <= b < n and off % b == 0:  # back to their block's start: distinct starts are a block apart
            starts = sorted({(start + off) // b * b - off for start in starts})
        return [(start, size) for start in starts]

    for r, h in spans(height, block[0], offset[0]):
        for c, w in spans(width, block[1], offset[1]):
            yield Window(c, r, w, h)
