"""``mask_threshold=``: where a continuous quality layer masks, in the layer's own values.

Cloud probabilities and clear scores (Google's Cloud Score+, s2cloudless, Sen2Cor's cloud confidence) come without a
cut: their producers suggest one (``bands.Threshold``) and tell users to tune it, since thin clouds, haze and bright
ground stay or go with it. The cut is given as their documentation writes it (Cloud Score+ 0.6, Sentinel Hub's CLP
102 of 255, a percentage), for the one such layer a request reads or per layer (``cs_cdf:0.5,CLP:80``), parsed
with the other per-band values (``units.parse_mask_threshold``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mapex_serve.bands import QUALITY_LAYERS, QualityLayer
from mapex_serve.errors import MapexError

__all__ = ["Cut", "MaskThresholdError", "check_cut", "check_layer_values", "cuts_for", "layers_text"]


class MaskThresholdError(MapexError, ValueError):
    """A ``mask_threshold=`` that names no continuous quality layer, lies outside its values, or fits none read."""


def layers_text() -> str:
    """The continuous layers, their values and default cuts, for a message."""
    return ", ".join(f"{q.name} ({q.threshold.span[0]:g}-{q.threshold.span[1]:g}, {q.threshold.invalid} "
                     f"{q.threshold.default:g} masked by default)"
                     for q in QUALITY_LAYERS.values() if q.threshold is not None)


def check_cut(layer: QualityLayer, value: float) -> None:
    """A cut given for ``layer`` against the values it holds."""
    low, high = layer.threshold.span
    if not low <= value <= high:
        raise MaskThresholdError(f"mask_threshold {value:g} for {layer.name}: its values run {low:g}-{high:g} "
                                 f"({layer.description}; {layer.threshold.invalid} {layer.threshold.default:g} is "
                                 f"masked by default, as {layer.threshold.source})")


@dataclass(frozen=True)
class Cut:
    """Where one continuous layer of a request masks, and whose cut that is."""

    value: float
    whose: str

    def said(self, layer: QualityLayer) -> str:
        """``masked below 0.6 (Google's Cloud Score+ examples)``: what the answer's inputs say of the layer."""
        return f"masked {layer.threshold.invalid} {self.value:g} ({self.whose})"


def cuts_for(layers: Iterable[str], stated: Mapping[str | None, float]) -> dict[str, Cut]:
    """The cut of each continuous layer among ``layers`` (quality layer names): the request's where it states one,
    else its producer's. A value for every layer needs exactly one such layer to apply to; a stated cut that fits no
    layer read is a mistake, not a statement to ignore."""
    continuous = list(dict.fromkeys(n for n in layers if QUALITY_LAYERS[n].threshold is not None))
    if None in stated and len(continuous) != 1:
        held = ", ".join(continuous) or "none"
        raise MaskThresholdError(f"mask_threshold={stated[None]:g} needs the request to read one cloud probability "
                                 f"or clear score layer, to know whose values it is in; it reads {held}: name the "
                                 f"layer (mask_threshold=LAYER:VALUE)" + ("" if continuous else
                                                                          f"; such layers: {layers_text()}"))
    if missing := [n for n in stated if n is not None and n not in continuous]:
        raise MaskThresholdError(f"mask_threshold names {', '.join(missing)}, which the request does not read; it "
                                 f"reads {', '.join(continuous) or 'no cloud probability or clear score layer'}")
    cuts = {}
    for name in continuous:
        layer = QUALITY_LAYERS[name]
        if (value := stated.get(name, stated.get(None))) is None:
            cuts[name] = Cut(layer.threshold.default, layer.threshold.source)
            continue
        check_cut(layer, value)
        cuts[name] = Cut(value, "the request's mask_threshold")
    return cuts


def check_layer_values(layer: QualityLayer, values: np.ndarray, dtype: str, found: str) -> None:
    """A sample of a continuous layer's finite values (stored as ``dtype``) against the values its producer writes,
    which its cut is in: rescaled or truncated, it would mask silently wrong. Cloud Score+ exported x 10000 masks
    nothing at 0.6, and cast to integers (an Earth Engine export made ``toUint16`` to match its bands) it masks all
    but the clearest pixels; a CLP or a percentage divided to 0..1 masks nothing at 102 or 50."""
    t = layer.threshold
    low, high = t.span
    fix = "send the layer with the values its producer gives, or leave it out"
    if values.size and (values.min() < low or values.max() > high):
        raise MaskThresholdError(f"{found}: a {layer.description} layer runs {low:g}-{high:g}, these values run "
                                 f"{values.min():g}-{values.max():g}: {fix}")
    if t.integral and values.size and not np.array_equal(values, np.round(values)):
        raise MaskThresholdError(f"{found}: a {layer.description} layer holds whole numbers {low:g}-{high:g}, this "
                                 f"one fractions (rescaled to 0-1?): {fix}")
    if not t.integral and np.dtype(dtype).kind in "iu":
        raise MaskThresholdError(f"{found}: a {layer.description} layer holds fractions {low:g}-{high:g}, this one "
                                 f"is stored as {dtype}, its scores cut to whole numbers: {fix} (as float)")
