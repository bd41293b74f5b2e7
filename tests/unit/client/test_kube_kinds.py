"""RayCluster, RayJob, RayService and RayCronJob against the fake API server and its operator."""

from __future__ import annotations

import base64
import copy

import pytest

from cluster.client import KubeApi, RayCluster, RayCronJob, RayJob, RayService, customize
from cluster.manifests import find
from tests.fakekube import FakeKube, FakeOperator
from workloads.exceptions import (
    AlreadyExistsError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    ValidationError,
    WaitTimeoutError,
)


@pytest.fixture
def dev_cluster(rendered_dev: list[dict]) -> dict:
    return copy.deepcopy(find(rendered_dev, "RayCluster"))


# ----------------------------------------------------------------------------- RayCluster


def test_rendered_cluster_becomes_ready_by_conditions(api: KubeApi, operator: FakeOperator, dev_cluster: dict) -> None:
    rc = RayCluster(api, dev_cluster).apply()
    assert not rc.is_ready
    rc.wait_ready(timeout=10, interval=0.05)
    assert rc.condition_true("HeadPodReady") and rc.condition_true("RayClusterProvisioned")
    assert rc.summary()["ready"] is True


def test_wait_for_one_condition(api: KubeApi, operator: FakeOperator, dev_cluster: dict) -> None:
    rc = RayCluster(api, dev_cluster).apply().wait_condition("HeadPodReady", timeout=10, interval=0.05)
    assert rc.condition_true("HeadPodReady")
    with pytest.raises(WaitTimeoutError, match=r"was not RayClusterSuspended=True after 0.2s; last seen status: .*"
                                               r"RayClusterSuspended=False"):
        rc.wait_condition("RayClusterSuspended", timeout=0.2, interval=0.05)


def test_deprecated_state_alone_is_not_ready(api: KubeApi, fake: FakeKube, dev_cluster: dict) -> None:
    RayCluster(api, dev_cluster).create()
    fake.update_status("RayCluster", "rayspace", "rayspace", {"state": "ready"})
    rc = RayCluster.get(api, "rayspace")
    assert rc.status["state"] == "ready" and not rc.is_ready
    fake.update_status("RayCluster", "rayspace", "rayspace", {"state": "ready", "conditions": [
        {"type": "HeadPodReady", "status": "True"}, {"type": "RayClusterProvisioned", "status": "False"}]})
    assert not rc.refresh().is_ready


def test_scale_within_bounds_is_a_guarded_json_patch(api: KubeApi, fake: FakeKube, dev_cluster: dict) -> None:
    fixed = copy.deepcopy(dev_cluster)
    fixed["spec"]["enableInTreeAutoscaling"] = False
    rc = RayCluster(api, fixed).create()
    group = rc.worker_groups[0]
    hi = group["maxReplicas"]
    rc.scale(group["groupName"], hi)
    req = fake.requests_for("PATCH", "/rayclusters/rayspace")[-1]
    assert req.content_type == "application/json-patch+json"
    assert RayCluster.get(api, "rayspace").worker_groups[0]["replicas"] == hi


def test_scale_of_an_autoscaled_group_sets_its_floor(api: KubeApi, fake: FakeKube, dev_cluster: dict) -> None:
    # The autoscaler rewrites `replicas`; a scale that set it was undone on the next autoscaler round.
    rc = RayCluster(api, dev_cluster).create()
    assert rc.autoscaling
    before = rc.worker_groups[0].get("replicas")
    rc.scale("cpu", 2)
    group = RayCluster.get(api, "rayspace").worker_groups[0]
    assert group["minReplicas"] == 2 and group.get("replicas") == before


@pytest.mark.parametrize("replicas", [-1, 99, True])
def test_scale_outside_bounds_is_refused_before_any_request(api: KubeApi, fake: FakeKube, dev_cluster: dict,
                                                             replicas: int) -> None:
    rc = RayCluster(api, dev_cluster).create()
    before = len(fake.requests_for("PATCH"))
    with pytest.raises(ConfigError, match=r"Got .* for minReplicas of worker group \"cpu\".*between 0 and maxReplicas="):
        rc.scale("cpu", replicas)
    assert len(fake.requests_for("PATCH")) == before


def test_scale_unknown_group(api: KubeApi, dev_cluster: dict) -> None:
    rc = RayCluster(api, dev_cluster).create()
    with pytest.raises(ConfigError, match=r'Got "gpu" for the worker group .* must be one of \[\'cpu\'\]'):
        rc.scale("gpu", 1)


