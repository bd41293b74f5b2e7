"""Waits end on states that will not change by themselves, and trust only a status of the current generation."""

from __future__ import annotations

import pytest

from cluster.client import KubeApi, RayCluster, RayJob
from tests.fakekube import FakeKube
from workloads.exceptions import WaitTimeoutError


def _seed_job(fake: FakeKube, name: str) -> None:
    fake.seed({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "namespace": "rayspace"},
               "spec": {"entrypoint": "python -c 1", "shutdownAfterJobFinishes": True}})


@pytest.mark.parametrize("stalled", ["ValidationFailed", "Suspended"])
def test_wait_finished_ends_on_a_stalled_rayjob(api: KubeApi, fake: FakeKube, stalled: str):
    # KubeRay leaves a rejected or suspended RayJob in that state; `job submit --wait` used to wait out its timeout.
    _seed_job(fake, "stuck")
    fake.update_status("RayJob", "stuck", "rayspace", {"jobDeploymentStatus": stalled, "message": "spec rejected"})
    job = RayJob.get(api, "stuck").wait_finished(timeout=30, interval=0.05)
    assert job.is_stalled and not job.succeeded and job.deployment_status == stalled


def test_running_rayjob_still_times_out(api: KubeApi, fake: FakeKube):
    _seed_job(fake, "busy")
    fake.update_status("RayJob", "busy", "rayspace", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    with pytest.raises(WaitTimeoutError, match="jobDeploymentStatus=Running"):
        RayJob.get(api, "busy").wait_finished(timeout=0.3, interval=0.05)


def test_waits_ignore_a_status_of_an_older_generation(api: KubeApi, fake: FakeKube):
    fake.seed({"apiVersion": "ray.io/v1", "kind": "RayCluster",
               "metadata": {"name": "gen", "namespace": "rayspace", "generation": 2}, "spec": {"headGroupSpec": {}}})
    ready = [{"type": t, "status": "True", "reason": "x"} for t in ("HeadPodReady", "RayClusterProvisioned")]
    fake.update_status("RayCluster", "gen", "rayspace", {"conditions": ready, "observedGeneration": 1})
    rc = RayCluster.get(api, "gen")
    assert not rc.status_current
    with pytest.raises(WaitTimeoutError):
        rc.wait_ready(timeout=0.3, interval=0.05)
    fake.update_status("RayCluster", "gen", "rayspace", {"conditions": ready, "observedGeneration": 2})
    assert rc.wait_ready(timeout=5, interval=0.05).status_current
