import time

import numpy as np
import pytest
import torch

from mapex_serve.bands import BANDS, MODALITIES
from training.data import (
    LANDCOVER_CLASSES,
    S2_BANDS,
    SceneConfig,
    generate_batch,
    generate_scene,
    mosaic,
    smooth_field,
)
from training.data.signatures import EUROPE_SHARE

WATER, TREES, GRASSLAND, CROPLAND, BUILT_UP, BARE, WETLAND = range(7)
VEGETATED = [TREES, GRASSLAND, CROPLAND, WETLAND]


@pytest.fixture(scope="module")
def scenes():
    """200 synthetic scenes with every event switched on half the time."""
    return [generate_scene(np.random.default_rng(s), SceneConfig(flood_prob=0.5, burn_prob=0.5)) for s in range(200)]


def test_smooth_field_is_normalised_and_correlated():
    rng = np.random.default_rng(0)
    f = smooth_field(rng, (2, 64, 64), np.array([1.0, 8.0]))
    np.testing.assert_allclose(f.mean(axis=(1, 2)), 0, atol=1e-9)
    np.testing.assert_allclose(f.std(axis=(1, 2)), 1, atol=1e-9)
    lag1 = [np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1] for x in f]
    assert lag1[1] > 0.9 > lag1[0] > 0.3  # a longer correlation length is smoother


def test_scene_has_every_band_in_physical_units():
    s = generate_scene(0)
    assert set(s.bands) == set(BANDS)  # 13 S2 bands, VV, VH, DEM
    for name, x in s.bands.items():
        assert x.shape == (32, 32) and x.dtype == np.float32, name
    optical = np.stack([s.bands[b] for b in S2_BANDS])
    assert optical.min() >= 0 and optical.max() <= 1
    assert -40 < s.bands["VV"].mean() < 5 and s.bands["VH"].mean() < s.bands["VV"].mean()
    assert 150 < s.bands["DEM"].min() and s.bands["DEM"].max() < 1900
    assert s.landcover.dtype == np.uint8 and s.landcover.max() < len(LANDCOVER_CLASSES)
    assert s.flood.dtype == bool and s.burn.dtype == bool
    assert s.modality("rgb").shape == (3, 32, 32)
    np.testing.assert_array_equal(s.modality("SAR")[1], s.bands["VH"])


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = generate_scene(7), generate_scene(7), generate_scene(8)
    for name in a.bands:
        np.testing.assert_array_equal(a.bands[name], b.bands[name])
    np.testing.assert_array_equal(a.landcover, b.landcover)
    assert not np.array_equal(a.bands["B04"], c.bands["B04"])
    assert not np.array_equal(a.landcover, c.landcover)


def test_batch_scene_i_does_not_depend_on_batch_size():
    small, large = generate_batch(3, 2), generate_batch(3, 5)
    for m in MODALITIES:
        torch.testing.assert_close(small.inputs[m], large.inputs[m][:2], rtol=0, atol=0)
    assert torch.equal(small.landcover, large.landcover[:2])
    assert not torch.equal(large.inputs["RGB"][0], large.inputs["RGB"][1])
    assert not torch.equal(generate_batch(4, 2).inputs["RGB"], small.inputs["RGB"])


def test_batch_shapes_and_dtypes():
    cfg = SceneConfig(size=16)
    batch = generate_batch(0, 3, cfg)
    assert list(batch.inputs) == list(MODALITIES)
    for m, bands in MODALITIES.items():
        assert batch.inputs[m].shape == (3, len(bands), 16, 16) and batch.inputs[m].dtype == torch.float32
    assert batch.landcover.shape == (3, 16, 16) and batch.landcover.dtype == torch.int64
    assert batch.tile_class.shape == (3,) and batch.tile_class.dtype == torch.int64
    assert batch.flood.dtype == batch.burn.dtype == batch.has_burn.dtype == torch.bool
    assert batch.flood.shape == batch.burn.shape == (3, 16, 16) and batch.has_burn.shape == (3,)
    assert torch.equal(batch.has_burn, batch.burn.float().mean(dim=(1, 2)) >= 0.01)
    picked = generate_batch(0, 3, cfg, modalities=["sar", "rgb"])
    assert list(picked.inputs) == ["SAR", "RGB"]
    torch.testing.assert_close(picked.inputs["SAR"], batch.inputs["SAR"], rtol=0, atol=0)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="flood_prob"):
        SceneConfig(flood_prob=1.5)
    with pytest.raises(ValueError, match="n >= 1"):
        generate_batch(0, 0)


