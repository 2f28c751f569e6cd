"""What the service reads: one case per convention, unit and mask real tools write, each built as that tool writes it.

Every case goes through the service's own read path (``RequestScene`` -> ``reader``), as an upload
would, and asserts the band it maps to, the rule, and the converted values; bad cases assert that
the error names the fix. End-to-end checks through a real server are in ``test_real_inputs_e2e.py``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
import tarfile
import zipfile
from itertools import pairwise

import numpy as np
import pytest
import rasterio
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.windows import Window

from mapex_serve.archives import ArchiveTooLargeError, UnreadableArchiveError
from mapex_serve.errors import DuplicateBandError
from mapex_serve.inputs import (
    ForbiddenReferenceError,
    GridMismatchError,
    RequestScene,
    SourceFile,
    SubdatasetsError,
    UploadedFile,
)
from mapex_serve.rasters import BandIdentityConflictError, BandNamesMissingError
from mapex_serve.thresholds import MaskThresholdError
from mapex_serve.units import ImplausibleValuesError, UnitError, UnitOverrides

UTM = "EPSG:32633"
RNG = np.random.default_rng(0)


def tif(data: np.ndarray, descriptions=None, band_tags=None, tags=None, nodata=None, pixel=10.0, origin=(500000, 5000000),
        crs=UTM, units=None, scales=None, offsets=None, mask=None, domains=None, **profile) -> bytes:
    """A GeoTIFF in memory written with rasterio the way GDAL-based tools write one (descriptions, tags, domains).

    ``domains``: metadata domain -> (a dict of tags a band, or None; the file's tags, or None)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=count, height=height, width=width, dtype=data.dtype, crs=crs,
                      transform=from_origin(*origin, pixel, pixel), nodata=nodata, **profile) as dst:
            dst.write(data)
            for i in range(count):
                if descriptions and descriptions[i] is not None:
                    dst.set_band_description(i + 1, descriptions[i])
                if band_tags and band_tags[i]:
                    dst.update_tags(i + 1, **band_tags[i])
                if units and units[i]:
                    dst.set_band_unit(i + 1, units[i])
            if tags:
                dst.update_tags(**tags)
            for ns, (per_band, whole) in (domains or {}).items():
                for i, band in enumerate(per_band or [], start=1):
                    dst.update_tags(i, ns=ns, **band)
                if whole:
                    dst.update_tags(ns=ns, **whole)
            if scales:
                dst.scales, dst.offsets = scales, offsets or [0.0] * count
            if mask is not None:
                dst.write_mask(mask)
        return mem.read()


def read(files, canonical, bands=None, **overrides):
    """Open ``files`` like an upload, read ``canonical`` bands over the whole scene: (scene, reader, values, reasons)."""
    if isinstance(files, bytes):
        files = [UploadedFile("scene.tif", files)]
    scene = RequestScene(files, bands)
    reader = scene.reader(canonical, UnitOverrides.parse(**overrides))
    values, reasons = reader.read(Window(0, 0, reader.width, reader.height))
    return scene, reader, values, reasons


def rule_of(scene, canonical):
    return scene.band(canonical).identity.rule


def reflectance(shape=(2, 32, 32)):
    return RNG.integers(200, 4000, shape).astype(np.uint16)


# --- band identity -------------------------------------------------------------------------------


def test_gdal_sentinel2_driver_descriptions():
    """GDAL's SENTINEL2 driver names bands ``B4, central wavelength 665 nm`` and sets BANDNAME/WAVELENGTH tags
    (frmts/sentinel2/sentinel2dataset.cpp, SENTINEL2SetBandMetadata; GDAL SENTINEL2 driver docs)."""
    stored = reflectance((2, 32, 32))
    tags = [{"BANDNAME": "B11", "WAVELENGTH": "1610", "WAVELENGTH_UNIT": "nm", "BANDWIDTH": "90", "BANDWIDTH_UNIT": "nm"},
            {"BANDNAME": "B12", "WAVELENGTH": "2190", "WAVELENGTH_UNIT": "nm", "BANDWIDTH": "180", "BANDWIDTH_UNIT": "nm"}]
    data = tif(stored, ["B11, central wavelength 1610 nm", "B12, central wavelength 2190 nm"], tags)
    scene, _, values, _ = read(data, ["B11", "B12"])
    assert scene.canonical_bands == ["B11", "B12"]
    assert "GDAL SENTINEL2 driver description" in rule_of(scene, "B11")
    np.testing.assert_allclose(values, stored * np.float32(1e-4), rtol=1e-6)
    assert "assumed: Sentinel-2 L2A stores reflectance x 10000" in scene.band("B11").conversion.steps[0]


def test_sentinel2_l2a_boa_add_offset_is_applied():
    """Since processing baseline 04.00 L2A reflectance is (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE
    (ESA, Sentinel-2 Products Specification Document, L2A radiometric offset)."""
    stored = reflectance((2, 16, 16)) + 1000
    data = tif(stored, ["B11", "B12"], tags={"BOA_QUANTIFICATION_VALUE": "10000", "BOA_ADD_OFFSET_B11": "-1000",
                                             "BOA_ADD_OFFSET_B12": "-1000"})
    scene, _, values, _ = read(data, ["B11", "B12"])
    np.testing.assert_allclose(values, (stored.astype(np.float32) - 1000) / 10000, atol=1e-6)
    assert "BOA_ADD_OFFSET" in scene.band("B11").conversion.steps[0]
    # offset= from the caller wins over the file
    _, _, explicit, _ = read(data, ["B11", "B12"], scale="0.0001", offset="0")
    np.testing.assert_allclose(explicit, stored * np.float32(1e-4), rtol=1e-6)


def sar_db(shape=(2, 32, 32)):
    return RNG.uniform(-25, -5, shape).astype(np.float32)


@pytest.mark.parametrize(("names", "transform"), [
    (["Sigma0_VV", "Sigma0_VH"], lambda db: 10 ** (db / 10)),
    (["Gamma0_VV", "Gamma0_VH"], lambda db: 10 ** (db / 10)),
    (["Sigma0_VV_db", "Sigma0_VH_db"], lambda db: db),
    (["Amplitude_VV", "Amplitude_VH"], lambda db: 10 ** (db / 20)),
    (["Sigma0_VV_slv1_13Jun2017", "Sigma0_VH_slv1_13Jun2017"], lambda db: 10 ** (db / 10)),
    (["Sigma0_IW2_VV", "Sigma0_IW2_VH_db"], lambda db: np.stack([10 ** (db[0] / 10), db[1]])),
])
def test_snap_band_names_state_their_units(names, transform):
    """SNAP's Calibration writes Sigma0_/Gamma0_/Beta0_<pol> in linear power, LinearToFromdB appends _db, and the
    GRD's own bands are Amplitude_/Intensity_<pol>; coregistered stacks append _mst/_slv<N>_<date>, a split TOPS
    product keeps its sub-swath, Sigma0_IW2_VV (SNAP S1TBX band naming; BEAM-DIMAP's ENVI headers carry them as band
    names, which GDAL reads as descriptions). Before, the sub-swath made the name unknown: a 422."""
    db = sar_db()
    scene, _, values, _ = read(tif(transform(db).astype(np.float32), names), ["VV", "VH"])
    assert scene.canonical_bands == ["VV", "VH"] and "SNAP band name" in rule_of(scene, "VV")
    np.testing.assert_allclose(values, db, atol=1e-4)


def test_beta0_is_not_read_as_the_models_sigma0_and_the_refusal_says_why():
    """SNAP's Calibration can write Beta0_<pol>: radar brightness in the slant range, sigma0 / sin(incidence), 1.5-3 dB
    brighter than the sigma0 the models learned. Read as VV it was silently that much too bright; now it is a band
    left unused, the 422 says why, a Sigma0 band beside it is read, and bands= still reads it on purpose."""
    linear = 10 ** (sar_db() / 10)
    beta0 = tif(linear.astype(np.float32), ["Beta0_VV", "Beta0_VH"])
    with pytest.raises(BandNamesMissingError, match=r"known but not read: Beta0_VV, Beta0_VH: SNAP band name "
                                                    r"\(calibrated beta0, linear power\); beta0 is radar brightness"):
        read(beta0, ["VV", "VH"])
    with pytest.raises(BandNamesMissingError, match="calibrate to sigma0"):
        read([UploadedFile("Beta0_VV.img", tif(linear[:1].astype(np.float32)))], ["VV"])
    both = tif(np.concatenate([linear, linear / 2]).astype(np.float32),
               ["Beta0_VV", "Beta0_VH", "Sigma0_VV", "Sigma0_VH"])
    _, _, values, _ = read(both, ["VV", "VH"])
    np.testing.assert_allclose(values, 10 * np.log10(linear / 2), atol=1e-4)
    _, _, named, _ = read(beta0, ["VV", "VH"], bands=["VV", "VH"], units="linear")
    np.testing.assert_allclose(named, 10 * np.log10(linear), atol=1e-4)


@pytest.mark.parametrize("name", ["coh_IW1_VV_01Jan2023_13Jan2023.img", "Phase_ifg_IW1_VV_01Jan2023_13Jan2023.img",
                                  "i_IW1_VV.img", "q_IW1_VV.img", "coherence_VV.tif"])
def test_snap_interferometric_and_complex_bands_named_after_a_polarisation_are_not_that_backscatter(name):
    """SNAP names every band of a radar product after its polarisation, one file a band in a BEAM-DIMAP ``.data``
    folder. Before, such a file was read as VV by the word VV in its name: coherence (0..1) drew a 422 that
    ``units=linear`` silenced, and an interferogram's phase (radians) passed for dB, silently."""
    from mapex_serve.rasters import identify_bands

    with MemoryFile(tif(RNG.uniform(-3, 3, (1, 8, 8)).astype(np.float32))) as mem, mem.open() as src:
        (identity,) = identify_bands(src, name)
    assert identity.canonical is None and not identity.used, identity


def test_a_complex_band_is_refused_as_slc_not_read_as_its_real_part():
    """A complex band (an SLC's CInt16 or CFloat32) holds phase and amplitude; the unit check took its real part and
    asked for calibrated values without saying what the file was."""
    slc = tif(np.full((2, 8, 8), 120 + 40j, np.complex64), ["VV", "VH"])
    with pytest.raises(UnitError, match=r"VV: band 1 holds complex values \(complex64\).*single look complex"):
        read(slc, ["VV", "VH"])


@pytest.mark.parametrize(("names", "transform"), [
    (["VV_dB", "VH_dB"], lambda db: db),
    (["VV_lin", "VH_linear"], lambda db: 10 ** (db / 10)),
    (["VV_gamma0_amp", "VH (amplitude)"], lambda db: 10 ** (db / 20)),
])
def test_a_polarisation_named_with_its_unit_is_read_in_that_unit(names, transform):
    """Processing chains and exports name bands ``VV_dB``, ``VV_lin``, ``VH_gamma0_dB``: the name states the unit.
    Before, VV_lin drew a 422 asking for units=linear, and a description VV_gamma0_amp was no name at all."""
    db = sar_db()
    scene, _, values, _ = read(tif(transform(db).astype(np.float32), names), ["VV", "VH"])
    assert scene.canonical_bands == ["VV", "VH"] and "polarisation named with its unit" in rule_of(scene, "VH")
    np.testing.assert_allclose(values, db, atol=1e-4)


def test_snap_hh_is_reported_not_a_model_band():
    scene = RequestScene([UploadedFile("dual.tif", tif(sar_db((2, 8, 8)), ["Sigma0_VV_db", "Sigma0_HH_db"]))])
    assert scene.canonical_bands == ["VV"]
    assert "HH polarisation is not a model band" in scene.bands[1].identity.rule


def test_stac_common_names():
    """STAC eo extension ``eo:common_name`` (red, nir08, swir16, ...; eo v2 red edges rededge071/075/078), the
    names stac-based tools (odc-stac, stackstac) write as band descriptions."""
    names = ["red", "green", "blue", "rededge071", "nir08", "swir16", "swir22"]
    scene = RequestScene([UploadedFile("stac.tif", tif(reflectance((7, 8, 8)), names))])
    assert scene.canonical_bands == ["B04", "B03", "B02", "B05", "B8A", "B11", "B12"]
    assert all(b.identity.rule.startswith("STAC eo:common_name") for b in scene.bands)


def test_earth_engine_and_sentinel_hub_names():
    """Earth Engine COPERNICUS/S2_SR_HARMONIZED bands B1..B12, B8A; COPERNICUS/S1_GRD VV, VH; USGS/SRTMGL1_003
    ``elevation``; Sentinel Hub evalscripts B01..B12, VV, VH, DEM and ``dataMask``."""
    ee = RequestScene([UploadedFile("ee.tif", tif(reflectance((3, 8, 8)), ["B4", "B3", "B2"]))])
    assert ee.canonical_bands == ["B04", "B03", "B02"] and "Earth Engine" in ee.bands[0].identity.rule
    dem = RequestScene([UploadedFile("srtm.tif", tif(np.full((1, 8, 8), 1500, np.int16), ["elevation"]))])
    assert dem.canonical_bands == ["DEM"]
    sh = RequestScene([UploadedFile("sh.tif", tif(reflectance((3, 8, 8)), ["B04", "B08", "dataMask"]))])
    assert sh.canonical_bands == ["B04", "B08"] and sh.quality_bands()[0].identity.quality == "DATAMASK"


def hls_file(product: str, band: str, data: np.ndarray, **tags) -> UploadedFile:
    """One HLS v2.0 band COG: int16, scale_factor 0.0001, _FillValue -9999, named HLS.<L30|S30>.<tile>.<time>.v2.0.<band>.tif
    (HLS Product User Guide v2.0, file naming and band tables)."""
    name = f"HLS.{product}.T33UUP.2021180T100031.v2.0.{band}.tif"
    return UploadedFile(name, tif(data.astype(np.int16), nodata=-9999,
                                  band_tags=[{"scale_factor": "0.0001", "add_offset": "0.0", "_FillValue": "-9999"}],
                                  tags=tags))


def test_hls_s30_bands_by_file_name_with_their_scale():
    stored = RNG.integers(100, 3000, (16, 16))
    scene, _, values, _ = read([hls_file("S30", "B8A", stored)], ["B8A"])
    assert "file name" in rule_of(scene, "B8A")
    np.testing.assert_allclose(values[0], stored * 1e-4, rtol=1e-5)
    assert "scale_factor/add_offset tags" in scene.band("B8A").conversion.steps[0]


def test_hls_l30_and_landsat_band_numbers_map_only_by_wavelength():
    """HLS L30 ``B05`` is OLI band 5, near infrared at 865 nm: Sentinel-2 B8A, never S2's red edge B05."""
    stored = RNG.integers(100, 3000, (16, 16))
    scene = RequestScene([hls_file("L30", "B05", stored, SENSOR="OLI_TIRS", SPACECRAFT_NAME="LANDSAT_8")])
    (b,) = scene.bands
    assert b.identity.canonical == "B8A"
    assert "Landsat OLI band 5" in b.identity.rule and "wavelength 865 nm within B8A" in b.identity.rule
    (b,) = RequestScene([hls_file("L30", "B05", stored)], ["B05"]).bands  # bands= as a STAC item's asset key says it
    assert b.identity.canonical == "B8A" and "bands= parameter (Landsat OLI band 5" in b.identity.rule


@pytest.mark.parametrize("name, descriptions, canonical", [
    ("LC09_L2SP_191026_20220610_20220612_02_T1_SR_B4.TIF", None, "B04"),  # USGS's band file
    ("LT05_L2SP_191026_19990610_20200907_02_T1_SR_B5.TIF", None, "B11"),
    ("LC09_044034_20220111.SR_B4.tif", None, "B04"),  # Earth Engine's getDownloadURL member of LANDSAT/LC09/C02/T1_L2
    ("LC09_044034_20220111.tif", ["SR_B4"], "B04"),  # its export of the image, bands described
])
def test_a_landsat_collection2_level2_band_is_read_in_its_products_scale(name, descriptions, canonical):
    """USGS Landsat Collection 2 Level-2 SR: uint16, reflectance = DN x 0.0000275 - 0.2 for every band of every
    sensor, stated only in the MTL (and Earth Engine's catalogue). A band named as only that product names them
    (``SR_B4``) got a 422 asking for that very scale; its scale is the product's: it is read in it."""
    stored = RNG.integers(8000, 20000, (16, 16)).astype(np.uint16)
    scene, _, values, _ = read([UploadedFile(name, tif(stored, descriptions))], [canonical])
    np.testing.assert_allclose(values[0], stored * 2.75e-5 - 0.2, atol=1e-6)
    assert "a Landsat Collection 2 Level-2 surface reflectance band" in scene.band(canonical).conversion.steps[0]


@pytest.mark.parametrize("name, descriptions, expected", [
    # Earth Engine's MODIS/061/MOD09GA exported with its bands described
    ("modis.tif", [f"sur_refl_b0{i}" for i in range(1, 8)], [None, "B8A", "B02", "B03", None, "B11", "B12"]),
    ("MOD09GA.061_sur_refl_b02_1_doy2023245_aid0001.tif", None, ["B8A"]),  # AppEEARS' GeoTIFF of one layer
    ("MCD43A4.A2023245.h18v04.061.2023254030117.Nadir_Reflectance_Band7.tif", None, ["B12"]),
])
def test_modis_band_numbers_are_modis_wavelengths_not_sentinel2_numbers(name, descriptions, expected):
    """MODIS numbers its bands its own way: band 1 red, 2 near infrared, 3 blue, 4 green. Read by their word ``b02``,
    ``sur_refl_b02`` (near infrared) was Sentinel-2's blue and ``b03`` (blue) its green: an RGB specialist ran on
    near infrared, blue and green, silently. Band 1 (645 nm) and 5 (1240 nm) lie in no Sentinel-2 band: unused."""
    stored = RNG.integers(100, 4000, (len(expected), 16, 16)).astype(np.int16)
    scene = RequestScene([UploadedFile(name, tif(stored, descriptions))])
    assert [b.identity.canonical for b in scene.bands] == expected
    assert all("MODIS band" in b.identity.rule for b in scene.bands)


def test_a_landsat_file_that_does_not_say_its_product_is_told_which_scale():
    """A Landsat file by its tags alone (a renamed export) could be Collection 2 Level-2 or HLS: the 422 names both."""
    stored = RNG.integers(8000, 20000, (16, 16)).astype(np.uint16)
    files = [UploadedFile("scene_B4.tif", tif(stored, tags={"SPACECRAFT_NAME": "LANDSAT_9", "SENSOR_ID": "OLI_TIRS"}))]
    with pytest.raises(ImplausibleValuesError, match=r"scale=0.0000275&offset=-0.2, HLS L30 is scale=0.0001"):
        read(files, ["B04"])
    scene, _, values, _ = read(files, ["B04"], scale="0.0000275", offset="-0.2")
    assert "Landsat OLI band 4" in rule_of(scene, "B04")
    np.testing.assert_allclose(values[0], stored * 2.75e-5 - 0.2, atol=1e-6)


def test_a_landsat_level1_band_is_told_to_send_level2_not_given_its_scale():
    """A Level-1 band holds top-of-atmosphere DN (L1TP): the Level-2 scale the 422 for Landsat integers names would
    have been applied to it, wrong, by a user who followed it."""
    stored = RNG.integers(6000, 30000, (16, 16)).astype(np.uint16)
    files = [UploadedFile("LC09_L1TP_191026_20220610_20220612_02_T1_B4.TIF", tif(stored))]
    with pytest.raises(ImplausibleValuesError, match=r"Level-1 band holds top-of-atmosphere.*L2SP") as refused:
        read(files, ["B04"])
    assert "0.0000275" not in str(refused.value)


