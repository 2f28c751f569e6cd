"""ESA's EOPF Zarr Sentinel-2 products read where they lie, through GDAL's Zarr driver: a store on disk and one
served over HTTP by a range-capable server, as the EOPF Sample Service's object store serves them."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from rasterio.windows import Window

from mapex_serve.archives import UnreadableArchiveError, unpack
from mapex_serve.eopf import product_arrays
from mapex_serve.inputs import NotOnAGridError, RequestScene, SourceFile, UnreadableInputError
from mapex_serve.jobs.sources import resolve_stac
from mapex_serve.reflectance import ReflectanceLevelError
from mapex_serve.units import UnitOverrides

L2A = "S2B_MSIL2A_20250522T125039_N0511_R095_T33TML_20250522T133252.zarr"
L1C = "S2B_MSIL1C_20250522T125039_N0511_R095_T33TML_20250522T131512.zarr"


def test_of_a_products_arrays_each_band_is_read_once_at_its_finest_and_the_scene_classification_too():
    store = 'ZARR:"/vsicurl/https://objects.eodc.eu/e05a:202505-s02msil2a/22/products/cpm_v256/x.zarr"'
    subdatasets = [f"{store}:/{p}" for p in (
        "conditions/geometry/sun_angles", "measurements/reflectance/r60m/b02", "measurements/reflectance/r20m/b02",
        "measurements/reflectance/r10m/b02", "measurements/reflectance/r60m/b01", "measurements/reflectance/r20m/b8a",
        "measurements/reflectance/r60m/b8a", "measurements/reflectance/r10m/x", "quality/atmosphere/r10m/aot",
        "conditions/mask/l2a_classification/r60m/scl", "conditions/mask/l2a_classification/r20m/scl",
        "conditions/mask/l2a_classification/r20m/dem")]
    assert [s.removeprefix(f"{store}:/") for s in product_arrays(subdatasets)] == [
        "measurements/reflectance/r10m/b02", "measurements/reflectance/r20m/b8a", "measurements/reflectance/r60m/b01",
        "conditions/mask/l2a_classification/r20m/scl"]
    assert product_arrays(['NETCDF:"/vsimem/a/s.nc":B04', f"{store}:/conditions/geometry/sun_angles"]) is None


@pytest.fixture(scope="module")
def served(static_server, eopf_product) -> tuple:
    """An L2A and an L1C product served over HTTP (by a server in a process of its own: ``StaticServer``)."""
    return static_server, {name: eopf_product(static_server.root, name) for name in (L2A, L1C)}


@pytest.mark.parametrize("where", ["http", "disk"])
def test_a_product_gives_each_band_in_reflectance_on_its_utm_grid_with_its_scene_classification(where, served):
    server, products = served
    product = products[L2A]
    path = f"/vsicurl/{server.url}/{L2A}" if where == "http" else str(product.path)
    with RequestScene([SourceFile(L2A, path)]) as scene:
        assert sorted(scene.canonical_bands) == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11",
                                                 "B12", "B8A"]
        assert [b.identity.quality for b in scene.quality_bands()] == ["SCL"]
        assert f"{L2A}:/measurements/reflectance/r20m/b04" in scene.ignored_subdatasets  # b04 is read at 10 m
        reader = scene.reader(["B04", "B11"], UnitOverrides())
        assert reader.grid.crs.to_epsg() == 32633  # stated only as proj:epsg, which GDAL does not read
        assert tuple(reader.grid.transform)[:6] == (10, 0, 399960, 0, -10, 4600020)
        values, invalid = reader.read(Window(0, 0, 96, 96))
    red = product.counts["b04"] * 0.0001 - 0.1  # the arrays' scale_factor and add_offset
    np.testing.assert_allclose(values[0][2:, 2:], red[2:, 2:], atol=1e-6)
    assert invalid[:2, :2].all() and not invalid[4:, 4:].any()  # the fill value, 0, is no data
    swir = product.counts["b11"][2:, 2:] * 0.0001 - 0.1  # 20 m, resampled onto the 10 m grid
    assert values[1][4:].min() >= swir.min() - 1e-6 and values[1][4:].max() <= swir.max() + 1e-6


def test_a_url_of_one_array_is_read_with_the_crs_it_states(served):
    """An EOPF item's data asset (``B04_10m``) is the array's own URL."""
    server, products = served
    url = f"{server.url}/{L2A}/measurements/reflectance/r10m/b04"
    with RequestScene([SourceFile("b04", f"/vsicurl/{url}")]) as scene:
        reader = scene.reader(["B04"], UnitOverrides())
        assert reader.grid.crs.to_epsg() == 32633
        values, _ = reader.read(Window(10, 10, 8, 8))
    np.testing.assert_allclose(values[0], products[L2A].counts["b04"][10:18, 10:18] * 0.0001 - 0.1, atol=1e-6)


def test_a_level_1c_product_is_refused_by_a_model_of_surface_reflectance_by_its_name(served, swir_manifest):
    surface = swir_manifest.model_copy(update={"reflectance": "surface"})
    with RequestScene([SourceFile(L1C, f"/vsicurl/{served[0].url}/{L1C}")]) as scene:
        assert scene.quality_bands() == []  # Level-1C has no scene classification
        with pytest.raises(ReflectanceLevelError, match=r"\.zarr:b11 holds top-of-atmosphere reflectance \(Level-1C\), "
                                                        r"by its name, which says MSIL1C"):
            scene.reader(["B11", "B12"], UnitOverrides(), model=surface)


def test_an_eopf_stac_item_is_read_as_its_product_unless_assets_are_chosen():
    """The item's assets as the EOPF STAC serves them: the product's store, a group, arrays, a thumbnail."""
    base = f"https://objects.eodc.eu/e05a:202505-s02msil2a/22/products/cpm_v256/{L2A}"
    item = {"type": "Feature", "stac_version": "1.1.0", "id": L2A.removesuffix(".zarr"), "properties": {}, "assets": {
        "B04_10m": {"href": f"{base}/measurements/reflectance/r10m/b04", "type": "application/vnd+zarr",
                    "roles": ["data"], "raster:scale": 0.0001, "raster:offset": -0.1,
                    "bands": [{"name": "B04", "eo:common_name": "red"}]},
        "SR_60m": {"href": f"{base}/measurements/reflectance/r60m", "type": "application/vnd+zarr",
                   "roles": ["data", "reflectance", "dataset"], "bands": [{"name": "b01"}, {"name": "b09"}]},
        "product": {"href": base, "type": "application/vnd+zarr", "roles": ["data", "metadata"],
                    "title": "EOPF Product"},
        "thumbnail": {"href": f"{base}/quality/l2a_quicklook/r60m/tci.png", "roles": ["thumbnail"]}}}
    whole = resolve_stac(item, None, None)
    assert [(f.name, f.path) for f in whole.files] == [(L2A, f"/vsicurl/{base}")]
    assert whole.bands is None and whole.described[0]["asset"] == "product"
    chosen = resolve_stac(item, ["B04_10m"], None)
    assert [(f.name, f.path) for f in chosen.files] == [("b04", f"/vsicurl/{base}/measurements/reflectance/r10m/b04")]
    assert chosen.bands == ["red"]


@pytest.mark.parametrize("chunks", [0, 1200])
def test_a_zipped_product_sent_as_an_upload_is_refused_saying_to_give_its_url_to_a_job(served, chunks):
    """A whole product's store is thousands of chunk files, past what an archive may hold (``MAX_ENTRIES``)."""
    _, products = served
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as z:
        for path in sorted(products[L2A].path.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(products[L2A].path.parent).as_posix())
        for i in range(chunks):
            z.writestr(f"{L2A}/measurements/reflectance/r10m/b02/{i + 1}.0", b"")
    with pytest.raises(UnreadableArchiveError, match=rf"^{L2A} is a Zarr store \(an EOPF product.*give its URL to a "
                                                     r"job \(POST /jobs/\{task\}"):
        unpack("product.zip", data.getvalue(), 2**30)


