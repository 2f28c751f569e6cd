"""Where a job's scene comes from: URLs read in place through GDAL, or a STAC item's assets.

``http(s)://`` is read with ``/vsicurl/`` (HTTP range requests: only the windows the tiler needs
travel), ``s3://bucket/key`` with ``/vsis3/`` (credentials and endpoint from the usual ``AWS_*``
variables GDAL reads), ``gs://bucket/key`` (Earth Engine's ``Export.image.toCloudStorage``) with ``/vsigs/``
(``GOOGLE_APPLICATION_CREDENTIALS``, or ``GS_NO_SIGN_REQUEST=YES`` for a public bucket).

A STAC item names its assets' bands in ``eo:bands`` (STAC 1.0) or ``bands`` with ``eo:common_name`` (1.1) and their
storage in ``raster:bands``: ``scale`` and ``offset`` (Earth Search's Sentinel-2 L2A COGs carry the -0.1 offset of
baseline 04.00 only there, not in the file), ``nodata`` and ``unit``. Those become the scene's band names, unit
overrides and nodata, so that the values are read as what the catalogue says they are.

Where a Sentinel-2 catalogue's ``raster:bands`` do not state the offset right, its item's properties
do: Earth Search's ``sentinel-2-l2a`` removed the offset from the values of some items
(``earthsearch:boa_offset_applied: true``) yet lists -0.1 for all; the Planetary Computer's items give
no offset, only ``s2:processing_baseline`` (from 04.00 the values carry it). Read by ``raster:bands``
alone, the first would be 0.1 too dark and the second 0.1 too bright.

Unless ``assets`` chooses, an item's data assets that name a model band or a quality layer are read (Earth Search's
``scl`` masks clouds as an uploaded SCL does), each band once, its finest copy: Earth Search lists every band
twice, as a COG and as the SAFE's JPEG 2000 (``red-jp2``, in a requester-pays bucket), and the Copernicus Data
Space at each resolution its SAFE holds (``B04_10m``, ``B04_20m``, ``B04_60m``).

An EOPF item (``stac.core.eopf.eodc.eu``) offers one Zarr product in many assets: the product's store, its groups
(``SR_10m``: ``.../measurements/reflectance/r10m``) and some of their arrays (``B04_10m``), each band at more than
one resolution among them. Unless ``assets`` chooses, the product's store is read (``mapex_serve.eopf``: each band
once, at its finest), its arrays' own ``scale_factor`` and ``add_offset`` applying.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from mapex_serve.archives import ArchiveTooLargeError, Capped, archive_kind
from mapex_serve.bands import BANDS, canonical_or_none
from mapex_serve.dea import is_dea_name, measurement
from mapex_serve.errors import MapexError
from mapex_serve.inputs import SourceFile
from mapex_serve.rasters import band_key, name_in_file_name, parse_name
from mapex_serve.units import UnitOverrides, parse_unit

__all__ = ["JobSourceError", "ResolvedSources", "archive_at", "fetch_archive", "gdal_path", "one_acquisition",
           "redacted", "resolve_stac", "resolve_urls", "self_link", "stac_items"]

#: GDAL settings for reading remote rasters by ranges, and a bounded block cache (GDAL's default is 5% of
#: the node's RAM, outside every budget of the service); a deployment's own environment wins.
GDAL_DEFAULTS = {
    "GDAL_CACHEMAX": "256",  # MiB
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "CPL_VSIL_CURL_CHUNK_SIZE": str(256 * 1024),
}
for _key, _value in GDAL_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

_MAX_ITEM_BYTES = 10 * 2**20


class JobSourceError(MapexError, ValueError):
    """A URL or STAC item the service cannot read a scene from."""


@dataclass
class ResolvedSources:
    """The files of one scene, with what a catalogue said about their bands."""

    files: list[SourceFile]
    bands: list[str] | None = None  # one name per band over all files, when a catalogue named them
    overrides: UnitOverrides = field(default_factory=UnitOverrides)
    described: list[dict[str, Any]] = field(default_factory=list)  # what was taken from where, for the job's report
    archives: list[dict[str, Any]] = field(default_factory=list)  # the upload's archives (``Unpacked.report``)
    #: ``(url, whether it is an archive)`` of URLs among which is an archive: the archives fetched and unpacked, the
    #: others read in place, into ``files`` when the job starts.
    fetch: list[tuple[str, bool]] = field(default_factory=list)
    #: The files are those of several STAC items of one acquisition, each band's read as one raster.
    items: bool = False
    #: The files are a Planetary Computer item's, signed with tokens that last about an hour: signed again when the
    #: job starts (``mapex_serve.jobs.signing.resigned``).
    planetary_computer: bool = False
    #: When the scene was acquired: as its STAC item says (``datetime``, else ``start_datetime``), else as its files'
    #: names and SNAP headers do (``mapex_serve.acquired``; a day or a scene's start and stop as ``start/end``).
    acquired: str | None = None
    #: The URLs of the STAC items read (as given, or their self links): what a result is derived from.
    item_urls: list[str] = field(default_factory=list)


def gdal_path(url: str, allowed_prefixes: Sequence[str] = ()) -> str:
    """``/vsicurl/``, ``/vsis3/`` or ``/vsigs/`` path of an http(s), s3 or gs URL; anything else (files, other
    schemes) is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", *_OBJECT_STORES) or not parts.netloc:
        raise JobSourceError(f"{url!r} is not an http(s)://, s3:// or gs:// URL; jobs read scenes from web servers and "
                             f"object storage, or from an upload (-F file=@scene.tif)")
    if allowed_prefixes and not any(url.startswith(p) for p in allowed_prefixes):
        raise JobSourceError(f"{url!r} is not under a location this service reads from (MAPEX_JOB_URL_PREFIXES: "
                             f"{', '.join(allowed_prefixes)})")
    if parts.scheme in _OBJECT_STORES:
        return f"{_OBJECT_STORES[parts.scheme]}{parts.netloc}{parts.path}"
    return f"/vsicurl/{url}"


