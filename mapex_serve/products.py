"""Satellite products as their providers pack them: which of a product's files are read, and what its
metadata says of their values.

A USGS Landsat Collection 2 Level-2 bundle (``.tar``) holds its surface reflectance bands beside the
surface temperature, its intermediate bands, angles and QA; its ``MTL.txt`` states the reflectance's
scale and offset (0.0000275, -0.2), which no band file carries. A Sentinel-2 SAFE (``.zip``) holds
every band at 10, 20 and 60 m beside masks and previews; its ``MTD_MSIL2A.xml`` states the
quantification (10000) and, since processing baseline 04.00, an offset of -1000 a band, which no JP2
carries either. Read as plain integers those values would be taken as Sentinel-2 reflectance x 10000
without the offset: 0.1 too bright, silently. Here each band read gets a GDAL PAM sidecar
(``<band file>.aux.xml``) with the scale, offset and nodata its product states, so that the service
reads it in reflectance as it reads any file that says its scale.

SNAP's BEAM-DIMAP product (``S1_Cal_TC.dim`` and its ``S1_Cal_TC.data`` folder) keeps a band per ENVI
file in the folder, and beside them ``tie_point_grids`` and ``vector_data``: its ``elevation_angle``
grid would be taken for an elevation band by its name, so only the band files are read. Their scaling
and no-data value are in the ``.dim`` only (``mapex_serve.dimap``): a Sentinel-2 product's digital
numbers with the offset of -0.1, the zeros outside a terrain-corrected Sentinel-1 swath.

A CEOS-ARD Normalised Radar Backscatter product from pyroSAR's S1_NRB processor holds each polarisation as
gamma0 and sigma0, linear and log-scaled (some as VRTs of pixel functions, which uploads may not hold), beside
annotation layers: only its gamma0 in linear power is read, once a polarisation.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Literal

from mapex_serve import theia
from mapex_serve.dimap import header_bands, header_sensed

__all__ = ["Sidecars", "display_image", "landsat_scales", "no_raster_hint", "role", "safe_scales", "sensed",
           "sentinel1_as_shipped", "sidecars"]

#: What a product's member is: a raster to read, metadata to read for its values, or a file to leave out.
Role = Literal["raster", "metadata", "skip"]

#: A Landsat Collection 2 Level-2 product's files (``LC09_L2SP_044034_20220111_20220113_02_T1_SR_B4.TIF``): its
#: surface reflectance bands and pixel quality are read, its metadata gives their scale.
_LANDSAT_FILE = re.compile(r"^L[COTE]0\d_L2S[PR]_\w+\.TIF$", re.I)
_LANDSAT_READ = re.compile(r"_(SR_B\d+|QA_PIXEL)\.TIF$", re.I)
_LANDSAT_MTL = re.compile(r"^L[COTE]0\d_L2S[PR]_\w+_MTL\.txt$", re.I)
_LANDSAT_SR = re.compile(r"_SR_B(\d+)\.TIF$", re.I)
#: A SAFE's metadata, and its band files: Level-2A ``IMG_DATA/R10m/T33UUP_20230101T100031_B02_10m.jp2`` (each band
#: at every coarser resolution too), Level-1C ``IMG_DATA/T33UUP_20230101T100031_B02.jp2``.
_SAFE_MTD = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.I)
_SAFE_BAND = re.compile(r"_(B\d\d|B8A|SCL)(?:_(\d\d)m)?\.jp2$", re.I)
#: Each Level-2A band at its native resolution (m), the finest the SAFE holds it at; the others are its resamplings.
_SAFE_NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
                "B12": 20, "SCL": 20, "B01": 60, "B09": 60}
#: A CEOS-ARD Normalised Radar Backscatter product's folder as pyroSAR's S1_NRB processor names it
#: (``S1A_IW_NRB__1SDV_20200103T170705_030639_0382D5_32TPS_8090``), and the one measurement read of it: gamma0 in
#: linear power; its sigma0 and log-scaled copies (some of them VRTs of pixel functions) and annotation layers are not.
_S1_NRB_PRODUCT = re.compile(r"^S1[A-D]_[A-Z]{2}_NRB__\w+$", re.I)
_S1_NRB_GAMMA0 = re.compile(r"-(?:vv|vh|hh|hv)-g-lin\.tiff?$", re.I)
_ENOUGH = 2**20  # metadata files are read if smaller than this
#: A BEAM-DIMAP product's header: its band descriptions come first, then the product's metadata, which for a
#: Sentinel-1 product (orbits, the original annotations) runs to megabytes.
_DIM_ENOUGH = 32 * 2**20


@dataclass(frozen=True)
class Sidecars:
    """What a product's metadata makes of its band files: ``(name, PAM XML)`` a band, and the notes the answer gives."""

    files: list[tuple[str, bytes]]
    notes: tuple[str, ...]


