"""``RayCluster``: readiness by conditions, scaling, suspend/resume, endpoints, auth token."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from cluster.client._base import Resource, resource_class
from workloads.exceptions import ConfigError, NotFoundError

logger = logging.getLogger(__name__)

#: The data key KubeRay stores the Ray auth token under.
AUTH_TOKEN_KEY = "auth_token"

#: Head-service port names ``cluster connect`` forwards, and Ray's defaults for them.
HEAD_PORTS = {"dashboard": 8265, "client": 10001, "serve": 8000}


@dataclass(frozen=True)
class Endpoint:
    """One named port of a Kubernetes Service.

    Attributes:
        name: Port name (``dashboard``, ``client``, ``serve``, ...).
        service: Service name.
        namespace: Service namespace.
        port: Service port.
    """

    name: str
    service: str
    namespace: str
    port: int

    @property
    def in_cluster_url(self) -> str:
        """The address pods use: ``http://svc.ns.svc:port`` (``ray://`` for the client port)."""
        scheme = "ray" if self.name == "client" else "http"
        return f"{scheme}://{self.service}.{self.namespace}.svc:{self.port}"


def head_service_name(cluster_name: str) -> str:
    """KubeRay's name for a cluster's head Service."""
    return f"{cluster_name}-head-svc"


