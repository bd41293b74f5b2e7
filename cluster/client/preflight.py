"""What ``rayspace cluster up`` checks before it applies anything.

Some prerequisites live outside the workspace's objects, and when one is missing the
cluster does not fail, it stalls: a claim naming a StorageClass that does not exist
stays Pending (no Ray pod schedules), and a pod reading a Secret that does not exist
sits in ``CreateContainerConfigError`` (the ha overlay's ``rayspace-redis``) while
``up`` waits for readiness. :func:`check` finds both in seconds and raises
:class:`PreflightError` naming the object, the field and the fix.

Where the user may not read what is to be checked (StorageClasses are cluster-scoped;
Secrets need ``get`` on secrets), the check is skipped with a warning in the log: a
missing permission is not proof that the prerequisite is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cluster.client._api import KubeApi
from cluster.client._base import Resource, resource_class
from workloads.exceptions import ForbiddenError, KubernetesError, NotFoundError

logger = logging.getLogger(__name__)


class PreflightError(KubernetesError):
    """A prerequisite of the objects to apply is missing from the cluster (nothing was applied)."""


class StorageClass(Resource):
    """``storage.k8s.io/v1`` StorageClass (cluster-scoped; only read here)."""

    api_version = "storage.k8s.io/v1"
    kind = "StorageClass"
    plural = "storageclasses"
    namespaced = False


@dataclass(frozen=True)
class SecretRef:
    """A Secret an object to apply reads: which object, through which field."""

    secret: str
    owner: str
    field: str


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def secret_refs(objects: Iterable[dict[str, Any]]) -> list[SecretRef]:
    """Secrets the objects read (``secretKeyRef``, ``secret`` volumes, ``envFrom.secretRef``) but do not create.

    Secrets the KubeRay operator creates itself (the auth token Secret of ``authOptions``) are not
    referenced from the manifests, so they do not appear here.
    """
    objects = list(objects)
    created = {(o.get("metadata") or {}).get("name") for o in objects if o.get("kind") == "Secret"}
    out: list[SecretRef] = []
    for obj in objects:
        owner = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        for path, node in _walk(obj.get("spec") or {}, "spec"):
            for key in ("secretKeyRef", "secretRef"):
                name = (node.get(key) or {}).get("name") if isinstance(node.get(key), dict) else None
                if name and name not in created:
                    out.append(SecretRef(name, owner, f"{path}.{key}"))
            secret_vol = node.get("secret")
            if isinstance(secret_vol, dict) and secret_vol.get("secretName") and secret_vol["secretName"] not in created:
                out.append(SecretRef(secret_vol["secretName"], owner, f"{path}.secret"))
    return out


def apiserver_egress_blocks(objects: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """``NetworkPolicy name -> CIDRs`` of egress rules towards the API server ports (443/6443)."""
    out: dict[str, list[str]] = {}
    for obj in objects:
        if obj.get("kind") != "NetworkPolicy":
            continue
        for rule in (obj.get("spec") or {}).get("egress") or []:
            ports = {p.get("port") for p in rule.get("ports") or []}
            if not ports & {443, 6443}:
                continue
            cidrs = [(peer.get("ipBlock") or {}).get("cidr") for peer in rule.get("to") or []]
            out.setdefault(obj["metadata"]["name"], []).extend(c for c in cidrs if c)
    return out


def _check_apiserver_egress(api: KubeApi, objects: list[dict[str, Any]], warnings: list[str]) -> list[str]:
    """The API-server egress CIDRs contain the ``kubernetes`` Service's endpoint addresses."""
    import ipaddress

    blocks = apiserver_egress_blocks(objects)
    if not blocks:
        return []
    try:
        endpoints = resource_class("v1", "Endpoints").get(api, "kubernetes", "default").raw
    except (NotFoundError, ForbiddenError) as e:
        warnings.append(f"cannot read Endpoints default/kubernetes ({type(e).__name__}); make sure "
                        f"{', '.join(f'NetworkPolicy/{n} {c}' for n, c in blocks.items())} contains the API server's address")
        return []
    ips = [a.get("ip") for sub in endpoints.get("subsets") or [] for a in sub.get("addresses") or [] if a.get("ip")]
    problems = []
    for name, cidrs in blocks.items():
        nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        outside = [ip for ip in ips if not any(ipaddress.ip_address(ip) in n for n in nets)]
        if outside:
            problems.append(f"NetworkPolicy/{name} lets Ray heads reach the API server at {cidrs} but its endpoints are "
                            f"{ips}: the autoscaler could not scale; set ipBlock.cidr to {outside[0]}/32 in the overlay's "
                            f"ray-head-to-apiserver patch")
    return problems


#: Label both KubeRay install methods put on the operator (see cluster/_internal/policy.py).
OPERATOR_SELECTOR = "app.kubernetes.io/component=kuberay-operator"


