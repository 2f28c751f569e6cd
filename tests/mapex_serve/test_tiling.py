"""Tiled inference: grids cover every pixel, reads match rasterio, blending has no seams, memory is one batch."""

import itertools
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from rasterio.windows import Window

from mapex_serve.tiling import (
    ClassAggregator,
    DatasetWindows,
    MaskBlender,
    Tile,
    batched,
    first_argmax,
    read_batches,
    read_tiles,
    scene_valid_mask,
    tile_cells,
    tile_grid,
    tile_weights,
)

DATA = Path(__file__).parents[1] / "data"
S2 = DATA / "sentinel2_6band_10m_epsg32719.tif"


def write_tif(path, data, nodata=None, **extra):
    """A real GeoTIFF (C, H, W) in UTM with 10 m pixels."""
    count, height, width = data.shape
    profile = dict(
        driver="GTiff", height=height, width=width, count=count, dtype=data.dtype, crs="EPSG:32633",
        transform=from_origin(500000, 4600000, 10, 10), nodata=nodata, **extra,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def grid_shape(tiles):
    """``(rows, cols)`` of listed tiles, from their grid positions (a check on ``TileGrid.shape``)."""
    return max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1


def coverage(tiles, height, width):
    counts = np.zeros((height, width), dtype=np.int32)
    for t in tiles:
        (rows, cols), _ = t.clip(height, width)
        counts[rows, cols] += 1
    return counts


# --- tile_grid --------------------------------------------------------------------------------


def check_grid(height, width, tile, overlap):
    tiles = tile_grid(height, width, tile, overlap)
    assert (coverage(tiles, height, width) > 0).all(), "a pixel is not covered"
    rows, cols = grid_shape(tiles)
    assert len(tiles) == rows * cols
    assert len({(t.row, t.col) for t in tiles}) == len(tiles)
    for t in tiles:
        w = t.window
        assert (w.width, w.height) == (tile, tile), "every tile is full size"
        assert w.col_off >= 0 and w.row_off >= 0
        # Inside the scene, unless the scene is smaller than a tile along that axis (then from 0).
        assert w.row_off + tile <= height or (height < tile and w.row_off == 0)
        assert w.col_off + tile <= width or (width < tile and w.col_off == 0)
    # Neighbours overlap by at least `overlap` (edge tiles are shifted inwards, so by more there).
    by_pos = {(t.row, t.col): t.window for t in tiles}
    for (r, c), w in by_pos.items():
        if (r, c + 1) in by_pos:
            assert w.col_off + tile - by_pos[r, c + 1].col_off >= overlap
        if (r + 1, c) in by_pos:
            assert w.row_off + tile - by_pos[r + 1, c].row_off >= overlap
    return tiles


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_tile_grid_covers_every_pixel(data):
    tile = data.draw(st.integers(1, 64), label="tile")
    overlap = data.draw(st.integers(0, tile - 1), label="overlap")
    near = st.sampled_from([1, tile - 1, tile, tile + 1, 2 * tile - overlap, 2 * tile - overlap + 1])
    size = st.one_of(st.integers(1, 300), near.filter(lambda n: n >= 1))
    check_grid(data.draw(size, label="height"), data.draw(size, label="width"), tile, overlap)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "expected"),
    [
        (31, 20, 32, 8, (1, 1)),  # smaller than a tile: one padded tile
        (32, 32, 32, 8, (1, 1)),  # exactly a tile
        (33, 32, 32, 8, (2, 1)),  # one pixel more: a second tile shifted inwards
        (56, 56, 32, 8, (2, 2)),  # exactly two strides
        (200, 300, 32, 8, (8, 13)),
        (10, 10, 1, 0, (10, 10)),
    ],
)
def test_tile_grid_shapes(height, width, tile, overlap, expected):
    assert grid_shape(check_grid(height, width, tile, overlap)) == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(1, 40), st.data())
def test_tile_grid_made_on_demand_is_the_listed_grid(height, width, tile, data):
    """Indexing, slicing, iterating and ``rows_between`` give the tiles a listed grid and its filter gave."""
    overlap = data.draw(st.integers(0, tile - 1), label="overlap")
    grid = tile_grid(height, width, tile, overlap)
    stride = tile - overlap
    rows = [0] if height <= tile else [*range(0, height - tile, stride), height - tile]
    cols = [0] if width <= tile else [*range(0, width - tile, stride), width - tile]
    listed = [Tile(i, j, r, c, tile) for i, r in enumerate(rows) for j, c in enumerate(cols)]
    assert list(grid) == listed and len(grid) == len(listed) and grid.shape == grid_shape(listed)
    assert [grid[i] for i in range(-len(grid), len(grid))] == listed + listed
    assert grid[3:-2:2] == listed[3:-2:2]
    with pytest.raises(IndexError):
        grid[len(grid)]
    r0 = data.draw(st.integers(0, height - 1), label="r0")
    r1 = data.draw(st.integers(r0, height), label="r1")
    band = grid.rows_between(r0, r1)
    kept = [t for t in listed if t.row_off + tile > r0 and t.row_off < r1]
    assert list(band) == kept and len(band) == len(kept) and [band[i] for i in range(len(band))] == kept


