"""SNAP's products as it writes them: GeoTIFFs whose bands are named, scaled and given no-data only in the DIMAP
header of tag 65000, and BEAM-DIMAP, whose ``.dim`` holds the same header beside ENVI band files."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile

from mapex_serve.dimap import SnapBand, file_sensed, header_sensed, tiff_bands
from mapex_serve.inputs import RasterTooLargeError, RequestScene, SourceFile, UploadedFile
from mapex_serve.rasters import BandNamesMissingError
from mapex_serve.units import UnitError, UnitOverrides

S2 = Path(__file__).parents[1] / "data" / "sentinel2_6band_10m_epsg32719.tif"


@pytest.fixture(scope="module")
def sigma0() -> np.ndarray:
    """Sigma0 VH and VV in linear power (VH about 6 dB below VV), 0 outside the swath as SNAP's terrain correction
    leaves it: the first 8 columns."""
    rng = np.random.default_rng(7)
    vv = (10 ** (rng.uniform(-22, -4, (48, 40)) / 10)).astype(np.float32)
    vh = (vv * 10 ** (rng.uniform(-8, -5, vv.shape) / 10)).astype(np.float32)
    bands = np.stack([vh, vv])
    bands[:, :, :8] = 0
    return bands


def export(snap_geotiff, sigma0: np.ndarray, **kw) -> bytes:
    """A terrain-corrected Sentinel-1 product exported from SNAP: Sigma0_VH then Sigma0_VV (SNAP's band order), the
    virtual dB band left out of the pixels but not of the header."""
    return snap_geotiff(sigma0, ["Sigma0_VH", "Sigma0_VV"], units=["intensity", "intensity"], nodata=[0.0, 0.0],
                        virtual={"Sigma0_VV_db": "log10(Sigma0_VV) * 10"}, **kw)


def gdal_geotiff(bands: np.ndarray, descriptions: list[str | None], nodata: float | None = None) -> bytes:
    """The same bands as GDAL-based tools write them, with band descriptions and a declared nodata."""
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=len(bands), height=bands.shape[1], width=bands.shape[2], dtype=bands.dtype,
                      crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 5000000, 10, 10),
                      nodata=nodata) as dst:
            dst.write(bands)
            for i, d in enumerate(descriptions, start=1):
                if d:
                    dst.set_band_description(i, d)
        return mem.read()


def windows(scene: RequestScene, bands: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """The whole scene's physical values (k, h, w), its valid pixels (h, w), and the bands' conversions."""
    reader = scene.reader(bands, UnitOverrides())
    values, reasons = reader.read(rasterio.windows.Window(0, 0, reader.width, reader.height))
    return values, reasons == 0, [b.conversion for b in reader.bands]


def test_the_header_names_the_written_bands_in_order_with_their_units_no_data_and_scaling(snap_geotiff, sigma0):
    assert tiff_bands(export(snap_geotiff, sigma0)) == (
        SnapBand("Sigma0_VH", "intensity", nodata=0.0), SnapBand("Sigma0_VV", "intensity", nodata=0.0))
    scaled = snap_geotiff(np.zeros((1, 4, 4), np.uint16), ["B4"], scales=[(1e-4, -0.1)])
    assert tiff_bands(scaled) == (SnapBand("B4", None, 1e-4, -0.1),)


def test_files_without_a_snap_header_have_none(snap_geotiff, sigma0):
    assert tiff_bands(gdal_geotiff(sigma0, ["Sigma0_VH", "Sigma0_VV"])) is None  # GDAL's: little-endian, no tag
    assert tiff_bands(S2.read_bytes()) is None
    broken = export(snap_geotiff, sigma0).replace(b"</Spectral_Band_Info>", b"</Spectral_Band>", 1)
    assert tiff_bands(broken) is None  # a header that does not parse is not read
    assert tiff_bands(b"MM\0*\0\0\0\x08") is None


def test_the_header_says_when_the_scene_was_sensed(snap_geotiff, sigma0, tmp_path):
    """SNAP's start and stop times (UTC, English month names, microseconds) from the header of a file on disk."""
    path = tmp_path / "subset_flood.tif"
    path.write_bytes(export(snap_geotiff, sigma0, sensed=("30-AUG-2024 17:00:00.123456", "30-AUG-2024 17:00:25.5")))
    assert file_sensed(path) == (datetime(2024, 8, 30, 17, 0, 0, 123456, tzinfo=UTC),
                                 datetime(2024, 8, 30, 17, 0, 25, 500000, tzinfo=UTC))
    path.write_bytes(export(snap_geotiff, sigma0))  # a header without them
    assert file_sensed(path) is None
    path.write_bytes(gdal_geotiff(sigma0, ["Sigma0_VH", "Sigma0_VV"]))  # GDAL's, with no header
    assert file_sensed(path) is None
    path.write_bytes(b"MM")  # a file cut after its byte order
    assert file_sensed(path) is None
    assert file_sensed(tmp_path / "gone.tif") is None
    for start, stop in [("30-AUG-2024 17:00:25", "30-AUG-2024 17:00:00"),  # stops before it starts
                        ("31-FEB-2024 17:00:00", "31-FEB-2024 17:00:25"),  # no such day
                        ("30-ABC-2024 17:00:00", "30-ABC-2024 17:00:25"),  # no such month
                        ("2024-08-30T17:00:00", "2024-08-30T17:00:25")]:  # not as SNAP writes times
        header = (f"<Production><PRODUCT_SCENE_RASTER_START_TIME>{start}</PRODUCT_SCENE_RASTER_START_TIME>"
                  f"<PRODUCT_SCENE_RASTER_STOP_TIME>{stop}</PRODUCT_SCENE_RASTER_STOP_TIME></Production>")
        assert header_sensed(header) is None, (start, stop)


def test_a_sentinel1_export_reads_as_the_same_bands_described_in_gdal_metadata(snap_geotiff, sigma0):
    """Before: no band names (BandNamesMissingError), zeros outside the swath taken as values; a guessed
    ``bands=VV,VH`` would have swapped the polarisations."""
    with RequestScene([UploadedFile("S1A_Cal_TC.tif", export(snap_geotiff, sigma0))]) as snap:
        assert [(b.identity.found, b.identity.canonical) for b in snap.bands] == [("Sigma0_VH", "VH"), ("Sigma0_VV", "VV")]
        assert all("SNAP's DIMAP header" in b.identity.rule for b in snap.bands)
        values, valid, conversions = windows(snap, ["VV", "VH"])
    described = gdal_geotiff(sigma0, ["Sigma0_VH", "Sigma0_VV"], nodata=0.0)
    with RequestScene([UploadedFile("described.tif", described)]) as gdal:
        expected, expected_valid, _ = windows(gdal, ["VV", "VH"])
    assert not valid[:, :8].any() and valid[:, 8:].all()
    assert (valid == expected_valid).all() and np.array_equal(values[:, valid], expected[:, valid])
    assert all(any("10·log10" in s for s in c.steps) for c in conversions)
    with pytest.raises(BandNamesMissingError), RequestScene([UploadedFile("s1.tif", gdal_geotiff(sigma0, [None, None]))]):
        pass  # the same pixels without the header


def test_a_sentinel2_export_takes_the_scale_and_offset_only_its_header_states(snap_geotiff):
    """SNAP's Sentinel-2 reader gives each band the scale 0.0001 and, from processing baseline 04.00, the offset
    -0.1; the export keeps the digital numbers. Before: no band names (422), and with the ``bands=`` that asked for,
    the integers taken as reflectance x 10000: 0.1 too bright, silently."""
    with rasterio.open(S2) as src:
        dn = src.read()
    names = ["B2", "B3", "B4", "B7", "B11", "B12"]  # SNAP's names of the crop's bands
    data = snap_geotiff(dn, names, scales=[(1e-4, -0.1)] * 6, nodata=[0.0] * 6, epsg=32719,
                        origin=(600000.0, 4700020.0))
    with RequestScene([UploadedFile("S2_resampled.tif", data)]) as scene:
        assert scene.canonical_bands == ["B02", "B03", "B04", "B07", "B11", "B12"]
        values, valid, conversions = windows(scene, ["B04", "B11"])
    assert valid.all()
    np.testing.assert_allclose(values[0], dn[2] * 1e-4 - 0.1, atol=1e-6)
    np.testing.assert_allclose(values[1], dn[4] * 1e-4 - 0.1, atol=1e-6)
    assert "SNAP's DIMAP header" in conversions[0].steps[0]


def test_snap_scene_classification_is_the_scl_quality_layer(snap_geotiff):
    bands = np.stack([np.full((8, 8), 1200, np.uint16), np.full((8, 8), 4, np.uint16)])
    bands[1, :2] = 9  # cloud, high probability
    data = snap_geotiff(bands, ["B4", "quality_scene_classification"], scales=[(1e-4, 0.0), (1.0, 0.0)])
    with RequestScene([UploadedFile("s2.tif", data)]) as scene:
        assert [b.identity.quality for b in scene.bands] == [None, "SCL"]


def test_a_log10_scaled_band_is_refused_saying_how_to_export_it(snap_geotiff, sigma0):
    data = export(snap_geotiff, sigma0).replace(b"<LOG10_SCALED>false", b"<LOG10_SCALED>true", 1)
    with RequestScene([UploadedFile("s1.tif", data)]) as scene, pytest.raises(UnitError, match="Band Maths"):
        scene.reader(["VV", "VH"], UnitOverrides())


def test_a_job_reads_the_header_of_a_snap_export_on_its_volume(snap_geotiff, sigma0, tmp_path):
    path = tmp_path / "S1A_Cal_TC.tif"
    path.write_bytes(export(snap_geotiff, sigma0))
    with RequestScene([SourceFile(path.name, str(path))]) as scene:
        assert scene.canonical_bands == ["VH", "VV"]
        _, valid, _ = windows(scene, ["VV", "VH"])
    assert not valid[:, :8].any()


def test_band_interleaved_blocks_count_one_band_each(snap_geotiff):
    """SNAP writes a band a strip: a 2-band 3000² export holds 36 MB blocks, not the 72 MB of a compressed
    pixel-interleaved strip (refused, since every window read would decode a whole block)."""
    bands = np.full((2, 3000, 3000), 0.05, np.float32)
    with RequestScene([UploadedFile("S1A_Cal_TC.tif", snap_geotiff(bands, ["Sigma0_VH", "Sigma0_VV"]))]) as scene:
        assert scene.canonical_bands == ["VH", "VV"]
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, height=3000, width=3000, dtype="float32", crs="EPSG:32633",
                      transform=rasterio.transform.from_origin(500000, 5000000, 10, 10), blockysize=3000,
                      compress="deflate") as dst:
            dst.write(bands)
        with pytest.raises(RasterTooLargeError, match="tiled"), RequestScene([UploadedFile("pixel.tif", mem.read())]):
            pass


