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


def workloads(docs, deploy) -> list[dict]:
    """The Deployments (serving and jobs replicas), or the export Job."""
    return deploy.find(docs, "Deployment") or deploy.find(docs, "Job")


def test_gpu_overlay_asks_for_a_gpu_and_cpu_overlay_does_not(deploy, rendered):
    for k, wants_gpu in {"k8s/overlays/gpu": True, "k8s/overlays/cpu": False, "k8s/export/gpu": True,
                         "k8s/export/cpu": False}.items():
        for workload in workloads(rendered[k][1], deploy):
            container = workload["spec"]["template"]["spec"]["containers"][0]
            limits = container["resources"]["limits"]
            assert ("nvidia.com/gpu" in limits) == wants_gpu, f"{k}: {limits}"
            assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(container["resources"]["requests"]), k


def test_pods_are_locked_down(deploy, rendered):
    for k in [*SERVING, "k8s/export/gpu", "k8s/export/cpu"]:
        for workload in workloads(rendered[k][1], deploy):
            spec = workload["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, k
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, (k, c["name"])
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]} or c["name"] == "wait-for-models", (k, c["name"])
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes["tmp"], k


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_selectors_match_the_pods(deploy, rendered):
    """Each Service, budget and policy selects the pods it is for, and the two Deployments never each other's."""
    for k in SERVING:
        _, docs = rendered[k]
        pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deploy.find(docs, "Deployment")}
        assert set(pods) == {"mapex-serve", "mapex-serve-jobs"}, k
        for d in deploy.find(docs, "Deployment"):
            own = d["spec"]["selector"]["matchLabels"]
            assert [name for name, labels in pods.items() if selects(own, labels)] == [d["metadata"]["name"]], k
        for kind, name, selector, wanted in [
            ("Service", "mapex-serve", lambda d: d["spec"]["selector"], {"mapex-serve"}),
            ("Service", "mapex-jobs", lambda d: d["spec"]["selector"], {"mapex-serve-jobs"}),
            ("PodDisruptionBudget", "mapex-serve", lambda d: d["spec"]["selector"]["matchLabels"], {"mapex-serve"}),
            ("NetworkPolicy", "mapex-serve", lambda d: d["spec"]["podSelector"]["matchLabels"],
             {"mapex-serve", "mapex-serve-jobs"}),
        ]:
            chosen = selector(deploy.find(docs, kind, name)[0])
            assert {n for n, labels in pods.items() if selects(chosen, labels)} == wanted, f"{k}: the {kind} {name}"
        target = deploy.find(docs, "HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "mapex-serve"), k
        settings = deploy.find(docs, "ConfigMap")[0]["metadata"]["name"]
        declared = {d["metadata"]["name"] for d in deploy.find(docs, "PersistentVolumeClaim")}
        for d in deploy.find(docs, "Deployment"):
            spec = d["spec"]["template"]["spec"]
            refs = [e["configMapRef"]["name"] for e in spec["containers"][0]["envFrom"]]
            assert refs == [settings], f"{k}: the pods read {refs}, the settings are {settings}"
            claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
            assert claims <= declared, f"{k}: claims {claims - declared} are not declared"


def env(deployment_spec: dict) -> dict[str, str | None]:
    """The container's own ``env`` (not the ConfigMap's)."""
    return {e["name"]: e.get("value") for e in deployment_spec["template"]["spec"]["containers"][0]["env"]}


def test_jobs_run_in_one_replica_that_the_others_pass_them_to(deploy, rendered):
    """A job's state is one pod's (SQLite on its volume): the serving replicas send /jobs there (docs/deploy.md)."""
    from mapex_serve.settings import Settings

    for k in SERVING:
        _, docs = rendered[k]
        jobs = deploy.find(docs, "Deployment", "mapex-serve-jobs")[0]["spec"]
        serving = deploy.find(docs, "Deployment", "mapex-serve")[0]["spec"]
        assert jobs["replicas"] == 1 and jobs["strategy"] == {"type": "Recreate"}, f"{k}: two pods would run one queue"
        assert Settings(jobs_url=env(jobs)["MAPEX_JOBS_URL"]).jobs_url is None, f"{k}: the jobs replica runs its jobs"
        assert env(jobs)["UVICORN_WORKERS"] == "1", f"{k}: several service processes would each run the queue"
        service = deploy.find(docs, "Service", "mapex-jobs")[0]
        assert env(serving)["MAPEX_JOBS_URL"] == f"http://{service['metadata']['name']}", k
        assert service["spec"]["ports"][0]["port"] == 80, k
        volumes = {v["name"]: v for v in jobs["template"]["spec"]["volumes"]}
        claim = deploy.find(docs, "PersistentVolumeClaim", volumes["jobs"]["persistentVolumeClaim"]["claimName"])[0]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], k
        assert "jobs" not in {v["name"] for v in serving["template"]["spec"]["volumes"]}, f"{k}: serving pods run no jobs"
        jobs_labels = jobs["template"]["metadata"]["labels"]
        port = jobs["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        egress = deploy.find(docs, "NetworkPolicy")[0]["spec"]["egress"]
        assert any(any(selects(to.get("podSelector", {}).get("matchLabels", {"-": "-"}), jobs_labels)
                       for to in rule.get("to", [])) and port in [p["port"] for p in rule["ports"]]
                   for rule in egress), f"{k}: the NetworkPolicy blocks the serving pods from the jobs pod"


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
        for workload in workloads(rendered[k][1], deploy):
            probe = workload["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
            assert probe["periodSeconds"] * probe["failureThreshold"] >= at_least, k