def role(path: str, size: int) -> Role | None:
    """What ``path`` (a member of an archive) is to its product; None for a file of no product known here."""
    parts = PurePosixPath(path).parts
    base = parts[-1]
    if any(p.lower().endswith(".data") for p in parts[:-2]):
        return "skip"  # in a BEAM-DIMAP .data folder's tie_point_grids/ or vector_data/: not bands
    if any(p.upper().endswith(".SAFE") for p in parts[:-1]):
        if _SAFE_MTD.match(base) and parts[-2].upper().endswith(".SAFE"):
            return "metadata" if size < _ENOUGH else "skip"
        band = _SAFE_BAND.search(base)
        if band is None or "IMG_DATA" not in parts:
            return "skip"
        resolution = band.group(2)
        native = _SAFE_NATIVE.get(band.group(1).upper())  # a band of no known resolution: at any it comes in
        return "raster" if resolution is None or native is None or int(resolution) == native else "skip"
    if theia.is_product_member(path):
        return "raster" if theia.read_in_product(path) else "skip"
    if any(_S1_NRB_PRODUCT.match(p) for p in parts[:-1]):
        return "raster" if _S1_NRB_GAMMA0.search(base) and "measurement" in parts else "skip"
    if _LANDSAT_MTL.match(base):
        return "metadata" if size < _ENOUGH else "skip"
    if base.lower().endswith(".dim"):
        return "metadata" if size < _DIM_ENOUGH else "skip"
    if _LANDSAT_FILE.match(base):
        return "raster" if _LANDSAT_READ.search(base) else "skip"
    return None


def no_raster_hint(paths: Sequence[str]) -> str | None:
    """Why a product gave no raster to read, and what to send instead; None for no product known here.

    A Sentinel-1 SAFE's ``measurement/*.tiff`` are uncalibrated digital numbers in the radar's geometry: not
    backscatter, and not on a map grid. A Zarr store (an EOPF product) is thousands of chunk files, read where it
    lies by a job, which fetches only the chunks the scene's bands need.
    """
    store = next((p for path in paths for p in PurePosixPath(path).parts[:-1] if p.lower().endswith(".zarr")), None)
    if store is not None:
        return (f"{store} is a Zarr store (an EOPF product, ESA's Zarr format for Sentinel data), which uploads are "
                f"not read as: give its URL to a job (POST /jobs/{{task}} with "
                f"{{\"url\": \"https://.../{store}\"}}) or its STAC item (stac_item), which read it where it lies; "
                f"or send its bands as GeoTIFFs "
                f"(gdal_translate 'ZARR:\"{store}\":/measurements/reflectance/r10m/b04' b04.tif)")
    safe = next((p for path in paths for p in PurePosixPath(path).parts[:-1] if p.upper().endswith(".SAFE")), None)
    if safe is not None and safe.upper().startswith("S1"):
        return sentinel1_as_shipped(safe)
    return None


#: A Sentinel-2 true colour image: a SAFE's ``T33UUP_20230912T100031_TCI_10m.jp2``, Earth Engine's ``TCI_R``.
_TCI = re.compile(r"(?:^|[._])TCI(?:_[RGB]|_\d{2}m)?$", re.I)


