"""Rendering of the KubeRay manifests: kubectl vs the Python fallback, golden files, find(), versions, CLI."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from cluster import manifests
from cluster._internal import kustomize
from cluster._internal.autoscaling import autoscaler_view, parse_quantity
from cluster._internal.validate import dockerfile_ray_tag, version_agreement
from workloads.exceptions import ManifestError

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE_ENV = "RAYSPACE_UPDATE_GOLDEN"
needs_kubectl = pytest.mark.skipif(manifests.kubectl_path() is None, reason="kubectl not on PATH (the fallback is tested alone)")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Every target rendered once with the default engine."""
    return {t: manifests.render(t) for t in manifests.TARGETS}


@needs_kubectl
@pytest.mark.parametrize("target", manifests.TARGETS)
def test_python_fallback_renders_exactly_what_kubectl_renders(target):
    by_kubectl = manifests.render(target, engine="kubectl")
    by_python = manifests.render(target, engine="python")
    assert by_kubectl, f"{target} rendered nothing"
    assert json.dumps(by_python, sort_keys=True) == json.dumps(by_kubectl, sort_keys=True)


def _without_serve_config(objects: list[dict]) -> list[dict]:
    # serveConfigV2 is generated from serve/config.yaml (another package's file) and has its own sync test.
    out = copy.deepcopy(objects)
    for obj in out:
        if obj.get("kind") == "RayService":
            obj["spec"]["serveConfigV2"] = "<generated from serve/config.yaml; see test_manifests_serve_sync.py>\n"
    return out


@pytest.mark.parametrize("target", manifests.TARGETS)
def test_rendered_overlay_matches_golden_file(rendered, target):
    text = manifests.to_yaml(_without_serve_config(rendered[target]))
    golden = GOLDEN / f"{target}.yaml"
    if os.environ.get(UPDATE_ENV) == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"missing {golden}; create it with {UPDATE_ENV}=1 python -m pytest {__file__}"
    assert text == golden.read_text(encoding="utf-8"), (
        f"rendered {target} differs from {golden.relative_to(GOLDEN.parents[1])}; review the diff and, if intended, "
        f"run {UPDATE_ENV}=1 python -m pytest tests/unit/test_manifests.py"
    )


def test_every_overlay_has_the_workspace_objects(rendered):
    for overlay in manifests.OVERLAYS:
        objects = rendered[overlay]
        for kind, name in [("RayCluster", manifests.RAYCLUSTER_NAME), ("RayJob", manifests.RAYJOB_NAME),
                           ("RayService", manifests.RAYSERVICE_NAME), ("RayCronJob", manifests.RAYCRONJOB_NAME),
                           ("Namespace", manifests.NAMESPACE), ("PersistentVolumeClaim", "rayspace-data")]:
            obj = manifests.find(objects, kind, name)
            if kind != "Namespace":
                assert obj["metadata"]["namespace"] == manifests.NAMESPACE, (overlay, kind)
    assert [o["kind"] for o in rendered["dev"]][0] == "Namespace", "apply order must create the namespace first"


