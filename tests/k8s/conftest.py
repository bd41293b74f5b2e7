"""Gate of the real-cluster suite: KUBECONFIG must point at a cluster with the KubeRay CRDs.

Every test here is marked ``k8s`` and is skipped, with the reason, when that is not
so; CI runs ``-m "not k8s"``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from cluster.client import KubeApi, RayCluster
from workloads.exceptions import KubernetesError, NotFoundError


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeApi]:
    """A connection to the real cluster, or a skip saying why there is none."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set: the k8s suite needs a cluster with the KubeRay operator 1.7")
    try:
        api = KubeApi.from_kubeconfig(context=os.environ.get("RAYSPACE_E2E_CONTEXT"))
    except KubernetesError as e:
        pytest.skip(f"KUBECONFIG={os.environ['KUBECONFIG']} is not usable: {e}")
    try:
        RayCluster.list(api)
    except NotFoundError as e:
        api.close()
        pytest.skip(f"the cluster lacks the KubeRay CRDs (install the operator first): {e}")
    except KubernetesError as e:
        api.close()
        pytest.skip(f"the cluster's API server cannot be used: {e}")
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def e2e_namespace() -> str:
    """A namespace of its own, so the suite never touches a workspace in use."""
    return os.environ.get("RAYSPACE_E2E_NAMESPACE") or f"rayspace-e2e-{secrets.token_hex(3)}"