@pytest.mark.parametrize("name, tags, canonical", [
    ("LE07_L2SP_191026_20020610_20200916_02_T1_SR_B4.TIF", {}, "B08"),
    ("LT05_L2SP_191026_19990610_20200907_02_T1_SR_B3.TIF", {}, "B04"),
    ("LT05_L2SP_191026_19990610_20200907_02_T1_SR_B5.TIF", {}, "B11"),
    ("SR_B4.TIF", {"LANDSAT_PRODUCT_ID": "LE07_L2SP_191026_20020610_20200916_02_T1"}, "B08"),
    ("scene_B7.tif", {"SPACECRAFT_NAME": "LANDSAT_5", "SENSOR_ID": "TM"}, "B12"),
])
def test_landsat_tm_and_etm_band_numbers_are_their_own_wavelengths(name, tags, canonical):
    """Landsat 4-5 TM and 7 ETM+ number their bands apart from OLI and Sentinel-2: their B4 is near infrared
    (835 nm, Sentinel-2 B08), B3 red, B5 and B7 short-wave infrared; read as Sentinel-2 numbers B4 was red."""
    stored = RNG.integers(8000, 20000, (16, 16)).astype(np.uint16)
    scene, _, values, _ = read([UploadedFile(name, tif(stored, tags=tags))], [canonical], scale="0.0000275",
                               offset="-0.2")
    (b,) = scene.bands
    assert b.identity.canonical == canonical and "Landsat TM/ETM+ band" in b.identity.rule
    np.testing.assert_allclose(values[0], stored * 2.75e-5 - 0.2, atol=1e-6)


LANDSAT8_TOA = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "QA_PIXEL", "QA_RADSAT", "SAA"]


