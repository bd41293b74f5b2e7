"""The workspace's security checklist as named checks over rendered objects.

Pod-level checks run on every pod template, including the ones nested in
RayCluster/RayJob/RayService/RayCronJob that generic scanners skip, and on the
autoscaler sidecar KubeRay injects into the head pod (configured through
``autoscalerOptions``). Namespace-level checks cover Pod Security Admission,
NetworkPolicies, RBAC, quotas, disruption budgets, volumes and secrets.

Each check has a stable name (see :data:`POD_CHECKS` and :data:`NAMESPACE_CHECKS`)
and a message saying what is wrong and where.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from cluster._internal.autoscaling import parse_quantity
from cluster._internal.findings import Finding, failed, obj_id, passed
from cluster._internal.objects import PodTemplate, cluster_specs, job_specs, labels_match, pod_labels, pod_templates
from workloads.exceptions import ManifestError

logger = logging.getLogger(__name__)

#: Volume types Pod Security Standards "restricted" allows.
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
RAY_ROLES = ("ray-head", "ray-worker")
#: rayStartParams keys that pin a port of Ray's.
RAY_PORT_PARAMS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
                   "dashboard-agent-listen-port", "metrics-export-port")
#: Ports from the Linux ephemeral range (net.ipv4.ip_local_port_range 32768-60999) that stand for the ports
#: no rayStartParams pins: Ray Train's torch process group (gloo/NCCL) and Serve replicas' gRPC listen there.
EPHEMERAL_PROBE_PORTS = (32768, 45678, 60999)
#: Ray ports other pods may reach on purpose: Serve, metrics, dashboard/Jobs API, Ray client.
PUBLIC_RAY_PORTS = frozenset({8000, 8080, 8265, 10001})
#: Ports every head listens on by KubeRay default (GCS, dashboard/Jobs API, Ray client).
HEAD_PORTS = (6379, 8265, 10001)
DASHBOARD_PORT = 8265
SERVE_PORT = 8000
#: The label both KubeRay install methods put on the operator pod (ray-operator/config/manager/manager.yaml for
#: kustomize, helm-chart/kuberay-operator/templates/_helpers.tpl for Helm); app.kubernetes.io/name differs.
OPERATOR_COMPONENT_LABEL, OPERATOR_COMPONENT = "app.kubernetes.io/component", "kuberay-operator"
#: The operator pod's labels under each install method.
OPERATOR_POD_LABELS = {
    "kustomize": {"app.kubernetes.io/name": "kuberay", OPERATOR_COMPONENT_LABEL: OPERATOR_COMPONENT},
    "helm": {"app.kubernetes.io/name": "kuberay-operator", OPERATOR_COMPONENT_LABEL: OPERATOR_COMPONENT,
             "app.kubernetes.io/instance": "kuberay-operator"},
}
#: Ports the operator calls on a head: the Jobs API/dashboard and the Serve proxy it health-checks.
OPERATOR_TO_HEAD_PORTS = (DASHBOARD_PORT, SERVE_PORT)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: The Role KubeRay v1.7.0 creates for every RayCluster with in-tree autoscaling and binds to the head's
#: ServiceAccount (ray-operator/controllers/ray/common/rbac.go, BuildRole/BuildRoleBinding; reconciled by
#: raycluster_controller.go reconcileAutoscalerRole). It exists whatever the manifests' own Role says.
KUBERAY_HEAD_ROLE: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "pods/resize"): {"patch"},
    ("ray.io", "rayclusters"): {"get", "patch"},
}
#: What the head's ServiceAccount may do, as the README states it: the in-tree autoscaler's needs plus
#: KubeRay's Role above. ``rbac-head-effective`` fails when the effective rights exceed it.
HEAD_RIGHTS_DOCUMENTED: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "pods/resize"): {"patch"},
    ("ray.io", "rayclusters"): {"get", "patch"},
}
#: What the in-tree autoscaler needs (see rbac.yaml); anything beyond is a finding.
AUTOSCALER_RULES = {("", "pods"): {"get", "list", "watch"}, ("ray.io", "rayclusters"): {"get", "patch"}}


# ------------------------------------------------------------------------- pod checks


def _containers_with_sidecar(t: PodTemplate) -> Iterator[tuple[str, dict[str, Any]]]:
    """Containers of the template plus, for an autoscaling head, the autoscaler sidecar."""
    for key in ("initContainers", "containers"):
        for i, c in enumerate(t.spec.get(key) or []):
            yield f"{key}[{i}]({c.get('name', '?')})", c
    if t.role == "ray-head" and (t.cluster_spec or {}).get("enableInTreeAutoscaling"):
        opts = (t.cluster_spec or {}).get("autoscalerOptions") or {}
        head_image = ((t.spec.get("containers") or [{}])[0]).get("image")
        yield "autoscaler-sidecar(autoscalerOptions)", {
            "name": "autoscaler", "image": opts.get("image", head_image),
            "securityContext": opts.get("securityContext") or {}, "resources": opts.get("resources") or {},
            "volumeMounts": opts.get("volumeMounts") or [],
        }


def _effective(t: PodTemplate, c: dict[str, Any], key: str) -> Any:
    sc = c.get("securityContext") or {}
    if key in sc:
        return sc[key]
    return (t.spec.get("securityContext") or {}).get(key)


def _check_containers(t: PodTemplate, predicate: Callable[[dict[str, Any]], str | None]) -> list[str]:
    problems = []
    for label, c in _containers_with_sidecar(t):
        why = predicate(c)
        if why:
            problems.append(f"{label}: {why}")
    return problems


def check_run_as_non_root(t: PodTemplate) -> list[str]:
    def pred(c: dict[str, Any]) -> str | None:
        if _effective(t, c, "runAsNonRoot") is not True:
            return "runAsNonRoot must be true (pod or container securityContext)"
        if _effective(t, c, "runAsUser") == 0:
            return "runAsUser must not be 0 (root)"
        return None

    return _check_containers(t, pred)


def check_no_privilege_escalation(t: PodTemplate) -> list[str]:
    return _check_containers(
        t, lambda c: None if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is False
        else "securityContext.allowPrivilegeEscalation must be false"
    )


def check_drop_all_capabilities(t: PodTemplate) -> list[str]:
    def pred(c: dict[str, Any]) -> str | None:
        caps = (c.get("securityContext") or {}).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            return "securityContext.capabilities.drop must contain ALL"
        if caps.get("add"):
            return f"securityContext.capabilities.add must be empty, has {caps['add']}"
        return None

    return _check_containers(t, pred)


def check_seccomp(t: PodTemplate) -> list[str]:
    def pred(c: dict[str, Any]) -> str | None:
        profile = _effective(t, c, "seccompProfile") or {}
        if profile.get("type") not in ("RuntimeDefault", "Localhost"):
            return "seccompProfile.type must be RuntimeDefault (pod or container securityContext)"
        return None

    return _check_containers(t, pred)


def check_read_only_root(t: PodTemplate) -> list[str]:
    return _check_containers(
        t, lambda c: None if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is True
        else "securityContext.readOnlyRootFilesystem must be true (mount emptyDir volumes where it writes)"
    )


def check_no_privileged(t: PodTemplate) -> list[str]:
    problems = [f"spec.{k} must not be true" for k in ("hostNetwork", "hostPID", "hostIPC") if t.spec.get(k)]
    problems += [f"volume {v.get('name')} is a hostPath" for v in t.spec.get("volumes") or [] if "hostPath" in v]

    def pred(c: dict[str, Any]) -> str | None:
        if (c.get("securityContext") or {}).get("privileged"):
            return "securityContext.privileged must not be true"
        if any(p.get("hostPort") for p in c.get("ports") or []):
            return "ports must not set hostPort"
        return None

    return problems + _check_containers(t, pred)


def check_resources(t: PodTemplate) -> list[str]:
    def pred(c: dict[str, Any]) -> str | None:
        res = c.get("resources") or {}
        missing = [f"{kind}.{r}" for kind in ("requests", "limits") for r in ("cpu", "memory") if r not in (res.get(kind) or {})]
        return f"resources must set {', '.join(missing)}" if missing else None

    return _check_containers(t, pred)


def check_memory_equal(t: PodTemplate) -> list[str]:
    def pred(c: dict[str, Any]) -> str | None:
        res = c.get("resources") or {}
        req, lim = (res.get("requests") or {}).get("memory"), (res.get("limits") or {}).get("memory")
        if req is None or lim is None:
            return "memory request and limit must both be set"
        if parse_quantity(str(req)) != parse_quantity(str(lim)):
            return f"memory request {req} must equal the limit {lim} (Ray sizes its object store from the limit; a lower request invites OOM kills)"
        return None

    return _check_containers(t, pred)


def check_image_pinned(t: PodTemplate) -> list[str]:
    def pred(c: dict[str, Any]) -> str | None:
        image = str(c.get("image") or "")
        if "@sha256:" in image:
            return None
        last = image.rsplit("/", 1)[-1]
        if ":" not in last:
            return f"image {image!r} has no tag"
        if last.rsplit(":", 1)[-1] in ("latest", "nightly"):
            return f"image {image!r} uses a moving tag"
        return None

    return _check_containers(t, pred)


def check_volume_types(t: PodTemplate) -> list[str]:
    problems = []
    for v in t.spec.get("volumes") or []:
        kinds = [k for k in v if k != "name"]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES]
        if bad:
            problems.append(f"volume {v.get('name')} is of type {bad[0]}, not allowed by the restricted profile")
    return problems


def _token_volumes(t: PodTemplate) -> set[str]:
    out = set()
    for v in t.spec.get("volumes") or []:
        sources = (v.get("projected") or {}).get("sources") or []
        if any("serviceAccountToken" in s for s in sources):
            out.add(v.get("name"))
    return out


def check_service_account(t: PodTemplate) -> list[str]:
    problems = []
    sa = t.spec.get("serviceAccountName")
    if not sa or sa == "default":
        problems.append("serviceAccountName must name the role's own ServiceAccount, not default")
    if t.spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false (mount a projected token only where needed)")
    token_vols = _token_volumes(t)
    for key in ("initContainers", "containers"):
        for c in t.spec.get(key) or []:
            leaked = [m.get("name") for m in c.get("volumeMounts") or [] if m.get("name") in token_vols]
            if leaked:
                problems.append(f"container {c.get('name')} mounts the service-account token volume {leaked}; only the autoscaler may")
    if token_vols and t.role != "ray-head":
        problems.append(f"only the Ray head (for its autoscaler) may carry a service-account token volume, found {sorted(token_vols)}")
    return problems


def check_ray_writable_tmp(t: PodTemplate) -> list[str]:
    if t.role not in RAY_ROLES:
        return []
    ray = (t.spec.get("containers") or [{}])[0]
    empty_dirs = {v.get("name") for v in t.spec.get("volumes") or [] if "emptyDir" in v}
    mounts = {m.get("mountPath"): m for m in ray.get("volumeMounts") or []}
    problems = []
    for path in ("/tmp/ray", "/tmp", "/dev/shm"):
        m = mounts.get(path)
        if m is None or m.get("name") not in empty_dirs or m.get("readOnly"):
            problems.append(f"the Ray container needs a writable emptyDir at {path} (read-only root filesystem)")
    return problems


def check_fsgroup_change_policy(t: PodTemplate) -> list[str]:
    """A pod that sets fsGroup and mounts a claim lets the kubelet skip the recursive chown when the root matches.

    Without ``fsGroupChangePolicy: OnRootMismatch`` the kubelet walks the whole shared volume (lake, results,
    models) on every pod start, which delays every Ray pod by minutes once the volume is large.
    """
    fs_group = (t.spec.get("securityContext") or {}).get("fsGroup")
    claims = [v.get("name") for v in t.spec.get("volumes") or [] if "persistentVolumeClaim" in v]
    if fs_group is None or not claims:
        return []
    if (t.spec.get("securityContext") or {}).get("fsGroupChangePolicy") != "OnRootMismatch":
        return [f"securityContext.fsGroupChangePolicy must be OnRootMismatch (fsGroup {fs_group} and claim volume(s) "
                f"{claims}: the kubelet would chown the whole volume on every start)"]
    return []


def _shm_bytes(t: PodTemplate) -> int | None:
    """Size of the memory-backed emptyDir the Ray container mounts at /dev/shm (None without one)."""
    ray = (t.spec.get("containers") or [{}])[0]
    names = {m.get("name") for m in ray.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"}
    for v in t.spec.get("volumes") or []:
        ed = v.get("emptyDir")
        if v.get("name") in names and isinstance(ed, dict) and ed.get("medium") == "Memory" and ed.get("sizeLimit"):
            return int(parse_quantity(str(ed["sizeLimit"])))
    return None


def object_store_bytes(t: PodTemplate, shm_bytes: int) -> int:
    """The object store size Ray picks in this pod: ``object-store-memory`` if pinned, else Ray's own default.

    The default comes from Ray's ``resolve_object_store_memory`` (ray/_private/utils.py: 30% of the memory,
    capped by /dev/shm only when /dev/shm is over ``REQUIRE_SHM_SIZE_THRESHOLD``, 10 GB), evaluated with the
    pod's memory limit and /dev/shm size instead of this machine's.
    """
    params = (t.group or {}).get("rayStartParams") or {}
    if params.get("object-store-memory") is not None:
        return int(parse_quantity(str(params["object-store-memory"])))
    from unittest import mock

    import ray._private.utils as ray_utils

    limit = ((((t.spec.get("containers") or [{}])[0]).get("resources") or {}).get("limits") or {}).get("memory")
    memory = int(parse_quantity(str(limit))) if limit else 0
    with mock.patch.object(ray_utils, "get_shared_memory_bytes", return_value=shm_bytes), \
            mock.patch.object(ray_utils.sys, "platform", "linux"):
        return int(ray_utils.resolve_object_store_memory(memory))


def check_object_store_in_shm(t: PodTemplate) -> list[str]:
    """Ray's object store fits the /dev/shm volume, or Ray silently puts it on disk.

    Ray uses /dev/shm only when the volume holds the whole store (ray/_private/services.py,
    determine_plasma_store_config: ``shm_avail >= object_store_memory``), else it falls back to /tmp.
    """
    if t.role not in RAY_ROLES:
        return []
    shm = _shm_bytes(t)
    if shm is None:
        return ["no memory-backed emptyDir (medium: Memory, sizeLimit) at /dev/shm for the object store"]
    store = object_store_bytes(t, shm)
    if store > shm:
        pinned = "object-store-memory" in ((t.group or {}).get("rayStartParams") or {})
        how = "rayStartParams.object-store-memory" if pinned else "Ray's default (30% of the memory limit)"
        return [f"object store {store} bytes ({how}) exceeds the /dev/shm volume ({shm} bytes): Ray would put it on "
                f"disk under /tmp; pin rayStartParams.object-store-memory at most the shm sizeLimit or grow the volume"]
    return []


def check_ephemeral_storage(t: PodTemplate) -> list[str]:
    """The Ray container requests the disk its disk-backed emptyDirs (/tmp, /tmp/ray: logs, spilling) may fill."""
    if t.role not in RAY_ROLES:
        return []
    ray = (t.spec.get("containers") or [{}])[0]
    mounted = {m.get("name") for m in ray.get("volumeMounts") or []}
    need = 0.0
    for v in t.spec.get("volumes") or []:
        ed = v.get("emptyDir")
        if v.get("name") in mounted and isinstance(ed, dict) and ed.get("medium") != "Memory":
            if not ed.get("sizeLimit"):
                return [f"emptyDir {v.get('name')} has no sizeLimit: a full disk would evict the pod's node neighbours"]
            need += parse_quantity(str(ed["sizeLimit"]))
    req = ((ray.get("resources") or {}).get("requests") or {}).get("ephemeral-storage")
    if req is None:
        return [f"resources.requests.ephemeral-storage is not set (its disk emptyDirs may use {need:.0f} bytes; "
                "the scheduler would place the pod on a node without room for logs and object spilling)"]
    if parse_quantity(str(req)) < need:
        return [f"resources.requests.ephemeral-storage {req} is less than its disk emptyDirs' sizeLimits ({need:.0f} bytes)"]
    return []


#: Checks that apply to Ray head and worker pods only.
RAY_ONLY_CHECKS = frozenset({"ray-writable-tmp", "object-store-in-shm", "ephemeral-storage-requested"})

#: Pod-level checks: name -> (function, what passing means).
POD_CHECKS: dict[str, tuple[Callable[[PodTemplate], list[str]], str]] = {
    "run-as-non-root": (check_run_as_non_root, "every container runs as a non-root user"),
    "no-privilege-escalation": (check_no_privilege_escalation, "allowPrivilegeEscalation: false everywhere"),
    "drop-all-capabilities": (check_drop_all_capabilities, "ALL capabilities dropped, none added"),
    "seccomp-runtime-default": (check_seccomp, "seccomp profile RuntimeDefault"),
    "read-only-root-filesystem": (check_read_only_root, "read-only root filesystem everywhere"),
    "no-host-access": (check_no_privileged, "no privileged containers, host namespaces, hostPath or hostPort"),
    "resources-set": (check_resources, "CPU and memory requests and limits on every container"),
    "memory-requests-equal-limits": (check_memory_equal, "memory requests equal limits"),
    "image-pinned": (check_image_pinned, "every image pinned by tag or digest"),
    "restricted-volume-types": (check_volume_types, "only volume types the restricted profile allows"),
    "service-account-token": (check_service_account, "own ServiceAccount, no automounted token"),
    "ray-writable-tmp": (check_ray_writable_tmp, "Ray's writable paths are emptyDir volumes"),
    "fsgroup-change-policy": (check_fsgroup_change_policy, "fsGroup on a claim with fsGroupChangePolicy OnRootMismatch"),
    "object-store-in-shm": (check_object_store_in_shm, "Ray's object store fits the /dev/shm volume"),
    "ephemeral-storage-requested": (check_ephemeral_storage, "ephemeral-storage requested for the disk emptyDirs"),
}


def pod_findings(objects: list[dict[str, Any]]) -> list[Finding]:
    """Run every pod-level check on every pod template."""
    findings = []
    for obj in objects:
        for t in pod_templates(obj):
            for name, (fn, ok_text) in POD_CHECKS.items():
                problems = fn(t)
                if name in RAY_ONLY_CHECKS and t.role not in RAY_ROLES:
                    continue
                findings.append(failed(name, t.where, "; ".join(problems)) if problems else passed(name, t.where, ok_text))
    return findings


# ------------------------------------------------------------------- namespace checks


def _of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def _labels(t: PodTemplate) -> dict[str, str]:
    return pod_labels(t)


def check_namespace_psa(objects: list[dict[str, Any]]) -> list[Finding]:
    out = []
    namespaces = _of(objects, "Namespace")
    if not namespaces:
        return [failed("namespace-pss-restricted", "(all)", "no Namespace object: the PSA labels would be missing")]
    for ns in namespaces:
        labels = (ns.get("metadata") or {}).get("labels") or {}
        missing = [f"pod-security.kubernetes.io/{m}=restricted" for m in ("enforce", "audit", "warn")
                   if labels.get(f"pod-security.kubernetes.io/{m}") != "restricted"]
        out.append(failed("namespace-pss-restricted", obj_id(ns), f"labels missing: {', '.join(missing)}") if missing
                   else passed("namespace-pss-restricted", obj_id(ns), "Pod Security Admission enforces, audits and warns on restricted"))
    return out


def _policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _of(objects, "NetworkPolicy")


def _port_allowed(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str = "TCP") -> bool:
    if not rule_ports:
        return True  # a rule without ports allows every port
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        lo = p.get("port")
        if lo is None:
            return True
        if isinstance(lo, int) and (lo == port or (p.get("endPort") and lo <= port <= int(p["endPort"]))):
            return True
    return False


def _peer_selects(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    """Same-namespace pod peer that selects ``labels``."""
    return "namespaceSelector" not in peer and "ipBlock" not in peer and labels_match(peer.get("podSelector"), labels)


def allowed(objects: list[dict[str, Any]], src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """Whether the NetworkPolicies let a pod labelled ``src`` reach ``dst`` on ``port`` (same namespace)."""
    pols = _policies(objects)

    def ingress_ok() -> bool:
        applying = [p for p in pols if labels_match(p["spec"].get("podSelector"), dst) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
        if not applying:
            return True
        return any(_port_allowed(r.get("ports"), port) and any(_peer_selects(pe, src) for pe in r.get("from") or [])
                   for p in applying for r in p["spec"].get("ingress") or [])

    def egress_ok() -> bool:
        applying = [p for p in pols if labels_match(p["spec"].get("podSelector"), src) and "Egress" in p["spec"].get("policyTypes", [])]
        if not applying:
            return True
        return any(_port_allowed(r.get("ports"), port) and any(_peer_selects(pe, dst) for pe in r.get("to") or [])
                   for p in applying for r in p["spec"].get("egress") or [])

    return ingress_ok() and egress_ok()


def check_default_deny(objects: list[dict[str, Any]]) -> list[Finding]:
    for p in _policies(objects):
        spec = p.get("spec") or {}
        if spec.get("podSelector") == {} and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"} \
                and not spec.get("ingress") and not spec.get("egress"):
            return [passed("network-default-deny", obj_id(p), "all ingress and egress denied unless allowed")]
    return [failed("network-default-deny", "(all)", "no NetworkPolicy with podSelector {} denying both Ingress and Egress")]


def _ray_ports(t: PodTemplate) -> list[int]:
    params = (t.group or {}).get("rayStartParams") or {}
    ports = [int(params[k]) for k in RAY_PORT_PARAMS if k in params]
    if "min-worker-port" in params and "max-worker-port" in params:
        ports += [int(params["min-worker-port"]), int(params["max-worker-port"])]
    if t.role == "ray-head":
        ports += list(HEAD_PORTS)
    return ports


def check_ray_network(objects: list[dict[str, Any]]) -> list[Finding]:
    """Every Ray pod reaches the pods of its own Ray cluster on any TCP port, and no other cluster's pods.

    Pinned ports are not enough: Ray Train's torch process group and Serve replicas' gRPC use ephemeral
    ports, so the probe includes ports from the ephemeral range (KubeRay's own per-cluster policy allows
    all ports within ``ray.io/cluster``: ray-operator/controllers/ray/networkpolicy_controller.go).
    """
    out = []
    ray_pods = [t for o in objects for t in pod_templates(o) if t.role in RAY_ROLES]
    for t in ray_pods:
        dst = _labels(t)
        problems = []
        for peer in ray_pods:
            src = _labels(peer)
            if src.get("ray.io/cluster") == dst.get("ray.io/cluster"):
                for port in sorted(set(_ray_ports(t))) + list(EPHEMERAL_PROBE_PORTS):
                    if not allowed(objects, src, dst, port):
                        problems.append(f"port {port} not allowed from {peer.where} (same Ray cluster {dst['ray.io/cluster']!r})")
                        break
            else:
                private = [p for p in _ray_ports(t) if p not in PUBLIC_RAY_PORTS] + list(EPHEMERAL_PROBE_PORTS)
                leaks = [p for p in private if allowed(objects, src, dst, p)]
                if leaks:
                    problems.append(f"reachable on port {leaks[0]} from {peer.where}, a pod of another Ray cluster "
                                    f"({src.get('ray.io/cluster')!r}); select peers by their own cluster")
        out.append(failed("network-ray-cluster", t.where, "; ".join(problems)) if problems
                   else passed("network-ray-cluster", t.where,
                               f"every TCP port open within Ray cluster {dst.get('ray.io/cluster')!r}, closed to other clusters"))
    return out


def check_dashboard_scope(objects: list[dict[str, Any]]) -> list[Finding]:
    """The dashboard/Jobs port is open only inside the namespace (plus the KubeRay operator)."""
    problems = []
    for p in _policies(objects):
        for r in (p.get("spec") or {}).get("ingress") or []:
            if not _port_allowed(r.get("ports"), DASHBOARD_PORT):
                continue
            for peer in r.get("from") or [{}]:
                if "ipBlock" in peer:
                    problems.append(f"{obj_id(p)} opens {DASHBOARD_PORT} to an ipBlock")
                elif "namespaceSelector" in peer:
                    sel = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                    pod = (peer.get("podSelector") or {}).get("matchLabels") or {}
                    if pod.get(OPERATOR_COMPONENT_LABEL) != OPERATOR_COMPONENT or not sel:
                        problems.append(f"{obj_id(p)} opens {DASHBOARD_PORT} to another namespace ({sel or 'any'})")
            if not r.get("from"):
                problems.append(f"{obj_id(p)} opens {DASHBOARD_PORT} to every source")
    if problems:
        return [failed("network-dashboard-in-namespace", "(all)", "; ".join(problems))]
    return [passed("network-dashboard-in-namespace", "(all)", f"port {DASHBOARD_PORT} reachable only from this namespace and the KubeRay operator")]


def _operator_namespaces(objects: list[dict[str, Any]], dst: dict[str, str], pod: dict[str, str], port: int) -> set[str]:
    """Namespaces (by kubernetes.io/metadata.name) from which a pod labelled ``pod`` may reach ``dst`` on ``port``."""
    out = set()
    for p in _policies(objects):
        spec = p.get("spec") or {}
        if not labels_match(spec.get("podSelector"), dst) or "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        for r in spec.get("ingress") or []:
            if not _port_allowed(r.get("ports"), port):
                continue
            for peer in r.get("from") or []:
                ns_name = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get(NAMESPACE_NAME_LABEL)
                if ns_name and "podSelector" in peer and labels_match(peer["podSelector"], pod):
                    out.add(ns_name)
    return out


def check_operator_reaches_head(objects: list[dict[str, Any]]) -> list[Finding]:
    """The KubeRay operator, installed by kustomize or by Helm, reaches every head on 8265 and 8000.

    KubeRay's own policy selects the operator by ``app.kubernetes.io/component`` in its namespace
    (ray-operator/controllers/ray/networkpolicy_controller.go, buildHeadIngressRules); a selector on
    ``app.kubernetes.io/name`` matches only one install method. Without 8265 RayJob status checks time out;
    without 8000 a RayService never becomes ready.
    """
    out = []
    for obj in objects:
        for t in pod_templates(obj):
            if t.role != "ray-head":
                continue
            dst = _labels(t)
            problems, namespaces = [], set()
            for method, pod in OPERATOR_POD_LABELS.items():
                for port in OPERATOR_TO_HEAD_PORTS:
                    ns = _operator_namespaces(objects, dst, pod, port)
                    if not ns:
                        problems.append(f"the operator installed by {method} (labels {pod}) cannot reach port {port}; "
                                        f"select it by {OPERATOR_COMPONENT_LABEL}: {OPERATOR_COMPONENT} and "
                                        f"{NAMESPACE_NAME_LABEL}: <its namespace>")
                    namespaces |= ns
            out.append(failed("network-operator-reaches-head", t.where, "; ".join(dict.fromkeys(problems))) if problems
                       else passed("network-operator-reaches-head", t.where,
                                   f"the operator (kustomize or Helm install) in {sorted(namespaces)} reaches "
                                   f"{', '.join(map(str, OPERATOR_TO_HEAD_PORTS))}"))
    return out


#: The widest IPv4 block a Ray pod may send to: the API server's address, not the internet.
MIN_EGRESS_PREFIX = 16


def check_egress_narrow(objects: list[dict[str, Any]]) -> list[Finding]:
    """Ray pods (heads run job drivers and notebooks) send nowhere outside the cluster but to named addresses.

    An egress rule of a policy selecting Ray pods may not allow every destination, nor an ipBlock wider than
    /16 (0.0.0.0/0 on 443 is the whole internet over HTTPS).
    """
    import ipaddress

    problems = []
    ray_labels = [_labels(t) for o in objects for t in pod_templates(o) if t.role in RAY_ROLES]
    for p in _policies(objects):
        spec = p.get("spec") or {}
        if not any(labels_match(spec.get("podSelector"), lab) for lab in ray_labels):
            continue
        for i, r in enumerate(spec.get("egress") or []):
            if not r.get("to"):
                problems.append(f"{obj_id(p)} egress[{i}] allows every destination")
            for peer in r.get("to") or []:
                cidr = (peer.get("ipBlock") or {}).get("cidr")
                if cidr and ipaddress.ip_network(cidr, strict=False).prefixlen < MIN_EGRESS_PREFIX:
                    problems.append(f"{obj_id(p)} egress[{i}] allows {cidr}, wider than /{MIN_EGRESS_PREFIX}; name the "
                                    "API server's address (overlay parameter)")
    return [failed("network-egress-narrow", "(all)", "; ".join(problems))] if problems else [
        passed("network-egress-narrow", "(all)", f"Ray pods reach no address block wider than /{MIN_EGRESS_PREFIX}")]


def check_serve_ingress(objects: list[dict[str, Any]]) -> list[Finding]:
    for p in _policies(objects):
        for r in (p.get("spec") or {}).get("ingress") or []:
            if r.get("ports") and _port_allowed(r.get("ports"), SERVE_PORT) and \
                    any("namespaceSelector" in peer and (peer["namespaceSelector"] or {}).get("matchLabels") for peer in r.get("from") or []):
                return [passed("network-serve-from-ingress", obj_id(p), f"Serve port {SERVE_PORT} open to a selected ingress namespace")]
    return [failed("network-serve-from-ingress", "(all)", f"no NetworkPolicy opens Serve's port {SERVE_PORT} to an ingress namespace selector")]


def check_pods_covered(objects: list[dict[str, Any]]) -> list[Finding]:
    """Every pod has DNS and at least one allow rule (else default-deny isolates it completely)."""
    out = []
    for obj in objects:
        for t in pod_templates(obj):
            labels = _labels(t)
            applying = [p for p in _policies(objects) if labels_match((p.get("spec") or {}).get("podSelector"), labels)]
            dns = any(_port_allowed(r.get("ports"), 53) and r.get("to") and r.get("ports")
                      for p in applying for r in (p.get("spec") or {}).get("egress") or [])
            allows = [p for p in applying if (p.get("spec") or {}).get("ingress") or (p.get("spec") or {}).get("egress")]
            if not dns or len(allows) < 2:
                out.append(failed("network-pod-covered", t.where,
                                  f"labels {labels} are selected by {[obj_id(p) for p in allows]}: needs DNS egress and its own allow rules"))
            else:
                out.append(passed("network-pod-covered", t.where, f"allowed by {len(allows)} NetworkPolicies, DNS included"))
    return out


def check_rbac(objects: list[dict[str, Any]]) -> list[Finding]:
    out = []
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        for o in _of(objects, kind):
            out.append(failed("rbac-least-privilege", obj_id(o), f"{kind} grants cluster-wide access; use a namespaced Role"))
    for role in _of(objects, "Role"):
        problems = []
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    verbs = set(rule.get("verbs") or [])
                    allowed_verbs = AUTOSCALER_RULES.get((group, res))
                    if "*" in verbs or res == "*" or group == "*":
                        problems.append(f"wildcard in {group}/{res} {sorted(verbs)}")
                    elif allowed_verbs is None:
                        problems.append(f"{group or 'core'}/{res} is not needed by the autoscaler")
                    elif not verbs <= allowed_verbs:
                        problems.append(f"{group or 'core'}/{res} verbs {sorted(verbs - allowed_verbs)} are not needed")
        out.append(failed("rbac-least-privilege", obj_id(role), "; ".join(problems)) if problems
                   else passed("rbac-least-privilege", obj_id(role), "only what the in-tree autoscaler calls"))
    out.extend(_head_effective_rights(objects))
    sas = {(o.get("metadata") or {}).get("name") for o in _of(objects, "ServiceAccount")}
    for rb in _of(objects, "RoleBinding"):
        missing = [s.get("name") for s in rb.get("subjects") or [] if s.get("kind") == "ServiceAccount" and s.get("name") not in sas]
        out.append(failed("rbac-binding-subjects", obj_id(rb), f"binds unknown ServiceAccounts {missing}") if missing
                   else passed("rbac-binding-subjects", obj_id(rb), "binds only this workspace's ServiceAccounts"))
    for sa in _of(objects, "ServiceAccount"):
        out.append(passed("serviceaccount-no-automount", obj_id(sa), "does not automount a token")
                   if sa.get("automountServiceAccountToken") is False
                   else failed("serviceaccount-no-automount", obj_id(sa), "automountServiceAccountToken must be false"))
    used = {t.spec.get("serviceAccountName") for o in objects for t in pod_templates(o)}
    for name in sorted(n for n in used if n and n not in sas):
        out.append(failed("serviceaccount-exists", name, f"pods use ServiceAccount {name!r}, which the overlay does not create"))
    return out


def _rights(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules or []:
        for group in rule.get("apiGroups") or []:
            for res in rule.get("resources") or []:
                out.setdefault((group, res), set()).update(rule.get("verbs") or [])
    return out


def _fmt_rights(rights: dict[tuple[str, str], set[str]]) -> str:
    return ", ".join(f"{g or 'core'}/{r} {'/'.join(sorted(v))}" for (g, r), v in sorted(rights.items()))


def _head_effective_rights(objects: list[dict[str, Any]]) -> list[Finding]:
    """What each ServiceAccount of a Ray head can really do: the manifests' RoleBindings plus KubeRay's own Role.

    KubeRay binds :data:`KUBERAY_HEAD_ROLE` to the head's ServiceAccount of every autoscaling cluster,
    so any other pod using that ServiceAccount gets those rights too.
    """
    roles = {(r.get("metadata") or {}).get("name"): _rights(r.get("rules") or []) for r in _of(objects, "Role")}
    effective: dict[str, dict[tuple[str, str], set[str]]] = {}
    sources: dict[str, set[str]] = {}

    def grant(sa: str, rights: dict[tuple[str, str], set[str]], source: str) -> None:
        for key, verbs in rights.items():
            effective.setdefault(sa, {}).setdefault(key, set()).update(verbs)
        sources.setdefault(sa, set()).add(source)

    for rb in _of(objects, "RoleBinding"):
        ref = rb.get("roleRef") or {}
        for subj in rb.get("subjects") or []:
            if subj.get("kind") == "ServiceAccount" and ref.get("kind") == "Role" and ref.get("name") in roles:
                grant(subj["name"], roles[ref["name"]], f"Role/{ref['name']}")
    head_sas: set[str] = set()
    for obj in objects:
        for t in pod_templates(obj):
            if t.role == "ray-head":
                sa = t.spec.get("serviceAccountName") or (pod_labels(t).get("ray.io/cluster") or "")
                head_sas.add(sa)
                if (t.cluster_spec or {}).get("enableInTreeAutoscaling"):
                    grant(sa, KUBERAY_HEAD_ROLE, f"KubeRay's Role/{pod_labels(t).get('ray.io/cluster')}")
    out = []
    for sa in sorted(head_sas):
        rights = effective.get(sa, {})
        extra = {k: v - HEAD_RIGHTS_DOCUMENTED.get(k, set()) for k, v in rights.items()}
        extra = {k: v for k, v in extra.items() if v}
        sharers = sorted({t.where for o in objects for t in pod_templates(o)
                          if t.role != "ray-head" and t.spec.get("serviceAccountName") == sa})
        problems = []
        if extra:
            problems.append(f"can {_fmt_rights(extra)} beyond what the README documents")
        if sharers:
            problems.append(f"non-head pods use it and so get KubeRay's head Role too: {sharers}")
        where = f"ServiceAccount/{sa}"
        text = f"{_fmt_rights(rights)} (from {', '.join(sorted(sources.get(sa, set())))})"
        out.append(failed("rbac-head-effective", where, "; ".join(problems) + f"; effective: {text}") if problems
                   else passed("rbac-head-effective", where, f"effective rights {text}, as documented"))
    return out


def _max_footprint(obj: dict[str, Any]) -> dict[str, float]:
    """Largest CPU/memory/GPU limits one object's pods can reach (every group at maxReplicas)."""
    total: dict[str, float] = {}

    def add(res: dict[str, Any], n: int) -> None:
        for key, q in ((res or {}).get("limits") or {}).items():
            total[key] = total.get(key, 0.0) + parse_quantity(str(q)) * n

    for _, cspec in cluster_specs(obj):
        head = cspec.get("headGroupSpec") or {}
        for c in (head.get("template") or {}).get("spec", {}).get("containers") or []:
            add(c.get("resources"), 1)
        if cspec.get("enableInTreeAutoscaling"):
            add((cspec.get("autoscalerOptions") or {}).get("resources"), 1)
        for g in cspec.get("workerGroupSpecs") or []:
            for c in (g.get("template") or {}).get("spec", {}).get("containers") or []:
                add(c.get("resources"), int(g.get("maxReplicas", 0)) * int(g.get("numOfHosts", 1) or 1))
    for _, jspec in job_specs(obj):
        for c in ((jspec.get("submitterPodTemplate") or {}).get("spec") or {}).get("containers") or []:
            add(c.get("resources"), 1)
    return total


