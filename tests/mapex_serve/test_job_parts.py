"""A mask job split into parts of rows (one a decode worker) writes the same strips and result files as one part.

Real GeoTIFFs through rasterio and GDAL's COG driver; the engine's probabilities are replaced by a
function of each tile's pixels, so that the split and the whole run give bit-identical inputs to
the blender and any difference is the splitting's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config

from mapex_serve.decode.pool import part_count
from mapex_serve.engine import CPU_EP, CUDA_EP, NATIVE_TENSORRT, TRT_EP
from mapex_serve.inputs import SourceFile
from mapex_serve.jobs.models import JobRequest
from mapex_serve.jobs.outputs import RESULT_BLOCK_CACHE, STRIP_ROWS, block_cache_at_most
from mapex_serve.jobs.runner import job_parts
from mapex_serve.jobs.scene import JobPlan, JobScene
from mapex_serve.jobs.sources import ResolvedSources

HEIGHT, WIDTH = 1300, 150  # three strips, the last one short


@pytest.mark.parametrize(("done", "height", "workers", "parts"), [
    ([], 1300, 1, [(0, 1300)]),
    ([], 4096, 4, [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4096)]),
    ([], 4096, 3, [(0, 1536), (1536, 3072), (3072, 4096)]),
    ([], 1300, 8, [(0, 1300)]),  # three strips: parts of at least two
    ([0, 1], 4096, 1, [(1024, 4096)]),  # a resumed job starts after its strips
    ([1, 4], 4096, 1, [(0, 512), (1024, 2048), (2560, 4096)]),  # a part never spans a done strip
    ([0, 1, 2], 1300, 2, []),
])
def test_the_rows_left_are_split_into_strip_aligned_parts(done, height, workers, parts):
    assert job_parts(done, height, workers) == parts


def test_a_scene_is_split_one_part_a_worker_off_the_cpu_and_one_for_every_three_cores_on_it():
    assert [part_count(None, p, 15, 16) for p in (CPU_EP, CUDA_EP, TRT_EP, NATIVE_TENSORRT)] == [5, 15, 15, 15]
    assert [part_count(None, CPU_EP, cores - 1, cores) for cores in (1, 2, 5, 6, 8, 64)] == [1, 1, 1, 2, 2, 21]
    assert part_count(None, CPU_EP, 2, 16) == 2, "never more parts than workers"
    assert part_count(4, CPU_EP, 15, 2) == 4 and part_count(1, CUDA_EP, 15, 16) == 1  # the setting wins


@pytest.fixture(scope="module")
def swir_file(tmp_path_factory) -> Path:
    """Two SWIR reflectance bands with a burn scar and noise (labels with edges that cross the strips) and a
    patch of NaN across a strip boundary (masked pixels each part counts for its own rows)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    scar = ((rows - 640) ** 2 / 300**2 + (cols - 75) ** 2 / 60**2) < 1
    b11 = np.where(scar, 0.12, 0.25) + rng.normal(0, 0.03, (HEIGHT, WIDTH))
    b12 = np.where(scar, 0.2, 0.15) + rng.normal(0, 0.03, (HEIGHT, WIDTH))
    b11[STRIP_ROWS - 30 : STRIP_ROWS + 20, 40:90] = np.nan
    path = tmp_path_factory.mktemp("swir") / "swir.tif"
    with rasterio.open(path, "w", driver="GTiff", count=2, height=HEIGHT, width=WIDTH, dtype="float32",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 5000000, 20, 20),
                       tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(np.stack([b11, b12]).astype(np.float32))
    return path


def _probabilities(data: np.ndarray) -> np.ndarray:
    """(B, 2, T, T) from tiles (B, 2, T, T): 'burned' where B12 outshines B11, as a smooth function."""
    burned = 1 / (1 + np.exp(-20 * (data[:, 1] - data[:, 0])))
    return np.stack([1 - burned, burned], axis=1).astype(np.float32)


