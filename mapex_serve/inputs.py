"""One scene from the files of one request: containers opened, bands identified, grids stacked, values converted.

A request sends one or more files (``file`` parts): GeoTIFFs or COGs, NetCDF/HDF5 with one variable
per band, ENVI, JPEG 2000 band files, or a VRT over the other parts. Everything lives in one
``/vsimem/`` folder of the request and only GDAL drivers that read no other file are allowed; a VRT
may only point at parts of the same request, never at a path on the server.

Files on one CRS are stacked on the finest grid among them, cropped to where they all overlap:
coarser ones are resampled on the fly (``WarpedVRT``: bilinear for reflectance and backscatter,
nearest for quality layers), window by window, never loaded whole. The result is a
:class:`SceneReader` that the tiler reads windows of physical values from, with a reason for every
invalid pixel (nodata, mask or alpha, NaN, cloud in SCL or Fmask ...) that the response reports.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.io import DatasetReader, DatasetReaderBase, MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from mapex_serve.bands import QUALITY_LAYERS, QualityLayer
from mapex_serve.errors import DuplicateBandError, MapexError
from mapex_serve.rasters import BandIdentity, _is_landsat, identify_bands, missing_names_error, parse_name
from mapex_serve.units import Conversion, UnitOverrides, ValueStats, check_plausible, conversion_for

__all__ = [
    "ALLOWED_DRIVERS",
    "ForbiddenReferenceError",
    "GridMismatchError",
    "InputBand",
    "RasterTooLargeError",
    "RequestScene",
    "SceneReader",
    "SubdatasetsError",
    "UnreadableInputError",
    "UploadedFile",
    "VALID",
]

#: GDAL drivers an upload may be read with: none of them opens a file the upload names (VRT is checked).
ALLOWED_DRIVERS = ("GTiff", "COG", "netCDF", "HDF5", "HDF5Image", "ENVI", "JP2OpenJPEG", "VRT")

VALID = 0
_NODATA, _NOT_FINITE, _UNDEFINED = 1, 2, 3
_BASE_REASONS = {_NODATA: "nodata, mask or alpha band", _NOT_FINITE: "NaN or infinite value",
                 _UNDEFINED: "no dB value (linear power <= 0)"}


class ForbiddenReferenceError(MapexError, ValueError):
    """A VRT (or other container) that points outside the files of its own request."""


class GridMismatchError(MapexError, ValueError):
    """Files of one request that cannot be stacked: different CRSs, or no overlap."""


class SubdatasetsError(MapexError, ValueError):
    """A container (NetCDF, HDF5) none of whose subdatasets names a band."""


class UnreadableInputError(MapexError, ValueError):
    """A file of the request that holds no raster GDAL can read as one."""


class RasterTooLargeError(MapexError, ValueError):
    """The scene has more pixels than MAPEX_MAX_PIXELS, or is stored in blocks too large to read by windows."""


#: Largest block (decoded) a file may be stored in: every window read decodes a whole block, so a
#: single-strip or untiled scene would be decompressed again for each of its thousands of tiles.
MAX_BLOCK_BYTES = 64 * 2**20


def _check_blocks(name: str, ds: DatasetReaderBase) -> None:
    """Refuse a raster whose blocks (strips or tiles) are too large for window-by-window reading."""
    rows, cols = ds.block_shapes[0]
    nbytes = rows * cols * ds.count * max(np.dtype(t).itemsize for t in ds.dtypes)
    if nbytes > MAX_BLOCK_BYTES:
        raise RasterTooLargeError(
            f"{name} is stored in blocks of {cols} x {rows} pixels ({nbytes / 2**20:,.0f} MiB decoded each; at most "
            f"{MAX_BLOCK_BYTES / 2**20:.0f} MiB are accepted): every window read would decode a whole block; save it "
            f"tiled (gdal_translate -of COG in.tif out.tif, or -co TILED=YES)"
        )


@dataclass(frozen=True)
class UploadedFile:
    """One ``file`` part of a request: the name the client gave and its bytes."""

    name: str
    data: bytes


@dataclass
class InputBand:
    """One band of one file of the request, what it is, and (once routed) how its values are converted."""

    file: str
    index: int
    dataset: DatasetReaderBase
    identity: BandIdentity
    landsat: bool = False
    conversion: Conversion | None = None

    def report(self) -> dict:
        out = {"file": self.file, "band": self.index, "found": self.identity.found, "rule": self.identity.rule,
               "mapped_to": self.identity.canonical or (self.identity.quality and f"quality layer {self.identity.quality}"),
               "used": False}
        if self.conversion is not None:
            out |= {"used": True, "conversions": list(self.conversion.steps)}
        elif self.identity.quality:
            out["used"] = True
        return out


def _safe_name(name: str, index: int, taken: set[str]) -> str:
    """A file name that is only a name: no folders, no odd characters, unique within the request."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", (name or "").replace("\\", "/").rsplit("/", 1)[-1])[-120:].lstrip(".")
    base = base or f"part{index}.tif"
    while base in taken:
        base = f"{index}_{base}"
    taken.add(base)
    return base


