"""sen2r's Sentinel-2 reflectance files: the R package's BOA and TOA products, whose GeoTIFF bands carry no names.

sen2r (Ranghetti et al.) names its outputs ``S2mll_yyyymmdd_rrr_<extent>_ppp_rr.tif``: the mission and level
(``S2A2A``, ``S2B1C``), the sensing day, the relative orbit, the tile or the extent's name, the product and the output
resolution in metres. A ``BOA`` file (Level-2A) holds 11 bands, a ``TOA`` file (Level-1C) 12, always in this order:
B1 to B7, then band 8 where the resolution is finer than 20 m and band 8A at 20 m and coarser, B9, (TOA: B10,) B11,
B12; integers, reflectance x 10000, the baseline 04.00 offset applied since sen2r 1.5.2. Only its ENVI output names
the bands, so a GeoTIFF got a 422 asking for ``bands=``; here the name says them.
Sources: sen2r's vignette "Output file structure" and ``safe_shortname``'s naming convention.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rasterio.io import DatasetReaderBase

from mapex_serve.bands import ProductBand

__all__ = ["Sen2rFile", "sen2r_file"]

_NAME = re.compile(r"^S2[A-D](?:1C|2A)_\d{8}_\d{3}_[A-Za-z0-9]+_(?P<product>BOA|TOA)_(?P<res>\d+)\.(?:tiff?|vrt)$", re.I)


@dataclass(frozen=True)
class Sen2rFile:
    """A sen2r reflectance file: its product (``BOA``, ``TOA``) and its bands in order, by its name."""

    name: str
    product: str
    bands: tuple[str, ...]

    def band(self, src: DatasetReaderBase, index: int) -> ProductBand | None:
        """Band ``index`` as sen2r orders its product's bands; None where the file describes the band itself."""
        if src.descriptions[index - 1]:
            return None
        canonical = self.bands[index - 1]
        return ProductBand(canonical, f"sen2r {self.product} band {index} ({canonical}; the file name {self.name})",
                           canonical)


def sen2r_file(src: DatasetReaderBase, filename: str | None) -> Sen2rFile | None:
    """The sen2r reflectance file ``src`` is by its name; None for any other, or one of another band count than
    sen2r writes (a subset: its bands cannot be told)."""
    name = os.path.basename(filename or "")
    if (m := _NAME.match(name)) is None:
        return None
    product, resolution = m.group("product").upper(), int(m.group("res"))
    nir = "B08" if resolution < 20 else "B8A"
    bands = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", nir, "B09", *(("B10",) if product == "TOA" else ()),
             "B11", "B12")
    return Sen2rFile(name, product, bands) if src.count == len(bands) else None