def display_image(names: Sequence[str]) -> str | None:
    """Why a request of a Sentinel-2 true colour image (by a name among ``names``: its files' stems and bands) is not
    read, and what to send; None for any other."""
    tci = next((n for n in names if n and _TCI.search(n.strip())), None)
    if tci is None:
        return None
    return (f"{tci} is Sentinel-2's true colour image (TCI): 8-bit display imagery, reflectance up to 0.2 (Level-2A) "
            f"or 0.3558 (Level-1C) stretched to 1-255 and clipped above, not the reflectance the specialists take; "
            f"send the B04, B03 and B02 band files (a SAFE's IMG_DATA/R10m/..._B04_10m.jp2; in Earth Engine the "
            f"bands B4, B3, B2)")


def sentinel1_as_shipped(product: str) -> str:
    """Why a Sentinel-1 product as ESA ships it (a SAFE, an EOPF Zarr GRD) is not read, and what to send."""
    return (f"{product} is a Sentinel-1 product as ESA ships it: its measurements are uncalibrated digital numbers "
            f"in radar geometry; calibrate and terrain-correct it (SNAP: Radar > Radiometric > Calibrate, then Radar > "
            f"Geometric > Terrain Correction) and send what SNAP writes (a GeoTIFF, or the BEAM-DIMAP product zipped)")


def sidecars(metadata: Mapping[str, str], rasters: Sequence[str]) -> Sidecars:
    """A PAM sidecar for each band in ``rasters`` (file names) whose scale the product's ``metadata`` (file name ->
    text) states, unless one is among ``rasters`` already."""
    files: list[tuple[str, bytes]] = []
    notes: list[str] = []
    have = set(rasters)
    for name, text in metadata.items():
        if name.lower().endswith(".dim"):
            made = _dimap_sidecars(name, text, [r for r in rasters if f"{r}.aux.xml" not in have])
            files += made.files
            notes += made.notes
            continue
        if _LANDSAT_MTL.match(name):
            scales = {f"SR_B{b}": s for b, s in landsat_scales(text).items()}
            band_of = _LANDSAT_SR
            what, prefix = "surface reflectance", "SR_B"
        else:
            scales = safe_scales(text)
            band_of = _SAFE_BAND
            what, prefix = "reflectance", ""
        taken: dict[tuple[float, float, float | None], list[str]] = {}
        for raster in rasters:
            m = band_of.search(raster)
            band = f"{prefix}{m.group(1).upper()}" if m else None
            if band not in scales or f"{raster}.aux.xml" in have:
                continue
            scale, offset, nodata = scales[band]
            files.append((f"{raster}.aux.xml", _pam(scale, offset, nodata)))
            taken.setdefault((scale, offset, nodata), []).append(band)
        notes += [f"{name}: {what} = DN x {scale:g} {offset:+g}{'' if nodata is None else f', nodata {nodata:g}'} "
                  f"({', '.join(bands)})" for (scale, offset, nodata), bands in taken.items()]
    return Sidecars(files, tuple(notes))


def sensed(metadata: Mapping[str, str]) -> tuple[tuple[datetime, datetime], ...]:
    """When the products whose ``metadata`` (file name -> text) came in an archive were sensed, where they state it:
    a BEAM-DIMAP product's ``.dim`` (its scene's start and stop)."""
    return tuple(span for name, text in metadata.items()
                 if name.lower().endswith(".dim") and (span := header_sensed(text)) is not None)


def _dimap_sidecars(name: str, text: str, rasters: Sequence[str]) -> Sidecars:
    """A sidecar for each ENVI band file of a BEAM-DIMAP product (``Sigma0_VV.img``) that its ``.dim`` gives a scale
    or a no-data value."""
    bands = {b.name: b for b in header_bands(text) or ()}
    files: list[tuple[str, bytes]] = []
    notes: list[str] = []
    for raster in rasters:
        stem, _, suffix = raster.rpartition(".")
        band = bands.get(stem) if suffix.lower() == "img" else None
        if band is None or not (band.scaled or band.nodata is not None):
            continue
        if band.log10_scaled:  # no sidecar can state 10 ** (DN x scale + offset); no band the models read is so
            notes.append(f"{name}: {band.name} is stored log10-scaled, which is read as stored")
            continue
        files.append((f"{raster}.aux.xml", _pam(band.scale, band.offset, band.nodata)))
        scaling = f"DN x {band.scale:g} {band.offset:+g}" if band.scaled else "values as stored"
        notes.append(f"{name}: {band.name} = {scaling}{'' if band.nodata is None else f', nodata {band.nodata:g}'}")
    return Sidecars(files, tuple(notes))