#: Object storage GDAL reads by its own protocol, with the deployment's credentials.
_OBJECT_STORES = {"s3": "/vsis3/", "gs": "/vsigs/"}


def _file_name(url: str) -> str:
    """The file name a URL's path ends in, as its file was named (``%28Raw%29`` is ``(Raw)``)."""
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or "scene.tif"


def resolve_urls(urls: Sequence[str], allowed_prefixes: Sequence[str] = ()) -> ResolvedSources:
    """Raster URLs of one scene, read in place; bands are identified from the files as for an upload."""
    return ResolvedSources([SourceFile(_file_name(u), gdal_path(u, allowed_prefixes)) for u in urls])


#: Archives on object storage are not fetched (GDAL reads s3:// and gs:// in place; signing a download is its job): by
#: name.
_ARCHIVE_NAMES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".tar.bz2", ".tar.xz")


def archive_at(url: str, limit: int, timeout: float = 30) -> bool:
    """True when the first bytes at an http(s) URL say it is an archive (an Earth Engine download link: a ZIP of one
    GeoTIFF a band), to be fetched whole and unpacked; False for anything else, which GDAL reads in place by ranges
    (also when the first bytes cannot be had: GDAL then says why). An archive whose size, as the server states it,
    is past ``limit`` is refused at once."""
    parts = urlsplit(url)
    if parts.scheme in _OBJECT_STORES and parts.path.lower().endswith(_ARCHIVE_NAMES):
        raise JobSourceError(f"{url!r} is an archive on object storage, which jobs read in place and cannot: give a "
                             f"presigned https:// URL of it (fetched and unpacked), or the URLs of the rasters inside")
    if parts.scheme not in ("http", "https"):
        return False
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-263"}),  # noqa: S310
                                    timeout=timeout) as response:
            head, stated = response.read(264), response.headers.get("Content-Range", "")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    if archive_kind(head) is None:
        return False
    total = stated.rpartition("/")[2]  # "bytes 0-263/123456"
    if total.isdigit() and int(total) > limit:
        raise _archive_too_large(url, limit)
    return True


