"""Prometheus metrics of the service, in one registry per app (so tests and workers stay apart)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mapex_serve.jobs.store import JobState

__all__ = ["Metrics", "SpecialistMetrics"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter("mapex_requests", "Prediction requests by task, specialist and HTTP status",
                                ["task", "specialist", "status"], registry=r)
        self.request_seconds = Histogram("mapex_request_duration_seconds", "Whole request time",
                                         ["task"], buckets=_SECONDS, registry=r)
        self.queue_seconds = Histogram("mapex_queue_duration_seconds", "Time tiles wait for an engine batch",
                                       ["specialist"], buckets=_SECONDS, registry=r)
        self.compute_seconds = Histogram("mapex_compute_duration_seconds", "Engine time per batch",
                                         ["specialist"], buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("mapex_batch_size", "Tiles per engine batch", ["specialist"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("mapex_queue_depth", "Tiles waiting for an engine", ["specialist"], registry=r)
        self.tiles_dropped = Counter("mapex_tiles_dropped", "Tiles of cancelled requests (timed out, client gone) "
                                     "dropped before the engine ran them", ["specialist"], registry=r)
        self.decode_restarts = Counter("mapex_decode_worker_restarts", "Decode workers that died and were replaced",
                                       registry=r)
        self.scene_parts = Histogram("mapex_scene_parts", "Parts a /predict mask scene large enough to split ran in "
                                     "(1: whole, no other decode worker idle)", ["specialist"],
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.memory_budget_used = Gauge(
            "mapex_memory_budget_used_bytes", "Bytes of MAPEX_MEMORY_BUDGET_MB the requests in flight hold (scenes' "
            "outputs and batches, uploads received into memory); near the budget, requests get 503", registry=r)
        self.large_uploads = Counter(
            "mapex_large_uploads", "/predict bodies of 4 MiB or more (raw or multipart, with a Content-Length or sent "
            "chunked), by how they were read: "
            "while_arriving, or once all in because they arrived_first (all in before their header was looked at), "
            "their TIFF directory comes last (directory_last) or they are not_a_tiff", ["read"], registry=r)

    def request_done(self, task: str, specialist: str, status: int, seconds: float) -> None:
        """Count one prediction request, its series looked up once. ``task``: one the service has, or ``unknown``
        (a path segment a client made up must not become a series of its own)."""
        key = (task, specialist, status)
        if (series := self._request_series.get(key)) is None:
            series = self._request_series[key] = (self.requests.labels(task, specialist, str(status)),
                                                  self.request_seconds.labels(task))
        count, latency = series
        count.inc()
        latency.observe(seconds)

    def of_specialist(self, name: str) -> SpecialistMetrics:
        """The series of one specialist's engine, looked up once (``labels()`` is several µs, and a request on the
        event loop touched them six times)."""
        return SpecialistMetrics(self.queue_seconds.labels(name), self.compute_seconds.labels(name),
                                 self.batch_size.labels(name), self.queue_depth.labels(name),
                                 self.tiles_dropped.labels(name))

    def watch_jobs(self, counts: Callable[[], Mapping[tuple[str, JobState], int]]) -> None:
        """Report ``mapex_jobs{task, state}`` from ``counts`` (the jobs store) at each scrape."""
        self.registry.register(_JobsCollector(counts))


@dataclass(frozen=True)
class SpecialistMetrics:
    """One specialist's engine series (``Metrics.of_specialist``)."""

    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    tiles_dropped: Counter


@dataclass(frozen=True)
class _JobsCollector(Collector):
    """Jobs by task and state, read from the store when scraped: it outlives restarts, as the jobs do."""

    counts: Callable[[], Mapping[tuple[str, JobState], int]]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("mapex_jobs", "Whole-scene jobs in the store by task and state",
                                   labels=["task", "state"])
        counts = self.counts()
        for task in sorted({task for task, _ in counts}):
            for state in get_args(JobState):  # every state of a task, 0 included: an alert needs the series
                family.add_metric([task, state], counts.get((task, state), 0))
        yield family