@pytest.mark.parametrize(("tile", "overlap"), [(32, 32), (32, 40), (32, -1), (0, 0)])
def test_tile_grid_rejects_bad_overlap(tile, overlap):
    with pytest.raises(ValueError, match="overlap|tile size"):
        tile_grid(100, 100, tile, overlap)


def test_read_batches_equal_read_tiles_without_the_skipped_ones(tmp_path):
    stored = np.full((2, 70, 100), 300, dtype=np.uint16)
    stored[:, :, :40] = 0  # the first column of tiles is all nodata
    path = write_tif(tmp_path / "b.tif", stored, nodata=0)
    with rasterio.open(path) as src:
        tiles = tile_grid(src.height, src.width, 32, 8)
        single = list(read_tiles(DatasetWindows(src, [2, 1], [1e-4, 1e-4], [0.0, 0.0]), tiles, fill=[5.0, 5.0]))
        batches = list(read_batches(DatasetWindows(src, [2, 1], [1e-4, 1e-4], [0.0, 0.0]), tiles, 4, fill=[5.0, 5.0]))
    assert len(single) < len(tiles)
    assert [len(b.tiles) for b in batches] == [4] * (len(single) // 4) + ([len(single) % 4] if len(single) % 4 else [])
    assert [t for b in batches for t in b.tiles] == [s.tile for s in single]
    np.testing.assert_array_equal(np.concatenate([b.data for b in batches]), np.stack([s.data for s in single]))
    np.testing.assert_array_equal(np.concatenate([b.valid for b in batches]), np.stack([s.valid for s in single]))


class ArrayWindows:
    """A scene held in numpy arrays as a ``WindowReader``: physical values and reason codes, windows sliced."""

    def __init__(self, physical, reasons):
        self.physical, self.reasons = physical, reasons
        self.count, self.height, self.width = physical.shape

    def read(self, window):
        rows, cols = window.toslices()
        return self.physical[:, rows, cols], self.reasons[rows, cols]


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 90), width=st.integers(1, 130), batch=st.integers(1, 9), span_tiles=st.integers(1, 6),
       invalid=st.sampled_from([0.0, 0.002, 0.3, 1.0]), blocks=st.booleans(), seed=st.integers(0, 2**16))