class RayCluster(Resource):
    """A KubeRay ``RayCluster`` (``ray.io/v1``)."""

    api_version: ClassVar[str] = "ray.io/v1"
    kind: ClassVar[str] = "RayCluster"
    plural: ClassVar[str] = "rayclusters"

    #: Both must be True for the cluster to be usable (``status.state`` is deprecated).
    READY_CONDITIONS = ("HeadPodReady", "RayClusterProvisioned")

    # ------------------------------------------------------------------ state

    @property
    def is_ready(self) -> bool:
        """``HeadPodReady`` and ``RayClusterProvisioned`` are both True."""
        return all(self.condition_true(c) for c in self.READY_CONDITIONS)

    @property
    def is_suspended(self) -> bool:
        return self.condition_true("RayClusterSuspended")

    def describe_status(self) -> str:
        conds = super().describe_status()
        workers = self.status.get("readyWorkerReplicas")
        desired = self.status.get("desiredWorkerReplicas")
        extra = f"; workers ready {workers}/{desired}" if workers is not None and desired is not None else ""
        return conds + extra

    def summary(self) -> dict[str, Any]:
        groups = ", ".join(
            f"{g.get('groupName')}={g.get('replicas', 0)}[{g.get('minReplicas', 0)}..{g.get('maxReplicas', '?')}]"
            for g in self.worker_groups
        )
        return {
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "ready": self.is_ready,
            "suspended": bool(self.spec.get("suspend")),
            "workers": groups,
            "status": self.describe_status(),
        }

    def wait_ready(self, timeout: float = 600, interval: float = 2.0) -> "RayCluster":
        """Wait for ``HeadPodReady`` and ``RayClusterProvisioned``.

        Raises:
            WaitTimeoutError: Not ready in time; the message lists the last seen conditions.
        """
        return self.wait(lambda rc: rc.is_ready, timeout=timeout, what="ready (HeadPodReady and RayClusterProvisioned)",
                         interval=interval)

    # ------------------------------------------------------------------ scaling

    @property
    def worker_groups(self) -> list[dict[str, Any]]:
        return list(self.spec.get("workerGroupSpecs") or [])

    @property
    def autoscaling(self) -> bool:
        """In-tree autoscaling is on: the autoscaler owns each worker group's ``replicas``."""
        return bool(self.spec.get("enableInTreeAutoscaling"))

    def scale(self, group: str, replicas: int) -> "RayCluster":
        """Scale a worker group to ``replicas``.

        Without autoscaling this sets ``replicas``. With in-tree autoscaling the autoscaler rewrites
        ``replicas`` on its next round, so the number becomes the group's floor instead: ``minReplicas``
        (KubeRay keeps at least that many, GetWorkerGroupDesiredReplicas; the autoscaler may add more up to
        ``maxReplicas`` and removes idle ones down to it). The change is a JSON patch guarded by a ``test``
        of the group's name at its index, so it cannot land on a different group if the list was reordered.

        Raises:
            ConfigError: Unknown group, or ``replicas`` outside the allowed range (``[minReplicas, maxReplicas]``
                without autoscaling, ``[0, maxReplicas]`` with it).
            ValidationError: The patch's test failed (the spec changed meanwhile).
        """
        groups = self.worker_groups
        names = [g.get("groupName") for g in groups]
        if group not in names:
            raise ConfigError(f'Got "{group}" for the worker group of {self.ref}: must be one of {names}',
                              [("group", group, f"must be one of {names}")])
        index = names.index(group)
        spec = groups[index]
        lo = 0 if self.autoscaling else int(spec.get("minReplicas", 0))
        hi = int(spec.get("maxReplicas", 2**31 - 1))
        field = "minReplicas" if self.autoscaling else "replicas"
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not lo <= replicas <= hi:
            bound = "0" if self.autoscaling else f"minReplicas={lo}"
            rule = f"must be an integer between {bound} and maxReplicas={hi}"
            raise ConfigError(f'Got {replicas!r} for {field} of worker group "{group}" in {self.ref}: {rule}',
                              [(field, replicas, rule)])
        op = "replace" if field in spec else "add"
        return self.patch([
            {"op": "test", "path": f"/spec/workerGroupSpecs/{index}/groupName", "value": group},
            {"op": op, "path": f"/spec/workerGroupSpecs/{index}/{field}", "value": replicas},
        ])

    # ------------------------------------------------------------------ suspend

    def suspend(self) -> "RayCluster":
        """Set ``spec.suspend``: KubeRay deletes the pods and keeps the object."""
        return self.patch({"spec": {"suspend": True}})

    def resume(self) -> "RayCluster":
        """Clear ``spec.suspend``: KubeRay recreates the pods."""
        return self.patch({"spec": {"suspend": False}})

    def wait_suspended(self, timeout: float = 300, interval: float = 2.0) -> "RayCluster":
        return self.wait(lambda rc: rc.is_suspended, timeout=timeout, what="suspended (RayClusterSuspended)",
                         interval=interval)

    # ------------------------------------------------------------------ endpoints

    @property
    def head_service(self) -> str:
        """The head Service's name (from status once known, else KubeRay's naming rule)."""
        return (self.status.get("head") or {}).get("serviceName") or head_service_name(self.name)

    def endpoints(self) -> dict[str, Endpoint]:
        """The head Service's named ports (``dashboard``, ``client``, ``serve``, ...).

        Raises:
            NotFoundError: The head Service does not exist yet.
        """
        svc = resource_class("v1", "Service").get(self.api, self.head_service, self.namespace)
        out: dict[str, Endpoint] = {}
        for port in (svc.spec.get("ports") or []):
            name = port.get("name") or str(port.get("port"))
            out[name] = Endpoint(name=name, service=svc.name, namespace=str(svc.namespace), port=int(port["port"]))
        return out

    # ------------------------------------------------------------------ auth

    def auth_secret_ref(self) -> tuple[str, str]:
        """``(secret name, key)`` holding this cluster's Ray auth token.

        KubeRay's ``authOptions`` (``mode: token``) generates a Secret named after
        the cluster unless ``authOptions.secretName`` names one; a cluster set up by
        hand references the Secret from the head container's ``RAY_AUTH_TOKEN``.

        Raises:
            NotFoundError: The cluster does not use token authentication.
        """
        auth = self.spec.get("authOptions") or {}
        if auth.get("secretName"):
            return str(auth["secretName"]), AUTH_TOKEN_KEY
        if str(auth.get("mode", "")).lower() == "token":
            return self.name, AUTH_TOKEN_KEY
        head = ((self.spec.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {}
        for container in head.get("containers") or []:
            for env in container.get("env") or []:
                ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) if env.get("name") == "RAY_AUTH_TOKEN" else None
                if ref and ref.get("name"):
                    return str(ref["name"]), str(ref.get("key") or AUTH_TOKEN_KEY)
        raise NotFoundError(
            f"{self.ref} does not use token authentication (no spec.authOptions with mode: token and no "
            "RAY_AUTH_TOKEN secretKeyRef on the head container)"
        )

    def auth_token(self) -> str:
        """The Ray auth token from the cluster's Secret.

        Raises:
            NotFoundError: No token auth, no such Secret, or the key is missing.
            ForbiddenError: RBAC does not allow reading the Secret.
        """
        name, key = self.auth_secret_ref()
        secret = resource_class("v1", "Secret").get(self.api, name, self.namespace)
        data = secret.raw.get("data") or {}
        if key not in data:
            raise NotFoundError(f'Secret "{secret.namespace}/{name}" of {self.ref} has no key "{key}"')
        try:
            return base64.b64decode(data[key], validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError) as e:
            raise NotFoundError(f'Secret "{secret.namespace}/{name}" key "{key}" is not base64 text: {e}') from e