def write_zarr_v3(store: Path) -> None:
    """A Zarr v3 store as zarr-python 3 writes one (the final specification's ``bytes`` codec): one uint16 array."""
    array = {"zarr_format": 3, "node_type": "array", "shape": [8, 8], "data_type": "uint16",
             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8, 8]}},
             "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0,
             "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "dimension_names": ["y", "x"],
             "attributes": {"scale_factor": 0.0001, "add_offset": -0.1, "proj:epsg": 32633}}
    for rel, document in (("", {"zarr_format": 3, "node_type": "group", "attributes": {}}),
                          ("measurements", {"zarr_format": 3, "node_type": "group", "attributes": {}}),
                          ("measurements/b04", array)):
        (store / rel).mkdir(parents=True, exist_ok=True)
        (store / rel / "zarr.json").write_text(json.dumps(document))
    (store / "measurements/b04/c/0").mkdir(parents=True)
    (store / "measurements/b04/c/0/0").write_bytes(np.full((8, 8), 1500, "<u2").tobytes())


def test_a_zarr_v3_store_gdal_cannot_read_is_refused_saying_which_zarr_it_reads(served):
    server, _ = served
    write_zarr_v3(server.root / "S2C_MSIL2A_V3.zarr")
    for path in (f"/vsicurl/{server.url}/S2C_MSIL2A_V3.zarr", str(server.root / "S2C_MSIL2A_V3.zarr")):
        with pytest.raises(UnreadableInputError, match=r"^S2C_MSIL2A_V3\.zarr: GDAL 3[.\d]+ cannot read this Zarr "
                                                       r"store \(.*\); the service reads Zarr v2 stores"):
            RequestScene([SourceFile("S2C_MSIL2A_V3.zarr", path)])


