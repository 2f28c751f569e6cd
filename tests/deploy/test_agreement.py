"""The deployment files agree with the code: settings names and values, routes, port, entry commands, timeouts.

Everything on the code side is read from the code (Settings, the app's routes, the CLI's default
port, uvicorn's options, export.build's flags), never copied into this file.
"""

import ast
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import click
import httpx
import pytest
from packaging.requirements import Requirement
from uvicorn.main import main as uvicorn_cli

from mapex_serve.app import create_app
from mapex_serve.local import free_port
from mapex_serve.settings import Settings

#: Environment that is not the application's: the base images', Python's, pip's and compose's own.
PLATFORM_ENV = {"PATH", "LD_LIBRARY_PATH", "DEBIAN_FRONTEND", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
                "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "HOME", "EXPORT_ARGS"}
SERVING = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu"]
EXPORTS = ["k8s/export/gpu", "k8s/export/cpu"]


@pytest.fixture(scope="module")
def code(tmp_path_factory, deploy) -> SimpleNamespace:
    """What the code says: setting names, routes, the CLI's default port, uvicorn's env names, export flags."""
    repo = tmp_path_factory.mktemp("empty-repo")
    prefix = Settings.model_config["env_prefix"]
    assert prefix == "MAPEX_"
    app = create_app(Settings(model_repo=repo))

    import mapex_serve.__main__ as cli

    captured: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("uvicorn.run", lambda _app, **kwargs: captured.update(kwargs))
        mp.setattr("logging.basicConfig", lambda **_: None)
        mp.setenv("MAPEX_MODEL_REPO", str(repo))
        cli.main([])
    assert uvicorn_cli.context_settings.get("auto_envvar_prefix") == "UVICORN"
    uvicorn_env = {f"UVICORN_{p.name.upper()}" for p in uvicorn_cli.params if isinstance(p, click.Option)}

    export_src = [p.read_text() for p in (deploy.ROOT / "export").glob("*.py")]
    export_env = {m for src in export_src for m in re.findall(r"os\.environ\.get\(\s*[\"'](MAPEX_\w+)", src)}
    build = ast.parse((deploy.ROOT / "export" / "build.py").read_text())
    export_flags = {a.value for node in ast.walk(build) if isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") == "add_argument"
                    for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    assert {"--all", "--repo"} <= export_flags
    return SimpleNamespace(settings={prefix + n.upper() for n in Settings.model_fields}, prefix=prefix,
                           routes=set(app.openapi()["paths"]), port=captured["port"], uvicorn_env=uvicorn_env,
                           export_env=export_env, export_flags=export_flags)


def settings_from(env: dict[str, str | None]) -> Settings:
    """Settings exactly as a container with this environment would build them."""
    with pytest.MonkeyPatch.context() as mp:
        for key in os.environ:
            if key.startswith("MAPEX_"):
                mp.delenv(key)
        for key, value in env.items():
            if key.startswith("MAPEX_") and value is not None:
                mp.setenv(key, str(value))
        return Settings()


def serving_envs(dockerfiles, compose, rendered, deploy) -> dict[str, dict[str, str | None]]:
    """Every environment the service runs with: images, compose variants, cluster overlays."""
    envs = {f"docker/{kind}": stages[kind].environment for kind, stages in dockerfiles.items()}
    for variant, config in compose.items():
        envs[f"compose/{variant}"] = config["services"]["serve"]["environment"]
    for k in SERVING:
        _, docs = rendered[k]
        for deployment in deploy.find(docs, "Deployment"):  # the serving replicas and the jobs replica
            env = dict(deploy.find(docs, "ConfigMap")[0]["data"])
            for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
                env[e["name"]] = e.get("value")
            envs[f"{k} {deployment['metadata']['name']}"] = env
    return envs


def export_envs(dockerfiles, compose, rendered, deploy) -> dict[str, dict[str, str | None]]:
    envs = {f"docker/{kind}-export": stages["export"].environment for kind, stages in dockerfiles.items()}
    for variant, config in compose.items():
        if "export" in config["services"]:
            envs[f"compose/{variant}/export"] = config["services"]["export"]["environment"]
    for k in EXPORTS:
        container = deploy.find(rendered[k][1], "Job")[0]["spec"]["template"]["spec"]["containers"][0]
        envs[k] = {e["name"]: e.get("value") for e in container.get("env", [])}
    return envs


def test_every_environment_name_is_a_real_setting(code, dockerfiles, compose, rendered, deploy):
    for where, env in serving_envs(dockerfiles, compose, rendered, deploy).items():
        for name in env:
            if name.startswith(code.prefix):
                assert name in code.settings, f"{where}: {name} is not a setting; settings: {sorted(code.settings)}"
            elif name.startswith("UVICORN_"):
                assert name in code.uvicorn_env, f"{where}: uvicorn has no option for {name}"
            else:
                assert name in PLATFORM_ENV, f"{where}: {name} is neither a setting nor a uvicorn option"
    for where, env in export_envs(dockerfiles, compose, rendered, deploy).items():
        for name in env:
            if name.startswith(code.prefix):
                assert name in code.export_env, f"{where}: export reads no {name}; it reads {sorted(code.export_env)}"
            else:
                assert name in PLATFORM_ENV, f"{where}: {name} is not read by export.build"


def test_every_environment_makes_valid_settings_and_drains_within_the_shutdown_timeout(
        code, dockerfiles, compose, rendered, deploy):
    """The values parse as Settings, and uvicorn's graceful shutdown outlasts the request timeout."""
    for where, env in serving_envs(dockerfiles, compose, rendered, deploy).items():
        settings = settings_from(env)
        graceful = float(env["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
        assert graceful > settings.request_timeout_s, f"{where}: shutdown {graceful} s cuts {settings.request_timeout_s} s requests"
        assert env["MAPEX_MODEL_REPO"] and env["MAPEX_ENGINE_CACHE"], where


def duration_s(text: str) -> float:
    """A Go duration as compose prints it (``1m30s``)."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", text))


def test_stopping_waits_for_draining(dockerfiles, compose, rendered, deploy):
    for config in compose.values():
        serve = config["services"]["serve"]
        assert duration_s(serve["stop_grace_period"]) > float(serve["environment"]["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
    for k in SERVING:
        _, docs = rendered[k]
        graceful = float(deploy.find(docs, "ConfigMap")[0]["data"]["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
        for deployment in deploy.find(docs, "Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
            assert pre_stop[0] == "sleep"
            assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + graceful, k


def test_probes_and_scraping_use_real_routes(code, dockerfiles, compose, rendered, deploy):
    for kind, stages in dockerfiles.items():
        check = stages[kind].last("HEALTHCHECK").split(" CMD ", 1)[1]
        assert any(p in code.routes for p in json.loads(check)), f"docker/{kind}: {check}"
    for variant, config in compose.items():
        test = config["services"]["serve"]["healthcheck"]["test"]
        assert any(p in code.routes for p in test), f"compose/{variant}: {test}"
    for k in SERVING:
        for deployment in deploy.find(rendered[k][1], "Deployment"):
            template = deployment["spec"]["template"]
            container = template["spec"]["containers"][0]
            paths = {p: container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
            assert set(paths.values()) <= code.routes, f"{k}: {paths} vs {sorted(code.routes)}"
            assert paths["readinessProbe"] != paths["livenessProbe"], f"{k}: readiness must be more than liveness"
            assert template["metadata"]["annotations"]["prometheus.io/path"] in code.routes, k


def test_one_port_everywhere(code, dockerfiles, compose, rendered, deploy):
    """The CLI's default port is the image's, compose's, the container's, the scrape's and the policy's."""
    for kind, stages in dockerfiles.items():
        serving = stages[kind]
        assert int(serving.environment["UVICORN_PORT"]) == code.port, kind
        assert [int(p) for p in serving.all("EXPOSE")] == [code.port], kind
    for variant, config in compose.items():
        assert [p["target"] for p in config["services"]["serve"]["ports"]] == [code.port], variant
    for k in SERVING:
        _, docs = rendered[k]
        for deployment in deploy.find(docs, "Deployment"):
            template = deployment["spec"]["template"]
            ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
            assert list(ports.values()) == [code.port], k
            assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == code.port, k
            for service in deploy.find(docs, "Service"):
                assert service["spec"]["ports"][0]["targetPort"] in ports, k
        policy = deploy.find(docs, "NetworkPolicy")[0]["spec"]["ingress"][0]["ports"]
        assert [p["port"] for p in policy] == [code.port], k


def test_entry_commands_name_real_programs(code, dockerfiles, compose, rendered, deploy):
    pyproject = tomllib.loads((deploy.ROOT / "pyproject.toml").read_text())["project"]
    for kind, stages in dockerfiles.items():
        program, target, *flags = stages[kind].exec_form("ENTRYPOINT")
        dist = next(Requirement(r).name for r in pyproject["dependencies"] if Requirement(r).name == program)
        assert program in {e.name for e in importlib.metadata.distribution(dist).entry_points}, kind
        module, _, attr = target.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        assert flags == ["--factory"] and all(p.default is not p.empty
                                              for p in inspect.signature(factory).parameters.values()), kind
        export = stages["export"].exec_form("ENTRYPOINT")
        assert export[:2] == ["python", "-m"] and importlib.util.find_spec(export[2]) is not None, kind
        assert set(f for f in stages["export"].exec_form("CMD") if f.startswith("--")) <= code.export_flags, kind
    for variant, config in compose.items():
        if "export" in config["services"]:
            export = config["services"]["export"]
            line = " ".join(export["command"]).replace("$$EXPORT_ARGS", export["environment"]["EXPORT_ARGS"])
            assert set(re.findall(r"(?<!\S)--[a-z][\w-]*", line)) <= code.export_flags, variant
    for k in SERVING:
        for deployment in deploy.find(rendered[k][1], "Deployment"):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            assert "command" not in container and "args" not in container, f"{k}: the image's entry command must run"
    for k in EXPORTS:
        container = deploy.find(rendered[k][1], "Job")[0]["spec"]["template"]["spec"]["containers"][0]
        assert {a for a in container["args"] if a.startswith("--")} <= code.export_flags, k


def test_volumes_are_where_the_settings_point(rendered, deploy):
    for k in SERVING:
        _, docs = rendered[k]
        settings = deploy.find(docs, "ConfigMap")[0]["data"]
        for deployment in deploy.find(docs, "Deployment"):
            mounts = {m["name"]: m for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
            assert mounts["models"]["mountPath"] == settings["MAPEX_MODEL_REPO"] and mounts["models"]["readOnly"], k
            assert mounts["engine-cache"]["mountPath"] == settings["MAPEX_ENGINE_CACHE"], k
        jobs = deploy.find(docs, "Deployment", "mapex-serve-jobs")[0]["spec"]["template"]["spec"]["containers"][0]
        assert settings["MAPEX_JOBS_DIR"] in {m["mountPath"] for m in jobs["volumeMounts"]}, k
    for k in EXPORTS:
        container = deploy.find(rendered[k][1], "Job")[0]["spec"]["template"]["spec"]["containers"][0]
        repo = container["args"][container["args"].index("--repo") + 1]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert repo in mounts and env["MAPEX_CACHE"] in mounts, k


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_image_entry_command_serves_its_probes(kind, code, dockerfiles, deploy, tmp_path):
    """Run the image's ENTRYPOINT with the image's environment (paths mapped to this checkout) on loopback."""
    stage = dockerfiles[kind][kind]
    copies = {dest: deploy.ROOT / src for src, dest in
              (rest.split()[-2:] for rest in stage.all("COPY") if not rest.startswith("--from="))}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAPEX_", "UVICORN_"))}
    env |= {k: v for k, v in stage.environment.items() if k.startswith(("MAPEX_", "UVICORN_"))}
    port = free_port()
    env |= {"MAPEX_MODEL_REPO": str(tmp_path / "models"), "MAPEX_ENGINE_CACHE": str(tmp_path / "engines"),
            "UVICORN_HOST": "127.0.0.1", "UVICORN_PORT": str(port),
            "UVICORN_LOG_CONFIG": str(copies[env["UVICORN_LOG_CONFIG"]])}
    check = json.loads(stage.last("HEALTHCHECK").split(" CMD ", 1)[1])
    script = copies[check[1]]
    entry = stage.exec_form("ENTRYPOINT")
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / entry[0]), *entry[1:]], cwd=deploy.ROOT,
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        probe = lambda path: subprocess.run([sys.executable, str(script), path], env=env,  # noqa: E731
                                            capture_output=True, text=True, timeout=30, check=False).returncode
        deadline = time.monotonic() + 90
        while probe(check[2]) != 0:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        for path in ("/healthz", "/readyz"):
            assert path in code.routes and probe(path) == 0, path
        assert probe("/no-such-route") == 1, "the health check must fail on an error status"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "mapex_queue_duration_seconds" in metrics, "the autoscaler's metric (docs/deploy.md) is exported"
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=60)
    # uvicorn re-raises SIGTERM once it has drained; what matters is that the lifespan ran to its end.
    assert status in (0, -signal.SIGTERM) and "Application shutdown complete" in log.read_text(), log.read_text()
    assert "registry ready" in log.read_text(), "docker/logging.json lets the service's INFO lines through"
