"""A GeoTIFF's keys and tags read before GDAL opens it: the CRS and transform had from them must be the ones GDAL
builds by default."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.env import get_gdal_config
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.windows import Window

from mapex_serve.geokeys import (
    SRS_SOURCE,
    crs_from_keys,
    crs_of_keys,
    georeferencing,
    projected_by_code,
    tag_georeference,
)
from mapex_serve.inputs import RequestScene, UploadedFile
from mapex_serve.units import UnitOverrides

DATA = Path(__file__).parent.parent / "data"
LAEA = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80"
T = TypeVar("T")


def on_a_thread(work: Callable[[], T]) -> T:
    """``work()`` on a thread of its own, as the service opens uploads: where GDAL's options are the thread's own
    (pytest's main thread may share the process with other tests' threads)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def geotiff(crs: str | None, **options: str) -> bytes:
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=8, height=8, count=1, dtype="uint16", crs=crs,
                      transform=from_origin(500000, 5000000, 10, 10), **options) as dst:
            dst.write(np.ones((1, 8, 8), np.uint16))
            dst.set_band_description(1, "B04")
        return mem.read()


def default_wkt(data: bytes) -> str | None:
    """The CRS as GDAL builds it by default."""
    with MemoryFile(data) as mem, mem.open() as ds:
        return ds.crs.to_wkt() if ds.crs else None


CASES = [
    ("EPSG:32633", {}, True), ("EPSG:32633", {"BIGTIFF": "YES"}, True), ("EPSG:32633", {"ENDIANNESS": "BIG"}, True),
    ("EPSG:32633", {"GEOTIFF_VERSION": "1.1"}, True), ("EPSG:3035", {}, True), ("EPSG:27700", {}, True),
    ("EPSG:4326", {}, False),  # from its keys alone GDAL drops the code
    (LAEA, {}, False),  # its own parameters
    ("EPSG:32633+5773", {}, False),  # a vertical CRS too
    (None, {}, False),
]


@pytest.mark.parametrize(("crs", "options", "by_code"), CASES)
def test_an_upload_opens_with_the_crs_gdal_builds_by_default(crs, options, by_code):
    data = geotiff(crs, **options)
    assert projected_by_code(data) is by_code

    def open_upload() -> tuple[str | None, str | None, str | None]:
        with crs_from_keys(data):
            inside = get_gdal_config(SRS_SOURCE)
        with RequestScene([UploadedFile("t.tif", data)]) as scene:
            ds = scene.datasets[0][1]
            return inside, get_gdal_config(SRS_SOURCE), ds.crs.to_wkt() if ds.crs else None

    inside, after, wkt = on_a_thread(open_upload)
    # Empty and unset are both GDAL's default (empty where a main-thread open of an earlier test set it process-wide).
    assert (inside or None, after or None) == ("GEOKEYS" if by_code else None, None)
    assert wkt == default_wkt(data)


def test_files_opened_after_one_from_its_keys_are_opened_gdals_default_way():
    """The setting is put back to GDAL's default after each open: a geographic file next keeps its EPSG code."""
    utm, geographic = geotiff("EPSG:32633"), geotiff("EPSG:4326")

    def open_both() -> list[str]:
        wkts = []
        for data in (utm, geographic, utm, geographic):
            with RequestScene([UploadedFile("t.tif", data)]) as scene:
                wkts.append(scene.datasets[0][1].crs.to_wkt())
        return wkts

    assert on_a_thread(open_both) == [default_wkt(utm), default_wkt(geographic)] * 2
    assert 'AUTHORITY["EPSG","4326"]]' in default_wkt(geographic)


@pytest.mark.parametrize("code", [4326, 20000, 1024, 32766])  # geographic, vertical, unassigned, the last code
def test_a_projected_key_holding_another_kind_of_code_opens_as_gdal_opens_it(code):
    """Writers get ProjectedCSTypeGeoKey wrong too: whatever GDAL makes of the code, the keys' way makes the same."""
    data = bytearray(geotiff("EPSG:32633"))
    at = data.find(struct.pack("<4H", 3072, 0, 1, 32633))
    data[at + 6 : at + 8] = struct.pack("<H", code)
    data = bytes(data)
    assert projected_by_code(data) is True

    def wkt_of_upload() -> str | None:
        with RequestScene([UploadedFile("t.tif", data)]) as scene:
            crs = scene.datasets[0][1].crs
            return crs.to_wkt() if crs else None

    assert on_a_thread(wkt_of_upload) == default_wkt(data)


@pytest.mark.parametrize(("name", "by_code"), [("sentinel2_6band_10m_epsg32719.tif", True), ("rmnp-dem.tif", False),
                                               ("rmnp-rgb.tif", False)])
