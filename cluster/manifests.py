"""Render the workspace's KubeRay manifests (kustomize) into Python objects.

The manifests live next to this module::

    cluster/base/            Namespace, RBAC, NetworkPolicies, quotas, PVC, RayCluster, RayJob,
                             RayService, RayCronJob
    cluster/overlays/dev/    a laptop cluster (kind): small CPU
    cluster/overlays/gpu/    adds a GPU worker group
    cluster/overlays/ha/     GCS fault tolerance with Redis, two Serve replicas spread across nodes
    cluster/monitoring/      PodMonitors, PrometheusRule, Grafana dashboards (needs prometheus-operator)

:func:`render` builds one of them with ``kubectl kustomize`` when ``kubectl`` is on
``PATH`` and otherwise with a pure-Python implementation of the kustomize subset
these files use (:mod:`cluster._internal.kustomize`); a unit test asserts both
produce the same objects. Set ``RAYSPACE_KUSTOMIZE=python`` or ``=kubectl`` to force one.

Example::

    from cluster.manifests import render, find
    objects = render("dev")
    raycluster = find(objects, "RayCluster", "rayspace")
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from cluster._internal import kustomize
from workloads.exceptions import ManifestError

logger = logging.getLogger(__name__)

CLUSTER_DIR = Path(__file__).resolve().parent
BASE_DIR = CLUSTER_DIR / "base"
OVERLAYS_DIR = CLUSTER_DIR / "overlays"
MONITORING_DIR = CLUSTER_DIR / "monitoring"

#: Overlays a platform engineer applies (each includes the base).
OVERLAYS = ("dev", "gpu", "ha")
#: Everything :func:`render` accepts: the overlays, the bare base, and the monitoring bundle.
TARGETS = (*OVERLAYS, "base", "monitoring")

#: Namespace every object of the workspace lives in.
NAMESPACE = "rayspace"
#: Names of the KubeRay objects in every overlay.
RAYCLUSTER_NAME = "rayspace"
RAYJOB_NAME = "rayspace-pipeline"
RAYSERVICE_NAME = "rayspace-serve"
RAYCRONJOB_NAME = "rayspace-retrain"

ENGINE_ENV = "RAYSPACE_KUSTOMIZE"
Engine = Literal["auto", "kubectl", "python"]

# kustomize's "legacy" output order: what must exist first (namespace, quota, accounts) comes first.
_KIND_ORDER_FIRST = (
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
    "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume",
    "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
)
_KIND_ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


def target_dir(overlay: str) -> Path:
    """Directory of a render target.

    Args:
        overlay: One of :data:`TARGETS`.

    Raises:
        ManifestError: Unknown name.
    """
    if overlay in OVERLAYS:
        return OVERLAYS_DIR / overlay
    if overlay == "base":
        return BASE_DIR
    if overlay == "monitoring":
        return MONITORING_DIR
    raise ManifestError(f'Got "{overlay}" for overlay: must be one of {", ".join(TARGETS)}')


def kubectl_path() -> str | None:
    """The ``kubectl`` executable that renders kustomizations, or ``None`` if there is none."""
    return shutil.which("kubectl")


def _sort_key(obj: dict[str, Any]) -> tuple[int, str, str, str]:
    kind = str(obj.get("kind", ""))
    if kind in _KIND_ORDER_FIRST:
        rank = _KIND_ORDER_FIRST.index(kind)
    elif kind in _KIND_ORDER_LAST:
        rank = len(_KIND_ORDER_FIRST) + 1 + _KIND_ORDER_LAST.index(kind)
    else:
        rank = len(_KIND_ORDER_FIRST)
    meta = obj.get("metadata") or {}
    return rank, f"{obj.get('apiVersion', '')}/{kind}", str(meta.get("namespace", "")), str(meta.get("name", ""))


def _canonical(node: Any) -> Any:
    """The same data with every mapping's keys sorted (kubectl's output order), so both engines print alike."""
    if isinstance(node, dict):
        return {k: _canonical(node[k]) for k in sorted(node)}
    if isinstance(node, list):
        return [_canonical(v) for v in node]
    return node


def sort_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort objects into apply order (kustomize's legacy order, then kind, namespace, name)."""
    return sorted(objects, key=_sort_key)


