"""``RayService``: application statuses and the Serve service name."""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import Any, ClassVar

from cluster.client._base import Resource, resource_class
from workloads.exceptions import ConfigError, NotFoundError

logger = logging.getLogger(__name__)
#: Key of the token in the Secret (KubeRay's utils.RAY_AUTH_TOKEN_SECRET_KEY).
AUTH_TOKEN_KEY = "auth_token"


def new_token_secret(name: str, namespace: str | None, owner: str) -> dict[str, Any]:
    """A Secret holding a fresh random Ray auth token (32 random bytes, as KubeRay generates its own)."""
    token = secrets.token_urlsafe(32)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "rayspace", "rayspace.io/auth-token-of": owner}},
            "data": {AUTH_TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


def ensure_token_secret(api: Any, service: dict[str, Any]) -> bool:
    """Create the RayService's ``authOptions.secretName`` Secret with a random token if it does not exist.

    Returns:
        Whether it was created.
    """
    auth = ((service.get("spec") or {}).get("rayClusterConfig") or {}).get("authOptions") or {}
    name = auth.get("secretName")
    if not name:
        return False
    ns = (service.get("metadata") or {}).get("namespace") or api.namespace
    secret_cls = resource_class("v1", "Secret")
    try:
        secret_cls.get(api, name, ns)
        return False
    except NotFoundError:
        secret_cls(api, new_token_secret(name, ns, service["metadata"]["name"])).create()
        logger.info("created the auth token Secret %s/%s", ns, name)
        return True


def serve_service_name(service_name: str) -> str:
    """KubeRay's name for a RayService's Serve Service (stable across upgrades)."""
    return f"{service_name}-serve-svc"


class RayService(Resource):
    """A KubeRay ``RayService`` (``ray.io/v1``)."""

    api_version: ClassVar[str] = "ray.io/v1"
    kind: ClassVar[str] = "RayService"
    plural: ClassVar[str] = "rayservices"

    @property
    def serve_service(self) -> str:
        """The Service that routes to the active cluster's Serve proxies."""
        return serve_service_name(self.name)

    def app_statuses(self) -> dict[str, str]:
        """``{application: status}`` of the active cluster (``RUNNING``, ``DEPLOYING``, ...)."""
        apps = (self.status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
        return {name: str((app or {}).get("status") or "") for name, app in apps.items()}

    @property
    def is_ready(self) -> bool:
        """The ``Ready`` condition is True and every application is ``RUNNING``."""
        apps = self.app_statuses()
        return self.condition_true("Ready") and bool(apps) and all(s == "RUNNING" for s in apps.values())

    def describe_status(self) -> str:
        apps = ", ".join(f"{k}={v}" for k, v in self.app_statuses().items()) or "no applications"
        return f"{super().describe_status()}; apps: {apps}"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "ready": self.is_ready,
            "applications": self.app_statuses(),
            "serve_service": self.serve_service,
        }

    @property
    def auth_secret_name(self) -> str | None:
        """The token Secret the RayService's clusters use (``rayClusterConfig.authOptions.secretName``)."""
        return ((self.spec.get("rayClusterConfig") or {}).get("authOptions") or {}).get("secretName")

    @property
    def active_cluster(self) -> str:
        return str((self.status.get("activeServiceStatus") or {}).get("rayClusterName") or "")

    def rotate_token(self, *, timeout: float = 1800, interval: float = 5.0) -> str:
        """Rotate the Ray auth token without downtime; return the new Secret's name.

        A new Secret with a fresh token, then ``authOptions.secretName`` pointed at it: a change of
        ``rayClusterConfig``, so KubeRay upgrades the RayService by building a new cluster with the new
        token and moving traffic to it once it is ready; the old cluster keeps serving meanwhile. The old
        Secret is deleted after the switch (running pods read it at start, so nothing breaks).

        Raises:
            ConfigError: The RayService does not name its own token Secret.
            WaitTimeoutError: The upgrade did not finish within ``timeout`` (the new Secret stays).
        """
        old = self.auth_secret_name
        if not old:
            raise ConfigError(f"{self.ref} has no rayClusterConfig.authOptions.secretName: its token belongs to each "
                              "RayCluster and changes on every upgrade; set one (cluster/base/rayservice.yaml)",
                              [("authOptions.secretName", None, "must name the RayService's token Secret")])
        before = self.active_cluster
        base = old.rsplit("-r", 1)[0] if old.rsplit("-r", 1)[-1].isdigit() else old
        new = f"{base}-r{int(time.time())}"
        secret_cls = resource_class("v1", "Secret")
        secret_cls(self.api, new_token_secret(new, self.namespace, self.name)).create()
        self.patch({"spec": {"rayClusterConfig": {"authOptions": {"secretName": new}}}})
        self.wait(lambda s: s.is_ready and s.active_cluster != before and not s.condition_true("UpgradeInProgress"),
                  timeout=timeout, what="upgraded to a cluster with the new token", interval=interval)
        try:
            secret_cls.get(self.api, old, self.namespace).delete(propagation="Background")
        except NotFoundError:
            pass
        return new

    def wait_ready(self, timeout: float = 900, interval: float = 2.0) -> "RayService":
        return self.wait(lambda s: s.is_ready, timeout=timeout, what="ready (Ready and every application RUNNING)",
                         interval=interval)
