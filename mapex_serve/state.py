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

    def __post_init__(self) -> None:
        self.budget = MemoryBudget(int(self.settings.memory_budget_mb * 2**20))

    @property
    def ready(self) -> bool:
        return self.registry is not None and self.registry.ready
