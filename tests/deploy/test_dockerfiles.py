"""hadolint on every Dockerfile, and what the images must (not) contain."""

import json
import re
import tomllib

from packaging.requirements import Requirement


def test_hadolint_passes(deploy, dockerfile_kind):
    path = deploy.DOCKERFILES[dockerfile_kind]
    result = deploy.run("hadolint", "--no-color", "--failure-threshold", "warning", path)
    assert result.returncode == 0, f"hadolint {path}:\n{result.stdout}{result.stderr}"


def test_hadolint_fails_on_planted_errors(deploy, tmp_path):
    """A validator that cannot fail proves nothing: an invalid port and an unknown instruction must fail."""
    text = deploy.DOCKERFILES["gpu"].read_text()
    assert "EXPOSE 8000" in text
    bad_port = tmp_path / "Dockerfile.port"
    bad_port.write_text(text.replace("EXPOSE 8000", "EXPOSE 80000"))
    result = deploy.run("hadolint", "--no-color", bad_port)
    assert result.returncode != 0 and "DL3011" in result.stdout, result.stdout
    bad_instruction = tmp_path / "Dockerfile.instruction"
    bad_instruction.write_text(text.replace("WORKDIR /tmp", "WORKDIIR /tmp", 1))
    result = deploy.run("hadolint", "--no-color", bad_instruction)
    assert result.returncode != 0, result.stdout


def test_serving_images_carry_no_torch(dockerfiles):
    """The service needs no torch: no serving stage, nor any stage it is built on or copies from, installs it."""
    for kind, stages in dockerfiles.items():
        serving = stages[""]
        assert serving.name == kind, f"the default target of docker/Dockerfile{'' if kind == 'gpu' else '.cpu'} is the service"
        sources = [serving] + [stages[rest.split()[0].split("=", 1)[1]]
                               for rest in serving.all("COPY") if rest.startswith("--from=")]
        for stage in sources:
            runs = " ".join(stage.all("RUN"))
            assert "torch" not in runs, f"{kind}: stage {stage.name} installs torch: {runs}"
        assert "torch" in " ".join(stages["export"].all("RUN")), f"{kind}: the export target builds with torch"


def test_gpu_stack_is_pinned_and_agrees_with_the_gpu_extra(dockerfiles, deploy):
    """CUDA, onnxruntime-gpu and TensorRT are pinned, and the pins are inside pyproject's `gpu` ranges."""
    gpu = dockerfiles["gpu"]
    build = gpu["build"]
    base = gpu["python"].base
    cuda_image = next(line for line in deploy.DOCKERFILES["gpu"].read_text().splitlines()
                      if line.startswith("ARG CUDA_IMAGE=")).split("=", 1)[1]
    assert base == "${CUDA_IMAGE}" and re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", cuda_image)
    pyproject = tomllib.loads((deploy.ROOT / "pyproject.toml").read_text())
    extra = {Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["optional-dependencies"]["gpu"]}
    pins = {"onnxruntime-gpu": build.args["ORT_GPU_VERSION"], "tensorrt": build.args["TENSORRT_VERSION"]}
    for name, version in pins.items():
        assert re.fullmatch(r"\d+(\.\d+)+", version), f"{name} is pinned to an exact version, not {version!r}"
        assert version in extra[name], f"{name}=={version} is outside the gpu extra's {extra[name]}"
    install = " ".join(build.all("RUN"))
    assert '"onnxruntime-gpu==${ORT_GPU_VERSION}"' in install and '"tensorrt==${TENSORRT_VERSION}"' in install
    assert "pip uninstall -y onnxruntime" in install, "the CPU onnxruntime would shadow onnxruntime-gpu"


def test_images_run_as_non_root_with_volumes_and_a_healthcheck(dockerfiles):
    for kind, stages in dockerfiles.items():
        for name in (kind, "export"):
            stage = stages[name]
            user = stage.last("USER")
            assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"{kind}/{name}: numeric non-root USER, got {user}"
        serving = stages[kind]
        env = serving.environment
        volumes = {v for rest in serving.all("VOLUME") for v in json.loads(rest)}
        assert {env["MAPEX_MODEL_REPO"], env["MAPEX_ENGINE_CACHE"]} <= volumes, f"{kind}: {volumes}"
        assert serving.last("HEALTHCHECK"), f"{kind}: no HEALTHCHECK"
