"""When a scene was acquired, by the names its providers give their products and files.

A job's results go to catalogues by their date (``format=stac``): searched for the flood of 12 September, a
catalogue should find the map of that day's overpass, not of the day the job ran. A STAC item states the date;
files sent alone state it in their names, all in UTC:

- Sentinel-1 and -2 products (``S2B_MSIL2A_20170914T093029_...``, ``S1A_IW_GRDH_1SDV_20150705T064241_...``, HyP3's
  ``S1A_IW_20180128T161201_DVP_RTC30_...``) and a SAFE's band files (``T33UUP_20230101T100031_B02_10m.jp2``);
- OPERA's (``OPERA_L2_RTC-S1_T069-147170-IW1_20231019T121502Z_...``) and HLS's (``HLS.S30.T33UUP.2023245T100031``,
  the day of the year), THEIA's MAJA Level-2A products (``SENTINEL2B_20230815-105856-123_L2A_T31TCJ_C_V3-1``);
- Planet's scenes (``20230912_175450_00_2439_3B_...``, SkySat's ``20210913_211131_ssc15_...``);
- Earth Engine's images, which name its downloads: Sentinel-2's (``20230912T100031_20230912T100345_T33UUP.B4.tif``)
  and Landsat's (``LC09_044034_20220111.SR_B4.tif``, the day only);
- Landsat Collection 2 (``LC09_L2SP_044034_20220111_...``), DEA's (``ga_s2am_nbart_3-2-1_53JQJ_2020-10-31_final``),
  FORCE's (``20230815_LEVEL2_SEN2A_BOA.tif``), sen2r's (``S2A2A_20190723_022_Barbellino_BOA_10.tif``) and THEIA's
  L3A monthly syntheses (``SENTINEL2X_20230815-000000-000_L3A_T31TCJ_C_V2-0``, the day at their centre), which
  name the day only: the acquisition is that day, ``2022-01-11T00:00:00Z/2022-01-11T23:59:59Z``.

An Earth Engine export of a collection of one image (``toBands()``) names its bands after that image
(``20230912T100031_20230912T100345_T33UUP_B4``), which dates the file whatever it is called.

SNAP's GeoTIFFs and BEAM-DIMAP products state the scene's start and stop in their DIMAP header
(``mapex_serve.dimap``), which ``sensed`` takes: the acquisition is that span where no name gives its instant (for
two slices of one pass, the union of their spans). Other writers state it in GDAL metadata, which ``raster_sensed``
reads, so that a renamed file is still dated: OPERA RTC-S1's ``ZERO_DOPPLER_START_TIME`` and ``_END_TIME``, HLS's
``SENSING_TIME`` (one instant a datatake over the tile: ``DT; DT``, ``DT + DT``), GDAL's SENTINEL2 driver's
``PRODUCT_START_TIME`` and ``_STOP_TIME`` (kept by a ``gdal_translate`` of a SAFE).

Names of different acquisitions (more than an hour apart) give none: the files would not say which.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import rasterio
from rasterio.errors import RasterioError

from mapex_serve.dimap import remote_sensed
from mapex_serve.earth_engine import catalogue_id, stacked_band

__all__ = ["acquisition", "raster_sensed", "stated_sensing"]

#: (pattern whose group ``t`` is the time, its strptime format); searched in each name's whole path.
_NAMED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![A-Za-z0-9])S[12][A-D]_(?:[A-Z0-9]+_)*?(?P<t>\d{8}T\d{6})(?![0-9])"), "%Y%m%dT%H%M%S"),
    (re.compile(r"(?<![A-Za-z0-9])T\d{2}[A-Z]{3}_(?P<t>\d{8}T\d{6})_"), "%Y%m%dT%H%M%S"),
    (re.compile(r"(?<![A-Za-z0-9])OPERA_L\d_[\w.-]*?_(?P<t>\d{8}T\d{6})Z_"), "%Y%m%dT%H%M%S"),
    # Earth Engine's Sentinel-2 image (``20230912T100031_20230912T100345_T33UUP``: the product's sensing time, the
    # granule's, the tile), which names its downloads (``<id>.B4.tif``)
    (re.compile(r"(?<![A-Za-z0-9])(?P<t>\d{8}T\d{6})_\d{8}T\d{6}_T\d{2}[A-Z]{3}(?![A-Za-z0-9])"), "%Y%m%dT%H%M%S"),
    (re.compile(r"(?<![A-Za-z0-9])(?:SENTINEL2[A-D]|LANDSAT[89]-OLITIRS-XS)_(?P<t>\d{8}-\d{6})-\d{3}_L2A_"),
     "%Y%m%d-%H%M%S"),
    (re.compile(r"(?<![A-Za-z0-9])HLS\.[SL]30\.T\d{2}[A-Z]{3}\.(?P<t>\d{7}T\d{6})\."), "%Y%jT%H%M%S"),
    (re.compile(r"(?<![A-Za-z0-9_])(?P<t>\d{8}_\d{6})_(?:\d{2}_[0-9a-f]{4}_[13]B|[0-9a-f]{4}_[13]B|ssc\d+)"),
     "%Y%m%d_%H%M%S"),
)
#: The same for names that give the day only.
_DAY_NAMED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![A-Za-z0-9])L[COTE]0\d_L\w{3}_\d{6}_(?P<t>\d{8})_\d{8}_\d{2}_(?:T1|T2|RT)"), "%Y%m%d"),
    (re.compile(r"(?<![A-Za-z0-9])L[COTE]0\d_\d{6}_(?P<t>\d{8})(?![0-9])"), "%Y%m%d"),  # Earth Engine's Landsat image
    (re.compile(r"(?<![A-Za-z0-9])ga_[\w-]+?_(?P<t>\d{4}-\d{2}-\d{2})_(?:final|interim|nrt)"), "%Y-%m-%d"),
    (re.compile(r"(?<![A-Za-z0-9])(?P<t>\d{8})_LEVEL2_(?:SEN2[A-D]|LND0\d)_"), "%Y%m%d"),  # FORCE
    (re.compile(r"(?<![A-Za-z0-9])S2[A-D](?:1C|2A)_(?P<t>\d{8})_\d{3}_"), "%Y%m%d"),  # sen2r
    # THEIA's L3A monthly synthesis, by the day at its centre (the time its name gives, 000000, is no sensing time)
    (re.compile(r"(?<![A-Za-z0-9])SENTINEL2[A-DX]_(?P<t>\d{8})-\d{6}-\d{3}_L3A_"), "%Y%m%d"),
)
_ONE_ACQUISITION = timedelta(hours=1)
#: GDAL metadata items that state when the scene was sensed: (start, end), or one item of instants.
_STATED_SPANS = (("ZERO_DOPPLER_START_TIME", "ZERO_DOPPLER_END_TIME"), ("PRODUCT_START_TIME", "PRODUCT_STOP_TIME"))
_STATED_INSTANTS = ("SENSING_TIME",)
_ISO_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?")


def acquisition(names: Iterable[str], sensed: Iterable[tuple[datetime, datetime]] = ()) -> str | None:
    """When the files ``names`` (paths or URLs) were acquired, by their names and the spans their headers state
    (``sensed``): an instant (``2023-09-12T17:54:50Z``) or a span (``start/end``); None where none says, or they say
    different acquisitions."""
    spans = [span for name in names if (span := _span(name)) is not None] + list(sensed)
    instants = [s for s, e in spans if s == e]
    periods = {span for span in spans if span[0] != span[1]}
    if instants:
        first, last = min(instants), max(instants)
        agreed = last - first <= _ONE_ACQUISITION and all(s - _ONE_ACQUISITION <= first and last <= e + _ONE_ACQUISITION
                                                          for s, e in periods)
        return _iso(first) if agreed else None
    if not periods:
        return None
    start, end = min(s for s, _ in periods), max(e for _, e in periods)
    # One acquisition: the periods' union no longer than an hour (two slices of one pass) or than the longest (a day)
    if end - start > max(_ONE_ACQUISITION, *(e - s for s, e in periods)):
        return None
    return f"{_iso(start)}/{_iso(end + timedelta(microseconds=-end.microsecond % 1_000_000))}"  # end rounded up


def _span(name: str) -> tuple[datetime, datetime] | None:
    for pattern, form in _NAMED:
        if (m := pattern.search(name)) is not None and (at := _parsed(m.group("t"), form)) is not None:
            return at, at
    for pattern, form in _DAY_NAMED:
        if (m := pattern.search(name)) is not None and (day := _parsed(m.group("t"), form)) is not None:
            return day, day + timedelta(days=1, seconds=-1)
    return None


def _parsed(text: str, form: str) -> datetime | None:
    try:
        return datetime.strptime(text, form).replace(tzinfo=UTC)
    except ValueError:  # a name of the pattern with an impossible date
        return None


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def stated_sensing(tags: Mapping[str, str]) -> tuple[datetime, datetime] | None:
    """The span a raster's GDAL metadata says it was sensed in (its first and last instant; UTC, which all these
    writers use); None where it says nothing readable."""
    for keys in (*_STATED_SPANS, *((k,) for k in _STATED_INSTANTS)):
        if instants := [at for k in keys for at in _instants(tags.get(k, ""))]:
            return min(instants), max(instants)
    return None


def raster_sensed(path: str) -> tuple[datetime, datetime] | None:
    """When a GeoTIFF on the volume or by URL (a GDAL path) says it was sensed: ``stated_sensing`` of its metadata,
    else, by URL, its SNAP header (``dimap.remote_sensed``; on the volume ``dimap.file_sensed`` maps it). Opened once,
    its header only, bounded to 10 s with no retry, as it is read while a job is submitted; None for any other file,
    or one that cannot be read."""
    # Cached by GDAL, a missing file's failure would come back from the job's own open as a bare "HTTP 404", not as
    # its server's words (S3's "The specified key does not exist"), which the service's answer quotes: the open is
    # made with GDAL's curl cache off for its file system (and only the open: reads of the SNAP header need it).
    bounded = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_TIMEOUT": "10", "GDAL_HTTP_MAX_RETRY": "0"}
    uncached = path[:path.index("/", 1) + 1] if path.startswith("/vsi") else ""
    try:
        with rasterio.Env(**bounded, CPL_VSIL_CURL_NON_CACHED=uncached):
            tiff = rasterio.open(path, driver="GTiff")
        with rasterio.Env(**bounded), tiff:
            return (stated_sensing(tiff.tags()) or _image_sensed(tiff.descriptions)
                    or (remote_sensed(path, tiff) if path.startswith("/vsi") else None))
    except RasterioError:
        return None


def _image_sensed(descriptions: Iterable[str | None]) -> tuple[datetime, datetime] | None:
    """When the one Earth Engine image a file's band names come from was sensed (``toBands()``), by its id."""
    images = {catalogue_id(b.image) for d in descriptions if (b := stacked_band(d)) is not None}
    return _span(images.pop()) if len(images) == 1 else None


def _instants(text: str) -> list[datetime]:
    """The ISO 8601 instants in ``text`` (``2023-10-19T12:15:02.123456Z``; HLS's fractions run to 7 digits)."""
    out = []
    for day, clock, fraction in _ISO_TIME.findall(text):
        try:
            at = datetime.fromisoformat(f"{day}T{clock}")
        except ValueError:
            continue
        out.append(at.replace(tzinfo=UTC, microsecond=int((fraction or "0")[:6].ljust(6, "0"))))
    return out
