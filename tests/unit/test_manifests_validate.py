"""Offline validation: strict Kubernetes OpenAPI, KubeRay v1.7.0 CRD schemas, CEL, webhook rules.

Every rule is shown to pass on the real overlays and to fail, with a message naming
the field, on a broken copy.
"""

from __future__ import annotations

import copy
import json

import pytest

from cluster import manifests
from cluster._internal import validate
from cluster._internal.validate import crd_dir, crd_schemas, validate_core, validate_custom, validate_objects, webhook_rules

pytestmark = pytest.mark.skipif(
    not crd_dir().is_dir(),
    reason=f"KubeRay CRDs not found at {crd_dir()}: {validate.CRD_HINT}",
)


@pytest.fixture(scope="module")
def schemas():
    return crd_schemas(str(crd_dir()))


@pytest.fixture(scope="module")
def dev():
    return manifests.render("dev")


def _failures(findings, check):
    return [f for f in findings if f.check == check and not f.ok]


@pytest.mark.parametrize("overlay", [*manifests.OVERLAYS, "base"])
def test_every_object_of_every_overlay_validates(overlay):
    findings = validate_objects(manifests.render(overlay))
    errors = [f"{f.check} {f.obj}: {f.message}" for f in findings if not f.ok]
    assert not errors, "\n".join(errors)
    checks = {f.check for f in findings}
    assert {"crd-schema", "crd-unknown-fields", "crd-cel-rules", "k8s-openapi-1.31", "k8s-openapi-1.37",
            "embedded-pod-templates-1.37", "webhook-name", "webhook-replicas", "webhook-ray-container-first",
            "webhook-token-auth-version", "webhook-rayjob", "webhook-serve-config", "webhook-cron-schedule",
            "versions-agree"} <= checks


