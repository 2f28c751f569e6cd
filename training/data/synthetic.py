"""SYNTHETIC multi-modal scenes: seeded, co-registered Sentinel-2, Sentinel-1 and DEM rasters with labels.

These are not real imagery. Each scene draws a terrain, derives a land-cover map that agrees with
it (water in the lowest ground, wetland beside it, bare ground on the highest and steepest), and
renders every band from per-class spectral and backscatter signatures with smooth within-class
variation, sensor noise and SAR speckle. Flood events and burn scars are drawn on top, so the
labels cover land cover, floods (seen in SAR) and wildfire (seen in NIR/SWIR). The point is a
data set with modality-specific structure that trains on 2 CPU cores, not a physical simulator.
All random fields are periodic (FFT-filtered), so a scene wraps round at its edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mapex_serve.bands import BANDS, MODALITIES, MODALITY_NAMES, resolve_modality

__all__ = [
    "LANDCOVER_CLASSES",
    "S2_BANDS",
    "Scene",
    "SceneConfig",
    "SyntheticBatch",
    "generate_batch",
    "generate_scene",
    "mosaic",
    "smooth_field",
]

LANDCOVER_CLASSES: tuple[str, ...] = ("water", "trees", "grassland", "cropland", "built-up", "bare", "wetland")
WATER, TREES, GRASSLAND, CROPLAND, BUILT_UP, BARE, WETLAND = range(len(LANDCOVER_CLASSES))
_VEGETATED = np.array([TREES, GRASSLAND, CROPLAND, WETLAND])

#: The 13 Sentinel-2 bands in the order of the band table (B01..B08, B8A, B09..B12).
S2_BANDS: tuple[str, ...] = tuple(name for name, b in BANDS.items() if b.sensor == "S2")

# Surface reflectance in S2_BANDS order: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12.
# Shaped after typical L2A spectra (vegetation: red-edge rise to a high NIR plateau; water: dark,
# near zero in NIR/SWIR; soil, bare and built-up: bright and flat into the SWIR).
_SPECTRA = np.array([
    [.060, .055, .045, .030, .022, .016, .014, .012, .010, .008, .001, .006, .004],  # water
    [.025, .030, .050, .030, .075, .200, .260, .290, .300, .290, .003, .150, .070],  # trees
    [.035, .045, .080, .065, .120, .230, .270, .290, .300, .280, .004, .250, .140],  # grassland
    [.035, .040, .085, .045, .120, .290, .360, .400, .410, .380, .004, .230, .110],  # cropland (green crop)
    [.100, .110, .130, .150, .170, .190, .200, .220, .230, .210, .008, .260, .230],  # built-up
    [.110, .130, .180, .240, .270, .290, .300, .310, .320, .310, .010, .380, .330],  # bare
    [.030, .035, .055, .045, .080, .150, .180, .190, .200, .180, .003, .110, .060],  # wetland
])
_SOIL = np.array([.080, .090, .120, .160, .190, .210, .220, .240, .250, .240, .008, .310, .260])
_TURBID_WATER = np.array([.080, .090, .120, .110, .090, .060, .045, .035, .030, .020, .002, .015, .010])
_BURN = np.array([.040, .040, .045, .055, .075, .095, .105, .120, .130, .125, .004, .250, .300])

# Mean Sentinel-1 backscatter (VV, VH) in dB per class.
_BACKSCATTER_DB = np.array([
    [-22.0, -28.0],  # water: specular, dark
    [-7.0, -13.0],  # trees: volume scattering
    [-10.0, -17.0],  # grassland
    [-10.5, -16.5],  # cropland
    [-1.0, -8.0],  # built-up: double bounce
    [-12.0, -20.0],  # bare
    [-9.0, -16.0],  # wetland
])
_BURN_DB = np.array([-0.5, -1.5])  # less canopy, less volume scattering (mostly VH)


@dataclass(frozen=True)
class SceneConfig:
    """How synthetic scenes are drawn; lengths in the landscape scale with ``size``."""

    size: int = 32  # pixels per side (square scenes)
    pixel_size: float = 10.0  # metres: the geotransform and slope units; the landscape scales with size
    flood_prob: float = 0.3  # probability that a scene has a flood event
    burn_prob: float = 0.3  # probability that a scene has a burn scar
    speckle_looks: float = 4.0  # gamma-distributed multiplicative SAR speckle
    noise: float = 0.01  # optical sensor noise, reflectance units (std)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"SceneConfig.size must be at least 8 pixels, got {self.size}")
        if self.pixel_size <= 0 or self.speckle_looks <= 0 or self.noise < 0:
            raise ValueError(f"SceneConfig needs pixel_size > 0, speckle_looks > 0 and noise >= 0, got {self}")
        for name in ("flood_prob", "burn_prob"):
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


def generate_scene(seed: int | np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Draw one synthetic scene; the same seed (or generator state) gives the same arrays."""
    rng = np.random.default_rng(seed)
    n = config.size
    # Fields: terrain coarse/fine, trees/grassland/cropland/built-up preference, brightness,
    # vegetation vigour, SAR texture, burn blob.
    corr = np.array([n / 4, n / 12, *rng.uniform(n / 5, n / 2.5, 4), n / 4, n / 6, n / 4, n / 6])
    f = smooth_field(rng, (len(corr), n, n), corr)

    # Terrain in metres: a base height plus a relief spread over [0, 1].
    z = f[0] + 0.25 * f[1]
    u = (z - z.min()) / (z.max() - z.min())
    elev = rng.uniform(200, 1500) + rng.uniform(20, 300) * u
    gy, gx = np.gradient(elev, config.pixel_size)
    slope = np.hypot(gx, gy)
    slope_z = (slope - slope.mean()) / (slope.std() + 1e-9)
    height = _rank(elev)

    # Land cover: water in the lowest ground, wetland on low ground beside it, bare on the highest
    # and steepest, the rest by the strongest of four smooth preferences with terrain biases.
    # About a third of the scenes have no water and a third no bare ground.
    water_frac, bare_frac = max(0.0, rng.uniform(-0.15, 0.25)), max(0.0, rng.uniform(-0.1, 0.2))
    water = height < water_frac
    wetland = ~water & (height < water_frac + rng.uniform(0.03, 0.15)) & _dilate(water, max(1, n // 8))
    bare = ~water & ~wetland & (_rank(u + 0.3 * slope_z) >= 1 - bare_frac)
    # Preferences of trees, grassland, cropland, built-up: a per-scene bias (so scenes differ in
    # their dominant class), trees uphill and on slopes, cropland and built-up low and flat.
    centred = 2 * u - 1
    bias = rng.normal([0.0, 0.2, 0.2, -0.3], 3.0)
    prefs = f[2:6] + (bias + np.array([0.8, 0.0, -0.8, -0.4]) * centred[..., None]).transpose(2, 0, 1)
    prefs += np.array([0.3, 0.0, -0.3, -0.5])[:, None, None] * slope_z
    landcover = np.array([TREES, GRASSLAND, CROPLAND, BUILT_UP], dtype=np.uint8)[prefs.argmax(0)]
    landcover[bare], landcover[wetland], landcover[water] = BARE, WETLAND, WATER
    vegetated = np.isin(landcover, _VEGETATED)
    water_level = elev[water].max() if water.any() else elev.min()
    dem = np.where(water, water_level, elev + rng.normal(0, 0.5, (n, n)))  # lakes are flat

    # Events: the water rises over low ground (at most a third of the relief above the lake);
    # a smooth blob burns vegetation that is not under water.
    has_flood, flood_frac = rng.random() < config.flood_prob, rng.uniform(0.05, 0.3)
    has_burn, burn_frac = rng.random() < config.burn_prob, rng.uniform(0.1, 0.4)
    low_ground = elev - water_level <= (elev.max() - elev.min()) / 3
    flood = has_flood & ~water & low_ground & (height < water_frac + flood_frac)
    burn = has_burn & vegetated & ~flood & (_rank(f[9]) >= 1 - burn_frac)

    # Optical: class spectrum pulled towards bare soil where vegetation is sparse (cropland by
    # parcel), a smooth brightness, then the events and sensor noise.
    parcel = max(2, n // 2)
    cells = -(-n // parcel)
    parcels = np.kron(rng.uniform(0.5, 1.0, (cells, cells)), np.ones((parcel, parcel)))[:n, :n]
    vigour = np.where(landcover == CROPLAND, parcels, np.clip(0.85 + 0.1 * f[7], 0.5, 1.0))
    vigour = np.where(vegetated, vigour, 1.0)
    spectra = _SOIL[:, None, None] + vigour * (_SPECTRA.T[:, landcover] - _SOIL[:, None, None])
    spectra *= 1 + 0.08 * f[6]
    spectra = np.where(burn, _BURN[:, None, None] * (1 + 0.05 * f[6]), spectra)
    turbidity = rng.uniform(0.6, 0.9)
    spectra = np.where(flood, (1 - turbidity) * spectra + turbidity * _TURBID_WATER[:, None, None], spectra)
    spectra = np.clip(spectra + rng.normal(0, config.noise, spectra.shape), 0, 1)

    # SAR: class backscatter with a smooth texture, floods as open water, then speckle in power.
    sar_db = _BACKSCATTER_DB.T[:, landcover] + 1.0 * f[8]
    sar_db = np.where(flood, _BACKSCATTER_DB[WATER][:, None, None], sar_db) + _BURN_DB[:, None, None] * burn
    looks = config.speckle_looks
    sar_db = 10 * np.log10(10 ** (sar_db / 10) * rng.gamma(looks, 1 / looks, sar_db.shape))

    stack = np.concatenate([spectra, sar_db, dem[None]]).astype(np.float32)
    bands = dict(zip((*S2_BANDS, "VV", "VH", "DEM"), stack, strict=True))
    return Scene(bands, landcover, flood, burn, config.pixel_size)


@dataclass
class SyntheticBatch:
    """A batch of synthetic scenes as tensors: inputs in physical units and every label."""

    inputs: dict[str, torch.Tensor]  # modality name -> (N, C, H, W) float32
    landcover: torch.Tensor  # (N, H, W) int64
    tile_class: torch.Tensor  # (N,) int64
    flood: torch.Tensor  # (N, H, W) bool
    burn: torch.Tensor  # (N, H, W) bool
    has_burn: torch.Tensor  # (N,) bool: burn scar covers >= 1% of the tile


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
    )
