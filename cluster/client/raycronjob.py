"""``RayCronJob``: a RayJob template on a cron schedule (KubeRay >= 1.6, alpha)."""

from __future__ import annotations

from typing import Any, ClassVar

from cluster.client._base import Resource


class RayCronJob(Resource):
    """A KubeRay ``RayCronJob`` (``ray.io/v1``)."""

    api_version: ClassVar[str] = "ray.io/v1"
    kind: ClassVar[str] = "RayCronJob"
    plural: ClassVar[str] = "raycronjobs"

    @property
    def schedule(self) -> str:
        return str(self.spec.get("schedule") or "")

    @property
    def last_schedule_time(self) -> str | None:
        return self.status.get("lastScheduleTime")

    def suspend(self) -> "RayCronJob":
        """Stop creating new RayJobs (running ones continue)."""
        return self.patch({"spec": {"suspend": True}})

    def resume(self) -> "RayCronJob":
        return self.patch({"spec": {"suspend": False}})

    def describe_status(self) -> str:
        return f"schedule={self.schedule!r}, suspended={bool(self.spec.get('suspend'))}, last={self.last_schedule_time or '-'}"

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "namespace": self.namespace, "schedule": self.schedule,
                "suspended": bool(self.spec.get("suspend")), "last_schedule_time": self.last_schedule_time}
