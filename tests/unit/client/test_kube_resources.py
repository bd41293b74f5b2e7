"""The base resource's verbs and error translation, over HTTP against the fake API server."""

from __future__ import annotations

import copy

import pytest
from kubernetes.client.exceptions import ApiException

from cluster.client import KubeApi, RayCluster, RayJob, from_manifest, resource_class
from tests.fakekube import FakeKube, write_kubeconfig
from workloads.exceptions import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    KubernetesError,
    NotFoundError,
    ValidationError,
    WaitTimeoutError,
)


def small_cluster(name: str = "demo", **labels: str) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head", "image": "ray:1"}]}}},
            "workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 3,
                                  "template": {"spec": {"containers": [{"name": "w", "image": "ray:1"}]}}}],
        },
    }


def test_create_get_and_already_exists(api: KubeApi, fake: FakeKube) -> None:
    body = small_cluster()
    created = RayCluster(api, body).create()
    assert created.resource_version and created.metadata["uid"]
    assert "resourceVersion" not in body["metadata"], "the caller's manifest must not be mutated"
    got = RayCluster.get(api, "demo")
    assert got.spec["workerGroupSpecs"][0]["replicas"] == 1
    assert got.namespace == "rayspace"  # from the kubeconfig context
    with pytest.raises(AlreadyExistsError, match='RayCluster "rayspace/demo" already exists') as info:
        RayCluster(api, body).create()
    assert info.value.status == 409
    assert isinstance(info.value.__cause__, ApiException)


def test_get_missing_is_not_found_naming_the_object(api: KubeApi) -> None:
    with pytest.raises(NotFoundError, match='RayCluster "rayspace/nope" not found') as info:
        RayCluster.get(api, "nope")
    assert info.value.status == 404
    assert isinstance(info.value.__cause__, ApiException)


def test_missing_crds_say_so(tmp_path, fake: FakeKube) -> None:
    fake.serve_ray_crds = False
    with KubeApi.from_kubeconfig(write_kubeconfig(tmp_path / "kc", fake.url, next(iter(fake.tokens)))) as api:
        with pytest.raises(NotFoundError, match=r"does not serve rayclusters\.ray\.io .*KubeRay"):
            RayCluster.list(api)


def test_apply_is_server_side_apply_and_creates_then_updates(api: KubeApi, fake: FakeKube) -> None:
    rc = RayCluster(api, small_cluster()).apply()
    assert rc.resource_version
    patch_requests = fake.requests_for("PATCH", "/rayclusters/demo")
    assert patch_requests[-1].content_type == "application/apply-patch+yaml"
    assert patch_requests[-1].query["fieldManager"] == ["rayspace"]
    assert patch_requests[-1].query["force"] == ["true"]

    changed = small_cluster()
    changed["spec"]["workerGroupSpecs"][0]["replicas"] = 2
    changed["metadata"]["labels"] = {"team": "ml"}
    again = RayCluster(api, changed).apply()
    assert again.spec["workerGroupSpecs"][0]["replicas"] == 2
    assert again.labels == {"team": "ml"}
    assert int(again.resource_version) > int(rc.resource_version)
    assert again.metadata["generation"] == 2


def test_apply_never_sends_status_or_server_metadata(api: KubeApi, fake: FakeKube) -> None:
    live = RayCluster(api, small_cluster()).create().raw
    live["status"] = {"state": "ready"}
    RayCluster(api, live).apply()
    sent = RayCluster(api, live).apply_body()
    assert "status" not in sent
    assert not {"resourceVersion", "uid", "creationTimestamp", "generation"} & set(sent["metadata"])


def test_apply_conflict_with_another_manager_unless_forced(api: KubeApi, fake: FakeKube) -> None:
    RayCluster(api, small_cluster()).apply()
    # Someone else (kubectl edit, the autoscaler) takes over replicas with a merge patch.
    other = RayCluster.get(api, "demo")
    fake_manager_patch = [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}]
    other._endpoint().request(api, "patch", "rayspace", "demo", fake_manager_patch, field_manager="autoscaler",
                              _content_type="application/json-patch+json")
    with pytest.raises(ConflictError, match='conflict with "autoscaler": .spec.workerGroupSpecs') as info:
        RayCluster(api, small_cluster()).apply(force=False)
    assert info.value.status == 409
    forced = RayCluster(api, small_cluster()).apply(force=True)
    assert forced.spec["workerGroupSpecs"][0]["replicas"] == 1


def test_apply_drops_fields_it_no_longer_applies(api: KubeApi) -> None:
    RayCluster(api, small_cluster(app="x")).apply()
    after = RayCluster(api, small_cluster()).apply()
    assert "app" not in after.labels