@example(height=40, width=130, batch=5, span_tiles=6, invalid=0.0, blocks=False, seed=1)  # the shifted last column
@example(height=90, width=130, batch=7, span_tiles=4, invalid=0.0, blocks=True, seed=2)
def test_read_batches_equal_tiles_read_one_at_a_time(height, width, batch, span_tiles, invalid, blocks, seed):
    """Whole valid tiles go into a batch as runs of one copy: every batch equals the tiles cut one by one."""
    rng = np.random.default_rng(seed)
    physical = rng.random((2, height, width), dtype=np.float32)
    bad = rng.random((height, width)) < invalid
    if blocks:  # invalid blocks, so that runs of whole valid tiles break part-way along a row
        bad |= (np.arange(width) // 37 % 3 == 1)[None, :] & (np.arange(height) // 29 % 2 == 0)[:, None]
    reasons = bad.astype(np.uint8)
    size, fill = 16, [-1.0, -2.0]
    tiles = tile_grid(height, width, size, 4)
    expected = []
    for t in tiles:
        (rows, cols), (trows, tcols) = t.clip(height, width)
        valid = np.zeros((size, size), bool)
        valid[trows, tcols] = reasons[rows, cols] == 0
        if valid.any():
            data = np.empty((2, size, size), np.float32)
            data[:] = np.float32(fill)[:, None, None]
            data[:, valid] = physical[:, rows, cols][:, valid[trows, tcols]]
            expected.append((t, data, valid))
    got = list(read_batches(ArrayWindows(physical, reasons), tiles, batch, fill, span_bytes=4 * 2 * size * size * span_tiles))
    assert [len(b.tiles) for b in got[:-1]] == [batch] * (len(got) - 1) and all(0 < len(b.tiles) <= batch for b in got)
    assert [t for b in got for t in b.tiles] == [t for t, _d, _v in expected]
    if expected:
        np.testing.assert_array_equal(np.concatenate([b.data for b in got]), np.stack([d for _t, d, _v in expected]))
        np.testing.assert_array_equal(np.concatenate([b.valid for b in got]), np.stack([v for _t, _d, v in expected]))


def test_batched():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    with pytest.raises(ValueError):
        list(batched(range(3), 0))


# --- read_tiles -------------------------------------------------------------------------------


def test_read_tiles_physical_values_match_rasterio(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(1, 10000, size=(3, 70, 90), dtype=np.uint16)
    path = write_tif(tmp_path / "s2.tif", stored, nodata=0)
    scales, offsets = [1e-4, 1e-4, 2e-4], [0.0, 0.0, -0.1]
    with rasterio.open(path) as src:
        tiles = tile_grid(src.height, src.width, 32, 8)
        got = list(read_tiles(DatasetWindows(src, [3, 1, 2], scales, offsets), tiles))
        assert [g.tile for g in got] == list(tiles)
        for g in got:
            # scales/offsets follow band_indexes: band 3 -> 1e-4, band 1 -> 1e-4, band 2 -> 2e-4 - 0.1.
            direct = src.read([3, 1, 2], window=g.tile.window)
            expected = direct.astype(np.float32) * np.float32(scales)[:, None, None]
            expected += np.float32(offsets)[:, None, None]
            assert g.data.dtype == np.float32 and g.data.shape == (3, 32, 32)
            np.testing.assert_array_equal(g.data, expected)
            exact = direct * np.array(scales)[:, None, None] + np.array(offsets)[:, None, None]
            np.testing.assert_allclose(g.data, exact, rtol=1e-6, atol=1e-7)
            assert g.valid.all()


def test_nodata_border_gives_matching_masks_and_all_nodata_tiles_are_skipped(tmp_path):
    stored = np.full((2, 100, 120), 500, dtype=np.uint16)
    stored[:, :, :40] = 65535  # a nodata strip wider than a tile: the first column of tiles is all nodata
    stored[:, 90:, :] = 65535  # a nodata border at the bottom
    stored[1, 50, 60] = 65535  # one band nodata: the pixel is invalid
    path = write_tif(tmp_path / "border.tif", stored, nodata=65535)
    expected_valid = (stored != 65535).all(axis=0)
    with rasterio.open(path) as src:
        tiles = tile_grid(src.height, src.width, 32, 8)
        got = list(read_tiles(DatasetWindows(src, [1, 2]), tiles, fill=[7.0, 9.0]))
        np.testing.assert_array_equal(scene_valid_mask(DatasetWindows(src, [1, 2]), strip=17), expected_valid)
    kept = {g.tile for g in got}
    skipped = [t for t in tiles if t not in kept]
    assert skipped and all(t.window.col_off + 32 <= 40 for t in skipped)
    for t in tiles:
        window_valid = expected_valid[t.window.toslices()]
        assert (t in kept) == window_valid.any()
    for g in got:
        np.testing.assert_array_equal(g.valid, expected_valid[g.tile.window.toslices()])
        assert (g.data[0][~g.valid] == 7.0).all() and (g.data[1][~g.valid] == 9.0).all()
        assert (g.data[:, g.valid] == 500).all()


def test_nodata_override_masks_and_nan(tmp_path):
    data = np.ones((1, 40, 40), dtype=np.float32)
    data[0, :5] = np.nan
    data[0, 10, 10] = -9999
    internal = np.full((40, 40), 255, dtype=np.uint8)
    internal[20:, 30:] = 0
    path = tmp_path / "f.tif"
    profile = dict(driver="GTiff", height=40, width=40, count=1, dtype="float32", crs="EPSG:32633",
                   transform=from_origin(500000, 4600000, 10, 10))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.write_mask(internal)
    with rasterio.open(path) as src:
        (from_file,) = read_tiles(DatasetWindows(src, [1]), tile_grid(40, 40, 40, 0))
        (override,) = read_tiles(DatasetWindows(src, [1], nodata=-9999), tile_grid(40, 40, 40, 0))
    # The file's internal mask and NaN are invalid; -9999 is only nodata when the caller says so.
    assert not from_file.valid[:5].any() and not from_file.valid[20:, 30:].any() and from_file.valid[10, 10]
    assert not override.valid[:5].any() and not override.valid[10, 10] and override.valid[20:, 30:].all()
    assert np.isfinite(from_file.data).all() and np.isfinite(override.data).all()


def test_scene_smaller_than_a_tile_is_padded_as_invalid(tmp_path):
    stored = np.arange(1, 1 + 2 * 20 * 25, dtype=np.uint16).reshape(2, 20, 25)
    path = write_tif(tmp_path / "small.tif", stored)
    with rasterio.open(path) as src:
        (g,) = read_tiles(DatasetWindows(src, [1, 2], [1.0, 2.0], [0.0, 0.0]), tile_grid(20, 25, 32, 8), fill=[-1.0, -2.0])
    assert g.data.shape == (2, 32, 32) and g.valid.shape == (32, 32)
    assert g.valid[:20, :25].all() and not g.valid[20:].any() and not g.valid[:, 25:].any()
    np.testing.assert_array_equal(g.data[:, :20, :25], stored * np.float32([1, 2])[:, None, None])
    assert (g.data[0][~g.valid] == -1).all() and (g.data[1][~g.valid] == -2).all()


# --- blending ---------------------------------------------------------------------------------


def test_weights_are_positive_symmetric_and_flat_in_the_core():
    w = tile_weights(32, 8)
    assert w.min() > 0 and w.max() == w[16, 16]
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert (w[8:24, 8:24] == w.max()).all() and w[0, 0] < w[0, 5] < w[0, 16]


def blend(tiles, height, width, probs_of, valid_of=None, n_classes=4, tile=32, overlap=8, skip=(), nodata_label=255):
    blender = MaskBlender(height, width, n_classes, tile, overlap, keep_probabilities=True, nodata_label=nodata_label)
    for t in tiles:
        if t in skip:
            continue
        valid = np.ones((tile, tile), dtype=bool) if valid_of is None else valid_of(t)
        blender.add(t, probs_of(t), valid)
    return blender


def test_constant_field_comes_back_exactly_and_coverage_detects_a_skipped_tile():
    height, width, tile, overlap = 90, 130, 32, 8
    p = np.array([0.5, 0.25, 0.125, 0.125], dtype=np.float32)
    field = np.broadcast_to(p[:, None, None], (4, tile, tile)).copy()
    tiles = tile_grid(height, width, tile, overlap)
    everything = np.ones((height, width), dtype=bool)

    blender = blend(tiles, height, width, lambda t: field)
    assert blender.uncovered_valid_pixels(everything) == 0
    labels, probs, covered = blender.result()
    assert covered.all() and (labels == 0).all() and labels.dtype == np.uint8
    np.testing.assert_array_equal(probs, np.broadcast_to(p[:, None, None], (4, height, width)))

    # A non-dyadic field is exact to float32 rounding.
    q = np.array([0.3, 0.3, 0.1, 0.3], dtype=np.float32)
    _, probs, _ = blend(tiles, height, width, lambda t: np.broadcast_to(q[:, None, None], (4, tile, tile))).result()
    np.testing.assert_allclose(probs, np.broadcast_to(q[:, None, None], probs.shape), rtol=0, atol=1e-6)

    # Skip an interior tile: the pixels only it covered are reported as uncovered.
    skipped = next(t for t in tiles if (t.row, t.col) == (1, 1))
    blender = blend(tiles, height, width, lambda t: field, skip={skipped})
    only_there = coverage([t for t in tiles if t != skipped], height, width) == 0
    assert only_there.sum() > 0
    assert blender.uncovered_valid_pixels(everything) == only_there.sum()
    labels, probs, covered = blender.result()
    np.testing.assert_array_equal(covered, ~only_there)
    assert (labels[only_there] == 255).all() and (probs[:, only_there] == 0).all()


def softmax_of_pixels(x):
    """A per-pixel class function of (C, ...) physical values: probabilities of 4 classes."""
    logits = np.stack([x[0] * 3, x[1] * 2 - x[0], np.sin(x[2] * 5), x[:3].mean(axis=0)]).astype(np.float64)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def test_blending_equals_a_whole_scene_computation_on_the_sentinel2_crop():
    tile, overlap = 32, 8
    with rasterio.open(S2) as src:
        assert src.descriptions == ("B02", "B03", "B04", "B07", "B11", "B12")
        tiles = tile_grid(src.height, src.width, tile, overlap)
        assert grid_shape(tiles) == (8, 13) and len(tiles) == 104
        scales, offsets = [1e-4] * 6, [0.0] * 6
        blender = MaskBlender(src.height, src.width, 4, tile, overlap, keep_probabilities=True)
        n = 0
        for batch in batched(read_tiles(DatasetWindows(src, range(1, 7), scales, offsets), tiles), 16):
            x = np.stack([b.data for b in batch])  # (B, C, T, T): what the engine gets
            for b, xi in zip(batch, x, strict=True):
                blender.add(b.tile, softmax_of_pixels(xi), b.valid)
            n += len(batch)
        valid_scene = scene_valid_mask(DatasetWindows(src, range(1, 7)))
        whole = src.read().astype(np.float32) * np.float32(1e-4)
    assert n == 104 and valid_scene.all()
    assert blender.uncovered_valid_pixels(valid_scene) == 0
    labels, probs, covered = blender.result()
    expected = softmax_of_pixels(whole)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, expected.argmax(axis=0))
    assert covered.all()


def test_blend_ramps_across_the_overlap_instead_of_jumping():
    # Two tiles that disagree completely: the blend moves from one to the other over the overlap.
    height, width, tile, overlap = 32, 56, 32, 8
    tiles = tile_grid(height, width, tile, overlap)
    assert len(tiles) == 2
    ones = {t: np.full((2, tile, tile), float(t.col), dtype=np.float32) for t in tiles}
    _, probs, _ = blend(tiles, height, width, lambda t: ones[t], n_classes=2).result()
    row = probs[0, 10]
    assert row[:24].max() == 0 and row[32:].min() == 1
    assert (np.diff(row) >= 0).all() and np.abs(np.diff(row)).max() < 0.3


def test_blender_ignores_invalid_pixels():
    height, width, tile, overlap = 40, 40, 32, 8
    tiles = tile_grid(height, width, tile, overlap)
    valid_scene = np.ones((height, width), dtype=bool)
    valid_scene[:, :3] = False

    def valid_of(t):
        return valid_scene[t.window.toslices()]

    def probs_of(t):
        p = np.zeros((2, tile, tile), dtype=np.float32)
        p[0] = 1
        p[:, ~valid_of(t)] = [[0.0], [1.0]]  # garbage where the input was nodata
        return p

    blender = blend(tiles, height, width, probs_of, valid_of, n_classes=2)
    assert blender.uncovered_valid_pixels(valid_scene) == 0
    labels, _, covered = blender.result()
    np.testing.assert_array_equal(covered, valid_scene)
    assert (labels[valid_scene] == 0).all() and (labels[~valid_scene] == 255).all()


def test_blender_checks_shapes():
    blender = MaskBlender(40, 40, 3, 32, 8)
    with pytest.raises(ValueError, match="expected"):
        blender.add(Tile(0, 0, 0, 0, 32), np.zeros((3, 16, 16), np.float32), np.ones((16, 16), bool))


# --- class heads ------------------------------------------------------------------------------


def test_class_aggregator_weights_by_valid_pixels():
    tiles = tile_grid(40, 60, 32, 4)  # 2 x 2 grid
    agg = ClassAggregator(*grid_shape(tiles), n_classes=3)
    full, quarter = np.ones((32, 32), bool), np.zeros((32, 32), bool)
    quarter[:16, :16] = True
    agg.add(tiles[0], np.array([0.9, 0.1, 0.0], np.float32), quarter)  # 256 valid pixels
    agg.add(tiles[1], np.array([0.0, 0.2, 0.8], np.float32), full)  # 1024
    agg.add(tiles[2], np.array([0.0, 0.4, 0.6], np.float32), full)  # 1024
    res = agg.result()  # tiles[3] was skipped (all nodata)
    expected = (256 * np.array([0.9, 0.1, 0]) + 1024 * np.array([0, 0.2, 0.8]) + 1024 * np.array([0, 0.4, 0.6])) / 2304
    np.testing.assert_allclose(res.probabilities, expected, rtol=1e-6)
    assert res.label == 2  # an unweighted mean would give (0.3, 0.233, 0.467): still 2, so check the values too
    np.testing.assert_array_equal(res.tile_labels, [[0, 2], [2, 255]])
    np.testing.assert_array_equal(res.tile_valid, [[256, 1024], [1024, 0]])
    assert np.isnan(res.tile_probabilities[:, 1, 1]).all()
    with pytest.raises(ValueError, match="no tile"):
        ClassAggregator(1, 1, 2).result()


# --- memory -----------------------------------------------------------------------------------


def test_reading_a_large_scene_keeps_memory_to_a_batch_and_a_span(tmp_path):
    size, count, tile, overlap, batch = 2048, 6, 128, 32, 16
    path = tmp_path / "big.tif"
    profile = dict(
        driver="GTiff", height=size, width=size, count=count, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000, 4600000, 10, 10), nodata=0, tiled=True, blockxsize=256, blockysize=256,
    )
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 256):
            dst.write(rng.integers(1, 10000, size=(count, 256, size), dtype=np.uint16), window=Window(0, r, size, 256))

    scene_float_bytes = count * size * size * 4  # 100 MB
    batch_bytes = batch * count * tile * tile * 4  # 6.3 MB
    span_bytes = 2**21  # a span of 5 tiles read at once (2 MiB of float32)
    tracemalloc.start()
    try:
        # tracemalloc must see numpy buffers, or the bound below would prove nothing.
        probe = np.ones(scene_float_bytes // 8, dtype=np.float32)
        assert tracemalloc.get_traced_memory()[1] >= probe.nbytes
        del probe
        tracemalloc.reset_peak()
        seen, total = 0, 0.0
        with rasterio.open(path) as src:
            tiles = tile_grid(size, size, tile, overlap)
            reader = DatasetWindows(src, range(1, count + 1), [1e-4] * count, [0.0] * count)
            for b in read_batches(reader, tiles, batch, span_bytes=span_bytes):
                total += float(b.data[:, 0, 0, 0].sum())  # the engine would run on b.data here
                seen += len(b.tiles)
                del b  # a consumer that keeps the last batch while the next is read holds two
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == len(tiles) == 21 * 21
    with rasterio.open(path) as src:  # each tile's first pixel, read on its own: the batches carried these values
        corners = [float(src.read(1, window=Window(t.window.col_off, t.window.row_off, 1, 1))[0, 0]) for t in tiles]
    assert total == pytest.approx(sum(corners) * 1e-4, rel=1e-5)
    print(f"peak {peak / 1e6:.1f} MB, batch {batch_bytes / 1e6:.1f} MB")
    # A batch, and a span with what the reader makes of it (stored values, masks, physical values).
    assert peak < 1.5 * batch_bytes + 3 * span_bytes, f"peak {peak / 1e6:.1f} MB for batches of {batch_bytes / 1e6:.1f} MB"
    assert peak < scene_float_bytes / 5


@given(n=st.integers(1, 400), tile=st.sampled_from([8, 32, 64]))
def test_tile_cells_partition_the_axis_and_lie_inside_their_tiles(n, tile):
    overlap = tile // 4
    cells = tile_cells(n, tile, overlap)
    tiles = [t for t in tile_grid(n, 1, tile, overlap)]
    assert len(cells) == len(tiles) and cells[0][0] == 0 and cells[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cells, cells[1:], strict=False))
    for (lo, hi), t in zip(cells, tiles, strict=True):
        start = int(t.window.row_off)
        assert start <= lo < hi <= min(start + tile, n), (n, tile, cells)


