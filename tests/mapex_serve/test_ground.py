"""Pixel sizes on the ground, and fitting a scene to the pixel size its specialist learned."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from mapex_serve.ground import PixelSizeError, fit_to_model, ground_pixel_size
from mapex_serve.inputs import RasterTooLargeError, RequestScene, UploadedFile
from mapex_serve.scene_reader import Grid
from mapex_serve.units import UnitOverrides


def utm(pixel: float, size: int, easting: float = 500_000) -> Grid:
    return Grid(CRS.from_epsg(32633), Affine(pixel, 0, easting, 0, -pixel, 5_600_000), size, size)


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        # A UTM zone's central meridian is scaled by 0.9996: 10 grid metres are 10.004 on the ground.
        (utm(10, 100), (10.004, 10.004)),
        # Earth Engine's EPSG:4326 export at scale=10: 8.983e-5 degrees, half as wide as tall at 60 N.
        (Grid(CRS.from_epsg(4326), Affine(8.983e-5, 0, 10, 0, -8.983e-5, 60), 100, 100), (5.013, 10.008)),
        # Web Mercator (Planet's basemaps): 4.77 map metres at 50 N are about 4.77 x cos(50 N) on the ground (its
        # sphere's math on the ellipsoid's latitudes leaves them 0.3% oblong).
        (Grid(CRS.from_epsg(3857), Affine(4.77, 0, 1e6, 0, -4.77, 6_446_275), 100, 100), (3.072, 3.064)),
        # New York State Plane in US feet: 32.8 ft pixels are 10 m.
        (Grid(CRS.from_epsg(2263), Affine(32.8, 0, 980_000, 0, -32.8, 200_000), 100, 100), (10.0, 10.0)),
    ],
    ids=["utm", "degrees", "web-mercator", "us-feet"],
)
def test_pixel_sizes_are_measured_on_the_ground_whatever_the_crs_units(grid, expected):
    assert ground_pixel_size(grid) == pytest.approx(expected, rel=2e-3)


def test_a_file_without_a_crs_has_no_pixel_size_and_is_not_checked():
    bare = Grid(None, Affine.identity(), 64, 64)
    assert ground_pixel_size(bare) is None
    assert fit_to_model(bare, "flood-sar", 10.0, None)[0] == bare
    with pytest.raises(PixelSizeError, match="no CRS"):
        fit_to_model(bare, "flood-sar", 10.0, "model")


def test_a_model_that_records_no_pixel_size_reads_any_scene_as_it_is():
    scene = utm(30, 366)
    assert fit_to_model(scene, "flood-sar", None, None) == (scene, None)


@pytest.mark.parametrize("pixel", [7.0, 10.0, 14.0])
def test_pixels_within_tolerance_of_the_models_are_read_as_they_are(pixel):
    scene = utm(pixel, 100)
    grid, ground = fit_to_model(scene, "flood-sar", 10.0, None)
    assert grid == scene and ground.read_m == ground.scene_m


def test_30_m_pixels_for_a_10_m_model_are_refused_with_both_ways_round():
    with pytest.raises(PixelSizeError) as refused:
        fit_to_model(utm(30, 366), "landcover-rgb", 10.0, None)
    message = str(refused.value)
    assert "30 m on the ground" in message and "landcover-rgb was trained on 10 m pixels" in message
    assert "pixel_size=model" in message and "1098 x 1098 pixels, from 366 x 366" in message
    assert "pixel_size=native" in message


def test_pixel_size_model_resamples_to_the_models_pixels_on_the_files_own_pixel_lines():
    """30 m UTM pixels become three 10 m ones each exactly (the 0.9996 scale factor does not make it 2.9988); 3 m
    pixels, not a whole fraction of 10 m, become as many 10 m ones as cover the same extent."""
    coarse = utm(30, 366)
    grid, ground = fit_to_model(coarse, "flood-sar", 10.0, "model")
    assert (grid.width, grid.height, grid.transform.a, grid.transform.e) == (1098, 1098, 10.0, -10.0)
    assert grid.extent() == coarse.extent()
    assert ground.scene_m == pytest.approx((30.012, 30.012), rel=1e-3)
    assert ground.read_m == pytest.approx((10.004, 10.004), rel=1e-3)
    fine = utm(3, 1000)
    grid, _ = fit_to_model(fine, "flood-sar", 10.0, "model")
    assert (grid.width, grid.height) == (300, 300) and grid.extent() == pytest.approx(fine.extent())


def test_pixel_size_native_reads_a_far_scene_as_it_is_and_says_so():
    scene = utm(30, 366)
    grid, ground = fit_to_model(scene, "flood-sar", 10.0, "native")
    assert grid == scene
    assert ground.report() == {"scene_m": [30.012, 30.012], "read_m": [30.012, 30.012], "model_m": 10.0}


def test_degrees_are_resampled_to_square_pixels_on_the_ground():
    """At 60 N a degree of longitude is half one of latitude: the model's grid halves the columns only."""
    scene = Grid(CRS.from_epsg(4326), Affine(8.983e-5, 0, 10, 0, -8.983e-5, 60), 100, 100)
    grid, ground = fit_to_model(scene, "flood-sar", 10.0, "model")
    assert (grid.width, grid.height) == (50, 100)
    assert ground.read_m == pytest.approx((10.0, 10.0), rel=3e-3)


def test_the_pixel_limit_counts_the_resampled_grid_and_says_so(swir_manifest):
    """pixel_size=model on a 30 m scene for a 10 m model reads nine times its pixels: MAPEX_MAX_PIXELS applies to
    those, and its 413 says the resampling made them."""
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, height=40, width=40, dtype="uint16", crs="EPSG:32633",
                      transform=rasterio.transform.from_origin(500000, 5000000, 30, 30)) as dst:
            dst.write(np.full((2, 40, 40), 2000, np.uint16))
            dst.descriptions = ("B11", "B12")
        data = mem.read()
    model = swir_manifest.model_copy(update={"pixel_size_m": 10.0})
    with RequestScene([UploadedFile("swir_30m.tif", data)]) as scene:
        assert scene.reader(["B11", "B12"], UnitOverrides.parse(pixel_size="native"), max_pixels=10_000,
                            model=model).grid.width == 40
        with pytest.raises(RasterTooLargeError, match=r"120 x 120 = 14,400 pixels once resampled to the model's "
                                                      r"pixel size \(pixel_size=model\); at most 10,000"):
            scene.reader(["B11", "B12"], UnitOverrides.parse(pixel_size="model"), max_pixels=10_000, model=model)
