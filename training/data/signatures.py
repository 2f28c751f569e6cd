"""Sensor signatures of the SYNTHETIC scenes: every number the generator draws from, with its source.

One table per sensor: Sentinel-2 L2A surface reflectance per land-cover class and band, Sentinel-1
IW GRD backscatter per class and polarisation with its incidence-angle slope, and the sensors'
noise and resolution figures. Where a source gives a range, the value taken is inside it and
the comment says so; where a value is ours (no source gives it), the comment says that too.
The check of the whole is empirical: ``tests/training/test_realism.py`` compares the per-band
distributions of synthetic scenes with real Sentinel-1 and Sentinel-2 patches.

Sources (short keys used in the comments):

- [S1-UG] ESA, *Sentinel-1 User Handbook* (GMES-S1OP-EOPG-TN-13-0001, 2013) and the Sentinel-1
  Product Definition (S1-RS-MDA-52-7440): IW swath 250 km, incidence 29.1-46.0 deg; IW GRDH
  resolution 20 x 22 m at 10 m pixel spacing, ENL 4.4; NESZ requirement <= -22 dB.
- [BEN] BigEarthNet (Sumbul et al. 2019, IGARSS; BigEarthNet-MM, Sumbul et al. 2021, IEEE GRSM),
  per-band statistics over the whole archive as published in ``bigearthnet_common.constants``:
  S1 VV -12.62 +- 5.12 dB, VH -19.29 +- 5.46 dB; S2 L2A band means (x 1e4) B02 430, B03 614,
  B04 590, B05 951, B06 1792, B07 2075, B08 2219, B8A 2266, B11 1594, B12 1009.
- [Hess90] Hess, Melack & Simonett (1990), Radar detection of flooding beneath the forest canopy:
  a review, Int. J. Remote Sens. 11: double bounce brightens flooded forest by about 3-10 dB.
- [Tsy18] Tsyganskaya, Martinis, Marzahn & Ludwig (2018), SAR-based detection of flooded
  vegetation: a review of characteristics and approaches, Int. J. Remote Sens. 39(8): the
  increase is mainly in co-polarisation (VV) at C-band; cross-pol changes little.
- [Twele16] Twele, Cao, Plank & Martinis (2016), Sentinel-1-based flood mapping: a fully automated
  processing chain, Int. J. Remote Sens. 37(13): calm open flood water is far darker than
  land at C-band; a fixed VV threshold near -15 dB (the baseline rule here) is the customary
  first cut, which their automatic thresholding refines.
- [CMOD5] Hersbach, Stoffelen & de Haan (2007), An improved C-band scatterometer ocean geophysical
  model function: CMOD5, J. Geophys. Res. 112: wind roughening raises water VV by several dB.
- [TUW25] TU Wien (2025), Using a neural network to model the incidence angle dependency of
  backscatter, Remote Sens. 17(3):361, and the TU Wien Sentinel-1 slope maps it builds on: the
  slope of sigma0 (dB) against incidence is steepest over water and wetlands (forward
  scattering), moderate over bare soil and sparse vegetation, smallest over forest; 38 deg is
  the IW mean incidence they normalise to. The slope values below are ours, in that order.
- [Tanase10] Tanase et al. (2010), Sensitivity of X-, C- and L-band SAR backscatter to burn
  severity in Mediterranean pine forests, IEEE TGRS 48(10): at C-band, backscatter falls with
  burn severity, cross-pol more than co-pol (the magnitudes below are ours).
- [Veloso17] Veloso et al. (2017), Understanding the temporal behavior of crops using Sentinel-1 and
  Sentinel-2-like data for agricultural applications, Remote Sens. Environ. 199: on one date,
  crops at different stages (and bare tilled parcels) differ by several dB in VV and VH.
- [DeVroey21] De Vroey, Radoux & Defourny (2021), Grassland mowing detection using Sentinel-1
  time series: potential and limitations, Remote Sens. 13(3):348, and [Reinermann22]
  Reinermann et al. (2022), Detection of grassland mowing events for Germany by combining
  Sentinel-1 and Sentinel-2 time series, Remote Sens. 14(7):1647: each grassland parcel is cut or
  grazed on its own dates, and a cut can show in its C-band backscatter, so on one date meadows
  and pastures differ from parcel to parcel.
- [Vreug18] Vreugdenhil et al. (2018), Sensitivity of Sentinel-1 backscatter to vegetation
  dynamics: an Austrian case study, Remote Sens. 10(9):1396: VH and the VH/VV cross ratio rise with
  the canopy's vegetation water content and biomass; row crops (maize) start the season near the
  soil's VH and reach a closed canopy only in summer.
- [S2-UH] ESA, *Sentinel-2 User Handbook* (2015): band resolutions (10/20/60 m) and the MSI
  radiometric requirement, SNR at reference radiance L_ref per band.
- [USGS7] Kokaly et al. (2017), USGS Spectral Library Version 7, USGS Data Series 1035: the
  shapes of green vegetation (red-edge rise to a NIR plateau, water absorption dips in SWIR),
  dry soils (rising, flat into SWIR), man-made surfaces (flat, grey) and water (dark past red).
  The values below are representative reflectances at the S2 band centres in keeping with
  those shapes, not a convolution of the library with the S2 response functions.
- [Raut18] Rautiainen et al. (2018), Spectral properties of coniferous forests: a review of in situ
  and laboratory measurements, Remote Sens. 10(2):207: needle-leaf canopies are darker than
  broadleaf ones at every wavelength, most of all in the NIR (plateau ~0.15-0.2 vs ~0.3).
- [Nechad10] Nechad, Ruddick & Park (2010), Calibration and validation of a generic multisensor
  algorithm for mapping of total suspended matter in turbid waters, Remote Sens. Environ. 114:
  red/NIR water reflectance rises with suspended matter, to about 0.05-0.1 in very turbid water.
- [Key06] Key & Benson (2006), Landscape assessment: the normalized burn ratio, FIREMON, USDA
  RMRS-GTR-164-CD: burns lower NIR and raise SWIR2; dNBR > 0.66 is high severity.
- [Zhu12] Zhu & Woodcock (2012), Object-based cloud and cloud shadow detection in Landsat
  imagery (Fmask), Remote Sens. Environ. 118: clouds are bright and flat in the visible and
  darker in SWIR; cloud shadows are dark, most of all in NIR/SWIR (diffuse light only).
- [Dozier89] Dozier (1989), Spectral signature of alpine snow cover from the Landsat Thematic Mapper,
  Remote Sens. Environ. 28, and the snow spectra of [USGS7]: snow is bright and flat in the
  visible (~0.8 for old, coarse-grained snow), falls through the NIR and is dark in the SWIR
  (ice absorbs), which is what the normalised difference snow index (green vs SWIR1) keys on.
- [Mets05] Metsamaki, Anttila, Huttunen & Vepsalainen (2005), A feasible method for fractional
  snow cover mapping in boreal zone based on a reflectance model, Remote Sens. Environ. 95: seen
  from above, a boreal forest shows the snow on its floor through canopy gaps (their apparent
  forest transmissivity, mostly about 0.2-0.6 in Finland).
- [NR00] Nagler & Rott (2000), Retrieval of wet snow by means of multitemporal SAR data, IEEE TGRS
  38(2): dry snow is almost transparent at C-band; only wet snow darkens the backscatter.
- [EEA19] European Environment Agency (2019), *Signals 2019*, infographic "State of play"
  (INF-117, https://www.eea.europa.eu/signals/signals-2019-content-list/infographics/state-of-play),
  from the CORINE Land Cover accounts 2000-2018 of the EEA territory: about 34 % forests, 25 %
  arable land and permanent crops, 17 % pastures (the EEA's "pastures and mosaic farmland"),
  artificial surfaces under 5 %. Eurostat's LUCAS survey of 2018 (Statistics Explained, "Land
  cover statistics", https://ec.europa.eu/eurostat/statistics-explained/index.php?title=Land_cover_statistics),
  which records the physical cover at each point, gives the same order for the EU: woodland
  41.1 %, cropland 24.2 %, grassland 17.4 %, artificial areas 4.2 %.
- [ESTAT16] Eurostat, *Agri-environmental indicator - soil cover* (Statistics Explained, data of
  2016, https://ec.europa.eu/eurostat/statistics-explained/index.php?title=Agri-environmental_indicator_-_soil_cover):
  in winter 23 % of the EU's arable land lay bare, 46 % carried normal winter crops, the
  rest cover or catch crops, plant residues or multi-annual plants.
- [Daughtry01] Daughtry (2001), Discriminating crop residues from soil by shortwave infrared
  reflectance, Agron. J. 93: dry plant litter and crop residue are brighter than most soils in
  SWIR1 and show the cellulose-lignin absorption near 2.1 um (lower SWIR2); with the dry-grass
  spectra of [USGS7], the shape of the non-photosynthetic vegetation (NPV) row below.
- [Ceccato01] Ceccato, Flasse, Tarantola, Jacquemoud & Gregoire (2001), Detecting vegetation leaf
  water content using reflectance in the optical domain, Remote Sens. Environ. 77: SWIR
  reflectance of a canopy rises as its water content falls, which is why dry and senescent
  vegetation is brighter there than green vegetation.
- [Ang29] Angstrom (1929), On the atmospheric transmission of sun radiation and on dust in the
  air, Geogr. Ann. 11: aerosol optical depth ~ lambda^-alpha, alpha about 1.3 on average.
- [HT89] Huang & Turcotte (1989), Fractal mapping of digitized images: application to the
  topography of Arizona, J. Geophys. Res. 94(B6): topographic profiles have power spectra
  ~ k^-beta with beta about 2 (Brownian relief).
- [FAO06] FAO (2006), Guidelines for soil description, 4th ed., slope classes: flat 0-0.2 %,
  level ... gently sloping 2-5 %, sloping 5-10 %, strongly sloping 10-15 %, moderately steep 15-30 %.
- [Nobre16] Nobre et al. (2016), HAND contour: a new proxy predictor of inundation extent,
  Hydrol. Process. 30: floods cover ground a few metres (height above nearest drainage) above
  the water.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ARABLE_OFF_SEASON",
    "BURN_DB",
    "BURN_REFLECTANCE",
    "CANOPY_GAP",
    "CLEAR_WATER",
    "CLOUD_REFLECTANCE",
    "CONIFER",
    "CROP_PARCEL_DB",
    "DRY_GRASS_SHARE",
    "ENL_IW_GRDH",
    "EUROPE_SHARE",
    "FLOODED_BUILT_DB",
    "FLOODED_FOREST_DB",
    "GRASS_PARCEL_DB",
    "HAZE_ANGSTROM",
    "IW_INCIDENCE",
    "NESZ_DB",
    "NPV",
    "OFF_SEASON_SHARE",
    "REFERENCE_INCIDENCE",
    "S2_NATIVE_RES",
    "S2_SNR",
    "S2_WAVELENGTH_NM",
    "SHADOW_DIFFUSE",
    "SIGMA0_DB",
    "SIGMA0_SLOPE",
    "SNOW",
    "SNOW_SCENE_SHARE",
    "SNR_REFERENCE_REFLECTANCE",
    "SOIL",
    "SPECTRA",
    "TERRAIN_BETA",
    "TERRAIN_SLOPE_RANGE",
    "TURBID_WATER",
    "WIND_ON_WATER_DB",
]

# ---------------------------------------------------------------------------------------------
# Sentinel-2 L2A, bands in the band-table order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12.

#: Band centres in nm [S2-UH] (S2A).
S2_WAVELENGTH_NM = np.array([443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190], dtype=float)
#: Native ground sampling in metres [S2-UH]; 20 m and 60 m bands are averaged over their footprint.
S2_NATIVE_RES = np.array([60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20], dtype=float)
#: MSI radiometric requirement, SNR at L_ref [S2-UH]; in-flight SNRs are higher, so this errs noisy.
S2_SNR = np.array([129, 154, 168, 142, 117, 89, 105, 174, 72, 114, 50, 100, 100], dtype=float)
#: Ours: L_ref taken as a 10 % reflectance, so the noise std of band b is 0.1 / S2_SNR[b].
SNR_REFERENCE_REFLECTANCE = 0.10

# Surface reflectance per class (rows in LANDCOVER_CLASSES order). Shapes after [USGS7]; magnitudes
# chosen so that a typical European mix lands near the [BEN] band means (vegetated land dominates
# that archive: B04 ~0.06, B08 ~0.22, B11 ~0.16, B12 ~0.10). B10 (cirrus, 1375 nm) is near zero at
# the surface: the atmosphere absorbs it. Grassland and cropland SWIR were lowered (B11 0.205/0.195
# -> 0.180/0.170, B12 0.110/0.095 -> 0.090/0.075, still inside green-canopy ranges) after the first
# comparison with the real patches showed synthetic vegetation ~1 sd too bright there. B01 (coastal aerosol) over vegetation is the darkest band
# after L2A correction (~0.01-0.02) [USGS7 vegetation shape, BEN B01 mean 0.034 over all classes].
SPECTRA = np.array([
    [.040, .040, .040, .025, .015, .010, .008, .007, .006, .004, .001, .003, .002],  # water, clear [USGS7]
    [.012, .022, .045, .028, .080, .210, .265, .300, .310, .305, .003, .145, .065],  # trees, broadleaf
    [.020, .030, .063, .047, .105, .215, .255, .275, .285, .280, .003, .180, .090],  # grassland
    [.018, .028, .068, .040, .110, .270, .335, .365, .375, .370, .003, .170, .075],  # cropland, green crop
    [.085, .095, .105, .115, .130, .145, .155, .165, .170, .170, .005, .185, .165],  # built-up: grey, flat
    [.090, .110, .150, .200, .230, .250, .260, .270, .280, .285, .006, .330, .280],  # bare: dry bright soil
    [.015, .022, .046, .040, .075, .140, .165, .175, .185, .180, .002, .100, .050],  # wetland: wet, darker
])
#: Needle-leaf (conifer) canopy [Raut18]; the trees class mixes it with the broadleaf row of SPECTRA
#: by a per-scene needle-leaf share.
CONIFER = np.array([.008, .015, .030, .018, .045, .110, .140, .160, .165, .160, .002, .080, .038])
#: Bare soil that shows between sparse plants (cropland parcels, thin grass) [USGS7].
SOIL = np.array([.065, .075, .105, .135, .165, .185, .195, .205, .215, .220, .005, .275, .220])
#: Non-photosynthetic vegetation: crop residue, stubble and dry grass [Daughtry01, USGS7]: no
#: red-edge rise, bright in SWIR1 and lower in SWIR2 (cellulose-lignin absorption), NDVI ~0.3.
NPV = np.array([.045, .055, .080, .110, .140, .170, .190, .210, .225, .235, .004, .320, .245])
#: Clear and very turbid water [Nechad10]: turbidity raises green to NIR; SWIR stays dark.
CLEAR_WATER = SPECTRA[0]
TURBID_WATER = np.array([.060, .065, .090, .085, .075, .045, .035, .030, .026, .015, .001, .010, .007])
#: Fresh burn scar [Key06]: NIR down to ~0.11, SWIR2 up to ~0.2 (NBR about -0.3 vs +0.6 unburned).
BURN_REFLECTANCE = np.array([.030, .035, .040, .050, .065, .085, .095, .110, .120, .120, .003, .190, .205])
#: Thick water cloud at the surface-reflectance scale [Zhu12]: bright, flat, lower in SWIR (droplet
#: absorption); B10 high for clouds that reach the upper troposphere.
CLOUD_REFLECTANCE = np.array([.42, .43, .44, .45, .46, .46, .47, .47, .47, .42, .08, .33, .21])
#: Share of the ground reflectance left in a cloud shadow (diffuse sky light only) [Zhu12]; ours:
#: the diffuse share falls with wavelength like the sky radiance, from ~0.35 in the blue.
SHADOW_DIFFUSE = 0.35 * (S2_WAVELENGTH_NM[1] / S2_WAVELENGTH_NM) ** 1.3
#: Old (spring) snow at the S2 band centres [Dozier89, USGS7]: NDSI (B03 - B11) / (B03 + B11) ~ 0.8.
SNOW = np.array([.80, .80, .79, .77, .75, .72, .70, .66, .64, .55, .01, .08, .05])
#: Share of BigEarthNet patches listed as covered by seasonal snow: 61,707 of 590,326 [BEN]. The
#: generator draws snow on about this share of its scenes (only those without a flood or burn).
SNOW_SCENE_SHARE = 61_707 / 590_326
#: Share of a snow-covered forest floor seen through the canopy from above, drawn per scene in
#: this range (ours, inside [Mets05]'s apparent transmissivities); lower vegetation is buried.
CANOPY_GAP = (0.15, 0.45)
#: Residual haze after L2A correction: additive, ~ lambda^-1.3 [Ang29].
HAZE_ANGSTROM = 1.3

# ---------------------------------------------------------------------------------------------
# Sentinel-1 IW GRDH, sigma0 in dB, (VV, VH) per class at REFERENCE_INCIDENCE.

#: IW swath incidence range in degrees [S1-UG].
IW_INCIDENCE = (29.1, 46.0)
#: Mid-swath incidence the class means refer to (the IW average used in [TUW25]).
REFERENCE_INCIDENCE = 38.0
#: Equivalent number of looks of IW GRDH [S1-UG].
ENL_IW_GRDH = 4.4
#: Thermal noise floor: NESZ drawn per scene in this range (dB). The requirement is <= -22 dB
#: [S1-UG]; the instrument does better in flight, and the range taken (ours) is below the
#: requirement. A floor at the requirement made land VH far too spread out against the real
#: patches (noise subtraction on a weak signal), which is how this range was chosen.
NESZ_DB = (-28.0, -24.0)

# Class means: no single source tabulates all seven classes for Sentinel-1, so these are ours, set
# by the scattering mechanisms below and checked against the [BEN] archive means (VV -12.6,
# VH -19.3 dB over a land-dominated mix with some sea) and the real patches (test_realism.py):
# water well below -15 dB VV [Twele16] (calm; wind adds WIND_ON_WATER_DB [CMOD5]), forest bright in
# VH (volume scattering), grassland and cropland in between, built-up bright in VV (double bounce),
# smooth dry bare soil dark, marsh vegetation like grassland but wetter. Grassland's VH sits above
# the cropland mean: a permanent sward is a closed canopy all season, while arable parcels
# include row crops that barely cover their soil until summer and bare tilled ground [Vreug18,
# Veloso17] (the 0.5 dB is ours; before version 5 grassland sat 0.5 dB below cropland, and the
# SAR specialist called a real Irish pasture, VH median -16.1 dB, cropland on every tile).
SIGMA0_DB = np.array([
    [-21.0, -27.5],  # water (calm open water) [Twele16]
    [-7.5, -14.5],  # trees: volume scattering (C-band forest VH about -12 to -16 dB)
    [-11.0, -16.5],  # grassland
    [-10.5, -17.0],  # cropland (growing season)
    [-5.5, -12.0],  # built-up: double bounce, mixed 10 m pixels of discontinuous fabric
    [-14.0, -22.0],  # bare: dry, smooth soil
    [-10.0, -17.0],  # wetland (herbaceous, not flooded)
])
#: d sigma0 / d incidence in dB per degree, (VV, VH) per class: ours, ordered as [TUW25] maps
#: them (steep over water and wetland, moderate over soil and short vegetation, flat over forest).
SIGMA0_SLOPE = np.array([
    [-0.45, -0.30],  # water
    [-0.07, -0.06],  # trees
    [-0.15, -0.12],  # grassland
    [-0.15, -0.12],  # cropland
    [-0.10, -0.10],  # built-up
    [-0.25, -0.20],  # bare
    [-0.20, -0.15],  # wetland
])
#: Parcel-to-parcel spread of cropland sigma0 on one date, dB (VV and VH together): ours, a sd
#: that keeps most parcels within the few dB [Veloso17] shows between crops.
CROP_PARCEL_DB = 1.5
#: Parcel-to-parcel spread of grassland sigma0 on one date, dB: meadows and pastures cut or grazed
#: on different dates [DeVroey21, Reinermann22]. Ours, below the crops' spread; it brings the
#: 80 m block spread of synthetic grassland tiles from 1.1 dB to 1.3 (VV and VH), the real
#: pasture patch's 1.3-1.5 (synthetic cropland 1.5).
GRASS_PARCEL_DB = 1.0
#: Wind roughening of open water, dB added to VV and VH, drawn per scene in this range [CMOD5];
#: the top of it lifts some water above the -15 dB VV threshold, as on a windy day.
WIND_ON_WATER_DB = (0.0, 6.0)
#: Flooded forest: double bounce, +3 dB VV (the low end of [Hess90]'s 3-10 dB: C-band reaches the
#: trunks less than L-band), cross-pol little changed [Tsy18].
FLOODED_FOREST_DB = np.array([3.0, 0.5])
#: Flooded built-up land: the wall-water corner adds to the double bounce, mostly in VV [Tsy18].
FLOODED_BUILT_DB = np.array([2.0, 0.5])
#: Burn scar on vegetation: less canopy, VH down 1.5 dB, VV 0.5 dB (ours; direction as [Tanase10]).
BURN_DB = np.array([-0.5, -1.5])

# ---------------------------------------------------------------------------------------------
# Land cover.

#: Shares of trees, grassland, cropland and built-up among the land those four classes cover,
#: after [EEA19]: forests 34 %, pastures 17 %, arable land and permanent crops 25 %, artificial
#: surfaces 4 % (under 5 %; LUCAS 2018: 4.2 %), normalised. The generator's per-scene class
#: preferences are calibrated to these (``synthetic.PREFERENCE_BIAS``); bare ground, wetland and
#: water are drawn from the terrain instead. (Generator v3 used 38 : 16 : 41.5 : 4.5 from a
#: recollection of the CORINE accounts that counted mosaic farmland as cropland; the EEA's own
#: figures put it with pastures, and LUCAS, which records what covers each point, finds a
#: quarter of the land under crops, not 38 %. The generator draws physical cover per pixel, so
#: the physical shares are the ones to match; the real-patch tests' mapping of CORINE's mosaic
#: labels to cropland is about patch labels, a different question.)
EUROPE_SHARE = {"trees": 0.425, "grassland": 0.2125, "cropland": 0.3125, "built-up": 0.05}
#: State of a cropland parcel outside the growing season [ESTAT16]: bare soil 23 %, green winter
#: crop 46 %, the rest (cover crops, residues, multi-annual plants) drawn as crop residue (ours).
#: In the growing season every parcel is a green crop.
ARABLE_OFF_SEASON = {"bare": 0.23, "green": 0.46, "residue": 0.31}
#: Share of scenes outside the growing season (winter, or after harvest): ours, half the year.
OFF_SEASON_SHARE = 0.5
#: Dry (non-photosynthetic) share of a grassland sward outside the growing season, drawn per scene
#: in this range (ours: dormant winter grass, summer-dry Mediterranean pasture) [Ceccato01];
#: in the growing season up to the lower bound.
DRY_GRASS_SHARE = (0.1, 0.5)

# ---------------------------------------------------------------------------------------------
# Terrain.

#: Power-spectrum exponent of topographic profiles [HT89]; the 2-D field gets |k|^-(beta+1).
TERRAIN_BETA = 2.0
#: Median terrain slope per scene, drawn log-uniformly in this range (rise over run) [FAO06]:
#: from nearly level plains (0.5 %) to moderately steep hills (25 %).
TERRAIN_SLOPE_RANGE = (0.005, 0.25)