def _pam(scale: float, offset: float, nodata: float | None) -> bytes:
    nodata_xml = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
    return (f'<PAMDataset><PAMRasterBand band="1">{nodata_xml}<Offset>{offset!r}</Offset><Scale>{scale!r}</Scale>'
            f'</PAMRasterBand></PAMDataset>').encode()


def landsat_scales(mtl: str) -> dict[int, tuple[float, float, float | None]]:
    """Band number -> (scale, offset, nodata) of the surface reflectance a Collection 2 Level-2 ``MTL.txt`` states:
    its ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS`` group, not ``LEVEL1_RADIOMETRIC_RESCALING``'s top-of-atmosphere
    ones of the same names. Fill is 0 (Landsat Collection 2 Level-2 Science Product Guide)."""
    groups: list[str] = []
    mult: dict[int, float] = {}
    add: dict[int, float] = {}
    for line in mtl.splitlines():
        key, _, value = (part.strip().strip('"') for part in line.partition("="))
        if key == "GROUP":
            groups.append(value)
        elif key == "END_GROUP" and groups:
            groups.pop()
        elif groups[-1:] == ["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]:
            if m := re.fullmatch(r"REFLECTANCE_(MULT|ADD)_BAND_(\d+)", key):
                try:
                    (mult if m.group(1) == "MULT" else add)[int(m.group(2))] = float(value)
                except ValueError:
                    continue
    return {band: (mult[band], add[band], 0.0) for band in mult if band in add}


def safe_scales(mtd: str) -> dict[str, tuple[float, float, float | None]]:
    """Band (``B02``, ``B8A``) -> (scale, offset, nodata) of a SAFE's reflectance from its ``MTD_MSIL2A.xml`` (or
    ``MTD_MSIL1C.xml``): 1 / the quantification value, the band's add offset over it (none before processing
    baseline 04.00), and the NODATA special value; {} when the file states no quantification."""
    try:
        root = ET.fromstring(mtd)
    except ET.ParseError:
        return {}
    text = {_local(el.tag): (el.text or "").strip() for el in root.iter()}
    quantification = _number(text.get("BOA_QUANTIFICATION_VALUE") or text.get("QUANTIFICATION_VALUE"))
    if not quantification:
        return {}
    names = {el.get("bandId"): el.get("physicalBand", "") for el in root.iter()
             if _local(el.tag) == "Spectral_Information"}
    offsets = {el.get("band_id"): _number(el.text) or 0.0 for el in root.iter()
               if _local(el.tag) in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")}
    nodata = None  # <Special_Values><SPECIAL_VALUE_TEXT>NODATA</...><SPECIAL_VALUE_INDEX>0</...></Special_Values>
    for el in root.iter():
        fields = {_local(child.tag): (child.text or "").strip() for child in el}
        if fields.get("SPECIAL_VALUE_TEXT") == "NODATA":
            nodata = _number(fields.get("SPECIAL_VALUE_INDEX"))
    band_ids = names or {str(i): b for i, b in enumerate(("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9",
                                                          "B10", "B11", "B12"))}
    return {_band(physical): (1 / quantification, offsets.get(band_id, 0.0) / quantification, nodata)
            for band_id, physical in band_ids.items() if physical}


def _band(physical: str) -> str:
    """``B02`` from the metadata's ``B2``, as the band files are named; ``B8A`` stays."""
    m = re.fullmatch(r"B(\d+)", physical.strip().upper())
    return f"B{int(m.group(1)):02d}" if m else physical.strip().upper()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _number(text: str | None) -> float | None:
    try:
        return float(str(text).strip())
    except ValueError:
        return None
