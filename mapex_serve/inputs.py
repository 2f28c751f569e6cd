"""One scene from the files of one request: containers opened, bands identified, grids stacked, units decided.

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

import mmap
import os
import re
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import Interleaving
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.io import DatasetReader, DatasetReaderBase, MemoryFile

from mapex_serve.aoi import crop
from mapex_serve.archives import ArchiveTooLargeError, Unpacked, unpack
from mapex_serve.backscatter import check_backscatter, to_sigma0
from mapex_serve.bands import QUALITY_LAYERS, landsat_collection_layers
from mapex_serve.budget import Room
from mapex_serve.dimap import SnapBand, remote_start, tiff_bands
from mapex_serve.eopf import product_arrays, radar_geometry, stated_crs, unreadable
from mapex_serve.errors import DuplicateBandError, MapexError
from mapex_serve.geokeys import crs_from_keys, crs_of_keys, georeferencing
from mapex_serve.ground import fit_to_model
from mapex_serve.mosaic import Tile, mosaic_vrt
from mapex_serve.planet import planet_product
from mapex_serve.products import display_image, sentinel1_as_shipped
from mapex_serve.rasters import (
    band_key,
    identify_bands,
    landsat_sensor,
    missing_names_error,
    parse_name,
    request_band_names,
)
from mapex_serve.reflectance import check_level
from mapex_serve.remote import remote_failure
from mapex_serve.reproject import on_grid, warp_onto
from mapex_serve.scene_reader import Grid, InputBand, SceneReader
from mapex_serve.theia import nodata as theia_nodata
from mapex_serve.thresholds import check_layer_values, cuts_for
from mapex_serve.units import (
    ZERO_IS_NODATA,
    ImplausibleValuesError,
    UnitOverrides,
    ValueStats,
    check_plausible,
    check_stated_units,
    conversion_for,
    zero_is_nodata,
)

if TYPE_CHECKING:
    from mapex_serve.repository import Manifest

__all__ = [
    "ALLOWED_DRIVERS",
    "ForbiddenReferenceError",
    "GridMismatchError",
    "NotOnAGridError",
    "RasterTooLargeError",
    "RequestScene",
    "SourceFile",
    "SIDECARS",
    "SubdatasetsError",
    "UnreadableInputError",
    "UploadedFile",
    "check_values",
    "without_request_folder",
]

#: GDAL drivers an upload may be read with: none of them opens a file the upload names (VRT is checked). SRTMHGT:
#: the SRTM and NASADEM elevation tiles (``N51W001.hgt``), named by their corner, which is all they say.
ALLOWED_DRIVERS = ("GTiff", "COG", "netCDF", "HDF5", "HDF5Image", "ENVI", "JP2OpenJPEG", "SRTMHGT", "VRT")

class ForbiddenReferenceError(MapexError, ValueError):
    """A VRT (or other container) that points outside the files of its own request."""


class GridMismatchError(MapexError, ValueError):
    """Files of one request that cannot be stacked: different CRSs, or no overlap."""


class NotOnAGridError(GridMismatchError):
    """A raster placed on Earth by ground control points or RPCs, not a map grid: its answer could not keep it."""


class SubdatasetsError(MapexError, ValueError):
    """A container (NetCDF, HDF5) none of whose subdatasets names a band."""


class UnreadableInputError(MapexError, ValueError):
    """A file of the request that holds no raster GDAL can read as one."""


class RasterTooLargeError(MapexError, ValueError):
    """The scene has more pixels than MAPEX_MAX_PIXELS, or is stored in blocks too large to read by windows."""


#: Largest block (decoded) a file may be stored in: every window read decodes a whole block, so a
#: single-strip or untiled scene would be decompressed again for each of its thousands of tiles.
MAX_BLOCK_BYTES = 64 * 2**20


def _check_grid(name: str, grid: Grid) -> None:
    """Refuse a raster whose geotransform has no area (a pixel size of 0): no grid can be built on it."""
    if grid.transform.determinant == 0:
        raise UnreadableInputError(f"{name}: the geotransform {tuple(grid.transform)[:6]} is degenerate (a pixel size "
                                   f"of 0); fix the file's georeferencing (gdal_edit -a_ullr or -a_srs)")


def _check_on_a_grid(name: str, ds: DatasetReaderBase, grid: Grid) -> None:
    """Refuse a raster georeferenced by ground control points or RPCs (radar or satellite geometry) rather than a
    geotransform (``grid``, GDAL's of ``ds``): the answer is made on the file's pixel grid and would no longer say
    where it lies. A raster with no georeferencing at all is read, and answered, in pixels."""
    if not grid.transform.is_identity:
        return
    gcps, _ = ds.gcps
    if gcps or ds.rpcs:
        how = f"{len(gcps)} ground control points" if gcps else "RPCs"
        raise NotOnAGridError(
            f"{name} is placed on Earth by {how}, not on a map grid: the answer, made on its pixels, could not say "
            f"where it lies; warp it onto a grid first (gdalwarp -t_srs EPSG:<its UTM zone, e.g. 32633> -r bilinear "
            f"in.tif gridded.tif), or for Sentinel-1 calibrated in SNAP, terrain-correct it (Radar > Geometric > "
            f"Terrain Correction) and send what that writes")


def _check_blocks(name: str, ds: DatasetReaderBase) -> None:
    """Refuse a raster whose blocks (strips or tiles) are too large for window-by-window reading."""
    rows, cols = ds.block_shapes[0]
    bands = 1 if ds.interleaving is Interleaving.band else ds.count  # band-interleaved blocks hold one band each
    nbytes = rows * cols * bands * max(np.dtype(t).itemsize for t in ds.dtypes)
    if nbytes > MAX_BLOCK_BYTES:
        raise RasterTooLargeError(
            f"{name} is stored in blocks of {cols} x {rows} pixels ({nbytes / 2**20:,.0f} MiB decoded each; at most "
            f"{MAX_BLOCK_BYTES / 2**20:.0f} MiB are accepted): every window read would decode a whole block; save it "
            f"tiled (gdal_translate -of COG in.tif out.tif, or -co TILED=YES)"
        )


@dataclass(frozen=True)
class UploadedFile:
    """One ``file`` part of a request: the name the client gave and its bytes.

    ``in_place``: a GDAL path to the same bytes where they already lie (a TIFF in a decode worker's shared
    slab, ``data`` then a view of it), opened there instead of copied into the request's ``/vsimem/`` folder.
    """

    name: str
    data: bytes | memoryview
    in_place: str | None = None


#: Drivers a file read in place may be opened with: a job's saved upload, or a remote COG or Zarr store (an EOPF
#: product, ``mapex_serve.eopf``).
SOURCE_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "netCDF", "HDF5", "HDF5Image", "SRTMHGT", "Zarr")
REMOTE_DRIVERS = ("GTiff", "COG", "JP2OpenJPEG", "Zarr")


@dataclass(frozen=True)
class SourceFile:
    """A file of a scene read where it is (a job's saved upload, or ``/vsicurl/``, ``/vsis3/`` and ``/vsigs/`` paths).

    ``name`` is what band identification reads (the name the client sent, or the URL's file name),
    ``path`` what GDAL opens. ``nodata`` (one value or None per band) comes from a STAC item's
    ``raster:bands`` when the file itself declares none. No VRTs: a VRT could read anything.
    """

    name: str
    path: str
    nodata: tuple[float | None, ...] | None = None

    @property
    def remote(self) -> bool:
        return self.path.startswith("/vsi")


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


def _open_in_slab(path: str, data: bytes | memoryview) -> tuple[DatasetReaderBase, Grid | None]:
    """A TIFF read in place, and its grid where its tags give it: opened without GDAL's georeferencing then.

    GDAL builds a UTM file's CRS from its GeoKeys in every open, and the comparisons of a CRS so built cost more
    later: a fifth of a 32 px tile's decoding. Where the keys are ones GDAL met before (``crs_of_keys``) and the
    tags say the rest (``tag_georeference``), the file is opened with ``GEOREF_SOURCES=NONE`` and given that grid.
    Otherwise GDAL's way, and the CRS it built is kept where the transform it read is the tags' (always, for such
    tags: this checks it).
    """
    by_code, tags = georeferencing(data)
    crs = None if tags is None else crs_of_keys.get(tags.keys)
    if tags is not None and crs is not None:
        with warnings.catch_warnings():  # rasterio warns of every file without a geotransform
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = DatasetReader(path, driver=list(ALLOWED_DRIVERS), GEOREF_SOURCES="NONE")
        return ds, Grid(crs, tags.transform, ds.width, ds.height)
    with crs_from_keys(data, by_code=by_code):
        ds = _open_allowed(path)
    if tags is not None and ds.crs is not None and ds.transform == tags.transform:
        crs_of_keys.learn(tags.keys, ds.crs)
    return ds, None


@contextmanager
def _named(source: MemoryFile | str, name: str) -> Iterator[None]:
    """GDAL's errors opening a file read in place name the file as the user sent it, as they do from ``/vsimem/``."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as e:
        if not isinstance(source, str):
            raise
        raise RasterioIOError(str(e).replace(source, name)) from None


def check_values(reader: SceneReader, sample: int = 64) -> None:
    """Each band's values, in windows of ``sample`` pixels, against its conversion: ``ImplausibleValuesError`` (422,
    naming the fix) for values that do not fit their units, such as linear backscatter taken as dB."""
    for b, (stored, physical) in zip(reader.bands, reader.samples(sample), strict=True):
        check_plausible(b.conversion, ValueStats.of(stored, physical, b.dataset.dtypes[b.index - 1]),
                        b.identity.found or f"{b.file} band {b.index}")
    for b, values in reader.threshold_samples(sample):
        check_layer_values(QUALITY_LAYERS[b.identity.quality], values, b.dataset.dtypes[b.index - 1],
                           b.identity.found or f"{b.file} band {b.index}")


def _steps(ds: DatasetReaderBase) -> tuple[str, str] | None:
    """``("t", "12000, 12005 days since 1990-01-01")``: the dimension besides y and x along which a NetCDF variable's
    bands lie (openEO's time axis, xarray's) and its values; None for a raster without one."""
    tags = ds.tags()
    extra = tags.get("NETCDF_DIM_EXTRA", "").strip("{}")
    if not extra:
        return None
    dim = extra.split(",")[0]
    values = tags.get(f"NETCDF_DIM_{dim}_VALUES", "").strip("{}").replace(",", ", ")
    units = tags.get(f"{dim}#units")
    return dim, f"{values} {units}" if units else values


def _subdatasets(container: DatasetReaderBase) -> list[str]:
    """The container's subdatasets as GDAL names them: rasterio's ``subdatasets`` drops the quotes around a path
    that holds a colon (``ZARR:"/vsicurl/https://host/S2B_MSIL2A_<...>.zarr":/measurements/...``), which GDAL needs
    to open it again."""
    tags = container.tags(ns="SUBDATASETS")
    return [tags[f"SUBDATASET_{i}_NAME"] for i in range(1, len(tags) + 1) if f"SUBDATASET_{i}_NAME" in tags]


def _subdataset_variable(name: str) -> str:
    """``B04`` from ``netcdf:/vsimem/x/s.nc:B04`` or ``HDF5:"/vsimem/x/s.h5"://group/B04``."""
    return name.rsplit(":", 1)[-1].strip('"').rstrip("/").rsplit("/", 1)[-1]


def _head(path: str, n: int = 64) -> bytes:
    """The first bytes of a file (enough to tell a VRT), never the whole of a scene; none of a folder (a Zarr
    store)."""
    if os.path.isdir(path):
        return b""
    with open(path, "rb") as f:
        return f.read(n)


def _open_in_place(name: str, path: str, remote: bool) -> DatasetReaderBase:
    """A remote file (or a subdataset of one) is opened without listing the bucket or web folder beside it (one
    request fewer, and no listing of a large prefix); only for this open: set process-wide, the setting hides local
    sidecars (.hdr). A container of subdatasets has no georeferencing of its own: rasterio's warning says nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if not remote:
            return DatasetReader(path, driver=list(SOURCE_DRIVERS))
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            return _open_remote(name, path)


def _open_source(name: str, path: str, remote: bool) -> DatasetReaderBase:
    """``_open_in_place``, a Zarr store GDAL cannot read said as such (``eopf.unreadable``)."""
    try:
        return _open_in_place(name, path, remote)
    except RasterioIOError as e:
        if ".zarr" not in path.lower():
            raise
        raise UnreadableInputError(unreadable(name, without_request_folder(str(e)))) from None


def _open_remote(name: str, path: str) -> DatasetReaderBase:
    """``path`` opened with the remote drivers, a failure of its server said as such (``remote_failure``)."""
    try:
        return DatasetReader(path, driver=list(REMOTE_DRIVERS))
    except RasterioIOError as e:
        if (failure := remote_failure(name, str(e))) is not None:
            raise failure from None
        raise


def _own_grid(ds: DatasetReaderBase) -> Grid | None:
    """The grid of a raster whose CRS GDAL does not read but its metadata states (an EOPF Zarr array's
    ``proj:epsg``); None for any other."""
    crs = stated_crs(ds)
    return None if crs is None else Grid(crs, ds.transform, ds.width, ds.height)


@cache
def _register_drivers() -> frozenset[str]:
    """GDAL's drivers, registered once for the process (a path opened with ``DatasetReader`` outside any
    ``rasterio.Env`` finds none; a ``MemoryFile`` registers them itself)."""
    with rasterio.Env() as env:
        return frozenset(env.drivers())


#: Parts GDAL reads beside a raster by its name (ENVI headers, PAM metadata, mask and overview sidecars): never
#: opened as rasters of their own, and found only where every part lies in the request's ``/vsimem/`` folder.
SIDECARS = (".hdr", ".aux.xml", ".msk", ".ovr")

#: ``RequestScene.folder`` as it appears in GDAL's messages.
_REQUEST_FOLDER = re.compile(r"/vsimem/mapex-[0-9a-f]{32}/")
#: An ``UploadedFile.in_place`` path (``/vsisubfile/<offset>_<size>,<slab>``) as it appears in GDAL's messages.
_IN_PLACE = re.compile(r"/vsisubfile/[0-9]+_[0-9]+,[^\s:'\"]*")


def without_request_folder(message: str) -> str:
    """``message`` without the request's ``/vsimem/mapex-<hex>/`` folder or its slab's path: they mean nothing to a
    user (the file in a slab is "the upload")."""
    return _IN_PLACE.sub("the upload", _REQUEST_FOLDER.sub("", message))


def _north_up(grid: Grid) -> Grid:
    """A south-up grid (a positive pixel height: rioxarray's GeoTIFF of an array whose y ascends) as the same pixels
    north-up, so that the model sees the scene as it learned scenes, north at the top: its files are read through
    GDAL's warper, which on the same pixels gives the same values. Pixel space (no CRS) stays as it is."""
    t = grid.transform
    if grid.crs is None or t.e <= 0 or t.b or t.d:
        return grid
    return replace(grid, transform=rasterio.Affine(t.a, 0.0, t.c, 0.0, -t.e, t.f + t.e * grid.height))


class RequestScene:
    """The files of one request, opened in its own ``/vsimem/`` folder; a context manager that closes them all."""

    def __init__(self, files: Sequence[UploadedFile | SourceFile], bands: Sequence[str] | None = None,
                 max_unpacked: int = 200 * 2**20, room: Room | None = None, items: bool = False) -> None:
        """``max_unpacked``: the bytes the request's archives may unpack to (the service passes MAPEX_MAX_UPLOAD_MB);
        ``room``: the memory budget as the request found it, which they may not unpack past either (413 or 503);
        ``items``: the files are those of a catalogue's items of one acquisition, named by ``bands`` (a job's list of
        STAC items), each band's files to be read as one raster."""
        self._stack = ExitStack()
        self.folder = f"mapex-{uuid.uuid4().hex}"
        self.datasets: list[tuple[str, DatasetReaderBase]] = []  # (name, dataset): files and subdatasets
        self.bands: list[InputBand] = []
        self.ignored_subdatasets: list[str] = []
        #: The files read as the tiles of one raster (``mapex_serve.mosaic``), in the order sent; empty for any other.
        self.mosaicked: list[str] = []
        #: Of those, the items' files on another grid than their band's first, read warped onto it (``reproject``),
        #: by the name of the band's mosaic.
        self.reprojected: dict[str, list[str]] = {}
        self.archives: list[Unpacked] = []
        self._max_unpacked, self._room = max_unpacked, room
        #: Bytes of the request's files copied into its ``/vsimem/`` folder (archive members, every part but a TIFF,
        #: which is read where it arrived): memory the scene holds until it closes.
        self.held_bytes = 0
        self._nodata: dict[str, tuple[float | None, ...]] = {}  # per-band nodata a STAC item gives, by file
        self._grids: dict[str, Grid] = {}  # files opened without GDAL's georeferencing: their grid, by file
        self._snap: dict[str, tuple[SnapBand, ...]] = {}  # what SNAP's header says of each band, by file
        try:
            self._open(files)
            if items:
                bands = self._mosaic_items(bands)
            else:
                self._mosaic()
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

    def _open(self, files: Sequence[UploadedFile | SourceFile]) -> None:
        if all(isinstance(f, SourceFile) for f in files):
            self._open_sources(files)
            return
        if any(isinstance(f, SourceFile) for f in files):
            raise TypeError("a scene is read from uploaded bytes or from files in place, not both")
        files = self._unpacked(files)
        taken: set[str] = set()
        names = [_safe_name(f.name, i, taken) for i, f in enumerate(files)]
        data_parts = {n for n, f in zip(names, files, strict=True) if f.in_place or not _is_vrt(f.data)}
        memfiles: list[tuple[str, bytes | memoryview, MemoryFile | str]] = []
        referenced: set[str] = set()
        for name, f in zip(names, files, strict=True):
            if f.in_place is not None:  # a TIFF: no VRT to check, no sidecar beside it
                _register_drivers()
                memfiles.append((name, f.data, f.in_place))
                continue
            data = _checked_vrt(f.data, data_parts, referenced) if _is_vrt(f.data) else f.data
            memfiles.append((name, data, self._stack.enter_context(MemoryFile(data, dirname=self.folder, filename=name))))
            self.held_bytes += len(data)
        # Sidecars (ENVI .hdr, .aux.xml, .msk) are parts too: open only the parts that are rasters themselves.
        for name, data, mem in memfiles:
            if name in referenced or name.lower().endswith(SIDECARS):
                continue
            if not len(data):  # rasterio would open an empty MemoryFile as one to write: a 500
                raise UnreadableInputError(f"{name} is empty (0 bytes); send the file's contents, or leave it out")
            with _named(mem, name):
                if isinstance(mem, str):
                    ds, grid = _open_in_slab(mem, data)
                    self._closing(ds)
                else:
                    with crs_from_keys(data):
                        ds, grid = self._closing(_open_allowed(mem)), None
            if ds.count == 0 and ds.subdatasets:
                self.datasets += self._open_subdatasets(name, ds, mem if isinstance(mem, str) else None)
            elif ds.count == 0 or ds.width * ds.height == 0:
                raise UnreadableInputError(f"{name}: the raster has no pixels or no bands")
            else:
                _check_grid(name, grid or (own := Grid.of(ds)))
                if grid is None:  # else its tags gave the grid, and GDAL was not asked for it
                    _check_on_a_grid(name, ds, own)
                _check_blocks(name, ds)
                self.datasets.append((name, ds))
                if grid is not None:
                    self._grids[name] = grid
                self._read_snap_header(name, ds, data)
        if not self.datasets:
            raise UnreadableInputError("the request holds no raster (only sidecar files); send the raster files too")

    def _mosaic(self) -> None:
        """Files that are the tiles of one raster (an Earth Engine export split in several) become that raster, named
        as its first tile: one VRT over them in the request's folder."""
        if len(self.datasets) < 2 or self._snap or self._nodata:  # a SNAP header's bands; a STAC item's assets
            return
        tiles = [Tile(name, ds, self._grids.get(name) or Grid.of(ds)) for name, ds in self.datasets]
        if (found := mosaic_vrt(tiles)) is None:
            return
        vrt = self._stack.enter_context(MemoryFile(found[0].encode(), dirname=self.folder, filename="mosaic.vrt"))
        self.mosaicked = [name for name, _ in self.datasets]
        self.datasets = [(self.mosaicked[0], self._closing(_open_allowed(vrt)))]
        self._grids = {}

    def _mosaic_items(self, bands: Sequence[str] | None) -> list[str] | None:
        """The files of a catalogue's items of one acquisition, one VRT a band over its files (``mosaic.mosaic_vrt``:
        they may overlap, painted in order); the band names of the files that remain."""
        if bands is None:
            return None
        groups: dict[tuple[str, ...], list[tuple[str, DatasetReaderBase]]] = {}
        named: dict[tuple[str, ...], list[str]] = {}  # each group's names, as its first file's item gives them
        offset = 0
        for name, ds in self.datasets:
            given = list(bands[offset: offset + ds.count])
            key = tuple(band_key(b) for b in given)
            groups.setdefault(key, []).append((name, ds))
            named.setdefault(key, given)
            offset += ds.count
        datasets, names = [], []
        for i, (key, members) in enumerate(groups.items()):
            names += named[key]
            if len(members) == 1:
                datasets.append(members[0])
                continue
            tiles = [Tile(name, ds, self._grids.get(name) or Grid.of(ds)) for name, ds in members]
            quality = any((named_as := parse_name(n)) is not None and named_as.quality for n in named[key])
            tiles = [tiles[0], *(t if on_grid(t.grid, tiles[0].grid) else self._warped(t, tiles[0].grid, quality, key)
                                 for t in tiles[1:])]
            if warped := [t.name for t, (_, ds) in zip(tiles, members, strict=True) if t.dataset is not ds]:
                self.reprojected[members[0][0]] = warped
            if (found := mosaic_vrt(tiles, items=True, nodata=self._nodata.get(members[0][0]))) is None:
                grids = "; ".join(f"{t.name}: {t.grid.crs} {t.grid.extent()}" for t in tiles)
                raise GridMismatchError(
                    f"the items' files of {', '.join(key)} cannot be read as one raster ({grids}): they differ in "
                    f"band count, data type or masks, or the first is not north-up; send a job an item")
            vrt = self._stack.enter_context(MemoryFile(found[0].encode(), dirname=self.folder,
                                                       filename=f"items-{i}.vrt"))
            self.mosaicked += [name for name, _ in members]
            datasets.append((members[0][0], self._closing(_open_allowed(vrt))))
        self.datasets = datasets
        return names

    def _warped(self, tile: Tile, ref: Grid, quality: bool, key: tuple[str, ...]) -> Tile:
        """An item's file not on the grid of its band's first (another UTM zone) as a VRT warped onto that grid
        (``mapex_serve.reproject``), listed among the files read resampled."""
        nodata = tile.dataset.nodatavals[0]
        if nodata is None and (given := self._nodata.get(tile.name)):
            nodata = given[0]
        if nodata is None or tile.grid.crs is None or ref.crs is None:
            raise GridMismatchError(
                f"{tile.name} ({', '.join(key)}) is on another grid than the first item's ({tile.grid.crs} against "
                f"{ref.crs}) and declares no no-data value: it would be warped onto the first's grid, and where it "
                f"does not reach it would paint zeros over the first's pixels; give its no-data value (the file's, "
                f"or its STAC item's raster:bands nodata), or send a job an item")
        vrt = self._stack.enter_context(MemoryFile(dirname=self.folder, filename=f"warped-{uuid.uuid4().hex}.vrt"))
        grid = warp_onto(tile.dataset, tile.grid, ref, vrt.name, nodata, quality)
        return Tile(tile.name, self._closing(_open_allowed(vrt.name)), grid)

    def _unpacked(self, files: Sequence[UploadedFile]) -> list[UploadedFile]:
        """The files, each archive among them replaced by the rasters it holds (``archives``: what each held, its
        members' bytes let go once they are opened)."""
        out: list[UploadedFile] = []
        unpacked = 0
        for f in files:
            left = self._max_unpacked - unpacked
            free = left if self._room is None else self._room.available - unpacked
            try:
                archive = None if f.in_place else unpack(f.name, f.data, min(left, free))
            except ArchiveTooLargeError:
                if free >= left:
                    raise
                raise self._room.exceeded(f"unpacking {f.name}", "send fewer bands or a crop, or the product as a "
                                                                 "job (POST /jobs/{task})") from None
            if archive is None:
                out.append(f)
                continue
            self.archives.append(replace(archive, files=tuple(replace(m, content=b"") for m in archive.files)))
            unpacked += archive.size
            out += [UploadedFile(m.name, m.content) for m in archive.files]
        return out

    def _open_sources(self, files: Sequence[SourceFile]) -> None:
        """Files read in place: each a raster, or a NetCDF/HDF5 container of band variables (local files only)."""
        _register_drivers()
        for f in files:
            if not f.remote and _is_vrt(_head(f.path)):
                raise ForbiddenReferenceError(f"{f.name}: VRTs are not accepted for jobs (a VRT could read any file); "
                                              f"send the rasters themselves, one file part each")
            if f.name.lower().endswith(SIDECARS):  # read by GDAL beside its raster (an archive unpacked for a job)
                continue
            ds = self._closing(_open_source(f.name, f.path, f.remote))
            if ds.count == 0 and ds.subdatasets and (not f.remote or ds.driver == "Zarr"):
                self.datasets += self._open_subdatasets(f.name, ds, f.path)
            elif ds.count == 0 and ds.driver == "Zarr":
                raise UnreadableInputError(unreadable(f.name, "it holds no array GDAL can read"))
            elif ds.count == 0 or ds.width * ds.height == 0:
                raise UnreadableInputError(f"{f.name}: the raster has no pixels or no bands")
            else:
                _check_grid(f.name, own := Grid.of(ds))
                _check_on_a_grid(f.name, ds, own)
                _check_blocks(f.name, ds)
                if f.nodata is not None and len(f.nodata) != ds.count:
                    raise UnreadableInputError(f"{f.name}: the STAC item gives {len(f.nodata)} raster:bands for a file "
                                               f"of {ds.count} bands; fix the item or choose other assets")
                self.datasets.append((f.name, ds))
                if (grid := _own_grid(ds)) is not None:
                    self._grids[f.name] = grid
                if f.nodata is not None:
                    self._nodata[f.name] = f.nodata
                if not f.remote:
                    with open(f.path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                        self._read_snap_header(f.name, ds, data)
                elif ds.driver == "GTiff" and (start := remote_start(f.path, ds)) is not None:
                    self._read_snap_header(f.name, ds, start)

    def _read_snap_header(self, name: str, ds: DatasetReaderBase, data: bytes | memoryview | mmap.mmap) -> None:
        """Keep what a GeoTIFF SNAP wrote says of its bands in its DIMAP header, which GDAL does not read (names,
        units, scaling, no-data); a header of another band count than the file's describes another file."""
        bands = tiff_bands(data)
        if bands is not None and len(bands) == ds.count:
            self._snap[name] = bands

    def _open_subdatasets(self, name: str, container: DatasetReaderBase,
                          path: str | None = None) -> list[tuple[str, DatasetReaderBase]]:
        """The subdatasets that are bands: those named after one, or an EOPF product's (``mapex_serve.eopf``)."""
        opened, seen = [], []
        inside = path or f"/vsimem/{self.folder}/"
        subdatasets = _subdatasets(container)
        product = product_arrays(subdatasets) if container.driver == "Zarr" else None
        if container.driver == "Zarr" and radar_geometry(subdatasets):
            raise NotOnAGridError(sentinel1_as_shipped(name))
        remote = path is not None and path.startswith("/vsi")
        for sub in subdatasets:
            if inside not in sub:  # GDAL names subdatasets after the container's own path; nothing else
                raise ForbiddenReferenceError(f"{name}: subdataset {sub!r} is outside this request")
            variable = _subdataset_variable(sub)
            seen.append(variable)
            identity = parse_name(variable)
            if identity is None or not identity.used or (product is not None and sub not in product):
                # a product's arrays by their path in it: its b04 is in each resolution's group
                self.ignored_subdatasets.append(f"{name}:{sub.rsplit(':', 1)[-1] if product else variable}")
                continue
            ds = self._closing(_open_allowed(sub) if path is None else _open_source(name, sub, remote))
            own = _own_grid(ds)
            _check_grid(f"{name}:{variable}", own or Grid.of(ds))
            _check_blocks(f"{name}:{variable}", ds)
            opened.append((f"{name}:{variable}", ds))
            if own is not None:
                self._grids[f"{name}:{variable}"] = own
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
        names = request_band_names([(name.partition(":")[0], ds) for name, ds in self.datasets])
        layers = landsat_collection_layers(names)
        for name, ds in self.datasets:
            given = None if bands is None else list(bands[offset: offset + ds.count])
            offset += ds.count
            file, _, variable = name.partition(":")  # "file.nc:B04" is a subdataset, named by its variable
            sensor = landsat_sensor(ds, file, names)
            source = "subdataset name" if variable else "file name"
            snap = self._snap.get(name)
            theia = theia_nodata(file, ds.nodatavals[0]) if ds.count == 1 else None  # what THEIA's format states
            nodata = (self._nodata.get(name) or (snap and tuple(b.nodata for b in snap))
                      or ((theia,) if theia is not None else None))
            planet = planet_product(ds, file)
            identities = identify_bands(ds, variable or file, given, source, snap and [b.name for b in snap], planet,
                                        names, "ask" if variable else sensor)  # asked by the same name once
            landsat = sensor is not None
            for i, identity in enumerate(identities, start=1):
                self.bands.append(InputBand(name, i, ds, identity, landsat, layers[0] if landsat and layers else None,
                                            nodata=nodata[i - 1] if nodata else None,
                                            file_grid=self._grids.get(name), snap=snap[i - 1] if snap else None,
                                            planet=planet))
        if not any(b.identity.used for b in self.bands):
            stems = [os.path.basename(name.partition(":")[0]).rsplit(".", 1)[0] for name, _ in self.datasets]
            if (why := display_image([*stems, *(n for n in names if n)])) is not None:
                raise ImplausibleValuesError(why)
            declined = [b.identity for b in self.bands if b.identity.found and parse_name(b.identity.found)]
            raise missing_names_error(total, [b.identity.found for b in self.bands], bands, declined)
        seen: dict[str, InputBand] = {}
        for b in self.bands:
            key = b.identity.canonical or b.identity.quality
            if key is None:
                continue
            if key in seen:
                first = seen[key]
                if first.file == b.file and (steps := _steps(b.dataset)):
                    dim, values = steps
                    raise DuplicateBandError(
                        f"{b.file} holds {b.dataset.count} rasters of {key} along {dim} ({values}): a request is one "
                        f"scene; "
                        f"send one {dim} step (openEO: filter_temporal to one date, or reduce_dimension over {dim}; "
                        f"xarray: .isel({dim}=0)), a request or job a step, or bands= naming the one to read and "
                        f"'-' for the others")
                if first.file != b.file and len(same := self._identities(b.file)) > 1 and self._identities(
                        first.file) == same:
                    raise DuplicateBandError(
                        f"{first.file} and {b.file} hold the same bands ({', '.join(same)}): two "
                        f"scenes, or tiles of one with gaps between them or overlapping; a request is one scene: send "
                        f"one, or the tiles of one that cover it without gaps (read as one raster), or a mosaic of "
                        f"them (gdalbuildvrt, then gdal_translate)")
                raise DuplicateBandError(
                    f"{key} is given twice: {first.file} band {first.index} ({first.identity.found!r}) and {b.file} "
                    f"band {b.index} ({b.identity.found!r}); send it once, or pass bands= with '-' for the copy to skip"
                )
            seen[key] = b

    def _identities(self, file: str) -> list[str]:
        """What the bands of ``file`` were identified as (``-`` for none)."""
        return [b.identity.canonical or b.identity.quality or "-" for b in self.bands if b.file == file]

    # -- what the request holds ---------------------------------------------------------------------

    @property
    def canonical_bands(self) -> list[str]:
        """The model bands present, in file order (what routing chooses from)."""
        return [b.identity.canonical for b in self.bands if b.identity.canonical]

    def band(self, canonical: str) -> InputBand:
        return next(b for b in self.bands if b.identity.canonical == canonical)

    def quality_bands(self) -> list[InputBand]:
        return [b for b in self.bands if b.identity.quality]

    def sigma0_factor(self) -> InputBand | None:
        """The factor from gamma0 to sigma0 sent with the scene (``mapex_serve.backscatter.to_sigma0``), or None."""
        return next((b for b in self.bands if b.identity.sigma0_factor), None)

    def grid(self, used: Sequence[InputBand]) -> Grid:
        """The finest grid of the files of ``used``, cropped to where they all overlap."""
        files = [(b.file, b.georeference) for b in {id(b.dataset): b for b in used}.values()]
        ref, own = min(files, key=lambda f: abs(f[1].transform.a * f[1].transform.e))
        for file, grid in files:
            if grid.crs != own.crs:
                raise GridMismatchError(
                    f"{ref} is in {own.crs} {own.extent()} but {file} is in {grid.crs} {grid.extent()}; reproject the "
                    f"files to one CRS (gdalwarp -t_srs)"
                )
        if own.crs is None and any((g.transform, g.width, g.height) != (own.transform, own.width, own.height)
                                   for _, g in files):
            raise GridMismatchError(f"{ref} has no CRS and the files' grids differ; without georeferencing "
                                    f"files can only be stacked when they share one grid: add the CRS (gdal_edit -a_srs)")
        boxes = [g.extent() for _, g in files]
        left, bottom = max(x[0] for x in boxes), max(x[1] for x in boxes)
        right, top = min(x[2] for x in boxes), min(x[3] for x in boxes)
        if len(files) > 1 and (left >= right or bottom >= top):
            other, theirs = next(f for f in files if f[0] != ref)
            raise GridMismatchError(
                f"the files do not overlap: {ref} covers {own.extent()} and {other} covers {theirs.extent()} "
                f"(in {own.crs}); send files of the same place"
            )
        if len(files) == 1 or (left, bottom, right, top) == own.extent():
            return _north_up(Grid(own.crs, own.transform, own.width, own.height))
        window = own.window(left, bottom, right, top).round_offsets().round_lengths()
        return _north_up(Grid(own.crs, rasterio.windows.transform(window, own.transform), int(window.width),
                              int(window.height)))

    def reader(self, canonical: Sequence[str], overrides: UnitOverrides, sample: int = 64,
               max_pixels: int | None = None, model: Manifest | None = None) -> SceneReader:
        """A reader of ``canonical`` bands (in that order) in physical units, quality layers applied, on a grid of
        the pixel size ``model`` learned where the caller asks for it (``mapex_serve.ground``).

        Conversions are decided here and checked against a sample of each band's values in windows of
        ``sample`` pixels (0: not checked, for a part of a scene whose first part checked them).
        """
        check_stated_units(overrides, canonical)
        used = [self.band(c) for c in canonical]
        quality = self.quality_bands()
        factor = self.sigma0_factor() if model is not None and overrides.backscatter is None else None
        converted = to_sigma0(used, model and model.backscatter, factor)
        grid, ground = self.grid(used + quality + [factor] * bool(converted)), None
        if overrides.bbox is not None:
            grid = crop(grid, overrides.bbox)
        elif overrides.aoi is not None:
            grid = crop(grid, overrides.aoi.bbox, "aoi= (the box around it) ")
        if model is not None:
            grid, ground = fit_to_model(grid, model.name, model.pixel_size_m, overrides.pixel_size)
            if model.reflectance is not None and overrides.reflectance is None:
                check_level(used, model.name, model.reflectance, self.bands)
            if model.backscatter is not None and overrides.backscatter is None:
                check_backscatter(used, model.name, model.backscatter, converted)
        if max_pixels is not None and grid.width * grid.height > max_pixels:
            resampled = " once resampled to the model's pixel size (pixel_size=model)" if ground and \
                ground.read_m != ground.scene_m else ""
            raise RasterTooLargeError(
                f"the raster is {grid.width} x {grid.height} = {grid.width * grid.height:,} pixels{resampled}; at "
                f"most {max_pixels:,} are accepted (MAPEX_MAX_PIXELS): crop or split the scene"
            )
        zero_filled = {id(b) for b in used
                       if b.nodata is None and zero_is_nodata(b.dataset, b.index, b.identity.canonical)}
        for b in used:
            if id(b) in zero_filled:
                b.nodata = 0.0
        cuts = cuts_for([b.identity.quality for b in quality], overrides.mask_threshold)
        for b in quality:
            if (cut := cuts.get(b.identity.quality)) is not None:
                b.masks = cut.said(QUALITY_LAYERS[b.identity.quality])
        reader = SceneReader(grid, used, quality, self._stack, factor if converted else None, converted, cuts)
        reader.aoi = overrides.aoi.in_crs(grid.crs) if overrides.aoi is not None else None
        reader.resampled += [f for file in dict.fromkeys(b.file for b in used + quality)
                             for f in self.reprojected.get(file, [])]
        if converted:
            factor.factor_applied = True
        reader.ground = ground
        for b in used:
            b.conversion = conversion_for(b.dataset, b.index, b.identity.canonical, name_unit=b.identity.unit_hint,
                                          overrides=overrides, landsat=b.landsat, file_name=b.file, snap=b.snap,
                                          planet=b.planet, found=b.identity.found, landsat_layer=b.landsat_layer,
                                          image=b.identity.image)
            if id(b) in zero_filled:
                b.conversion = replace(b.conversion, steps=(*b.conversion.steps, ZERO_IS_NODATA))
            if any(b is c for c in converted):
                b.conversion = replace(b.conversion, steps=(*b.conversion.steps, (
                    f"gamma0 to sigma0: x the factor of {factor.file} (+ its 10·log10 in dB), which "
                    f"{model.name} learned")))
        if sample:
            check_values(reader, sample)
        return reader