def test_crd_schema_reports_every_error_not_the_first(dev, schemas):
    rc = copy.deepcopy(manifests.find(dev, "RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    rc["spec"]["autoscalerOptions"]["upscalingMode"] = "Turbo"
    rc["spec"]["enableInTreeAutoscaling"] = "yes"
    failure = _failures(validate_custom(rc, schemas, ["1.37"]), "crd-schema")[0]
    assert failure.message.startswith("3 error(s) against the KubeRay v1.7.0 CRD")
    assert "spec.workerGroupSpecs[0].maxReplicas: 'four' is not of type 'integer'" in failure.message
    assert "spec.autoscalerOptions.upscalingMode: 'Turbo' is not one of" in failure.message
    assert "spec.enableInTreeAutoscaling: 'yes' is not of type 'boolean'" in failure.message


def test_fields_the_crd_would_prune_are_errors(dev, schemas):
    rc = copy.deepcopy(manifests.find(dev, "RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo: the API server would silently drop it
    failure = _failures(validate_custom(rc, schemas, ["1.37"]), "crd-unknown-fields")[0]
    assert "RayCluster.spec.workerGroupSpecs[0].maxReplica" in failure.message


def test_nested_pod_templates_are_checked_against_the_core_schema(dev, schemas):
    job = copy.deepcopy(manifests.find(dev, "RayJob"))
    job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    failure = _failures(validate_custom(job, schemas, ["1.37"]), "embedded-pod-templates-1.37")[0]
    assert "spec.submitterPodTemplate.spec.containers[0].securityContext" in failure.message
    assert "runAsNonroot" in failure.message


def test_cel_rules_of_the_crd_are_evaluated(dev, schemas):
    job = copy.deepcopy(manifests.find(dev, "RayJob"))
    job["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}
    failure = _failures(validate_custom(job, schemas, ["1.37"]), "crd-cel-rules")[0]
    assert "RayJob.spec.deletionStrategy: deletionStrategy requires either BOTH onSuccess and onFailure" in failure.message
    job["spec"]["managedBy"] = "someone-else"
    failure = _failures(validate_custom(job, schemas, ["1.37"]), "crd-cel-rules")[0]
    assert "managedBy field value must be either" in failure.message


def test_core_objects_are_validated_strictly_for_each_version():
    pdb = copy.deepcopy(manifests.find(manifests.render("ha"), "PodDisruptionBudget"))
    assert all(f.ok for f in validate_core(pdb, ["1.31", "1.37"]))
    pdb["spec"]["maxUnavailabel"] = 1
    pdb["spec"]["selector"]["matchLabels"] = "app"
    failures = [f for f in validate_core(pdb, ["1.31", "1.37"]) if not f.ok]
    assert {f.check for f in failures} == {"k8s-openapi-1.31", "k8s-openapi-1.37"}
    assert failures[0].message.startswith("2 error(s)")
    assert "maxUnavailabel" in failures[0].message and "spec.selector.matchLabels" in failures[0].message


def test_unknown_core_kind_is_reported(dev):
    finding = validate_core({"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "g"}}, ["1.37"])[0]
    assert not finding.ok and "no Kubernetes 1.37 schema for v1 Gadget" in finding.message


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [("RayCluster", "a" * 53, True), ("RayCluster", "a" * 54, False), ("RayJob", "a" * 47, True),
     ("RayService", "a" * 48, False), ("RayCluster", "Rayspace", False), ("RayJob", "9lives", False)],
)
def test_webhook_name_rules(dev, kind, name, ok):
    obj = copy.deepcopy(manifests.find(dev, kind))
    obj["metadata"]["name"] = name
    finding = [f for f in webhook_rules(obj) if f.check == "webhook-name"][0]
    assert finding.ok is ok, finding.message
    if not ok:
        assert "DNS-1035" in finding.message and str(validate.NAME_LIMITS[kind]) in finding.message


def test_webhook_min_max_replicas(dev):
    rc = copy.deepcopy(manifests.find(dev, "RayCluster"))
    rc["spec"]["workerGroupSpecs"][0]["minReplicas"] = 3
    failure = _failures(webhook_rules(rc), "webhook-replicas")[0]
    assert "spec.workerGroupSpecs[0] (cpu): minReplicas 3 > maxReplicas 2" in failure.message


def test_webhook_ray_container_must_be_first(dev):
    svc = copy.deepcopy(manifests.find(dev, "RayService"))
    containers = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    containers.insert(0, {"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"})
    failure = _failures(webhook_rules(svc), "webhook-ray-container-first")[0]
    assert "spec.rayClusterConfig.headGroupSpec.template.spec.containers[0] image 'envoyproxy/envoy:v1.31.0'" in failure.message


def test_webhook_token_auth_needs_ray_2_52(dev):
    rc = copy.deepcopy(manifests.find(dev, "RayCluster"))
    rc["spec"]["rayVersion"] = "2.51.1"
    failure = _failures(webhook_rules(rc), "webhook-token-auth-version")[0]
    assert "token authentication needs Ray >= 2.52" in failure.message


def test_webhook_ttl_needs_shutdown(dev):
    job = copy.deepcopy(manifests.find(dev, "RayJob"))
    job["spec"]["shutdownAfterJobFinishes"] = False
    failure = _failures(webhook_rules(job), "webhook-rayjob")[0]
    assert "ttlSecondsAfterFinished=3600 needs shutdownAfterJobFinishes: true" in failure.message
    cron = copy.deepcopy(manifests.find(dev, "RayCronJob"))
    cron["spec"]["jobTemplate"]["clusterSelector"] = {"ray.io/cluster": "rayspace"}
    failure = _failures(webhook_rules(cron), "webhook-rayjob")[0]
    assert "exactly one of rayClusterSpec and clusterSelector" in failure.message


def test_webhook_cron_schedule_and_time_zone(dev):
    cron = copy.deepcopy(manifests.find(dev, "RayCronJob"))
    cron["spec"]["schedule"] = "0 25 * * *"
    cron["spec"]["timeZone"] = "Mars/Olympus"
    failure = _failures(webhook_rules(cron), "webhook-cron-schedule")[0]
    assert "hour field '25' must be within 0-23" in failure.message and "'Mars/Olympus' is not an IANA time zone" in failure.message


def test_webhook_serve_config_must_parse(dev):
    svc = copy.deepcopy(manifests.find(dev, "RayService"))
    svc["spec"]["serveConfigV2"] = "applications: [unclosed"
    assert _failures(webhook_rules(svc), "webhook-serve-config")


def test_gcs_fault_tolerance_needs_redis_address_and_secret(dev):
    ha = manifests.render("ha")
    svc = copy.deepcopy(manifests.find(ha, "RayService"))
    opts = svc["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert [f.ok for f in webhook_rules(svc) if f.check == "webhook-gcs-fault-tolerance"] == [True]
    del opts["redisAddress"]
    opts["redisPassword"] = {"value": "hunter2"}
    failure = _failures(webhook_rules(svc), "webhook-gcs-fault-tolerance")[0]
    assert "redisAddress is required" in failure.message and "secretKeyRef" in failure.message


def test_missing_crds_raise_with_instructions(tmp_path):
    from workloads.exceptions import ManifestError

    with pytest.raises(ManifestError, match="ray-operator/config/crd/bases"):
        crd_schemas(str(tmp_path))


def test_cli_check_reports_every_check_and_passes(capsys):
    from workloads.cli import main

    assert main(["cluster", "check", "--overlay", "gpu", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["ok"] is True and payload["failed"] == 0 and payload["checks"] == payload["passed"] > 200
    names = {f["check"] for f in payload["findings"]}
    assert {"crd-schema", "read-only-root-filesystem", "autoscaler-node-types", "network-ray-cluster"} <= names


def test_cli_check_fails_with_a_readable_report(monkeypatch, capsys):
    from workloads.cli import main

    real_render = manifests.render

    def broken_render(overlay, *, engine=None):
        objects = real_render(overlay, engine=engine)
        rc = manifests.find(objects, "RayCluster")
        rc["spec"]["workerGroupSpecs"][0]["minReplicas"] = 9
        rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
        return objects

    monkeypatch.setattr(manifests, "render", broken_render)
    assert main(["cluster", "check", "--overlay", "dev", "--failures-only"]) == 1
    out = capsys.readouterr().out
    assert "webhook-replicas" in out and "minReplicas 9 > maxReplicas 2" in out and "FAIL" in out
    assert "read-only-root-filesystem  RayCluster/rayspace:spec.headGroupSpec.template  FAIL" in out
    assert "dev: " in out and " failed" in out


def test_dockerfile_pins_torch_and_makes_workdir_as_the_user(tmp_path):
    from cluster._internal.validate import CLUSTER_DIR, dockerfile_findings

    current = (CLUSTER_DIR / "image" / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile_findings(torch_version="2.13.0")[0].ok
    # The old Dockerfile: `pip install .` (torch unpinned) and WORKDIR without mkdir (root-owned on a classic builder).
    old = current.replace('"torch==${TORCH_VERSION}" ', "").replace("RUN mkdir -p /home/ray/rayspace\n", "")
    path = tmp_path / "Dockerfile"
    path.write_text(old, encoding="utf-8")
    finding = dockerfile_findings(path, torch_version="2.13.0")[0]
    assert not finding.ok
    assert "pip installs torch without a pin" in finding.message
    assert "WORKDIR /home/ray/rayspace is not created by `RUN mkdir -p /home/ray/rayspace` as the non-root USER" in finding.message
    path.write_text(current, encoding="utf-8")
    assert "torch pinned to ['2.13.0'] but the tested (installed) torch is 2.14.1" in \
        dockerfile_findings(path, torch_version="2.14.1")[0].message


def test_the_packaged_crds_are_the_kuberay_release_and_are_used_by_default(repo_root, monkeypatch):
    from cluster._internal import validate

    monkeypatch.delenv(validate.CRDS_ENV, raising=False)
    assert validate.crd_dir() == validate.PACKAGED_CRDS
    packaged = sorted(p.name for p in validate.PACKAGED_CRDS.glob("ray.io_*.yaml"))
    assert packaged == ["ray.io_rayclusters.yaml", "ray.io_raycronjobs.yaml", "ray.io_rayjobs.yaml",
                        "ray.io_rayservices.yaml"]
    shared = repo_root.parent / "shared" / "kuberay" / "crds"
    if shared.is_dir():  # the copies are byte-identical to the release files the project keeps beside it
        for name in packaged:
            assert (validate.PACKAGED_CRDS / name).read_bytes() == (shared / name).read_bytes(), name


def test_the_image_carries_the_files_the_entrypoints_read_at_run_time(tmp_path):
    from cluster._internal.validate import CLUSTER_DIR, dockerfile_findings

    current = (CLUSTER_DIR / "image" / "Dockerfile").read_text(encoding="utf-8")
    ignore = (CLUSTER_DIR / "image" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    # The previous image copied only the packages: `--config jobs/kuberay.yaml` failed inside it.
    old = "\n".join(ln for ln in current.splitlines()
                    if not any(ln.startswith(f"COPY --chown=1000:100 {p}") for p in ("jobs", "runtime_env", "notebooks")))
    (tmp_path / "Dockerfile").write_text(old, encoding="utf-8")
    (tmp_path / "Dockerfile.dockerignore").write_text(ignore, encoding="utf-8")
    finding = dockerfile_findings(tmp_path / "Dockerfile", torch_version="2.13.0")[0]
    assert not finding.ok and "does not COPY jobs, runtime_env.yaml, notebooks" in finding.message
    (tmp_path / "Dockerfile").write_text(current, encoding="utf-8")
    (tmp_path / "Dockerfile.dockerignore").write_text(ignore.replace("!jobs/\n", ""), encoding="utf-8")
    assert "leaves jobs out of the build context" in dockerfile_findings(tmp_path / "Dockerfile", torch_version="2.13.0")[0].message