def test_overlays_differ_where_they_should(rendered):
    dev_rc = manifests.find(rendered["dev"], "RayCluster")
    gpu_rc = manifests.find(rendered["gpu"], "RayCluster")
    ha = rendered["ha"]
    assert dev_rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1"
    assert manifests.find(rendered["dev"], "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    gpu_group = [g for g in gpu_rc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    gpu_spec = gpu_group["template"]["spec"]
    assert gpu_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_spec["containers"][0]["image"].endswith(":2.60.0-py311-gpu")
    assert "--set train.use_gpu=true" in manifests.find(rendered["gpu"], "RayJob")["spec"]["entrypoint"]
    svc = manifests.find(ha, "RayService")["spec"]["rayClusterConfig"]
    assert svc["gcsFaultToleranceOptions"]["redisAddress"] == "redis://rayspace-redis:6379"
    assert svc["workerGroupSpecs"][0]["minReplicas"] == 2
    assert manifests.find(ha, "Deployment", "rayspace-redis")["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7.2.7-alpine"


def test_rayjob_runs_the_pipeline_on_the_pvc(rendered):
    for overlay in manifests.OVERLAYS:
        for kind in ("RayJob", "RayCronJob"):
            obj = manifests.find(rendered[overlay], kind)
            spec = obj["spec"] if kind == "RayJob" else obj["spec"]["jobTemplate"]
            entry = spec["entrypoint"]
            assert entry.startswith("python -m workloads.pipeline"), entry
            for flag in ("data.lake=/data/lake", "train.storage_path=/data/results", "registry.path=/data/models",
                         "tune.storage_path=/data/results"):
                assert f"--set {flag}" in entry
            if kind == "RayJob":
                assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
            else:  # each run's RayJob deletes its cluster, then itself (raycronjob-history-bounded)
                policies = {r["policy"] for r in spec["deletionStrategy"]["deletionRules"]}
                assert policies == {"DeleteCluster", "DeleteSelf"} and "shutdownAfterJobFinishes" not in spec
            assert spec["activeDeadlineSeconds"] > 0
            assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def test_rayjob_entrypoint_flags_are_valid_workspace_config():
    """The --set flags of the entrypoint parse into a valid WorkspaceConfig (same flags as `rayspace run`)."""
    from workloads.config import load_config

    entry = manifests.find(manifests.render("dev"), "RayJob")["spec"]["entrypoint"].split()
    overrides = [entry[i + 1] for i, tok in enumerate(entry) if tok == "--set"]
    cfg = load_config(None, overrides)
    assert cfg.data.lake == "/data/lake" and cfg.registry.path == "/data/models"


def test_find_reports_what_exists(rendered):
    objects = rendered["dev"]
    assert manifests.find(objects, "RayCluster")["metadata"]["name"] == "rayspace"
    with pytest.raises(ManifestError, match=r"no RayCluster 'nope'.*\['rayspace'\]"):
        manifests.find(objects, "RayCluster", "nope")
    with pytest.raises(ManifestError, match=r"objects of kind ServiceAccount .*pass a name"):
        manifests.find(objects, "ServiceAccount")


def test_unknown_overlay_and_engine_are_clear_errors(monkeypatch):
    with pytest.raises(ManifestError, match=r'Got "prod" for overlay: must be one of dev, gpu, ha'):
        manifests.render("prod")
    with pytest.raises(ManifestError, match="must be auto, kubectl or python"):
        manifests.render("dev", engine="helm")  # type: ignore[arg-type]
    monkeypatch.setattr(manifests, "kubectl_path", lambda: None)
    with pytest.raises(ManifestError, match="kubectl is not on PATH"):
        manifests.render("dev", engine="kubectl")
    assert manifests.render_engine("auto") == "python"


def test_versions_agree_everywhere(rendered):
    import ray

    for overlay in manifests.OVERLAYS:
        finding = version_agreement(rendered[overlay])[0]
        assert finding.ok, finding.message
        assert manifests.find(rendered[overlay], "RayCluster")["spec"]["rayVersion"] == ray.__version__
    assert dockerfile_ray_tag() == f"{ray.__version__}-py311-cpu"
    pyproject = (Path(manifests.CLUSTER_DIR).parent / "pyproject.toml").read_text()
    major_minor = ".".join(ray.__version__.split(".")[:2])
    assert f'"ray[default,train,serve,tune]=={major_minor}.*"' in pyproject


def test_version_mismatch_is_reported(rendered):
    objects = copy.deepcopy(rendered["dev"])
    manifests.find(objects, "RayCluster")["spec"]["rayVersion"] = "2.59.0"
    finding = version_agreement(objects)[0]
    assert not finding.ok
    assert "RayCluster/rayspace:spec.rayVersion is '2.59.0', installed Ray is" in finding.message


def test_autoscaler_reads_the_rendered_raycluster(rendered):
    """Ray's own KubeRay conversion (ray.autoscaler._private.kuberay.autoscaling_config) accepts it."""
    dev = autoscaler_view(manifests.find(rendered["dev"], "RayCluster"))
    assert set(dev.node_types) == {"headgroup", "cpu"}
    assert dev.node_types["headgroup"].resources["CPU"] == 0  # num-cpus: "0" keeps work off the head
    assert dev.node_types["cpu"].resources["CPU"] == 1
    assert dev.node_types["cpu"].resources["memory"] == parse_quantity("3Gi")
    assert (dev.node_types["cpu"].min_workers, dev.node_types["cpu"].max_workers) == (0, 2)
    assert dev.idle_timeout_s == 30
    gpu = autoscaler_view(manifests.find(rendered["gpu"], "RayCluster"))
    assert gpu.node_types["gpu"].resources["GPU"] == 1
    assert gpu.node_types["gpu"].max_workers == 2
    assert gpu.max_workers == 6


def test_autoscaler_findings_pass_for_every_embedded_cluster(rendered):
    findings = manifests.autoscaler_findings(rendered["gpu"])
    assert len(findings) == 4  # RayCluster, RayJob, RayService, RayCronJob
    assert all(f.ok for f in findings), [f.message for f in findings if not f.ok]


def test_autoscaler_finding_fails_when_ray_sees_other_resources_than_the_pods_get(rendered):
    objects = copy.deepcopy(rendered["gpu"])
    rc = manifests.find(objects, "RayCluster")
    gpu = [g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    gpu["rayStartParams"]["num-gpus"] = "2"  # Ray would advertise 2 GPUs on a pod that gets 1
    finding = manifests.autoscaler_findings([rc])[0]
    assert not finding.ok
    assert "gpu: Ray derived" in finding.message and "'GPU': 2.0" in finding.message


def test_autoscaler_finding_fails_when_ray_cannot_read_the_cluster(rendered):
    rc = copy.deepcopy(manifests.find(rendered["dev"], "RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = "not-a-number"
    finding = manifests.autoscaler_findings([rc])[0]
    assert not finding.ok and "Ray's KubeRay autoscaler cannot read it" in finding.message


# --------------------------------------------------------------------------- fallback


def test_json_patch_operations():
    doc = {"a": {"b": [1, 2]}, "x/y": {"k": 1}}
    kustomize.apply_json_patch_op(doc, {"op": "add", "path": "/a/b/-", "value": 3})
    kustomize.apply_json_patch_op(doc, {"op": "add", "path": "/a/b/0", "value": 0})
    kustomize.apply_json_patch_op(doc, {"op": "replace", "path": "/x~1y/k", "value": 2})
    kustomize.apply_json_patch_op(doc, {"op": "remove", "path": "/a/b/1"})
    kustomize.apply_json_patch_op(doc, {"op": "test", "path": "/x~1y/k", "value": 2})
    assert doc == {"a": {"b": [0, 2, 3]}, "x/y": {"k": 2}}
    with pytest.raises(ManifestError, match="path /a/c/d does not exist"):
        kustomize.apply_json_patch_op(doc, {"op": "add", "path": "/a/c/d", "value": 1})
    with pytest.raises(ManifestError, match="cannot replace /a/zz"):
        kustomize.apply_json_patch_op(doc, {"op": "replace", "path": "/a/zz", "value": 1})
    with pytest.raises(ManifestError, match="unsupported or malformed operation"):
        kustomize.apply_json_patch_op(doc, {"op": "move", "from": "/a", "path": "/b"})


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_fallback_refuses_features_it_does_not_implement(tmp_path):
    _write(tmp_path / "kustomization.yaml", "resources: [cm.yaml]\nreplicas: [{name: x, count: 2}]\n")
    _write(tmp_path / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(ManifestError, match=r"\['replicas'\] are not implemented by the pure-Python kustomize fallback"):
        kustomize.build(tmp_path)
    _write(tmp_path / "kustomization.yaml",
           "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap, name: x}\n    patch: |\n      metadata: {labels: {a: b}}\n")
    with pytest.raises(ManifestError, match="strategic-merge patches need kubectl"):
        kustomize.build(tmp_path)
    _write(tmp_path / "kustomization.yaml",
           "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap, name: other}\n    patch: '[]'\n")
    with pytest.raises(ManifestError, match="matches no object"):
        kustomize.build(tmp_path)
    _write(tmp_path / "kustomization.yaml", "resources: [missing.yaml]\n")
    with pytest.raises(ManifestError, match="resource 'missing.yaml' does not exist"):
        kustomize.build(tmp_path)


def test_fallback_images_transformer_reaches_custom_resources(tmp_path):
    _write(tmp_path / "kustomization.yaml",
           "resources: [rc.yaml]\nimages:\n  - {name: rayspace, newName: reg.example/rayspace, digest: 'sha256:" + "a" * 64 + "'}\n")
    _write(tmp_path / "rc.yaml", yaml.safe_dump({
        "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
        "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "h", "image": "rayspace:old"}]}}},
                 "workerGroupSpecs": [{"template": {"spec": {"containers": [{"name": "w", "image": "other:1"}]}}}]},
    }))
    obj = kustomize.build(tmp_path)[0]
    assert obj["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/rayspace@sha256:" + "a" * 64
    assert obj["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == "other:1"


# --------------------------------------------------------------------------------- CLI


def test_cli_render_prints_yaml_that_round_trips(capsys):
    from workloads.cli import main

    assert main(["cluster", "render", "--overlay", "dev"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert json.dumps(docs, sort_keys=True) == json.dumps(manifests.render("dev"), sort_keys=True)


def test_cli_render_json(capsys):
    from workloads.cli import main

    assert main(["cluster", "render", "-o", "monitoring", "--json", "--engine", "python"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["engine"] == "python"
    assert {o["kind"] for o in payload["objects"]} == {"ConfigMap", "PodMonitor", "PrometheusRule"}


def test_cli_check_without_crds_says_how_to_get_them(capsys, tmp_path):
    from workloads.cli import main

    rc = main(["cluster", "check", "--overlay", "dev", "--crds", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"error: no KubeRay CRDs in {tmp_path}" in err and "ray-operator/config/crd/bases" in err
