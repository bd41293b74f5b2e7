"""``cluster up`` refuses, before applying anything, when a StorageClass or Secret the overlay needs is missing."""

from __future__ import annotations

import pytest

from cluster.client import KubeApi
from cluster.client import preflight
from cluster.client.manifests import objects_for
from tests.fakekube import FakeKube
from workloads.config import ClusterConfig
from workloads.exceptions import ForbiddenError

from tests.unit.client.test_kube_cli import Run, run  # noqa: F401  (the fixture)


def _ha_objects(namespace: str = "rayspace") -> list[dict]:
    return objects_for(ClusterConfig(overlay="ha"), namespace=namespace)


def test_secret_references_of_the_ha_overlay():
    refs = preflight.secret_refs(_ha_objects())
    owners = {(r.secret, r.owner) for r in refs}
    assert ("rayspace-redis", "RayCluster/rayspace") in owners and ("rayspace-redis", "Deployment/rayspace-redis") in owners
    assert any(r.field.endswith("gcsFaultToleranceOptions.redisPassword.valueFrom.secretKeyRef") for r in refs)
    assert all(r.secret == "rayspace-redis" for r in refs), "the operator's own token Secret is not a prerequisite"


def test_missing_storage_class_and_secret_fail_at_once(api: KubeApi, fake: FakeKube):
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(api, _ha_objects())
    message = str(e.value)
    assert message.startswith("nothing applied: ")
    assert "PersistentVolumeClaim/rayspace-data spec.storageClassName 'rayspace-rwx': no such StorageClass" in message
    assert "Secret 'rayspace-redis' does not exist in namespace rayspace; needed by Deployment/rayspace-redis" in message
    assert "CreateContainerConfigError" in message and "kubectl -n rayspace create secret generic rayspace-redis" in message

    fake.seed({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "rayspace-rwx"},
               "provisioner": "nfs.csi.k8s.io"})
    fake.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rayspace-redis", "namespace": "rayspace"},
               "data": {"password": "c2VjcmV0"}})
    fake.seed(_endpoints("192.0.2.1"))
    assert preflight.check(api, _ha_objects()) == []


def test_unreadable_storage_class_is_a_warning_not_an_error(api: KubeApi, monkeypatch):
    def forbidden(*_a, **_k):
        raise ForbiddenError("storageclasses is forbidden", status=403)

    monkeypatch.setattr(preflight.StorageClass, "get", classmethod(lambda cls, *a, **k: forbidden()))
    objects = [o for o in _ha_objects() if o["kind"] == "PersistentVolumeClaim"]
    warnings = preflight.check(api, objects)
    assert warnings and "cannot read StorageClass 'rayspace-rwx'" in warnings[0]


def test_up_ha_without_the_redis_secret_applies_nothing(run: Run, fake: FakeKube):
    fake.seed({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "rayspace-rwx"},
               "provisioner": "nfs.csi.k8s.io"})
    code, out, err = run("cluster", "up", "--overlay", "ha", "--timeout", "900")
    assert code != 0
    assert "Secret 'rayspace-redis' does not exist in namespace rayspace" in err
    assert fake.get("RayCluster", "rayspace", "rayspace") is None
    assert fake.get("NetworkPolicy", "default-deny-all", "rayspace") is None


def _endpoints(ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]}


def test_apiserver_egress_must_contain_the_endpoints(api: KubeApi, fake: FakeKube):
    objects = [o for o in objects_for(ClusterConfig(overlay="dev"), namespace="rayspace") if o["kind"] == "NetworkPolicy"]
    assert preflight.apiserver_egress_blocks(objects) == {"ray-head-to-apiserver": ["172.18.0.0/16"]}
    warnings = preflight.check(api, objects)  # no Endpoints to read: a warning, not a refusal
    assert any("cannot read Endpoints default/kubernetes" in w for w in warnings)
    fake.seed(_endpoints("10.1.2.3"))
    with pytest.raises(preflight.PreflightError, match=r"endpoints are \['10.1.2.3'\]: the autoscaler could not scale; "
                                                        r"set ipBlock.cidr to 10.1.2.3/32"):
        preflight.check(api, objects)
    fake.remove("Endpoints", "kubernetes", "default")
    fake.seed(_endpoints("172.18.0.3"))
    assert preflight.check(api, objects) == []


def _operator(gates: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "kuberay-operator", "namespace": "kuberay-system",
                         "labels": {"app.kubernetes.io/name": "kuberay-operator",
                                    "app.kubernetes.io/component": "kuberay-operator"}},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}},
                     "template": {"metadata": {"labels": {"app.kubernetes.io/component": "kuberay-operator"}},
                                  "spec": {"containers": [{"name": "kuberay-operator", "image": "kuberay/operator:v1.7.0",
                                                           "args": [f"--feature-gates={gates}"]}]}}}}


def test_cron_feature_gate_is_checked(api: KubeApi, fake: FakeKube):
    objects = objects_for(ClusterConfig(overlay="dev"), namespace="rayspace")
    assert preflight.operator_namespace(objects) == "kuberay-system"
    warnings = preflight.check_cron_gate(api, objects)
    assert warnings and "no Deployment labelled app.kubernetes.io/component=kuberay-operator in namespace kuberay-system" \
        in warnings[0]
    fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kuberay-system"}})
    fake.seed(_operator("RayClusterStatusConditions=true,RayJobDeletionPolicy=true,RayCronJob=false"))
    with pytest.raises(preflight.PreflightError, match="runs without the RayCronJob feature gate"):
        preflight.check_cron_gate(api, objects)
    fake.remove("Deployment", "kuberay-operator", "kuberay-system")
    fake.seed(_operator("RayClusterStatusConditions=true,RayCronJob=true"))
    assert preflight.check_cron_gate(api, objects) == []


def test_up_with_cron_refuses_without_the_gate(run: Run, fake: FakeKube):
    fake.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kuberay-system"}})
    fake.seed(_operator("RayCronJob=false"))
    code, _, err = run("cluster", "up", "--with-cron", "--timeout", "900")
    assert code != 0 and "runs without the RayCronJob feature gate" in err
    assert fake.get("RayCronJob", "rayspace-retrain", "rayspace") is None
    assert fake.get("RayCluster", "rayspace", "rayspace") is None
