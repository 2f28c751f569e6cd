"""An area of interest (``bbox=``, ``aoi=``): a real Sentinel-2 crop in UTM 19S read only inside a box of longitudes
and latitudes, on its own pixel lines, or inside a GeoJSON polygon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mapex_serve.aoi import AoiError, BboxError, crop, parse_aoi, parse_bbox
from mapex_serve.inputs import RequestScene, UploadedFile
from mapex_serve.jobs.stac_result import result_item
from mapex_serve.jobs.store import JobRecord
from mapex_serve.scene_reader import Grid
from mapex_serve.units import UnitOverrides

S2 = Path(__file__).parents[1] / "data" / "sentinel2_6band_10m_epsg32719.tif"  # 300 x 200 px, 600000,4698020..


@pytest.mark.parametrize(("text", "message"), [
    ("1,2,3", "is not four numbers"), ("a,b,c,d", "is not four numbers"), ("10,45,nan,46", "not finite"),
    ("10,45,10,46", "west east of east only"), ("10,46,11,45", "south"), ("179,10,181,11", "-180..180"),
])
def test_a_bbox_that_is_not_a_box_of_degrees_is_refused_saying_what_is(text, message):
    with pytest.raises(BboxError, match=message):
        parse_bbox(text)


def test_a_bbox_cuts_the_scene_on_its_own_pixel_lines_and_reads_the_same_values_there():
    data = S2.read_bytes()
    with rasterio.open(S2) as src:
        crs = src.crs
    # A box of about 1 x 0.8 km inside the 3 x 2 km crop, in degrees.
    box = transform_bounds(crs, "EPSG:4326", 600_733, 4_698_517, 601_761, 4_699_309)
    bands = ["B04", "B03", "B02"]
    with RequestScene([UploadedFile("s2.tif", data)]) as scene:
        whole = scene.reader(bands, UnitOverrides())
        everything, _ = whole.read(Window(0, 0, whole.width, whole.height))
        cut = scene.reader(bands, UnitOverrides.parse(bbox=",".join(map(str, box))))
        inside, _ = cut.read(Window(0, 0, cut.width, cut.height))
    g = cut.grid
    assert (g.transform.a, g.transform.e) == (10, -10)  # the scene's pixels
    col, row = (~whole.grid.transform) @ (g.transform.c, g.transform.f)
    assert col == int(col) and row == int(row)  # on its pixel lines
    west, south, east, north = g.extent()
    box_utm = transform_bounds("EPSG:4326", crs, *box, densify_pts=21)
    assert west <= box_utm[0] < west + 10 and east - 10 < box_utm[2] <= east  # the box, widened to whole pixels
    assert south <= box_utm[1] < south + 10 and north - 10 < box_utm[3] <= north
    assert 90 <= g.width <= 110 and 70 <= g.height <= 90
    np.testing.assert_array_equal(inside, everything[:, int(row):int(row) + g.height, int(col):int(col) + g.width])


def test_a_south_up_scene_is_cut_by_a_bbox_to_the_same_pixels_read_north_up():
    """rioxarray writes an array whose y coordinate ascends as a south-up GeoTIFF (positive pixel height); rasterio's
    from_bounds refuses such a grid, and a bbox on it was a 400 saying the upload was not a readable raster. It is
    read north-up, as the model learned scenes: the same pixels and values as its north-up copy."""
    with rasterio.open(S2) as src:
        data, profile, descriptions = src.read(), src.profile, src.descriptions
    t = profile["transform"]
    profile["transform"] = rasterio.Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * profile["height"])
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data[:, ::-1])
            dst.descriptions = descriptions
        south_up = mem.read()
    box = ",".join(map(str, transform_bounds(profile["crs"], "EPSG:4326", 600_733, 4_698_517, 601_761, 4_699_309)))
    bands = ["B04", "B03", "B02"]
    with RequestScene([UploadedFile("s2.tif", S2.read_bytes())]) as scene:
        north = scene.reader(bands, UnitOverrides.parse(bbox=box))
        expected, _ = north.read(Window(0, 0, north.width, north.height))
    with RequestScene([UploadedFile("s2_south_up.tif", south_up)]) as scene:
        south = scene.reader(bands, UnitOverrides.parse(bbox=box))
        values, _ = south.read(Window(0, 0, south.width, south.height))
    assert south.grid == north.grid
    np.testing.assert_array_equal(values, expected)


@pytest.mark.parametrize(("crs", "lon"), [("EPSG:32760", 179.8), ("EPSG:32701", -179.8), ("EPSG:3832", 180.0)])
def test_a_bbox_across_the_antimeridian_cuts_the_scene_on_both_sides(crs, lon):
    """West east of east is a box across the antimeridian (STAC, GeoJSON): round Fiji, 179.5..-179.5. Before, it was
    refused as not a box. A 120 km scene across 180 in UTM 60S (centred west of it), UTM 1S (east of it) or the
    Pacific-centred Mercator is cut to what the box covers of it: the pixels under its two sides of 180 degrees."""
    (x,), (y,) = warp_transform("EPSG:4326", crs, [lon], [-18.5])
    grid = Grid(crs, rasterio.Affine(30, 0, x - 60_000, 0, -30, y + 60_000), 4000, 4000)
    across = crop(grid, parse_bbox("179.5,-19,-179.5,-18"))
    sides = [crop(grid, side) for side in ((179.5, -19, 180, -18), (-180, -19, -179.5, -18)) if _overlaps(grid, side)]
    assert len(sides) == 2  # each scene lies under both sides of the box
    boxes = [g.extent() for g in sides]
    assert across.extent() == (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                               max(b[3] for b in boxes))
    assert across.transform.a == 30 and across.width < grid.width and across.height < grid.height
    with pytest.raises(BboxError, match="does not overlap"):
        crop(grid, parse_bbox("170,-19,-171,-18.9") and (100.0, 10.0, 101.0, 11.0))


def _overlaps(grid: Grid, box) -> bool:
    try:
        crop(grid, box)
    except BboxError:
        return False
    return True


def test_a_bbox_off_the_scene_or_on_a_scene_without_a_crs_is_refused():
    with rasterio.open(S2) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
    with pytest.raises(BboxError, match=r"does not overlap the scene, which covers -67\.663\d\d,-47\.863\d\d,"
                                        r"-67\.622\d\d,-47\.844\d\d"):
        crop(grid, (10.0, 45.0, 10.1, 45.1))
    with pytest.raises(BboxError, match="the scene has no CRS"):
        crop(Grid(None, rasterio.Affine.identity(), 300, 200), (10.0, 45.0, 10.1, 45.1))
    half = crop(grid, (-67.7, -47.9, -67.643, -47.8))  # over the scene's west edge: what of it lies inside
    assert half.transform.c == grid.transform.c and half.height == grid.height and 0 < half.width < grid.width


def _polygon_of(crs, left: float, bottom: float, right: float, top: float) -> dict:
    """A rectangle of the scene's CRS as a GeoJSON polygon of longitudes and latitudes."""
    xs, ys = warp_transform(crs, "EPSG:4326", [left, right, right, left, left], [bottom, bottom, top, top, bottom])
    return {"type": "Polygon", "coordinates": [[[x, y] for x, y in zip(xs, ys, strict=True)]]}


