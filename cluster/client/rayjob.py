"""``RayJob``: submit with an entrypoint, wait for a terminal status, stop, logs."""

from __future__ import annotations

import copy
import logging
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

from cluster.client._api import KubeApi
from cluster.client._base import Resource
from workloads.exceptions import ConfigError

logger = logging.getLogger(__name__)

#: ``status.jobStatus`` values after which the job will not change.
TERMINAL_JOB_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
#: ``status.jobDeploymentStatus`` values after which the RayJob will not change.
TERMINAL_DEPLOYMENT_STATUSES = ("Complete", "Failed")
#: ``status.jobDeploymentStatus`` values the RayJob stays in until someone edits it: the operator rejected the
#: spec, or the job is suspended (ray-operator/apis/ray/v1/rayjob_types.go). Waiting for a result ends there.
STALLED_DEPLOYMENT_STATUSES = ("ValidationFailed", "Suspended")


class RayJob(Resource):
    """A KubeRay ``RayJob`` (``ray.io/v1``)."""

    api_version: ClassVar[str] = "ray.io/v1"
    kind: ClassVar[str] = "RayJob"
    plural: ClassVar[str] = "rayjobs"

    @classmethod
    def from_template(
        cls,
        api: KubeApi,
        template: Mapping[str, Any],
        *,
        entrypoint: str | None = None,
        name: str | None = None,
        unique: bool = True,
    ) -> "RayJob":
        """A new RayJob from a manifest, with its entrypoint and name chosen.

        Args:
            api: The connection.
            template: A RayJob manifest (e.g. from ``cluster/``); not mutated.
            entrypoint: Command the job runs; ``None`` keeps the template's.
            name: Object name; ``None`` keeps the template's.
            unique: Append a random suffix so repeated submissions do not collide.

        Raises:
            ConfigError: No entrypoint in either.
        """
        body = copy.deepcopy(dict(template))
        meta = body.setdefault("metadata", {})
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            meta.pop(key, None)
        body.pop("status", None)
        base = name or meta.get("name") or "rayspace-job"
        # KubeRay accepts RayJob names of at most 47 characters (utils/validation.go): keep room for the suffix.
        meta["name"] = f"{base[:40]}-{secrets.token_hex(3)}" if unique else base
        spec = body.setdefault("spec", {})
        if entrypoint is not None:
            spec["entrypoint"] = entrypoint
        if not str(spec.get("entrypoint") or "").strip():
            raise ConfigError('Got "" for the RayJob entrypoint: must be a command, e.g. "python -m workloads.pipeline"',
                              [("entrypoint", spec.get("entrypoint"), "must be a non-empty command")])
        return cls(api, body)

    def submit(self) -> "RayJob":
        """Create the RayJob (an existing name is an ``AlreadyExistsError``, never an overwrite)."""
        return self.create()

    # ------------------------------------------------------------------ status

    @property
    def job_status(self) -> str:
        """``status.jobStatus`` (``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``STOPPED``) or ``""``."""
        return str(self.status.get("jobStatus") or "")

    @property
    def deployment_status(self) -> str:
        """``status.jobDeploymentStatus`` (``Initializing``, ``Running``, ``Complete``, ``Failed``, ...)."""
        return str(self.status.get("jobDeploymentStatus") or "")

    @property
    def job_id(self) -> str | None:
        """The Ray job submission ID (what the dashboard's job API is keyed by)."""
        return self.status.get("jobId") or self.spec.get("jobId")

    @property
    def cluster_name(self) -> str | None:
        """The RayCluster running this job."""
        return self.status.get("rayClusterName")

    @property
    def dashboard_url(self) -> str | None:
        return self.status.get("dashboardURL")

    @property
    def is_finished(self) -> bool:
        return (self.job_status in TERMINAL_JOB_STATUSES
                or self.deployment_status in TERMINAL_DEPLOYMENT_STATUSES)

    @property
    def succeeded(self) -> bool:
        return self.job_status == "SUCCEEDED"

    def describe_status(self) -> str:
        parts = [f"jobStatus={self.job_status or '-'}", f"jobDeploymentStatus={self.deployment_status or '-'}"]
        if self.status.get("message"):
            parts.append(f"message={self.status['message']!r}")
        return ", ".join(parts)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "job_status": self.job_status or None,
            "deployment_status": self.deployment_status or None,
            "job_id": self.job_id,
            "cluster": self.cluster_name,
            "entrypoint": self.spec.get("entrypoint"),
        }

    @property
    def is_stalled(self) -> bool:
        """The RayJob will not progress by itself (``ValidationFailed`` or ``Suspended``)."""
        return self.deployment_status in STALLED_DEPLOYMENT_STATUSES

    def wait_finished(self, timeout: float = 3600, interval: float = 2.0) -> "RayJob":
        """Wait until the job reached ``SUCCEEDED``, ``FAILED`` or ``STOPPED``, or stalled.

        A failed job is a result, not an exception: read :attr:`job_status`. So is a stalled one
        (``jobDeploymentStatus`` ``ValidationFailed`` or ``Suspended``, :attr:`is_stalled`), which would
        otherwise hold the wait until its timeout. Only a status whose ``observedGeneration`` matches the
        RayJob's generation counts.

        Raises:
            WaitTimeoutError: Still running after ``timeout``; names the last seen status.
        """
        return self.wait(lambda j: j.is_finished or j.is_stalled, timeout=timeout,
                         what="finished (SUCCEEDED or FAILED)", interval=interval)

    # ------------------------------------------------------------------ stop

    def stop(self) -> "RayJob":
        """Stop the job by suspending the RayJob (KubeRay stops the job and deletes its cluster).

        Raises:
            ConfigError: The RayJob keeps its cluster (``shutdownAfterJobFinishes: false``),
                which KubeRay does not allow to suspend; delete the RayJob instead.
        """
        if not self.spec.get("shutdownAfterJobFinishes"):
            raise ConfigError(
                f"{self.ref} has shutdownAfterJobFinishes=false, and KubeRay only suspends RayJobs that own their "
                "cluster; delete it instead (rayspace job stop --delete)",
                [("spec.shutdownAfterJobFinishes", self.spec.get("shutdownAfterJobFinishes"), "must be true to suspend")],
            )
        return self.patch({"spec": {"suspend": True}})