@pytest.mark.parametrize("descriptions, canonical", [
    (LANDSAT8_TOA, ["B01", "B02", "B03", "B04", "B8A", "B11", "B12", None, "B10", None, None, None, None, None]),
    (["B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "QA_PIXEL"],  # Landsat 7 ETM+
     ["B02", "B03", "B04", "B08", "B11", None, None, "B12", None]),
    (["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_QA_AEROSOL", "ST_B10", "QA_PIXEL"],  # Landsat 8-9 Level-2
     ["B02", "B03", "B04", "B8A", None, None, None]),
    (["B1", "B2", "B3", "B4", "B5", "B6", "B7", "QA_PIXEL", "QA_RADSAT"], None),  # Landsat 5 or 8? No thermal says
    (["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11", "Fmask", "SZA"],  # HLS L30, numbered as OLI
     ["B01", "B02", "B03", "B04", "B8A", "B11", "B12", "B10", None, None, None, None]),
    (["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B09", "B10", "B11", "Fmask"],  # LP DAAC's names, stacked
     ["B01", "B02", "B03", "B04", "B8A", "B11", "B12", "B10", None, None, None]),
    (["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12", "Fmask"],  # HLS S30: as S2
     ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12", None]),
])
def test_a_landsat_export_under_any_name_numbers_its_bands_as_landsat_does(descriptions, canonical):
    """Earth Engine exports a Landsat collection's image whole with its bands named as the collection names them
    (``LANDSAT/LC08/C02/T1_TOA``: ``B1`` ... ``B11``, ``QA_PIXEL``, angles), under whatever name the user gives the
    file. Its numbers were read as Sentinel-2's: OLI's near infrared B5 as red edge B05, its short-wave infrared B6 and
    B7 as red edge B06 and B07, its thermal B11 (kelvin) as short-wave infrared B11; a red-edge specialist ran on them.
    A Collection 2 layer beside them (QA_PIXEL), in the file or in another of the request (Earth Engine's per-band
    ZIP), says they are Landsat's; thermal bands say which Landsat. HLS L30 (NASA/HLS/HLSL30) numbers its bands as
    OLI does too: its whole set (Fmask, cirrus and thermal bands, none of S30's B8, B8A, B12) says so."""
    from mapex_serve.rasters import LandsatSensorUnknownError

    stored = RNG.uniform(0.02, 0.4, (len(descriptions), 8, 8)).astype(np.float32)
    one_file = [UploadedFile("my_export.tif", tif(stored, descriptions))]
    per_band = [UploadedFile("download.zip", zipped({f"download.{n}.tif": tif(stored[i])  # getDownloadURL's default
                                                     for i, n in enumerate(descriptions)}))]
    for files in (one_file, per_band):
        if canonical is None:
            with pytest.raises(LandsatSensorUnknownError, match="B1 is a Landsat band number here \\(the request holds "
                                                                "QA_PIXEL, a Landsat Collection 2 layer\\)"):
                RequestScene(files)
            continue
        scene = RequestScene(files)
        assert [b.identity.canonical for b in scene.bands] == canonical
        assert scene.bands[1].identity.rule.startswith("Landsat ") == ("B8A" not in descriptions)


S2_IMAGE, S2_LATER = "20230815T101031_20230815T101611_T32TMS", "20230820T101029_20230820T101412_T32TMS"
S1_IMAGE = "S1A_IW_GRDH_1SDV_20230815T052201_20230815T052226_049843_05FE5E_8C2F"


@pytest.mark.parametrize("descriptions, canonical", [
    ([f"{S2_IMAGE}_{b}" for b in ("B4", "B8A", "QA60")], ["B04", "B8A", None]),  # COPERNICUS/S2_SR_HARMONIZED
    ([f"LC08_044034_20220111_SR_B{n}" for n in (4, 5)], ["B04", "B8A"]),  # LANDSAT/LC08/C02/T1_L2: OLI's numbers
    ([f"1_LE07_044034_20020111_SR_B{n}" for n in (3, 4)], ["B04", "B08"]),  # a merged collection's: ETM+'s numbers
    ([f"{S1_IMAGE}_{b}" for b in ("VV", "VH", "angle")], ["VV", "VH", None]),  # COPERNICUS/S1_GRD
    ([f"0_{b}" for b in ("B4", "B3")], ["B04", "B03"]),  # ImageCollection.fromImages([...]).toBands()
])
def test_an_earth_engine_export_of_a_collection_of_one_image_reads_its_bands_by_their_names_there(descriptions,
                                                                                                    canonical):
    """``ImageCollection.toBands()`` names each band ``<image id>_<band>``: a collection filtered to one image and
    exported was a 422 asking for band names it carries; its image's id also says which Landsat numbers its bands."""
    stored = RNG.integers(8000, 20000, (len(descriptions), 8, 8)).astype(np.uint16)
    scene = RequestScene([UploadedFile("export.tif", tif(stored, descriptions))])
    assert [b.identity.canonical for b in scene.bands] == canonical
    image = descriptions[0].rsplit("_", 2 if descriptions[0].endswith(("_SR_B4", "_SR_B3")) else 1)[0]
    assert all(b.identity.image == image for b in scene.bands)
    assert all("toBands" in b.identity.rule for b in scene.bands if b.identity.used)
    if "SR_B4" in descriptions[0]:  # Collection 2 Level-2: read in its product's scale
        _, _, values, _ = read([UploadedFile("export.tif", tif(stored, descriptions))], ["B04"])
        np.testing.assert_allclose(values[0], stored[0] * 2.75e-5 - 0.2, atol=1e-6)


def test_an_earth_engine_export_of_several_images_is_refused_with_the_bands_that_pick_one():
    """A time series flattened by ``toBands()``: which image a specialist should read is the user's to say."""
    from mapex_serve.earth_engine import ImageStackError

    names = [f"{image}_{b}" for image in (S2_IMAGE, S2_LATER) for b in ("B4", "B3", "B2")]
    data = tif(reflectance((6, 8, 8)), names)
    with pytest.raises(ImageStackError, match=rf"2 images \({S2_IMAGE}, {S2_LATER}\).*bands=B4,B3,B2,-,-,- for "):
        RequestScene([UploadedFile("series.tif", data)])
    scene = RequestScene([UploadedFile("series.tif", data)], "B4,B3,B2,-,-,-".split(","))
    assert [b.identity.canonical for b in scene.bands] == ["B04", "B03", "B02", None, None, None]


def test_gdal_imagery_domain_wavelengths():
    """GDAL >= 3.10 IMAGERY metadata domain: CENTRAL_WAVELENGTH_UM and FWHM_UM per band (RFC 100 / raster data model)."""
    data = tif(reflectance((2, 8, 8)), domains={"IMAGERY": ([{"CENTRAL_WAVELENGTH_UM": "0.6646", "FWHM_UM": "0.031"},
                                                             {"CENTRAL_WAVELENGTH_UM": "1.6137", "FWHM_UM": "0.091"}],
                                                            None)})
    scene = RequestScene([UploadedFile("hyper.tif", data)])
    assert scene.canonical_bands == ["B04", "B11"]
    assert "IMAGERY CENTRAL_WAVELENGTH_UM=0.6646" in scene.bands[0].identity.found
    assert "within B04 (665 ± 15 nm)" in scene.bands[0].identity.rule


def test_envi_style_wavelength_tags_and_an_unmatched_wavelength():
    """ENVI headers' ``wavelength``/``wavelength units`` become per-band ``wavelength``/``wavelength_units`` items in
    GDAL (ENVI driver). 0.59 um (Landsat panchromatic) lies in no Sentinel-2 band: it is reported, not forced."""
    data = tif(reflectance((2, 8, 8)), band_tags=[{"wavelength": "0.8328", "wavelength_units": "Micrometers"},
                                                  {"wavelength": "0.59", "wavelength_units": "Micrometers"}])
    scene = RequestScene([UploadedFile("envi.tif", data)])
    assert scene.bands[0].identity.canonical == "B08"
    assert scene.bands[1].identity.canonical is None and "inside no Sentinel-2 band" in scene.bands[1].identity.rule


def test_a_name_that_contradicts_the_wavelength_is_refused():
    data = tif(reflectance((1, 8, 8)), ["B05"], domains={"IMAGERY": ([{"CENTRAL_WAVELENGTH_UM": "0.865"}], None)})
    with pytest.raises(BandIdentityConflictError, match="B05.*B8A"):
        RequestScene([UploadedFile("x.tif", data)])


def test_bands_parameter_wins_over_the_file():
    stored = reflectance((3, 8, 8))
    data = tif(stored, ["B02", "B03", "B04"])
    scene, _, values, _ = read(data, ["B04", "B03", "B02"], bands=["red", "green", "blue"])
    assert scene.canonical_bands == ["B04", "B03", "B02"] and rule_of(scene, "B04").startswith("bands= parameter")
    np.testing.assert_allclose(values[0], stored[0] * np.float32(1e-4), rtol=1e-6)  # band 1, now called red
    skipped = RequestScene([UploadedFile("x.tif", data)], ["-", "green", "blue"])
    assert skipped.canonical_bands == ["B03", "B02"]


def test_unnamed_bands_say_how_to_name_them():
    with pytest.raises(BandNamesMissingError, match="bands=red,green,blue"):
        RequestScene([UploadedFile("x.tif", tif(reflectance((3, 8, 8))))])


# --- units ---------------------------------------------------------------------------------------


def test_8bit_display_rgb_is_refused_with_the_fix():
    rgb = RNG.integers(0, 256, (3, 32, 32)).astype(np.uint8)
    with pytest.raises(ImplausibleValuesError, match=r"8-bit values.*scale=") as err:
        read(tif(rgb, ["red", "green", "blue"]), ["B04", "B03", "B02"])
    assert "stored uint8" in str(err.value)


def test_float_reflectance_0_to_1_needs_units_reflectance():
    values = RNG.uniform(0.01, 0.4, (2, 16, 16)).astype(np.float32)
    data = tif(values, ["B11", "B12"])
    with pytest.raises(ImplausibleValuesError, match="units=reflectance"):
        read(data, ["B11", "B12"])
    _, _, got, _ = read(data, ["B11", "B12"], units="reflectance")
    np.testing.assert_allclose(got, values)
    # a units tag that states it is metadata enough (netCDF/CF writes units="1" for reflectance)
    _, _, tagged, _ = read(tif(values, ["B11", "B12"], band_tags=[{"units": "1"}] * 2), ["B11", "B12"])
    np.testing.assert_allclose(tagged, values)


def test_float_reflectance_in_percent_is_refused_with_its_scale_and_float_digital_numbers_are_read():
    """Reflectance in percent (floats 0..100, as atmospheric correction tools and spectral libraries write it) was
    taken as x 10000: a black scene (reflectance below 0.003) that the model answered. Digital numbers kept as floats
    are whole numbers, and a scene's brighter than 1% somewhere: those are still read as x 10000."""
    percent = RNG.uniform(2.0, 30.0, (2, 16, 16)).astype(np.float32)
    with pytest.raises(ImplausibleValuesError,
                       match=r"float values 0\.\.[0-9.]+ with fractions look like reflectance in percent.*scale=0.01"):
        read(tif(percent, ["B11", "B12"]), ["B11", "B12"])
    _, _, got, _ = read(tif(percent, ["B11", "B12"]), ["B11", "B12"], scale="0.01")
    np.testing.assert_allclose(got, percent * np.float32(0.01), rtol=1e-6)
    for stored in (np.round(percent * 100), percent * 100, np.round(percent)):  # DN as floats; resampled; dark DN
        _, _, got, _ = read(tif(stored, ["B11", "B12"]), ["B11", "B12"])
        np.testing.assert_allclose(got, stored * np.float32(1e-4), rtol=1e-6)


def test_reflectance_x10000_taken_as_physical_says_scale():
    data = tif(RNG.uniform(200, 4000, (2, 16, 16)).astype(np.float32), ["B11", "B12"], units=["reflectance"] * 2)
    with pytest.raises(ImplausibleValuesError, match=r"scale=0.0001"):
        read(data, ["B11", "B12"])


def test_linear_sar_without_unit_metadata_is_refused_and_units_linear_converts():
    """The issue's case: VV/VH named plainly but stored as linear power (0..0.5)."""
    db = sar_db()
    data = tif((10 ** (db / 10)).astype(np.float32), ["VV", "VH"])
    with pytest.raises(ImplausibleValuesError, match="units=linear") as err:
        read(data, ["VV", "VH"])
    assert "stored float32" in str(err.value)
    _, _, values, _ = read(data, ["VV", "VH"], units="linear")
    np.testing.assert_allclose(values, db, atol=1e-4)
    _, _, per_band, _ = read(data, ["VV", "VH"], units="VV:linear,VH:linear")
    np.testing.assert_allclose(per_band, db, atol=1e-4)


def test_a_units_parameter_that_fits_none_of_the_bands_read_is_refused_not_ignored():
    """A request-wide units= describes the bands it can (a scene of reflectance and elevation with units=ft); one
    that fits none of them was ignored, and the file read as if nothing had been said."""
    data = tif(sar_db().astype(np.float32), ["VV", "VH"])
    with pytest.raises(UnitError, match=r"units=reflectance fits none of the bands read \(VV in dB, VH in dB\); "
                                        r"accepted for them: amplitude, dB, linear"):
        read(data, ["VV", "VH"], units="reflectance")
    stored = np.stack([RNG.integers(500, 3000, (16, 16)), RNG.integers(100, 300, (16, 16))]).astype(np.float32)
    _, _, values, _ = read(tif(stored, ["B04", "DEM"]), ["B04", "DEM"], units="ft", scale="B04:0.0001")
    np.testing.assert_allclose(values[1], stored[1] * 0.3048, rtol=1e-4)  # feet for the DEM, B04 left be


def test_gdal_unittype_drives_the_conversion():
    db = sar_db()
    scene, _, values, _ = read(tif((10 ** (db / 10)).astype(np.float32), ["VV", "VH"], units=["linear", "linear"]),
                               ["VV", "VH"])
    np.testing.assert_allclose(values, db, atol=1e-4)
    assert any("UNITTYPE 'linear'" in s for s in scene.band("VV").conversion.steps)


def test_uncalibrated_amplitude_is_refused():
    dn = RNG.uniform(50, 2000, (2, 16, 16)).astype(np.float32)  # GRD DN amplitude: 20 log10 -> 34..66 "dB"
    with pytest.raises(ImplausibleValuesError, match="Calibrate"):
        read(tif(dn, ["Amplitude_VV", "Amplitude_VH"]), ["VV", "VH"])


def test_integers_in_finer_steps_than_the_unit_are_refused_naming_the_scale_that_undoes_them():
    """Pipelines store dB x 100 and elevations in decimetres or centimetres as integers (Earth Engine's
    ``.multiply(100).toInt16()``); the 422 said to calibrate a product that was calibrated, and the scale= it names
    then reads them right."""
    db = sar_db()
    stored = tif(np.round(db * 100).astype(np.int16), ["VV", "VH"])
    with pytest.raises(ImplausibleValuesError, match=r"look like dB stored x 100 .*: pass scale=0\.01$"):
        read(stored, ["VV", "VH"])
    _, _, values, _ = read(stored, ["VV", "VH"], scale="0.01")
    np.testing.assert_allclose(values, db, atol=0.006)
    centimetres = tif(RNG.integers(100_000, 300_000, (1, 16, 16)).astype(np.int32), ["elevation"])
    with pytest.raises(ImplausibleValuesError, match=r"\(scale=0\.01 for centimetres\)$"):
        read(centimetres, ["DEM"])
    with pytest.raises(ImplausibleValuesError, match="Calibrate"):  # amplitude DN still says to calibrate
        read(tif(RNG.integers(50, 600, (2, 16, 16)).astype(np.uint16), ["VV", "VH"]), ["VV", "VH"])


def test_dem_in_feet():
    feet = RNG.uniform(3000, 12000, (1, 16, 16)).astype(np.float32)
    scene, _, values, _ = read(tif(feet, ["DEM"], units=["ft"]), ["DEM"])
    np.testing.assert_allclose(values[0], feet[0] * 0.3048, rtol=1e-6)


@pytest.mark.parametrize(("kw", "match"), [({"units": "furlongs"}, "unknown unit"), ({"units": "B04:dB"}, "cannot apply"),
                                           ({"scale": "abc"}, "not a number"), ({"units": "QQ:dB"}, "not a band name")])
def test_bad_unit_parameters(kw, match):
    with pytest.raises(UnitError, match=match):
        read(tif(reflectance((3, 8, 8)), ["B04", "B03", "B02"]), ["B04", "B03", "B02"], **kw)


@pytest.mark.parametrize("copy", ["", " (1)"])
def test_a_sentinel_hub_raw_band_download_is_reflectance_as_float_and_refused_as_integers_it_does_not_explain(copy):
    """EO Browser and the Copernicus Browser name a raw band's download after it; as 32-bit float it holds reflectance
    0..1. Sentinel Hub's FAQ: an 8- or 16-bit output stretches 0..1 to 0..255 or 0..65535 ("1 -> 65535"), so a dark
    scene's 16-bit values read as x 10000 would be 6.5 times too bright and still plausible."""
    name = f"2023-04-23-00_00_2023-04-23-23_59_Sentinel-2_L2A_B04_(Raw){copy}.tiff"
    truth = RNG.uniform(0.02, 0.12, (32, 32))
    scene, _, values, _ = read([UploadedFile(name, tif(truth.astype(np.float32)))], ["B04"])
    np.testing.assert_allclose(values[0], truth, rtol=1e-6)
    assert scene.band("B04").conversion.steps == (
        "values in reflectance (its name: a Sentinel Hub 32-bit float download of a raw band)",)
    stretched = tif(np.round(truth * 65535).astype(np.uint16))
    with pytest.raises(UnitError, match=r"as uint16 holds reflectance in integers its layer's script chose.*6\.5 "
                                        r"times too bright\. Download it as TIFF \(32-bit float\)"):
        read([UploadedFile(name, stretched)], ["B04"])
    _, _, said, _ = read([UploadedFile(name, stretched)], ["B04"], scale="0.0000152590219")
    np.testing.assert_allclose(said[0], truth, atol=1e-5)
    with pytest.raises(ImplausibleValuesError, match="look like reflectance 0..1 already"):  # any other float file
        read([UploadedFile("B04.tif", tif(truth.astype(np.float32)))], ["B04"])


def test_a_sentinel_hub_download_of_a_rendered_layer_is_refused_even_when_its_bands_are_named():
    """EO Browser's True color layer is 2.5 x reflectance (its evalscript's gain): with bands= and units=reflectance
    it would pass every check, 2.5 times too bright."""
    rendered = np.clip(2.5 * RNG.uniform(0.02, 0.3, (3, 32, 32)), 0, 1).astype(np.float32)
    name = "2023-04-23-00_00_2023-04-23-23_59_Sentinel-2_L2A_True_color.tiff"
    with pytest.raises(UnitError, match=r"of its layer 'True_color', a rendering of the bands .* download each band's "
                                        r"raw layer \(\.\.\._Sentinel-2_L2A_B04_\(Raw\)\.tiff\) as TIFF \(32-bit float\)"):
        read([UploadedFile(name, tif(rendered))], ["B04", "B03", "B02"], ["red", "green", "blue"], units="reflectance")
    # Only Sentinel Hub's names, which begin with their time range: a user's own name is read as any file is.
    own = tif((RNG.uniform(0.02, 0.3, (32, 32)) * 10000).astype(np.uint16))
    scene, _, values, _ = read([UploadedFile("export_2023_Sentinel-2_L2A_B04.tif", own)], ["B04"])
    assert scene.band("B04").conversion.steps[0].startswith("x 0.0001 + 0 (assumed")


# --- masks ---------------------------------------------------------------------------------------


def test_masks_nodata_nan_gdal_mask_and_scl_are_counted_by_reason():
    stored = reflectance((2, 20, 20)).astype(np.float32)
    stored[0, 0, :5] = np.nan
    stored[:, 1, :3] = -1  # nodata
    scl = np.full((20, 20), 4, np.uint8)
    scl[10:12, :] = 9  # cloud
    scl[12, :4] = 3  # cloud shadow
    data = tif(np.concatenate([stored, scl[None].astype(np.float32)]), ["B11", "B12", "SCL, Scene Classification"],
               nodata=-1)
    scene, reader, _, reasons = read(data, ["B11", "B12"])
    assert reader.masked() == {"nodata, mask or alpha band": 3, "NaN or infinite value": 5,
                               "SCL cloud (high probability)": 40, "SCL cloud shadow": 4}
    assert (reasons[10:12] != 0).all() and reasons[5, 5] == 0


def test_gdal_internal_mask_band_and_alpha():
    stored = reflectance((2, 16, 16))
    mask = np.full((16, 16), 255, np.uint8)
    mask[:4] = 0
    _, reader, _, reasons = read(tif(stored, ["B11", "B12"], mask=mask), ["B11", "B12"])
    assert reader.masked() == {"nodata, mask or alpha band": 64}
    # An RGBA GeoTIFF (photometric RGB, ExtraSamples alpha), as gdal_translate -b 1 -b 2 -b 3 -b mask writes one.
    rgb = reflectance((3, 16, 16))
    rgba = np.concatenate([rgb, np.where(mask > 0, 65535, 0).astype(np.uint16)[None]])
    scene, reader, _, _ = read(tif(rgba, ["B04", "B03", "B02", None], photometric="RGB", alpha="YES"),
                               ["B04", "B03", "B02"])
    assert reader.masked() == {"nodata, mask or alpha band": 64}
    assert scene.bands[3].identity.canonical is None  # the alpha band itself is not a model band


def test_hls_fmask_bits():
    """HLS v2.0 Fmask: bit 1 cloud, bit 3 cloud shadow invalid; bit 5 water stays valid."""
    fmask = np.zeros((16, 16), np.uint8)
    fmask[0] = 1 << 1
    fmask[1] = 1 << 3
    fmask[2] = 1 << 5
    files = [hls_file("S30", "B11", RNG.integers(100, 3000, (16, 16))),
             UploadedFile("HLS.S30.T33UUP.2021180T100031.v2.0.Fmask.tif", tif(fmask))]
    _, reader, _, reasons = read(files, ["B11"])
    assert reader.masked() == {"Fmask cloud": 16, "Fmask cloud shadow": 16}
    assert (reasons[2] == 0).all()


# --- several files, one grid -----------------------------------------------------------------------


def test_vv_and_vh_as_two_files_equal_one_stacked_file():
    db = sar_db()
    _, _, stacked, _ = read(tif(db, ["VV", "VH"]), ["VV", "VH"])
    files = [UploadedFile("S1A_IW_GRDH_x_VV.tif", tif(db[0])), UploadedFile("S1A_IW_GRDH_x_VH.tif", tif(db[1]))]
    scene, _, separate, _ = read(files, ["VV", "VH"])
    np.testing.assert_array_equal(stacked, separate)
    assert "file name" in rule_of(scene, "VV")


def test_10m_and_20m_files_stack_on_the_10m_grid():
    rgb = reflectance((3, 64, 64))
    swir = reflectance((2, 32, 32))
    files = [UploadedFile("rgb_10m.tif", tif(rgb, ["B04", "B03", "B02"])),
             UploadedFile("swir_20m.tif", tif(swir, ["B11", "B12"], pixel=20.0))]
    scene, reader, values, _ = read(files, ["B04", "B03", "B02", "B11", "B12"])
    assert (reader.height, reader.width) == (64, 64) and reader.resampled == ["swir_20m.tif"]
    np.testing.assert_allclose(values[0], rgb[0] * np.float32(1e-4), rtol=1e-6)
    # bilinear: each 10 m pixel lies between the 20 m values around it, and the mean is kept
    assert abs(values[3].mean() - swir[0].mean() * 1e-4) < 2e-3
    assert values[3].min() >= swir[0].min() * 1e-4 - 1e-6 and values[3].max() <= swir[0].max() * 1e-4 + 1e-6


def test_a_south_up_file_and_a_north_up_file_stack_on_their_overlap_north_up():
    """A south-up GeoTIFF (rioxarray's, of an array whose y ascends) beside a north-up one of a shifted extent:
    cropping to their overlap used rasterio's from_bounds, which refuses a south-up grid, and the upload was a 400.
    The scene is read north-up, as the model learned scenes, the south-up file's values unchanged by the warper."""
    db = sar_db((2, 32, 32))  # north-up rows, 500000..500320 x 4999680..5000000
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=1, height=32, width=32, dtype="float32", crs=UTM,
                      transform=rasterio.Affine(10, 0, 500000, 0, 10, 4999680)) as dst:
            dst.write(db[0, ::-1][None])
            dst.set_band_description(1, "VV")
        south_up = mem.read()
    files = [UploadedFile("vv_south_up.tif", south_up),
             UploadedFile("vh.tif", tif(db[1:, 8:, 8:], ["VH"], origin=(500080, 4999920)))]  # its lower right 24 x 24
    _, reader, values, _ = read(files, ["VV", "VH"])
    assert (reader.height, reader.width) == (24, 24) and reader.grid.transform.e == -10
    np.testing.assert_array_equal(values[0], db[0, 8:, 8:])
    np.testing.assert_array_equal(values[1], db[1, 8:, 8:])


def test_files_that_do_not_overlap_or_disagree_on_crs_say_both_extents():
    a = UploadedFile("a.tif", tif(sar_db((1, 8, 8)), ["VV"]))
    far = UploadedFile("b.tif", tif(sar_db((1, 8, 8)), ["VH"], origin=(600000, 5000000)))
    with pytest.raises(GridMismatchError, match=r"do not overlap: a.tif covers \(500000.0.*b.tif covers \(600000.0"):
        read([a, far], ["VV", "VH"])
    other = UploadedFile("c.tif", tif(sar_db((1, 8, 8)), ["VH"], crs="EPSG:32632"))
    with pytest.raises(GridMismatchError, match="EPSG:32633.*EPSG:32632"):
        read([a, other], ["VV", "VH"])


def test_a_band_given_twice_is_refused():
    with pytest.raises(DuplicateBandError, match="VV is given twice"):
        RequestScene([UploadedFile("a.tif", tif(sar_db((1, 8, 8)), ["VV"])),
                      UploadedFile("b.tif", tif(sar_db((1, 8, 8)), ["vv"]))])
    # Two files of the same bands that are no tiles of one raster (two dates; tiles overlapping or with a gap)
    with pytest.raises(DuplicateBandError, match=r"a.tif and b.tif hold the same bands \(VV, VH\): two scenes.*gaps"):
        RequestScene([UploadedFile("a.tif", tif(sar_db((2, 8, 8)), ["VV", "VH"])),
                      UploadedFile("b.tif", tif(sar_db((2, 8, 8)), ["VV", "VH"], origin=(500040, 5000000)))])


# --- containers ------------------------------------------------------------------------------------


def test_netcdf_subdatasets_that_name_bands_are_read(tmp_path, to_netcdf):
    stored = reflectance((4, 16, 16))
    data = to_netcdf(tmp_path, {"B04": stored[0], "B03": stored[1], "B02": stored[2], "quicklook": stored[3]})
    scene, reader, values, _ = read([UploadedFile("product.nc", data)], ["B04", "B03", "B02"])
    assert scene.canonical_bands == ["B04", "B03", "B02"] and "tag NETCDF_VARNAME" in rule_of(scene, "B04")
    assert scene.ignored_subdatasets == ["product.nc:quicklook"]
    np.testing.assert_allclose(values, stored[:3] * np.float32(1e-4), rtol=1e-6)
    assert "scale/offset" in scene.band("B04").conversion.steps[0]


def test_a_netcdf_time_series_says_to_send_one_step(tmp_path, to_netcdf):
    """openEO's netCDF keeps a t dimension, each band variable (t, y, x): before, its steps were "B04 given twice",
    to be skipped with '-' in bands=. One step is read; several get a 422 saying how to send one."""
    stored = reflectance((3, 3, 16, 16))
    series = to_netcdf(tmp_path, {"B04": stored[0], "B03": stored[1], "B02": stored[2]}, "openeo.nc",
                    times=[19000, 19005, 19010])
    with pytest.raises(DuplicateBandError, match=r"openeo.nc:B04 holds 3 rasters of B04 along t \(19000, 19005, "
                                                 r"19010 days since 1990-01-01\).*filter_temporal"):
        RequestScene([UploadedFile("openeo.nc", series)])
    one = to_netcdf(tmp_path, {"B04": stored[0, :1], "B03": stored[1, :1], "B02": stored[2, :1]}, "one.nc",
                    times=[19000])
    scene, _, values, _ = read([UploadedFile("one.nc", one)], ["B04", "B03", "B02"])
    np.testing.assert_allclose(values, stored[:, 0] * np.float32(1e-4), rtol=1e-6)


def test_netcdf_without_band_variables_lists_them(tmp_path, to_netcdf):
    data = to_netcdf(tmp_path, {"var_a": reflectance((16, 16)), "var_b": reflectance((16, 16))})
    with pytest.raises(SubdatasetsError, match=r"\['var_a', 'var_b'\]"):
        RequestScene([UploadedFile("product.nc", data)])


def test_a_vrt_over_uploaded_parts_reads_them():
    vv, vh = sar_db((1, 8, 8)), sar_db((1, 8, 8))
    vrt = f"""<VRTDataset rasterXSize="8" rasterYSize="8">
  <SRS>{UTM}</SRS><GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Float32" band="1"><Description>VV</Description>
    <SimpleSource><SourceFilename relativeToVRT="1">vv.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
  <VRTRasterBand dataType="Float32" band="2"><Description>VH</Description>
    <SimpleSource><SourceFilename relativeToVRT="1">vh.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>""".encode()
    files = [UploadedFile("stack.vrt", vrt), UploadedFile("vv.tif", tif(vv)), UploadedFile("vh.tif", tif(vh))]
    _, _, values, _ = read(files, ["VV", "VH"])
    np.testing.assert_array_equal(values, np.concatenate([vv, vh]))


@pytest.mark.parametrize("target", ["/etc/passwd", "../../etc/passwd", "/vsicurl/http://127.0.0.1:1/x.tif",
                                    "/vsimem/other-request/x.tif"])
def test_a_vrt_pointing_outside_its_request_is_refused(target):
    vrt = f"""<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1">
  <Description>B04</Description>
  <SimpleSource><SourceFilename relativeToVRT="0">{target}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>
</VRTRasterBand></VRTDataset>""".encode()
    with pytest.raises(ForbiddenReferenceError, match="not a file of this request"):
        RequestScene([UploadedFile("evil.vrt", vrt)])


def test_a_vrt_with_pixel_functions_or_a_subclass_is_refused():
    code = b"""<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1"
  subClass="VRTDerivedRasterBand"><PixelFunctionLanguage>Python</PixelFunctionLanguage>
  <PixelFunctionCode>import os</PixelFunctionCode></VRTRasterBand></VRTDataset>"""
    with pytest.raises(ForbiddenReferenceError, match="pixel functions"):
        RequestScene([UploadedFile("code.vrt", code)])
    warped = b"""<VRTDataset rasterXSize="8" rasterYSize="8" subClass="VRTWarpedDataset"></VRTDataset>"""
    with pytest.raises(ForbiddenReferenceError, match="subClass"):
        RequestScene([UploadedFile("warped.vrt", warped)])


def test_envi_image_and_header_as_two_parts_like_snap_beam_dimap(tmp_path):
    """SNAP's BEAM-DIMAP writes each band as an ENVI pair ``<band>.img`` + ``<band>.hdr`` in ``<product>.data/``;
    the header's ``band names`` become GDAL band descriptions (GDAL ENVI driver)."""
    import rasterio

    db = sar_db((1, 16, 16))
    path = tmp_path / "Sigma0_VV_db.img"
    with rasterio.open(path, "w", driver="ENVI", count=1, width=16, height=16, dtype="float32", crs=UTM,
                       transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(db)
        dst.set_band_description(1, "Sigma0_VV_db")
    files = [UploadedFile(p.name, p.read_bytes()) for p in sorted(tmp_path.iterdir()) if p.suffix in (".img", ".hdr")]
    assert {f.name for f in files} == {"Sigma0_VV_db.img", "Sigma0_VV_db.hdr"}
    scene, _, values, _ = read(files, ["VV"])
    assert "SNAP band name" in rule_of(scene, "VV") and scene.band("VV").dataset.driver == "ENVI"
    np.testing.assert_allclose(values, db)


@pytest.mark.parametrize("factor", [1000, 10000, 1])
def test_an_envi_files_reflectance_scale_factor_is_its_scale(tmp_path, factor):
    """An ENVI header's ``reflectance scale factor`` (FLAASH writes 10000; 1000 and 1, floats, are common too) says
    what divides the values into reflectance; GDAL keeps it in the ENVI domain only. Read as Sentinel-2's x 10000,
    a factor of 1000 made every band ten times too dark, and passed every range check."""
    reflectance = RNG.uniform(0.02, 0.45, (2, 16, 16))
    stored = (reflectance * factor).astype(np.int16 if factor > 1 else np.float32)
    path = tmp_path / "flaash.img"
    with rasterio.open(path, "w", driver="ENVI", count=2, width=16, height=16, dtype=stored.dtype, crs=UTM,
                       transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(stored)
    header = path.with_suffix(".hdr")
    header.write_text(header.read_text().rstrip() + f"\nwavelength units = Nanometers\nwavelength = {{665, 842}}"
                      f"\nreflectance scale factor = {factor}\n")
    files = [UploadedFile(p.name, p.read_bytes()) for p in (path, header)]
    _, reader, values, _ = read(files, ["B04", "B08"])
    np.testing.assert_allclose(values, stored.astype(np.float64) / factor, rtol=1e-6)
    assert f"reflectance scale factor {factor:g}" in reader.bands[0].conversion.steps[0]


def test_hdf5_subdatasets_in_groups(tmp_path):
    """An HDF5 product with one dataset per band in a group (as h5py / NASA products write them); GDAL's HDF5
    driver lists them as ``HDF5:"file"://group/name`` subdatasets."""
    h5py = pytest.importorskip("h5py")
    db = sar_db((2, 16, 16))
    path = tmp_path / "product.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("measurements")
        group["Sigma0_VV_db"], group["Sigma0_VH_db"], group["incidence_angle"] = db[0], db[1], db[0] * 0 + 35
    scene, _, values, _ = read([UploadedFile("product.h5", path.read_bytes())], ["VV", "VH"])
    assert scene.ignored_subdatasets == ["product.h5:incidence_angle"]
    np.testing.assert_allclose(values, db)


def test_a_degenerate_geotransform_is_a_400_not_a_crash():
    """Found by the fuzzer: spliced bytes left a GeoTIFF with a pixel size of 0, whose transform cannot be inverted."""
    from mapex_serve.inputs import UnreadableInputError

    data = tif(sar_db((2, 8, 8)), ["VV", "VH"], pixel=0.0)
    with pytest.raises(UnreadableInputError, match="degenerate"):
        RequestScene([UploadedFile("flat.tif", data)])


# --- archives -----------------------------------------------------------------------------------

LIMIT = 2**20


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def tarred(members: dict[str, bytes], mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def rgb() -> dict[str, bytes]:
    """Three single-band GeoTIFFs as Earth Engine's getDownloadURL names them by default (``download.<band>.tif``),
    without band descriptions: the file name states the band."""
    stored = reflectance((3, 40, 48))
    return {f"download.{b}.tif": tif(stored[i]) for i, b in enumerate(["B4", "B3", "B2"])}


def test_an_earth_engine_zip_reads_as_its_band_files_sent_one_part_each(rgb):
    """getDownloadURL's default (ZIPPED_GEO_TIFF, filePerBand): the same bands, values and identities as the three
    files sent as parts, and the answer's report names the archive and what it read."""
    parts, _, expected, _ = read([UploadedFile(n, d) for n, d in rgb.items()], ["B04", "B03", "B02"])
    scene, _, got, _ = read([UploadedFile("download.zip", zipped(rgb))], ["B04", "B03", "B02"])
    np.testing.assert_array_equal(got, expected)
    assert [b.identity.rule for b in scene.bands] == [b.identity.rule for b in parts.bands]
    assert [a.report() for a in scene.archives] == [
        {"name": "download.zip", "kind": "ZIP archive", "read": list(rgb), "skipped": []}]


def test_a_sentinel_hub_tar_reads_its_tif_and_leaves_out_its_userdata(rgb):
    """The Process API's answer with several outputs: ``default.tif`` (no band names: bands= states them) and
    ``userdata.json``; the JSON is named as left out."""
    stored = reflectance((3, 24, 24))
    tar = tarred({"default.tif": tif(stored), "userdata.json": json.dumps({"norm": 10000}).encode()})
    scene, _, got, _ = read([UploadedFile("response.tar", tar)], ["B04", "B03", "B02"], bands=["B04", "B03", "B02"])
    np.testing.assert_allclose(got, stored / 10000, rtol=1e-6)
    assert scene.archives[0].report() == {"name": "response.tar", "kind": "tar archive", "read": ["default.tif"],
                                          "skipped": ["userdata.json"]}


@pytest.mark.parametrize("pack, kind", [
    (lambda m: tarred(m, "w:gz"), "tar archive (gzip-compressed)"),
    (lambda m: tarred(m, "w:bz2"), "tar archive (bzip2-compressed)"),
    (lambda m: tarred(m, "w:xz"), "tar archive (xz-compressed)"),
    (lambda m: zipped(m, zipfile.ZIP_STORED), "ZIP archive"),
])
def test_compressed_tars_and_stored_zips_read_alike(rgb, pack, kind):
    _, _, expected, _ = read([UploadedFile(n, d) for n, d in rgb.items()], ["B04", "B03", "B02"])
    scene, _, got, _ = read([UploadedFile("bands.tgz", pack({f"scene/{n}": d for n, d in rgb.items()}))],
                        ["B04", "B03", "B02"])
    np.testing.assert_array_equal(got, expected)
    assert scene.archives[0].kind.endswith(kind) and scene.archives[0].report()["read"] == list(rgb)


@pytest.mark.parametrize("compress, suffix", [(gzip.compress, ".gz"), (bz2.compress, ".bz2")])
def test_a_compressed_tif_reads_as_the_tif(compress, suffix):
    stored = reflectance((3, 16, 16))
    data = tif(stored, ["B04", "B03", "B02"])
    scene, _, got, _ = read([UploadedFile(f"scene.tif{suffix}", compress(data))], ["B04", "B03", "B02"])
    np.testing.assert_allclose(got, stored / 10000, rtol=1e-6)
    assert scene.archives[0].report()["read"] == ["scene.tif"] and scene.bands[0].file == "scene.tif"


def test_an_archive_and_files_beside_it_make_one_scene(rgb):
    """A zip of RGB and a NIR file sent beside it: four bands of one request."""
    nir = reflectance((1, 40, 48))
    files = [UploadedFile("rgb.zip", zipped(rgb)), UploadedFile("B08.tif", tif(nir[0]))]
    scene, _, got, _ = read(files, ["B08"])
    np.testing.assert_allclose(got, nir / 10000, rtol=1e-6)
    assert sorted(scene.canonical_bands) == ["B02", "B03", "B04", "B08"]


def jp2(data: np.ndarray, pixel: float) -> bytes:
    """A georeferenced, losslessly coded JPEG 2000 band file, as Sentinel-2's SAFE carries one (GDAL JP2OpenJPEG)."""
    with MemoryFile(filename="band.jp2") as mem:
        with mem.open(driver="JP2OpenJPEG", count=1, width=data.shape[1], height=data.shape[0], dtype=data.dtype,
                      crs=UTM, transform=from_origin(500000, 5000000, pixel, pixel), QUALITY=100, REVERSIBLE="YES",
                      CODEC="JP2") as dst:
            dst.write(data, 1)
        return mem.read()


SAFE = "S2B_MSIL2A_20240830T100559_N0511_R022_T33UUP_20240830T134009.SAFE"
#: The parts of a Level-2A MTD_MSIL2A.xml that state its values (PSD 14.9): the quantification, the band ids of
#: the offsets, the offsets (processing baseline 04.00 and later) and the special values.
SAFE_MTD = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
 <n1:General_Info><Product_Info><PROCESSING_BASELINE>05.11</PROCESSING_BASELINE></Product_Info>
  <Product_Image_Characteristics>
   <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
   <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
   <QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
    <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
   <BOA_ADD_OFFSET_VALUES_LIST>""" + "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13)) + \
    """</BOA_ADD_OFFSET_VALUES_LIST>
   <Spectral_Information_List>""" + "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b}"/>' for i, b in enumerate(
            ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"))) + \
    """</Spectral_Information_List>
  </Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>"""


def test_a_sentinel2_safe_reads_each_band_once_at_its_own_resolution_with_the_offset_its_metadata_states():
    """A Level-2A SAFE as the Copernicus Data Space gives it (a .zip): each band at 10, 20 and 60 m, the true-colour
    preview, masks and metadata. Each band is read at its native resolution (B04 from R10m, not its R20m copy; SCL
    from R20m), in reflectance = (DN - 1000) / 10000 as MTD_MSIL2A.xml states since baseline 04.00 (0.1 too bright
    without the offset), nodata 0; the SCL masks clouds, the rest is left out."""
    from mapex_serve.products import safe_scales

    assert safe_scales(SAFE_MTD)["B8A"] == (1e-4, -0.1, 0.0)
    before_04 = re.sub(r"<BOA_ADD_OFFSET_VALUES_LIST>.*</BOA_ADD_OFFSET_VALUES_LIST>", "", SAFE_MTD, flags=re.S)
    assert safe_scales(before_04)["B02"] == (1e-4, 0.0, 0.0)  # baselines before 04.00 state no offset
    l1c = ('<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd">'
           '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE><Radiometric_Offset_List>'
           '<RADIO_ADD_OFFSET band_id="1">-1000</RADIO_ADD_OFFSET></Radiometric_Offset_List></n1:Level-1C_User_Product>')
    assert safe_scales(l1c)["B02"] == (1e-4, -0.1, None) and safe_scales("<not xml") == {}
    dn = RNG.integers(1500, 5000, (3, 32, 32)).astype(np.uint16)
    dn[:, 0, :4] = 0  # outside the swath
    scl = np.full((16, 16), 4, np.uint8)  # vegetation
    scl[8:, 8:] = 9  # cloud, high probability: 8 x 8 at 20 m, 16 x 16 at 10 m
    granule = f"{SAFE}/GRANULE/L2A_T33UUP_A038765_20240830T100558"
    stem = "T33UUP_20240830T100559"
    members = {f"{SAFE}/MTD_MSIL2A.xml": SAFE_MTD.encode(), f"{SAFE}/manifest.safe": b"<xfdu/>",
               f"{granule}/MTD_TL.xml": b"<tile/>", f"{granule}/QI_DATA/MSK_CLDPRB_20m.jp2": jp2(scl, 20),
               **{f"{granule}/IMG_DATA/R10m/{stem}_{b}_10m.jp2": jp2(dn[i], 10)
                  for i, b in enumerate(("B04", "B03", "B02"))},
               f"{granule}/IMG_DATA/R10m/{stem}_TCI_10m.jp2": jp2((dn[0] // 20).astype(np.uint8), 10),
               f"{granule}/IMG_DATA/R20m/{stem}_B04_20m.jp2": jp2(dn[0, ::2, ::2], 20),
               f"{granule}/IMG_DATA/R20m/{stem}_SCL_20m.jp2": jp2(scl, 20),
               f"{granule}/IMG_DATA/R60m/{stem}_B04_60m.jp2": jp2(dn[0, ::6, ::6], 60)}
    scene, reader, values, reasons = read([UploadedFile("S2B.zip", zipped(members))], ["B04", "B03", "B02"])
    valid = reasons == 0
    np.testing.assert_allclose(values[:, valid], ((dn - 1000) / 10000)[:, valid], atol=1e-6)
    assert reader.masked() == {"nodata, mask or alpha band": 4, "SCL cloud (high probability)": 256}
    report = scene.archives[0].report()
    assert report["read"] == [f"{stem}_{b}_10m.jp2" for b in ("B04", "B03", "B02")] + [f"{stem}_SCL_20m.jp2"]
    assert f"{granule}/IMG_DATA/R20m/{stem}_B04_20m.jp2" in report["skipped"] and len(report["skipped"]) == 6
    assert report["notes"] == ["MTD_MSIL2A.xml: reflectance = DN x 0.0001 -0.1, nodata 0 (B04, B03, B02)"]


LANDSAT = "LC09_L2SP_191026_20220610_20220612_02_T1"
#: The groups of a Collection 2 Level-2 MTL.txt that name reflectance scales: level 1's top-of-atmosphere ones
#: (values here made different, to tell them apart) and level 2's surface reflectance ones.
LANDSAT_MTL = f"""GROUP = LANDSAT_METADATA_FILE
  GROUP = PRODUCT_CONTENTS
    LANDSAT_PRODUCT_ID = "{LANDSAT}"
  END_GROUP = PRODUCT_CONTENTS
  GROUP = LEVEL1_RADIOMETRIC_RESCALING
""" + "".join(f"    REFLECTANCE_MULT_BAND_{b} = 2.0000E-05\n    REFLECTANCE_ADD_BAND_{b} = -0.100000\n" for b in range(1, 10)) + \
    """  END_GROUP = LEVEL1_RADIOMETRIC_RESCALING
  GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS
""" + "".join(f"    REFLECTANCE_MULT_BAND_{b} = 2.75e-05\n    REFLECTANCE_ADD_BAND_{b} = -0.2\n" for b in range(1, 8)) + \
    """  END_GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS
END_GROUP = LANDSAT_METADATA_FILE
END
"""


def test_a_landsat_bundle_reads_its_reflectance_scaled_as_its_mtl_says_and_masks_by_qa_pixel():
    """USGS's Collection 2 Level-2 .tar as EarthExplorer gives it: uint16 SR bands, QA_PIXEL, the surface temperature
    band, angles and the MTL. The SR bands are read in the scale and offset of the MTL's level-2 group (a sidecar
    each; not level 1's top-of-atmosphere ones), QA_PIXEL's cloud and shadow bits mask, the rest is left out."""
    from mapex_serve.products import landsat_scales

    assert landsat_scales(LANDSAT_MTL) == {b: (2.75e-05, -0.2, 0.0) for b in range(1, 8)}
    dn = RNG.integers(8000, 20000, (3, 16, 16)).astype(np.uint16)
    qa = np.full((16, 16), 1 << 6, np.uint16)  # clear
    qa[:2] = 1 << 3  # cloud
    qa[2, :4] = 1 << 4  # cloud shadow
    qa[3, :3] = 1 << 5 | 1 << 6  # snow stays valid
    members = {f"{LANDSAT}_ANG.txt": b"GROUP = FILE_HEADER", f"{LANDSAT}_MTL.json": b"{}",
               f"{LANDSAT}_MTL.txt": LANDSAT_MTL.encode(), f"{LANDSAT}_QA_PIXEL.TIF": tif(qa),
               **{f"{LANDSAT}_SR_B{b}.TIF": tif(dn[i]) for i, b in enumerate((4, 3, 2))},
               f"{LANDSAT}_ST_B10.TIF": tif(dn[0])}
    scene, reader, values, reasons = read([UploadedFile(f"{LANDSAT}.tar", tarred(members))], ["B04", "B03", "B02"])
    valid = reasons == 0
    np.testing.assert_allclose(values[:, valid], (dn * 2.75e-05 - 0.2)[:, valid], atol=1e-6)
    assert reader.masked() == {"QA_PIXEL cloud": 32, "QA_PIXEL cloud shadow": 4}
    assert "Landsat OLI band 4" in rule_of(scene, "B04")
    assert scene.archives[0].report() == {
        "name": f"{LANDSAT}.tar", "kind": "tar archive",
        "read": [f"{LANDSAT}_QA_PIXEL.TIF", *(f"{LANDSAT}_SR_B{b}.TIF" for b in (4, 3, 2))],
        "skipped": [f"{LANDSAT}_ANG.txt", f"{LANDSAT}_MTL.json", f"{LANDSAT}_ST_B10.TIF"],
        "notes": [f"{LANDSAT}_MTL.txt: surface reflectance = DN x 2.75e-05 -0.2, nodata 0 (SR_B4, SR_B3, SR_B2)"]}


THEIA = "SENTINEL2B_20230815-105856-123_L2A_T31TCJ_C_V3-1"


def test_a_theia_product_reads_its_flat_reflectance_and_masks_by_its_cloud_bits():
    """THEIA's zipped MAJA L2A product as theia-land.fr gives it: each band as FRE (slopes corrected) and SRE, int16
    reflectance x 10000, -10000 outside the image; cloud and edge masks at 10 and 20 m, aerosols, a quicklook, the
    metadata. Each band is read once, from its FRE file (it was refused as given twice), in the format's scale, and
    the 20 m cloud mask's bits mask clouds, shadows, thin and high clouds (a THEIA 3 or 35 is a cloud, which Sentinel
    Hub's CLM of the same name would take as clear)."""
    fre = RNG.integers(200, 4000, (3, 16, 16)).astype(np.int16)
    fre[:, :, :2] = -10000  # outside the image: 32 pixels
    clm = np.zeros((8, 8), np.uint8)  # at 20 m: a pixel is 4 of the bands'
    clm[0, 4:] = 1 | 2 | 32  # a cloud and the shadow it casts
    clm[1, 4:6] = 16  # the thinnest clouds
    clm[2, 4] = 128  # a high cloud (1.38 um)
    clm[3, 4:6] = 3  # a cloud
    bands = ("B4", "B3", "B2")
    members = {**{f"{THEIA}/{THEIA}_FRE_{b}.tif": tif(fre[i], nodata=-10000) for i, b in enumerate(bands)},
               **{f"{THEIA}/{THEIA}_SRE_{b}.tif": tif(fre[i] // 2, nodata=-10000) for i, b in enumerate(bands)},
               f"{THEIA}/{THEIA}_ATB_R1.tif": tif(np.ones((2, 16, 16), np.uint8)),
               f"{THEIA}/MASKS/{THEIA}_CLM_R1.tif": tif(np.full((16, 16), 1, np.uint8)),  # not read: R2 is
               f"{THEIA}/MASKS/{THEIA}_CLM_R2.tif": tif(clm, pixel=20.0),
               f"{THEIA}/MASKS/{THEIA}_EDG_R1.tif": tif(np.zeros((16, 16), np.uint8)),
               f"{THEIA}/{THEIA}_MTD_ALL.xml": b"<Muscate_Metadata_Document/>",
               f"{THEIA}/{THEIA}_QKL_ALL.jpg": b"\xff\xd8\xff\xe0"}
    scene, reader, values, reasons = read([UploadedFile(f"{THEIA}.zip", zipped(members))], ["B04", "B03", "B02"])
    valid = reasons == 0
    np.testing.assert_allclose(values[:, valid], fre[:, valid] * 1e-4, rtol=1e-6)
    assert reader.masked() == {"nodata, mask or alpha band": 32, "THEIA CLM cloud or cloud shadow": 24,
                               "THEIA CLM thin cloud": 8, "THEIA CLM high cloud": 4}
    assert "THEIA L2A FRE band file name" in rule_of(scene, "B04")
    assert reader.bands[0].conversion.steps[0] == "x 0.0001 + 0 (a THEIA L2A band file holds reflectance x 10000)"
    report = scene.archives[0].report()
    assert sorted(report["read"]) == sorted([*(f"{THEIA}_FRE_{b}.tif" for b in bands), f"{THEIA}_CLM_R2.tif"])
    assert len(report["skipped"]) == len(members) - 4


def test_theia_files_sent_alone_keep_their_meaning():
    """A THEIA product's band files and cloud mask uploaded without their zip: -10000 is outside the image where a
    file declares no no-data (it was reflectance -1, refused as implausible), and ``..._CLM_R2.tif`` holds THEIA's
    bits, not Sentinel Hub's CLM."""
    fre = RNG.integers(200, 4000, (2, 16, 16)).astype(np.int16)
    fre[:, :3] = -10000  # 48 pixels
    clm = np.zeros((16, 16), np.uint8)
    clm[8] = 3
    files = [*(UploadedFile(f"{THEIA}_FRE_{b}.tif", tif(fre[i], pixel=20.0)) for i, b in enumerate(("B11", "B12"))),
             UploadedFile(f"{THEIA}_CLM_R2.tif", tif(clm, pixel=20.0))]
    scene, reader, values, reasons = read(files, ["B11", "B12"])
    assert reader.masked() == {"nodata, mask or alpha band": 48, "THEIA CLM cloud or cloud shadow": 16}
    np.testing.assert_allclose(values[:, reasons == 0], fre[:, reasons == 0] * 1e-4, rtol=1e-6)
    assert scene.quality_bands()[0].identity.quality == "THEIA_CLM"


THEIA_L8 = "LANDSAT8-OLITIRS-XS_20210821-102351-515_L2A_T31TFJ_C_V2-2"


def test_a_theia_landsat_product_reads_its_bands_by_olis_numbers():
    """THEIA's Landsat 8 L2A (MAJA's format again, OLI's bands B1-B7, masks at 30 m: ``CLM_XS``) was read by the
    words of its file names: its near infrared B5 as Sentinel-2's red edge B05, and B6, B7 (short-wave infrared) as
    red edge too, in a file that declares its -10000 no data. Now each band is OLI's: B5 is B8A."""
    fre = RNG.integers(200, 4000, (7, 16, 16)).astype(np.int16)
    fre[:, :2] = -10000  # 32 pixels
    clm = np.zeros((16, 16), np.uint8)
    clm[5] = 1 | 2  # a cloud
    members = {**{f"{THEIA_L8}/{THEIA_L8}_FRE_B{i + 1}.tif": tif(fre[i], nodata=-10000, pixel=30.0) for i in range(7)},
               **{f"{THEIA_L8}/{THEIA_L8}_SRE_B{i + 1}.tif": tif(fre[i] // 2, pixel=30.0) for i in range(7)},
               f"{THEIA_L8}/MASKS/{THEIA_L8}_CLM_XS.tif": tif(clm, pixel=30.0),
               f"{THEIA_L8}/MASKS/{THEIA_L8}_SAT_XS.tif": tif(np.zeros((16, 16), np.uint8), pixel=30.0)}
    scene, reader, values, reasons = read([UploadedFile(f"{THEIA_L8}.zip", zipped(members))], ["B8A", "B11", "B12"])
    assert [b.identity.canonical for b in scene.bands[:7]] == ["B01", "B02", "B03", "B04", "B8A", "B11", "B12"]
    assert "Landsat OLI band 5 (865 nm)" in rule_of(scene, "B8A")
    assert reader.masked() == {"nodata, mask or alpha band": 32, "THEIA CLM cloud or cloud shadow": 16}
    np.testing.assert_allclose(values[:, reasons == 0], fre[4:7][:, reasons == 0] * 1e-4, rtol=1e-6)
    assert sorted(scene.archives[0].report()["read"]) == sorted(
        [*(f"{THEIA_L8}_FRE_B{i + 1}.tif" for i in range(7)), f"{THEIA_L8}_CLM_XS.tif"])


THEIA_L3A = "SENTINEL2X_20230815-000000-000_L3A_T31TCJ_C_V2-0"


def test_a_theia_monthly_synthesis_reads_its_composite_and_masks_by_its_flags():
    """THEIA's L3A product (WASP's monthly synthesis of MAJA's L2A): a band is one ``FRC`` file, int16 reflectance x
    10000, -10000 where no date was clear; ``MASKS/`` holds flags at 10 and 20 m (0 no data, 1 cloud or shadow on
    every date, 2 snow, 3 water, 4 land), dates and weights. It was refused (-10000 read as reflectance -1); now the
    bands are read in the format's scale and the 20 m flags mask their 0 and 1, snow and water staying valid."""
    frc = RNG.integers(200, 4000, (3, 16, 16)).astype(np.int16)
    frc[:, :2] = -10000  # no clear date: 32 pixels
    flg = np.full((8, 8), 4, np.uint8)  # at 20 m: land
    flg[:1] = 0  # no data, under the bands' -10000
    flg[2, :4] = 1  # cloudy on every date: 4 of them, 16 pixels of the bands'
    flg[3] = 2  # snow
    flg[4] = 3  # water
    bands = ("B4", "B3", "B2")
    members = {**{f"{THEIA_L3A}/{THEIA_L3A}_FRC_{b}.tif": tif(frc[i]) for i, b in enumerate(bands)},
               f"{THEIA_L3A}/MASKS/{THEIA_L3A}_FLG_R1.tif": tif(np.zeros((16, 16), np.uint8)),  # not read: R2 is
               f"{THEIA_L3A}/MASKS/{THEIA_L3A}_FLG_R2.tif": tif(flg, pixel=20.0),
               f"{THEIA_L3A}/MASKS/{THEIA_L3A}_DTS_R1.tif": tif(np.ones((16, 16), np.int16)),
               f"{THEIA_L3A}/MASKS/{THEIA_L3A}_WGT_R1.tif": tif(np.ones((16, 16), np.int16)),
               f"{THEIA_L3A}/{THEIA_L3A}_MTD_ALL.xml": b"<Muscate_Metadata_Document/>"}
    scene, reader, values, reasons = read([UploadedFile(f"{THEIA_L3A}.zip", zipped(members))], ["B04", "B03", "B02"])
    valid = reasons == 0
    np.testing.assert_allclose(values[:, valid], frc[:, valid] * 1e-4, rtol=1e-6)
    assert reader.masked() == {"nodata, mask or alpha band": 32, "THEIA FLG cloud or shadow on every date": 16}
    assert "THEIA L3A FRC band file name" in rule_of(scene, "B04")
    assert reader.bands[0].conversion.steps[0] == "x 0.0001 + 0 (a THEIA L3A band file holds reflectance x 10000)"
    report = scene.archives[0].report()
    assert sorted(report["read"]) == sorted([*(f"{THEIA_L3A}_FRC_{b}.tif" for b in bands), f"{THEIA_L3A}_FLG_R2.tif"])
    assert len(report["skipped"]) == len(members) - 4


def test_theia_synthesis_files_sent_alone_keep_their_meaning():
    """An L3A band file and its 10 m flags uploaded without their zip: -10000 is no data, and FLG's 0 and 1 mask."""
    frc = RNG.integers(200, 4000, (16, 16)).astype(np.int16)
    frc[:1] = -10000  # 16 pixels
    flg = np.full((16, 16), 4, np.uint8)
    flg[5] = 1
    files = [UploadedFile(f"{THEIA_L3A}_FRC_B8.tif", tif(frc)), UploadedFile(f"{THEIA_L3A}_FLG_R1.tif", tif(flg))]
    scene, reader, values, reasons = read(files, ["B08"])
    assert reader.masked() == {"nodata, mask or alpha band": 16, "THEIA FLG cloud or shadow on every date": 16}
    np.testing.assert_allclose(values[0, reasons == 0], frc[reasons == 0] * 1e-4, rtol=1e-6)
    assert scene.quality_bands()[0].identity.quality == "THEIA_FLG"


FORCE_S2 = ["BLUE", "GREEN", "RED", "REDEDGE1", "REDEDGE2", "REDEDGE3", "BROADNIR", "NIR", "SWIR1", "SWIR2"]
FORCE_S2_UM = [0.492, 0.56, 0.665, 0.704, 0.74, 0.783, 0.833, 0.865, 1.614, 2.202]


def force_boa(sensor="SEN2A", names=FORCE_S2, um=FORCE_S2_UM, metadata=True) -> tuple[np.ndarray, bytes]:
    """A reflectance file as force-level2 writes one: int16 x 10000, -9999 no data, FORCE's band names, and (unless
    dropped by a copy) its FORCE metadata domain: each band's wavelength, scale and sensor, the file's version."""
    stored = RNG.integers(200, 4000, (len(names), 16, 16)).astype(np.int16)
    stored[:, 0, :4] = -9999
    bands = [{"Domain": n, "Wavelength": f"{w:.3f}", "Wavelength_unit": "micrometers", "Scale": "10000.000",
              "Sensor": sensor, "Date": "2023-08-15"} for n, w in zip(names, um, strict=True)]
    domains = {"FORCE": (bands, {"FORCE_version": "3.7.12", "FORCE_product": "BOA"})} if metadata else None
    return stored, tif(stored, names, nodata=-9999, domains=domains)


@pytest.mark.parametrize("name, metadata", [("20230815_LEVEL2_SEN2A_BOA.tif", True), ("cube_mosaic.tif", True),
                                            ("cube_mosaic.tif", False), ("20230815_LEVEL2_SEN2A_BOA.tif", False)])
def test_a_force_sentinel2_file_reads_its_nir_as_b8a_and_broadnir_as_b08(name, metadata):
    """FORCE names Sentinel-2's band 8A NIR and band 8 BROADNIR; read the common way NIR was taken for B08 and
    BROADNIR left out. By its FORCE metadata's wavelengths (renamed or not), else by FORCE's names (its name, or
    BROADNIR, a name only FORCE gives, says whose); scaled by its metadata's Scale where it has one."""
    stored, data = force_boa(metadata=metadata)
    scene, reader, values, reasons = read([UploadedFile(name, data)], ["B08", "B8A", "B11"])
    assert [b.identity.canonical for b in scene.bands] == [
        "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert ("FORCE band at 865 nm" if metadata else "FORCE band name") in rule_of(scene, "B8A")
    valid = reasons == 0
    assert valid.sum() == 16 * 16 - 4
    np.testing.assert_allclose(values[:, valid], stored[[6, 7, 8]][:, valid] * 1e-4, rtol=1e-6)
    said = "x 0.0001 + 0 (its FORCE metadata: Scale 10000)" if metadata else "x 0.0001 + 0 (assumed: "
    assert reader.bands[0].conversion.steps[0].startswith(said)


@pytest.mark.parametrize("sensor, nir", [("LND08", "B8A"), ("LND07", "B08")])
def test_a_force_landsat_file_reads_its_nir_as_its_sensor_measures_it(sensor, nir):
    """A FORCE Landsat file's NIR is OLI's 865 nm (band 8A's) or TM/ETM+'s 835 nm (band 8's): by its FORCE metadata,
    else by its name's sensor."""
    names, um = ["BLUE", "GREEN", "RED", "NIR", "SWIR1", "SWIR2"], [0.48, 0.56, 0.655, 0.865 if nir == "B8A" else 0.835,
                                                                    1.61, 2.2]
    for metadata in (True, False):
        _, data = force_boa(sensor, names, um, metadata)
        scene = RequestScene([UploadedFile(f"20230815_LEVEL2_{sensor}_BOA.tif", data)])
        assert [b.identity.canonical for b in scene.bands] == ["B02", "B03", "B04", nir, "B11", "B12"]


def test_force_qai_bits_mask_no_data_clouds_and_shadows_and_its_toa_is_top_of_atmosphere():
    """FORCE's QAI beside its BOA: bit 0 no data, the cloud state in bits 1-2 (buffered, opaque, cirrus) and bit 3
    shadows are masked; snow (bit 4) and water (bit 5) stay valid. Its TOA file says its level by its name."""
    from mapex_serve.reflectance import level_of

    _, boa = force_boa()
    qai = np.zeros((16, 16), np.int16)
    qai[0, :4] = 1  # no data (the BOA's -9999 too)
    qai[1, :3] = 0b010  # buffered cloud
    qai[2, :2] = 0b100  # opaque cloud
    qai[3, :5] = 0b110  # cirrus
    qai[4, :6] = 0b1000  # cloud shadow
    qai[5] = 0b110000  # snow and water: valid
    files = [UploadedFile("20230815_LEVEL2_SEN2A_BOA.tif", boa), UploadedFile("20230815_LEVEL2_SEN2A_QAI.tif", tif(qai))]
    _, reader, _, reasons = read(files, ["B04", "B03", "B02"])
    assert reader.masked() == {"nodata, mask or alpha band": 4, "FORCE QAI cloud (buffered or cirrus)": 8,
                               "FORCE QAI cloud (opaque or cirrus)": 2, "FORCE QAI cloud shadow": 6}
    assert (reasons[5] == 0).all()
    assert level_of("20230815_LEVEL2_SEN2A_TOA.tif", "", {}).level == "top-of-atmosphere"
    assert level_of("20230815_LEVEL2_SEN2A_BOA.tif", "", {}).level == "surface"


@pytest.mark.parametrize("name, nir", [("S2A2A_20190723_022_Barbellino_BOA_10.tif", "B08"),
                                       ("S2B2A_20190723_022_32TNR_BOA_20.tif", "B8A")])
def test_a_sen2r_boa_file_names_its_unnamed_bands_by_sen2rs_order(name, nir):
    """sen2r's GeoTIFFs carry no band names (only its ENVI output does); its BOA holds 11 bands in one order, band 8
    below 20 m and band 8A from 20 m on, as its name's resolution says. A subset of them cannot be told: 422."""
    stored = reflectance((11, 8, 8))
    scene, reader, values, reasons = read([UploadedFile(name, tif(stored, nodata=0))], ["B04", nir, "B11"])
    assert [b.identity.canonical for b in scene.bands] == [
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", nir, "B09", "B11", "B12"]
    assert "sen2r BOA band 8" in rule_of(scene, nir)
    np.testing.assert_allclose(values, stored[[3, 7, 9]] * 1e-4, rtol=1e-6)
    with pytest.raises(BandNamesMissingError):
        RequestScene([UploadedFile(name, tif(stored[:4], nodata=0))])


def test_what_unpacks_past_the_limit_is_413_before_or_while_it_is_read():
    """A zip states its members' sizes: refused before any is inflated. A gzip stream states none: refused as its
    bytes pass the limit. Several archives of one request share the limit."""
    zeros = np.zeros((1, 1024, 1024), np.uint16)  # 2 MiB that deflate to a few kB
    big = tif(zeros)
    with pytest.raises(ArchiveTooLargeError, match="more than 1 MiB"):
        RequestScene([UploadedFile("bomb.zip", zipped({"B04.tif": big}))], max_unpacked=LIMIT)
    with pytest.raises(ArchiveTooLargeError, match="more than 1 MiB"):
        RequestScene([UploadedFile("bomb.tif.gz", gzip.compress(big))], max_unpacked=LIMIT)
    half = tif(np.zeros((1, 640, 640), np.uint16))  # 0.8 MiB: one fits, two do not
    RequestScene([UploadedFile("a.zip", zipped({"B04.tif": half}))], max_unpacked=LIMIT).close()
    with pytest.raises(ArchiveTooLargeError):
        RequestScene([UploadedFile("a.zip", zipped({"B04.tif": half})), UploadedFile("b.zip", zipped({"B03.tif": half}))],
                     max_unpacked=LIMIT)


@pytest.mark.parametrize("data, said", [
    (zipped({"README.txt": b"hello", "preview.png": b"\x89PNG"}), "no raster file in it .it holds README.txt, preview.png"),
    (zipped({"B04.tif": b"x" * 5000})[:-40], "cannot be read"),
    (b"7z\xbc\xaf\x27\x1c" + b"\0" * 100, "7-Zip archive, which is not read here"),
    (b"\x28\xb5\x2f\xfd" + b"\0" * 100, "zstd file, which is not read here"),
], ids=["no-raster", "truncated-zip", "7z", "zstd"])  # not the bytes: a zip's member times differ between workers
def test_an_archive_that_cannot_be_read_or_holds_no_raster_is_400_saying_why(data, said):
    with pytest.raises(UnreadableArchiveError, match=said):
        RequestScene([UploadedFile("product.zip", data)], max_unpacked=LIMIT)


def test_an_encrypted_member_is_refused_as_encrypted():
    """Python writes no encrypted zip: its bit 0 ("encrypted") is set in the local and central headers as zip tools
    set it (APPNOTE 4.4.4)."""
    data = bytearray(zipped({"B04.tif": b"x" * 100}))
    for header, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.index(header) + at
        data[i] |= 0x1
    with pytest.raises(UnreadableArchiveError, match="B04.tif is encrypted"):
        RequestScene([UploadedFile("secret.zip", bytes(data))], max_unpacked=LIMIT)


def test_links_and_folders_in_a_tar_are_not_read(rgb):
    """A symlink could name any file of the machine: only regular files are members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        folder = tarfile.TarInfo("bands")
        folder.type = tarfile.DIRTYPE
        t.addfile(folder)
        link = tarfile.TarInfo("bands/B08.tif")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
        for name, data in rgb.items():
            info = tarfile.TarInfo(f"bands/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    scene, _, _, _ = read([UploadedFile("bands.tar", out.getvalue())], ["B04"])
    assert scene.archives[0].report()["read"] == list(rgb) and sorted(scene.canonical_bands) == ["B02", "B03", "B04"]


def test_reasons_are_counted_per_row_once_each_when_read_tile_by_tile_and_nodata_comes_from_a_catalogue(tmp_path):
    """Tiles overlap and the reader keeps only a band of rows, yet every pixel is counted once, in its row; a STAC
    item's raster:bands nodata (absent from the file, as on many COGs) masks like the file's own."""
    from mapex_serve.tiling import read_tiles, tile_grid

    stored = reflectance((2, 150, 110)).astype(np.float32)
    stored[0, 37, 5:25] = np.nan
    stored[:, 90:96, :] = 0  # nodata by the catalogue only
    path = tmp_path / "scene.tif"
    path.write_bytes(tif(stored, ["B11", "B12"]))
    scene = RequestScene([SourceFile("scene.tif", str(path), nodata=(0.0, 0.0))])
    reader = scene.reader(["B11", "B12"], UnitOverrides())
    for _ in read_tiles(reader, tile_grid(150, 110, 32, 8)):
        pass
    assert reader.masked() == {"NaN or infinite value": 20, "nodata, mask or alpha band": 6 * 110}
    assert reader.masked((0, 90)) == {"NaN or infinite value": 20}
    assert reader.masked((93, 150)) == {"nodata, mask or alpha band": 3 * 110}
    assert reader._reasons.shape[0] <= 32, "the reader holds a band of rows, not the scene"
    scene.close()


def test_tiles_sliced_from_a_row_read_equal_tiles_read_one_window_at_a_time(tmp_path):
    """The tiler reads a row of tiles in one call and slices them; nothing a tile sees may change."""
    from mapex_serve.tiling import read_tiles, tile_grid

    stored = reflectance((2, 150, 110)).astype(np.float32)
    stored[0, 37, 5:25] = np.nan
    stored[:, 90:96, 40:] = -1  # the file's nodata
    path = tmp_path / "scene.tif"
    path.write_bytes(tif(stored, ["B11", "B12"], nodata=-1))
    grid = tile_grid(150, 110, 32, 8)

    class Counted:
        """The scene's reader, with the windows the tiler asked it for."""

        def __init__(self, reader):
            self.reader, self.windows = reader, []
            self.height, self.width, self.count = reader.height, reader.width, reader.count

        def read(self, window):
            self.windows.append(window)
            return self.reader.read(window)

    def tiles(span_bytes: int | None, whole: bool = True) -> tuple[list, dict, list]:
        scene = RequestScene([UploadedFile("scene.tif", path.read_bytes())])
        reader = scene.reader(["B11", "B12"], UnitOverrides())
        assert reader._whole is not None, "the unit sample read this small scene whole"
        if not whole:
            reader._whole = None  # every window read from the file
        counted = Counted(reader)
        options = {} if span_bytes is None else {"span_bytes": span_bytes}
        out = [(t.tile, t.data, t.valid) for t in read_tiles(counted, grid, **options)]
        above = reader.read(grid[0].window)  # a window above the rows read: a fresh read, counted once
        masked = reader.masked()
        scene.close()
        return out + [above], masked, counted.windows

    alone, masked_alone, windows = tiles(0, whole=False)  # a span of one tile: each read from the file
    assert len(windows) == len(grid)
    for whole in (True, False):
        sliced, masked, windows = tiles(None, whole)  # rows sliced from the scene the sample read, or read from the file
        assert len(windows) == grid.shape[0] and {w.width for w in windows} == {110}, "a row of tiles: one read"
        assert not sliced[0][1].flags.writeable, "tiles are read-only views of their row"
        assert masked == masked_alone == {"NaN or infinite value": 20, "nodata, mask or alpha band": 6 * 70}
        for (tile, data, valid), (tile_alone, data_alone, valid_alone) in zip(sliced[:-1], alone[:-1], strict=True):
            assert tile == tile_alone
            np.testing.assert_array_equal(data, data_alone)
            np.testing.assert_array_equal(valid, valid_alone)
        for a, b in zip(sliced[-1], alone[-1], strict=True):
            np.testing.assert_array_equal(a, b)


def test_percentiles_are_numpys():
    """``units.percentiles`` replaces ``np.percentile`` for speed: the same numbers, whatever the dtype and size."""
    from mapex_serve.units import percentiles

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 17, 1024, 4099):
        for dtype in (np.float32, np.float64, np.uint16, np.int16):
            x = (rng.normal(size=n) * 1000).astype(dtype)
            assert percentiles(x, (2, 50, 98)) == [float(v) for v in np.percentile(x, [2, 50, 98])]


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326", "EPSG:3035",
                                 "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80"])
def test_the_grid_names_its_crs_as_rasterio_does_also_from_the_cache(crs):
    """``grid_report`` caches the CRS's name by WKT: the name must be rasterio's, on a first call and a repeat."""
    from mapex_serve.responses import grid_report

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=8, height=8, count=1, dtype="uint16", crs=crs,
                      transform=from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write(np.ones((1, 8, 8), np.uint16))
        for _ in range(2):
            with mem.open() as ds:
                report = grid_report(ds.crs, ds.transform, ds.width, ds.height, [])
                assert report["crs"] == ds.crs.to_string()
    assert report["pixel_size"] == [10.0, 10.0] and (report["width"], report["height"]) == (8, 8)
    assert grid_report(None, from_origin(0, 0, 1, 1), 8, 8, [])["crs"] is None


def _packed_variants() -> list[tuple[str, bytes]]:
    """One small scene packed every way an upload may come packed."""
    files = {"download.B4.tif": tif(reflectance((1, 16, 16))), "download.B3.tif": tif(reflectance((1, 16, 16))),
             "userdata.json": b"{}"}
    return [("a.zip", zipped(files)), ("a.zip", zipped(files, zipfile.ZIP_STORED)), ("a.tar", tarred(files)),
            ("a.tgz", tarred(files, "w:gz")), ("a.tar.xz", tarred(files, "w:xz")),
            ("a.tif.gz", gzip.compress(files["download.B4.tif"])), ("a.tif.bz2", bz2.compress(files["download.B4.tif"]))]


_PACKED = _packed_variants()


@settings(max_examples=300, deadline=None, derandomize=True, database=None, phases=[Phase.generate])
@given(which=st.integers(0, len(_PACKED) - 1), cut=st.one_of(st.none(), st.integers(0, 4000)),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8))
def test_damaged_archives_are_read_or_refused_with_a_4xx_never_anything_else(which, cut, flips):
    """Archives truncated or with bytes flipped (a download cut short, a bad disk): the scene is read, or the error is
    one the service answers with a 4xx (``MapexError`` and GDAL's, which ``open_and_route`` turns into a 400); never
    a zipfile, tarfile or zlib exception that would be a 500."""
    from rasterio.errors import RasterioError

    from mapex_serve.errors import MapexError

    name, packed = _PACKED[which]
    data = bytearray(packed[:cut] if cut is not None else packed)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    try:
        RequestScene([UploadedFile(name, bytes(data))], max_unpacked=LIMIT).close()
    except (MapexError, RasterioError):
        pass


def test_an_empty_file_beside_others_is_a_400_naming_it():
    """Found by the archive fuzzer: an empty part (or member) was opened by rasterio as a file to write, an
    AttributeError and a 500; an empty sidecar stays harmless."""
    from mapex_serve.inputs import UnreadableInputError

    files = [UploadedFile("s2.tif", tif(reflectance((2, 8, 8)), ["B04", "B03"])), UploadedFile("b.nc", b"")]
    with pytest.raises(UnreadableInputError, match=r"b.nc is empty \(0 bytes\)"):
        RequestScene(files)
    RequestScene([files[0], UploadedFile("s2.tif.aux.xml", b"")]).close()


def test_a_snap_beam_dimap_product_reads_its_band_files_and_not_its_tie_point_grids(tmp_path):
    """SNAP's default output zipped: the .dim, its .data folder of ENVI band files, and tie_point_grids/ whose
    ``elevation_angle`` (degrees) would be taken for an elevation band in metres by its name."""
    from rasterio.transform import from_origin as origin

    def envi(name: str, data: np.ndarray, description: str) -> dict[str, bytes]:
        path = tmp_path / f"{name}.img"
        with rasterio.open(path, "w", driver="ENVI", count=1, width=16, height=16, dtype="float32", crs=UTM,
                           transform=origin(500000, 5000000, 10, 10)) as dst:
            dst.write(data, 1)
            dst.set_band_description(1, description)
        return {f"{name}.img": path.read_bytes(), f"{name}.hdr": path.with_suffix(".hdr").read_bytes()}

    linear = RNG.uniform(0.01, 0.3, (2, 16, 16)).astype(np.float32)
    members = {"S1_Cal_TC.dim": b"<Dimap_Document/>", "S1_Cal_TC.data/vector_data/pins.csv": b"Name\tX\tY"}
    for i, pol in enumerate(("VV", "VH")):
        members |= {f"S1_Cal_TC.data/{n}": b for n, b in envi(f"Sigma0_{pol}", linear[i], f"Sigma0_{pol}").items()}
    members |= {f"S1_Cal_TC.data/tie_point_grids/{n}": b
                for n, b in envi("elevation_angle", np.full((16, 16), 38.5, np.float32), "elevation_angle").items()}
    scene, _, values, _ = read([UploadedFile("S1_Cal_TC.zip", zipped(members))], ["VV", "VH"])
    assert scene.canonical_bands == ["VV", "VH"]
    np.testing.assert_allclose(values, 10 * np.log10(linear), rtol=1e-5)
    assert sorted(scene.archives[0].report()["skipped"]) == [
        "S1_Cal_TC.data/tie_point_grids/elevation_angle.hdr", "S1_Cal_TC.data/tie_point_grids/elevation_angle.img",
        "S1_Cal_TC.data/vector_data/pins.csv"]  # the .dim is read for its bands' scaling (test_dimap.py)


def test_a_raster_placed_by_ground_control_points_or_rpcs_is_refused_saying_how_to_grid_it(malformed):
    """A Sentinel-1 product SNAP calibrated but did not terrain-correct: ground control points, no geotransform.
    Before, it was read on an identity grid and answered with no CRS: a flood mask that said nowhere."""
    from mapex_serve.inputs import NotOnAGridError

    with pytest.raises(NotOnAGridError, match="by 4 ground control points.*gdalwarp -t_srs"):
        RequestScene([UploadedFile("S1A_Cal.tif", malformed["radar geometry"].content)])
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=1, height=8, width=8, dtype="uint16") as dst:
            dst.write(reflectance((1, 8, 8)))
            dst.update_tags(ns="RPC", LINE_OFF="0", SAMP_OFF="0", LAT_OFF="50", LONG_OFF="10", HEIGHT_OFF="0",
                            LINE_SCALE="1", SAMP_SCALE="1", LAT_SCALE="1", LONG_SCALE="1", HEIGHT_SCALE="1",
                            LINE_NUM_COEFF=" ".join(["1"] * 20), LINE_DEN_COEFF=" ".join(["1"] * 20),
                            SAMP_NUM_COEFF=" ".join(["1"] * 20), SAMP_DEN_COEFF=" ".join(["1"] * 20))
        rpc = mem.read()
    with pytest.raises(NotOnAGridError, match="RPCs"):
        RequestScene([UploadedFile("B04.tif", rpc)])
    with MemoryFile() as mem:  # no georeferencing at all: read, and answered, in pixels
        with mem.open(driver="GTiff", count=1, height=8, width=8, dtype="uint16") as dst:
            dst.write(reflectance((1, 8, 8)))
        RequestScene([UploadedFile("B04.tif", mem.read())]).close()


def test_srtm_and_nasadem_hgt_tiles_are_elevation_by_their_format():
    """An ``.hgt`` tile holds big-endian int16 metres and nothing else; GDAL's SRTMHGT driver places it by its name
    (its south-west corner). NASADEM ships each in a ZIP of its own."""
    from mapex_serve.predict import UnreadableRasterError, unreadable_as_400

    metres = (RNG.integers(-20, 3000, (1201, 1201))).astype(">i2")
    metres[0, :10] = -32768  # a void
    scene, reader, values, reasons = read([UploadedFile("N51W001.hgt", metres.tobytes())], ["DEM"])
    assert rule_of(scene, "DEM") == "SRTM / NASADEM .hgt elevation tile" and scene.band("DEM").dataset.crs == "EPSG:4326"
    np.testing.assert_array_equal(values[0][reasons == 0], metres.astype(np.float32)[reasons == 0])
    assert (reasons[0, :10] != 0).all()
    nasadem = UploadedFile("NASADEM_HGT_n51w001.zip", zipped({"n51w001.hgt": metres.tobytes()}))
    assert RequestScene([nasadem]).canonical_bands == ["DEM"]
    with pytest.raises(UnreadableRasterError, match="N51W001.hgt"), unreadable_as_400():
        RequestScene([UploadedFile("dem.hgt", metres.tobytes())])


@pytest.mark.parametrize("letter, stored", [("p", lambda db: 10 ** (db / 10)), ("a", lambda db: 10 ** (db / 20)),
                                            ("d", lambda db: db)])
def test_asf_hyp3_rtc_file_names_state_power_amplitude_or_decibel(letter, stored):
    """HyP3's RTC band files carry no unit; their names do (``gpuned``: gamma0, power). Before, the unit check asked
    for ``units=linear`` or ``units=amplitude``, and amplitude sent as linear was read at half its dB, silently."""
    db = RNG.uniform(-22, -5, (2, 16, 16)).astype(np.float32)
    files = [UploadedFile(f"S1A_IW_20230914T052201_DVP_RTC30_G_g{letter}uned_8C2F_{pol}.tif",
                          tif(stored(db[i]).astype(np.float32), nodata=0.0)) for i, pol in enumerate(("VV", "VH"))]
    scene, reader, values, _ = read(files, ["VV", "VH"])
    np.testing.assert_allclose(values, db, atol=1e-4)
    assert "ASF HyP3 RTC file name" in rule_of(scene, "VV")
    product = "S1A_IW_20230914T052201_DVP_RTC30_G_gpuned_8C2F"
    dem = tif(np.full((16, 16), 812.0, np.float32))  # the product's DEM and maps beside the bands: not SAR
    scene, _, _, _ = read([*files, UploadedFile(f"{product}_dem.tif", dem), UploadedFile(f"{product}_inc_map.tif",
                          tif(np.full((16, 16), 0.6, np.float32)))], ["VV", "VH"])
    assert scene.canonical_bands == ["VV", "VH", "DEM"]


def test_asf_hyp3_rtc_layover_and_shadow_map_masks_layover_and_shadow():
    """The ``_ls_map.tif`` of an unmasked (``gpuned``) HyP3 product sums flags (HyP3 RTC product guide): 1 tested,
    4 layover, 16 shadow, 2 and 8 slope conditions. Before, it was left unused, and radar shadow, as dark as water,
    came out as flood."""
    product = "S1A_IW_20230914T052201_DVP_RTC30_G_gpuned_8C2F"
    db = RNG.uniform(-22, -5, (16, 16)).astype(np.float32)
    ls_map = np.ones((16, 16), np.uint8)  # tested, neither
    ls_map[0, :4], ls_map[1, :3], ls_map[2, :2], ls_map[3, :5] = 5, 17, 21, 3  # layover, shadow, both, a slope only
    files = [UploadedFile(f"{product}_VV.tif", tif((10 ** (db / 10)).astype(np.float32), nodata=0.0)),
             UploadedFile(f"{product}_ls_map.tif", tif(ls_map))]
    scene, reader, values, reasons = read(files, ["VV"])
    assert reader.masked() == {"HyP3 RTC layover": 6, "HyP3 RTC radar shadow": 3}
    assert int((reasons != 0).sum()) == 9
    np.testing.assert_allclose(values[0][reasons == 0], db[reasons == 0], atol=1e-4)


NRB = "s1a-iw-nrb-20200103t170705-030639-0382d5-32tps"


def test_s1_nrb_files_are_read_in_the_quantity_and_scale_their_names_state_and_their_annotation_layers_are_not():
    """pyroSAR's S1_NRB processor (CEOS-ARD NRB) names its files ``...-vh-g-lin.tif`` (gamma0, linear) and
    ``-g-log`` (dB), and its noise power ``-np-vv.tif``: before, the first drew a 422 asking for units=linear and
    the noise power was read as VV by the word in its name."""
    db = RNG.uniform(-22, -5, (2, 16, 16)).astype(np.float32)
    noise = tif(np.full((16, 16), 0.002, np.float32))
    files = [UploadedFile(f"{NRB}-vv-g-lin.tif", tif((10 ** (db[0] / 10)).astype(np.float32))),
             UploadedFile(f"{NRB}-vh-g-log.tif", tif(db[1])), UploadedFile(f"{NRB}-np-vv.tif", noise)]
    scene, _, values, _ = read(files, ["VV", "VH"])
    np.testing.assert_allclose(values, db, atol=1e-4)
    assert rule_of(scene, "VV") == "S1-NRB file name (gamma0, linear power)"
    assert scene.canonical_bands == ["VV", "VH"]  # the noise power is no band


def test_a_zipped_s1_nrb_product_reads_its_gamma0_and_leaves_its_copies_vrts_and_annotation_out():
    """The product holds each polarisation four times (gamma0 and sigma0, linear and log, some of them VRTs of
    pixel functions, which are refused) and annotation layers: only gamma0 in linear power is read."""
    db = RNG.uniform(-22, -5, (2, 16, 16)).astype(np.float32)
    folder = "S1A_IW_NRB__1SDV_20200103T170705_030639_0382D5_32TPS_8090"
    pixel_function = b'<VRTDataset><VRTRasterBand subClass="VRTDerivedRasterBand"/></VRTDataset>'
    members = {f"{folder}/{folder}.xml": b"<product/>", f"{folder}/annotation/{NRB}-dm.tif": tif(np.zeros((16, 16),
               np.uint8)), f"{folder}/annotation/{NRB}-np-vv.tif": tif(np.full((16, 16), 0.002, np.float32))}
    for i, pol in enumerate(("vv", "vh")):
        linear = (10 ** (db[i] / 10)).astype(np.float32)
        members |= {f"{folder}/measurement/{NRB}-{pol}-g-lin.tif": tif(linear),
                    f"{folder}/measurement/{NRB}-{pol}-s-lin.tif": tif(linear * 0.9),
                    f"{folder}/measurement/{NRB}-{pol}-g-log.vrt": pixel_function}
    scene, _, values, _ = read([UploadedFile(f"{folder}.zip", zipped(members))], ["VV", "VH"])
    np.testing.assert_allclose(values, db, atol=1e-4)
    report = scene.archives[0].report()
    assert sorted(report["read"]) == sorted(f"{NRB}-{p}-g-lin.tif" for p in ("vv", "vh"))
    assert len(report["skipped"]) == 7


@pytest.mark.parametrize("mode", ["iw", "ew"])
def test_planetary_computer_sentinel1_rtc_assets_are_linear_gamma0_by_their_names(mode):
    """The Planetary Computer's ``sentinel-1-rtc`` assets (``measurement/iw-vv.rtc.tiff``) hold terrain-corrected
    gamma0 in linear power and say so only in the catalogue: before, a 422 asked for ``units=linear``."""
    db = RNG.uniform(-22, -5, (2, 16, 16)).astype(np.float32)
    files = [UploadedFile(f"{mode}-{pol}.rtc.tiff", tif((10 ** (db[i] / 10)).astype(np.float32), nodata=-32768.0))
             for i, pol in enumerate(("vv", "vh"))]
    scene, _, values, _ = read(files, ["VV", "VH"])
    np.testing.assert_allclose(values, db, atol=1e-4)
    assert rule_of(scene, "VH") == "Planetary Computer sentinel-1-rtc file name (gamma0, linear power)"


@pytest.mark.parametrize("name, canonical", [
    ("srtm_elevation.tif", "DEM"), ("S2B_MSIL2A_20170924T093019_43_47_B02.tif", "B02"), ("download.B8A.tif", "B8A"),
    ("dem_slope.tif", None), ("copernicus_dem_aspect.tif", None), ("elevation_angle.img", None),
    ("S2_B08_ndvi.tif", None), ("B04_B03_ratio.tif", None), ("VV_change.tif", None),
    ("VV_mask.tif", None), ("B04_cloudmask.tif", None), ("MSK_DETFOO_B04.jp2", None), ("flood_VV_probability.tif", None),
    ("red_edge.tif", None), ("VV_minus_VH.tif", None), ("VV_VH.tif", None), ("S2_SCL_mask.tif", None),
    ("B04_median_2023.tif", "B04"), ("Copernicus_DSM_COG_10_N51_00_W001_00_DEM.tif", "DEM"),
])
def test_a_file_named_for_something_derived_from_a_band_is_not_that_band(name, canonical):
    """A single-band file is named by the words of its name, but not where another word says it is derived: a
    slope in degrees read as elevation in metres passes every plausibility check, a mask or a model's output made
    from VV is no VV, ``red_edge`` is no red, and a name with two bands in it names neither. A quality layer's name
    still names it (``S2_SCL_mask.tif``)."""
    from mapex_serve.rasters import identify_bands

    with MemoryFile(tif(np.full((1, 8, 8), 100, np.uint16))) as mem, mem.open() as src:
        (identity,) = identify_bands(src, name)
    assert identity.canonical == canonical, identity
    assert identity.quality == ("SCL" if "SCL" in name else None), identity


@pytest.mark.parametrize("name, canonical", [
    ("LC09_044034_20220111.SR_B5.tif", "B8A"), ("LE07_044034_20020111.SR_B4.tif", "B08"), ("download.SR_B5.tif", None),
])
def test_earth_engine_landsat_band_files_say_their_sensor_or_get_a_422(name, canonical):
    """Earth Engine names Landsat Collection 2 bands SR_B1..SR_B7 on every Landsat, and a download after its image
    (LC09_044034_20220111) unless it is computed ("download"). SR_B5 is near infrared on Landsat 8-9, short-wave
    infrared on Landsat 4-7: read as Sentinel-2's B5 (red edge) it was wrong either way."""
    from mapex_serve.rasters import LandsatSensorUnknownError

    files = [UploadedFile(name, tif(RNG.integers(8000, 20000, (16, 16)).astype(np.uint16)))]
    if canonical is None:
        with pytest.raises(LandsatSensorUnknownError, match="SR_B5 is a Landsat Collection 2 band name"):
            RequestScene(files)
        stacked = [UploadedFile("download.tif", tif(reflectance((3, 8, 8)), ["SR_B4", "SR_B3", "SR_B2"]))]
        with pytest.raises(LandsatSensorUnknownError):
            RequestScene(stacked)
        assert RequestScene(stacked, ["red", "green", "blue"]).canonical_bands == ["B04", "B03", "B02"]
        return
    scene, _, values, _ = read(files, [canonical], scale="0.0000275", offset="-0.2")
    assert scene.canonical_bands == [canonical] and "Landsat" in rule_of(scene, canonical)


def test_a_sentinel1_safe_is_refused_saying_to_calibrate_and_terrain_correct_it():
    """ESA's GRD SAFE holds uncalibrated DN in radar geometry: no band of it is backscatter on a map grid."""
    safe = "S1A_IW_GRDH_1SDV_20240101T053000_20240101T053025_051900_064500_ABCD.SAFE"
    data = zipped({f"{safe}/manifest.safe": b"<xfdu/>", f"{safe}/measurement/s1a-iw-grd-vv-001.tiff": tif(
        RNG.integers(0, 500, (1, 8, 8)).astype(np.uint16)), f"{safe}/annotation/s1a-iw-grd-vv-001.xml": b"<product/>"})
    with pytest.raises(UnreadableArchiveError, match=f"{safe} is a Sentinel-1 product.*Terrain Correction"):
        RequestScene([UploadedFile("S1A.zip", data)], max_unpacked=LIMIT)


def test_a_safe_band_file_sent_alone_takes_the_offset_its_sensing_date_implies_or_asks_for_it():
    """A JP2 copied out of a SAFE says nothing of its values. From 2022-01-25 every product has processing
    baseline 04.00's offset of -1000: read without it, reflectance was 0.1 too high, silently. Before that day only
    a reprocessed product has it, which the file cannot say: a 422 asking for offset=."""

    dn = RNG.integers(1500, 5000, (16, 16)).astype(np.uint16)
    recent = [UploadedFile("T33UUP_20240830T100559_B04_10m.jp2", jp2(dn, 10))]
    scene, _, values, _ = read(recent, ["B04"])
    np.testing.assert_allclose(values[0], (dn - 1000) / 10000, atol=1e-6)
    assert "less 1000: a SAFE band file sensed from 2022-01-25 on" in scene.band("B04").conversion.steps[0]
    older = [UploadedFile("T33UUP_20200830T100559_B04.jp2", jp2(dn, 10))]
    with pytest.raises(UnitError, match="sensed before 2022-01-25.*pass scale=0.0001&offset=-0.1"):
        read(older, ["B04"])
    _, _, values, _ = read(older, ["B04"], offset="-0.1", scale="0.0001")
    np.testing.assert_allclose(values[0], (dn - 1000) / 10000, atol=1e-6)
    _, _, values, _ = read([UploadedFile("B04.jp2", jp2(dn, 10))], ["B04"])  # not a SAFE's name: as before
    np.testing.assert_allclose(values[0], dn / 10000, atol=1e-6)



def test_zero_in_integer_reflectance_that_declares_no_nodata_is_no_data():
    """A SAFE's band file sent alone holds 0 outside the swath and declares no nodata (the product's metadata says
    0 is NODATA); Earth Engine writes the pixels a user masked (clouds) as 0. Read as reflectance they were dark
    pixels (-0.1 once offset) that the model took for real ones. Now they are masked and counted; floats, elevations
    and files that declare their nodata are read as before."""
    dn = RNG.integers(1500, 5000, (3, 16, 16)).astype(np.uint16)
    dn[:, :, :4] = 0  # outside the swath, or masked by the user
    for files in ([UploadedFile("T33UUP_20230914T100031_B04_10m.tif", tif(dn[0]))],
                  [UploadedFile("download.tif", tif(dn, ["B4", "B3", "B2"]))]):
        scene, reader, values, reasons = read(files, ["B04"])
        assert (reasons[:, :4] != 0).all() and (reasons[:, 4:] == 0).all()
        assert reader.masked() == {"nodata, mask or alpha band": 64}
        assert scene.band("B04").conversion.steps[-1].startswith("0 taken as no data: integer reflectance")
    declared = tif(dn[0], nodata=65535)
    _, _, _, reasons = read(declared, ["B04"], bands=["B04"])
    assert (reasons == 0).all()
    floats = (dn[0] / 10000).astype(np.float32)
    _, _, _, reasons = read(tif(floats, ["B04"], units=["reflectance"]), ["B04"])
    assert (reasons == 0).all()
    sea_level = np.zeros((16, 16), np.int16)
    sea_level[8:] = 120
    _, _, values, reasons = read(tif(sea_level, ["DEM"]), ["DEM"])
    assert (reasons == 0).all() and values[0, 0, 0] == 0


def test_planetary_computer_cogs_named_as_the_safe_names_its_band_files_take_the_same_offset(tmp_path):
    """The Planetary Computer serves each SAFE band file as a COG under its SAFE name, ``.tif`` for ``.jp2``, and does
    not harmonise the values: a scene sensed after 2022-01-25 read as plain x 10000 was 0.1 too bright, silently.
    A job reads it by its URL, whose path names the product and so its baseline, which settles older scenes too
    (ESA's reprocessed Collection-1, N0500, carries the offset; the original N0213 does not)."""

    dn = RNG.integers(1500, 5000, (16, 16)).astype(np.uint16)
    band = "T33UUP_20230914T100031_B04_10m.tif"
    _, _, values, _ = read([UploadedFile(band, tif(dn))], ["B04"])
    np.testing.assert_allclose(values[0], (dn - 1000) / 10000, atol=1e-6)
    older = "T33UUP_20200830T100559_B04_10m.tif"
    with pytest.raises(UnitError, match="sensed before 2022-01-25.*send it as a job by its URL"):
        read([UploadedFile(older, tif(dn))], ["B04"])
    for product, expected in (("S2A_MSIL2A_20200830T100559_N0213_R122_T33UUP_20200830T130000.SAFE", dn / 10000),
                              ("S2A_MSIL2A_20200830T100559_N0500_R122_T33UUP_20230120T130000.SAFE", (dn - 1000) / 10000)):
        folder = tmp_path / product / "GRANULE" / "L2A_T33UUP_A027000_20200830T100900" / "IMG_DATA" / "R10m"
        folder.mkdir(parents=True)
        (folder / older).write_bytes(tif(dn))
        with RequestScene([SourceFile(older, str(folder / older))]) as scene:
            reader = scene.reader(["B04"], UnitOverrides())
            values, _ = reader.read(Window(0, 0, 16, 16))
            np.testing.assert_allclose(values[0], expected, atol=1e-6)
            assert f"a SAFE band file its product's processing baseline {product[28:30]}.{product[30:32]}" in \
                scene.band("B04").conversion.steps[0]


# --- Planet ---------------------------------------------------------------------------------------

PS_ITEM = "20230912_175450_00_2439"
PLANET_SR_JSON = json.dumps({"atmospheric_correction": {"aot_source": "mod09cma", "atmospheric_correction_algorithm":
                             "6SV2.1", "atmospheric_model": "water_vapor_and_ozone", "luts_version": 3}})
PLANET_8B = ["Coastal Blue", "Blue", "Green I", "Green", "Yellow", "Red", "Red Edge", "NIR"]


@pytest.mark.parametrize("name, descriptions, tags, order", [
    (f"{PS_ITEM}_3B_AnalyticMS_SR.tif", None, None, {"B02": 0, "B03": 1, "B04": 2, "B08": 3}),
    (f"{PS_ITEM}_3B_AnalyticMS_SR_8b_harmonized_clip.tif", PLANET_8B, None,
     {"B01": 0, "B02": 1, "B03": 3, "B04": 5, "B05": 6, "B08": 7}),
    (f"{PS_ITEM}_3B_AnalyticMS_SR_8b.tif", None, None, {"B01": 0, "B02": 1, "B03": 3, "B04": 5, "B05": 6, "B08": 7}),
    ("20210913_211131_ssc15_u0001_analytic_SR.tif", None, None, {"B02": 0, "B03": 1, "B04": 2, "B08": 3}),
    ("flood_area.tif", None, {"TIFFTAG_IMAGEDESCRIPTION": PLANET_SR_JSON}, {"B02": 0, "B03": 1, "B04": 2, "B08": 3}),
])
def test_planet_surface_reflectance_is_named_by_planets_asset_table_and_read_as_reflectance_x10000(
        name, descriptions, tags, order):
    """Planet's files may carry their band names or none (users index them by position): the asset, told by the file
    name or by the atmospheric correction JSON every surface reflectance file carries, names them. Green I and
    yellow lie in no Sentinel-2 band and are left out."""
    stored = reflectance((8 if len(order) == 6 else 4, 16, 16))
    scene, _, values, _ = read(tif(stored, descriptions, tags=tags, nodata=0), list(order)) if name == "flood_area.tif" \
        else read([UploadedFile(name, tif(stored, descriptions, tags=tags, nodata=0))], list(order))
    assert scene.canonical_bands == list(order)
    np.testing.assert_allclose(values, stored[list(order.values())] / 10000, rtol=1e-6)
    conversion = scene.band("B02").conversion
    assert "Planet surface reflectance asset" in conversion.steps[0] and not conversion.assumed
    assert ("harmonized to Sentinel-2" in rule_of(scene, "B04")) == ("harmonized" in name)
    unused = [b.identity for b in scene.bands if not b.identity.used]
    assert [i.found for i in unused] == ([] if len(order) == 4 else [
        "Green I" if descriptions else "green_i", "Yellow" if descriptions else "yellow"])
    assert all("within no Sentinel-2 band" in i.rule for i in unused)


def test_planet_radiance_gets_a_422_unless_scaled_and_the_visual_asset_always():
    """Radiance x 100 read as reflectance x 10000 came out at about three times the reflectance, within the
    plausibility check's range: the service answered, wrongly. Now the analytic asset without _SR is refused with
    the surface reflectance asset to order, or read with the top-of-atmosphere coefficients the user passes."""

    stored = reflectance((4, 16, 16))
    radiance = [UploadedFile(f"{PS_ITEM}_3B_AnalyticMS.tif", tif(stored, ["blue", "green", "red", "nir"]))]
    with pytest.raises(UnitError, match="radiance x 100.*ortho_analytic_4b_sr.*reflectanceCoefficient"):
        read(radiance, ["B02", "B03", "B04"])
    coefficients = {"B02": 2.1e-5, "B03": 2.3e-5, "B04": 2.7e-5}
    _, _, values, _ = read(radiance, list(coefficients), scale=",".join(f"{k}:{v}" for k, v in coefficients.items()))
    np.testing.assert_allclose(values, stored[:3] * np.array(list(coefficients.values()))[:, None, None], rtol=1e-5)
    visual = [UploadedFile(f"{PS_ITEM}_3B_Visual.tif", tif(RNG.integers(0, 255, (3, 16, 16)).astype(np.uint8)))]
    with pytest.raises(UnitError, match="display imagery.*ortho_analytic_4b_sr"):
        read(visual, ["B04", "B03", "B02"])
    renamed = [UploadedFile("20230912_175450_scene.tif", tif(stored))]  # not a Planet name, no JSON: as before
    with pytest.raises(BandNamesMissingError):
        read(renamed, ["B02"])


@pytest.mark.parametrize("udm2_name, descriptions", [
    (f"{PS_ITEM}_3B_udm2_clip.tif", None),
    ("composite_udm2.tif", None),
    ("mask.tif", ["clear", "snow", "shadow", "haze_light", "haze_heavy", "cloud", "confidence", "udm1"]),
])
def test_planet_udm2_masks_cloud_shadow_and_heavy_haze_and_keeps_snow_and_haze(udm2_name, descriptions):
    stored = reflectance((4, 20, 20))
    classes = np.zeros((8, 20, 20), np.uint8)
    classes[0] = 1  # clear, except below
    for band, rows in ((5, slice(0, 2)), (2, slice(2, 3)), (4, slice(3, 4)), (1, slice(4, 6)), (3, slice(6, 8))):
        classes[band, rows], classes[0, rows] = 1, 0  # cloud, shadow, heavy haze, snow, light haze
    classes[6] = 80  # confidence
    files = [UploadedFile(f"{PS_ITEM}_3B_AnalyticMS_SR_clip.tif", tif(stored, nodata=0)),
             UploadedFile(udm2_name, tif(classes, descriptions))]
    scene, reader, values, reasons = read(files, ["B02", "B03", "B04", "B08"])
    assert reader.masked() == {"UDM2 cloud": 40, "UDM2 cloud shadow": 20, "UDM2 heavy haze": 20}
    assert (reasons[:4] != 0).all() and (reasons[4:] == 0).all()
    np.testing.assert_allclose(values[:, 4:], stored[:, 4:] / 10000, rtol=1e-6)
    assert sorted(b.identity.quality for b in scene.quality_bands()) == ["UDM2_CLOUD", "UDM2_HEAVY_HAZE", "UDM2_SHADOW"]


def test_planet_legacy_udm_bits():
    stored = reflectance((4, 16, 16))
    udm = np.zeros((16, 16), np.uint8)
    udm[0], udm[1, :4], udm[2, :2] = 1, 2, 4  # blackfill, cloud, missing data in band 1
    files = [UploadedFile(f"{PS_ITEM}_3B_AnalyticMS_SR.tif", tif(stored)),
             UploadedFile(f"{PS_ITEM}_3B_AnalyticMS_DN_udm.tif", tif(udm))]
    _, reader, _, _ = read(files, ["B02", "B03", "B04", "B08"])
    assert reader.masked() == {"Planet UDM blackfill": 16, "Planet UDM cloud": 4,
                               "Planet UDM missing or suspect data in band 1": 2}


@pytest.mark.parametrize("name", ["1465-1146_quad.tif", "planet_medres_normalized_analytic_2021-06_mosaic_"
                                  "1465-1146_quad.tif"])
def test_a_planet_basemap_quad_reads_blue_green_red_nir_and_its_alpha_as_no_data(name):
    """Planet's basemap quads (NICFI's tropical basemaps among them) carry no band names: the Basemaps API's file name
    says what they are, 16-bit blue, green, red, near infrared and alpha, in Web Mercator. They were refused for their
    names; a user naming them as a Planet scene's red, green, blue read blue as red."""
    stored = reflectance((5, 16, 16))
    stored[4] = 65535
    stored[4, :3] = 0  # the quad's edge, beyond the mosaic: transparent
    quad = tif(stored, crs="EPSG:3857", pixel=4.777, origin=(-5000000, 0))
    scene, reader, values, reasons = read([UploadedFile(name, quad)], ["B04", "B03", "B02", "B08"])
    np.testing.assert_allclose(values[:, 3:], stored[[2, 1, 0, 3], 3:] / 10000, rtol=1e-6)
    assert reader.masked() == {"alpha band: no data": 3 * 16} and (reasons[:3] != 0).all()
    assert rule_of(scene, "B04") == "Planet surface reflectance basemap quad (by its file name): band 3 of 5 in " \
                                    "Planet's asset table (red)"
    visual = tif(RNG.integers(0, 255, (4, 16, 16)).astype(np.uint8), crs="EPSG:3857")
    with pytest.raises(UnitError, match="visual basemap quad.*display imagery.*planet_medres_normalized_analytic"):
        read([UploadedFile(name, visual)], ["B04", "B03", "B02"])


def test_a_planet_order_zip_reads_its_surface_reflectance_with_its_udm2_and_leaves_its_metadata():
    """What the Orders API delivers: a ZIP of ``PSScene/`` with the assets, their JSON and XML, and a manifest."""
    stored = reflectance((8, 16, 16))
    udm2 = np.zeros((8, 16, 16), np.uint8)
    udm2[0], udm2[5, :2], udm2[0, :2] = 1, 1, 0
    order = zipped({"manifest.json": b'{"name": "", "files": []}',
                    f"PSScene/{PS_ITEM}_3B_AnalyticMS_SR_8b_clip.tif": tif(stored, nodata=0),
                    f"PSScene/{PS_ITEM}_3B_udm2_clip.tif": tif(udm2),
                    f"PSScene/{PS_ITEM}_metadata.json": b'{"id": "20230912_175450_00_2439"}',
                    f"PSScene/{PS_ITEM}_3B_AnalyticMS_8b_metadata_clip.xml": b"<ps:EarthObservation/>"})
    scene = RequestScene([UploadedFile("order.zip", order)], max_unpacked=LIMIT)
    assert scene.canonical_bands == ["B01", "B02", "B03", "B04", "B05", "B08"]
    reader = scene.reader(["B04", "B03", "B02"], UnitOverrides())
    values, _ = reader.read(Window(0, 0, 16, 16))
    assert reader.masked() == {"UDM2 cloud": 32}
    np.testing.assert_allclose(values[:, 2:], stored[[5, 3, 1], 2:] / 10000, rtol=1e-6)


@pytest.mark.parametrize("name, canonical", [
    ("ALPSMLC30_N051W001_DSM.tif", "DEM"), ("ALPSMLC30_N051W001_MSK.tif", None),  # JAXA AW3D30 and its mask
    ("N51W001_FABDEM_V1-2.tif", "DEM"), ("USGS_13_n52w001_20230314.tif", "DEM"), ("USGS_1_n40w106.tif", "DEM"),
    ("USGS_1M_16_x64y458_IN_Statewide_2017.tif", "DEM"), ("ASTGTMV003_N51W001_dem.tif", "DEM"),
    ("ASTGTMV003_N51W001_num.tif", None), ("n50w005_elv.tif", "DEM"), ("output_COP30.tif", "DEM"),
    ("NASADEM_HGT_n51w001.tif", "DEM"), ("lidar_dsm.tif", "DEM"), ("dtm_slope.tif", None),
])
def test_elevation_tiles_are_named_by_their_products_file_names(name, canonical):
    """The global DEMs' tiles carry no band name: JAXA's AW3D30 calls its surface DSM, FABDEM its own name, USGS
    3DEP only resolution and corner. Each got a 422 asking for bands=; their masks and counts stay unnamed."""
    from mapex_serve.rasters import identify_bands

    with MemoryFile(tif(np.full((8, 8), 812.5, np.float32))) as mem, mem.open() as src:
        (identity,) = identify_bands(src, name)
    assert identity.canonical == canonical, identity.rule


@pytest.mark.parametrize("description", [None, "VV"])
def test_opera_rtc_s1_bursts_are_linear_gamma0_and_their_mask_removes_layover_and_shadow(description):
    """OPERA RTC-S1 files hold gamma0 in linear power, which the name implies and the file does not state: a 422
    asked for units=linear. Its mask is what keeps radar shadow, dark as water, out of a flood map."""
    burst = "OPERA_L2_RTC-S1_T069-147170-IW1_20231010T121227Z_20231010T163008Z_S1A_30_v1.0"
    db = RNG.uniform(-22, -5, (2, 16, 16)).astype(np.float32)
    mask = np.zeros((16, 16), np.uint8)
    mask[0, :3], mask[1, :2], mask[2, :1], mask[15] = 1, 2, 3, 255
    files = [UploadedFile(f"{burst}_{pol}.tif", tif((10 ** (db[i] / 10)).astype(np.float32),
                                                    [description and pol], nodata=0.0))
             for i, pol in enumerate(("VV", "VH"))]
    files.append(UploadedFile(f"{burst}_mask.tif", tif(mask)))
    scene, reader, values, reasons = read(files, ["VV", "VH"])
    np.testing.assert_allclose(values[:, reasons == 0], db[:, reasons == 0], atol=1e-4)
    assert "OPERA RTC-S1 file name (gamma0, linear power)" in rule_of(scene, "VV")
    assert reader.masked() == {"OPERA RTC radar shadow": 3, "OPERA RTC layover": 2, "OPERA RTC layover and shadow": 1,
                               "OPERA RTC mask no data": 16}
    static = UploadedFile(burst.replace("RTC-S1", "RTC-S1-STATIC") + "_local_incidence_angle.tif",
                          tif(np.full((16, 16), 38.0, np.float32)))
    assert RequestScene([*files, static]).canonical_bands == ["VV", "VH"]


def test_archives_unpack_only_into_the_memory_budget_the_request_found_and_hold_what_they_unpacked(rgb):
    """The members' bytes are the scene's until it closes (``held_bytes``, reserved with its outputs); past the room
    left, unpacking stops: 503 while other requests hold the budget, 413 when it was the whole budget."""
    from mapex_serve.budget import MemoryBudgetError, OverBudgetError, Room

    data = zipped(rgb)
    members = sum(len(v) for v in rgb.values())
    scene = RequestScene([UploadedFile("download.zip", data)], max_unpacked=LIMIT, room=Room(10 * members, 10 * members))
    assert scene.held_bytes == members and scene.canonical_bands == ["B04", "B03", "B02"]
    assert all(m.content == b"" for m in scene.archives[0].files)  # let go once opened; the report keeps the names
    assert scene.archives[0].report()["read"] == list(rgb)
    with pytest.raises(MemoryBudgetError, match="unpacking download.zip.*retry shortly"):
        RequestScene([UploadedFile("download.zip", data)], max_unpacked=LIMIT, room=Room(members // 2, 10 * members))
    with pytest.raises(OverBudgetError, match="unpacking download.zip.*whole memory budget"):
        RequestScene([UploadedFile("download.zip", data)], max_unpacked=LIMIT, room=Room(members // 2, members // 2))
    with pytest.raises(ArchiveTooLargeError):  # MAPEX_MAX_UPLOAD_MB binds first: 413 as before
        RequestScene([UploadedFile("download.zip", data)], max_unpacked=members // 2, room=Room(members, members))
    assert RequestScene([UploadedFile("download.B4.tif", rgb["download.B4.tif"])]).held_bytes == len(
        rgb["download.B4.tif"])  # a part not read where it arrived is copied too


# --- Digital Earth Australia ----------------------------------------------------------------------------

DEA_S2 = "ga_s2am_nbart_3-2-1_53JQJ_2020-10-31_final"


def dea_fmask(shape=(16, 16)) -> np.ndarray:
    """DEA's Fmask classes: 1 valid but in row 0 cloud (2), row 1 shadow (3), row 2 water (5), row 3 snow (4)."""
    fmask = np.ones(shape, np.uint8)
    fmask[0], fmask[1], fmask[2], fmask[3] = 2, 3, 5, 4
    return fmask


@pytest.mark.parametrize("names", [
    ["nbart_red", "nbart_nir_1", "nbart_swir_2", "nbart_swir_3", "oa_fmask"],  # ds.rio.to_raster() of dc.load()
    ["red", "nir_1", "swir_2", "swir_3", "fmask"],  # the same loaded by DEA's aliases
])
def test_a_dea_sentinel2_export_reads_swir_2_as_b11_and_its_fmask_as_classes(names):
    """DEA counts Sentinel-2's SWIR bands from 2: nbart_swir_2 (alias swir_2) is B11, nbart_swir_3 B12. Before, the
    alias swir_2 was read as B12 (2.2 um, as Landsat counts) and the rest was unknown; DEA's fmask holds Fmask's
    classes, which read as HLS's Fmask bits masked every valid pixel (1: bit 0, cirrus)."""
    dn = RNG.integers(300, 4000, (4, 16, 16)).astype(np.int16)
    data = np.concatenate([dn, dea_fmask()[None].astype(np.int16)])
    scene, reader, values, _ = read(tif(data, names, nodata=-999), ["B11", "B12"])
    np.testing.assert_allclose(values, dn[2:] / 10000, rtol=1e-6)
    assert "Digital Earth Australia Sentinel-2" in rule_of(scene, "B11")
    assert reader.masked() == {"DEA Fmask cloud": 16, "DEA Fmask cloud shadow": 16}  # water and snow stay valid


def test_a_dea_s2cloudless_probability_masks_above_s2cloudless_s_04():
    """DEA's ARD carries s2cloudless's probability beside its mask (``oa_s2cloudless_prob``, 0-1): loaded with the
    bands (dc.load(...).rio.to_raster(), one float type for all), it was an unknown band, left unused; its band file
    (``..._final_s2cloudless-prob.tif``) the same. It masks above 0.4, or the request's cut."""
    dn = RNG.integers(300, 4000, (2, 16, 16)).astype(np.float64)
    prob = np.full((1, 16, 16), 0.05)
    prob[0, :2], prob[0, 2] = 0.9, 0.4  # clouds; 0.4 itself is kept
    data = np.concatenate([dn, prob])
    _, reader, _, reasons = read(tif(data, ["nbart_swir_2", "nbart_swir_3", "oa_s2cloudless_prob"], nodata=-999.0),
                                 ["B11", "B12"])
    assert reader.masked() == {"Digital Earth Australia s2cloudless probability above 0.4": 32}
    assert (reasons[2:] == 0).all()
    files = [UploadedFile(f"{DEA_S2}_band11.tif", tif(dn[0].astype(np.int16), nodata=-999)),
             UploadedFile(DEA_S2.replace("nbart", "oa") + "_s2cloudless-prob.tif", tif(prob.astype(np.float32)))]
    _, reader, _, _ = read(files, ["B11"], mask_threshold="0.01")
    assert reader.masked() == {"Digital Earth Australia s2cloudless probability above 0.01": 16 * 16}


def test_dea_band_files_are_read_by_their_names_on_each_sensor():
    """eodatasets3 names DEA's band files after the sensor's band number (``..._final_band11.tif``, ``_8a.tif``):
    Sentinel-2's numbers on ga_s2*, Landsat's on ga_ls* (band05: 865 nm on Landsat 8, band04: 835 nm on Landsat 7)."""
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.int16)
    files = [UploadedFile(f"{DEA_S2}_band11.tif", tif(dn, nodata=-999)),
             UploadedFile(f"{DEA_S2}_8a.tif", tif(dn, nodata=-999)),
             UploadedFile(DEA_S2.replace("nbart", "oa") + "_fmask.tif", tif(dea_fmask(), nodata=0)),
             UploadedFile(DEA_S2.replace("nbart", "oa") + "_relative-slope.tif", tif(dn.astype(np.float32)))]
    scene, reader, _, _ = read(files, ["B11", "B8A"])
    assert reader.masked() == {"DEA Fmask cloud": 16, "DEA Fmask cloud shadow": 16}
    assert "ga_s2am in its name" in rule_of(scene, "B11")
    landsat = [UploadedFile("ga_ls8c_nbart_3-2-1_090084_2020-01-05_final_band05.tif", tif(dn, nodata=-999)),
               UploadedFile("ga_ls7e_nbart_3-2-1_090084_2020-01-06_final_band04.tif", tif(dn, nodata=-999))]
    scene = RequestScene(landsat)
    assert [(b.identity.canonical, b.identity.found) for b in scene.bands] == [("B8A", "band05"), ("B08", "band04")]


def test_a_dea_measurement_whose_band_depends_on_the_sensor_is_refused_where_the_file_does_not_say_it():
    from mapex_serve.dea import DeaNameError

    data = RNG.integers(300, 4000, (2, 16, 16)).astype(np.int16)
    with pytest.raises(DeaNameError, match="B11 .1610 nm. on Sentinel-2, 2200 nm .B12. on Landsat.*ga_s2am_nbart"):
        RequestScene([UploadedFile("export.tif", tif(data, ["nbart_red", "nbart_swir_2"]))])
    scene = RequestScene([UploadedFile("ga_s2bm_export.tif", tif(data, ["nbart_red", "nbart_swir_2"]))])
    assert [b.identity.canonical for b in scene.bands] == ["B04", "B11"]
    with pytest.raises(DeaNameError, match="865 nm on Landsat 8-9"):
        RequestScene([UploadedFile("export.tif", tif(data, ["nbart_nir", "nbart_swir_1"]))])


def test_a_fmask_band_with_no_data_0_is_deas_classes_and_hls_fmask_stays_bits():
    """HLS's Fmask fill is 255, DEA's no data 0 (its product definitions): a band named fmask tells them apart."""
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    _, reader, _, _ = read([UploadedFile("B11.tif", tif(dn)), UploadedFile("fmask.tif", tif(dea_fmask(), nodata=0))],
                           ["B11"])
    assert reader.masked() == {"DEA Fmask cloud": 16, "DEA Fmask cloud shadow": 16}
    _, reader, _, _ = read([UploadedFile("B11.tif", tif(dn)), UploadedFile("fmask.tif", tif(dea_fmask(), nodata=255))],
                           ["B11"])
    assert set(reader.masked()) == {"Fmask cirrus", "Fmask cloud", "Fmask adjacent to cloud or shadow"}


# --- cloud masks of Earth Engine and Sentinel Hub ------------------------------------------------------------


def test_earth_engines_qa60_masks_opaque_clouds_and_cirrus():
    """An Earth Engine download of COPERNICUS/S2_SR_HARMONIZED with its QA60 (bit 10 opaque clouds, bit 11 cirrus):
    before, QA60 was an unknown band, left unused, and the clouds were read as land."""
    qa60 = np.zeros((16, 16), np.uint16)
    qa60[0], qa60[1] = 1 << 10, 1 << 11
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    files = [UploadedFile("download.B11.tif", tif(dn)), UploadedFile("download.QA60.tif", tif(qa60))]
    _, reader, _, reasons = read(files, ["B11"])
    assert reader.masked() == {"QA60 opaque cloud": 16, "QA60 cirrus": 16}
    assert (reasons[2:] == 0).all()


def test_earth_engines_msk_classi_bands_mask_opaque_clouds_and_cirrus_not_snow():
    """Earth Engine's Sentinel-2 images carry ESA's cloud classification as bands (0 no clouds, 1 clouds) since
    baseline 04.00; a download ZIP holds each as a file: download.MSK_CLASSI_OPAQUE.tif."""
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    layers = {name: np.zeros((16, 16), np.uint8) for name in ("OPAQUE", "CIRRUS", "SNOW_ICE")}
    layers["OPAQUE"][0], layers["CIRRUS"][1], layers["SNOW_ICE"][2] = 1, 1, 1
    files = [UploadedFile("download.B11.tif", tif(dn)),
             *(UploadedFile(f"download.MSK_CLASSI_{name}.tif", tif(data)) for name, data in layers.items())]
    _, reader, _, reasons = read(files, ["B11"])
    assert reader.masked() == {"MSK_CLASSI opaque cloud": 16, "MSK_CLASSI cirrus": 16}
    assert (reasons[2:] == 0).all()  # snow and ice stay valid


def test_sentinel_hubs_clm_masks_clouds_and_its_no_data():
    """Sentinel Hub's CLM band (s2cloudless): 0 no clouds, 1 clouds, 255 no data (its Cloud Masks guide)."""
    clm = np.zeros((16, 16), np.float32)
    clm[0], clm[1] = 1, 255
    data = np.stack([RNG.uniform(0.02, 0.4, (16, 16)).astype(np.float32), clm])
    _, reader, _, _ = read(tif(data), ["B11"], bands=["B11", "CLM"], units="reflectance")
    assert reader.masked() == {"CLM cloud": 16, "CLM no data": 16}


def test_a_pixel_at_0_in_every_float_band_is_a_fill_not_black_ground_or_a_bright_radar_return():
    """Earth Engine exports masked pixels as 0 unless told a noData: the clouds a user masked before a float export
    were read as black ground (reflectance 0 in every band), Sentinel-1's masked swath edges as 0 dB, the brightest
    of returns, in both polarisations. Where every float band of reflectance or dB is exactly 0, the pixel is a
    fill; a 0 in one band alone is a value (a dark pixel clipped to 0), and a file declaring its nodata is left to
    it."""
    refl = RNG.uniform(0.02, 0.4, (2, 16, 16)).astype(np.float32)
    refl[:, :3] = 0  # masked before the export
    refl[0, 5] = 0  # one band's dark pixels only
    _, reader, values, reasons = read(tif(refl, ["B11", "B12"]), ["B11", "B12"], units="reflectance")
    assert reader.masked() == {"0 in every band: a fill (Earth Engine's masked pixels)": 3 * 16}
    assert (reasons[:3] != 0).all() and (reasons[3:] == 0).all()
    db = RNG.uniform(-25, -5, (2, 16, 16)).astype(np.float32)
    db[:, :, :2] = 0  # the masked swath edge
    _, reader, _, reasons = read(tif(db, ["VV", "VH"]), ["VV", "VH"])
    assert reader.masked() == {"0 in every band: a fill (Earth Engine's masked pixels)": 16 * 2}
    _, reader, _, _ = read(tif(refl, ["B11", "B12"], nodata=-9999.0), ["B11", "B12"], units="reflectance")
    assert reader.masked() == {}  # its nodata says what is missing: its zeros are values
    dem = np.zeros((1, 16, 16), np.float32)  # sea level is 0 m: a DEM's 0 is never a fill by this rule
    _, reader, _, _ = read(tif(np.concatenate([db, dem]), ["VV", "VH", "DEM"]), ["VV", "VH", "DEM"])
    assert reader.masked() == {"0 in every band: a fill (Earth Engine's masked pixels)": 16 * 2}


# --- cloud probabilities and clear scores, masked past a threshold ---------------------------------


def _rows(values, dtype) -> np.ndarray:
    """A 16 x 16 layer whose row i holds ``values[i]`` (the rest 0)."""
    layer = np.zeros((16, 16), dtype)
    layer[:len(values)] = np.asarray(values, dtype)[:, None]
    return layer


def test_cloud_score_plus_masks_below_googles_060_and_mask_threshold_moves_the_cut():
    """Earth Engine's Cloud Score+ linked to Sentinel-2 and downloaded (``download.cs_cdf.tif``, float 0..1, 1 clear):
    before, cs_cdf was an unknown band, left unused, and the clouds were read as land. Google's examples keep
    cs_cdf >= 0.60; a request moves the cut in the layer's own values."""
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    cs_cdf = _rows([0.1, 0.59, 0.6, 0.55, np.nan], np.float32) + np.float32(0.9) * (np.arange(16) >= 5)[:, None]
    files = [UploadedFile("download.B11.tif", tif(dn)), UploadedFile("download.cs_cdf.tif", tif(cs_cdf))]
    scene, reader, _, reasons = read(files, ["B11"])
    assert scene.quality_bands()[0].identity.quality == "CS_CDF"
    assert reader.masked() == {"Cloud Score+ clear likelihood below 0.6": 48, "NaN or infinite value": 16}
    assert (reasons[2] == 0).all() and (reasons[5:] == 0).all()  # 0.6 itself is clear, as gte(0.6) keeps it
    for stated in ("0.58", "cs_cdf:0.58", "CS_CDF:0.58"):
        _, reader, _, reasons = read(files, ["B11"], mask_threshold=stated)
        assert reader.masked() == {"Cloud Score+ clear likelihood below 0.58": 32, "NaN or infinite value": 16}
        assert (reasons[[0, 3]] != 0).all() and (reasons[1] == 0).all()


def test_sentinel_hubs_clp_and_sen2cors_cloud_probability_mask_above_their_producers_cut():
    """Sentinel Hub's CLP is s2cloudless's probability x 255, masked past 0.4 (102); Sen2Cor's cloud confidence (0-100 %,
    a SAFE's ``MSK_CLDPRB_20m.jp2``, Earth Engine's ``MSK_CLDPRB`` band, Sentinel Hub's L2A ``CLD``) past 50 %."""
    reflectance_band = RNG.uniform(0.02, 0.4, (16, 16)).astype(np.float32)
    clp = _rows([255, 103, 102, 0], np.float32)
    _, reader, _, reasons = read(tif(np.stack([reflectance_band, clp])), ["B11"], bands=["B11", "CLP"],
                                 units="reflectance")
    assert reader.masked() == {"Sentinel Hub cloud probability (s2cloudless) above 102": 32}
    assert (reasons[2:] == 0).all()
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    for name in ("download.MSK_CLDPRB.tif", "T33UUP_20230815T101031_MSK_CLDPRB_20m.tif", "CLD.tif"):
        _, reader, _, reasons = read([UploadedFile("B11.tif", tif(dn)), UploadedFile(name, tif(_rows([90, 51, 50],
                                                                                                       np.uint8)))],
                                     ["B11"])
        assert reader.masked() == {"Sentinel-2 L2A cloud probability (Sen2Cor, %) above 50": 32}, name
    two = [UploadedFile("B11.tif", tif(dn)), UploadedFile("CLD.tif", tif(_rows([90, 51], np.uint8))),
           UploadedFile("download.cs.tif", tif(_rows([0.2], np.float32) + np.float32(0.8)))]
    _, reader, _, reasons = read(two, ["B11"], mask_threshold="cld:95,cs:0.9")
    assert reader.masked() == {"Cloud Score+ clear score below 0.9": 15 * 16}  # CLD's 90 % kept under 95
    assert (reasons[0] == 0).all()


@pytest.mark.parametrize(("stated", "error", "message"), [
    ("0.5", MaskThresholdError,
     r"needs the request to read one cloud probability or clear score layer.*reads CS_CDF, MSK_CLDPRB"),
    ("SCL:0.5", MaskThresholdError, r"'SCL' is no cloud probability or clear score layer; accepted: CS \(0-1, below"),
    ("cs_cdf:6000", MaskThresholdError, r"mask_threshold 6000 for CS_CDF: its values run 0-1"),
    ("CLP:80", MaskThresholdError, r"names CLP, which the request does not read; it reads CS_CDF, MSK_CLDPRB"),
    ("cs_cdf:high", UnitError, r"mask_threshold=cs_cdf:high: 'high' is not a number"),  # as scale=B04:high
])
def test_a_mask_threshold_that_cannot_apply_is_a_422_naming_the_layers(stated, error, message):
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    files = [UploadedFile("B11.tif", tif(dn)), UploadedFile("download.cs_cdf.tif", tif(_rows([0.9], np.float32))),
             UploadedFile("MSK_CLDPRB.tif", tif(_rows([10], np.uint8)))]
    with pytest.raises(error, match=message):
        read(files, ["B11"], mask_threshold=stated)


@pytest.mark.parametrize(("name", "layer", "message"), [
    # cs_cdf x 10000 as uint16 (to save bytes): above 0.6 everywhere, every cloud kept
    ("download.cs_cdf.tif", _rows([9000, 2000], np.uint16), r"runs 0-1, these values run 0-9000: send the layer"),
    # cast to integers to match its bands (Earth Engine exports one type): 0 or 1, all but the clearest masked
    ("download.cs_cdf.tif", _rows([1, 0], np.uint16), r"holds fractions 0-1, this one is stored as uint16"),
    # CLP divided by 255 to a probability: below 102 everywhere, every cloud kept
    ("CLP.tif", _rows([0.9, 0.05], np.float32), r"holds whole numbers 0-255, this one fractions \(rescaled to 0-1\?\)"),
])
def test_a_cloud_layer_rescaled_or_cut_to_integers_is_a_422_not_a_mask_silently_wrong(name, layer, message):
    dn = RNG.integers(300, 4000, (16, 16)).astype(np.uint16)
    with pytest.raises(MaskThresholdError, match=message):
        read([UploadedFile("B11.tif", tif(dn)), UploadedFile(name, tif(layer))], ["B11"])


# --- tiles of one export ---------------------------------------------------------------------------


def export_tiles(stored: np.ndarray, rows: tuple[int, ...], cols: tuple[int, ...], name=None, descriptions=None,
                 mask=None):
    """``stored`` (and its ``mask``) cut at ``rows`` x ``cols`` as Earth Engine splits an export:
    ``<prefix>-<row>-<col>.tif``."""
    edges_r, edges_c = (0, *rows, stored.shape[1]), (0, *cols, stored.shape[2])
    out = []
    for r0, r1 in pairwise(edges_r):
        for c0, c1 in pairwise(edges_c):
            file = (name or "s2_export-{r:010d}-{c:010d}.tif").format(r=r0, c=c0)
            out.append(UploadedFile(file, tif(stored[:, r0:r1, c0:c1], descriptions,
                                              origin=(500000 + 10 * c0, 5000000 - 10 * r0),
                                              mask=None if mask is None else mask[r0:r1, c0:c1])))
    return out


def test_the_tiles_of_a_split_earth_engine_export_are_read_as_the_one_raster_they_are():
    """Earth Engine splits a large export into ``<prefix>-<row>-<col>.tif`` files without band names. Sent together,
    each band was 'given' once a tile (or, with bands=, the names had to cover every file's bands); now the tiles
    are one raster, read as the whole export would be."""
    stored = reflectance((3, 40, 60))
    tiles = export_tiles(stored, (16,), (32,))
    scene, reader, values, _ = read(tiles, ["B04", "B03", "B02"], bands=["B04", "B03", "B02"])
    assert scene.mosaicked == [t.name for t in tiles] and (reader.width, reader.height) == (60, 40)
    _, _, whole, _ = read(tif(stored), ["B04", "B03", "B02"], bands=["B04", "B03", "B02"])
    np.testing.assert_array_equal(values, whole)
    described = export_tiles(stored, (20,), (), name="scene_{r}_{c}.tif", descriptions=["B04", "B03", "B02"])
    scene, _, values, _ = read(described, ["B04", "B03", "B02"])  # gdal_retile's tiles, named by description
    assert len(scene.mosaicked) == 2
    np.testing.assert_array_equal(values, whole)
    mask = np.full((40, 60), 255, np.uint8)
    mask[:5], mask[30:, 50:] = 0, 0  # the tiles' own masks, carried by the mosaic (a VRT drops them unless told)
    _, reader, _, reasons = read(export_tiles(stored, (16,), (32,), mask=mask), ["B04"], bands=["B04", "-", "-"])
    assert reader.masked() == {"nodata, mask or alpha band": 400} and ((reasons != 0) == (mask == 0)).all()


@pytest.mark.parametrize("case", ["a tile missing", "not Earth Engine's names", "other bands", "off the pixel grid"])
def test_files_that_are_not_the_tiles_of_one_raster_stay_separate(case):
    stored = reflectance((3, 40, 60))
    tiles = export_tiles(stored, (16,), (32,))
    if case == "a tile missing":  # described tiles with a hole: nothing places them in one raster
        tiles = export_tiles(stored, (16,), (32,), name="t_{r}_{c}.tif", descriptions=["B04", "B03", "B02"])[:3]
    elif case == "not Earth Engine's names":  # nothing says these undescribed files hold the same bands
        tiles = [UploadedFile(f"part{i}.tif", t.data) for i, t in enumerate(tiles)]
    elif case == "other bands":
        tiles = export_tiles(stored, (16,), (32,), name="t-{r:010d}-{c:010d}.tif", descriptions=["B04", "B03", "B02"])
        tiles[1] = UploadedFile(tiles[1].name, tif(stored[:, :16, 32:], ["B08", "B03", "B02"], origin=(500320, 5000000)))
    else:
        tiles[3] = UploadedFile(tiles[3].name, tif(stored[:, 16:, 32:], origin=(500325, 4999840)))
    with pytest.raises((BandNamesMissingError, DuplicateBandError, GridMismatchError)):
        read(tiles, ["B04", "B03", "B02"], bands=None if case in ("other bands", "a tile missing") else ["B04", "B03",
                                                                                                        "B02"])


def test_an_earth_engine_export_with_empty_tiles_skipped_has_its_holes_masked():
    """``skipEmptyTiles`` leaves out the files of empty tiles; the names still say where each file lies, so the
    others are read as the export with no data where the skipped ones were."""
    stored = reflectance((3, 40, 60))
    tiles = export_tiles(stored, (16,), (32,))
    skipped = [t for t in tiles if not t.name.endswith("-0000000000-0000000032.tif")]  # the top right one
    scene, reader, values, reasons = read(skipped, ["B04", "B03", "B02"], bands=["B04", "B03", "B02"])
    assert len(scene.mosaicked) == 3 and (reader.width, reader.height) == (60, 40)
    assert reader.masked() == {"nodata, mask or alpha band": 16 * 28}
    hole = np.zeros((40, 60), bool)
    hole[:16, 32:] = True
    assert ((reasons != 0) == hole).all()
    np.testing.assert_allclose(values[:, ~hole], stored[:, ~hole] / 10000, rtol=1e-6)
    misnamed = [UploadedFile(t.name.replace("-0000000016-", "-0000000008-"), t.data) for t in skipped]
    with pytest.raises((BandNamesMissingError, DuplicateBandError, GridMismatchError)):  # names that misplace them
        read(misnamed, ["B04", "B03", "B02"], bands=["B04", "B03", "B02"])


def test_a_job_reads_export_tiles_saved_on_its_volume_as_one_raster(tmp_path):

    stored = reflectance((3, 40, 60))
    files = []
    for t in export_tiles(stored, (16,), (32,)):
        (tmp_path / t.name).write_bytes(t.data)
        files.append(SourceFile(t.name, str(tmp_path / t.name)))
    scene = RequestScene(files, ["B04", "B03", "B02"])
    assert len(scene.mosaicked) == 4 and scene.canonical_bands == ["B04", "B03", "B02"]
    reader = scene.reader(["B04", "B03", "B02"], UnitOverrides())
    values, _ = reader.read(Window(0, 0, 60, 40))
    np.testing.assert_allclose(values, stored / 10000, rtol=1e-6)


@settings(max_examples=40, deadline=None, phases=[Phase.generate])
@given(rows=st.lists(st.integers(1, 39), min_size=1, max_size=3, unique=True),
       cols=st.lists(st.integers(1, 59), max_size=3, unique=True), order=st.randoms(use_true_random=False),
       drop=st.booleans())
def test_any_cut_of_an_export_sent_in_any_order_reads_as_the_whole_with_a_skipped_tile_masked(rows, cols, order, drop):
    """Cut anywhere, sent in any order, the tiles read as the whole export; with one left out (``skipEmptyTiles``),
    as the export with no data where it was, or as the rectangle the others cover."""
    stored = reflectance((2, 40, 60))
    tiles = export_tiles(stored, tuple(sorted(rows)), tuple(sorted(cols)))
    order.shuffle(tiles)
    if drop:
        tiles = tiles[1:]
    scene, reader, values, reasons = read(tiles, ["B11", "B12"], bands=["B11", "B12"])
    assert scene.mosaicked == ([t.name for t in tiles] if len(tiles) > 1 else [])
    covered = np.zeros((40, 60), bool)
    for tile in tiles:
        with MemoryFile(tile.data) as mem, mem.open() as src:
            r0, c0 = round((5000000 - src.transform.f) / 10), round((src.transform.c - 500000) / 10)
            covered[r0:r0 + src.height, c0:c0 + src.width] = True
    t = reader.grid.transform
    rows_read = slice(round((5000000 - t.f) / 10), round((5000000 - t.f) / 10) + reader.height)
    cols_read = slice(round((t.c - 500000) / 10), round((t.c - 500000) / 10) + reader.width)
    outside = covered.copy()
    outside[rows_read, cols_read] = False
    assert not outside.any()  # the grid holds every tile sent
    assert ((reasons == 0) == covered[rows_read, cols_read]).all()
    np.testing.assert_allclose(values[:, reasons == 0], stored[:, rows_read, cols_read][:, reasons == 0] / 10000,
                               rtol=1e-6)


@pytest.mark.parametrize("names", [["T33UUP_20230912T100031_TCI_10m.jp2"], ["download.TCI_R.tif", "download.TCI_G.tif",
                                                                           "download.TCI_B.tif"]])
def test_a_sentinel2_true_colour_image_is_told_to_send_the_bands_it_was_made_of(names):
    """A SAFE's TCI (or Earth Engine's TCI_R, _G, _B) is 8-bit display imagery: its bands have no names, and the 422
    asked for bands=red,green,blue, after which a second 422 said the values were display imagery. It says so at
    once now, and which files to send."""
    rgb = RNG.integers(1, 255, (3, 16, 16)).astype(np.uint8)
    files = ([UploadedFile(names[0], tif(rgb))] if len(names) == 1
             else [UploadedFile(n, tif(rgb[i])) for i, n in enumerate(names)])
    with pytest.raises(ImplausibleValuesError, match=r"TCI.* is Sentinel-2's true colour image \(TCI\): 8-bit display "
                                                     r"imagery.* send the B04, B03 and B02 band files"):
        RequestScene(files)
