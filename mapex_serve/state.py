"""What the routes share: settings, metrics, the registry and its batchers, held on ``app.state.mapex``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mapex_serve.batcher import Batcher
from mapex_serve.budget import MemoryBudget
from mapex_serve.metrics import Metrics
from mapex_serve.registry import Registry
from mapex_serve.settings import Settings

if TYPE_CHECKING:  # the runner needs the state: imported for the annotation only
    from mapex_serve.decode.pool import DecodePool
    from mapex_serve.jobs.runner import JobRunner

__all__ = ["ServiceState"]


@dataclass
class ServiceState:
    """One service's state; the registry and batchers appear once the lifespan has opened and warmed the engines."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    registry: Registry | None = None
    batchers: dict[str, Batcher] = field(default_factory=dict)
    budget: MemoryBudget = field(init=False)
    #: Whole-scene jobs, once the lifespan has opened their store; None (and why) when it could not.
    jobs: JobRunner | None = None
    jobs_problem: str = "not started"
    #: Decode worker processes for /predict and jobs; None when MAPEX_DECODE_WORKERS=0 (decoded in this process).
    decode: DecodePool | None = None

    def __post_init__(self) -> None:
        self.budget = MemoryBudget(int(self.settings.memory_budget_mb * 2**20))
        self.metrics.memory_budget_used.set_function(lambda: self.budget.used)

    @property
    def ready(self) -> bool:
        """Engines warm: the routes take requests (``/predict`` waits a while for a decode worker if none is up)."""
        return self.registry is not None and self.registry.ready

    @property
    def serving(self) -> bool:
        """Ready, with a decode worker up when they are used: what the readiness probe reports."""
        return self.ready and (self.decode is None or self.decode.ready_count > 0)