def test_real_files_keep_their_crs_and_its_code(name, by_code):
    data = (DATA / name).read_bytes()
    assert projected_by_code(data) is by_code

    def crs_of_upload() -> rasterio.crs.CRS:
        with RequestScene([UploadedFile(name, data)], ["red", "green", "blue"] if "rgb" in name else None) as scene:
            return scene.datasets[0][1].crs

    crs = on_a_thread(crs_of_upload)
    assert crs.to_wkt() == default_wkt(data)
    assert crs.to_epsg() == (32719 if by_code else 4326)


@pytest.mark.parametrize("data", [b"", b"II*\x00", b"MM\x00*\xff\xff\xff\xff", b"\x89PNG\r\n\x1a\n" + bytes(64),
                                  b"<VRTDataset rasterXSize='8'/>", bytes(range(256)) * 4])
def test_anything_else_is_left_to_gdal(data):
    assert projected_by_code(data) is False


def test_a_truncated_key_directory_is_left_to_gdal():
    data = geotiff("EPSG:32633")
    for cut in range(8, len(data), max(1, len(data) // 200)):
        projected_by_code(data[:cut])  # never raises, whatever is missing


def tiff(tags_before: int = 0, citations: int = 0) -> bytes:
    """A classic little-endian TIFF header whose keys name EPSG:32633, after ``tags_before`` other tags, with
    ``citations`` citation keys added: what a crafted upload can claim."""
    keys = [(1024, 0, 1, 1), (3072, 0, 1, 32633)] + [(1026, 34737, 1, 0)] * citations
    directory = struct.pack(f"<{4 + 4 * len(keys)}H", 1, 1, 0, len(keys), *(v for key in keys for v in key))
    entries = tags_before + 1
    at = 8 + 2 + 12 * entries + 4
    ifd = struct.pack("<H", entries) + struct.pack("<HHII", 305, 2, 1, 0) * tags_before
    ifd += struct.pack("<HHII", 34735, 3, len(directory) // 2, at) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + directory


def test_a_crafted_header_costs_no_more_than_a_real_one():
    """Past the bounds (1,024 tags, 256 keys: GDAL writes about 20 and 8) the reader stops and leaves the file to GDAL,
    instead of walking a BigTIFF's 2**64 tags or unpacking 2**32 values."""
    assert projected_by_code(tiff()) is True
    assert projected_by_code(tiff(tags_before=2000)) is False
    assert projected_by_code(tiff(citations=300)) is False


def test_the_users_own_setting_stays():
    data = geotiff("EPSG:32633")
    with rasterio.Env(GTIFF_SRS_SOURCE="EPSG"), crs_from_keys(data):
        assert get_gdal_config(SRS_SOURCE) == "EPSG"


def test_only_the_opening_thread_builds_from_the_keys():
    """rasterio sets GDAL's options process-wide on the main thread: it does not while another thread runs."""
    data, seen, go, done = geotiff("EPSG:32633"), {}, threading.Event(), threading.Event()

    def other() -> None:
        with crs_from_keys(data):
            seen["other, inside"] = get_gdal_config(SRS_SOURCE)
            go.set()
            done.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert go.wait(10)
        seen["main, meanwhile"] = get_gdal_config(SRS_SOURCE)
        with crs_from_keys(data):
            seen["main, inside"] = get_gdal_config(SRS_SOURCE)
    finally:
        done.set()
        thread.join()
    assert {k: v or None for k, v in seen.items()} == {"other, inside": "GEOKEYS", "main, meanwhile": None,
                                                        "main, inside": None}  # empty or unset: GDAL's default


# -- the whole georeferencing from the tags -------------------------------------------------------------------------


def gdal_transform(data: bytes) -> Affine:
    with MemoryFile(data) as mem, mem.open() as ds:
        return ds.transform


def written(transform: Affine, crs: str | None = "EPSG:32633", tags: dict[str, str] | None = None,
            **options: str) -> bytes:
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=8, height=6, count=1, dtype="uint16", crs=crs, transform=transform,
                      **options) as dst:
            dst.write(np.ones((1, 6, 8), np.uint16))
            dst.update_tags(**(tags or {}))
        return mem.read()


NORTH_UP = Affine(10, 0, 500000, 0, -10, 5000000)


@pytest.mark.parametrize(("crs", "options", "by_code"), CASES)
def test_the_tags_give_the_transform_gdal_reads_where_the_crs_is_named_by_its_code(crs, options, by_code):
    data = geotiff(crs, **options)
    tags = tag_georeference(data)
    assert (tags is not None) is by_code
    assert georeferencing(data) == (by_code, tags), "one read of the directory gives both"
    if tags is not None:
        assert tags.transform == gdal_transform(data)


@pytest.mark.parametrize("transform", [Affine(0.5, 0, -1234.25, 0, -0.25, -98765.125), Affine(30, 0, 0, 0, -30, 0),
                                       Affine(1e-3, 0, 699960.0001, 0, -1e-3, 9000000.5)])
def test_odd_origins_and_pixel_sizes_give_gdals_transform_to_the_bit(transform):
    data = written(transform)
    assert tuple(tag_georeference(data).transform) == tuple(gdal_transform(data)) == tuple(transform)


def test_a_tie_point_at_another_pixel_gives_gdals_transform():
    data = bytearray(written(NORTH_UP))
    at = data.rfind(struct.pack("<6d", 0, 0, 0, 500000, 5000000, 0))  # GDAL leaves an early copy of the directory
    data[at: at + 16] = struct.pack("<2d", 2.5, 3.0)  # the tie point's pixel (I, J)
    data = bytes(data)
    assert gdal_transform(data) == Affine(10, 0, 500000 - 25, 0, -10, 5000000 + 30)
    assert tag_georeference(data).transform == gdal_transform(data)


@pytest.mark.parametrize(("transform", "tags"), [
    (NORTH_UP, {"AREA_OR_POINT": "Point"}),  # GDAL moves a point's tie point by half a pixel
    (Affine(10, 2, 500000, 1, -10, 5000000), None),  # rotated: a transformation matrix
    (Affine(10, 0, 500000, 0, 10, 5000000), None),  # y down
])
def test_other_layouts_are_left_to_gdal(transform, tags):
    data = written(transform, tags=tags)
    assert projected_by_code(data)
    got = tag_georeference(data)
    assert got is None or got.transform == gdal_transform(data)
    if tags or transform.b:
        assert got is None


def test_the_same_code_with_another_citation_is_other_keys():
    """GDAL may name a CRS after its citation: the CRS learnt for one is not given to the other."""
    data = geotiff("EPSG:32633")
    other = data.replace(b"UTM zone 33N", b"UTM zone 33X")
    assert other != data and tag_georeference(other).transform == tag_georeference(data).transform
    assert tag_georeference(other).keys != tag_georeference(data).keys


def in_place(folder: Path, name: str, data: bytes) -> UploadedFile:
    """An upload as a decode worker reads a TIFF: where its bytes lie."""
    path = folder / name
    path.write_bytes(data)
    return UploadedFile(name, data, in_place=str(path))


def read_twice(files: list[UploadedFile], bands: list[str]) -> list[tuple]:
    """Each time: whether GDAL gave the file no georeferencing, the scene grid (its CRS as WKT), the files resampled,
    and the physical values and reasons of the whole scene."""
    crs_of_keys.clear()
    out = []
    for _ in range(2):
        with RequestScene(files) as scene:
            reader = scene.reader(bands, UnitOverrides())
            g = reader.grid
            physical, reasons = reader.read(Window(0, 0, g.width, g.height))
            out.append(([ds.crs is None for _, ds in scene.datasets], g.crs.to_wkt(), g.transform, g.width, g.height,
                        reader.resampled, physical.copy(), reasons.copy()))
    return out


def test_a_file_read_in_place_again_is_opened_without_gdals_georeferencing_and_reads_the_same(tmp_path):
    data = (DATA / "sentinel2_6band_10m_epsg32719.tif").read_bytes()
    first, again = on_a_thread(lambda: read_twice([in_place(tmp_path, "s2.tif", data)], ["B04", "B03", "B02"]))
    assert first[0] == [False] and again[0] == [True]
    assert first[1:6] == again[1:6]
    np.testing.assert_array_equal(first[6], again[6])
    np.testing.assert_array_equal(first[7], again[7])


def test_files_of_two_resolutions_read_in_place_again_resample_the_same(tmp_path):
    rng = np.random.default_rng(0)
    with MemoryFile() as fine_mem, MemoryFile() as coarse_mem:
        with fine_mem.open(driver="GTiff", width=16, height=16, count=3, dtype="uint16", crs="EPSG:32633",
                           transform=NORTH_UP) as dst:
            dst.write(rng.integers(500, 3000, (3, 16, 16)).astype(np.uint16))
            for i, name in enumerate(["B04", "B03", "B02"], start=1):
                dst.set_band_description(i, name)
        with coarse_mem.open(driver="GTiff", width=8, height=8, count=1, dtype="uint16", crs="EPSG:32633",
                             transform=Affine(20, 0, 500000, 0, -20, 5000000)) as dst:
            dst.write(rng.integers(500, 3000, (1, 8, 8)).astype(np.uint16))
            dst.set_band_description(1, "B8A")
        files = [in_place(tmp_path, "fine.tif", fine_mem.read()), in_place(tmp_path, "coarse.tif", coarse_mem.read())]
    first, again = on_a_thread(lambda: read_twice(files, ["B04", "B03", "B02", "B8A"]))
    assert first[0] == [False, True] and again[0] == [True, True]  # the same keys: the second file's CRS is known
    assert first[1:6] == again[1:6] and first[5] == ["coarse.tif"]
    np.testing.assert_array_equal(first[6], again[6])
    np.testing.assert_array_equal(first[7], again[7])