def test_a_polygon_reads_the_box_around_it_and_masks_the_pixels_outside_it():
    """``aoi=``: a GeoJSON polygon (here an L of two rectangles on the crop's pixel edges, 40 x 50 and 20 x 10 pixels)
    reads the box around it, on the scene's pixel lines, and masks each pixel whose centre lies outside it; the values
    inside are the scene's."""
    with rasterio.open(S2) as src:
        crs = src.crs
    tall = _polygon_of(crs, 600_200, 4_699_220, 600_600, 4_699_720)  # columns 20-59, rows 30-79
    foot = _polygon_of(crs, 600_600, 4_699_220, 600_800, 4_699_320)  # columns 60-79, rows 70-79
    aoi = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": n}, "geometry": g}
                                                     for n, g in (("tall", tall), ("foot", foot))]}
    bands = ["B04", "B03", "B02"]
    with RequestScene([UploadedFile("s2.tif", S2.read_bytes())]) as scene:
        whole = scene.reader(bands, UnitOverrides())
        expected, _ = whole.read(Window(0, 0, whole.width, whole.height))
        reader = scene.reader(bands, UnitOverrides.parse(aoi=json.dumps(aoi)))
        values, reasons = reader.read(Window(0, 0, reader.width, reader.height))
    col, row = ~whole.grid.transform @ (reader.grid.transform.c, reader.grid.transform.f)
    col, row = round(col), round(row)
    assert (col, row) <= (20, 30) and col + reader.width >= 80 and row + reader.height >= 80
    inside = reasons == 0
    assert inside.sum() == 40 * 50 + 20 * 10
    assert set(np.unique(reasons)) == {0, 6} and reader.reasons_text[6] == "outside the area of interest (aoi=)"
    assert inside[30 - row: 80 - row, 20 - col: 60 - col].all() and not inside[: 30 - row].any()
    np.testing.assert_array_equal(values[:, inside],
                                  expected[:, row: row + reader.height, col: col + reader.width][:, inside])


