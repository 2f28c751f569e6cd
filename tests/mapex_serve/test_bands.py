import pytest

from mapex_serve.bands import (
    BANDS,
    MODALITIES,
    band,
    bands_of,
    modalities_covered,
    modality_of,
    resolve_band,
    resolve_bands,
    resolve_modality,
)
from mapex_serve.errors import DuplicateBandError, MapexError, UnknownBandError, UnknownModalityError


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("red", "B04"), ("Red", "B04"), ("B4", "B04"), ("b04", "B04"), ("S2_B04", "B04"), ("s2-b4", "B04"),
        ("green", "B03"), ("blue", "B02"), ("nir", "B08"), ("B8", "B08"), ("b8a", "B8A"), ("nir08", "B8A"),
        ("swir1", "B11"), ("SWIR_1", "B11"), ("swir16", "B11"), ("swir2", "B12"), ("rededge1", "B05"),
        ("vv", "VV"), ("S1_VH", "VH"), ("vv_db", "VV"), ("elevation", "DEM"), ("dem", "DEM"), (" B02 ", "B02"),
    ],
)
def test_aliases_resolve_to_canonical_names(alias, canonical):
    assert resolve_band(alias) == canonical


def test_every_canonical_band_and_alias_resolves_to_itself():
    for b in BANDS.values():
        assert resolve_band(b.name) == b.name
        for alias in b.aliases:
            assert resolve_band(alias) == b.name


def test_unknown_band_lists_the_accepted_names():
    with pytest.raises(UnknownBandError) as err:
        resolve_band("infrared-ish")
    message = str(err.value)
    assert "infrared-ish" in message
    assert all(name in message for name in BANDS)
    assert "red" in message and "swir1" in message
    assert isinstance(err.value, MapexError) and isinstance(err.value, ValueError)


def test_duplicate_bands_are_refused():
    with pytest.raises(DuplicateBandError, match="B04"):
        resolve_bands(["red", "B4"])


def test_modality_groups_follow_the_design_brief():
    assert MODALITIES == {
        "RGB": ("B04", "B03", "B02"), "RED_EDGE": ("B05", "B06", "B07"), "NIR": ("B08", "B8A"),
        "SWIR": ("B11", "B12"), "SAR": ("VV", "VH"), "ELE": ("DEM",),
    }
    assert bands_of(["SWIR", "sar"]) == ("B11", "B12", "VV", "VH")
    assert modality_of("swir2") == "SWIR" and modality_of("B01") is None


def test_modalities_covered_by_the_real_sentinel2_crop_bands():
    # The shared 6-band crop holds B02,B03,B04,B07,B11,B12: RGB and SWIR complete, red edge not.
    assert modalities_covered(["B02", "B03", "B04", "B07", "B11", "B12"]) == ("RGB", "SWIR")
    assert modalities_covered(["vv", "vh", "elevation"]) == ("SAR", "ELE")


def test_modality_names_and_errors():
    assert resolve_modality("rgb") == "RGB" and resolve_modality("red-edge") == "RED_EDGE"
    assert resolve_modality("s1") == "SAR" and resolve_modality("dem") == "ELE"
    with pytest.raises(UnknownModalityError, match="RGB, RED_EDGE, NIR, SWIR, SAR, ELE"):
        resolve_modality("thermal")


def test_band_records_carry_scale_to_physical_units():
    assert band("red").scale == pytest.approx(1e-4) and band("red").unit == "reflectance"
    assert band("vv").scale == 1.0 and band("vv").unit == "dB"
    assert band("elevation").unit == "m"


def test_snap_sigma0_is_not_an_alias_of_vv_in_db():
    """SNAP writes ``Sigma0_VV`` as linear power: taken as dB it would silently wreck a flood answer."""
    with pytest.raises(UnknownBandError):
        resolve_band("sigma0_vv")