def _run(manifest, path: Path, folder: Path, parts: list[tuple[int, int] | None]) -> list:
    """Each part on a freshly opened scene, as a decode worker would run it; every part's summary and strips."""
    plan = JobPlan("wildfire", JobRequest(bands="B11,B12", units="reflectance", probabilities=True), ResolvedSources(
        [SourceFile(path.name, str(path))]), folder, 10**9, 32, {"wildfire-swir": "cpu"})
    strips, summaries = [], []
    for rows in parts:
        with JobScene(plan, [manifest]) as scene:
            scene.start(rows, strips if rows is None else [])
            for batch in scene.batches:
                scene.add(batch, _probabilities(batch.data))
            summaries.append(scene.finish())
            strips += scene.take_strips()
    return summaries


def _files(folder: Path) -> dict[str, tuple]:
    out = {}
    for name in ("result.tif", "probabilities.tif"):
        with rasterio.open(folder / name) as src:
            out[name] = (src.read(), src.profile, src.tags())
    return out


def test_a_job_split_into_parts_gives_the_files_and_summary_of_one_part(swir_manifest, swir_file, tmp_path):
    cache = get_gdal_config("GDAL_CACHEMAX")
    [whole] = _run(swir_manifest, swir_file, tmp_path / "whole", [(0, HEIGHT)])
    assert get_gdal_config("GDAL_CACHEMAX") == cache, "writing the results gives GDAL's block cache its size back"
    *parts, split = _run(swir_manifest, swir_file, tmp_path / "split", [(0, STRIP_ROWS), (STRIP_ROWS, HEIGHT), None])
    assert parts == [None, None], "a part that leaves rows to others writes no results"
    assert split == whole
    assert 0 < whole["classes"]["burned"]["fraction"] < 0.5
    assert sum(whole["masked_pixels"]["by_reason"].values()) == 50 * 50
    mine, theirs = _files(tmp_path / "split"), _files(tmp_path / "whole")
    for name in mine:
        np.testing.assert_array_equal(mine[name][0], theirs[name][0])
        assert mine[name][1:] == theirs[name][1:]
    assert not (tmp_path / "split" / "strips").exists(), "the strips are merged and removed"


def test_parts_run_in_any_order_give_the_same_result(swir_manifest, swir_file, tmp_path):
    [whole] = _run(swir_manifest, swir_file, tmp_path / "whole", [(0, HEIGHT)])
    folder = tmp_path / "resumed"
    plan_parts = [(STRIP_ROWS * 2, HEIGHT), (0, STRIP_ROWS), (STRIP_ROWS, STRIP_ROWS * 2), None]
    *_, resumed = _run(swir_manifest, swir_file, folder, plan_parts)
    assert resumed == whole
    np.testing.assert_array_equal(_files(folder)["result.tif"][0], _files(tmp_path / "whole")["result.tif"][0])


@pytest.fixture
def block_cache():
    """GDAL's block cache size as it was after the test (it is the process's)."""
    before = get_gdal_config("GDAL_CACHEMAX")
    yield
    set_gdal_config("GDAL_CACHEMAX", before)


@pytest.mark.usefixtures("block_cache")
def test_the_block_cache_is_bounded_while_a_cog_is_written_and_then_as_it_was():
    set_gdal_config("GDAL_CACHEMAX", 300 * 2**20)
    with block_cache_at_most(RESULT_BLOCK_CACHE):
        assert get_gdal_config("GDAL_CACHEMAX") == RESULT_BLOCK_CACHE
    assert get_gdal_config("GDAL_CACHEMAX") == 300 * 2**20
    with pytest.raises(RuntimeError), block_cache_at_most(RESULT_BLOCK_CACHE):
        raise RuntimeError("the COG driver failed")
    assert get_gdal_config("GDAL_CACHEMAX") == 300 * 2**20
    with block_cache_at_most(RESULT_BLOCK_CACHE):  # two writers that overlap (jobs in the service's threads)
        with block_cache_at_most(RESULT_BLOCK_CACHE):
            pass
        assert get_gdal_config("GDAL_CACHEMAX") == RESULT_BLOCK_CACHE, "the first to leave does not give it back"
    assert get_gdal_config("GDAL_CACHEMAX") == 300 * 2**20
    set_gdal_config("GDAL_CACHEMAX", 16 * 2**20)  # a deployment's smaller cache stays
    with block_cache_at_most(RESULT_BLOCK_CACHE):
        assert get_gdal_config("GDAL_CACHEMAX") == 16 * 2**20
