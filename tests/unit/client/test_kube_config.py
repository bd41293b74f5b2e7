"""Loading kubeconfig and in-cluster configuration; namespace and identity resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.client import KubeApi, RayCluster
from tests.fakekube import FakeKube, service_account_token, write_kubeconfig
from workloads.exceptions import ClusterConfigError

SA_TOKEN = service_account_token("system:serviceaccount:rayspace:rayspace-ci")


def test_namespace_and_identity_from_the_context(kubeconfig: Path) -> None:
    with KubeApi.from_kubeconfig(kubeconfig) as api:
        assert api.namespace == "rayspace" and api.namespace_source == "context"
        assert api.identity == 'ServiceAccount "rayspace/rayspace-ci" (kubeconfig context "fake")'
    with KubeApi.from_kubeconfig(kubeconfig, namespace="other") as api:
        assert (api.namespace, api.namespace_source) == ("other", "argument")


def test_context_without_namespace_defaults(tmp_path: Path, fake: FakeKube) -> None:
    kc = write_kubeconfig(tmp_path / "kc", fake.url, "other-token", namespace=None, user="jane")
    with KubeApi.from_kubeconfig(kc) as api:
        assert (api.namespace, api.namespace_source) == ("default", "default")
        assert api.identity.startswith('user "jane"')


def test_choosing_a_context(tmp_path: Path, fake: FakeKube) -> None:
    kc = write_kubeconfig(tmp_path / "kc", fake.url, SA_TOKEN, namespace="rayspace")
    doc = yaml.safe_load(kc.read_text())
    doc["contexts"].append({"name": "second", "context": {"cluster": "fake", "user": "fake-user", "namespace": "default"}})
    kc.write_text(yaml.safe_dump(doc))
    with KubeApi.from_kubeconfig(kc, context="second") as api:
        assert api.namespace == "default"
        assert RayCluster.list(api) == []
    with pytest.raises(ClusterConfigError, match=r"Got \"nope\" for cluster.context: must be one of \['fake', 'second'\]"):
        KubeApi.from_kubeconfig(kc, context="nope")


def test_missing_or_broken_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="cannot load kubeconfig"):
        KubeApi.from_kubeconfig(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    with pytest.raises(ClusterConfigError, match="cannot load kubeconfig"):
        KubeApi.from_kubeconfig(broken)


def _service_account_dir(tmp_path: Path, namespace: str | None = "ml") -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(SA_TOKEN)
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    if namespace is not None:
        (sa / "namespace").write_text(namespace)
    return sa


def test_in_cluster_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    sa = _service_account_dir(tmp_path)
    with KubeApi.from_incluster(serviceaccount_dir=sa) as api:
        assert api.host == "https://10.96.0.1:443"
        assert (api.namespace, api.namespace_source) == ("ml", "in-cluster")
        assert api.identity == 'ServiceAccount "rayspace/rayspace-ci" (in-cluster)'
        keys = api.api_client.configuration.api_key
        assert SA_TOKEN in str(keys.get("BearerToken") or keys.get("authorization"))
    no_ns = tmp_path / "other"
    no_ns.mkdir()
    with KubeApi.from_incluster(serviceaccount_dir=_service_account_dir(no_ns, namespace=None)) as api:
        assert (api.namespace, api.namespace_source) == ("default", "default")


def test_in_cluster_without_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ClusterConfigError, match="no usable in-cluster configuration"):
        KubeApi.from_incluster(serviceaccount_dir=tmp_path / "missing")


def test_from_settings_prefers_kubeconfig_then_in_cluster(tmp_path: Path, kubeconfig: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with KubeApi.from_settings() as api:
        assert api.namespace == "rayspace" and "kubeconfig" in api.identity
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterConfigError, match="no Kubernetes configuration: set KUBECONFIG"):
        KubeApi.from_settings()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    # In a pod without a kubeconfig the ServiceAccount is used (here: its files are missing).
    with pytest.raises(ClusterConfigError, match="in-cluster"):
        KubeApi.from_settings()
