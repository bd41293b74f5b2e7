"""A typed Python client for the workspace's KubeRay objects.

One small class per kind over one base that implements every verb once::

    from cluster.client import KubeApi, RayCluster, RayJob

    api = KubeApi.from_settings(namespace="rayspace")   # kubeconfig, or in-cluster
    rc = RayCluster.get(api, "rayspace").wait_ready(timeout=600)
    rc.scale("cpu", 2)
    token = rc.auth_token()

Kubernetes API failures arrive as the typed errors of :mod:`workloads.exceptions`
(``NotFoundError``, ``AlreadyExistsError``, ``ConflictError``, ``ForbiddenError``,
``ValidationError``, ``WaitTimeoutError``), raised ``from`` the client's exception.
"""

from cluster.client._api import KubeApi
from cluster.client._base import FIELD_MANAGER, Resource, from_manifest, resource_class
from cluster.client.connect import ConnectPlan, plan as connect_plan
from cluster.client.dashboard import DashboardClient
from cluster.client.manifests import WorkerGroupSize, customize, objects_for
from cluster.client.raycluster import Endpoint, RayCluster, head_service_name
from cluster.client.raycronjob import RayCronJob
from cluster.client.rayjob import RayJob
from cluster.client.rayservice import RayService, serve_service_name

__all__ = [
    "FIELD_MANAGER",
    "ConnectPlan",
    "DashboardClient",
    "Endpoint",
    "KubeApi",
    "RayCluster",
    "RayCronJob",
    "RayJob",
    "RayService",
    "Resource",
    "WorkerGroupSize",
    "connect_plan",
    "customize",
    "from_manifest",
    "head_service_name",
    "objects_for",
    "resource_class",
    "serve_service_name",
]
