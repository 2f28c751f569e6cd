"""Mask classes as GeoJSON: polygons rasterise back to the mask, are valid RFC 7946 and come from files too."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from rasterio.windows import Window

from mapex_serve.areas import class_areas, row_pixel_areas_m2
from mapex_serve.errors import MapexError
from mapex_serve.vectorize import NotGeoreferencedError, mask_polygons

CLASSES = ["background", "flooded", "urban", "forest"]
UTM = CRS.from_epsg(32633)
UTM_TRANSFORM = from_origin(500_000, 5_000_000, 10, 10)
WGS84 = CRS.from_epsg(4326)
GEO_TRANSFORM = from_origin(15.0, 45.2, 0.0001, 0.0001)


def _labels(seed: int = 11) -> np.ndarray:
    """Blobs of three classes on background, a ring with a hole (and an island in it), a checkerboard of
    diagonal touches, single pixels, and nodata: a block, a hole inside a blob and scattered pixels."""
    rng = np.random.default_rng(seed)
    h, w = 160, 200
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.uint8)
    for _ in range(14):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 25)
        labels[(yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.6, 1.4)) ** 2 < r * r] = rng.integers(1, 4)
    ring = (yy - 80) ** 2 + (xx - 100) ** 2
    labels[(ring < 30**2) & (ring >= 18**2)] = 1
    labels[(ring < 18**2)] = 0
    labels[ring < 5**2] = 1  # an island of class 1 in the hole of the ring of class 1
    labels[10:22, 150:162] = np.where((yy[10:22, 150:162] + xx[10:22, 150:162]) % 2, 2, 3)  # corners only
    labels[rng.random((h, w)) < 0.003] = 2  # single pixels
    labels[120:150, 5:40] = 255
    labels[(yy - 30) ** 2 + (xx - 40) ** 2 < 16] = 255
    labels[rng.random((h, w)) < 0.002] = 255
    return labels


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return _labels()


def _rasterised(fc: dict, crs: CRS, transform, shape: tuple[int, int], class_index: int) -> np.ndarray:
    """The features of one class transformed back to the raster's CRS and burnt at pixel centres."""
    geoms = [transform_geom(WGS84, crs, f["geometry"]) for f in fc["features"]
             if f["properties"]["class_index"] == class_index]
    if not geoms:
        return np.zeros(shape, bool)
    return rasterize(geoms, out_shape=shape, transform=transform, fill=0, default_value=1, dtype="uint8").astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _ious(fc: dict, labels: np.ndarray, crs: CRS, transform) -> dict[int, float]:
    return {c: _iou(_rasterised(fc, crs, transform, labels.shape, c), labels == c) for c in range(len(CLASSES))}


def _vertices(fc: dict) -> int:
    return sum(len(shapely.get_coordinates(shapely.geometry.shape(f["geometry"]))) for f in fc["features"])


def _check_rfc7946(fc: dict, precision: int = 7) -> None:
    """Valid geometries, exteriors counter-clockwise and holes clockwise, coordinates rounded."""
    assert fc["type"] == "FeatureCollection"
    for f in fc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        for poly in getattr(geom, "geoms", [geom]):
            assert poly.exterior.is_ccw
            assert not any(ring.is_ccw for ring in poly.interiors)
        xy = shapely.get_coordinates(geom)
        np.testing.assert_allclose(xy * 10**precision, np.round(xy * 10**precision), atol=1e-6)


def test_utm_polygons_rasterise_back_to_the_mask(labels):
    fc = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM)
    _check_rfc7946(fc)
    ious = _ious(fc, labels, UTM, UTM_TRANSFORM)
    assert all(iou >= 0.99 for iou in ious.values()), ious
    assert any(shapely.geometry.shape(f["geometry"]).interiors for f in fc["features"]
               if f["geometry"]["type"] == "Polygon"), "the ring's hole must be a hole"
    lon, lat = shapely.get_coordinates(shapely.geometry.shape(fc["features"][0]["geometry"]))[0]
    assert 14.9 < lon < 15.1 and 45.0 < lat < 45.2  # longitude first: UTM 33N's central meridian is 15°E


def test_diagonal_touches_are_separate_polygons(labels):
    checker = np.zeros_like(labels)
    checker[2:6, 2:6] = np.where(np.add.outer(np.arange(4), np.arange(4)) % 2, 1, 2)
    fc = mask_polygons(checker, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, include=[1, 2])
    _check_rfc7946(fc)
    assert len(fc["features"]) == 16 and {f["properties"]["area_m2"] for f in fc["features"]} == {100.0}


def test_feature_areas_sum_to_the_class_areas(labels):
    fc = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM)
    _, expected = class_areas(labels, row_pixel_areas_m2(UTM, UTM_TRANSFORM, *labels.shape), len(CLASSES))
    sums = np.zeros(len(CLASSES))
    for f in fc["features"]:
        sums[f["properties"]["class_index"]] += f["properties"]["area_m2"]
        assert f["properties"]["class"] == CLASSES[f["properties"]["class_index"]]
    np.testing.assert_allclose(sums, expected, rtol=1e-9)


def test_simplified_polygons_stay_close_and_valid(labels):
    exact = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM)
    fc = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, simplify=10.0)  # one pixel
    _check_rfc7946(fc)
    assert _vertices(fc) < 0.7 * _vertices(exact)
    ious = _ious(fc, labels, UTM, UTM_TRANSFORM)
    assert all(iou >= 0.93 for iou in ious.values()), ious  # 0.95-0.985 measured: small blobs lose most


