"""Prometheus metrics of the service, in one registry per app (so tests and workers stay apart)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
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
