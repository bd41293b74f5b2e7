"""What Ray's own KubeRay autoscaler makes of a rendered RayCluster.

The in-tree autoscaler (a sidecar in the head pod) reads the RayCluster and turns
each group into an autoscaler *node type* with
``ray.autoscaler._private.kuberay.autoscaling_config``. Running that same code on
the rendered manifest shows, offline, what the real autoscaler will see: the node
types, their Ray resources (CPU from ``num-cpus`` or the CPU limit, GPU from
``nvidia.com/gpu``, memory from the memory limit) and their min/max workers.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from workloads.exceptions import ManifestError

logger = logging.getLogger(__name__)

#: Name the KubeRay autoscaler gives the head group's node type.
HEAD_NODE_TYPE = "headgroup"


@dataclass(frozen=True)
class NodeType:
    """One autoscaler node type derived from a RayCluster group.

    Attributes:
        name: ``headgroup`` or the worker group's ``groupName``.
        resources: Ray resources one node of this type offers (``CPU``, ``GPU``, ``memory``...).
        min_workers: Smallest number of nodes the autoscaler keeps.
        max_workers: Largest number of nodes it may create.
    """

    name: str
    resources: dict[str, float] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 0


@dataclass(frozen=True)
class AutoscalerView:
    """The autoscaler's view of one RayCluster.

    Attributes:
        config: The full autoscaling config Ray derived.
        node_types: Node types by name (the head group included).
        idle_timeout_s: Seconds before an idle worker is removed.
        max_workers: Cluster-wide worker cap.
    """

    config: dict[str, Any]
    node_types: dict[str, NodeType]
    idle_timeout_s: float
    max_workers: int


def autoscaler_view(raycluster: dict[str, Any]) -> AutoscalerView:
    """Run Ray's KubeRay config conversion on a rendered RayCluster object.

    Args:
        raycluster: A ``ray.io/v1`` RayCluster as rendered (it is not modified).

    Raises:
        ManifestError: Ray's conversion rejected the object.
    """
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    name = (raycluster.get("metadata") or {}).get("name", "?")
    try:
        config = _derive_autoscaling_config_from_ray_cr(copy.deepcopy(raycluster))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ManifestError(f"RayCluster {name}: Ray's KubeRay autoscaler cannot read it: {type(e).__name__}: {e}") from e
    types = {
        type_name: NodeType(
            name=type_name,
            resources={k: float(v) for k, v in (spec.get("resources") or {}).items()},
            min_workers=int(spec.get("min_workers", 0)),
            max_workers=int(spec.get("max_workers", 0)),
        )
        for type_name, spec in (config.get("available_node_types") or {}).items()
    }
    return AutoscalerView(
        config=config,
        node_types=types,
        idle_timeout_s=float(config.get("idle_timeout_minutes", 0)) * 60.0,
        max_workers=int(config.get("max_workers", 0)),
    )


def expected_node_types(raycluster: dict[str, Any]) -> dict[str, NodeType]:
    """The node types the RayCluster *means* to define, read directly from its spec.

    Used to cross-check :func:`autoscaler_view`: CPU comes from ``num-cpus`` or the
    container's CPU limit, GPU from ``nvidia.com/gpu``, memory from the memory limit.
    """
    spec = raycluster.get("spec") or {}

    def resources_of(group: dict[str, Any]) -> dict[str, float]:
        container = group["template"]["spec"]["containers"][0]
        limits = (container.get("resources") or {}).get("limits") or {}
        params = group.get("rayStartParams") or {}
        out: dict[str, float] = {}
        if "num-cpus" in params:
            out["CPU"] = float(params["num-cpus"])
        elif "cpu" in limits:
            out["CPU"] = float(parse_quantity(str(limits["cpu"])))
        if "memory" in limits:
            out["memory"] = float(parse_quantity(str(limits["memory"])))
        if "nvidia.com/gpu" in limits:
            out["GPU"] = float(parse_quantity(str(limits["nvidia.com/gpu"])))
        return out

    types = {HEAD_NODE_TYPE: NodeType(HEAD_NODE_TYPE, resources_of(spec["headGroupSpec"]), 0, 0)}
    for group in spec.get("workerGroupSpecs") or []:
        types[group["groupName"]] = NodeType(
            group["groupName"], resources_of(group), int(group.get("minReplicas", 0)), int(group.get("maxReplicas", 0))
        )
    return types


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}


def parse_quantity(text: str) -> float:
    """Parse a Kubernetes quantity (``500m``, ``2Gi``, ``4``) into a number.

    Raises:
        ManifestError: Not a quantity.
    """
    s = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if s.endswith(suffix):
            number = s[: -len(suffix)]
            try:
                return float(number) * _SUFFIXES[suffix]
            except ValueError as e:
                raise ManifestError(f'Got "{text}" for a resource quantity: not a number before {suffix!r}') from e
    try:
        return float(s)
    except ValueError as e:
        raise ManifestError(f'Got "{text}" for a resource quantity: must be like 500m, 2Gi or 4') from e
