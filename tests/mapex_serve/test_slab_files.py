"""A decode worker's view of a request's files: TIFFs read where they lie in the shared slab, anything else copied."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.windows import Window

from mapex_serve.decode.session import slab_files
from mapex_serve.decode.slab import Layout, Slab
from mapex_serve.geokeys import is_tiff
from mapex_serve.inputs import UploadedFile
from mapex_serve.predict import UnreadableRasterError, open_and_route
from mapex_serve.units import UnitOverrides


def _geotiff(driver: str = "GTiff", **options) -> bytes:
    rng = np.random.default_rng(1)
    with MemoryFile() as mem:
        with mem.open(driver=driver, count=2, height=70, width=90, dtype="float32", crs="EPSG:32633",
                      transform=from_origin(500000, 5000000, 20, 20), **options) as dst:
            dst.write(rng.uniform(0.05, 0.4, (2, 70, 90)).astype(np.float32))
            dst.descriptions = ("B11", "B12")
        return mem.read()


def _in_slab(tmp_path, files: list[tuple[str, bytes]]) -> tuple[Slab, Layout]:
    """The files where the service puts them: after a few bytes of nothing, as a slab's later files lie."""
    layout = Layout.plan([("pad", 100), *((name, len(data)) for name, data in files)], 64, 64)
    layout = Layout(layout.files[1:], layout.tiles, layout.probs, layout.size)
    slab = Slab.create(tmp_path, layout.size)
    for (_name, offset, _size), (_n, data) in zip(layout.files, files, strict=True):
        slab.write(offset, data)
    return slab, layout


def _read(files: list[UploadedFile], manifest) -> tuple:
    """The scene's grid and its physical values with their invalid-pixel reasons, as the tiler reads them."""
    scene, _route, reader = open_and_route(files, None, [manifest], None,
                                           UnitOverrides.parse("reflectance", None, None), 10**9, max_unpacked=0)
    try:
        return reader.grid, *reader.read(Window(0, 0, reader.width, reader.height))
    finally:
        scene.close()


@pytest.mark.parametrize("options", [{}, {"tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "deflate"},
                                     {"BIGTIFF": "YES"}])
def test_a_lone_tiff_is_read_in_place_and_reads_as_its_copy_does(tmp_path, swir_manifest, options):
    data = _geotiff(**options)
    slab, layout = _in_slab(tmp_path, [("scene.tif", data)])
    (file,) = slab_files(slab, layout)
    assert isinstance(file.data, memoryview) and bytes(file.data) == data, "a view of the slab, not a copy"
    assert file.in_place == f"/vsisubfile/{layout.files[0][1]}_{len(data)},{slab.path}"
    (grid, values, reasons), (copy_grid, copy_values, copy_reasons) = (
        _read([file], swir_manifest), _read([UploadedFile("scene.tif", data)], swir_manifest))
    assert grid == copy_grid and grid.crs.to_epsg() == 32633
    np.testing.assert_array_equal(values, copy_values)
    np.testing.assert_array_equal(reasons, copy_reasons)
    assert [p.name for p in tmp_path.iterdir()] == [slab.path.name], "GDAL left no sidecar beside the slab"


def test_several_tiffs_are_read_in_place_and_stack_as_their_copies_do(tmp_path, swir_manifest):
    data = _geotiff()
    with MemoryFile(data) as mem, mem.open() as src:
        bands = [("B11.tif", src.read(1)), ("B12.tif", src.read(2))]
        profile = {**src.profile, "count": 1}
    files = []
    for name, band in bands:
        with MemoryFile() as out:
            with out.open(**profile) as dst:
                dst.write(band, 1)
            files.append((name, out.read()))
    slab, layout = _in_slab(tmp_path, files)
    got = slab_files(slab, layout)
    assert [f.in_place is not None for f in got] == [True, True]
    (grid, values, reasons), (copy_grid, copy_values, copy_reasons) = (
        _read(got, swir_manifest), _read([UploadedFile(n, d) for n, d in files], swir_manifest))
    assert grid == copy_grid
    np.testing.assert_array_equal(values, copy_values)
    np.testing.assert_array_equal(reasons, copy_reasons)


def test_a_request_with_any_other_part_is_copied_for_its_vsimem_folder(tmp_path):
    tiff = _geotiff()
    for files in ([("scene.vrt", b"<VRTDataset rasterXSize='1'/>")],
                  [("scene.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64)],
                  [("scene.tif", tiff), ("scene.tif.aux.xml", b"<PAMDataset/>")],
                  [("scene.tif", tiff), ("scene.tif.msk", tiff)]):
        slab, layout = _in_slab(tmp_path, files)
        got = slab_files(slab, layout)
        assert [(f.name, f.data, f.in_place) for f in got] == [(n, d, None) for n, d in files]
        assert all(isinstance(f.data, bytes) for f in got)


def test_a_broken_tiff_read_in_place_is_named_as_the_user_sent_it(tmp_path, swir_manifest):
    slab, layout = _in_slab(tmp_path, [("upload.tif", b"II*\x00" + b"\x00" * 64)])
    (file,) = slab_files(slab, layout)
    with pytest.raises(UnreadableRasterError) as e:
        open_and_route([file], None, [swir_manifest], None, UnitOverrides.parse(None, None, None), 10**9,
                       max_unpacked=0)
    assert "'upload.tif' not recognized" in str(e.value)
    assert "vsisubfile" not in str(e.value) and str(tmp_path) not in str(e.value)


def test_tiff_headers_are_told_by_their_first_four_bytes():
    assert all(is_tiff(h + b"rest") for h in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))
    assert not any(is_tiff(h) for h in (b"II*", b"\x89PNG", b"<VRT", b"", b"MM\x00\x2c"))
    assert is_tiff(memoryview(b"II*\x00"))
