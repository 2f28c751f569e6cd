"""Tiles of one export read as one raster: Earth Engine splits a large export into files named
``<prefix>-<row offset>-<col offset>.tif`` (``s1_flood-0000000000-0000032768.tif``), ``gdal_retile.py`` and
other tilers cut a scene into described tiles.

Sent as several files, such tiles are the same bands side by side, not bands to stack: each band would be given
once a tile, and their extents do not overlap. When every file is a tile of one raster, the files become one VRT
over them: same band count, data types, descriptions, scale, offset, no-data and masks (carried over); one CRS
and pixel size; on one pixel grid; no two overlapping; and together covering their bounding box exactly, or, for
Earth Engine's tiles (``skipEmptyTiles`` leaves out the empty ones), lying where their names say, the holes then
masked. Files without band descriptions are taken as tiles only by Earth Engine's names, as nothing else says
their bands are the same.

A catalogue's items of one acquisition (a job's list of STAC items: the two Sentinel-2 tiles a flood spans) are
told to be tiles of one raster by the job itself, a band's files one an item; such tiles overlap (adjacent
Sentinel-2 tiles share 9.8 km) and are painted in order, a later item's no data leaving an earlier's values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from xml.sax.saxutils import escape, quoteattr

from affine import Affine
from rasterio.dtypes import _gdal_typename
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReaderBase

from mapex_serve.scene_reader import Grid

__all__ = ["Tile", "mosaic_vrt"]

#: Earth Engine's name for one file of a split export: the prefix, then the file's pixel offsets in the export.
_EARTH_ENGINE_TILE = re.compile(r"^(?P<prefix>.+)-(?P<row>\d{10})-(?P<col>\d{10})\.tiff?$", re.I)


@dataclass(frozen=True)
class Tile:
    """One opened file that may be a tile: its name as sent, its dataset (the VRT reads it by the dataset's name)
    and its grid."""

    name: str
    dataset: DatasetReaderBase
    grid: Grid


def _bands(ds: DatasetReaderBase) -> tuple:
    return ds.count, ds.dtypes, ds.descriptions, ds.scales, ds.offsets, ds.nodatavals, ds.units, ds.mask_flag_enums


def _masked(ds: DatasetReaderBase) -> bool | None:
    """Whether the file has a mask of its own (internal, ``.msk`` or alpha) for the VRT to carry; None for masks
    a VRT band cannot (one a band)."""
    flags = set(ds.mask_flag_enums[0])
    if flags <= {MaskFlags.all_valid, MaskFlags.nodata}:
        return False
    return True if MaskFlags.per_dataset in flags else None


def _same_bands(tiles: Sequence[Tile]) -> bool:
    first = tiles[0].dataset
    if any(_bands(t.dataset) != _bands(first) for t in tiles[1:]) or _masked(first) is None:
        return False
    if all(first.descriptions):
        return True
    prefixes = {m.group("prefix") if (m := _EARTH_ENGINE_TILE.match(PurePath(t.name).name)) else None for t in tiles}
    return len(prefixes) == 1 and None not in prefixes


def _same_storage(tiles: Sequence[Tile]) -> bool:
    """Items' files of one band: the same band count and data types, and no mask a VRT could not carry."""
    first = tiles[0].dataset
    return all((t.dataset.count, t.dataset.dtypes) == (first.count, first.dtypes) for t in tiles[1:]) and (
        _masked(first) is not None)


def _placement(tiles: Sequence[Tile]) -> tuple[Affine, list[tuple[int, int]]] | None:
    """The mosaic's transform and each tile's (row, col) in it, when the tiles lie on one north-up pixel grid."""
    t0 = tiles[0].grid.transform
    if t0.a <= 0 or any(t.grid.crs != tiles[0].grid.crs or (t.grid.transform.a, t.grid.transform.e) != (t0.a, t0.e)
           or t.grid.transform.b or t.grid.transform.d for t in tiles):
        return None
    west = min(t.grid.transform.c for t in tiles)
    north = (max if t0.e < 0 else min)(t.grid.transform.f for t in tiles)
    offsets = []
    for t in tiles:
        col, row = (t.grid.transform.c - west) / t0.a, (t.grid.transform.f - north) / t0.e
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        offsets.append((round(row), round(col)))
    return Affine(t0.a, 0.0, west, 0.0, t0.e, north), offsets


def mosaic_vrt(tiles: Sequence[Tile], items: bool = False,
               nodata: Sequence[float | None] | None = None) -> tuple[str, Grid] | None:
    """The VRT of ``tiles`` as one raster and its grid, when they are the tiles of one (module docstring); else None.
    ``items``: the tiles are a catalogue's items of one acquisition, which may overlap; ``nodata``: their no-data
    value a band, where the catalogue gives the one the files do not declare."""
    same = _same_storage(tiles) if items else _same_bands(tiles)
    if len(tiles) < 2 or not same or (placed := _placement(tiles)) is None:
        return None
    transform, offsets = placed
    boxes = [(r, c, r + t.grid.height, c + t.grid.width) for (r, c), t in zip(offsets, tiles, strict=True)]
    height, width = max(b[2] for b in boxes), max(b[3] for b in boxes)
    overlapping = any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                      for i, a in enumerate(boxes) for b in boxes[i + 1:])
    holes = sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) != height * width
    if not items and (overlapping or holes and not _placed_as_named(tiles, offsets)):
        return None  # bands to stack, or tiles with holes between them that no name places
    first, crs = tiles[0].dataset, tiles[0].grid.crs
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        lines.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    lines.append(f"  <GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>")
    lines += _metadata(first.tags(), "  ")
    for band in range(1, first.count + 1):
        lines.append(f'  <VRTRasterBand dataType="{_gdal_typename(first.dtypes[band - 1])}" band="{band}">')
        if description := first.descriptions[band - 1]:
            lines.append(f"    <Description>{escape(description)}</Description>")
        value = first.nodatavals[band - 1] if first.nodatavals[band - 1] is not None else (
            nodata[band - 1] if nodata else None)
        if value is not None:
            lines.append(f"    <NoDataValue>{value!r}</NoDataValue>")
        if first.units and first.units[band - 1]:
            lines.append(f"    <UnitType>{escape(first.units[band - 1])}</UnitType>")
        if (first.scales[band - 1], first.offsets[band - 1]) != (1.0, 0.0):
            lines.append(f"    <Offset>{first.offsets[band - 1]!r}</Offset>")
            lines.append(f"    <Scale>{first.scales[band - 1]!r}</Scale>")
        lines += _metadata(first.tags(band), "    ")
        lines += _sources(tiles, offsets, str(band), "    ", skip=value if items else None)
        lines.append("  </VRTRasterBand>")
    known = all(v is not None for v in first.nodatavals) or bool(nodata) and all(v is not None for v in nodata)
    # the tiles' masks (GDAL reads a source's as band mask,1), or 255 where a tile is; an item's known no data is the
    # VRT's own
    if _masked(first) or holes and not (items and known):
        sources = _sources(tiles, offsets, "mask,1", "      ") if _masked(first) else _sources(
            tiles, offsets, "1", "      ", constant=255)
        lines += ["  <MaskBand>", '    <VRTRasterBand dataType="Byte">', *sources, "    </VRTRasterBand>", "  </MaskBand>"]
    lines.append("</VRTDataset>")
    return "\n".join(lines), Grid(crs, transform, width, height)


