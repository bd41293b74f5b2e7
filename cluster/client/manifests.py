"""Customise the rendered ``cluster/`` manifests: name, namespace, image, worker-group sizes.

The kustomize output of ``cluster/`` (:func:`cluster.manifests.render`) is the one
description of what a workspace cluster looks like; the client never builds a
RayCluster from scratch. :func:`customize` returns a changed deep copy and never
touches its input.

* ``name`` renames the KubeRay objects: the base name (``rayspace``) becomes the
  new name and prefixed names follow (``rayspace-serve`` -> ``<name>-serve``);
  RayJob ``clusterSelector`` references follow too. Supporting objects
  (ServiceAccounts, RBAC, the data PVC, NetworkPolicies) are shared per namespace
  and keep their names.
* ``namespace`` moves every namespaced object (and RoleBinding subjects, and the
  Namespace object itself).
* ``image`` replaces the Ray image in every container that runs it.
* ``worker_groups`` sets ``replicas`` (and optionally ``minReplicas``/``maxReplicas``)
  of named worker groups in every Ray cluster spec, checking ``min <= replicas <= max``.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from workloads.exceptions import ConfigError, ManifestError

logger = logging.getLogger(__name__)

RAY_KINDS = ("RayCluster", "RayJob", "RayService", "RayCronJob")
#: Kinds without a namespace that may appear in the manifests.
CLUSTER_SCOPED = ("Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass",
                  "CustomResourceDefinition", "PersistentVolume")

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class WorkerGroupSize:
    """Desired size of one worker group.

    Attributes:
        replicas: Workers to run now.
        min_replicas: New ``minReplicas``; ``None`` keeps the manifest's.
        max_replicas: New ``maxReplicas``; ``None`` keeps the manifest's.
    """

    replicas: int
    min_replicas: int | None = None
    max_replicas: int | None = None

    @classmethod
    def parse(cls, text: str) -> tuple[str, "WorkerGroupSize"]:
        """Parse ``group=replicas`` or ``group=replicas:min:max`` (the CLI's ``--workers``).

        Raises:
            ConfigError: Not of that form, or not integers.
        """
        group, sep, rest = text.partition("=")
        parts = rest.split(":")
        if not sep or not group or len(parts) not in (1, 3):
            raise ConfigError(f'Got "{text}" for --workers: must be GROUP=REPLICAS or GROUP=REPLICAS:MIN:MAX, e.g. cpu=2',
                              [("workers", text, "must be GROUP=REPLICAS[:MIN:MAX]")])
        try:
            nums = [int(p) for p in parts]
        except ValueError as e:
            raise ConfigError(f'Got "{text}" for --workers: replicas, min and max must be integers',
                              [("workers", text, "must be integers")]) from e
        if len(nums) == 1:
            return group.strip(), cls(nums[0])
        return group.strip(), cls(nums[0], nums[1], nums[2])


def _cluster_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every RayClusterSpec inside a KubeRay object (RayJob/RayService/RayCronJob embed one)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "RayCluster":
        yield spec
    elif kind == "RayJob" and spec.get("rayClusterSpec"):
        yield spec["rayClusterSpec"]
    elif kind == "RayService" and spec.get("rayClusterConfig"):
        yield spec["rayClusterConfig"]
    elif kind == "RayCronJob":
        job = spec.get("jobTemplate") or {}
        inner = job.get("spec", job) if isinstance(job, dict) else {}
        if isinstance(inner, dict) and inner.get("rayClusterSpec"):
            yield inner["rayClusterSpec"]


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    groups = [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]
    for group in groups:
        pod = ((group.get("template") or {}).get("spec")) or {}
        yield from pod.get("containers") or []
        yield from pod.get("initContainers") or []


def _walk_containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict with ``name`` and ``image`` anywhere in a tree (containers of any pod template)."""
    if isinstance(node, dict):
        if isinstance(node.get("image"), str) and isinstance(node.get("name"), str):
            yield node
        for value in node.values():
            yield from _walk_containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_containers(value)


def ray_image(objects: list[dict[str, Any]]) -> str:
    """The image the manifests' Ray head runs (the first RayCluster spec's first head container).

    Raises:
        ManifestError: No Ray cluster spec among the objects.
    """
    for obj in objects:
        for spec in _cluster_specs(obj):
            for container in _containers(spec):
                if container.get("image"):
                    return str(container["image"])
    raise ManifestError("no Ray cluster spec with a container image among the manifests")


def renamed(old_base: str, new_base: str, name: str) -> str:
    """``name`` after renaming the base name ``old_base`` to ``new_base`` (prefixed names follow)."""
    if name == old_base:
        return new_base
    if name.startswith(old_base + "-"):
        return new_base + name[len(old_base):]
    return name


def customize(
    objects: list[dict[str, Any]],
    *,
    name: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    worker_groups: Mapping[str, WorkerGroupSize | int] | None = None,
    base_name: str = "rayspace",
) -> list[dict[str, Any]]:
    """Return a customised deep copy of rendered manifests.

    Args:
        objects: Output of :func:`cluster.manifests.render` (not mutated).
        name: New base name of the KubeRay objects; ``None`` keeps them.
        namespace: Namespace for every namespaced object; ``None`` keeps it.
        image: Ray image for every container running the manifests' Ray image.
        worker_groups: ``{group: size}`` applied to every Ray cluster spec that has the group.
        base_name: The manifests' base name that ``name`` replaces.

    Returns:
        The customised objects, in the input order.

    Raises:
        ConfigError: An invalid name/namespace, an unknown worker group, or sizes
            outside ``minReplicas..maxReplicas``.
    """
    out = copy.deepcopy(objects)
    if name is not None and name != base_name:
        if not _DNS_LABEL.match(name) or len(name) > 47:
            raise ConfigError(f'Got "{name}" for cluster.name: must be a DNS label of at most 47 characters '
                              "(lowercase letters, digits, '-')", [("cluster.name", name, "must be a DNS label")])
        limit, longest = name_budget(out, base_name)
        if len(name) > limit:
            rule = (f"must be at most {limit} characters: the longest name derived from it, {longest}, would exceed "
                    "KubeRay's limit")
            raise ConfigError(f'Got "{name}" ({len(name)} characters) for cluster.name: {rule}',
                              [("cluster.name", name, rule)])
        renamed_cluster = {base_name: name}
        for obj in out:
            if obj.get("kind") not in RAY_KINDS:
                continue
            meta = obj.setdefault("metadata", {})
            old = str(meta.get("name", ""))
            meta["name"] = renamed(base_name, name, old)
            for spec in _cluster_specs(obj):
                auth = spec.get("authOptions") or {}
                if auth.get("secretName"):
                    auth["secretName"] = renamed(base_name, name, str(auth["secretName"]))
            if obj.get("kind") == "RayCluster":
                renamed_cluster[old] = meta["name"]
        for obj in out:
            if obj.get("kind") == "RayJob":
                selector = (obj.get("spec") or {}).get("clusterSelector") or {}
                for key, value in list(selector.items()):
                    if value in renamed_cluster:
                        selector[key] = renamed_cluster[value]
    if namespace is not None:
        if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
            raise ConfigError(f'Got "{namespace}" for cluster.namespace: must be a DNS label',
                              [("cluster.namespace", namespace, "must be a DNS label")])
        old_namespaces = {str((o.get("metadata") or {}).get("namespace")) for o in out if (o.get("metadata") or {}).get("namespace")}
        for obj in out:
            meta = obj.setdefault("metadata", {})
            kind = obj.get("kind")
            if kind == "Namespace":
                meta["name"] = namespace
            elif kind not in CLUSTER_SCOPED:
                meta["namespace"] = namespace
            if kind in ("RoleBinding", "ClusterRoleBinding"):
                for subject in obj.get("subjects") or []:
                    if subject.get("kind") == "ServiceAccount" and subject.get("namespace") in old_namespaces:
                        subject["namespace"] = namespace
    if image is not None:
        if not image.strip() or any(c.isspace() for c in image):
            raise ConfigError(f'Got "{image}" for cluster.image: must be an image reference without spaces',
                              [("cluster.image", image, "must be an image reference")])
        old_image = ray_image(out)
        for obj in out:
            for container in _walk_containers(obj):
                if container["image"] == old_image:
                    container["image"] = image
    if worker_groups:
        _resize(out, worker_groups)
    return out


#: Names KubeRay accepts (its webhook: ray-operator/controllers/ray/utils/validation.go) and builds from them:
#: a RayJob's or RayService's cluster is ``<name>-<5 random>`` (utils.GenerateRayClusterName), a RayCronJob run
#: is ``<name>-<minutes since the epoch>`` (raycronjob_controller.go getRayJobName), a head Service
#: ``<cluster>-head-svc`` (a Service name is a 63-character DNS label).
KUBERAY_NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47, "RayCronJob": 47, "Service": 63}
_CLUSTER_SUFFIX = "-xxxxx"
_CRON_RUN_SUFFIX = "-29000000"  # minutes since 1970 have 8 digits until the year 2160
_SUBMIT_SUFFIX = "-xxxxxx"  # RayJob.from_template(unique=True)