def fetch_archive(url: str, path: Path, limit: int, timeout: float = 30,
                  fetching: Callable[[int], bool] = lambda _size: True) -> Path:
    """The archive at an http(s) URL saved at ``path`` (at most ``limit`` bytes), for ``archives.unpack_file``;
    ``fetching`` is told the bytes fetched so far after each mebibyte, and stops the fetch by answering False (its
    job was cancelled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, path.open("wb") as out:  # noqa: S310
            capped = Capped(response, limit + 1)
            while chunk := capped.read(2**20):
                out.write(chunk)
                if not fetching(out.tell()):
                    raise JobSourceError(f"the job was cancelled while {url!r} was fetched")
            size = out.tell()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise JobSourceError(f"could not fetch the archive {url!r}: {e}") from None
    if size > limit:
        raise _archive_too_large(url, limit)
    return path


def _archive_too_large(url: str, limit: int) -> ArchiveTooLargeError:
    return ArchiveTooLargeError(f"the archive {url!r} is larger than {limit / 2**20:g} MiB (MAPEX_JOB_MAX_UPLOAD_MB); "
                                f"give the URLs of the rasters inside")


def fetch_item(url: str, allowed_prefixes: Sequence[str] = (), timeout: float = 30) -> dict[str, Any]:
    """A STAC item from an http(s) URL (an s3:// item can be sent inline instead, as ``stac_item``)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise JobSourceError(f"the STAC item {url!r} is not an http(s) URL; send the item itself as the JSON object "
                             f"stac_item (its assets may be s3:// URLs)")
    gdal_path(url, allowed_prefixes)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            body = response.read(_MAX_ITEM_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise JobSourceError(f"could not fetch the STAC item {url!r}: {e}") from None
    if len(body) > _MAX_ITEM_BYTES:
        raise JobSourceError(f"the STAC item {url!r} is larger than {_MAX_ITEM_BYTES // 2**20} MiB")
    try:
        item = json.loads(body)
    except ValueError as e:
        raise JobSourceError(f"the STAC item {url!r} is not JSON ({e})") from None
    return item


def stac_items(given: str | dict[str, Any] | list[str | dict[str, Any]], allowed_prefixes: Sequence[str] = (),
               most: int = 8) -> list[tuple[Any, str | None]]:
    """``(item, its URL)`` of each item a job's ``stac_item`` gives: an item, its URL, a list of them, or an
    ItemCollection (a STAC API search's result, pystac-client's ``item_collection().to_dict()``), whose features
    are its items; at most ``most``."""
    items: list[tuple[Any, str | None]] = []
    for entry in given if isinstance(given, list) else [given]:
        item, url = (fetch_item(entry, allowed_prefixes), entry) if isinstance(entry, str) else (entry, None)
        if isinstance(item, dict) and item.get("type") == "FeatureCollection":
            items += _collection_items(item, url)
        else:
            items.append((item, url))
    if not 1 <= len(items) <= most:
        raise JobSourceError(f"stac_item gives {len(items)} items; give 1 to {most}, those of one acquisition that "
                             f"the scene spans")
    return items


def _collection_items(collection: dict[str, Any], url: str | None) -> list[tuple[Any, str | None]]:
    """An ItemCollection's features, each with its self link's URL; refused where the search matched more items
    than the page lists (the rest would be left out unseen)."""
    features = collection.get("features")
    if not isinstance(features, list):
        raise JobSourceError("stac_item is a FeatureCollection without a list of features; send a STAC item, or "
                             "an ItemCollection of items")
    if not features:
        raise JobSourceError(f"the ItemCollection{f' {url}' if url else ''} holds no items (a search that matched "
                             f"none); search again, wider (bbox, datetime, collections)")
    context = collection.get("context")  # STAC API 1.0.0-beta's, before numberMatched
    matched = collection.get("numberMatched", context.get("matched") if isinstance(context, dict) else None)
    following = any(isinstance(link, dict) and link.get("rel") == "next" for link in collection.get("links") or [])
    if following or (isinstance(matched, int) and matched > len(features)):
        raise JobSourceError(f"the search result{f' {url}' if url else ''} lists {len(features)} of the "
                             f"{matched if isinstance(matched, int) else 'more'} items it matched (the rest on its next "
                             f"pages); narrow the search to the items of one acquisition (its ids, or bbox and datetime)")
    return [(f, self_link(f)) for f in features]


def self_link(item: Any) -> str | None:
    """The URL a STAC object's ``self`` link gives; None where it has none."""
    links = item.get("links") if isinstance(item, dict) else None
    return next((link["href"] for link in links or [] if isinstance(link, dict) and link.get("rel") == "self"
                 and isinstance(link.get("href"), str)), None) if isinstance(links, list) else None


def _asset_bands(key: str, asset: dict[str, Any]) -> list[dict[str, Any]]:
    """Per band of one asset: its names (STAC 1.1 ``bands`` or 1.0 ``eo:bands``) merged with ``raster:bands``."""
    named = asset.get("bands") or asset.get("eo:bands") or []
    storage = asset.get("raster:bands") or []
    n = max(len(named), len(storage), 1)
    out = []
    for i in range(n):
        b = {**(storage[i] if i < len(storage) else {}), **(named[i] if i < len(named) else {})}
        if len(storage) == 0 and i < len(named):  # STAC 1.1 puts raster fields on the band itself
            b = {k.removeprefix("raster:"): v for k, v in b.items()}
        out.append(b)
    return out


def _band_name(key: str, band: dict[str, Any], n_bands: int, href: str | None) -> str:
    """The band's name from its STAC names, where it names a model band or a quality layer (Earth Search's ``scl``,
    HLS's ``Fmask``, DEA's ``oa_fmask``); a single-band asset's key, else its file's name (the Planetary Computer's
    and Earth Search's ``cop-dem-glo-30`` call the DEM ``data``: ``Copernicus_DSM_COG_10_..._DEM.tif``) when they
    do not."""
    candidates = [band.get("eo:common_name"), band.get("common_name"), band.get("name")]
    if n_bands == 1:
        candidates += [key, _RESOLUTION_SUFFIX.sub("", key)]  # the Copernicus Data Space's B04_10m, SCL_20m
    for c in candidates:
        if c and ((named := parse_name(str(c))) is not None and named.used or is_dea_name(str(c))):
            return str(c)
    by_file = name_in_file_name(_file_name(href)) if n_bands == 1 and isinstance(href, str) else None
    return by_file or "-"  # "-": not a band the service reads, skipped


def _asset_names(key: str, asset: dict[str, Any]) -> tuple[str, ...]:
    bands = _asset_bands(key, asset)
    return tuple(_band_name(key, b, len(bands), asset.get("href")) for b in bands)


def _asset_identity(key: str, asset: dict[str, Any]) -> tuple[str, ...]:
    """What the asset's bands are, whatever they are called (``SCL_20m`` and ``SCL`` alike; DEA's ``nbart_red``
    and ``nbar_red``, the same band without the terrain correction)."""
    return tuple(measurement(band_key(n)) for n in _asset_names(key, asset))


def _one_copy_each(available: dict[str, dict[str, Any]], keys: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Of assets that hold the same bands, one: the finest, then a GeoTIFF before another format, then the first.
    Earth Search's items give each band twice, a COG (``red``) and the SAFE's JPEG 2000 (``red-jp2``, in a
    requester-pays bucket); the Copernicus Data Space's at each resolution the SAFE holds it (``B04_10m``,
    ``B04_20m``, ``B04_60m``)."""
    def rank(key: str) -> tuple[float, bool, bool, int]:
        terrain = not key.lower().startswith("nbar_")  # DEA's nbart_ before its nbar_
        return _resolution(key, available[key]), not _is_tiff(available[key]), not terrain, keys.index(key)
    kept: dict[tuple[str, ...], str] = {}
    for key in sorted(keys, key=rank):
        kept.setdefault(_asset_identity(key, available[key]), key)
    chosen = [k for k in keys if k in kept.values()]
    left_out = [{"asset": k, "left_out": f"the same bands as asset {kept[_asset_identity(k, available[k])]!r}"}
                for k in keys if k not in chosen]
    return chosen, left_out


_RESOLUTION_SUFFIX = re.compile(r"_(\d+)m$")


def _resolution(key: str, asset: dict[str, Any]) -> float:
    """The asset's pixel size in metres as the item states it (``gsd``, ``raster:bands``' ``spatial_resolution``, a
    key's ``_20m``); infinite where it does not."""
    storage = asset.get("raster:bands") or asset.get("bands") or [{}]
    for value in (asset.get("gsd"), storage[0].get("spatial_resolution"), storage[0].get("raster:spatial_resolution"),
                  (m := _RESOLUTION_SUFFIX.search(key)) and m.group(1)):
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return math.inf


def _is_tiff(asset: dict[str, Any]) -> bool:
    return str(asset.get("type", "")).startswith("image/tiff")


def _sentinel2_offset(properties: dict[str, Any], canonical: str, band: dict[str, Any]) -> tuple[float, str] | None:
    """The offset of a Sentinel-2 reflectance band as its item's properties state it where its ``raster:bands`` may
    not (module docstring), with why; None where the properties say nothing more."""
    if BANDS[canonical].sensor != "S2" or BANDS[canonical].unit != "reflectance":
        return None
    for key in ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied"):
        if properties.get(key) is True:
            return 0.0, f"{key}: true (the offset is removed from the values already)"
    baseline = properties.get("s2:processing_baseline", properties.get("sentinel:processing_baseline"))
    if "offset" in band or not isinstance(baseline, str):
        return None
    try:
        from_04 = float(baseline) >= 4.0
    except ValueError:
        return None
    return (-0.1, f"s2:processing_baseline {baseline}: values carry the offset of -1000 from 04.00") if from_04 else None


def resolve_stac(item: dict[str, Any], assets: Sequence[str] | None, item_url: str | None,
                 allowed_prefixes: Sequence[str] = ()) -> ResolvedSources:
    """The item's raster assets (``assets``, or every one whose bands name model bands) as one scene."""
    if not isinstance(item, dict) or item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise JobSourceError("stac_item is not a STAC item (a GeoJSON Feature with assets); send an item, a list of "
                             "them or an ItemCollection (a search's result), not a collection")
    try:
        return _resolve_item(item, assets, item_url, allowed_prefixes)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
        if isinstance(e, JobSourceError):
            raise
        raise JobSourceError(f"the STAC item does not follow the STAC and eo/raster extension schemas ({type(e).__name__}: "
                             f"{e}); check it with a STAC validator") from None


#: Where a Zarr store's path ends in an asset's href: ``.../S2B_MSIL2A_<...>.zarr`` of ``....zarr/measurements/...``.
_ZARR_STORE = re.compile(r"^(.*?\.zarr)(?:/|$)", re.I)


def _zarr_product(available: dict[str, dict[str, Any]], item_url: str | None) -> tuple[str, str] | None:
    """``(asset key, store URL)`` of the one Zarr store the item's assets lie in (an EOPF product); None where none
    does, or several do."""
    stores = {}
    for key, asset in available.items():
        href = urljoin(item_url, asset.get("href") or "") if item_url else asset.get("href") or ""
        if (m := _ZARR_STORE.match(urlsplit(href)._replace(query="", fragment="").geturl())) is not None:
            if m.group(1) not in stores or m.group(1) == href.rstrip("/"):  # the product's own asset names it
                stores[m.group(1)] = key
    if len(stores) != 1:
        return None
    ((url, key),) = stores.items()
    return key, url


def _resolve_item(item: dict[str, Any], assets: Sequence[str] | None, item_url: str | None,
                  allowed_prefixes: Sequence[str]) -> ResolvedSources:
    available = {k: a for k, a in item["assets"].items() if isinstance(a, dict)}
    if not assets and (product := _zarr_product(available, item_url)) is not None:
        key, url = product
        return ResolvedSources([SourceFile(_file_name(url), gdal_path(url, allowed_prefixes))], described=[
            {"asset": key, "store": _file_name(url), "read": "the Zarr product: each band once, at its finest "
             "resolution, scaled as its arrays state (scale_factor, add_offset)"}])
    if assets:
        missing = [a for a in assets if a not in available]
        if missing:
            raise JobSourceError(f"the STAC item has no asset {missing}; its assets: {sorted(available)}")
        chosen, left_out = list(assets), []
    else:
        readable = [k for k, a in available.items()
                    if any(n != "-" for n in _asset_names(k, a)) and "data" in (a.get("roles") or ["data"])]
        if not readable:
            raise JobSourceError(f"no asset of the STAC item names a band the service knows; choose them with assets= "
                                 f"(its assets: {sorted(available)})")
        chosen, left_out = _one_copy_each(available, readable)
    files, names, described = [], [], []
    scale: dict[str | None, float] = {}
    offset: dict[str | None, float] = {}
    units: dict[str | None, Any] = {}
    for key in chosen:
        asset = available[key]
        href = asset.get("href")
        if not href:
            raise JobSourceError(f"asset {key!r} of the STAC item has no href")
        url = urljoin(item_url, href) if item_url else href
        bands = _asset_bands(key, asset)
        nodata = []
        for b in bands:
            name = _band_name(key, b, len(bands), href)
            names.append(name)
            nd = b.get("nodata")
            nodata.append(float("nan") if nd == "nan" else (float(nd) if isinstance(nd, int | float) else None))
            canonical = canonical_or_none(name) if name != "-" else None
            taken = {}
            if canonical and (s2 := _sentinel2_offset(item.get("properties") or {}, canonical, b)) is not None:
                b = {**b, "scale": b.get("scale", 0.0001), "offset": s2[0]}
                taken["offset_from"] = s2[1]
            if canonical:
                if "scale" in b:
                    scale[canonical] = taken["scale"] = float(b["scale"])
                if "offset" in b:
                    offset[canonical] = taken["offset"] = float(b["offset"])
                if b.get("unit") and (unit := parse_unit(str(b["unit"]))) is not None:
                    units[canonical] = unit
                    taken["unit"] = str(b["unit"])
            described.append({"asset": key, "band": name, **taken, **({"nodata": nd} if nd is not None else {})})
        files.append(SourceFile(_file_name(url), gdal_path(url, allowed_prefixes),
                                tuple(nodata) if any(v is not None for v in nodata) else None))
    return ResolvedSources(files, names, UnitOverrides(units, scale, offset), described + left_out)


def _named_apart(files: Sequence[SourceFile]) -> list[SourceFile]:
    """The items' files, those of one name (Earth Search's ``.../S2B_33UUP_20260601_0_L2A/B11.tif`` in each item)
    named with their folder, or their place: a scene's files are told apart, in its report too, by their names."""
    def folder(f: SourceFile) -> str:
        return PurePosixPath(f.path.split("?", 1)[0]).parent.name

    counts = Counter(f.name for f in files)
    named = [replace(f, name=f"{folder(f)}/{f.name}") if counts[f.name] > 1 and folder(f) else f for f in files]
    if len({f.name for f in named}) == len(named):
        return named
    return [replace(f, name=f"{i}/{f.name}") if counts[f.name] > 1 else f for i, f in enumerate(files, start=1)]


def _check_one_time(items: Sequence[ResolvedSources], hours: float = 1.0) -> None:
    """Refuse items acquired more than ``hours`` apart: the tiles of one overpass are seconds apart, and items of two
    dates read as one scene would mix them, a later date painted over an earlier."""
    times = {}
    for r in items:
        try:
            at = datetime.fromisoformat(str(r.acquired))
        except ValueError:  # an item without a datetime, or not ISO: nothing to compare
            continue
        times[r.acquired] = at if at.tzinfo else at.replace(tzinfo=UTC)  # RFC 3339 says the zone; UTC if not
    if times and (max(times.values()) - min(times.values())).total_seconds() > hours * 3600:
        raise JobSourceError(f"the items were acquired at different times ({', '.join(sorted(times))}); a job reads "
                             f"the items of one acquisition (the tiles of one overpass) as one scene: send those of "
                             f"one date, or a job a date")


def one_acquisition(items: Sequence[ResolvedSources]) -> ResolvedSources:
    """Several items of one acquisition (the Sentinel-2 tiles a scene spans) as one scene: the same bands of each,
    read band by band as one raster (``RequestScene(items=True)``), under the catalogue's word of the first."""
    first = items[0]
    if any(r.bands is None for r in items):
        raise JobSourceError("a list of STAC items is read by their assets' bands, and an EOPF item's Zarr product "
                             "names none: send a job an EOPF item")
    for other in items[1:]:
        if sorted(map(band_key, other.bands)) != sorted(map(band_key, first.bands)):
            raise JobSourceError(f"the items give different bands ({', '.join(first.bands)}; "
                                 f"{', '.join(other.bands)}): the items of a job are tiles of one acquisition; "
                                 f"choose the same assets of each with assets=")
        if other.overrides != first.overrides:
            raise JobSourceError("the items state different scales, offsets or units for their bands (two processing "
                                 "baselines: not one acquisition); send a job an item")
    _check_one_time(items)
    files = _named_apart([f for r in items for f in r.files])
    bands = [b for r in items for b in r.bands]
    described = [{"item": i, **d} for i, r in enumerate(items) for d in r.described]
    return ResolvedSources(files, bands, first.overrides, described, items=True,
                           planetary_computer=any(r.planetary_computer for r in items), acquired=first.acquired,
                           item_urls=[url for r in items for url in r.item_urls])


def redacted(text: str, files: Sequence[SourceFile]) -> str:
    """A message as clients may read it: a saved upload's path on the server replaced by the name it was sent as."""
    for f in files:
        if not f.remote:
            text = text.replace(f.path, f.name)
    return text
