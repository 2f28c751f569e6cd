"""A /predict mask scene split into parts of rows: the same mask and counts as the scene run whole.

In process, as the decode workers run each part (a fresh open of the upload, its own tiles, the
shared mask in a slab), with the engine's probabilities replaced by a function of each tile's
pixels so that any difference is the splitting's. Through real servers whose decode workers run
the parts, and with one of them killed mid-scene: ``test_decode_workers.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from mapex_serve.budget import Reservation
from mapex_serve.decode.parts import MIN_PART_PIXELS, MaskSlab, ScenePart, scene_parts
from mapex_serve.decode.slab import Layout, Slab
from mapex_serve.inputs import UploadedFile
from mapex_serve.predict import SceneRun, open_and_route, overlap_for
from mapex_serve.responses import as_geotiff, as_json
from mapex_serve.tiling import tile_cells
from mapex_serve.units import UnitOverrides

HEIGHT, WIDTH = 900, 150


@pytest.mark.parametrize(("height", "width", "count", "parts"), [
    (4096, 4096, 1, [(0, 4096)]),
    (4096, 4096, 2, [(0, 2044), (2044, 4096)]),  # 170 rows of tiles: 85 each
    (4096, 4096, 3, [(0, 1372), (1372, 2740), (2740, 4096)]),
    (2048, 2048, 15, [(0, 508), (508, 1012), (1012, 1516), (1516, 2048)]),  # parts of about 2**20 pixels
    (1024, 1024, 4, [(0, 1024)]),  # one part's pixels: whole
    (32, 100_000, 4, [(0, 32)]),  # one row of tiles cannot be split
])
def test_a_scene_is_cut_at_tile_rows_into_even_parts_of_a_million_pixels_or_so(height, width, count, parts):
    got = scene_parts(height, width, 32, overlap_for(32), count)
    assert got == parts
    assert all((r1 - r0) * width >= 0.95 * MIN_PART_PIXELS for r0, r1 in got) or got == [(0, height)]


def test_sessions_sharing_a_slab_get_their_own_slots():
    layout = Layout.plan([("scene.tif", 1000)], tile_bytes=4096, prob_bytes=1024, slots=3 * 2)
    shares = [layout.share(i, 2) for i in range(2)]
    assert [len(s.tiles) for s in shares] == [3, 3] and shares[0].files == shares[1].files == layout.files
    assert not set(shares[0].tiles) & set(shares[1].tiles) and not set(shares[0].probs) & set(shares[1].probs)


@pytest.fixture(scope="module")
def swir_upload() -> bytes:
    """Two SWIR reflectance bands with a burn scar, noise, and NaN across the first cut of three parts."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    scar = ((rows - 450) ** 2 / 250**2 + (cols - 75) ** 2 / 60**2) < 1
    b11 = np.where(scar, 0.12, 0.25) + rng.normal(0, 0.03, (HEIGHT, WIDTH))
    b12 = np.where(scar, 0.2, 0.15) + rng.normal(0, 0.03, (HEIGHT, WIDTH))
    b11[300:350, 40:90] = np.nan
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, height=HEIGHT, width=WIDTH, dtype="float32", crs="EPSG:32633",
                      transform=from_origin(500000, 5000000, 20, 20), tiled=True, blockxsize=128,
                      blockysize=128) as dst:
            dst.write(np.stack([b11, b12]).astype(np.float32))
            dst.descriptions = ("B11", "B12")
        return mem.read()


def _probabilities(data: np.ndarray) -> np.ndarray:
    """(B, 2, T, T) from tiles (B, 2, T, T): 'burned' where B12 outshines B11, as a smooth function."""
    burned = 1 / (1 + np.exp(-20 * (data[:, 1] - data[:, 0])))
    return np.stack([1 - burned, burned], axis=1).astype(np.float32)


def _open(manifest, upload: bytes) -> SceneRun:
    scene, route, reader = open_and_route([UploadedFile("scene.tif", upload)], None, [manifest], None,
                                          UnitOverrides.parse("reflectance", None, None), 10**9,
                                          max_unpacked=0)
    return SceneRun(scene, route, reader, 32)


def _run(run: SceneRun) -> None:
    for batch in run.batches:
        run.add(batch, _probabilities(batch.data))


def test_a_scene_run_in_parts_gives_the_mask_and_counts_of_the_whole(swir_manifest, swir_upload, tmp_path):
    whole = _open(swir_manifest, swir_upload)
    whole.start()
    _run(whole)
    expected = whole.result(Reservation(None, 0))
    whole.scene.close()

    cuts = [lo for lo, _hi in tile_cells(HEIGHT, 32, overlap_for(32))][13::13]  # what scene_parts cuts, smaller
    rows = list(itertools.pairwise([0, *cuts, HEIGHT]))
    assert len(rows) == 3 and rows[0][1] in range(300, 350), "the NaN patch crosses a cut"
    slab = Slab.create(tmp_path, MaskSlab.size(HEIGHT, WIDTH))
    runs, done = [], []
    for part in (ScenePart(r, str(slab.path)) for r in reversed(rows)):  # any order: each writes its own rows
        run = _open(swir_manifest, swir_upload)
        run.start(part.rows, MaskSlab.arrays(Slab.attach(part.mask), HEIGHT, WIDTH))
        assert len(run.tiles) < len(whole.tiles), "a part runs only the tiles its rows need"
        _run(run)
        done.append(run.part_done())
        runs.append(run)
    split = runs[-1].result(Reservation(None, 0), done)  # the first part's run answers for the scene
    np.testing.assert_array_equal(split.mask.labels, expected.mask.labels)
    np.testing.assert_array_equal(split.mask.covered, expected.mask.covered)
    assert split.masked == expected.masked and sum(split.masked.values()) == 50 * 50
    assert as_json(split, "cpu") == as_json(expected, "cpu")
    assert as_geotiff(split, threads=3) == as_geotiff(expected), "the same COG, compressed on a thread a part"
    assert 0.05 < float((expected.mask.labels == 1).mean()) < 0.5, "a real mask: burned and unburned"
    for run in runs:
        run.scene.close()