def _max_pods(obj: dict[str, Any]) -> int:
    """Pods one object can have at once at maxReplicas (head, workers, submitter)."""
    n = 0
    for _, cspec in cluster_specs(obj):
        n += 1 + sum(int(g.get("maxReplicas", 0)) * int(g.get("numOfHosts", 1) or 1) for g in cspec.get("workerGroupSpecs") or [])
    n += sum(1 for _, jspec in job_specs(obj) if jspec.get("submitterPodTemplate"))
    return n


#: What can run at once, the scenario the quota must fit: the long-lived RayCluster, a RayService upgrade
#: (KubeRay keeps the old cluster serving until the new one is ready, so two RayService clusters) and one
#: RayJob (or a RayCronJob run, whichever is larger), every group at maxReplicas.
CONCURRENT_SCENARIO = "RayCluster + 2 x RayService (upgrade) + RayJob or RayCronJob run"


def concurrent_footprint(objects: list[dict[str, Any]]) -> dict[str, float]:
    """Resources (and ``pods``) of :data:`CONCURRENT_SCENARIO` at maximum scale."""
    def need(kind: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in _of(objects, kind):
            fp = _max_footprint(o) | {"pods": float(_max_pods(o))}
            for k, v in fp.items():
                out[k] = out.get(k, 0.0) + v
        return out

    jobs = [need("RayJob"), need("RayCronJob")]
    job = max(jobs, key=lambda d: (d.get("cpu", 0.0), d.get("memory", 0.0)))
    total: dict[str, float] = {}
    for part, times in ((need("RayCluster"), 1), (need("RayService"), 2), (job, 1)):
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v * times
    return total


def check_quota(objects: list[dict[str, Any]]) -> list[Finding]:
    quotas = _of(objects, "ResourceQuota")
    out = []
    if not quotas:
        out.append(failed("quota-present", "(all)", "no ResourceQuota"))
    if not _of(objects, "LimitRange"):
        out.append(failed("limitrange-present", "(all)", "no LimitRange"))
    else:
        out.append(passed("limitrange-present", obj_id(_of(objects, "LimitRange")[0]), "containers without resources get defaults"))
    if not quotas:
        return out
    hard = {k: parse_quantity(str(v)) for k, v in ((quotas[0].get("spec") or {}).get("hard") or {}).items()}
    for obj in objects:
        if not list(cluster_specs(obj)):
            continue
        need = _max_footprint(obj)
        problems = []
        for res, amount in need.items():
            key = f"limits.{res}" if res in ("cpu", "memory") else f"requests.{res}"
            if key not in hard:
                problems.append(f"quota has no {key} (the object needs {amount:g})")
            elif amount > hard[key] + 1e-9:
                problems.append(f"{key}: needs {amount:g} at maxReplicas, quota allows {hard[key]:g}")
        summary = ", ".join(f"{k}={v:g}" for k, v in sorted(need.items()))
        out.append(failed("quota-fits-max-scale", obj_id(obj), "; ".join(problems)) if problems
                   else passed("quota-fits-max-scale", obj_id(obj), f"at maxReplicas needs {summary}, within {obj_id(quotas[0])}"))
    if any(o.get("kind") in ("RayCluster", "RayService", "RayJob", "RayCronJob") for o in objects):
        need = concurrent_footprint(objects)
        problems = []
        for res, amount in sorted(need.items()):
            key = "pods" if res == "pods" else (f"limits.{res}" if res in ("cpu", "memory") else f"requests.{res}")
            if key not in hard:
                problems.append(f"quota has no {key} (the scenario needs {amount:g})")
            elif amount > hard[key] + 1e-9:
                problems.append(f"{key}: needs {amount:g}, quota allows {hard[key]:g}")
        summary = ", ".join(f"{k}={v:g}" for k, v in sorted(need.items()))
        out.append(failed("quota-fits-concurrent", obj_id(quotas[0]), f"{CONCURRENT_SCENARIO}: " + "; ".join(problems))
                   if problems else passed("quota-fits-concurrent", obj_id(quotas[0]), f"{CONCURRENT_SCENARIO} needs {summary}"))
    return out


def check_pdb(objects: list[dict[str, Any]]) -> list[Finding]:
    """PodDisruptionBudgets over Ray pods use an integer minAvailable, and only where a group keeps >= 2 pods.

    Ray pods belong to a RayCluster, which has no scale subresource: the disruption controller cannot
    compute the expected pod count, so ``maxUnavailable`` or a percentage blocks every eviction and node
    drains hang (https://kubernetes.io/docs/tasks/run-application/configure-pdb/#arbitrary-controllers-and-selectors).
    An integer ``minAvailable`` must also stay below the group's ``minReplicas`` or it blocks drains too.
    With GCS fault tolerance (the ha overlay) the Serve workers must be covered.
    """
    out = []
    pdbs = _of(objects, "PodDisruptionBudget")
    ray_pods = [t for o in objects for t in pod_templates(o) if t.role in RAY_ROLES]
    for pdb in pdbs:
        spec = pdb.get("spec") or {}
        covered = [t for t in ray_pods if labels_match(spec.get("selector"), _labels(t))]
        if not covered:
            continue
        problems = []
        if "maxUnavailable" in spec:
            problems.append(f"maxUnavailable {spec['maxUnavailable']!r} on KubeRay pods (no scale subresource) blocks every "
                            "eviction; use an integer minAvailable")
        min_avail = spec.get("minAvailable")
        if min_avail is not None and not isinstance(min_avail, int):
            problems.append(f"minAvailable {min_avail!r} is a percentage; KubeRay pods need an integer")
        if isinstance(min_avail, int):
            for t in covered:
                floor = int((t.group or {}).get("minReplicas", 0) or 0)
                if min_avail >= floor:
                    problems.append(f"minAvailable {min_avail} >= minReplicas {floor} of {t.where}: no pod could ever be evicted")
        out.append(failed("pdb-serve-workers", obj_id(pdb), "; ".join(problems)) if problems
                   else passed("pdb-serve-workers", obj_id(pdb), f"integer minAvailable {min_avail} below every covered group's minReplicas"))
    for svc in _of(objects, "RayService"):
        cspec = (svc.get("spec") or {}).get("rayClusterConfig") or {}
        if not cspec.get("gcsFaultToleranceOptions"):
            continue
        for t in pod_templates(svc):
            if t.role != "ray-worker":
                continue
            hit = [p for p in pdbs if labels_match((p.get("spec") or {}).get("selector"), _labels(t))]
            if not hit:
                out.append(failed("pdb-serve-workers", t.where, "highly available Serve workers without a PodDisruptionBudget"))
    if not out:
        out.append(passed("pdb-serve-workers", "(all)", "no PodDisruptionBudget needed: no highly available Serve workers"))
    return out


def check_volumes_exist(objects: list[dict[str, Any]]) -> list[Finding]:
    claims = {(o.get("metadata") or {}).get("name") for o in _of(objects, "PersistentVolumeClaim")}
    out = []
    for obj in objects:
        for t in pod_templates(obj):
            missing = [v["persistentVolumeClaim"].get("claimName") for v in t.spec.get("volumes") or []
                       if "persistentVolumeClaim" in v and v["persistentVolumeClaim"].get("claimName") not in claims]
            if missing:
                out.append(failed("pvc-exists", t.where, f"claims {missing} are not in the overlay"))
    if not out:
        out.append(passed("pvc-exists", "(all)", f"every claim a pod mounts is created: {sorted(c for c in claims if c)}"))
    return out


def check_pvc_storage_class(objects: list[dict[str, Any]]) -> list[Finding]:
    """A ReadWriteMany claim names its StorageClass.

    Default cloud classes are ReadWriteOnce; an RWX claim against one stays Pending and no pod mounting it
    schedules. A ReadWriteOnce claim may use the default class (the dev overlay's kind cluster).
    """
    out = []
    for pvc in _of(objects, "PersistentVolumeClaim"):
        spec = pvc.get("spec") or {}
        if "ReadWriteMany" not in (spec.get("accessModes") or []):
            out.append(passed("pvc-storage-class", obj_id(pvc), "ReadWriteOnce: the default StorageClass serves it"))
        elif not spec.get("storageClassName"):
            out.append(failed("pvc-storage-class", obj_id(pvc),
                              "spec.storageClassName is not set on a ReadWriteMany claim: default classes are "
                              "ReadWriteOnce and the claim would stay Pending; name an RWX class"))
        else:
            out.append(passed("pvc-storage-class", obj_id(pvc), f"ReadWriteMany from StorageClass {spec['storageClassName']!r}"))
    return out


def check_no_secrets(objects: list[dict[str, Any]]) -> list[Finding]:
    problems = []
    for o in _of(objects, "Secret"):
        if o.get("data") or o.get("stringData"):
            problems.append(f"{obj_id(o)} carries secret data in the repository")
    sensitive = ("PASSWORD", "TOKEN", "SECRET", "KEY")
    for obj in objects:
        for t in pod_templates(obj):
            for label, c in _containers_with_sidecar(t):
                for env in c.get("env") or []:
                    if any(s in str(env.get("name", "")).upper() for s in sensitive) and "value" in env:
                        problems.append(f"{t.where} {label} env {env['name']} has a literal value; use valueFrom.secretKeyRef")
        for _, cspec in cluster_specs(obj):
            pw = ((cspec.get("gcsFaultToleranceOptions") or {}).get("redisPassword") or {})
            if pw.get("value"):
                problems.append(f"{obj_id(obj)} gcsFaultToleranceOptions.redisPassword.value is a literal")
    return [failed("no-secrets-in-manifests", "(all)", "; ".join(problems))] if problems else [
        passed("no-secrets-in-manifests", "(all)", "no Secret data or literal credentials in the manifests")]


def check_serve_ha(objects: list[dict[str, Any]]) -> list[Finding]:
    """In an overlay with GCS fault tolerance, Serve runs >= 2 replicas on different nodes.

    The worker group keeps >= 2 pods spread by hostname with ``nodeTaintsPolicy: Honor`` (nodes whose taints the
    pods do not tolerate would otherwise count towards the skew and block the second pod), and every
    application lists its deployments with >= 2 replicas and ``max_replicas_per_node: 1`` (without a
    deployments section the code's defaults apply: one replica, no per-node cap).
    """
    out = []
    for svc in _of(objects, "RayService"):
        cspec = (svc.get("spec") or {}).get("rayClusterConfig") or {}
        if not cspec.get("gcsFaultToleranceOptions"):
            continue
        oid = obj_id(svc)
        problems = []
        for g in cspec.get("workerGroupSpecs") or []:
            if int(g.get("minReplicas", 0)) < 2:
                problems.append(f"worker group {g.get('groupName')} minReplicas {g.get('minReplicas', 0)} < 2")
            spread = (g.get("template") or {}).get("spec", {}).get("topologySpreadConstraints") or []
            affinity = (g.get("template") or {}).get("spec", {}).get("affinity", {}).get("podAntiAffinity")
            by_host = [c for c in spread if c.get("topologyKey") == "kubernetes.io/hostname"]
            if not by_host and not affinity:
                problems.append(f"worker group {g.get('groupName')} does not spread pods across nodes")
            for c in by_host:
                if c.get("whenUnsatisfiable") == "DoNotSchedule" and c.get("nodeTaintsPolicy") != "Honor":
                    problems.append(f"worker group {g.get('groupName')} spreads by hostname without nodeTaintsPolicy: "
                                    "Honor (tainted nodes would count towards the skew)")
        conf = yaml.safe_load((svc.get("spec") or {}).get("serveConfigV2") or "") or {}
        for app in conf.get("applications") or []:
            deps = app.get("deployments") or []
            if not deps:
                problems.append(f"application {app.get('name')!r} lists no deployments in serve/config.yaml, so the "
                                "replica count and max_replicas_per_node cannot be set (one replica, no per-node cap)")
            for d in deps:
                n = d.get("num_replicas")
                lo = (d.get("autoscaling_config") or {}).get("min_replicas") if isinstance(d.get("autoscaling_config"), dict) else None
                if (lo if lo is not None else (n if isinstance(n, int) else 1)) < 2:
                    problems.append(f"deployment {d.get('name')} has fewer than 2 replicas")
                if d.get("max_replicas_per_node") != 1:
                    problems.append(f"deployment {d.get('name')} lacks max_replicas_per_node: 1")
        out.append(failed("serve-ha-replicas", oid, "; ".join(problems)) if problems
                   else passed("serve-ha-replicas", oid, "Serve workers >= 2, spread by hostname honouring taints, "
                                                         "replicas >= 2 at most one per node"))
    return out


#: Annotation an object using a plaintext GCS Redis carries to record that choice and its risk.
REDIS_RISK_ANNOTATION = "rayspace.io/gcs-redis-risk"


def check_gcs_redis(objects: list[dict[str, Any]]) -> list[Finding]:
    """GCS fault tolerance uses TLS (``rediss://``) or the object records the plaintext choice and its risk.

    KubeRay hands the password to the head as ``REDIS_PASSWORD`` and ``--redis-password`` on ``ray start``
    (ray-operator/controllers/ray/common/pod.go), so a plaintext Redis is a decision to write down.
    """
    out = []
    for obj in objects:
        for _, cspec in cluster_specs(obj):
            opts = cspec.get("gcsFaultToleranceOptions")
            if not opts:
                continue
            address = str(opts.get("redisAddress") or "")
            note = ((obj.get("metadata") or {}).get("annotations") or {}).get(REDIS_RISK_ANNOTATION, "")
            if address.startswith("rediss://"):
                out.append(passed("gcs-redis-tls", obj_id(obj), f"GCS Redis over TLS ({address})"))
            elif len(note.strip()) >= 20:
                out.append(passed("gcs-redis-tls", obj_id(obj), f"plaintext {address}, risk recorded: {note.strip()[:80]}"))
            else:
                out.append(failed("gcs-redis-tls", obj_id(obj),
                                  f"gcsFaultToleranceOptions.redisAddress {address!r} is plaintext: use rediss:// (TLS) "
                                  f"with an ACL user, or record the choice and its risk in the annotation "
                                  f"{REDIS_RISK_ANNOTATION}"))
    return out


def check_rayservice_token(objects: list[dict[str, Any]]) -> list[Finding]:
    """A token-authenticated RayService names its own token Secret.

    Without ``authOptions.secretName`` KubeRay creates a Secret named after each RayCluster
    (ray-operator/controllers/ray/raycluster_controller.go, reconcileAuthSecret), so every upgrade's new
    cluster has a new token and clients holding the old one get 401s.
    """
    out = []
    for svc in _of(objects, "RayService"):
        auth = ((svc.get("spec") or {}).get("rayClusterConfig") or {}).get("authOptions") or {}
        if str(auth.get("mode", "")).lower() != "token":
            continue
        out.append(passed("rayservice-stable-token", obj_id(svc), f"token Secret {auth['secretName']!r} survives upgrades")
                   if auth.get("secretName") else
                   failed("rayservice-stable-token", obj_id(svc), "rayClusterConfig.authOptions has no secretName: KubeRay "
                          "makes a token Secret per RayCluster, so every upgrade changes the token clients hold"))
    return out


def check_serve_sync() -> list[Finding]:
    from cluster._internal import serve_sync

    try:
        stale = serve_sync.out_of_sync()
    except ManifestError as e:
        return [failed("serve-config-in-sync", "RayService", str(e))]
    if stale:
        root = serve_sync.CLUSTER_DIR.parent
        names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in stale)
        return [failed("serve-config-in-sync", "RayService",
                       f"{names} differ from serve/config.yaml; run `{serve_sync.FIX_COMMAND}`")]
    return [passed("serve-config-in-sync", "RayService",
                   "serveConfigV2 (base and ha) matches serve/config.yaml; the Serve env patch matches serve/runner.py")]


