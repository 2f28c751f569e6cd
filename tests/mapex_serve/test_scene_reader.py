"""Where the unit check samples a scene: spread over it, each window inside one of the file's blocks."""

from itertools import combinations

import numpy as np
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.windows import Window

from mapex_serve.inputs import RequestScene, UploadedFile
from mapex_serve.scene_reader import _sample_windows
from mapex_serve.units import UnitOverrides


def _overlap(a: Window, b: Window) -> bool:
    return (a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height
            and a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width)


def test_windows_of_a_tiled_file_each_decode_one_block():
    windows = list(_sample_windows(4096, 4096, 64, block=(256, 256)))
    assert len(windows) == 25
    for w in windows:
        assert w.row_off // 256 == (w.row_off + 63) // 256 and w.col_off // 256 == (w.col_off + 63) // 256
    assert not any(_overlap(a, b) for a, b in combinations(windows, 2))
    rows = sorted({w.row_off for w in windows})
    assert rows[0] == 0 and rows[-1] >= 4096 - 512, "still spread from edge to edge"


def test_strips_and_offset_grids_keep_the_spread_windows():
    spread = list(_sample_windows(4096, 4096, 64))
    assert {w.col_off for w in spread} == {0, 1008, 2016, 3024, 4032}
    strips = list(_sample_windows(4096, 4096, 64, block=(8, 4096)))  # a strip spans the width: columns stay
    assert {w.col_off for w in strips} == {0, 1008, 2016, 3024, 4032}
    assert all(w.row_off % 8 == 0 for w in strips)
    shifted = list(_sample_windows(4096, 4096, 64, block=(256, 256), offset=(100, 100)))  # a crop of the file
    assert shifted == spread


def test_a_small_axis_is_read_whole_once():
    assert list(_sample_windows(200, 5000, 64, block=(256, 256))) == [
        Window(c, 0, 64, 200) for c in (0, 1024, 2304, 3584, 4864)]  # 0, 1234, 2468, 3702, 4936 aligned


def test_a_scene_one_block_wide_is_sampled_in_one_window_and_still_read_whole():
    """550 px wide in 512 px blocks: the five windows across it all start at column 0, one window in all, which is not
    the whole scene: its tiles are read from the file, not sliced from that window."""
    data = np.random.default_rng(0).integers(500, 3000, (3, 300, 550)).astype(np.uint16)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=550, height=300, count=3, dtype="uint16", crs="EPSG:32633",
                      transform=Affine(10, 0, 500000, 0, -10, 5000000), tiled=True, blockxsize=512,
                      blockysize=512) as dst:
            dst.write(data)
            for i, name in enumerate(["B04", "B03", "B02"], start=1):
                dst.set_band_description(i, name)
        body = mem.read()
    with RequestScene([UploadedFile("scene.tif", body)]) as scene:
        reader = scene.reader(["B04", "B03", "B02"], UnitOverrides())
        physical, reasons = reader.read(Window(400, 100, 150, 64))
    assert physical.shape == (3, 64, 150) and not reasons.any()
    np.testing.assert_allclose(physical, data[:, 100:164, 400:550] * np.float32(1e-4), rtol=1e-6)
