"""The model repository as the service sees it: verified entries, one serving version per specialist.

Loading never fails because of one bad entry: an entry whose manifest is invalid, whose files
disagree with their sha256, or whose engine cannot start is refused (logged, and kept in
``Registry.refused`` with the reason) and the others serve. For each specialist name the highest
version that verifies serves; the other verified versions are listed in ``Registry.versions``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mapex_serve.engine import Engine
from mapex_serve.repository import Manifest, ManifestError, scan_repository, verify_entry
from mapex_serve.settings import Settings

__all__ = ["Refused", "Registry", "Specialist", "build_hint"]

log = logging.getLogger("mapex_serve.registry")


def build_hint(repo: Path) -> str:
    return f"build one with `python -m export.build --all --repo {repo}`"


@dataclass
class Specialist:
    """A serving specialist: its repository entry, manifest and engine."""

    name: str
    version: int
    entry: Path
    manifest: Manifest = field(repr=False)
    engine: Engine

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest.modalities)


@dataclass
class Refused:
    """A repository entry that does not serve, and why."""

    entry: Path
    reason: str


@dataclass
class Registry:
    """Serving specialists by name, refused entries, and whether every engine has warmed up."""

    settings: Settings
    specialists: dict[str, Specialist] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)
    #: Every version of each specialist that verified, ascending; the last that opened is the one serving.
    versions: dict[str, list[int]] = field(default_factory=dict)
    ready: bool = False
    warm_up_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings, *, warm_up: bool = True) -> Registry:
        """Verify every entry of ``settings.model_repo``, open the highest version of each specialist, warm up.

        With ``warm_up=False`` the engines are open but ``ready`` stays False until ``warm_up()`` runs
        (so that a service can answer liveness probes while TensorRT builds its engines).
        """
        registry = cls(settings)
        repo = Path(settings.model_repo)
        if not repo.is_dir():
            log.warning("model repository %s does not exist: no specialists to serve; %s", repo, build_hint(repo))
        elif not (entries := scan_repository(repo)):
            log.warning("model repository %s holds no entries (<specialist>/<version>/manifest.json): "
                        "no specialists to serve; %s", repo, build_hint(repo))
        else:
            registry._open(entries)
        if warm_up:
            registry.warm_up()
        return registry

    def _refuse(self, entry: Path, reason: str) -> None:
        log.warning("refusing %s: %s", entry, reason)
        self.refused.append(Refused(entry, reason))

    def _open(self, entries: list[Path]) -> None:
        verified: dict[str, list[tuple[int, Path, Manifest]]] = defaultdict(list)
        for entry in entries:
            try:
                manifest = verify_entry(entry)
            except ManifestError as e:
                self._refuse(entry, str(e))
                continue
            if (manifest.name, str(manifest.version)) != (entry.parent.name, entry.name):
                self._refuse(entry, f"its manifest names {manifest.name} version {manifest.version}, "
                                    f"but the entry is {entry.parent.name}/{entry.name}")
                continue
            verified[manifest.name].append((manifest.version, entry, manifest))
        for name, candidates in sorted(verified.items()):
            candidates.sort(key=lambda c: c[0])
            self.versions[name] = [v for v, _, _ in candidates]
            for version, entry, manifest in reversed(candidates):  # highest first; fall back on failure
                try:
                    engine = Engine(entry, manifest, self.settings)
                except Exception as e:  # an engine that cannot open must not stop the others
                    self._refuse(entry, f"its engine failed to open: {e}")
                    continue
                self.specialists[name] = Specialist(name, version, entry, manifest, engine)
                if version != candidates[-1][0]:
                    log.warning("%s: serving version %d, not the newest (%d), which was refused",
                                name, version, candidates[-1][0])
                break

    def warm_up(self) -> None:
        """Warm every engine up; one that fails is refused. ``ready`` is True afterwards."""
        for name, specialist in list(self.specialists.items()):
            try:
                self.warm_up_s[name] = specialist.engine.warm_up()
            except Exception as e:  # a failing engine must not keep the others from serving
                self._refuse(specialist.entry, f"warm-up failed: {e}")
                del self.specialists[name]
        serving = ", ".join(f"{s.name} v{s.version} on {s.engine.provider}" for s in self.specialists.values())
        log.info("registry ready: %d specialists serving (%s), %d entries refused",
                 len(self.specialists), serving or "none", len(self.refused))
        self.ready = True

    def tasks(self) -> list[str]:
        """The tasks at least one serving specialist does, sorted."""
        return sorted({s.manifest.task for s in self.specialists.values()})

    def for_task(self, task: str) -> list[Specialist]:
        """The serving specialists for ``task``, those taking the most modalities first (then by name)."""
        matching = [s for s in self.specialists.values() if s.manifest.task == task]
        return sorted(matching, key=lambda s: (-len(s.manifest.modalities), s.name))