def test_scale_does_not_land_on_a_reordered_group(api: KubeApi, dev_cluster: dict) -> None:
    rc = RayCluster(api, dev_cluster).create()
    # Someone renames/reorders the groups after we read the object.
    RayCluster.get(api, "rayspace").patch([{"op": "replace", "path": "/spec/workerGroupSpecs/0/groupName",
                                            "value": "cpu-old"}])
    with pytest.raises(ValidationError, match="test failed"):
        rc.scale("cpu", 1)
    assert RayCluster.get(api, "rayspace").worker_groups[0]["replicas"] == dev_cluster["spec"]["workerGroupSpecs"][0]["replicas"]


def test_suspend_and_resume(api: KubeApi, operator: FakeOperator, dev_cluster: dict) -> None:
    rc = RayCluster(api, dev_cluster).apply().wait_ready(timeout=10, interval=0.05)
    rc.suspend().wait_suspended(timeout=10, interval=0.05)
    assert not rc.is_ready and rc.spec["suspend"] is True
    rc.resume().wait_ready(timeout=10, interval=0.05)
    assert not rc.is_suspended


def test_endpoints_of_the_head_service(api: KubeApi, operator: FakeOperator, dev_cluster: dict) -> None:
    rc = RayCluster(api, dev_cluster).apply().wait_ready(timeout=10, interval=0.05)
    eps = rc.endpoints()
    assert (eps["dashboard"].port, eps["client"].port, eps["serve"].port) == (8265, 10001, 8000)
    assert eps["dashboard"].service == "rayspace-head-svc"
    assert eps["client"].in_cluster_url == "ray://rayspace-head-svc.rayspace.svc:10001"


def test_endpoints_before_the_service_exists(api: KubeApi, dev_cluster: dict) -> None:
    with pytest.raises(NotFoundError, match='Service "rayspace/rayspace-head-svc" not found'):
        RayCluster(api, dev_cluster).create().endpoints()


def test_auth_token_from_the_operator_secret(api: KubeApi, fake: FakeKube, operator: FakeOperator,
                                             dev_cluster: dict) -> None:
    assert dev_cluster["spec"]["authOptions"]["mode"] == "token"
    rc = RayCluster(api, dev_cluster).apply().wait_ready(timeout=10, interval=0.05)
    secret = fake.get("Secret", "rayspace", "rayspace")
    assert rc.auth_token() == base64.b64decode(secret["data"]["auth_token"]).decode()


def test_auth_token_secret_name_and_manual_env(api: KubeApi, fake: FakeKube, dev_cluster: dict) -> None:
    fake.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": "rayspace"},
               "data": {"auth_token": base64.b64encode(b"s3cret\n").decode(), "other": "eA=="}})
    named = copy.deepcopy(dev_cluster)
    named["spec"]["authOptions"] = {"mode": "token", "secretName": "mine"}
    assert RayCluster(api, named).auth_token() == "s3cret"

    manual = copy.deepcopy(dev_cluster)
    del manual["spec"]["authOptions"]
    head = manual["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head.setdefault("env", []).append({"name": "RAY_AUTH_TOKEN",
                                       "valueFrom": {"secretKeyRef": {"name": "mine", "key": "other"}}})
    assert RayCluster(api, manual).auth_secret_ref() == ("mine", "other")
    assert RayCluster(api, manual).auth_token() == "x"

    missing_key = copy.deepcopy(named)
    missing_key["spec"]["authOptions"] = {"mode": "token", "secretName": "absent"}
    with pytest.raises(NotFoundError, match='Secret "rayspace/absent" not found'):
        RayCluster(api, missing_key).auth_token()


def test_auth_token_without_token_auth(api: KubeApi, dev_cluster: dict) -> None:
    del dev_cluster["spec"]["authOptions"]
    with pytest.raises(NotFoundError, match="does not use token authentication"):
        RayCluster(api, dev_cluster).auth_token()


def test_auth_token_forbidden_names_secrets(api: KubeApi, fake: FakeKube, dev_cluster: dict) -> None:
    fake.deny("get", "secrets", group="")
    with pytest.raises(ForbiddenError, match=r'verb "get" on resource "secrets" name "rayspace".*ServiceAccount'):
        RayCluster(api, dev_cluster).auth_token()


# ----------------------------------------------------------------------------- RayJob


@pytest.fixture
def job_template(rendered_dev: list[dict]) -> dict:
    return find(rendered_dev, "RayJob")


def test_from_template_sets_entrypoint_and_unique_name(api: KubeApi, job_template: dict) -> None:
    before = copy.deepcopy(job_template)
    a = RayJob.from_template(api, job_template, entrypoint="python -c 'print(1)'")
    b = RayJob.from_template(api, job_template)
    assert job_template == before, "the template must not be mutated"
    assert a.spec["entrypoint"] == "python -c 'print(1)'"
    assert b.spec["entrypoint"] == job_template["spec"]["entrypoint"]
    assert a.name != b.name and a.name.startswith("rayspace-pipeline-")
    assert RayJob.from_template(api, job_template, name="x", unique=False).name == "x"
    with pytest.raises(ConfigError, match="entrypoint"):
        RayJob.from_template(api, job_template, entrypoint="  ")


