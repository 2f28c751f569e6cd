"""Kubernetes: every resource file and every rendered kustomization through ``kubernetes-validate --strict``."""

from pathlib import Path

import yaml

SERVING = ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/cpu"]


def resource_files(root: Path) -> list[Path]:
    """The files that kustomizations list as resources (patches are partial and are checked rendered)."""
    files = []
    for k in sorted(root.glob("k8s/**/kustomization.yaml")):
        for entry in yaml.safe_load(k.read_text()).get("resources", []):
            if (k.parent / entry).is_file():
                files.append((k.parent / entry).resolve())
    return files


def validate(deploy, *paths: Path):
    return deploy.run("kubernetes-validate", "--strict", "--no-warn", *paths)


def test_every_resource_file_validates(deploy):
    files = resource_files(deploy.ROOT)
    assert len(files) >= 8, files
    result = validate(deploy, *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rendered_kustomization_validates(deploy, rendered, kustomization):
    path, docs = rendered[kustomization]
    assert docs, f"{kustomization} rendered nothing"
    result = validate(deploy, path)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {d["kind"] for d in docs}
    known = {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
             "HorizontalPodAutoscaler", "NetworkPolicy", "Job"}
    assert kinds <= known, f"kinds without a schema check here: {kinds - known}"


def test_kubernetes_validate_fails_on_planted_errors(deploy, rendered, tmp_path):
    """An unknown field (what --strict is for) and a wrongly typed value must both be reported."""
    _, docs = rendered["k8s/overlays/gpu"]
    for name, (plant, reported) in {
        "unknown field": (lambda d: d["spec"].update(replica=3), "'replica' was unexpected"),
        "wrong type": (lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="http"),
                       "containerPort"),
    }.items():
        planted = [yaml.safe_load(yaml.safe_dump(d)) for d in docs]
        plant(deploy.find(planted, "Deployment")[0])
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump_all(planted))
        result = validate(deploy, path)
        assert result.returncode != 0, f"{name}: kubernetes-validate accepted it"
        assert reported in result.stdout, result.stdout


def pod_spec(docs, deploy) -> dict:
    return deploy.find(docs, "Deployment")[0]["spec"]["template"]["spec"]


def test_gpu_overlay_asks_for_a_gpu_and_cpu_overlay_does_not(deploy, rendered):
    for k, wants_gpu in {"k8s/overlays/gpu": True, "k8s/overlays/cpu": False, "k8s/export/gpu": True,
                         "k8s/export/cpu": False}.items():
        _, docs = rendered[k]
        workload = (deploy.find(docs, "Deployment") or deploy.find(docs, "Job"))[0]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == wants_gpu, f"{k}: {limits}"
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(container["resources"]["requests"]), k


def test_pods_are_locked_down(deploy, rendered):
    for k in [*SERVING, "k8s/export/gpu", "k8s/export/cpu"]:
        _, docs = rendered[k]
        spec = (deploy.find(docs, "Deployment") or deploy.find(docs, "Job"))[0]["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, k
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (k, c["name"])
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]} or c["name"] == "wait-for-models", (k, c["name"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], k


def test_selectors_match_the_pods(deploy, rendered):
    for k in SERVING:
        _, docs = rendered[k]
        deployment = deploy.find(docs, "Deployment")[0]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selectors = {
            "Deployment": deployment["spec"]["selector"]["matchLabels"],
            "Service": deploy.find(docs, "Service")[0]["spec"]["selector"],
            "PodDisruptionBudget": deploy.find(docs, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"],
            "NetworkPolicy": deploy.find(docs, "NetworkPolicy")[0]["spec"]["podSelector"]["matchLabels"],
        }
        for kind, selector in selectors.items():
            assert selector.items() <= labels.items(), f"{k}: the {kind} selects {selector}, pods carry {labels}"
        target = deploy.find(docs, "HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]), k
        settings = deploy.find(docs, "ConfigMap")[0]["metadata"]["name"]
        refs = [e["configMapRef"]["name"] for e in pod_spec(docs, deploy)["containers"][0]["envFrom"]]
        assert refs == [settings], f"{k}: the pods read {refs}, the settings are {settings}"
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec(docs, deploy)["volumes"]
                  if "persistentVolumeClaim" in v}
        declared = {d["metadata"]["name"] for d in deploy.find(docs, "PersistentVolumeClaim")}
        assert claims <= declared, f"{k}: claims {claims - declared} are not declared"


def test_autoscaler_scales_on_queue_time_with_a_cpu_fallback(deploy, rendered):
    for k in SERVING:
        hpa = deploy.find(rendered[k][1], "HorizontalPodAutoscaler")[0]["spec"]
        types = {m["type"]: m for m in hpa["metrics"]}
        assert types["Pods"]["pods"]["metric"]["name"] == "mapex_queue_seconds", k
        assert types["Resource"]["resource"]["name"] == "cpu", k
        assert 1 < hpa["minReplicas"] <= hpa["maxReplicas"], k
        pdb = deploy.find(rendered[k][1], "PodDisruptionBudget")[0]["spec"]
        assert pdb.get("maxUnavailable", 0) < hpa["minReplicas"], f"{k}: the PDB would allow draining every replica"


def test_startup_probe_allows_for_engine_builds(deploy, rendered):
    """The server listens only after TensorRT has built every engine: give a GPU pod 10 minutes or more."""
    for k, at_least in {"k8s/overlays/gpu": 600, "k8s/overlays/cpu": 120}.items():
        probe = pod_spec(rendered[k][1], deploy)["containers"][0]["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= at_least, k