def test_apply_falls_back_to_create_and_replace_without_server_side_apply(api: KubeApi, fake: FakeKube) -> None:
    fake.supports_apply = False
    created = RayCluster(api, small_cluster()).apply()
    assert created.resource_version
    assert fake.requests_for("POST", "/rayclusters")[-1].status == 201
    changed = small_cluster()
    changed["spec"]["workerGroupSpecs"][0]["replicas"] = 3
    updated = RayCluster(api, changed).apply()
    assert updated.spec["workerGroupSpecs"][0]["replicas"] == 3
    assert fake.requests_for("PUT", "/rayclusters/demo")[-1].status == 200


def test_list_by_label_selector(api: KubeApi) -> None:
    RayCluster(api, small_cluster("a", team="ml", tier="dev")).create()
    RayCluster(api, small_cluster("b", team="ml", tier="prod")).create()
    RayCluster(api, small_cluster("c", team="web")).create()
    names = lambda sel: sorted(r.name for r in RayCluster.list(api, label_selector=sel))  # noqa: E731
    assert names("team=ml") == ["a", "b"]
    assert names("team=ml,tier!=prod") == ["a"]
    assert names("tier in (dev,prod)") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names(None) == ["a", "b", "c"]
    assert all(isinstance(r, RayCluster) for r in RayCluster.list(api))


def test_replace_with_a_stale_resource_version_conflicts(api: KubeApi) -> None:
    first = RayCluster(api, small_cluster()).create()
    stale = RayCluster(api, first.raw)
    first.spec["workerGroupSpecs"][0]["replicas"] = 2
    first.replace()
    stale.spec["workerGroupSpecs"][0]["replicas"] = 3
    with pytest.raises(ConflictError, match="the object has been modified"):
        stale.replace()
    assert RayCluster.get(api, "demo").spec["workerGroupSpecs"][0]["replicas"] == 2


def test_merge_patch_and_json_patch(api: KubeApi, fake: FakeKube) -> None:
    rc = RayCluster(api, small_cluster()).create()
    rc.patch({"metadata": {"labels": {"owner": "me"}}, "spec": {"suspend": True}})
    assert fake.requests_for("PATCH")[-1].content_type == "application/merge-patch+json"
    assert rc.labels["owner"] == "me" and rc.spec["suspend"] is True
    rc.patch([{"op": "remove", "path": "/spec/suspend"}])
    assert fake.requests_for("PATCH")[-1].content_type == "application/json-patch+json"
    assert "suspend" not in RayCluster.get(api, "demo").spec


def test_json_patch_failed_test_is_a_validation_error(api: KubeApi) -> None:
    rc = RayCluster(api, small_cluster()).create()
    with pytest.raises(ValidationError) as info:
        rc.patch([{"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "gpu"},
                  {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 0}])
    assert info.value.causes == [("/spec/workerGroupSpecs/0/groupName", "test failed")]
    assert RayCluster.get(api, "demo").spec["workerGroupSpecs"][0]["replicas"] == 1


def test_status_subresource(api: KubeApi) -> None:
    rc = RayCluster(api, small_cluster()).create()
    rc.patch({"status": {"state": "ready"}, "spec": {"suspend": True}})
    assert "status" not in RayCluster.get(api, "demo").raw, "the main resource must not write status"
    rc.patch({"status": {"state": "ready"}, "spec": {"suspend": False}}, subresource="status")
    live = RayCluster.get(api, "demo")
    assert live.status == {"state": "ready"}
    assert live.spec["suspend"] is True, "/status must not write spec"


def test_server_side_validation_is_422_with_field_causes(api: KubeApi) -> None:
    bad = small_cluster("Bad_Name")
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = -1
    del bad["spec"]["headGroupSpec"]
    with pytest.raises(ValidationError) as info:
        RayCluster(api, bad).create()
    fields = [f for f, _ in info.value.causes]
    assert fields == ["metadata.name", "spec.headGroupSpec", "spec.workerGroupSpecs[0].replicas"]
    assert "greater than or equal to 0" in str(info.value)
    assert info.value.status == 422


def test_forbidden_names_verb_resource_and_service_account(api: KubeApi, fake: FakeKube) -> None:
    RayCluster(api, small_cluster()).create()
    fake.deny("delete", "rayclusters", group="ray.io")
    with pytest.raises(ForbiddenError) as info:
        RayCluster.get(api, "demo").delete()
    msg = str(info.value)
    assert 'verb "delete" on resource "rayclusters.ray.io" name "demo" in namespace "rayspace"' in msg
    assert 'ServiceAccount "rayspace/rayspace-ci"' in msg
    assert 'User "system:serviceaccount:rayspace:rayspace-ci" cannot delete' in msg
    assert RayCluster.get(api, "demo").name == "demo", "a denied delete must not delete"


def test_forbidden_list_and_status_subresource(api: KubeApi, fake: FakeKube) -> None:
    fake.deny("list", "rayjobs")
    with pytest.raises(ForbiddenError, match='verb "list" on resource "rayjobs.ray.io" in namespace'):
        RayJob.list(api)
    rc = RayCluster(api, small_cluster()).create()
    fake.deny("patch", "rayclusters/status")
    with pytest.raises(ForbiddenError, match='"rayclusters.ray.io/status"'):
        rc.patch({"status": {"state": "x"}}, subresource="status")


def test_bad_credentials_are_401(tmp_path, fake: FakeKube) -> None:
    with KubeApi.from_kubeconfig(write_kubeconfig(tmp_path / "kc", fake.url, "wrong-token")) as api:
        with pytest.raises(KubernetesError, match="rejected the credentials") as info:
            RayCluster.list(api)
    assert info.value.status == 401


def test_unreachable_server_is_a_kubernetes_error(tmp_path) -> None:
    server = FakeKube().start()
    url = server.url
    server.stop()  # nothing listens there any more
    with KubeApi.from_kubeconfig(write_kubeconfig(tmp_path / "kc", url, "t"), request_timeout=2) as api:
        api.api_client.configuration.retries = 0
        with pytest.raises(KubernetesError, match="cannot reach the Kubernetes API server"):
            RayCluster.get(api, "x")


def test_delete_propagation(api: KubeApi, fake: FakeKube) -> None:
    owner = RayJob(api, {"metadata": {"name": "job"}, "spec": {"entrypoint": "true"}}).create()
    ref = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "job", "uid": owner.metadata["uid"], "controller": True}
    for name in ("kept", "gone"):
        body = small_cluster(name)
        body["metadata"]["ownerReferences"] = [ref]
        RayCluster(api, body).create()
    RayCluster.get(api, "gone").delete(propagation="Background")
    assert fake.deletions[-1] == ("RayCluster", "rayspace", "gone", "Background")

    owner.delete(propagation="Orphan")
    assert fake.deletions[-1] == ("RayJob", "rayspace", "job", "Orphan")
    kept = RayCluster.get(api, "kept")
    assert not kept.metadata.get("ownerReferences"), "Orphan must strip the owner reference"

    owner2 = RayJob(api, {"metadata": {"name": "job2"}, "spec": {"entrypoint": "true"}}).create()
    body = small_cluster("child")
    body["metadata"]["ownerReferences"] = [{**ref, "name": "job2", "uid": owner2.metadata["uid"]}]
    RayCluster(api, body).create()
    owner2.delete(propagation="Foreground")
    with pytest.raises(NotFoundError):
        RayCluster.get(api, "child")
    with pytest.raises(NotFoundError):
        owner2.delete()
    with pytest.raises(ValueError, match="propagation"):
        kept.delete(propagation="Sideways")  # type: ignore[arg-type]