def test_job_runs_to_succeeded_and_its_cluster_goes(api: KubeApi, fake: FakeKube, operator: FakeOperator,
                                                   job_template: dict) -> None:
    job = RayJob.from_template(api, job_template, entrypoint="python -m workloads.pipeline --smoke").submit()
    job.wait_finished(timeout=15, interval=0.05)
    assert job.succeeded and job.job_status == "SUCCEEDED" and job.deployment_status == "Complete"
    assert job.job_id and job.cluster_name
    assert job_template["spec"]["shutdownAfterJobFinishes"] is True
    with pytest.raises(NotFoundError):
        RayCluster.get(api, job.cluster_name)


def test_failed_job_is_a_result_not_an_exception(api: KubeApi, operator: FakeOperator, job_template: dict) -> None:
    job = RayJob.from_template(api, job_template, entrypoint="python -m workloads.pipeline --fail").submit()
    job.wait_finished(timeout=15, interval=0.05)
    assert job.job_status == "FAILED" and not job.succeeded
    assert "exit code 1" in job.describe_status()


def test_job_wait_timeout_names_status(api: KubeApi, fake: FakeKube, job_template: dict) -> None:
    # No operator runs here, so the job never starts.
    job = RayJob.from_template(api, job_template).submit()
    with pytest.raises(WaitTimeoutError, match=r"was not finished .* last seen status: jobStatus=-, jobDeploymentStatus=-"):
        job.wait_finished(timeout=0.2, interval=0.05)


def test_exact_name_twice_already_exists(api: KubeApi, job_template: dict) -> None:
    RayJob.from_template(api, job_template, name="once", unique=False).submit()
    with pytest.raises(AlreadyExistsError, match='RayJob "rayspace/once" already exists'):
        RayJob.from_template(api, job_template, name="once", unique=False).submit()


def test_stop_suspends_and_the_operator_stops_it(api: KubeApi, fake: FakeKube, job_template: dict) -> None:
    op = FakeOperator(fake, ready_after=0.0, job_runtime=60).start()
    try:
        job = RayJob.from_template(api, job_template).submit()
        job.wait(lambda j: j.job_status == "RUNNING", timeout=10, what="running", interval=0.05)
        cluster = job.cluster_name
        job.stop().wait_finished(timeout=10, interval=0.05)
    finally:
        op.stop()
    assert job.job_status == "STOPPED" and job.deployment_status == "Suspended"
    with pytest.raises(NotFoundError):
        RayCluster.get(api, cluster)


def test_stop_refuses_a_job_that_keeps_its_cluster(api: KubeApi, job_template: dict) -> None:
    keep = copy.deepcopy(job_template)
    keep["spec"]["shutdownAfterJobFinishes"] = False
    job = RayJob.from_template(api, keep).submit()
    with pytest.raises(ConfigError, match="shutdownAfterJobFinishes=false"):
        job.stop()


# ----------------------------------------------------------------------------- RayService / RayCronJob


def test_rayservice_apps_and_serve_service(api: KubeApi, fake: FakeKube, operator: FakeOperator,
                                           rendered_dev: list[dict]) -> None:
    svc = RayService(api, find(rendered_dev, "RayService")).apply()
    assert svc.name == "rayspace-serve" and svc.serve_service == "rayspace-serve-serve-svc"
    svc.wait_ready(timeout=10, interval=0.05)
    assert svc.app_statuses() == {"rayspace": "RUNNING"}
    assert fake.get("Service", "rayspace-serve-serve-svc", "rayspace") is not None
    renamed = customize(rendered_dev, name="team-a")
    assert RayService(api, find(renamed, "RayService")).serve_service == "team-a-serve-serve-svc"


def test_rayservice_not_ready_until_apps_run(api: KubeApi, fake: FakeKube, rendered_dev: list[dict]) -> None:
    svc = RayService(api, find(rendered_dev, "RayService")).create()
    fake.update_status("RayService", svc.name, "rayspace", {
        "conditions": [{"type": "Ready", "status": "True"}],
        "activeServiceStatus": {"applicationStatuses": {"rayspace": {"status": "DEPLOYING"}}}})
    with pytest.raises(WaitTimeoutError, match="apps: rayspace=DEPLOYING"):
        svc.wait_ready(timeout=0.2, interval=0.05)


def test_raycronjob_suspend_resume(api: KubeApi, rendered_dev: list[dict]) -> None:
    cron = RayCronJob(api, find(rendered_dev, "RayCronJob")).apply()
    assert cron.schedule
    assert cron.suspend().spec["suspend"] is True
    assert RayCronJob.get(api, cron.name).resume().spec["suspend"] is False
    assert cron.summary()["schedule"] == cron.schedule