def operator_namespace(objects: Iterable[dict[str, Any]]) -> str | None:
    """The operator's namespace as the overlay names it (the ``ray-head-from-operator`` NetworkPolicy)."""
    for obj in objects:
        if obj.get("kind") == "NetworkPolicy" and obj["metadata"].get("name") == "ray-head-from-operator":
            for rule in (obj.get("spec") or {}).get("ingress") or []:
                for peer in rule.get("from") or []:
                    ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                    if ns:
                        return ns
    return None


def feature_gates(deployment: dict[str, Any]) -> dict[str, bool]:
    """``--feature-gates=A=true,B=false`` of the operator container(s), later flags winning."""
    gates: dict[str, bool] = {}
    for c in ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        for arg in [*(c.get("command") or []), *(c.get("args") or [])]:
            if str(arg).startswith("--feature-gates="):
                for item in str(arg).split("=", 1)[1].split(","):
                    name, _, value = item.partition("=")
                    if name.strip():
                        gates[name.strip()] = value.strip().lower() == "true"
    return gates


def check_cron_gate(api: KubeApi, objects: list[dict[str, Any]]) -> list[str]:
    """The operator runs with the ``RayCronJob`` feature gate (alpha, off by default in KubeRay 1.7).

    Returns warnings when the operator Deployment cannot be read.

    Raises:
        PreflightError: The operator Deployment was found and the gate is off.
    """
    ns = operator_namespace(objects) or "default"
    try:
        deployments = resource_class("apps/v1", "Deployment").list(api, label_selector=OPERATOR_SELECTOR, namespace=ns)
    except (NotFoundError, ForbiddenError) as e:
        return [f"cannot read the KubeRay operator Deployment in namespace {ns} ({type(e).__name__}); the RayCronJob "
                "runs only if the operator has --feature-gates=RayCronJob=true"]
    if not deployments:
        return [f"no Deployment labelled {OPERATOR_SELECTOR} in namespace {ns}; the RayCronJob runs only if the "
                "operator has --feature-gates=RayCronJob=true"]
    for dep in deployments:
        if not feature_gates(dep.raw).get("RayCronJob"):
            raise PreflightError(
                f"nothing applied: the KubeRay operator {ns}/{dep.name} runs without the RayCronJob feature gate (alpha, "
                "off by default), so the RayCronJob would never run; enable it (Helm: --set featureGates[4].name=RayCronJob "
                "--set featureGates[4].enabled=true; kustomize: --feature-gates=...,RayCronJob=true) or drop --with-cron")
    return []


def check(api: KubeApi, objects: list[dict[str, Any]]) -> list[str]:
    """Check the prerequisites of ``objects``; return warnings for what could not be checked.

    Raises:
        PreflightError: A StorageClass or Secret the objects need does not exist; the message names each
            missing one, the object and field that needs it, and how to create it.
    """
    problems, warnings = [], []
    for obj in objects:
        if obj.get("kind") != "PersistentVolumeClaim":
            continue
        name = (obj.get("metadata") or {}).get("name")
        cls = (obj.get("spec") or {}).get("storageClassName")
        if not cls:
            continue
        try:
            StorageClass.get(api, cls)
        except NotFoundError:
            problems.append(f"PersistentVolumeClaim/{name} spec.storageClassName {cls!r}: no such StorageClass, the claim "
                            f"would stay Pending and no Ray pod would schedule; create it (a ReadWriteMany class for "
                            f"ReadWriteMany claims) or change storageClassName in the overlay (`kubectl get storageclass`)")
        except ForbiddenError:
            warnings.append(f"cannot read StorageClass {cls!r} (no rights on cluster-scoped storageclasses); "
                            f"make sure it exists or PersistentVolumeClaim/{name} stays Pending")
    problems += _check_apiserver_egress(api, objects, warnings)
    missing: dict[str, list[SecretRef]] = {}
    for ref in secret_refs(objects):
        if ref.secret in missing:
            missing[ref.secret].append(ref)
            continue
        try:
            resource_class("v1", "Secret").get(api, ref.secret)
        except NotFoundError:
            missing[ref.secret] = [ref]
        except ForbiddenError:
            warnings.append(f"cannot read Secret {ref.secret!r} (no get on secrets); {ref.owner} needs it at {ref.field}")
    for secret, refs in missing.items():
        users = ", ".join(sorted({f"{r.owner} ({r.field})" for r in refs}))
        problems.append(f"Secret {secret!r} does not exist in namespace {api.namespace}; needed by {users}: its pods would "
                        f"stay in CreateContainerConfigError; create it first, e.g. `kubectl -n {api.namespace} create "
                        f"secret generic {secret} --from-literal=password=\"$(openssl rand -hex 24)\"`")
    for w in warnings:
        logger.warning(w)
    if problems:
        raise PreflightError("nothing applied: " + "; ".join(problems))
    return warnings
