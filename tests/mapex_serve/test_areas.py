"""Pixel and class areas: planar for projected grids, exact on the ellipsoid for geographic ones."""

import math

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

from mapex_serve.areas import AreaError, class_areas, equal_area_xy, row_pixel_areas_m2
from mapex_serve.errors import MapexError

WGS84 = CRS.from_epsg(4326)
#: Area of the 1° x 1° cell between 0° and 1°N on WGS84, from GeographicLib (Karney 2013, through
#: ``pyproj.Geod(ellps="WGS84").polygon_area_perimeter`` with the parallels densified to 2,000 points):
#: 12,308.4639 km². The authalic sphere with geodetic latitudes would say 12,363.7 km² (0.45 % more).
CELL_0_1N_M2 = 12_308.4639e6
#: Surface of the WGS84 ellipsoid, 2πa²(1 + (1 − e²)/e · artanh e) = 510,065,621.724 km² (4π times the
#: authalic radius 6,371,007.181 m squared, NIMA TR8350.2 table 3.5).
WGS84_SURFACE_M2 = 5.10065621724e14


def test_projected_rows_are_the_pixel_size_in_metres():
    areas = row_pixel_areas_m2(CRS.from_epsg(32633), from_origin(500_000, 5_000_000, 10, 10), 7, 9)
    assert areas.shape == (7,) and np.all(areas == 100.0)


def test_projected_feet_are_converted_to_metres():
    areas = row_pixel_areas_m2(CRS.from_epsg(2263), from_origin(900_000, 200_000, 3, 3), 2, 2)  # US survey feet
    assert areas == pytest.approx(9 * (1200 / 3937) ** 2, rel=1e-12)


def test_no_crs_has_no_area():
    assert row_pixel_areas_m2(None, from_origin(0, 0, 1, 1), 3, 3) is None


def test_one_degree_cell_at_the_equator_matches_geographiclib():
    (area,) = row_pixel_areas_m2(WGS84, from_origin(0, 1, 1, 1), 1, 1)
    assert area == pytest.approx(CELL_0_1N_M2, rel=1e-8)
    assert area / 1e6 == pytest.approx(12_308.46, abs=0.01)


def test_cells_match_pyproj_geod_at_several_latitudes():
    pyproj = pytest.importorskip("pyproj")  # a dev-only cross-check: areas.py itself needs no pyproj
    geod = pyproj.Geod(ellps="WGS84")
    lats = np.array([-89.5, -45.25, 0.0, 12.75, 60.0, 88.0])
    areas = np.concatenate([row_pixel_areas_m2(WGS84, from_origin(20.0, lat + 0.5, 0.5, 0.5), 1, 1) for lat in lats])
    n = 2000
    for lat, area in zip(lats, areas, strict=True):
        lons = np.r_[np.linspace(20, 20.5, n), np.full(n, 20.5), np.linspace(20.5, 20, n), np.full(n, 20.0)]
        ring = np.r_[np.full(n, lat), np.linspace(lat, lat + 0.5, n), np.full(n, lat + 0.5), np.linspace(lat + 0.5, lat, n)]
        assert area == pytest.approx(abs(geod.polygon_area_perimeter(lons, ring)[0]), rel=1e-7)


def test_a_row_at_60n_is_about_half_the_equators():
    equator, north = (row_pixel_areas_m2(WGS84, from_origin(0, lat + 0.5, 1, 1), 1, 1)[0] for lat in (0, 60))
    assert north / equator == pytest.approx(0.505, abs=0.001)  # cos 60° on a sphere; the ellipsoid's is 0.505


def test_the_whole_globe_sums_to_the_ellipsoids_surface():
    areas = row_pixel_areas_m2(WGS84, from_origin(-180, 90, 1, 1), 180, 360)
    assert areas.sum() * 360 == pytest.approx(WGS84_SURFACE_M2, rel=1e-9)
    sphere = row_pixel_areas_m2(CRS.from_string("+proj=longlat +R=6371000 +no_defs"), from_origin(-180, 90, 1, 1), 180, 360)
    assert sphere.sum() * 360 == pytest.approx(4 * math.pi * 6371000.0**2, rel=1e-12)


def test_south_up_geographic_grid_gives_the_same_areas():
    north_up = row_pixel_areas_m2(WGS84, from_origin(0, 10, 0.5, 0.5), 20, 4)
    south_up = row_pixel_areas_m2(WGS84, Affine(0.5, 0, 0, 0, 0.5, 0), 20, 4)
    np.testing.assert_allclose(south_up, north_up[::-1], rtol=1e-12)


def test_rotated_geographic_grid_is_refused():
    with pytest.raises(AreaError, match="north-up") as e:
        row_pixel_areas_m2(WGS84, Affine(0.1, 0.01, 0, 0.01, -0.1, 10), 3, 3)
    assert isinstance(e.value, MapexError) and isinstance(e.value, ValueError)


def test_equal_area_xy_gives_the_cell_area():
    project = equal_area_xy(WGS84)
    xy = project(np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert abs((xy[1, 0] - xy[0, 0]) * (xy[1, 1] - xy[0, 1])) == pytest.approx(CELL_0_1N_M2, rel=1e-8)
    np.testing.assert_allclose(equal_area_xy(CRS.from_epsg(2263))(np.array([[3937.0, 0.0]])), [[1200.0, 0.0]])


@pytest.fixture
def labels():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=(97, 61), dtype=np.uint8)
    labels[rng.random(labels.shape) < 0.1] = 255
    return labels


@pytest.mark.parametrize("crs, transform", [(CRS.from_epsg(32633), from_origin(500_000, 5_000_000, 10, 10)),
                                            (WGS84, from_origin(5.0, 70.0, 0.25, 0.25))])
def test_strips_sum_to_the_whole(labels, crs, transform):
    rows = row_pixel_areas_m2(crs, transform, *labels.shape)
    counts, areas = class_areas(labels, rows, 4)
    np.testing.assert_array_equal(counts, np.bincount(labels[labels != 255], minlength=4))
    strip_counts, strip_areas = np.zeros(4, np.int64), np.zeros(4)
    for r0 in range(0, labels.shape[0], 10):
        c, a = class_areas(labels[r0:r0 + 10], rows, 4, row0=r0)
        strip_counts += c
        strip_areas += a
    np.testing.assert_array_equal(strip_counts, counts)
    np.testing.assert_allclose(strip_areas, areas, rtol=1e-12)
    expected = [(rows[:, None] * (labels == c)).sum() for c in range(4)]
    np.testing.assert_allclose(areas, expected, rtol=1e-12)


def test_without_row_areas_there_are_counts_only(labels):
    counts, areas = class_areas(labels, None, 4)
    assert areas is None and counts.sum() == np.count_nonzero(labels != 255)


def test_nodata_inside_the_class_range_is_not_counted():
    counts, _ = class_areas(np.array([[0, 1, 2, 2]], np.uint8), None, 3, nodata=2)
    np.testing.assert_array_equal(counts, [1, 1, 0])


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"outside the 2 classes.*\[7\]"):
        class_areas(np.array([[0, 1, 7, 255]], np.uint8), None, 2)


def test_a_strip_past_the_row_areas_is_refused(labels):
    rows = row_pixel_areas_m2(WGS84, from_origin(0, 10, 1, 1), 50, 61)
    with pytest.raises(ValueError, match="outside the 50 rows"):
        class_areas(labels[:10], rows, 4, row0=45)
