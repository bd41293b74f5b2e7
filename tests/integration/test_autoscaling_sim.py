"""Autoscaling simulation of the dev overlay's RayCluster on this machine.

A fake multi-node Ray (Ray's fake provider, started with RAY_FAKE_CLUSTER=1 in its own
process group) gets the node types Ray's KubeRay code derives from the rendered
RayCluster; a workload that needs every worker of the group makes the real
autoscaler (v2, as the manifest says) add workers, which it removes again once idle.
The session's own local Ray must survive: the simulation never runs `ray stop`.
"""

from __future__ import annotations

import pytest

from cluster import manifests
from cluster._internal.simulate import _processes_under, fake_cluster_config

pytestmark = pytest.mark.integration


def test_fake_cluster_config_takes_node_types_from_the_raycluster():
    rc = manifests.find(manifests.render("dev"), "RayCluster")
    config = fake_cluster_config(rc, "cpu", gcs_address="127.0.0.1:1", idle_timeout_s=5.0)
    types = config["available_node_types"]
    assert types["cpu"] == {"resources": {"CPU": 1.0}, "node_config": {}, "min_workers": 0, "max_workers": 2}
    assert types["ray.head.default"]["resources"] == {"CPU": 0.0}  # num-cpus "0"; memory dropped for the fake provider
    assert config["provider"]["type"] == "external" and config["idle_timeout_minutes"] == pytest.approx(5 / 60)


@pytest.mark.timeout(240)
def test_dev_raycluster_scales_up_for_work_and_back_down_when_idle(ray_local):
    result = manifests.simulate("dev")

    timeline = [(e.event, e.workers) for e in result.events]
    assert result.ok, f"{result.problems}\n{timeline}"
    assert (result.group, result.min_workers, result.max_workers) == ("cpu", 0, 2)
    assert result.autoscaler_version == "v2" and result.manifest_idle_timeout_s == 30
    events = [e.event for e in result.events]
    assert events.index("submitted") < events.index("tasks-finished") < events.index("idle")
    # Workers appear only after the workload asks for them, reach the maximum, and drop to the minimum.
    counts = [e.workers for e in result.events if e.event in ("submitted", "workers", "tasks-finished", "idle")]
    assert counts[0] == 0 and max(counts) == 2 and counts[-1] == 0
    finished = next(e for e in result.events if e.event == "tasks-finished")
    assert finished.detail["distinct_nodes"] == 2, "each task needed a whole worker, so two nodes ran them"
    assert result.peak_workers == 2 and result.final_workers == 0

    # Nothing of the fake cluster is left, and the session's own Ray was not touched.
    assert _processes_under(result.workdir) == []
    assert ray_local.is_initialized()
    assert ray_local.get(ray_local.remote(lambda: 41 + 1).remote()) == 42