@pytest.mark.parametrize(("aoi", "message"), [
    ("[1, 2", "is not JSON"), ('{"type": "Point", "coordinates": [10, 45]}', "holds a Point, not a polygon"),
    ('{"type": "Polygon", "coordinates": [[[10, 45], [11, 45], [10, 45]]]}', "rings are not lists of 4 positions"),
    ('{"type": "Polygon", "coordinates": [[[600200, 4699220], [600600, 4699220], [600600, 4699720], [600200, '
     '4699220]]]}', "outside longitudes -180..180 .*reproject it: ogr2ogr"),  # UTM metres, as a shapefile holds
    ('{"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32719"}}, '
     '"features": []}', "states its CRS as urn:ogc:def:crs:EPSG::32719"),  # QGIS's export of a UTM layer
    ('{"type": "FeatureCollection", "features": []}', "holds no polygon"),
    ('{"type": "Feature", "properties": {}, "geometry": null}', "holds no geometry, not a polygon"),
    ('[[10, 45], [11, 45], [11, 46], [10, 45]]', "holds a list, not a polygon"),
    ('{"type": "Polygon", "coordinates": [[[10, 45], [11, 45], [12, 45], [10, 45]]]}', "encloses no area"),
])
def test_an_aoi_that_is_not_a_polygon_of_degrees_is_refused_saying_what_is(aoi, message):
    with pytest.raises(AoiError, match=message):
        parse_aoi(aoi)


def test_an_aoi_split_at_the_antimeridian_reads_the_box_across_it_and_not_with_a_bbox():
    """RFC 7946 splits a polygon across the antimeridian in two: the box around it runs from 179 east to 179 west,
    not round the globe. A request gives bbox= or aoi=, not both."""
    halves = {"type": "MultiPolygon", "coordinates": [[[[179, -20], [180, -20], [180, -15], [179, -15], [179, -20]]],
                                                      [[[-180, -20], [-179, -20], [-179, -15], [-180, -15],
                                                        [-180, -20]]]]}
    assert parse_aoi(halves).bbox == (179.0, -20.0, -179.0, -15.0)
    wide = {"type": "Polygon", "coordinates": [[[-100, 0], [100, 0], [100, 1], [-100, 1], [-100, 0]]]}
    assert parse_aoi(wide).bbox == (-100.0, 0.0, 100.0, 1.0)  # no part at 180: a wide box, not one across it
    assert parse_aoi({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:OGC:1.3:CRS84"}}, "features": [{"type": "Feature", "geometry": halves}]}).bbox[0] == 179
    with pytest.raises(AoiError, match="give bbox= or aoi=, not both"):
        UnitOverrides.parse(bbox="179,-20,-179,-15", aoi=json.dumps(halves))


def test_a_jobs_stac_item_covers_the_part_of_its_aoi_the_result_covers(tmp_path):
    """A job's results as a STAC Item: its footprint is the polygon asked for, cut to the raster (its pixels outside
    the polygon are no data), so that a catalogue finds it only there; without an aoi, the raster's outline."""
    with rasterio.open(S2) as src:
        profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": 255}
        crs, bounds = src.crs, src.bounds
    with rasterio.open(tmp_path / "result.tif", "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    half = {"type": "Polygon", "coordinates": [[[west - 1, south - 1], [(west + east) / 2, south - 1],
                                                [(west + east) / 2, north + 1], [west - 1, north + 1],
                                                [west - 1, south - 1]]]}  # the scene's western half, and beyond it

    def item(options: dict) -> dict:
        record = JobRecord("abc", "landcover", "done", {"options": options}, created=0.0, finished=1.0)
        return result_item(record, tmp_path, lambda f: f"http://x/jobs/abc/result?format={f}")

    whole, cut = item({}), item({"aoi": half})
    whole_area, cut_area = shapely.geometry.shape(whole["geometry"]).area, shapely.geometry.shape(cut["geometry"]).area
    assert cut_area == pytest.approx(whole_area / 2, rel=0.01)
    assert cut["bbox"][0] == pytest.approx(whole["bbox"][0], abs=1e-6) and cut["bbox"][2] == pytest.approx(
        (west + east) / 2, abs=1e-6)