def derived_names(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(kind, name)`` of every object KubeRay (or ``job submit``) will create from the Ray objects' names."""
    out: list[tuple[str, str]] = []
    for obj in objects:
        kind, name = obj.get("kind"), str((obj.get("metadata") or {}).get("name", ""))
        if kind == "RayCluster":
            out += [("RayCluster", name), ("Service", f"{name}-head-svc")]
        elif kind == "RayService":
            cluster = name + _CLUSTER_SUFFIX
            out += [("RayService", name), ("Service", f"{name}-serve-svc"), ("RayCluster", cluster),
                    ("Service", f"{cluster}-head-svc")]
        elif kind in ("RayJob", "RayCronJob"):
            job = name + (_SUBMIT_SUFFIX if kind == "RayJob" else _CRON_RUN_SUFFIX)
            cluster = job + _CLUSTER_SUFFIX
            out += [(kind, name), ("RayJob", job), ("RayCluster", cluster), ("Service", f"{cluster}-head-svc")]
    return out


def name_budget(objects: list[dict[str, Any]], base_name: str) -> tuple[int, str]:
    """The longest ``cluster.name`` every derived name stays within KubeRay's limits for, and the tightest name."""
    best, tightest = 10**6, ""
    for kind, derived in derived_names([o for o in objects if o.get("kind") in RAY_KINDS]):
        if base_name not in derived:
            continue
        allowed = KUBERAY_NAME_LIMITS[kind] - (len(derived) - len(base_name))
        if allowed < best:
            best, tightest = allowed, f"{kind} {derived.replace(base_name, '<name>', 1)}"
    return best, tightest


def _resize(objects: list[dict[str, Any]], worker_groups: Mapping[str, WorkerGroupSize | int]) -> None:
    seen: set[str] = set()
    available: set[str] = set()
    for obj in objects:
        for spec in _cluster_specs(obj):
            for group in spec.get("workerGroupSpecs") or []:
                gname = str(group.get("groupName"))
                available.add(gname)
                if gname not in worker_groups:
                    continue
                seen.add(gname)
                size = worker_groups[gname]
                size = size if isinstance(size, WorkerGroupSize) else WorkerGroupSize(int(size))
                lo = size.min_replicas if size.min_replicas is not None else int(group.get("minReplicas", 0))
                hi = size.max_replicas if size.max_replicas is not None else int(group.get("maxReplicas", 2**31 - 1))
                if lo < 0 or not lo <= size.replicas <= hi:
                    rule = f"must satisfy 0 <= minReplicas ({lo}) <= replicas <= maxReplicas ({hi})"
                    raise ConfigError(f'Got {size.replicas} for replicas of worker group "{gname}": {rule}',
                                      [(f"workers.{gname}", size.replicas, rule)])
                group["replicas"] = size.replicas
                group["minReplicas"] = lo
                if size.max_replicas is not None or "maxReplicas" in group:
                    group["maxReplicas"] = hi
    unknown = sorted(set(worker_groups) - seen)
    if unknown:
        raise ConfigError(f"Got {unknown} for worker groups: must be among {sorted(available)}",
                          [("workers", unknown, f"must be among {sorted(available)}")])


def without_autoscaled_replicas(objects: list[dict[str, Any]], keep: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Copies of ``objects`` whose autoscaled worker groups carry no ``replicas``.

    With in-tree autoscaling the autoscaler owns ``replicas``; a server-side apply that includes the field
    takes it back and resets the group to the manifest's number on every ``cluster up``. Without it KubeRay
    starts the group at ``minReplicas`` (ray-operator/controllers/ray/utils/util.go,
    GetWorkerGroupDesiredReplicas). Groups named in ``keep`` (sized explicitly with ``--workers``) keep it.
    """
    keep = set(keep)
    out = copy.deepcopy(objects)
    for obj in out:
        if obj.get("kind") not in ("RayCluster", "RayService"):
            continue  # RayJob/RayCronJob clusters are created once per run; nothing to take back
        for spec in _cluster_specs(obj):
            if not spec.get("enableInTreeAutoscaling"):
                continue
            for group in spec.get("workerGroupSpecs") or []:
                if str(group.get("groupName")) not in keep:
                    group.pop("replicas", None)
    return out


def objects_for(cluster_cfg: Any, *, overlay: str | None = None, namespace: str | None = None,
                worker_groups: Mapping[str, WorkerGroupSize | int] | None = None) -> list[dict[str, Any]]:
    """Render the configured overlay and customise it from a ``ClusterConfig``.

    Args:
        cluster_cfg: ``WorkspaceConfig.cluster`` (``name``, ``namespace``, ``overlay``, ``image``).
        overlay: Overrides ``cluster_cfg.overlay``.
        namespace: Overrides ``cluster_cfg.namespace`` (e.g. the kubeconfig context's).
        worker_groups: Sizes to set.
    """
    from cluster.manifests import render

    objects = render(overlay or cluster_cfg.overlay)
    return customize(objects, name=cluster_cfg.name, namespace=namespace or cluster_cfg.namespace,
                     image=cluster_cfg.image, worker_groups=worker_groups)