def test_min_area_drops_small_blobs_and_keeps_big_ones(labels):
    all_ = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM)
    big = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, min_area_m2=5_000)
    areas = [f["properties"]["area_m2"] for f in all_["features"]]
    assert min(areas) == 100.0 and max(areas) > 100_000  # single pixels and large blobs
    assert [f for f in all_["features"] if f["properties"]["area_m2"] >= 5_000] == big["features"]


def test_geographic_raster(labels):
    fc = mask_polygons(labels, classes=CLASSES, crs=WGS84, transform=GEO_TRANSFORM)
    _check_rfc7946(fc)
    ious = _ious(fc, labels, WGS84, GEO_TRANSFORM)
    assert all(iou >= 0.99 for iou in ious.values()), ious
    _, expected = class_areas(labels, row_pixel_areas_m2(WGS84, GEO_TRANSFORM, *labels.shape), len(CLASSES))
    sums = np.bincount([f["properties"]["class_index"] for f in fc["features"]],
                       weights=[f["properties"]["area_m2"] for f in fc["features"]], minlength=len(CLASSES))
    np.testing.assert_allclose(sums, expected, rtol=1e-6)  # on the ellipsoid: ~87 m² per pixel at 45°N
    assert 80 < expected[1] / np.count_nonzero(labels == 1) < 90


def test_band_from_a_file_gives_the_same_features(labels, tmp_path):
    path = tmp_path / "labels.tif"
    with rasterio.open(path, "w", driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1,
                       dtype="uint8", crs=UTM, transform=UTM_TRANSFORM, nodata=255, tiled=True, blockxsize=64,
                       blockysize=64, compress="deflate") as ds:
        ds.write(labels, 1)
    kw = dict(classes=CLASSES, include=[1, 3], simplify=5.0, min_area_m2=300)
    from_array = mask_polygons(labels, crs=UTM, transform=UTM_TRANSFORM, **kw)
    with rasterio.open(path) as ds:
        from_band = mask_polygons(rasterio.band(ds, 1), crs=ds.crs, transform=ds.transform, **kw)
    assert from_array["features"] and json.dumps(from_band) == json.dumps(from_array)


def test_nodata_is_never_a_polygon(labels):
    fc = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM)
    covered = np.zeros(labels.shape, bool)
    for c in range(len(CLASSES)):
        covered |= _rasterised(fc, UTM, UTM_TRANSFORM, labels.shape, c)
    assert not covered[labels == 255].any() and covered[labels != 255].all()
    zero_is_nodata = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, nodata=0)
    assert {f["properties"]["class_index"] for f in zero_is_nodata["features"]} == {1, 2, 3}


def test_include_selects_classes(labels):
    everything = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM)
    flooded = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, include=[1])
    assert flooded["features"] == [f for f in everything["features"] if f["properties"]["class_index"] == 1]
    assert {f["properties"]["class"] for f in flooded["features"]} == {"flooded"}
    with pytest.raises(ValueError, match=r"indexes \[4\] outside the 4 classes"):
        mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, include=[1, 4])


def test_coarse_rounding_still_gives_valid_polygons(labels):
    fc = mask_polygons(labels, classes=CLASSES, crs=UTM, transform=UTM_TRANSFORM, precision=4)  # ~8-11 m
    _check_rfc7946(fc, precision=4)
    assert len(fc["features"]) > 10


def test_no_crs_is_refused_with_a_fix(labels):
    with pytest.raises(NotGeoreferencedError, match="georeference the input file") as e:
        mask_polygons(labels, classes=CLASSES, crs=None, transform=UTM_TRANSFORM)
    assert isinstance(e.value, MapexError) and isinstance(e.value, ValueError)


_MEASURE = textwrap.dedent("""
    import resource, sys
    import rasterio
    from mapex_serve.vectorize import mask_polygons

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with rasterio.Env(GDAL_CACHEMAX=8 * 2**20), rasterio.open(sys.argv[1]) as ds:
        before = peak_mib()
        fc = mask_polygons(rasterio.band(ds, 1), classes=["land", "flooded", "urban"], crs=ds.crs,
                           transform=ds.transform, include=[1])
        print(len(fc["features"]), peak_mib() - before)
""")


@pytest.mark.slow
def test_a_big_band_is_not_read_whole(tmp_path):
    """An 8,000 x 8,000 file (64 MB of labels): the peak RSS grows by far less than the file's pixels."""
    n, path = 8000, tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint8", crs=UTM,
                       transform=UTM_TRANSFORM, nodata=255, tiled=True, compress="deflate") as ds:
        for r0 in range(0, n, 1000):
            strip = np.zeros((1000, n), np.uint8)
            yy, xx = np.mgrid[r0:r0 + 1000, 0:n]
            for cy, cx, r, c in [(2000, 2000, 900, 1), (5000, 6000, 1500, 1), (6500, 1500, 700, 2)]:
                strip[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
            strip[:, :100] = 255
            ds.write(strip, 1, window=Window(0, r0, n, 1000))
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2], timeout=300)
    features, grown_mib = out.stdout.split()
    assert int(features) == 2
    assert float(grown_mib) < 40, f"peak RSS grew by {grown_mib} MiB for a 61 MiB label file"
