"""What a job request says and what ``GET /jobs/{id}`` answers: the typed boundary of the jobs API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mapex_serve.aoi import parse_aoi
from mapex_serve.errors import MapexError
from mapex_serve.jobs.store import JobState
from mapex_serve.units import BackscatterChoice, PixelSizeChoice, ReflectanceChoice, parse_mask_threshold

__all__ = ["JobError", "JobProgress", "JobRequest", "JobRequestError", "JobStatus"]


class JobRequestError(MapexError, ValueError):
    """A job request that does not say what to read, or says it wrongly."""


#: Items of one acquisition a job reads as one scene: a scene over the corner of four Sentinel-2 tiles, twice over.
MAX_ITEMS = 8


class JobRequest(BaseModel):
    """A whole scene to run: uploaded, at URLs, or a STAC item's assets; with ``/predict``'s reading options."""

    model_config = ConfigDict(extra="forbid")

    url: str | list[str] | None = Field(None, description="http(s)://, s3:// or gs:// URL of the scene's raster, or a "
                                        "list of the files of one scene (e.g. the VV and VH COGs)")
    stac_item: str | dict[str, Any] | list[str | dict[str, Any]] | None = Field(
        None, description="a STAC item's http(s) URL, or the item itself; or a list of the items of one acquisition "
        "that a scene spans (the Sentinel-2 tiles of one overpass), read band by band as one raster, or an "
        "ItemCollection of them (a STAC API search's result: its URL or itself)")
    assets: list[str] | None = Field(None, description="the STAC item's asset keys to read (default: every asset "
                                     "whose bands the service knows)")
    bands: str | None = Field(None, description="names of the bands in order over all files, '-' skips one")
    modality: str | None = Field(None, description="force the specialist of this modality, e.g. SAR")
    units: str | None = Field(None, description="unit of the values, for every band or per band (VV:linear)")
    scale: str | None = Field(None, description="physical = stored x scale + offset (or per band: B04:0.0001)")
    offset: str | None = Field(None, description="added after scale")
    pixel_size: PixelSizeChoice | None = Field(None, description="a scene whose pixels are not the size the model "
                                               "learned: model (resample to it) or native (read it as it is)")
    reflectance: ReflectanceChoice | None = Field(None, description="as-is: run Sentinel-2 files of the other "
                                                  "processing level than the model learned (Level-1C for Level-2A)")
    backscatter: BackscatterChoice | None = Field(None, description="as-is: run Sentinel-1 files of the other "
                                                  "backscatter than the model learned (gamma0 for sigma0)")
    bbox: str | None = Field(None, description="the part of the scene to read: west,south,east,north in degrees "
                                               "(WGS84), e.g. 10.10,45.20,10.30,45.35; only its blocks are fetched")
    aoi: dict[str, Any] | str | None = Field(None, description="a polygon of interest, GeoJSON in WGS84 (a Polygon, a "
                                             "MultiPolygon, a Feature or a FeatureCollection of them): the box around "
                                             "it is read, and the pixels outside it are masked; not with bbox")
    mask_threshold: str | None = Field(None, description="where a cloud probability or clear score layer masks, in its "
                                       "own values: 0.5 (a number or a text) for the scene's one such layer, or per "
                                       "layer: cs_cdf:0.5,CLP:80")
    probabilities: bool = Field(False, description="also write per-class probabilities (uint8, scale 1/254)")
    geojson: bool = Field(True, description="also vectorise the mask's classes to GeoJSON polygons (WGS84)")
    geojson_classes: list[str] | None = Field(None, description="classes to vectorise (default: the positive class "
                                              "of a two-class mask, every class otherwise)")
    simplify: float = Field(0.0, ge=0, allow_inf_nan=False, description="polygon simplification tolerance in the scene CRS's units")
    min_area_m2: float = Field(0.0, ge=0, allow_inf_nan=False, description="drop polygons smaller than this (m²)")
    notify: str | None = Field(None, description="an http(s) URL the service POSTs the job's status to when it ends "
                               "(done, failed or cancelled), its result URLs absolute")

    @field_validator("mask_threshold", mode="before")
    @classmethod
    def _readable_threshold(cls, given: object) -> object:
        """A number as JSON writes one (``"mask_threshold": 0.5``) is that number's text; a text that names no
        layer or is no number is refused at submission, not when the job runs."""
        text = str(given) if isinstance(given, int | float) and not isinstance(given, bool) else given
        if isinstance(text, str):
            parse_mask_threshold(text)
        return text

    @field_validator("aoi")
    @classmethod
    def _polygonal(cls, given: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
        """A polygon that is not one is refused at submission, not when the job runs."""
        parse_aoi(given)
        return given

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        given = [n for n in ("url", "stac_item") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError("give one source: url or stac_item, not both")
        if self.bbox and self.aoi:
            raise ValueError("give bbox or aoi, not both: aoi reads the box around its polygon")
        if self.assets and not self.stac_item:
            raise ValueError("assets= selects assets of a stac_item; give stac_item too")
        if isinstance(self.url, list) and not self.url:
            raise ValueError("url is an empty list; give the scene's file URLs")
        if isinstance(self.stac_item, list) and not 1 <= len(self.stac_item) <= MAX_ITEMS:
            raise ValueError(f"stac_item lists {len(self.stac_item)} items; give 1 to {MAX_ITEMS}, those of one "
                             f"acquisition that the scene spans")
        return self

    @property
    def has_source(self) -> bool:
        return bool(self.url or self.stac_item)

    def geojson_classes_for(self, classes: Sequence[str]) -> list[int]:
        """Class indexes to vectorise; unknown names are the caller's error."""
        if self.geojson_classes is None:
            return [1] if len(classes) == 2 else list(range(len(classes)))
        unknown = [c for c in self.geojson_classes if c not in classes]
        if unknown:
            raise ValueError(f"geojson_classes {unknown} are not classes of this task ({', '.join(classes)})")
        return [classes.index(c) for c in self.geojson_classes]


class JobProgress(BaseModel):
    tiles_done: int
    tiles_total: int
    fraction: float
    eta_s: float | None = Field(None, description="seconds left at the rate since the job (re)started")
    fetched_bytes: int | None = Field(None, description="bytes of its archive fetched so far, while a job given the "
                                                        "URL of one fetches it")


class JobError(BaseModel):
    error: str
    detail: str


class JobStatus(BaseModel):
    """A job as ``GET /jobs/{id}`` reports it."""

    id: str
    task: str
    state: JobState
    created: float
    started: float | None
    finished: float | None
    attempts: int
    progress: JobProgress
    route: dict[str, Any] | None
    error: JobError | None
    results: dict[str, str] = Field(default_factory=dict, description="the result's URL per format, once done")
    expired: bool = False