def test_wait_times_out_naming_the_last_seen_status(api: KubeApi, fake: FakeKube) -> None:
    rc = RayCluster(api, small_cluster()).create()
    fake.update_status("RayCluster", "demo", "rayspace", {"conditions": [
        {"type": "HeadPodReady", "status": "False", "reason": "HeadPodNotReady"}]})
    with pytest.raises(WaitTimeoutError) as info:
        rc.wait_ready(timeout=0.3, interval=0.05)
    msg = str(info.value)
    assert "RayCluster rayspace/demo was not ready" in msg
    assert "last seen status: HeadPodReady=False (HeadPodNotReady)" in msg


def test_wait_with_an_injected_clock_polls_until_true(api: KubeApi, fake: FakeKube) -> None:
    rc = RayCluster(api, small_cluster()).create()
    now = [0.0]
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        now[0] += seconds
        if len(calls) == 3:
            fake.update_status("RayCluster", "demo", "rayspace", {"conditions": [
                {"type": "HeadPodReady", "status": "True"}, {"type": "RayClusterProvisioned", "status": "True"}]})

    rc.wait(lambda r: r.is_ready, timeout=100, what="ready", interval=1, clock=lambda: now[0], sleep=sleep)
    assert calls == [0.25, 0.5, 1], "polling backs off to the interval"
    assert rc.is_ready


def test_core_kinds_and_generic_manifests(api: KubeApi, fake: FakeKube) -> None:
    sa = from_manifest(api, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}}).apply()
    assert sa.resource_version and sa.namespace == "rayspace"
    role = from_manifest(api, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                               "metadata": {"name": "r"}, "rules": []}).apply()
    assert fake.get("Role", "r", "rayspace") is not None and role.name == "r"
    Secret = resource_class("v1", "Secret")
    with pytest.raises(NotFoundError, match='Secret "rayspace/missing" not found'):
        Secret.get(api, "missing")
    ns = resource_class("v1", "Namespace")(api, {"metadata": {"name": "team-a"}}).apply()
    assert ns.namespace is None and fake.get("Namespace", "team-a") is not None


def test_creating_in_a_missing_namespace_is_not_found(api: KubeApi) -> None:
    body = copy.deepcopy(small_cluster())
    body["metadata"]["namespace"] = "elsewhere"
    with pytest.raises(NotFoundError, match='namespaces "elsewhere" not found'):
        RayCluster(api, body).create()