def test_a_beam_dimap_product_takes_scaling_and_no_data_from_its_dim(dimap_document, tmp_path):
    """SNAP's own format zipped: ENVI band files named after their bands, whose headers hold neither scaling nor
    no-data; the ``.dim`` beside them does. Before, its digital numbers were reflectance 0.1 too bright."""
    with rasterio.open(S2) as src:
        dn, crs, transform = src.read([3, 5]), src.crs, src.transform
    dn[:, :4] = 0  # outside the orbit's swath
    names = ["B4", "B11"]
    members = {"S2_resampled.dim": dimap_document(names, dn, units=[None, None], nodata=[0.0, 0.0],
                                                  scales=[(1e-4, -0.1)] * 2, virtual={"NDVI": "(B8 - B4) / (B8 + B4)"})}
    for name, band in zip(names, dn, strict=True):
        path = tmp_path / f"{name}.img"
        with rasterio.open(path, "w", driver="ENVI", count=1, width=dn.shape[2], height=dn.shape[1], dtype="uint16",
                           crs=crs, transform=transform) as dst:
            dst.write(band, 1)
            dst.set_band_description(1, name)
        for f in (path, path.with_suffix(".hdr")):
            members[f"S2_resampled.data/{f.name}"] = f.read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    with RequestScene([UploadedFile("S2_resampled.zip", archive.getvalue())]) as scene:
        values, valid, _ = windows(scene, ["B04", "B11"])
        notes = scene.archives[0].report()["notes"]
    assert not valid[:4].any() and valid[4:].all()
    np.testing.assert_allclose(values[:, valid], dn[:, valid] * 1e-4 - 0.1, atol=1e-6)
    assert "S2_resampled.dim: B4 = DN x 0.0001 -0.1, nodata 0" in notes


