"""The demo specialists on REAL patches: the flood specialist on Sentinel-1, land cover on BigEarthNet.

Real labels are BigEarthNet's CORINE multi-labels, mapped to the synthetic classes by
``realdata.CORINE_TO_CLASS``. None of the real Sentinel-1 patches carries a water label, so the
flood figure is the share of pixels called water (a false alarm on every one), beside the
VV < -15 dB rule. A land-cover tile counts as right when its predicted class is among its
patch's labels; the baselines are the class present in most patches, predicted everywhere, and
an NDVI rule. The specialists are those of ``built_repo`` (the demo recipe with 100 training steps
a specialist; RGB and red-edge land cover and SWIR wildfire train through their backbone).

Each test first checks what must hold whatever the model learned (every patch read and mapped,
figures are shares, a specialist beats a class drawn at random); the issue's goal (beat the
baseline) is then checked, and where the demo does not reach it the test is marked xfail with
the measured figures in its reason, so that ``pytest -rx`` lists every goal not met.
"""

import numpy as np
import pytest
import realdata

CLASSES = 7


@pytest.fixture(scope="module")
def repo(built_repo):
    if not realdata.available():
        pytest.skip(f"the real BigEarthNet patches are not here ({realdata.BIGEARTHNET}): a fresh clone has no ../shared")
    return built_repo


def goal(met: bool, what: str) -> None:
    """The issue's goal: a pass when met, an xfail naming the figures when not."""
    if not met:
        pytest.xfail(f"goal not reached: {what}")


def test_every_real_patch_maps_to_the_synthetic_classes():
    if not realdata.available():
        pytest.skip(f"the real BigEarthNet patches are not here ({realdata.BIGEARTHNET})")
    patches = realdata.s2_patches() + realdata.s1_patches()
    assert len(patches) == 13
    for p in patches:
        assert p.classes, p.name  # an unmapped CORINE label raises KeyError
        assert all(x.shape == (120, 120) and np.isfinite(x).all() for x in p.bands.values()), p.name
    assert not any("water" in p.classes for p in realdata.s1_patches())


def test_no_real_patch_here_gives_a_pixel_water_label():
    """Why the flood figure is a false-alarm rate: no S1 patch has water in its labels or in its optical pair.

    Only one S1 patch has its paired S2 patch here (Portugal, 21 Dec 2017, the same day); its
    optical water mask covers about 7 of 14,400 pixels, too few to score an IoU of water on.
    """
    if not realdata.available():
        pytest.skip(f"the real BigEarthNet patches are not here ({realdata.BIGEARTHNET})")
    water = realdata.paired_water()
    print({k[-12:]: v for k, v in water.items()})
    assert len(water) == 4 and sum(v is not None for v in water.values()) == 1
    assert all(v is None or v < 0.01 for v in water.values()), f"a pair shows water: score the flood IoU on it ({water})"


def test_the_flood_specialist_calls_less_dry_land_water_than_the_vv_threshold(repo):
    f = realdata.flood_figures(repo)
    what = (f"real S1 without water: flood specialist calls {f['specialist_false_alarm']:.3f} of the pixels water, "
            f"VV < -15 dB {f['vv_threshold_false_alarm']:.3f} (per patch {np.round(f['specialist_per_patch'], 3)} "
            f"vs {np.round(f['vv_threshold_per_patch'], 3)})")
    print(what)
    assert f["patches"] == 4 and all(0 <= r <= 1 for r in f["specialist_per_patch"])
    assert 0.02 < f["vv_threshold_false_alarm"] < 0.3  # the rule's speckle false alarms on dry land
    goal(f["specialist_false_alarm"] < f["vv_threshold_false_alarm"], what)


@pytest.mark.parametrize("modality", ["RGB", "RED_EDGE", "NIR", "SWIR", "SAR"])
def test_each_landcover_specialist_beats_the_majority_class_on_real_labels(repo, modality):
    f = realdata.landcover_figures(repo, modality)
    ndvi = f" NDVI rule {f['ndvi_rule']:.3f}," if "ndvi_rule" in f else ""
    what = (f"landcover-{modality.lower()} on {f['tiles']} real tiles: {f['specialist']:.3f},{ndvi} "
            f"majority ({f['majority_class']}) {f['majority_baseline']:.3f}")
    print(what)
    patches = realdata.s1_patches() if modality == "SAR" else realdata.s2_patches()
    chance = float(np.mean([len(p.classes) / CLASSES for p in patches]))
    assert f["specialist"] > chance, f"{what}; a class drawn at random scores {chance:.3f}"
    goal(f["specialist"] > f["majority_baseline"], what)


def test_the_wildfire_specialist_calls_few_unburned_real_tiles_burned(repo):
    f = realdata.wildfire_figures(repo)
    what = (f"wildfire-swir on {f['tiles']} unburned real tiles: calls {f['specialist_false_alarm']:.3f} burned, "
            f"NBR < 0 rule {f['nbr_rule_false_alarm']:.3f}")
    print(what)
    assert f["specialist_false_alarm"] < 0.5  # better than a coin on tiles it has never seen burn
    goal(f["specialist_false_alarm"] <= f["nbr_rule_false_alarm"], what)