def check_serve_ingress_env(objects: list[dict[str, Any]]) -> list[Finding]:
    """The RayService's Ray containers run Serve with the ingress a local ``rayspace serve`` uses.

    Without ``RAY_SERVE_ENABLE_HA_PROXY``/``RAY_SERVE_THROUGHPUT_OPTIMIZED`` the pods fall back to Serve's Python
    proxy, which served about 2.5 times slower than the HAProxy path on the same machine.
    """
    from cluster._internal import serve_sync

    want = serve_sync.pod_serve_env()
    out = []
    for svc in _of(objects, "RayService"):
        for t in pod_templates(svc):
            if t.role not in RAY_ROLES:
                continue
            env = {e.get("name"): e.get("value") for e in ((t.spec.get("containers") or [{}])[0]).get("env") or []}
            wrong = [f"{k}={env.get(k)!r} (want {v!r})" for k, v in want.items() if env.get(k) != v]
            out.append(failed("serve-ingress-env", t.where, f"Serve ingress settings differ from serve/runner.py: "
                              f"{', '.join(wrong)}; run `{serve_sync.FIX_COMMAND}`") if wrong
                       else passed("serve-ingress-env", t.where, f"HAProxy ingress, throughput-optimised ({', '.join(want)})"))
    return out


#: Terminal states a RayCronJob's child RayJob can end in; each needs a DeleteSelf rule.
CHILD_JOB_ENDINGS = (("jobStatus", "SUCCEEDED"), ("jobStatus", "FAILED"), ("jobDeploymentStatus", "Failed"))


