"""Earth Engine's ``toBands()``: a collection flattened into one image, its bands named ``<image id>_<band>``.

Earth Engine names every band of ``ImageCollection.toBands()`` after the image it came from (its ``system:index``):
``20230815T101031_20230815T101611_T32TMS_B4`` for Sentinel-2, ``LC08_044034_20220111_SR_B4`` for Landsat,
``S1A_IW_GRDH_1SDV_20230815T052201_..._8C2F_VV`` for Sentinel-1, ``0_B4`` for a collection made of images
(``fromImages``); a merged collection puts ``1_``, ``2_`` before them. An export of it carries those names as its
band descriptions. A collection of one image (filtered to a day, then flattened) is that image: its bands are read by
what follows the id, and the id says which Landsat numbers them and when it was sensed. A collection of several
is a time series the specialists do not take: which image to read is the user's to say (``bands=``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mapex_serve.errors import MapexError

__all__ = ["ImageStackError", "StackedBand", "catalogue_id", "check_one_image", "stacked_band"]

#: An image's ``system:index`` in Earth Engine's catalogue: Sentinel-2's (sensing time, granule time, tile),
#: Landsat's scene id, Sentinel-1's product id, or the position of an image in a collection made of images; merged
#: collections prefix each with its collection's position (``1_``).
_IMAGE_ID = (r"(?:\d+_)*(?:\d{8}T\d{6}_\d{8}T\d{6}_T\d{2}[A-Z]{3}|L[COTE]0\d_\d{6}_\d{8}"
             r"|S1[A-D]_[A-Z0-9]{2}_[A-Z0-9]{4}_[A-Z0-9]{4}_\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_[0-9A-F]{4})|\d+")
_STACKED = re.compile(rf"^(?P<image>{_IMAGE_ID})_(?P<band>[A-Za-z][A-Za-z0-9_]*)$")


class ImageStackError(MapexError, ValueError):
    """A file holding the bands of several images (Earth Engine's ``toBands()``): which one to read is not said."""


@dataclass(frozen=True)
class StackedBand:
    """A band of a ``toBands()`` export: the image it came from and its own name there."""

    image: str
    band: str


def stacked_band(name: str | None) -> StackedBand | None:
    """What a band name says of the image it came from (``LC08_044034_20220111_SR_B4``), or None for any other name."""
    m = _STACKED.match((name or "").strip())
    return StackedBand(m["image"], m["band"]) if m else None


def catalogue_id(image: str) -> str:
    """The image's id in its collection (``LC08_044034_20220111``), without a merged collection's ``1_`` before it."""
    return re.sub(r"^(?:\d+_)+(?=\D)", "", image)


def check_one_image(stacked: Sequence[StackedBand | None]) -> str | None:
    """The one image a file's bands come from (each as ``stacked_band`` reads its name, None for another name), None
    where none says; refuses the bands of several, with the ``bands=`` that reads the first image."""
    images = list(dict.fromkeys(s.image for s in stacked if s is not None))
    if len(images) <= 1:
        return images[0] if images else None
    first = ",".join(s.band if s is not None and s.image == images[0] else "-" for s in stacked)
    shown = ", ".join(images[:4]) + (f" and {len(images) - 4} more" if len(images) > 4 else "")
    raise ImageStackError(
        f"the file holds the bands of {len(images)} images ({shown}), as Earth Engine's ImageCollection.toBands() "
        f"names them; the specialists read one image: export one (collection.first(), or a mosaic() or median() of "
        f"the collection), or pick one image's bands with bands=, e.g. bands={first} for {images[0]}")