def test_water_is_low_flat_and_dark_in_nir(scenes):
    with_water = [s for s in scenes if (s.landcover == WATER).sum() >= 5]
    assert len(with_water) > 100
    for s in with_water:
        water, dem = s.landcover == WATER, s.bands["DEM"]
        assert dem[water].max() < np.median(dem)
        assert dem[water].max() - dem[water].min() < 1e-3  # a lake surface is flat
        clear = water & ~s.flood & ~s.cloud  # a cloud hides the water beneath it
        if clear.any():
            assert s.bands["B08"][clear].mean() < 0.05


def test_vegetation_is_greener_than_water(scenes):
    def ndvi(classes):
        masks = [np.isin(s.landcover, classes) & ~s.flood & ~s.burn for s in scenes]
        nir = np.concatenate([s.bands["B08"][m] for s, m in zip(scenes, masks, strict=True)])
        red = np.concatenate([s.bands["B04"][m] for s, m in zip(scenes, masks, strict=True)])
        return float(np.mean((nir - red) / (nir + red + 1e-6)))

    water, vegetation = ndvi([WATER]), ndvi([TREES, GRASSLAND, CROPLAND])
    assert vegetation > 0.3 and water < 0 and ndvi([TREES]) > ndvi([BUILT_UP])


def test_flooded_pixels_are_dark_in_sar_where_open_and_bright_under_trees(scenes):
    """Open flood water falls below the customary -15 dB VV threshold; flooded forest brightens (double bounce)."""
    flooded = [s for s in scenes if s.flood.any()]
    assert len(flooded) > 60

    def vv(cls, wet):
        return np.concatenate([s.bands["VV"][(s.flood == wet) & (s.landcover == cls)] for s in scenes])

    for cls in (GRASSLAND, CROPLAND, WETLAND):
        wet, dry = vv(cls, True), vv(cls, False)
        assert wet.size > 50, LANDCOVER_CLASSES[cls]
        assert (wet < -15).mean() > 0.75 and (dry < -15).mean() < 0.15, LANDCOVER_CLASSES[cls]
        assert np.median(wet) < np.median(dry) - 6, LANDCOVER_CLASSES[cls]
    assert np.median(vv(TREES, True)) > np.median(vv(TREES, False)) + 2  # +3 dB of double bounce
    assert all(not (s.flood & (s.landcover == WATER)).any() for s in scenes)


def test_burn_scars_are_bright_in_swir_and_dark_in_nir(scenes):
    burned = [s for s in scenes if s.burn.any()]
    assert len(burned) > 60
    assert all(np.isin(s.landcover[s.burn], VEGETATED).all() for s in burned)
    unburned = [np.isin(s.landcover, VEGETATED) & ~s.burn & ~s.flood & ~s.cloud for s in scenes]
    inside = [s.burn & ~s.cloud for s in scenes]

    def mean(band, masks):
        return float(np.concatenate([s.bands[band][m] for s, m in zip(scenes, masks, strict=True)]).mean())

    def nbr(masks):
        nir, swir = mean("B08", masks), mean("B12", masks)
        return (nir - swir) / (nir + swir)

    assert mean("B12", inside) - mean("B12", unburned) > 0.05
    assert mean("B08", unburned) - mean("B08", inside) > 0.1
    assert nbr(unburned) - nbr(inside) > 0.44  # dNBR: moderate-to-high severity (Key & Benson 2006)