def check_cron_history(objects: list[dict[str, Any]]) -> list[Finding]:
    """A RayCronJob's child RayJobs delete themselves, or they pile up forever.

    KubeRay v1.7.0's RayCronJob controller (ray-operator/controllers/ray/raycronjob_controller.go) creates a
    RayJob per schedule and never deletes old ones; the only bound is the RayJob's own
    ``deletionStrategy.deletionRules`` with ``DeleteSelf``.
    """
    out = []
    for cron in _of(objects, "RayCronJob"):
        job = (cron.get("spec") or {}).get("jobTemplate") or {}
        rules = (job.get("deletionStrategy") or {}).get("deletionRules") or []
        covered = {(k, (r.get("condition") or {}).get(k)) for r in rules if r.get("policy") == "DeleteSelf"
                   for k in ("jobStatus", "jobDeploymentStatus") if (r.get("condition") or {}).get(k)}
        missing = [f"{k}={v}" for k, v in CHILD_JOB_ENDINGS if (k, v) not in covered]
        out.append(failed("raycronjob-history-bounded", obj_id(cron),
                          f"spec.jobTemplate.deletionStrategy.deletionRules has no DeleteSelf rule for {missing}: the RayJob "
                          "of every run stays forever (KubeRay's RayCronJob controller never deletes them)") if missing
                   else passed("raycronjob-history-bounded", obj_id(cron), "every run's RayJob deletes itself after it ends"))
    return out


