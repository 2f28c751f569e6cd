"""SYNTHETIC multi-modal scenes: seeded, co-registered Sentinel-2, Sentinel-1 and DEM rasters with labels.

These are not real imagery, but they are rendered the way the real products are made, from the
published sensor figures in ``training/data/signatures.py`` (each with its source):

- terrain with the power spectrum of real topography and a median slope from plains to hills;
  water fills the lowest ground to a flat level, wetland lines it, floods rise a few metres over
  the low, flat ground next to it (height above the water), bare ground takes the high and steep;
- land cover in Europe's proportions (the EEA's CORINE accounts 2000-2018: forest most common, then
  arable land and pasture, built-up rare); cropland parcels bare or under residue and grass partly
  dry outside the growing season (Eurostat's winter soil cover);
- Sentinel-2 L2A reflectance from per-class spectra (water turbidity, burn scars, seasonal snow
  seen through forest canopies, residual haze, clouds and their shadows), sensor noise from the MSI SNR, the 20 m and 60 m bands averaged over
  their native footprint and put back on the 10 m grid, quantised to 1e-4 like L2A products;
- Sentinel-1 IW GRDH sigma0 per class and polarisation at the scene's incidence angle across the
  swath (and the local slope), cropland parcels differing by a few dB and grassland parcels by
  less (cut or grazed on different dates), flooded vegetation and built-up brightened by double bounce, wind
  on water, the thermal noise floor added and subtracted again as the noise-removal step does,
  and multiplicative gamma speckle with the product's ENL of 4.4, correlated over the 20 x 22 m
  resolution cell.

Labels cover land cover, floods and wildfire; ``Scene.cloud`` marks the cloud and cloud-shadow
pixels (what an L2A scene classification would flag as no data for optical use). All random
fields are periodic (FFT-filtered), so a scene wraps round at its edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from mapex_serve.bands import BANDS, MODALITIES, MODALITY_NAMES, resolve_modality
from training.data import signatures as sig

__all__ = [
    "GENERATOR_VERSION",
    "LANDCOVER_CLASSES",
    "S2_BANDS",
    "Scene",
    "SceneConfig",
    "SyntheticBatch",
    "fractal_field",
    "generate_batch",
    "generate_scene",
    "mosaic",
    "smooth_field",
]

#: Bumped whenever the scenes a seed gives change, so that cached demo models are rebuilt.
GENERATOR_VERSION = 5

LANDCOVER_CLASSES: tuple[str, ...] = ("water", "trees", "grassland", "cropland", "built-up", "bare", "wetland")
WATER, TREES, GRASSLAND, CROPLAND, BUILT_UP, BARE, WETLAND = range(len(LANDCOVER_CLASSES))
_VEGETATED = np.array([TREES, GRASSLAND, CROPLAND, WETLAND])
#: Mean per-scene preference of trees, grassland, cropland and built-up (drawn with sd 3 per
#: scene, so one class tends to dominate a scene). Calibrated so that the four classes share the
#: land they compete for about as Europe's land cover does (``signatures.EUROPE_SHARE``);
#: ``tests/training/test_synthetic.py`` checks the shares.
PREFERENCE_BIAS = np.array([0.0, -1.4, -0.4, -5.0])

#: The 13 Sentinel-2 bands in the order of the band table (B01..B08, B8A, B09..B12).
S2_BANDS: tuple[str, ...] = tuple(name for name, b in BANDS.items() if b.sensor == "S2")


@dataclass(frozen=True)
class SceneConfig:
    """How synthetic scenes are drawn; lengths in the landscape scale with ``size``."""

    size: int = 32  # pixels per side (square scenes)
    pixel_size: float = 10.0  # metres: the geotransform and slope units
    flood_prob: float = 0.3  # probability that a scene has a flood event
    burn_prob: float = 0.3  # probability that a scene has a burn scar
    speckle_looks: float = sig.ENL_IW_GRDH  # ENL of the gamma-distributed multiplicative SAR speckle
    noise: float = 1.0  # optical sensor noise in multiples of the MSI requirement (0.1 / SNR per band)
    cloud_prob: float = 0.1  # probability that a scene has clouds (and their shadows) over it
    #: Probability of seasonal snow on a scene without a flood or burn (snow and those events are
    #: of different seasons): at the default event rates about a tenth of all scenes, BigEarthNet's
    #: share of snow-covered patches (``signatures.SNOW_SCENE_SHARE``).
    snow_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"SceneConfig.size must be at least 8 pixels, got {self.size}")
        if self.pixel_size <= 0 or self.speckle_looks <= 0 or self.noise < 0:
            raise ValueError(f"SceneConfig needs pixel_size > 0, speckle_looks > 0 and noise >= 0, got {self}")
        for name in ("flood_prob", "burn_prob", "cloud_prob", "snow_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} must be a probability in [0, 1], got {getattr(self, name)}")


@dataclass
class Scene:
    """One synthetic scene: every band in physical units (reflectance, dB, metres) plus its labels."""

    bands: dict[str, np.ndarray]  # canonical band name -> (H, W) float32
    landcover: np.ndarray  # (H, W) uint8 index into LANDCOVER_CLASSES, before any flood or burn
    flood: np.ndarray  # (H, W) bool
    burn: np.ndarray  # (H, W) bool
    pixel_size: float = 10.0  # metres
    cloud: np.ndarray | None = field(default=None)  # (H, W) bool: cloud or cloud shadow over the optical bands

    def __post_init__(self) -> None:
        if self.cloud is None:
            self.cloud = np.zeros(self.landcover.shape, dtype=bool)

    def modality(self, name: str) -> np.ndarray:
        """(C, H, W) float32, bands in ``MODALITIES`` order."""
        return np.stack([self.bands[b] for b in MODALITIES[resolve_modality(name)]])

    @property
    def tile_class(self) -> int:
        """Majority land-cover class: the label of scene classification."""
        return int(np.bincount(self.landcover.ravel(), minlength=len(LANDCOVER_CLASSES)).argmax())


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], corr_len: float | np.ndarray) -> np.ndarray:
    """Gaussian-correlated noise with zero mean and unit std per field, shape ``(..., H, W)``.

    White noise is low-passed in the Fourier domain by a Gaussian kernel of std ``corr_len`` pixels
    (a scalar, or one per leading field), which is cheap and needs nothing beyond numpy.
    """
    h, w = shape[-2:]
    corr = np.asarray(corr_len, dtype=np.float64)
    corr = corr.reshape(corr.shape + (1, 1))
    f2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * np.exp(-2 * np.pi**2 * corr**2 * f2), s=(h, w))
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)


def fractal_field(rng: np.random.Generator, n: int, beta: float = sig.TERRAIN_BETA) -> np.ndarray:
    """Periodic ``(n, n)`` field with a power-law spectrum: 2-D power ~ |k|^-(beta+1), unit std.

    Profiles through it have power ~ k^-beta, the law real topography follows ([HT89] in signatures.py).
    """
    k = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :])
    k[0, 0] = np.inf  # no mean
    out = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, n))) * k ** (-(beta + 1) / 2), s=(n, n))
    out -= out.mean()
    return out / (out.std() + 1e-12)


def _rank(x: np.ndarray) -> np.ndarray:
    """Fraction of pixels below each pixel (0 <= r < 1): quantile thresholds without sorting twice."""
    r = np.empty(x.size)
    r[np.argsort(x, axis=None, kind="stable")] = np.arange(x.size) / x.size
    return r.reshape(x.shape)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Box dilation by ``radius`` pixels, separable and periodic like the fields."""
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for s in range(1, radius + 1):
            grown |= np.roll(out, s, axis) | np.roll(out, -s, axis)
        out = grown
    return out