def test_the_class_grid_geotiff_puts_each_tile_answer_where_the_tile_is():
    """A scene whose tiles answer their own index: every output pixel must carry the index of a tile covering it.

    The old grid (cell i at i * stride, one pixel per tile) put the last cells past the scene's edge.
    """
    from rasterio.io import MemoryFile

    from mapex_serve.predict import Prediction
    from mapex_serve.responses import as_geotiff
    from mapex_serve.routing import Route
    from mapex_serve.tiling import ClassResult
    from tests.mapex_serve.test_routing import manifest

    height, width, tile, overlap = 117, 70, 32, 8
    tiles = tile_grid(height, width, tile, overlap)
    rows, cols = grid_shape(tiles)
    labels = np.arange(rows * cols, dtype=np.uint8).reshape(rows, cols)
    transform = from_origin(500000, 5000000, 10, 10)
    p = Prediction(Route(manifest("landcover", ["RGB"]), (1, 2, 3)),
                   {"crs": rasterio.crs.CRS.from_epsg(32633), "transform": transform, "width": width, "height": height},
                   classes=ClassResult(0, np.ones(2), labels, np.ones((2, rows, cols)), np.ones((rows, cols))),
                   tile_rows=tile_cells(height, tile, overlap), tile_cols=tile_cells(width, tile, overlap))
    with MemoryFile(as_geotiff(p)) as mem, mem.open() as out:
        assert out.transform == transform and out.shape == (height, width)
        painted = out.read(1)
    for t in tiles:
        (rs, cs), _ = t.clip(height, width)
        mine = painted[rs, cs] == labels[t.row, t.col]
        assert mine.any(), "every tile's answer appears inside its own window"
    owner = {int(labels[t.row, t.col]): t for t in tiles}
    for y in range(0, height, 7):
        for x in range(0, width, 5):
            t = owner[int(painted[y, x])]
            assert t.window.row_off <= y < t.window.row_off + tile and t.window.col_off <= x < t.window.col_off + tile