def _render_kubectl(directory: Path, kubectl: str) -> list[dict[str, Any]]:
    try:
        proc = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ManifestError(f"{kubectl} kustomize {directory} could not run: {e}") from e
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {directory} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    try:
        return [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f"kubectl kustomize {directory} printed invalid YAML: {e}") from e


def render(overlay: str = "dev", *, engine: Engine | None = None) -> list[dict[str, Any]]:
    """Render one overlay (or ``base``/``monitoring``) into Kubernetes objects.

    Args:
        overlay: One of :data:`TARGETS`.
        engine: ``"kubectl"`` (``kubectl kustomize``), ``"python"`` (the built-in
            fallback) or ``"auto"`` (kubectl when on PATH). ``None`` reads
            ``$RAYSPACE_KUSTOMIZE``, default ``auto``.

    Returns:
        The objects as plain dicts with sorted keys, in apply order (see :func:`sort_objects`).

    Raises:
        ManifestError: Unknown overlay or engine, kubectl requested but missing, or
            the kustomization does not build.
    """
    directory = target_dir(overlay)
    chosen = engine or os.environ.get(ENGINE_ENV, "auto") or "auto"
    if chosen not in ("auto", "kubectl", "python"):
        raise ManifestError(f'Got "{chosen}" for the kustomize engine ({ENGINE_ENV}): must be auto, kubectl or python')
    kubectl = kubectl_path() if chosen in ("auto", "kubectl") else None
    if chosen == "kubectl" and kubectl is None:
        raise ManifestError("kustomize engine 'kubectl' requested but kubectl is not on PATH")
    if kubectl is not None:
        logger.debug("rendering %s with %s kustomize", directory, kubectl)
        objects = _render_kubectl(directory, kubectl)
    else:
        logger.debug("rendering %s with the pure-Python kustomize fallback", directory)
        objects = kustomize.build(directory)
    return sort_objects([_canonical(o) for o in objects])