def check_namespaced(objects: list[dict[str, Any]]) -> list[Finding]:
    """Every namespaced object lands in the workspace namespace (an overlay's own files too)."""
    from cluster._internal.kustomize import CLUSTER_SCOPED_KINDS

    names = {(o.get("metadata") or {}).get("name") for o in _of(objects, "Namespace")}
    stray = [f"{obj_id(o)} in {(o.get('metadata') or {}).get('namespace')!r}" for o in objects
             if o.get("kind") not in CLUSTER_SCOPED_KINDS and (o.get("metadata") or {}).get("namespace") not in names]
    return [failed("objects-in-namespace", "(all)", f"not in the workspace namespace {sorted(n for n in names if n)}: {stray}")] if stray \
        else [passed("objects-in-namespace", "(all)", f"every namespaced object is in {sorted(n for n in names if n)}")]


#: Namespace-level checks, by name.
NAMESPACE_CHECKS: dict[str, Callable[[list[dict[str, Any]]], list[Finding]]] = {
    "namespace-pss-restricted": check_namespace_psa,
    "objects-in-namespace": check_namespaced,
    "network-default-deny": check_default_deny,
    "network-ray-cluster": check_ray_network,
    "network-dashboard-in-namespace": check_dashboard_scope,
    "network-operator-reaches-head": check_operator_reaches_head,
    "network-egress-narrow": check_egress_narrow,
    "network-serve-from-ingress": check_serve_ingress,
    "network-pod-covered": check_pods_covered,
    "rbac-least-privilege": check_rbac,
    "quota-fits-max-scale": check_quota,  # also quota-fits-concurrent
    "pdb-serve-workers": check_pdb,
    "pvc-exists": check_volumes_exist,
    "pvc-storage-class": check_pvc_storage_class,
    "no-secrets-in-manifests": check_no_secrets,
    "serve-ha-replicas": check_serve_ha,
    "serve-ingress-env": check_serve_ingress_env,
    "raycronjob-history-bounded": check_cron_history,
    "gcs-redis-tls": check_gcs_redis,
    "rayservice-stable-token": check_rayservice_token,
}


def policy_findings(objects: list[dict[str, Any]], *, include_sync: bool = True) -> list[Finding]:
    """Every pod-level and namespace-level check on a rendered overlay."""
    findings = pod_findings(objects)
    for fn in NAMESPACE_CHECKS.values():
        findings.extend(fn(objects))
    if include_sync and any(o.get("kind") == "RayService" for o in objects):
        findings.extend(check_serve_sync())
    return findings
