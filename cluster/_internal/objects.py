"""Walk rendered objects: every pod template, including those nested in KubeRay kinds.

Scanners such as checkov only look at core workload kinds; KubeRay's pod templates
sit deep inside RayCluster/RayJob/RayService/RayCronJob. :func:`pod_templates`
yields all of them with a readable path, so validation and policy checks cover
every pod the operator will create.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

RAY_KINDS = ("RayCluster", "RayJob", "RayService", "RayCronJob")


@dataclass(frozen=True)
class PodTemplate:
    """One pod template found in an object.

    Attributes:
        owner: ``Kind/name`` of the object holding it.
        path: Dotted path to the template inside the owner, e.g.
            ``spec.rayClusterSpec.workerGroupSpecs[0].template``.
        role: ``ray-head``, ``ray-worker``, ``submitter`` or ``workload``.
        template: The template (``metadata`` + ``spec``); for a bare Pod, the Pod.
        cluster_spec: For Ray pods, the enclosing RayCluster spec (autoscaler options, rayVersion...).
        group: For Ray pods, the group (``headGroupSpec`` or a ``workerGroupSpecs`` entry).
    """

    owner: str
    path: str
    role: str
    template: dict[str, Any]
    cluster_spec: dict[str, Any] | None = None
    group: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        """``Kind/name:path`` for messages."""
        return f"{self.owner}:{self.path}"

    @property
    def spec(self) -> dict[str, Any]:
        """The pod spec."""
        return self.template.get("spec") or {}


def cluster_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """RayCluster specs inside a KubeRay object, with their dotted paths."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "RayCluster":
        yield "spec", spec
    elif kind == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]
    elif kind == "RayService" and isinstance(spec.get("rayClusterConfig"), dict):
        yield "spec.rayClusterConfig", spec["rayClusterConfig"]
    elif kind == "RayCronJob":
        job = spec.get("jobTemplate") or {}
        if isinstance(job.get("rayClusterSpec"), dict):
            yield "spec.jobTemplate.rayClusterSpec", job["rayClusterSpec"]


def job_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """RayJob specs: the RayJob's own, or the RayCronJob's job template."""
    if obj.get("kind") == "RayJob":
        yield "spec", obj.get("spec") or {}
    elif obj.get("kind") == "RayCronJob":
        yield "spec.jobTemplate", (obj.get("spec") or {}).get("jobTemplate") or {}


def pod_templates(obj: dict[str, Any]) -> Iterator[PodTemplate]:
    """Every pod template in ``obj`` (none for kinds that create no pods)."""
    kind = obj.get("kind")
    owner = f"{kind}/{(obj.get('metadata') or {}).get('name', '?')}"
    spec = obj.get("spec") or {}
    if kind in RAY_KINDS:
        for base, cspec in cluster_specs(obj):
            head = cspec.get("headGroupSpec") or {}
            if isinstance(head.get("template"), dict):
                yield PodTemplate(owner, f"{base}.headGroupSpec.template", "ray-head", head["template"], cspec, head)
            for i, group in enumerate(cspec.get("workerGroupSpecs") or []):
                if isinstance(group.get("template"), dict):
                    yield PodTemplate(owner, f"{base}.workerGroupSpecs[{i}].template", "ray-worker",
                                      group["template"], cspec, group)
        for base, jspec in job_specs(obj):
            if isinstance(jspec.get("submitterPodTemplate"), dict):
                yield PodTemplate(owner, f"{base}.submitterPodTemplate", "submitter", jspec["submitterPodTemplate"])
    elif kind == "Pod":
        yield PodTemplate(owner, "", "workload", obj)
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        if isinstance(spec.get("template"), dict):
            yield PodTemplate(owner, "spec.template", "workload", spec["template"])
    elif kind == "CronJob":
        tmpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
        if isinstance(tmpl, dict):
            yield PodTemplate(owner, "spec.jobTemplate.spec.template", "workload", tmpl)


#: Stands in for the random suffix KubeRay appends to the RayCluster a RayJob, RayService or RayCronJob
#: run creates (ray-operator/controllers/ray/utils/util.go, GenerateRayClusterName).
GENERATED_SUFFIX = "xxxxx"


def ray_cluster_name(template: PodTemplate) -> str | None:
    """The ``ray.io/cluster`` value KubeRay gives a Ray pod of ``template`` (None for non-Ray pods).

    A RayCluster's pods carry its own name; the cluster a RayJob, RayService or RayCronJob run creates is
    named ``<owner>-<random>``, modelled here with :data:`GENERATED_SUFFIX`.
    """
    if template.role not in ("ray-head", "ray-worker"):
        return None
    kind, _, name = template.owner.partition("/")
    return name if kind == "RayCluster" else f"{name}-{GENERATED_SUFFIX}"


def pod_labels(template: PodTemplate) -> dict[str, str]:
    """The labels a pod created from ``template`` carries.

    For Ray pods this follows KubeRay's ``labelPod`` (ray-operator/controllers/ray/common/pod.go): its own
    labels first, the template's override them, except ``ray.io/cluster``, ``ray.io/node-type`` and
    ``ray.io/group``, which the operator always sets.
    """
    own = dict((template.template.get("metadata") or {}).get("labels") or {})
    cluster = ray_cluster_name(template)
    if cluster is None:
        return own
    node_type = "head" if template.role == "ray-head" else "worker"
    group = "headgroup" if template.role == "ray-head" else str((template.group or {}).get("groupName", ""))
    labels = {"ray.io/is-ray-node": "yes", "app.kubernetes.io/name": "kuberay",
              "app.kubernetes.io/created-by": "kuberay-operator", **own}
    labels.update({"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group})
    return labels


def containers(template: PodTemplate) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``kind[index]:name``, container) for init and regular containers of a template."""
    for key in ("initContainers", "containers"):
        for i, c in enumerate(template.spec.get(key) or []):
            yield f"{key}[{i}]({c.get('name', '?')})", c


def labels_match(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` + ``matchExpressions``) selects ``labels``."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