def test_a_beam_dimap_band_stored_log10_scaled_gets_no_sidecar_but_a_note(dimap_document):
    from mapex_serve.products import sidecars

    dim = dimap_document(["chl", "B4"], np.zeros((2, 4, 4), np.uint16), units=[None, None], nodata=[None, 0.0],
                         scales=[(0.015, -2.0), (1e-4, -0.1)], virtual={})
    dim = dim.replace("<LOG10_SCALED>false", "<LOG10_SCALED>true", 1)  # chl, as ocean-colour products store it
    made = sidecars({"p.dim": dim}, ["chl.img", "chl.hdr", "B4.img", "B4.hdr"])
    assert [name for name, _ in made.files] == ["B4.img.aux.xml"]
    assert made.notes == ("p.dim: chl is stored log10-scaled, which is read as stored",
                          "p.dim: B4 = DN x 0.0001 -0.1, nodata 0")


@settings(max_examples=200, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.one_of(st.none(), st.integers(0, 6000)),
       flips=st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 255)), max_size=8))
def test_a_damaged_snap_geotiff_is_read_or_refused_with_a_4xx_never_anything_else(snap_geotiff, sigma0, cut, flips):
    """Its directory, the tag's count and offset, the header's XML truncated or with bytes flipped: the header is read
    or ignored, and the file read or refused as any damaged TIFF is (``MapexError``, GDAL's: a 4xx)."""
    from rasterio.errors import RasterioError

    from mapex_serve.errors import MapexError

    packed = export(snap_geotiff, sigma0[:, :16, :16].copy())
    data = bytearray(packed[:cut] if cut is not None else packed)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    bands = tiff_bands(bytes(data))
    assert bands is None or all(isinstance(b, SnapBand) for b in bands)
    try:
        RequestScene([UploadedFile("S1A_Cal_TC.tif", bytes(data))]).close()
    except (MapexError, RasterioError):
        pass