def _sources(tiles: Sequence[Tile], offsets: Sequence[tuple[int, int]], band: str, indent: str,
             constant: int | None = None, skip: float | None = None) -> list[str]:
    """A VRT band's sources: band ``band`` of each tile placed at its offset, or ``constant`` over each tile's area;
    ``skip``: a value a tile does not paint (its no data, over an earlier tile it overlaps)."""
    kind = "SimpleSource" if constant is None and skip is None else "ComplexSource"
    scaled = [] if constant is None else [f"{indent}  <ScaleOffset>{constant}</ScaleOffset>",
                                          f"{indent}  <ScaleRatio>0</ScaleRatio>"]
    if skip is not None:
        scaled.append(f"{indent}  <NODATA>{skip!r}</NODATA>")
    lines = []
    for (row, col), t in zip(offsets, tiles, strict=True):
        w, h = t.grid.width, t.grid.height
        lines += [f"{indent}<{kind}>",
                  f'{indent}  <SourceFilename relativeToVRT="0">{escape(t.dataset.name)}</SourceFilename>',
                  f"{indent}  <SourceBand>{band}</SourceBand>", *scaled,
                  f'{indent}  <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                  f'{indent}  <DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/>',
                  f"{indent}</{kind}>"]
    return lines


def _placed_as_named(tiles: Sequence[Tile], offsets: Sequence[tuple[int, int]]) -> bool:
    """True when every tile has Earth Engine's name and the offsets in the names are where the tiles lie: an export
    whose empty tiles were skipped (``skipEmptyTiles``), whose holes are then no data."""
    named = [_EARTH_ENGINE_TILE.match(PurePath(t.name).name) for t in tiles]
    if not all(named):
        return False
    at = [(int(m.group("row")), int(m.group("col"))) for m in named]
    r0, c0 = min(r for r, _ in at), min(c for _, c in at)
    return [(r - r0, c - c0) for r, c in at] == list(offsets)


def _metadata(tags: dict[str, str], indent: str) -> list[str]:
    if not tags:
        return []
    items = "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in tags.items())
    return [f"{indent}<Metadata>{items}</Metadata>"]