def test_grassland_in_sar_is_brighter_in_vh_than_cropland_and_differs_by_parcel(scenes):
    """Generator v5: a closed sward sits above the arable mean in VH, and its parcels (cut or grazed on
    their own dates) differ, though less than crops do."""

    def vh(cls):
        return np.median(np.concatenate([s.bands["VH"][(s.landcover == cls) & ~s.flood & ~s.burn] for s in scenes]))

    assert vh(GRASSLAND) > vh(CROPLAND) + 0.2
    # Median VH of the grassland in each 16 px parcel, compared between parcels of the same scene:
    # 0.98 dB apart on average without parcel contrast (texture, incidence, speckle), 1.42 with it.
    gaps = []
    for s in scenes:
        medians = []
        for r, c in ((0, 0), (0, 16), (16, 0), (16, 16)):
            block = (slice(r, r + 16), slice(c, c + 16))
            grass = (s.landcover[block] == GRASSLAND) & ~s.flood[block] & ~s.burn[block]
            if grass.sum() >= 64:
                medians.append(np.median(s.bands["VH"][block][grass]))
        gaps += [abs(a - b) for i, a in enumerate(medians) for b in medians[i + 1:]]
    assert len(gaps) > 100 and np.mean(gaps) > 1.2, (len(gaps), np.mean(gaps))


def test_forest_under_snow_is_needle_leaf():
    """Generator v5: deciduous broadleaves are leafless in the snow season, so snowy scenes' canopies are
    needle-leaf, whose NIR plateau (~0.16) is below a broadleaf one (Rautiainen et al. 2018)."""

    def canopy_nir(snow_prob):
        config = SceneConfig(snow_prob=snow_prob, flood_prob=0, burn_prob=0, cloud_prob=0)
        nir = []
        for seed in range(100):
            s = generate_scene(np.random.default_rng(seed), config)
            green, swir = s.bands["B03"], s.bands["B11"]
            no_snow_seen = (green - swir) / (green + swir + 1e-6) < 0  # NDSI: the canopy, not the snow through it
            nir.append(s.bands["B08"][(s.landcover == TREES) & no_snow_seen])
        return float(np.median(np.concatenate(nir)))

    snowy, snow_free = canopy_nir(1.0), canopy_nir(0.0)
    assert snowy < 0.2 and snow_free - snowy > 0.05, (snowy, snow_free)


def test_class_balance_over_200_scenes(scenes):
    counts = np.bincount(np.concatenate([s.landcover.ravel() for s in scenes]), minlength=7)
    pixel_share = counts / counts.sum()
    tile_share = np.bincount([s.tile_class for s in scenes], minlength=7) / len(scenes)
    for name, px, tile in zip(LANDCOVER_CLASSES, pixel_share, tile_share, strict=True):
        print(f"{name:10s} pixels {px:.3f}  tiles {tile:.3f}")
    assert pixel_share.min() > 0.03
    # Trees, grassland, cropland and built-up share their land as Europe's does (EEA, CORINE accounts):
    # 200 scenes, each mostly one class, so within 0.08 of the target.
    four = pixel_share[[TREES, GRASSLAND, CROPLAND, BUILT_UP]] / pixel_share[[TREES, GRASSLAND, CROPLAND, BUILT_UP]].sum()
    target = np.array([EUROPE_SHARE[c] for c in ("trees", "grassland", "cropland", "built-up")])
    np.testing.assert_allclose(four, target, atol=0.08)
    assert (tile_share > 0.1).sum() >= 3 and tile_share[BUILT_UP] > 0.01  # built-up is rare, not absent


def test_generation_speed():
    generate_batch(0, 16)
    times = []
    for seed in range(10):
        start = time.perf_counter()
        generate_batch(seed, 16)
        times.append(time.perf_counter() - start)
    print(f"generate_batch(16 scenes, 32 px): median {1e3 * np.median(times):.1f} ms")


def test_a_mosaic_places_each_scene_in_its_cell_and_rejects_ragged_grids():
    scenes = [generate_scene(seed) for seed in range(6)]
    big = mosaic(scenes, columns=3)
    assert big.landcover.shape == (64, 96) and set(big.bands) == set(scenes[0].bands)
    assert np.array_equal(big.bands["B04"][32:, 64:], scenes[5].bands["B04"])
    assert np.array_equal(big.flood[:32, 32:64], scenes[1].flood)
    with pytest.raises(ValueError, match="do not fill rows of 4"):
        mosaic(scenes, columns=4)
    with pytest.raises(ValueError, match="share one size"):
        mosaic([scenes[0], generate_scene(0, SceneConfig(size=48))], columns=2)
