"""THEIA's Level-2A products: MAJA's surface reflectance in the MUSCATE format, as CNES's MUSCATE centre
distributes them (theia-land.fr, and the same layout from MAJA run at home), of Sentinel-2 and of Landsat 8-9.

A product (``SENTINEL2B_20230815-105856-123_L2A_T31TCJ_C_V3-1``, a folder or its ``.zip``) holds a GeoTIFF a band
twice: ``..._FRE_B4.tif`` (flat reflectance: corrected for the atmosphere, adjacency and slopes, THEIA's recommended
one) and ``..._SRE_B4.tif`` (without the slope correction), int16, reflectance x 10000, -10000 outside the image; the
10 m bands are B2, B3, B4, B8, the 20 m ones B5, B6, B7, B8A, B11, B12. Its ``MASKS/`` folder has a cloud mask a
resolution (``..._CLM_R1.tif`` at 10 m, ``_R2`` at 20 m) whose values are bits: 0 clouds except the thinnest and all
cloud shadows, 1 clouds except the thinnest, 2 and 3 the tests that found them, 4 the thinnest clouds, 5 and 6
shadows, 7 high clouds (1.38 um); and an edge mask (``..._EDG_R1.tif``, 1 outside the image). Beside them: aerosols
and water vapour (``ATB``), saturation, geophysical and other masks, a quicklook, ``..._MTD_ALL.xml``.

THEIA's Level-3A products (``SENTINEL2X_20230815-000000-000_L3A_T31TCJ_C_V2-0``, CNES's WASP processor) are
monthly syntheses of those: a weighted average of the cloud-free flat reflectance of the weeks around the day the
name gives (at 000000: no sensing time). Each band is one ``..._FRC_B4.tif`` (flat reflectance composite), int16,
reflectance x 10000, -10000 where no date was clear; ``MASKS/`` has a flag layer a resolution (``..._FLG_R1.tif``,
``_R2``): 0 no data, 1 cloud or shadow on every date, 2 snow, 3 water, 4 land (iota2 masks 0 and 1 so), beside the
dates and weights averaged (``DTS``, ``WGT``). Before, a synthesis was refused: its bands' -10000 was read as
reflectance -1.

A Landsat product (``LANDSAT8-OLITIRS-XS_20210821-102351-515_L2A_T31TFJ_C_V2-2``; ``..._L2A_184-028_...`` by path
and row from MAJA at home) has the same files for OLI's bands ``B1``-``B7``, numbered as OLI numbers them (its
``B5`` is near infrared, Sentinel-2's B8A, not red edge B05), and its masks at 30 m (``..._CLM_XS.tif``).

Read as other files are, a THEIA product went wrong three ways: its CLM masks took Sentinel Hub's meaning under the
same name (1 cloud, 0 clear), where a THEIA cloud is 1, 3, 35 ..., so most clouds stayed in; a zip gave each band
twice (FRE and SRE) and was refused; and a band file declaring no no-data had its -10000 read as reflectance -1.
Sources: CESBIO's description of the MAJA/MUSCATE Sentinel-2 format, SNAP's MUSCATE reader help, eoreader's
``S2TheiaProduct``.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from mapex_serve.bands import OLI_WAVELENGTHS_NM, ProductBand, band_for_wavelength, canonical_or_none

__all__ = ["NODATA", "is_product_member", "is_reflectance_file", "nodata", "read_in_product", "reflectance_product",
           "theia_band"]

#: The reflectance outside the image.
NODATA = -10000.0
#: A product's name: its mission (Sentinel-2A to -2D, X for a synthesis of several; Landsat 8 or 9), its level, its
#: tile (a Landsat product made by MAJA at home names its path and row instead), ``_C_`` complete or ``_D_``
#: degraded, and its format version.
_PRODUCT = (r"(?P<mission>SENTINEL2[A-DX]|LANDSAT[89]-OLITIRS-XS)_\d{8}-\d{6}-\d{3}_(?P<level>L2A|L3A)_"
            r"(?:T\d{2}[A-Z]{3}|\d{3}-\d{3})_[A-Z]_V\d+-\d+")
_PRODUCT_NAME = re.compile(rf"^{_PRODUCT}$", re.I)
#: A product's band or mask file; a mask at 10 m (``R1``), 20 m (``R2``), or Landsat's 30 m (``XS``).
_FILE = re.compile(rf"^{_PRODUCT}_(?:(?P<kind>FRE|SRE|FRC)_(?P<band>B\d{{1,2}}A?)|(?P<mask>CLM|EDG|FLG)_(?P<res>R1|R2|XS))"
                   rf"\.tiff?$", re.I)
_MASK_M = {"R1": 10, "R2": 20, "XS": 30}
_KIND = {"FRE": "flat reflectance, corrected for slopes too", "SRE": "surface reflectance, without the slope correction",
         "FRC": "flat reflectance composite, a monthly synthesis"}
_MASK = {"CLM": "THEIA_CLM", "EDG": "THEIA_EDG", "FLG": "THEIA_FLG"}
#: What a product reads of a band: its flat reflectance; and of its masks the 20 m one (as a SAFE's SCL), or
#: Landsat's one.
_READ = {"FRE", "FRC", "CLM", "FLG"}
_READ_RES = {"R2", "XS"}


def theia_band(filename: str | None) -> ProductBand | None:
    """What a THEIA product's band or mask file is by its name (``..._FRE_B8A.tif``, ``..._CLM_R1.tif``); None for
    any other file."""
    name = os.path.basename(filename or "")
    if (m := _FILE.match(name)) is None:
        return None
    level = m.group("level").upper()
    if m.group("mask"):
        mask = m.group("mask").upper()
        return ProductBand(name, f"THEIA {level} {mask} mask at {_MASK_M[m.group('res').upper()]} m (file name)",
                           quality=_MASK[mask])
    kind, band = m.group("kind").upper(), m.group("band").upper()
    rule = f"THEIA {level} {kind} band file name ({_KIND[kind]})"
    if m.group("mission").upper().startswith("LANDSAT"):  # OLI's numbers: its B5 is near infrared
        number = int(band[1:]) if band[1:].isdigit() else None
        nm = OLI_WAVELENGTHS_NM.get(number) if number is not None else None
        canonical = band_for_wavelength(nm) if nm is not None else None
        return ProductBand(name, f"{rule}, Landsat OLI band {number} ({nm:g} nm)" if nm else rule, canonical)
    return ProductBand(name, rule, canonical_or_none(band))


def reflectance_product(filename: str | None) -> str | None:
    """``THEIA L2A`` or ``THEIA L3A`` for a THEIA product's band file (reflectance x 10000: FRE, SRE, FRC); None for
    any other file."""
    m = _FILE.match(os.path.basename(filename or ""))
    return f"THEIA {m.group('level').upper()}" if m and m.group("kind") else None


def is_reflectance_file(filename: str | None) -> bool:
    """Whether ``filename`` is a THEIA product's band file (reflectance x 10000, FRE, SRE or FRC)."""
    return reflectance_product(filename) is not None


def nodata(filename: str | None, declared: float | None) -> float | None:
    """The no-data value of a THEIA band file that declares none to GDAL (-10000); None for any other file."""
    return NODATA if declared is None and is_reflectance_file(filename) else None


def is_product_member(path: str) -> bool:
    """Whether ``path`` (an archive member) lies in a THEIA product's folder, or is named as a product's file."""
    parts = PurePosixPath(path).parts
    return any(_PRODUCT_NAME.match(p) for p in parts[:-1]) or _FILE.match(parts[-1]) is not None


def read_in_product(path: str) -> bool:
    """Whether a THEIA product's member is read: its FRE (L2A) or FRC (L3A) bands, and its cloud mask (L2A) or flags
    (L3A) at 20 m, as a Sentinel-2 SAFE's scene classification is (it never makes a 20 m scene's grid finer; the
    bands' -10000 marks the image's edge). The SRE copies, the 10 m masks, aerosols, other masks, dates and weights,
    the quicklook and the metadata are left out."""
    if (m := _FILE.match(PurePosixPath(path).name)) is None:
        return False
    mask = (m.group("mask") or "").upper()
    return (m.group("kind") or "").upper() in _READ or (mask in _READ and m.group("res").upper() in _READ_RES)