def _gradient(z: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Periodic central differences (d/dy, d/dx), matching the periodic fields."""
    return ((np.roll(z, -1, 0) - np.roll(z, 1, 0)) / (2 * spacing),
            (np.roll(z, -1, 1) - np.roll(z, 1, 1)) / (2 * spacing))


def _at_native_resolution(x: np.ndarray, factor: int) -> np.ndarray:
    """``(B, n, n)`` averaged over ``factor`` x ``factor`` footprints (periodic padding), at that coarser grid."""
    n = x.shape[-1]
    m = -(-n // factor) * factor
    padded = np.pad(x, ((0, 0), (0, m - n), (0, m - n)), mode="wrap")
    return padded.reshape(x.shape[0], m // factor, factor, m // factor, factor).mean(axis=(2, 4))


def _terrain(rng: np.random.Generator, n: int, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Elevation (m) with a fractal relief scaled to a drawn median slope, and its slope (rise/run)."""
    z = fractal_field(rng, n)
    lo, hi = np.log(sig.TERRAIN_SLOPE_RANGE)
    target = np.exp(rng.uniform(lo, hi))
    gy, gx = _gradient(z, pixel_size)
    z *= target / (np.median(np.hypot(gx, gy)) + 1e-12)
    elev = rng.uniform(200, 1500) + z - z.min()
    gy, gx = _gradient(elev, pixel_size)
    return elev, np.hypot(gx, gy)


def _optical(rng: np.random.Generator, config: SceneConfig, landcover: np.ndarray, vegetated: np.ndarray,
             flood: np.ndarray, burn: np.ndarray, snow: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(13, n, n) L2A reflectance and the cloud/shadow mask: surface, snow, haze, clouds, sensor, resampling.

    ``snow`` is the snow-covered share of the ground per pixel (0 on a snow-free scene).
    """
    n = config.size
    # Surface: class spectrum pulled towards bare soil where vegetation is sparse (cropland by
    # parcel), a smooth brightness, water by turbidity, then the events.
    parcel = max(2, n // 2)
    cells = -(-n // parcel)
    parcels = np.kron(rng.uniform(0.6, 1.0, (cells, cells)), np.ones((parcel, parcel)))[:n, :n]
    # Season: outside the growing season a cropland parcel may lie bare or carry residue, in
    # Eurostat's winter shares, and grass is partly dry (both sig.ARABLE_OFF_SEASON, DRY_GRASS_SHARE).
    off_season = rng.random() < sig.OFF_SEASON_SHARE
    states = sig.ARABLE_OFF_SEASON if off_season else {"bare": 0.0, "green": 1.0, "residue": 0.0}
    state = rng.choice(len(states), (cells, cells), p=list(states.values()))
    state = np.kron(state, np.ones((parcel, parcel), dtype=int))[:n, :n]
    bare_parcel = (landcover == CROPLAND) & (state == list(states).index("bare"))
    residue_parcel = (landcover == CROPLAND) & (state == list(states).index("residue"))
    dry = rng.uniform(*sig.DRY_GRASS_SHARE) if off_season else rng.uniform(0.0, sig.DRY_GRASS_SHARE[0])
    # Vigour: the share of the pixel that is canopy, the rest soil. Forest canopies are closed
    # (ours: 0.85-1), grass and marsh thinner, cropland by parcel (none on a bare one).
    vigour = np.where(landcover == CROPLAND, np.where(bare_parcel, 0.0, parcels), np.clip(0.85 + 0.1 * f[5], 0.5, 1.0))
    vigour = np.where(landcover == TREES, np.clip(0.95 + 0.05 * f[5], 0.85, 1.0), vigour)
    vigour = np.where(vegetated, vigour, 1.0)
    soil = sig.SOIL[:, None, None]
    # Trees: broadleaf and needle-leaf canopies mixed by a per-scene share, varying smoothly; under
    # snow only needle-leaf ones, as deciduous broadleaves are leafless in the snow season (a green
    # broadleaf canopy over snow does not occur; leafless stands are not drawn).
    needle = np.clip(rng.uniform(-0.2, 1.2) + 0.3 * f[10], 0, 1)
    if snow.any():  # the share above is still drawn, so every later draw of the scene stays the same
        needle = np.ones_like(needle)
    surface = sig.SPECTRA.T[:, landcover]
    surface = np.where(landcover == TREES, (1 - needle) * surface + needle * sig.CONIFER[:, None, None], surface)
    npv = sig.NPV[:, None, None]
    surface = np.where(landcover == GRASSLAND, (1 - dry) * surface + dry * npv, surface)
    surface = np.where(residue_parcel, npv, surface)
    rho = soil + vigour * (surface - soil)
    rho *= 1 + 0.08 * f[4]
    lake_turbidity, flood_turbidity = rng.uniform(0.0, 0.5), rng.uniform(0.4, 0.9)
    water_rho = (1 - lake_turbidity) * sig.CLEAR_WATER + lake_turbidity * sig.TURBID_WATER
    rho = np.where(landcover == WATER, water_rho[:, None, None] * (1 + 0.03 * f[4]), rho)
    rho = np.where(burn, sig.BURN_REFLECTANCE[:, None, None] * (1 + 0.05 * f[4]), rho)
    # Flood water is silty; under trees the canopy hides most of it.
    flood_rho = (1 - flood_turbidity) * sig.CLEAR_WATER + flood_turbidity * sig.TURBID_WATER
    cover = np.where(landcover == TREES, 0.3, 1.0) * flood
    rho = (1 - cover) * rho + cover * flood_rho[:, None, None]
    # Snow buries low vegetation and soil; a forest shows it only through its canopy gaps [Mets05].
    # Lakes are drawn open (ice-free). The land-cover label stays what lies beneath.
    if snow.any():
        seen = snow * np.where(landcover == TREES, rng.uniform(*sig.CANOPY_GAP), 1.0) * (landcover != WATER)
        rho = (1 - seen) * rho + seen * sig.SNOW[:, None, None]

    # Atmosphere: residual haze ~ lambda^-1.3 [Ang29], on about half the scenes.
    haze = max(0.0, rng.uniform(-0.03, 0.015)) * np.clip(1 + 0.3 * f[9], 0, None)
    rho = rho + haze * (sig.S2_WAVELENGTH_NM[1] / sig.S2_WAVELENGTH_NM)[:, None, None] ** sig.HAZE_ANGSTROM
    # Clouds: a smooth blob with soft edges (optical thickness 0..1), its shadow cast off-set.
    cloud = np.zeros((n, n), dtype=bool)
    if rng.random() < config.cloud_prob:
        rank = _rank(f[8])
        frac = rng.uniform(0.05, 0.4)
        tau = np.clip((rank - (1 - frac)) / 0.1, 0, 1)
        shift = rng.integers(n // 8, n // 4 + 1, 2) * rng.choice([-1, 1], 2)
        shadow = (np.roll(tau, tuple(shift), (0, 1)) > 0.5) & (tau == 0)
        rho = np.where(shadow, rho * sig.SHADOW_DIFFUSE[:, None, None], rho)
        rho = (1 - tau) * rho + tau * sig.CLOUD_REFLECTANCE[:, None, None]
        cloud = (tau > 0.1) | shadow

    # Sensor: each band integrated over its native footprint, with the MSI noise at that grid,
    # then put back on the 10 m grid (nearest neighbour, as the real test crop was made).
    noise_std = config.noise * sig.SNR_REFERENCE_REFLECTANCE / sig.S2_SNR
    native = sig.S2_NATIVE_RES / config.pixel_size
    out = np.empty_like(rho)
    for factor in np.unique(native):
        idx = np.flatnonzero(native == factor)
        k = max(1, round(float(factor)))
        coarse = _at_native_resolution(rho[idx], k) if k > 1 else rho[idx]
        coarse = coarse + rng.normal(0, 1, coarse.shape) * noise_std[idx][:, None, None]
        out[idx] = np.repeat(np.repeat(coarse, k, axis=1), k, axis=2)[:, :n, :n] if k > 1 else coarse
    return np.clip(np.round(out * 1e4) / 1e4, 0, 1), cloud


def _sar(rng: np.random.Generator, config: SceneConfig, landcover: np.ndarray, elev: np.ndarray,
         flood: np.ndarray, burn: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """(2, n, n) sigma0 in dB (VV, VH) as an IW GRDH product with thermal noise removal shows it."""
    n = config.size
    # Geometry: the scene's place across the swath; slopes facing the sensor see a steeper beam.
    incidence = rng.uniform(*sig.IW_INCIDENCE)
    look = rng.choice([-1.0, 1.0])  # ascending passes look east, descending west
    _, gx = _gradient(elev, config.pixel_size)
    local = incidence - look * np.degrees(np.arctan(gx))
    cls = landcover.copy()
    open_flood = flood & ~np.isin(landcover, [TREES, BUILT_UP])
    cls[open_flood] = WATER
    db = sig.SIGMA0_DB.T[:, cls] + sig.SIGMA0_SLOPE.T[:, cls] * (local - sig.REFERENCE_INCIDENCE)
    db += 1.0 * texture  # ours: 1 dB of within-class variation (moisture, structure)
    # Cropland: each parcel holds its own crop at its own stage, tilled or not, so parcels differ
    # by a few dB on one date [Veloso17]; grassland parcels less, each cut or grazed on its own
    # dates [DeVroey21]. Parcels on the optical bands' grid (160 m at 32 px).
    parcel = max(2, n // 2)
    cells = -(-n // parcel)
    for cover, spread in ((CROPLAND, sig.CROP_PARCEL_DB), (GRASSLAND, sig.GRASS_PARCEL_DB)):
        parcels = np.kron(rng.normal(0, spread, (cells, cells)), np.ones((parcel, parcel)))[:n, :n]
        db += np.where(cls == cover, parcels, 0.0)
    calm, windy = sig.WIND_ON_WATER_DB
    wind = calm + (windy - calm) * rng.random() ** 2  # skewed towards calm (ours)
    db += np.where(cls == WATER, wind, 0.0)
    db += np.where(flood & (landcover == TREES), sig.FLOODED_FOREST_DB[:, None, None], 0.0)
    db += np.where(flood & (landcover == BUILT_UP), sig.FLOODED_BUILT_DB[:, None, None], 0.0)
    db += sig.BURN_DB[:, None, None] * burn
    # Power: signal plus thermal noise, speckled together; the processor subtracts the noise.
    # Speckle: Gamma(L/4) per 10 m pixel summed over 2 x 2 (the ~20 m resolution cell): ENL L,
    # neighbours correlated.
    looks = config.speckle_looks
    g = rng.gamma(looks / 4, 1 / looks, (2, n, n))
    speckle = g + np.roll(g, 1, 1) + np.roll(g, 1, 2) + np.roll(g, (1, 1), (1, 2))
    noise = 10 ** (rng.uniform(*sig.NESZ_DB) / 10)
    power = (10 ** (db / 10) + noise) * speckle - noise
    return 10 * np.log10(np.maximum(power, 1e-5))


def generate_scene(seed: int | np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Draw one synthetic scene; the same seed (or generator state) gives the same arrays."""
    rng = np.random.default_rng(seed)
    n = config.size
    # Fields: trees/grassland/cropland/built-up preference, brightness, vigour, SAR texture,
    # burn blob, cloud blob, haze, needle-leaf share, snow patches.
    corr = np.array([*rng.uniform(n / 5, n / 2.5, 4), n / 4, n / 6, n / 6, n / 6, n / 4, n / 2, n / 4, n / 4])
    f = smooth_field(rng, (len(corr), n, n), corr)

    elev, slope = _terrain(rng, n, config.pixel_size)
    u = (elev - elev.min()) / (elev.max() - elev.min() + 1e-12)
    slope_z = (slope - slope.mean()) / (slope.std() + 1e-9)
    height = _rank(elev)

    # Land cover: water fills the lowest ground (the local minima, to one flat level), wetland
    # lines it, bare ground takes the highest and steepest, the rest by the strongest of four
    # smooth preferences with terrain biases. About a third of the scenes have no water and a
    # third no bare ground.
    water_frac, bare_frac = max(0.0, rng.uniform(-0.15, 0.25)), max(0.0, rng.uniform(-0.1, 0.2))
    water = height < water_frac
    wetland = ~water & (height < water_frac + rng.uniform(0.03, 0.15)) & _dilate(water, max(1, n // 8))
    bare = ~water & ~wetland & (_rank(u + 0.3 * slope_z) >= 1 - bare_frac)
    centred = 2 * u - 1
    bias = rng.normal(PREFERENCE_BIAS, 3.0)
    prefs = f[0:4] + (bias + np.array([0.8, 0.0, -0.8, -0.4]) * centred[..., None]).transpose(2, 0, 1)
    prefs += np.array([0.3, 0.0, -0.3, -0.5])[:, None, None] * slope_z
    landcover = np.array([TREES, GRASSLAND, CROPLAND, BUILT_UP], dtype=np.uint8)[prefs.argmax(0)]
    landcover[bare], landcover[wetland], landcover[water] = BARE, WETLAND, WATER
    vegetated = np.isin(landcover, _VEGETATED)
    water_level = elev[water].max() if water.any() else elev.min()
    # Lakes are flat; 0.5 m of DEM noise (ours), but dry land never lies below the lake it drains
    # to (it would be lake).
    land = elev + rng.normal(0, 0.5, (n, n))
    if water.any():
        land = np.maximum(land, water_level + 0.1)
    dem = np.where(water, water_level, land)

    # Events: the water rises a few metres [Nobre16] over the ground just above it (between 5 %
    # and 60 % of the dry land); a smooth blob burns vegetation that is not under water.
    has_flood, rise = rng.random() < config.flood_prob, rng.uniform(0.3, 3.0)
    has_burn, burn_frac = rng.random() < config.burn_prob, rng.uniform(0.1, 0.4)
    hand = elev - water_level
    lo, hi = np.quantile(hand[~water], [0.05, 0.6]) if (~water).any() else (0.0, 0.0)
    flood = has_flood & ~water & (hand <= np.clip(rise, lo, hi))
    burn = has_burn & vegetated & ~flood & (_rank(f[7]) >= 1 - burn_frac)
    # Seasonal snow, on scenes without an event: 10-50 % of the ground, patchy, lying longest on
    # high ground (ours: more snow than this made the visible bands of the default mix brighter
    # and more spread than the BigEarthNet archive, of which a tenth is snowy). Dry snow is
    # transparent to C-band [NR00]: the SAR bands do not see it.
    snow = np.zeros((n, n))
    if not has_flood and not has_burn and rng.random() < config.snow_prob:
        extent = rng.uniform(0.1, 0.5)
        snow = np.clip((_rank(f[11] + 1.5 * u) - (1 - extent)) / 0.1, 0, 1)

    spectra, cloud = _optical(rng, config, landcover, vegetated, flood, burn, snow, f)
    sar_db = _sar(rng, config, landcover, elev, flood, burn, f[6])
    stack = np.concatenate([spectra, sar_db, dem[None]]).astype(np.float32)
    bands = dict(zip((*S2_BANDS, "VV", "VH", "DEM"), stack, strict=True))
    return Scene(bands, landcover, flood, burn, config.pixel_size, cloud)


@dataclass
class SyntheticBatch:
    """A batch of synthetic scenes as tensors: inputs in physical units and every label."""

    inputs: dict[str, torch.Tensor]  # modality name -> (N, C, H, W) float32
    landcover: torch.Tensor  # (N, H, W) int64
    tile_class: torch.Tensor  # (N,) int64
    flood: torch.Tensor  # (N, H, W) bool
    burn: torch.Tensor  # (N, H, W) bool
    has_burn: torch.Tensor  # (N,) bool: burn scar covers >= 1% of the tile

    @property
    def nbytes(self) -> int:
        """The memory its tensors hold."""
        labels = (getattr(self, f.name) for f in fields(self) if f.name != "inputs")
        return sum(t.nbytes for t in (*self.inputs.values(), *labels))


def generate_batch(
    seed: int, n: int, config: SceneConfig = SceneConfig(), modalities: Sequence[str] | None = None
) -> SyntheticBatch:
    """``n`` synthetic scenes; scene ``i`` depends on (seed, i, config) only, never on ``n``."""
    if n < 1:
        raise ValueError(f"generate_batch needs n >= 1 scenes, got {n}")
    names = MODALITY_NAMES if modalities is None else tuple(resolve_modality(m) for m in modalities)
    scenes = [generate_scene(np.random.default_rng(s), config) for s in np.random.SeedSequence(seed).spawn(n)]
    burn = np.stack([s.burn for s in scenes])
    return SyntheticBatch(
        inputs={m: torch.from_numpy(np.stack([s.modality(m) for s in scenes])) for m in names},
        landcover=torch.from_numpy(np.stack([s.landcover for s in scenes]).astype(np.int64)),
        tile_class=torch.tensor([s.tile_class for s in scenes], dtype=torch.int64),
        flood=torch.from_numpy(np.stack([s.flood for s in scenes])),
        burn=torch.from_numpy(burn),
        has_burn=torch.from_numpy(burn.mean(axis=(1, 2)) >= 0.01),
    )


def mosaic(scenes: Sequence[Scene], columns: int) -> Scene:
    """Scenes laid out row by row into one larger scene (``columns`` per row).

    The landscape of a scene scales with its size, so a 96-pixel scene is a zoomed-in 32-pixel
    one. A mosaic of tile-sized scenes is a large raster whose every tile looks like the tiles
    the heads were trained on: what a service test or benchmark wants to send.
    """
    if not scenes or columns < 1 or len(scenes) % columns:
        raise ValueError(f"need a non-empty grid of scenes: {len(scenes)} scenes do not fill rows of {columns}")
    if len({s.landcover.shape for s in scenes}) != 1:
        raise ValueError(f"mosaic scenes must share one size, got {sorted({s.landcover.shape for s in scenes})}")
    rows = [scenes[i : i + columns] for i in range(0, len(scenes), columns)]

    def tile(arrays: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        return np.concatenate([np.concatenate(list(row), axis=1) for row in arrays], axis=0)

    return Scene(
        bands={b: tile([[s.bands[b] for s in row] for row in rows]) for b in scenes[0].bands},
        landcover=tile([[s.landcover for s in row] for row in rows]),
        flood=tile([[s.flood for s in row] for row in rows]),
        burn=tile([[s.burn for s in row] for row in rows]),
        pixel_size=scenes[0].pixel_size,
        cloud=tile([[s.cloud for s in row] for row in rows]),
    )