def _checked_vrt(data: bytes, parts: set[str], referenced: set[str]) -> bytes:
    """The VRT, reading its sources beside it; refused if it reads anything but the other parts of its request.

    The parts it reads are added to ``referenced``: they are the VRT's sources, not bands of their own.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ForbiddenReferenceError(f"the VRT is not valid XML ({e})") from None
    if root.get("subClass"):
        raise ForbiddenReferenceError(f"VRTs of subClass {root.get('subClass')!r} are not accepted; send a plain VRT "
                                      f"that stacks the other uploaded files")
    for el in root.iter():
        if el.tag in ("PixelFunctionLanguage", "PixelFunctionCode"):
            raise ForbiddenReferenceError("VRT pixel functions are not accepted; send the bands themselves")
        if el.tag in ("SourceFilename", "SourceDataset"):
            target = (el.text or "").strip()
            if target not in parts:
                raise ForbiddenReferenceError(
                    f"the VRT reads {target!r}, which is not a file of this request; a VRT may only reference the "
                    f"other files uploaded with it, by their file names (uploaded: {sorted(parts) or 'none'})"
                )
            el.set("relativeToVRT", "1")
            referenced.add(target)
    return ET.tostring(root)


def _is_vrt(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n")[:11].lower() == b"<vrtdataset"


def _open_allowed(source: MemoryFile | str) -> DatasetReaderBase:
    """Open an uploaded part (or a subdataset of one) with the allowed drivers only, GDAL choosing among them.

    Not ``rasterio.open``: it takes a single driver name, and ties the dataset to a GDAL environment
    of the thread that opened it, while the service opens in a worker thread and closes on the loop.
    """
    if isinstance(source, MemoryFile):
        return source.open(driver=list(ALLOWED_DRIVERS))
    return DatasetReader(source, driver=list(ALLOWED_DRIVERS))


def _subdataset_variable(name: str) -> str:
    """``B04`` from ``netcdf:/vsimem/x/s.nc:B04`` or ``HDF5:"/vsimem/x/s.h5"://group/B04``."""
    return name.rsplit(":", 1)[-1].strip('"').rstrip("/").rsplit("/", 1)[-1]