def test_a_sentinel1_grd_product_is_refused_as_radar_geometry_saying_how_to_calibrate_it(tmp_path):
    """EOPF's Sentinel-1 GRD: a group a polarisation (``S01SIWGRD_<...>_VV``) whose ``measurements/grd`` is
    uncalibrated digital numbers on the radar's own pixel grid."""
    store = tmp_path / "S1A_IW_GRDH_1SDV_20250604T052201_20250604T052226_059501_0762FA_C971.zarr"
    consolidated = {}

    def put(rel: str, document: dict) -> None:
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_text(json.dumps(document))
        consolidated[rel] = document

    put(".zgroup", {"zarr_format": 2})
    for pol in ("VV", "VH"):
        group = f"S01SIWGRD_20250604T052201_0025_A340_C971_0762FA_{pol}"
        put(f"{group}/.zgroup", {"zarr_format": 2})
        put(f"{group}/measurements/.zgroup", {"zarr_format": 2})
        put(f"{group}/measurements/grd/.zarray", {"zarr_format": 2, "shape": [16, 16], "chunks": [16, 16],
                                                  "dtype": "<u2", "compressor": None, "fill_value": 0, "order": "C",
                                                  "filters": None})
        put(f"{group}/measurements/grd/.zattrs", {"_ARRAY_DIMENSIONS": ["azimuth_time", "ground_range"]})
        (store / group / "measurements/grd/0.0").write_bytes(np.full((16, 16), 120, "<u2").tobytes())
    (store / ".zmetadata").write_text(json.dumps({"zarr_consolidated_format": 1, "metadata": consolidated}))
    with pytest.raises(NotOnAGridError, match=rf"^{store.name} is a Sentinel-1 product as ESA ships it: its "
                                              r"measurements are uncalibrated digital numbers in radar geometry; "
                                              r"calibrate and terrain-correct it"):
        RequestScene([SourceFile(store.name, str(store))])
