"""tiff_layout against GDAL's own view of real files: the bytes it asks for must hold every directory and every block
of the rows read (GDAL's BLOCK_OFFSET_x_y / BLOCK_SIZE_x_y), and a file cut there (the rest zeros, as a
shared-memory upload still arriving) must read those rows, values and mask, as the whole file does."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import MaskFlags
from rasterio.transform import from_origin
from rasterio.windows import Window

from mapex_serve.tiff_layout import TiffLayout, parse

H, W, BANDS, BLOCK = 200, 300, 3, 64
PIXELS = np.random.default_rng(7).integers(0, 60000, (BANDS, H, W), dtype=np.uint16)
MASK = np.full((H, W), 255, np.uint8)
MASK[50:120, 80:200] = 0
KINDS = ["cog", "striped", "windowed", "bigtiff"]


def write(path: Path, *, mask: bool = False, windowed: bool = False, **options) -> Path:
    profile = dict(driver="GTiff", width=W, height=H, count=BANDS, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 10, 10), compress="deflate", **options)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        if windowed:
            for y in range(0, H, BLOCK):
                for x in range(0, W, BLOCK):
                    dst.write(PIXELS[:, y:y + BLOCK, x:x + BLOCK], window=Window(x, y, min(BLOCK, W - x),
                                                                                min(BLOCK, H - y)))
            dst.update_tags(note="tags set after the blocks: GDAL moves the directory to the end " * 8)
        else:
            dst.write(PIXELS)
        if mask:
            dst.write_mask(MASK)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A COG (directories, then overviews' blocks, then the image's with each mask block after its image block); what
    gdal_translate makes, striped and as a big-endian band-interleaved BigTIFF (directories first, the mask's blocks
    after all the image's); a tiled file written window by window with tags set last (its directory at the end)."""
    tmp = tmp_path_factory.mktemp("tiff_layout")
    source = write(tmp / "source.tif", mask=True, tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        rasterio.shutil.copy(source, tmp / "cog.tif", driver="COG", compress="deflate", blocksize=BLOCK)
        rasterio.shutil.copy(source, tmp / "striped.tif", driver="GTiff", compress="deflate", blockysize=8)
        rasterio.shutil.copy(source, tmp / "bigtiff.tif", driver="GTiff", compress="deflate", tiled=True,
                             blockxsize=BLOCK, blockysize=32, BIGTIFF="YES", INTERLEAVE="BAND", ENDIANNESS="BIG")
    return {kind: tmp / f"{kind}.tif" for kind in ("cog", "striped", "bigtiff")} | {
        "windowed": write(tmp / "windowed.tif", windowed=True, tiled=True, blockxsize=BLOCK, blockysize=BLOCK)}


def layout_of(path: Path) -> TiffLayout:
    data = path.read_bytes()
    layout = parse(data, len(data))
    assert isinstance(layout, TiffLayout)
    return layout


def gdal_blocks(path: Path) -> np.ndarray:
    """(first row, offset, byte count) of every non-empty image block of every band, as GDAL reads them."""
    rows = []
    with rasterio.open(path) as ds:
        (block_rows, block_cols), *_ = ds.block_shapes
        for band in ds.indexes:
            for y in range(-(-H // block_rows)):
                for x in range(-(-W // block_cols)):
                    offset = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
                    size = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
                    if size and int(size):
                        rows.append((y * block_rows, int(offset), int(size)))
    return np.array(rows, np.int64)


def read_prefix(path: Path, length: int, rows: int, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows [0, rows) (values, mask) of ``path`` cut after ``length`` bytes, the rest zeros."""
    data = path.read_bytes()
    cut = tmp / f"{path.stem}_{length}.tif"
    cut.write_bytes(data[:length] + bytes(len(data) - length))
    with rasterio.open(cut) as ds:
        window = Window(0, 0, W, rows)
        return ds.read(window=window), ds.read_masks(window=window)


def test_the_files_are_what_the_cases_need(files):
    for kind in ("cog", "striped", "bigtiff"):
        with rasterio.open(files[kind]) as ds:
            assert ds.mask_flag_enums == ([MaskFlags.per_dataset],) * BANDS
            assert ds.block_shapes[0] == {"cog": (BLOCK, BLOCK), "striped": (8, W), "bigtiff": (32, BLOCK)}[kind]
            assert bool(ds.overviews(1)) == (kind == "cog") and (ds.interleaving.name == "band") == (kind == "bigtiff")
    assert files["bigtiff"].read_bytes()[:4] == b"MM\0+"
    assert b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in files["cog"].read_bytes()[:400]


@pytest.mark.parametrize("kind", KINDS)
def test_layout_covers_every_block_gdal_reads(files, kind):
    path = files[kind]
    layout, blocks, size = layout_of(path), gdal_blocks(path), path.stat().st_size
    with rasterio.open(path) as ds:
        assert (layout.height, layout.block_rows) == (H, ds.block_shapes[0][0])
    starts, ends = blocks[:, 0], blocks[:, 1] + blocks[:, 2]
    if kind == "windowed":  # the directory rewritten after the blocks: GDAL may open it only once it is all in
        assert layout.directory_end > ends.max() and layout.bytes_for_rows(1) == layout.directory_end == size
        data = path.read_bytes()
        assert all(isinstance(parse(data[:k], size), int) and parse(data[:k], size) > k for k in (0, 8, 4096, 300_000))
    else:
        assert layout.directory_end <= blocks[:, 1].min()
    assert layout.bytes_for_rows(0) == layout.bytes_for_rows(-3) == layout.directory_end
    assert ends.max() <= layout.bytes_for_rows(H) == layout.bytes_for_rows(H + 50) <= size
    for rows in range(1, H + 1):
        assert ends[starts < rows].max() <= layout.bytes_for_rows(rows) <= size


@pytest.mark.parametrize("kind", ["cog", "striped", "bigtiff"])
def test_first_rows_read_before_the_rest_arrives(files, kind, tmp_path):
    path, layout = files[kind], layout_of(files[kind])
    assert layout.bytes_for_rows(layout.block_rows) < path.stat().st_size
    with rasterio.open(path) as ds:
        for rows in (1, layout.block_rows, H // 2 + 1, H):
            window = Window(0, 0, W, rows)
            values, mask = read_prefix(path, layout.bytes_for_rows(rows), rows, tmp_path)
            np.testing.assert_array_equal(values, ds.read(window=window))
            np.testing.assert_array_equal(mask, ds.read_masks(window=window))


def test_a_cut_inside_a_needed_block_is_seen(files, tmp_path):
    """The check above has teeth: one byte short of the first block row's last image block, GDAL fails or differs."""
    path, blocks = files["cog"], gdal_blocks(files["cog"])
    first = blocks[blocks[:, 0] == 0]
    last_end = int((first[:, 1] + first[:, 2]).max())
    with rasterio.open(path) as ds:
        whole = ds.read(window=Window(0, 0, W, BLOCK))
    try:
        values, _ = read_prefix(path, last_end - 1, BLOCK, tmp_path)
    except rasterio.errors.RasterioIOError:
        return
    assert not np.array_equal(values, whole)


def assert_prefix(data: bytes | memoryview, k: int, full: TiffLayout) -> None:
    answer = parse(data[:k], len(data))
    if isinstance(answer, int):
        assert k < answer <= len(data)
    else:
        assert answer == full and np.array_equal(answer.row_block_ends, full.row_block_ends)


@pytest.mark.parametrize("kind", KINDS)
def test_every_prefix_asks_for_more_or_gives_the_layout(files, kind):
    data = files[kind].read_bytes()
    full = layout_of(files[kind])
    end = full.directory_end
    for k in {0, 1, 7, 8, 15, 16, 17, 100, end - 2, end - 1, end, end + 1, len(data)}:
        assert_prefix(data, min(k, len(data)), full)
    assert parse(data[:end - 1], len(data)) == end and parse(data[:end], len(data)) == full
    k, steps = 0, 0
    while isinstance(answer := parse(memoryview(data)[:k], len(data)), int):
        assert answer > k
        k, steps = answer, steps + 1
    assert answer == full and k == end and steps <= 12


@settings(max_examples=60, deadline=None)
@given(pick=st.data())
def test_any_prefix_of_a_cog(files, pick):
    data = files["cog"].read_bytes()
    assert_prefix(data, pick.draw(st.integers(0, len(data))), layout_of(files["cog"]))


# Hand-made classic TIFFs: the cases GDAL does not write.
SHORT, LONG = 3, 4


def tiff(ifds: list[dict[int, tuple[int, list[int]]]], order: str = "<", size: int = 800,
         loop: bool = False) -> bytes:
    """A classic TIFF of ``ifds`` (tag -> (type, values)), each IFD followed by its out-of-line values."""
    out, at = bytearray((b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", 8)), 8
    for n, tags in enumerate(ifds):
        values_at = at + 2 + 12 * len(tags) + 4
        body, extra = bytearray(struct.pack(order + "H", len(tags))), bytearray()
        for tag, (kind, values) in sorted(tags.items()):
            packed = struct.pack(f"{order}{len(values)}{'H' if kind == SHORT else 'I'}", *values)
            if len(packed) <= 4:
                field = packed.ljust(4, b"\0")
            else:
                field, extra = struct.pack(order + "I", values_at + len(extra)), extra + packed
            body += struct.pack(order + "HHI", tag, kind, len(values)) + field
        following = at if loop else (values_at + len(extra) if n + 1 < len(ifds) else 0)
        out += body + struct.pack(order + "I", following) + extra
        at = len(out)
    return bytes(out.ljust(size, b"\0"))


IMAGE = {256: (SHORT, [4]), 257: (SHORT, [10]), 278: (SHORT, [3]),
         273: (SHORT, [400, 0, 430, 450]), 279: (LONG, [20, 0, 15, 5])}  # strip 1 sparse
MASK_IFD = {254: (LONG, [4]), 256: (SHORT, [4]), 257: (SHORT, [10]), 278: (LONG, [5]),
            273: (LONG, [500, 520]), 279: (LONG, [10, 10])}  # 5 rows a strip: rows [5, 10) start in strip 1 of 3
OVERVIEW = {254: (LONG, [1]), 256: (SHORT, [2]), 257: (SHORT, [5]), 273: (LONG, [600]), 279: (LONG, [10])}


@pytest.mark.parametrize("order", ["<", ">"])
def test_strips_of_the_image_and_its_mask_by_row(order):
    data = tiff([IMAGE, MASK_IFD, OVERVIEW], order)
    layout = parse(data, len(data))
    assert isinstance(layout, TiffLayout) and (layout.height, layout.block_rows) == (10, 3)
    # image strips end at 420+4, 0 (sparse), 445+4, 455+4; the mask's at 510+4 (rows 0-4) and 530+4 (rows 5-9); the
    # overview's (610) is never read.
    assert layout.row_block_ends.tolist() == [514, 534, 534, 534]
    assert [layout.bytes_for_rows(r) for r in (0, 3, 4, 10)] == [layout.directory_end, 514, 534, 534]
    assert layout.directory_end < 400


def test_one_strip_by_default_and_planes_one_after_another():
    planar = {256: (SHORT, [4]), 257: (SHORT, [6]), 277: (SHORT, [2]), 284: (SHORT, [2]),
              273: (LONG, [100, 120]), 279: (LONG, [10, 30])}
    data = tiff([planar])
    layout = parse(data, len(data))
    assert isinstance(layout, TiffLayout) and layout.block_rows == 6 and layout.row_block_ends.tolist() == [154]


def test_not_a_tiff_or_not_one_to_follow():
    assert parse(b"\x89PNG\r\n\x1a\n" + bytes(92), 100) is None
    assert parse(b"", 0) is None and parse(b"II*\0", 7) is None
    assert parse(b"", 100) == 8 and parse(b"II", 100) == 8 and parse(b"MM\0+", 100) == 8  # the header first
    assert parse(b"II+\0\x08\0\0\0", 100) == 16 and parse(b"II+\0\x04\0\0\0" + bytes(8), 100) is None
    assert parse(b"II*\0" + struct.pack("<I", 1000) + bytes(92), 100) is None  # the first IFD past the end
    for ifds, loop in (([IMAGE], True),  # the chain loops back to its IFD
                       ([IMAGE | {270: (99, [1])}], False),  # a type TIFF does not have
                       ([{256: (SHORT, [4]), 257: (SHORT, [10])}], False),  # no blocks
                       ([IMAGE | {273: (SHORT, [400, 0, 430, 798])}], False)):  # a block past the end
        data = tiff(ifds, loop=loop)
        assert parse(data, len(data)) is None
    data = tiff([IMAGE])
    assert parse(data[:60], 60) is None  # the strip offsets' values lie past a file this size
    assert parse(data[:9], len(data)) == 8 + 2 and parse(data[:10], len(data)) == 8 + 2 + 12 * 5 + 4
    assert isinstance(parse(data, len(data)), TiffLayout)
