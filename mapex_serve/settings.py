"""Service settings, read from ``MAPEX_*`` environment variables (or passed to the app factory).

Config flows one way: environment -> ``Settings`` -> constructor arguments of the registry, the
engines and the app. Every field's description is the README's configuration table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mapex_serve.cores import service_processes, usable_cores
from mapex_serve.jobs.signing import PLANETARY_COMPUTER_SAS

__all__ = ["DEFAULT_PROVIDERS", "PROVIDER_ALIASES", "Settings", "resolve_provider"]

DEFAULT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

#: Short names accepted for the ONNX Runtime execution providers this service knows how to configure.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _known_providers() -> list[str]:
    import onnxruntime as ort  # every provider this onnxruntime release knows, available here or not

    return list(ort.get_all_providers())


def resolve_provider(name: str) -> str:
    """``cuda`` / ``CUDAExecutionProvider`` (any case) -> ``CUDAExecutionProvider``; unknown names raise ``ValueError``."""
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key.lower()]
    known = _known_providers()
    for provider in known:
        if provider.lower() == key.lower():
            return provider
    raise ValueError(
        f"unknown execution provider {name!r}; accepted: {', '.join(sorted(PROVIDER_ALIASES))} "
        f"or an onnxruntime provider name ({', '.join(known)})"
    )


class Settings(BaseSettings):
    """mapex-serve configuration; every field can be set as ``MAPEX_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MAPEX_", extra="ignore", validate_default=True)

    model_repo: Path = Field(
        Path("models"),
        description="Model repository folder: `<repo>/<specialist>/<version>/{model.onnx, manifest.json}` "
        "(build one with `python -m export.build --all --repo <path>`).",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="ONNX Runtime execution providers in order of preference, comma-separated "
        "(`tensorrt,cuda,cpu` or full names such as `CUDAExecutionProvider`); those this onnxruntime "
        "build lacks are skipped with a warning.",
    )
    max_batch: int = Field(32, ge=1, description="Largest batch of tiles sent to an engine in one call; with several "
                           "engine runners a batch takes at most its runner's share of the tiles queued and running.")
    max_delay_ms: float = Field(
        5.0, ge=0, description="While the engine is busy, how long the next batch keeps gathering tiles (ms); an "
        "idle engine runs what is queued at once."
    )
    max_queue: int = Field(
        4096, ge=1, description="Tiles waiting per engine before requests are refused with 503 (a request's first "
        "batch is admitted against it, and a scene then queues up to a batch for each engine runner and one more: 4096 "
        "holds 128 single-tile requests at the default batch, and as few as 42 scenes arriving at once on two runners)."
    )
    max_upload_mb: float = Field(200, gt=0, description="Largest accepted upload (MiB), and what the archives of one "
                                                        "request may unpack to.")
    max_pixels: int = Field(64_000_000, ge=1, description="Largest accepted raster, width x height.")
    request_timeout_s: float = Field(60, gt=0, description="Time limit for one request, upload to response (s): "
                                     "408 if its upload still arrives then, 504 after.")
    memory_budget_mb: float = Field(
        3072, gt=0, description="Memory the requests in flight may allocate for blending and encoding (MiB), sized "
        "from each scene before it is read, and the bodies received into the service's memory as they arrive "
        "(multipart under 4 MiB, any without decode workers, /v2 inference), and what a request's archives unpack "
        "to; past it requests get 503 with Retry-After, a scene that alone needs more gets 413."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, prediction routes need `Authorization: Bearer <key>` (health routes stay open); unset: no authentication."
    )
    engine_cache: Path | None = Field(
        None,
        description="Folder for TensorRT engine caches (a persistent volume); default `<model_repo>/.engine-cache`.",
    )
    jobs_dir: Path | None = Field(
        None, description="Where whole-scene jobs keep their state (SQLite) and results; default `<model_repo>/.jobs`. "
        "One server's volume: with several replicas, one runs the jobs and the others pass them on (MAPEX_JOBS_URL)."
    )
    jobs_url: str | None = Field(
        None, description="Another mapex-serve that runs this deployment's whole-scene jobs: when set, this server runs "
        "none and passes every /jobs request on to it, body and answer unchanged, so that any replica answers for every "
        "job (Kubernetes: the one-replica mapex-jobs Deployment, docs/deploy.md); unset: jobs run here."
    )
    job_concurrency: int = Field(1, ge=1, description="Jobs run at once; the others wait in the queue.")
    job_ttl_h: float = Field(72, gt=0, description="Hours a finished job's results are kept before they expire (410).")
    job_max_upload_mb: float = Field(20480, gt=0, description="Largest scene a job accepts as an upload (MiB), "
                                     "streamed to the jobs volume.")
    job_max_pixels: int = Field(2_000_000_000, ge=1, description="Largest scene a job accepts, width x height.")
    job_parts: int | None = Field(
        None, ge=1, description="Parts a mask job's rows are split into, each on its own decode worker; unset: the "
        "decode workers when the specialist's engine runs on a GPU; on the CPU, where the engine and the workers share "
        "the cores, one for every 3 cores (whole on up to 5 cores: on 2 cores two parts took 30% more decode CPU for "
        "the same time; on 16, one worker fed the engine a third of the time; docs/performance.md)."
    )
    predict_parts: int | None = Field(
        None, ge=1, description="Decode workers one /predict mask scene may be split across (parts of tile rows of a "
        "million pixels or more, each opening the upload again, on the workers idle at the time); unset: every decode "
        "worker when the specialist's engine runs on a GPU; on the CPU one for every 3 cores (whole on up to 5 cores, "
        "where the engine binds and the extra decoding would take its cores)."
    )
    job_max_attempts: int = Field(3, ge=1, description="Starts of one job (a restarted service resumes its jobs) "
                                  "before it is failed.")
    job_url_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="When set (comma-separated), job URLs must start with one of these, e.g. "
        "`https://sentinel-cogs.s3.us-west-2.amazonaws.com/,s3://my-bucket/`; unset: any http(s), s3 or gs URL."
    )
    job_notify_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="When set (comma-separated), a job's notify URL must start with one of "
        "these, e.g. `https://hooks.example.org/mapex/`; unset: any http(s) URL."
    )
    job_notify_secret: SecretStr | None = Field(
        None, description="When set, each job notification carries X-Mapex-Signature-256: sha256=<the HMAC-SHA256 of "
        "its body with this secret, hex>, which its receiver checks to know the service sent it."
    )
    planetary_computer_sas: str = Field(
        PLANETARY_COMPUTER_SAS, description="The Planetary Computer's SAS token service, which signs a Planetary "
        "Computer STAC item's Azure Blob Storage hrefs for a job (as planetary_computer.sign does); empty: items are "
        "read as sent, and an unsigned one is refused by its storage."
    )
    intra_op_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime threads per run; unset: on a CPU engine the cores over "
        "MAPEX_ENGINE_RUNNERS (1 when that is unset too), on a GPU engine onnxruntime's default."
    )
    engine_runners: int | None = Field(
        None, ge=1, description="Batches each specialist's engine runs at once, one thread each; unset: on a CPU engine "
        "the cores over MAPEX_INTRA_OP_THREADS (every core, one thread a run: on 2 cores a 4096² scene 16.5 -> 12.2-13.3 s, "
        "docs/performance.md), on a GPU engine 1. The cores are the service process's share of the usable ones."
    )
    max_decoding: int = Field(
        64, ge=1, description="Requests each decode worker holds at once (received into shared memory, waiting or "
        "being decoded); past that, new /predict uploads are refused with 503 and Retry-After."
    )
    shm_dir: Path = Field(
        Path("/dev/shm"), description="Where uploads and tiles are shared with the decode workers: a tmpfs (Docker: "
        "--shm-size or compose shm_size; Kubernetes: a memory emptyDir). An upload it has no room for is decoded in "
        "the service process instead; the temp folder is used if it is not writable."
    )
    decode_workers: int | None = Field(
        None, ge=0, description="Processes that open, tile, blend and encode /predict uploads and whole-scene jobs; "
        "unset: (cores - 1) "
        "shared among UVICORN_WORKERS service processes (at least 1 each), the cores being the container's CPU "
        "limit where it has one; 0: in the service process (threads)."
    )

    @property
    def max_upload_bytes(self) -> int:
        """MAPEX_MAX_UPLOAD_MB in bytes: an upload's limit, and what the archives of one may unpack to."""
        return int(self.max_upload_mb * 2**20)

    @property
    def job_max_upload_bytes(self) -> int:
        """MAPEX_JOB_MAX_UPLOAD_MB in bytes: a job's upload, and what its archives may unpack to."""
        return int(self.job_max_upload_mb * 2**20)

    @property
    def decode_worker_count(self) -> int:
        """Decode workers of this service process: the usable cores but one, split among uvicorn's worker processes."""
        if self.decode_workers is not None:
            return self.decode_workers
        return max((usable_cores() - 1) // service_processes(), 1)

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"providers: {text!r} is not a JSON list; write e.g. tensorrt,cuda,cpu") from e
            return [p for p in (part.strip() for part in text.split(",")) if p]
        return v

    @field_validator("job_url_prefixes", "job_notify_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("jobs_url")
    @classmethod
    def _http_jobs_url(cls, v: str | None) -> str | None:
        url = (v or "").strip().rstrip("/")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"jobs_url: {v!r} is not an http(s) URL; write e.g. http://mapex-jobs")
        return url or None

    @field_validator("providers")
    @classmethod
    def _resolve_providers(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("providers must name at least one execution provider, e.g. cpu or tensorrt,cuda,cpu")
        resolved: list[str] = []
        for name in v:
            provider = resolve_provider(name)
            if provider not in resolved:
                resolved.append(provider)
        return resolved

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue ({self.max_queue}) must hold at least one batch (max_batch {self.max_batch}): "
                             f"a request queues up to max_batch tiles at a time")
        return self

    @model_validator(mode="after")
    def _default_engine_cache(self) -> Settings:
        if self.engine_cache is None:
            self.engine_cache = self.model_repo / ".engine-cache"
        return self

    @property
    def jobs_folder(self) -> Path:
        """``jobs_dir``, or ``<model_repo>/.jobs`` when unset."""
        return self.jobs_dir if self.jobs_dir is not None else self.model_repo / ".jobs"

    @property
    def engine_cache_dir(self) -> Path:
        """``engine_cache``, never None (filled in from ``model_repo`` when unset)."""
        return self.engine_cache if self.engine_cache is not None else self.model_repo / ".engine-cache"
