"""``RayService``: application statuses and the Serve service name."""

from __future__ import annotations

from typing import Any, ClassVar

from cluster.client._base import Resource


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

    def wait_ready(self, timeout: float = 900, interval: float = 2.0) -> "RayService":
        return self.wait(lambda s: s.is_ready, timeout=timeout, what="ready (Ready and every application RUNNING)",
                         interval=interval)