def test_a_snap_geotiff_read_by_url_is_named_and_dated_by_its_header(range_server, snap_geotiff):
    """A job by the URL of a SNAP export: GDAL does not read its header, and the service read it from files on its
    volume only, so the bands were unnamed (a guess of bands=VV,VH swaps them). The header is read by ranges through
    GDAL (its credentials apply): the bands are named in SNAP's order and the job is dated by the scene's times. A
    little-endian GeoTIFF is not searched, and still gets its 422."""
    from mapex_serve.dimap import remote_start
    from mapex_serve.jobs.models import JobRequest
    from mapex_serve.jobs.runner import resolve_sources

    (range_server.root / "subset_flood.tif").write_bytes(snap_geotiff(
        np.ones((2, 64, 64), np.float32), ["Sigma0_VH", "Sigma0_VV"],
        sensed=("30-AUG-2024 17:00:00.123456", "30-AUG-2024 17:00:25.500000")))
    url = f"{range_server.url}/subset_flood.tif"
    with RequestScene([SourceFile("subset_flood.tif", f"/vsicurl/{url}")]) as scene:
        assert [(b.identity.found, b.identity.canonical) for b in scene.bands] == [("Sigma0_VH", "VH"),
                                                                                  ("Sigma0_VV", "VV")]
    assert resolve_sources(JobRequest(url=url), [], [], 10**6).acquired == "2024-08-30T17:00:00Z/2024-08-30T17:00:26Z"
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, width=8, height=8, dtype="float32", crs="EPSG:32633",
                      transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write(np.ones((2, 8, 8), np.float32))
        (range_server.root / "plain.tif").write_bytes(mem.read())
    assert remote_start(f"/vsicurl/{range_server.url}/plain.tif") is None
    assert remote_start(f"/vsicurl/{range_server.url}/missing.tif") is None
    with pytest.raises(BandNamesMissingError):
        RequestScene([SourceFile("plain.tif", f"/vsicurl/{range_server.url}/plain.tif")])