def test_the_mask_answer_is_a_deflate_cog_with_overviews_holding_the_labels():
    """What a GIS expects of the answer: a Cloud-Optimised GeoTIFF, deflate, with overviews; the labels exact."""
    from rasterio.enums import Compression
    from rasterio.io import MemoryFile

    from mapex_serve.predict import Prediction
    from mapex_serve.responses import as_geotiff, palette
    from mapex_serve.routing import Route
    from mapex_serve.tiling import MaskResult
    from tests.mapex_serve.test_routing import manifest

    size = 1024
    labels = (np.add.outer(np.arange(size) // 100, np.arange(size) // 70) % 3).astype(np.uint8)
    labels[:10, :10] = 255  # uncovered
    transform = from_origin(500000, 5000000, 10, 10)
    p = Prediction(Route(manifest("landcover", ["RGB"]), (1, 2, 3)),
                   {"crs": rasterio.crs.CRS.from_epsg(32633), "transform": transform, "width": size, "height": size},
                   mask=MaskResult(labels, None, labels != 255))
    with MemoryFile(as_geotiff(p)) as mem, mem.open() as out:
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert out.compression == Compression.deflate and out.overviews(1), (out.compression, out.overviews(1))
        assert out.transform == transform and out.nodata == 255
        assert out.crs == rasterio.crs.CRS.from_epsg(32633) and out.crs.to_epsg() == 32633
        assert out.descriptions == ("landcover class",) and out.tags(1)["classes"].startswith("0=")
        assert out.colormap(1)[0] == (*palette(3)[0].tolist(), 255) and "specialist" in out.tags()
        np.testing.assert_array_equal(out.read(1), labels)


@pytest.mark.parametrize("width, height", [(2048, 1536), (1100, 700), (1101, 701)])
def test_the_answers_overviews_are_the_ones_gdals_cog_driver_makes(monkeypatch, width, height):
    """Built in the in-memory source instead of by the COG driver (which writes them to a temporary file first):
    the same bytes where each halving is exact; otherwise as many levels, each at most a pixel wider, the labels
    exact."""
    from rasterio.io import MemoryFile

    from mapex_serve import responses
    from mapex_serve.predict import Prediction
    from mapex_serve.routing import Route
    from mapex_serve.tiling import MaskResult
    from tests.mapex_serve.test_routing import manifest

    rng = np.random.default_rng(3)
    labels = np.kron(rng.integers(0, 3, (height // 50 + 1, width // 50 + 1)), np.ones((50, 50)))[:height, :width]
    labels = labels.astype(np.uint8)
    labels[rng.random(labels.shape) < 0.02] = 1
    p = Prediction(Route(manifest("landcover", ["RGB"]), (1, 2, 3)),
                   {"crs": rasterio.crs.CRS.from_epsg(32633), "transform": from_origin(500000, 5000000, 10, 10),
                    "width": width, "height": height}, mask=MaskResult(labels, None, np.ones_like(labels, bool)))
    levels = len(responses.cog_overview_factors(width, height))
    ours = responses.as_geotiff(p)
    monkeypatch.setattr(responses, "cog_overview_factors", lambda *_: [])  # the driver makes them
    drivers = responses.as_geotiff(p)
    exact = width % 2**levels == 0 and height % 2**levels == 0
    assert (ours == drivers) == exact
    shapes = []
    for body in (ours, drivers):
        with MemoryFile(body) as mem:
            with mem.open() as out:
                assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                np.testing.assert_array_equal(out.read(1), labels)
                assert len(out.overviews(1)) == levels
            shapes.append([])
            for i in range(levels):
                with mem.open(overview_level=i) as level:
                    shapes[-1].append(level.shape)
    assert levels > 0
    for (h, w), (dh, dw) in zip(*shapes, strict=True):
        assert 0 <= h - dh <= 1 and 0 <= w - dw <= 1


def test_the_cog_overview_levels_halve_until_both_sides_fit_a_block():
    from mapex_serve.responses import cog_overview_factors

    assert cog_overview_factors(4096, 4096) == [2, 4, 8]
    assert cog_overview_factors(10980, 10980) == [2, 4, 8, 16, 32]  # a Sentinel-2 tile: 343 px at the top
    assert cog_overview_factors(513, 20) == [2]
    assert cog_overview_factors(512, 512) == cog_overview_factors(32, 32) == []


def test_the_blender_holds_one_band_of_tile_rows_and_equals_the_whole_scene_blend():
    """Row by row finalisation gives the same mask as blending the whole scene at once, in a fraction of memory."""
    height, width, tile, overlap = 300, 200, 32, 8
    rng = np.random.default_rng(0)
    field = rng.dirichlet(np.ones(5), size=(height, width)).transpose(2, 0, 1).astype(np.float32)
    tiles = tile_grid(height, width, tile, overlap)
    blender = blend(tiles, height, width, lambda t: field[:, int(t.window.row_off):int(t.window.row_off) + tile,
                                                          int(t.window.col_off):int(t.window.col_off) + tile],
                    n_classes=5)
    labels, probs, covered = blender.result()
    assert covered.all()
    np.testing.assert_allclose(probs, field, atol=1e-6)  # every pixel's blend of identical values is the value
    np.testing.assert_array_equal(labels, field.argmax(axis=0))
    assert blender._acc.nbytes == 5 * tile * width * 4, "the accumulator is one band of tile rows"
    lean = MaskBlender(height, width, 5, tile, overlap)
    assert lean.result().probabilities is None


def test_labels_without_kept_probabilities_are_the_argmax_of_the_blend():
    """The labels come from the weighted sums (no division): the same as the argmax of the blended probabilities."""
    height, width, tile, overlap = 150, 170, 32, 8
    rng = np.random.default_rng(7)
    tiles = tile_grid(height, width, tile, overlap)
    probs = {t: rng.dirichlet(np.ones(5), size=(tile, tile)).transpose(2, 0, 1).astype(np.float32) for t in tiles}
    valid = {t: rng.random((tile, tile)) > 0.1 for t in tiles}
    kept = blend(tiles, height, width, probs.get, valid.get, n_classes=5).result()
    lean = MaskBlender(height, width, 5, tile, overlap)
    for t in tiles:
        lean.add(t, probs[t], valid[t])
    labels = lean.result().labels
    np.testing.assert_array_equal(labels, kept.labels)
    np.testing.assert_array_equal(labels[kept.covered], kept.probabilities.argmax(axis=0)[kept.covered])
    assert (labels[~kept.covered] == 255).all() and (~kept.covered).any()


def test_the_blender_refuses_tiles_out_of_row_order():
    blender = MaskBlender(100, 40, 2, 32, 8)
    ones, valid = np.ones((2, 32, 32), np.float32), np.ones((32, 32), bool)
    blender.add(Tile(2, 0, 68, 0, 32), ones, valid)
    with pytest.raises(ValueError, match="row-major order"):
        blender.add(Tile(0, 0, 0, 0, 32), ones, valid)


def test_a_blender_with_a_sink_hands_out_every_row_once_and_resumes_part_way():
    """A job's blender keeps nothing scene-sized: its row bands equal the whole-scene result, and a resumed blender
    started at a later tile row gives the same rows below the resume point."""
    height, width, tile, overlap = 300, 200, 32, 8
    field = np.random.default_rng(1).dirichlet(np.ones(3), size=(height, width)).transpose(2, 0, 1).astype(np.float32)
    tiles = tile_grid(height, width, tile, overlap)

    def crop(t):
        return field[:, int(t.window.row_off):int(t.window.row_off) + tile, int(t.window.col_off):int(t.window.col_off) + tile]

    whole = blend(tiles, height, width, crop, n_classes=3).result()
    bands = []
    sinking = MaskBlender(height, width, 3, tile, overlap, sink=bands.append, keep_probabilities=True)
    for t in tiles:
        sinking.add(t, crop(t), np.ones((tile, tile), bool))
    sinking.finish()
    assert sinking._labels is None and sinking._covered is None, "nothing scene-sized with a sink"
    assert [b.row for b in bands] == sorted(b.row for b in bands)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in bands]), whole.labels)
    np.testing.assert_allclose(np.concatenate([b.probabilities for b in bands], axis=1), field, atol=1e-6)
    with pytest.raises(RuntimeError, match="finish"):
        sinking.result()

    resume_row = 130  # rows above it were written by an earlier run
    todo = [t for t in tiles if int(t.window.row_off) + tile > resume_row]
    start = int(todo[0].window.row_off)
    assert start < resume_row
    again = []
    resumed = MaskBlender(height, width, 3, tile, overlap, sink=again.append, start_row=start)
    for t in todo:
        resumed.add(t, crop(t), np.ones((tile, tile), bool))
    resumed.finish()
    rows = np.concatenate([b.labels for b in again])
    assert again[0].row == start and len(rows) == height - start
    np.testing.assert_array_equal(rows[resume_row - start:], whole.labels[resume_row:])


@pytest.mark.parametrize("n_classes", [1, 2, 7, 255])
def test_first_argmax_is_numpys_argmax_ties_included(n_classes):
    """Dyadic scores tie often (a blend of 0.5s and 0.25s): the first class that reaches the best wins, as in numpy."""
    rng = np.random.default_rng(n_classes)
    scores = rng.integers(0, 4, (n_classes, 24, 300)).astype(np.float32) / 4
    scores[:, 0, :] = 0.25  # every class tied
    labels = first_argmax(scores)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, scores.argmax(axis=0))
    assert (labels[0] == 0).all()


def test_batches_of_any_size_blend_as_tiles_one_at_a_time():
    """``add_batch`` reuses its weighting buffers between batches: growing and shrinking batches change nothing."""
    height, width, tile, overlap, k = 130, 170, 32, 8, 4
    rng = np.random.default_rng(3)
    tiles = tile_grid(height, width, tile, overlap)
    probs = rng.dirichlet(np.ones(k), size=(len(tiles), tile, tile)).transpose(0, 3, 1, 2).astype(np.float32)
    valid = rng.random((len(tiles), tile, tile)) > 0.2
    given = probs.copy()
    one = MaskBlender(height, width, k, tile, overlap, keep_probabilities=True)
    for i, t in enumerate(tiles):
        one.add(t, probs[i], valid[i])
    batched_ = MaskBlender(height, width, k, tile, overlap, keep_probabilities=True)
    start, sizes = 0, itertools.cycle([1, 5, 2, 7, 3])
    while start < len(tiles):
        stop = start + next(sizes)
        batched_.add_batch(tiles[start:stop], probs[start:stop], valid[start:stop])
        start = stop
    a, b = one.result(), batched_.result()
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(probs, given)  # the caller's probabilities (a slab slot) are not written to
