"""``docker compose config`` on every variant (profiles, CPU override), and what each must contain."""


def test_every_variant_is_valid(compose, compose_variant):
    services = compose[compose_variant]["services"]
    assert "serve" in services
    assert ("export" in services) == compose_variant.endswith("-export"), "export runs only with --profile export"


def test_compose_config_fails_on_planted_errors(deploy, tmp_path):
    """An unknown key and a misspelt GPU reservation field must both be rejected."""
    text = (deploy.ROOT / "compose.yaml").read_text()
    for name, bad in {
        "unknown key": text.replace("    init: true\n", "    init: true\n    gpus_please: 1\n", 1),
        "misspelt capabilities": text.replace("capabilities: [gpu]", "capabilites: [gpu]", 1),
    }.items():
        assert bad != text, name
        (tmp_path / "compose.yaml").write_text(bad)
        result = deploy.compose_config("gpu", files=["compose.yaml"], cwd=tmp_path)
        assert result.returncode != 0, f"{name}: docker compose config accepted it"
        assert "gpus_please" in result.stderr or "capabilites" in result.stderr, result.stderr


def test_gpu_variants_reserve_an_nvidia_gpu_and_cpu_variants_do_not(compose, compose_variant):
    for name, service in compose[compose_variant]["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if compose_variant.startswith("gpu"):
            assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
            assert int(devices[0]["count"]) >= 1
        else:
            assert not devices, f"{compose_variant}/{name} reserves a GPU"


def test_serve_is_run_like_a_service(compose, compose_variant):
    serve = compose[compose_variant]["services"]["serve"]
    env = serve["environment"]
    assert serve["restart"] in {"unless-stopped", "always"}
    assert serve["logging"]["driver"] == "json-file" and {"max-size", "max-file"} <= set(serve["logging"]["options"])
    assert serve["read_only"] is True and "/tmp" in serve["tmpfs"]
    mounts = {v["target"]: v for v in serve["volumes"]}
    assert mounts[env["MAPEX_MODEL_REPO"]]["type"] == "volume" and mounts[env["MAPEX_MODEL_REPO"]].get("read_only")
    assert mounts[env["MAPEX_ENGINE_CACHE"]]["type"] == "volume"
    assert "/readyz" in serve["healthcheck"]["test"]
    if compose_variant.endswith("-export"):
        export = compose[compose_variant]["services"]["export"]
        assert serve["depends_on"]["export"]["condition"] == "service_completed_successfully"
        assert {v["target"]: v["source"] for v in export["volumes"]}[env["MAPEX_MODEL_REPO"]] == mounts[env["MAPEX_MODEL_REPO"]]["source"]
        assert "python -m export.build --all" in " ".join(export["command"])
    assert env["MAPEX_PROVIDERS"] == ("cpu" if compose_variant.startswith("cpu") else "tensorrt,cuda,cpu")