def render_engine(engine: Engine | None = None) -> str:
    """Name of the engine :func:`render` would use now (``kubectl`` or ``python``)."""
    chosen = engine or os.environ.get(ENGINE_ENV, "auto") or "auto"
    if chosen == "python" or (chosen == "auto" and kubectl_path() is None):
        return "python"
    return "kubectl"


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Serialise objects as one multi-document YAML stream (what ``kubectl apply -f -`` reads)."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=120)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the one object of ``kind`` (and ``name``) among rendered objects.

    Args:
        objects: Output of :func:`render`.
        kind: Object kind, e.g. ``"RayCluster"``.
        name: ``metadata.name``; ``None`` accepts any name if exactly one object has the kind.

    Raises:
        ManifestError: No such object, or ``name`` is ``None`` and several objects have the kind.
    """
    hits = [o for o in objects if o.get("kind") == kind and (name is None or (o.get("metadata") or {}).get("name") == name)]
    if len(hits) == 1:
        return hits[0]
    names = sorted(str((o.get("metadata") or {}).get("name")) for o in objects if o.get("kind") == kind)
    if not hits:
        wanted = f"{kind} {name!r}" if name else f"any {kind}"
        raise ManifestError(f"no {wanted} among the rendered objects (objects of that kind: {names or 'none'})")
    raise ManifestError(f"{len(hits)} objects of kind {kind} ({names}): pass a name")


# ------------------------------------------------------------------------------ checks


def autoscaler_findings(objects: list[dict[str, Any]]) -> list["Finding"]:
    """Run Ray's KubeRay autoscaler conversion on every Ray cluster spec and compare the node types.

    Each RayCluster (and the cluster specs inside RayJob/RayService/RayCronJob) goes
    through ``ray.autoscaler._private.kuberay.autoscaling_config``; the node types it
    yields must equal what the spec declares (CPU, GPU, memory, min/max workers).
    """
    from cluster._internal.autoscaling import autoscaler_view, expected_node_types
    from cluster._internal.findings import failed, obj_id, passed
    from cluster._internal.objects import cluster_specs

    out = []
    for obj in objects:
        for base, cspec in cluster_specs(obj):
            where = f"{obj_id(obj)}:{base}"
            cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": dict(obj.get("metadata") or {}), "spec": cspec}
            try:
                view = autoscaler_view(cr)
            except ManifestError as e:
                out.append(failed("autoscaler-node-types", where, str(e)))
                continue
            expected = expected_node_types(cr)
            problems = []
            for name, want in expected.items():
                got = view.node_types.get(name)
                if got is None:
                    problems.append(f"Ray derived no node type {name!r}")
                elif got != want:
                    problems.append(f"{name}: Ray derived {got.resources} min={got.min_workers} max={got.max_workers}, "
                                    f"the spec says {want.resources} min={want.min_workers} max={want.max_workers}")
            extra = sorted(set(view.node_types) - set(expected))
            if extra:
                problems.append(f"unexpected node types {extra}")
            summary = ", ".join(
                f"{n}({', '.join(f'{k}={v:g}' for k, v in t.resources.items() if k != 'memory')}, {t.min_workers}-{t.max_workers})"
                for n, t in view.node_types.items()
            )
            out.append(failed("autoscaler-node-types", where, "; ".join(problems)) if problems
                       else passed("autoscaler-node-types", where, f"Ray's KubeRay autoscaler sees {summary}; idle {view.idle_timeout_s:g}s"))
    return out


def check(overlay: str = "dev", *, engine: Engine | None = None, crds: Path | None = None,
          checkov: bool = False) -> list["Finding"]:
    """Run every offline check on one rendered overlay.

    Schema validation (strict OpenAPI for core kinds, the KubeRay CRDs for ``ray.io``
    kinds), KubeRay webhook rules, version agreement, the security policy, Ray's own
    autoscaler conversion and, for ``monitoring``, the monitoring checks.

    Args:
        overlay: One of :data:`TARGETS`.
        engine: Kustomize engine (see :func:`render`).
        crds: Directory of the KubeRay CRDs (default: ``$RAYSPACE_KUBERAY_CRDS`` or ``../shared/kuberay/crds``).
        checkov: Also run checkov on the core objects (``$RAYSPACE_CHECKOV`` or ``checkov`` on PATH).

    Returns:
        One :class:`~cluster._internal.findings.Finding` per check and object.

    Raises:
        ManifestError: The overlay does not render, the KubeRay CRDs are missing, or
            ``checkov`` was asked for and is missing.
    """
    from cluster._internal import policy, validate
    from cluster._internal.monitoring import monitoring_findings

    objects = render(overlay, engine=engine)
    if overlay == "monitoring":
        return monitoring_findings(objects, render("dev", engine=engine))
    findings = validate.validate_objects(objects, crds=crds)
    findings.extend(policy.policy_findings(objects))
    findings.extend(autoscaler_findings(objects))
    if checkov:
        from cluster._internal.checkov import checkov_findings

        findings.extend(checkov_findings(objects))
    return findings


def simulate(overlay: str = "dev", **kwargs: Any) -> "SimulationResult":
    """Autoscaling simulation of the overlay's RayCluster on this machine.

    See :func:`cluster._internal.simulate.simulate` for the keyword arguments.
    Never runs ``ray stop``: the fake head runs in its own process group and is
    stopped by its id.
    """
    from cluster._internal.simulate import simulate as _simulate

    return _simulate(find(render(overlay), "RayCluster", RAYCLUSTER_NAME), overlay=overlay, **kwargs)


def sync_serve_config() -> list["SyncedFile"]:
    """Regenerate the RayService's ``serveConfigV2`` (base and ha) from ``serve/config.yaml``."""
    from cluster._internal import serve_sync

    return serve_sync.sync()


if TYPE_CHECKING:  # pragma: no cover
    from cluster._internal.findings import Finding
    from cluster._internal.serve_sync import SyncedFile
    from cluster._internal.simulate import SimulationResult