def _extent(ds: DatasetReaderBase) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` whatever the sign of the pixel size (ungeoreferenced files have y down)."""
    b = ds.bounds
    return min(b.left, b.right), min(b.bottom, b.top), max(b.left, b.right), max(b.bottom, b.top)


@dataclass
class _Grid:
    crs: object
    transform: rasterio.Affine
    width: int
    height: int


class RequestScene:
    """The files of one request, opened in its own ``/vsimem/`` folder; a context manager that closes them all."""

    def __init__(self, files: Sequence[UploadedFile], bands: Sequence[str] | None = None) -> None:
        self._stack = ExitStack()
        self.folder = f"mapex-{uuid.uuid4().hex}"
        self.bands: list[InputBand] = []
        self.ignored_subdatasets: list[str] = []
        try:
            self._open(files)
            self._identify(bands)
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> RequestScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _closing(self, ds: DatasetReaderBase) -> DatasetReaderBase:
        """Close ``ds`` with the scene. Not ``enter_context``: a dataset's ``__enter__`` ties a GDAL env to the
        opening thread, and the service opens in a worker thread but closes on the event loop."""
        self._stack.callback(ds.close)
        return ds

    # -- opening ------------------------------------------------------------------------------------

    def _open(self, files: Sequence[UploadedFile]) -> None:
        taken: set[str] = set()
        names = [_safe_name(f.name, i, taken) for i, f in enumerate(files)]
        data_parts = {n for n, f in zip(names, files, strict=True) if not _is_vrt(f.data)}
        memfiles, referenced = [], set()
        for name, f in zip(names, files, strict=True):
            data = _checked_vrt(f.data, data_parts, referenced) if _is_vrt(f.data) else f.data
            memfiles.append((name, self._stack.enter_context(MemoryFile(data, dirname=self.folder, filename=name))))
        # Sidecars (ENVI .hdr, .aux.xml, .msk) are parts too: open only the parts that are rasters themselves.
        self.datasets: list[tuple[str, DatasetReaderBase]] = []
        for name, mem in memfiles:
            if name in referenced or name.lower().endswith((".hdr", ".aux.xml", ".msk", ".ovr")):
                continue
            ds = self._closing(_open_allowed(mem))
            if ds.count == 0 and ds.subdatasets:
                self.datasets += self._open_subdatasets(name, ds)
            elif ds.count == 0 or ds.width * ds.height == 0:
                raise UnreadableInputError(f"{name}: the raster has no pixels or no bands")
            else:
                _check_blocks(name, ds)
                self.datasets.append((name, ds))
        if not self.datasets:
            raise UnreadableInputError("the request holds no raster (only sidecar files); send the raster files too")

    def _open_subdatasets(self, name: str, container: DatasetReaderBase) -> list[tuple[str, DatasetReaderBase]]:
        opened, seen = [], []
        for sub in container.subdatasets:
            if f"/vsimem/{self.folder}/" not in sub:  # GDAL names subdatasets after our own path; nothing else
                raise ForbiddenReferenceError(f"{name}: subdataset {sub!r} is outside this request")
            variable = _subdataset_variable(sub)
            seen.append(variable)
            identity = parse_name(variable)
            if identity is None or not identity.used:
                self.ignored_subdatasets.append(f"{name}:{variable}")
                continue
            ds = self._closing(_open_allowed(sub))
            _check_blocks(f"{name}:{variable}", ds)
            opened.append((f"{name}:{variable}", ds))
        if not opened:
            raise SubdatasetsError(
                f"{name} holds subdatasets {seen}, none of which names a band the service knows; name the variables "
                f"after their bands (B04, red, VV, Sigma0_VV_db, DEM, SCL ...) or convert the bands to a GeoTIFF "
                f"(gdal_translate 'NETCDF:\"{name}\":VARIABLE' band.tif) with band descriptions"
            )
        return opened

    def _identify(self, bands: Sequence[str] | None) -> None:
        total = sum(ds.count for _, ds in self.datasets)
        if bands is not None and len(bands) != total:
            raise missing_names_error(total, [d for _, ds in self.datasets for d in ds.descriptions], bands)
        offset = 0
        for name, ds in self.datasets:
            given = None if bands is None else list(bands[offset: offset + ds.count])
            offset += ds.count
            file, _, variable = name.partition(":")  # "file.nc:B04" is a subdataset, named by its variable
            landsat = _is_landsat(ds, file)
            source = "subdataset name" if variable else "file name"
            for i, identity in enumerate(identify_bands(ds, variable or file, given, source), start=1):
                self.bands.append(InputBand(name, i, ds, identity, landsat))
        if not any(b.identity.used for b in self.bands):
            raise missing_names_error(total, [b.identity.found for b in self.bands], bands)
        seen: dict[str, InputBand] = {}
        for b in self.bands:
            key = b.identity.canonical or b.identity.quality
            if key is None:
                continue
            if key in seen:
                first = seen[key]
                raise DuplicateBandError(
                    f"{key} is given twice: {first.file} band {first.index} ({first.identity.found!r}) and {b.file} "
                    f"band {b.index} ({b.identity.found!r}); send it once, or pass bands= with '-' for the copy to skip"
                )
            seen[key] = b

    # -- what the request holds ---------------------------------------------------------------------

    @property
    def canonical_bands(self) -> list[str]:
        """The model bands present, in file order (what routing chooses from)."""
        return [b.identity.canonical for b in self.bands if b.identity.canonical]

    def band(self, canonical: str) -> InputBand:
        return next(b for b in self.bands if b.identity.canonical == canonical)

    def quality_bands(self) -> list[InputBand]:
        return [b for b in self.bands if b.identity.quality]

    def grid(self, used: Sequence[InputBand]) -> _Grid:
        """The finest grid of the files of ``used``, cropped to where they all overlap."""
        datasets = list({id(b.dataset): b for b in used}.values())
        ref = min(datasets, key=lambda b: abs(b.dataset.transform.a * b.dataset.transform.e))
        for b in datasets:
            if b.dataset.crs != ref.dataset.crs:
                raise GridMismatchError(
                    f"{ref.file} is in {ref.dataset.crs} {tuple(ref.dataset.bounds)} but {b.file} is in "
                    f"{b.dataset.crs} {tuple(b.dataset.bounds)}; reproject the files to one CRS (gdalwarp -t_srs)"
                )
        if ref.dataset.crs is None and any((b.dataset.transform, b.dataset.shape) != (ref.dataset.transform,
                                                                                     ref.dataset.shape)
                                           for b in datasets):
            raise GridMismatchError(f"{ref.file} has no CRS and the files' grids differ; without georeferencing "
                                    f"files can only be stacked when they share one grid: add the CRS (gdal_edit -a_srs)")
        boxes = [_extent(b.dataset) for b in datasets]
        left, bottom = max(x[0] for x in boxes), max(x[1] for x in boxes)
        right, top = min(x[2] for x in boxes), min(x[3] for x in boxes)
        if len(datasets) > 1 and (left >= right or bottom >= top):
            other = next(b for b in datasets if b is not ref)
            raise GridMismatchError(
                f"the files do not overlap: {ref.file} covers {tuple(ref.dataset.bounds)} and {other.file} covers "
                f"{tuple(other.dataset.bounds)} (in {ref.dataset.crs}); send files of the same place"
            )
        t = ref.dataset.transform
        if len(datasets) == 1 or (left, bottom, right, top) == _extent(ref.dataset):
            return _Grid(ref.dataset.crs, t, ref.dataset.width, ref.dataset.height)
        window = from_bounds(left, bottom, right, top, t).round_offsets().round_lengths()
        return _Grid(ref.dataset.crs, rasterio.windows.transform(window, t), int(window.width), int(window.height))

    def reader(self, canonical: Sequence[str], overrides: UnitOverrides, sample: int = 64,
               max_pixels: int | None = None) -> SceneReader:
        """A reader of ``canonical`` bands (in that order) in physical units, quality layers applied.

        Conversions are decided here and checked against a sample of each band's values.
        """
        used = [self.band(c) for c in canonical]
        quality = self.quality_bands()
        grid = self.grid(used + quality)
        if max_pixels is not None and grid.width * grid.height > max_pixels:
            raise RasterTooLargeError(
                f"the raster is {grid.width} x {grid.height} = {grid.width * grid.height:,} pixels; at most "
                f"{max_pixels:,} are accepted (MAPEX_MAX_PIXELS): crop or split the scene"
            )
        reader = SceneReader(grid, used, quality, self._stack)
        for b in used:
            b.conversion = conversion_for(b.dataset, b.index, b.identity.canonical, name_unit=b.identity.unit_hint,
                                          overrides=overrides, landsat=b.landsat)
        for b, (stored, physical) in zip(used, reader.samples(sample), strict=True):
            check_plausible(b.conversion, ValueStats.of(stored, physical, b.dataset.dtypes[b.index - 1]),
                            b.identity.found or f"{b.file} band {b.index}")
        return reader


@dataclass
class _Source:
    """Where bands are read from on the scene grid: a dataset (maybe resampled) and its 1-based indexes."""

    dataset: DatasetReaderBase
    window_offset: tuple[int, int]  # (row, col) of the scene grid's origin in ``dataset``
    indexes: list[int]
    positions: list[int]  # where those bands go in the reader's output, in the same order

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Stored values (k, h, w) and inside-the-data masks (k, h, w) of an in-scene window, one GDAL call each."""
        r, c = self.window_offset
        w = Window(window.col_off + c, window.row_off + r, window.width, window.height)
        return self.dataset.read(self.indexes, window=w), self.dataset.read_masks(self.indexes, window=w) > 0


class SceneReader:
    """Windows of the stacked scene as physical float32 values with a reason code per invalid pixel.

    Implements what the tiler reads from (``height``, ``width``, ``read``). Every pixel's reason is
    also kept in one uint8 raster so that the response can count masked pixels once each, however
    many overlapping tiles read them.
    """

    def __init__(self, grid: _Grid, used: Sequence[InputBand], quality: Sequence[InputBand], stack: ExitStack) -> None:
        self.grid = grid
        self.height, self.width = grid.height, grid.width
        self.bands = list(used)
        self.quality = list(quality)
        self.resampled: list[str] = []
        self._vrts: dict[tuple[int, Resampling], WarpedVRT] = {}
        self._sources = self._group(used, Resampling.bilinear, stack)
        self._quality_sources = self._group(quality, Resampling.nearest, stack)
        self.reasons_text: dict[int, str] = dict(_BASE_REASONS)
        self._rules: list[tuple[QualityLayer, dict[str, int]]] = []
        for b in quality:
            layer = QUALITY_LAYERS[b.identity.quality]
            whys = [*(layer.invalid_values or {}).values(), *(layer.invalid_bits or {}).values()]
            codes = {}
            for why in whys:
                codes[why] = len(self.reasons_text) + 1
                self.reasons_text[codes[why]] = why
            self._rules.append((layer, codes))
        self._reasons: np.ndarray | None = None

    def _group(self, bands: Sequence[InputBand], resampling: Resampling, stack: ExitStack) -> list[_Source]:
        """One source per dataset: bands on the scene grid are read as they are, others through a WarpedVRT."""
        sources: dict[int, _Source] = {}
        g = self.grid
        for position, b in enumerate(bands):
            key = id(b.dataset)
            if key not in sources:
                ds, offset = b.dataset, None
                if ds.crs == g.crs and (ds.transform.a, ds.transform.e) == (g.transform.a, g.transform.e):
                    col, row = ~ds.transform @ (g.transform.c, g.transform.f)
                    if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
                        offset = (round(row), round(col))
                if offset is None:
                    ds = WarpedVRT(b.dataset, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                                   resampling=resampling)
                    stack.callback(ds.close)
                    offset = (0, 0)
                    if b.file not in self.resampled:
                        self.resampled.append(b.file)
                sources[key] = _Source(ds, offset, [], [])
            sources[key].indexes.append(b.index)
            sources[key].positions.append(position)
        return list(sources.values())

    def _stored(self, sources: list[_Source], n: int, window: Window) -> tuple[list, list]:
        stored, inside = [None] * n, [None] * n
        for s in sources:
            values, masks = s.read(window)
            for k, position in enumerate(s.positions):
                stored[position], inside[position] = values[k], masks[k]
        return stored, inside

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(physical (C, h, w) float32, reasons (h, w) uint8)`` of an in-scene window; reason 0 is valid."""
        h, w = int(window.height), int(window.width)
        physical = np.empty((len(self.bands), h, w), np.float32)
        reasons = np.zeros((h, w), np.uint8)
        stored, inside = self._stored(self._sources, len(self.bands), window)
        for i, b in enumerate(self.bands):
            physical[i] = b.conversion.apply(stored[i])
            _mark(reasons, ~inside[i], _NODATA)
            if stored[i].dtype.kind == "f":
                _mark(reasons, ~np.isfinite(stored[i]), _NOT_FINITE)
            _mark(reasons, ~np.isfinite(physical[i]), _UNDEFINED)
        values, inside = self._stored(self._quality_sources, len(self.quality), window)
        for (layer, codes), v, ok in zip(self._rules, values, inside, strict=True):
            _mark(reasons, ~ok, _NODATA)
            v = v.astype(np.int64)
            for value, why in (layer.invalid_values or {}).items():
                _mark(reasons, v == value, codes[why])
            for bit, why in (layer.invalid_bits or {}).items():
                _mark(reasons, (v & (1 << bit)) != 0, codes[why])
        self._record(window, reasons)
        return physical, reasons

    def _record(self, window: Window, reasons: np.ndarray) -> None:
        if self._reasons is None:
            self._reasons = np.zeros((self.height, self.width), np.uint8)
        r, c = int(window.row_off), int(window.col_off)
        self._reasons[r: r + reasons.shape[0], c: c + reasons.shape[1]] = reasons

    def masked(self) -> dict[str, int]:
        """Invalid pixels of the scene read so far, by reason (each pixel counted once)."""
        if self._reasons is None:
            return {}
        counts = np.bincount(self._reasons.ravel(), minlength=len(self.reasons_text) + 1)
        return {self.reasons_text[code]: int(n) for code, n in enumerate(counts) if code and n}

    def samples(self, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each band's valid stored and physical values at up to 5 x 5 windows of ``size`` px spread over the scene."""
        parts: list[list[np.ndarray]] = [[] for _ in self.bands]
        for window in _sample_windows(self.height, self.width, size):
            stored, inside = self._stored(self._sources, len(self.bands), window)
            for i in range(len(self.bands)):
                parts[i].append(stored[i][inside[i]])
        out = []
        for b, chunks in zip(self.bands, parts, strict=True):
            values = np.concatenate(chunks)
            out.append((values, b.conversion.apply(values)))
        return out


def _mark(reasons: np.ndarray, where: np.ndarray, code: int) -> None:
    """Give ``code`` to the pixels of ``where`` that have no reason yet (the first reason found is kept)."""
    reasons[where & (reasons == VALID)] = code


def _sample_windows(height: int, width: int, size: int) -> Iterator[Window]:
    rows = sorted({int(r) for r in np.linspace(0, max(height - size, 0), 5)})
    cols = sorted({int(c) for c in np.linspace(0, max(width - size, 0), 5)})
    for r in rows:
        for c in cols:
            yield Window(c, r, min(size, width - c), min(size, height - r))
