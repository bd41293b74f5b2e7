"""A rendered RayCluster as a real multi-node Ray on one Linux machine: one network namespace per pod.

A test and demo tool, NOT a production runtime: no Kubernetes, no containers, no images,
no autoscaler, no restarts. What it does keep is what decides whether the workspace works
on a real KubeRay cluster:

* **pods** — the head and ``max(replicas, minReplicas)`` pods of every worker group (or as
  many as ``--replicas GROUP=N`` says), each in its own network namespace on a private
  bridge (its own IP address), its own mount namespace (private ``emptyDir`` tmpfs mounts
  at ``/tmp``, ``/tmp/ray``, ``/dev/shm`` with their size limits, and the PVC bind-mounted
  at ``/data`` from one host directory), its own PID namespace and its own hostname and
  ``/etc/hosts`` (the head Service's names resolve to the head, as cluster DNS would);
* **the Ray command KubeRay generates** — ``ray start`` with the group's ``rayStartParams``,
  ``num-cpus``/``memory``/``num-gpus`` from the container limits when not given, the
  container's environment plus what the operator injects (``RAY_CLUSTER_NAME``,
  ``RAY_CLOUD_INSTANCE_ID``, token auth...), workers pointed at the head Service
  (reference: ray-project/kuberay ``ray-operator/controllers/ray/common/pod.go``,
  ``generateRayStartCommand``/``setContainerEnvVars``/``labelPod``), all read from the
  rendered objects;
* **the NetworkPolicies** — translated to nftables rules inside every pod's namespace
  (:mod:`cluster._internal.netpol`), so traffic the policies forbid is dropped;
* **the autoscaler's cluster config** — the KubeRay autoscaler v2 publishes each group's
  resources and min/max counts in the GCS; Ray Train and Ray Data size themselves from it.
  The emulator publishes the same (from Ray's own KubeRay conversion) without scaling.

The host is the Kubernetes *node*: it reaches every pod (kubelet probes and
``kubectl port-forward`` come from the node and are not subject to NetworkPolicies).
Everything is recorded in a state directory and removed by :meth:`Emulator.down`: pods are
stopped by the pid of their PID-1 process (the kernel ends the rest of a PID namespace),
never with ``ray stop``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster._internal import netpol
from cluster._internal.autoscaling import autoscaler_view, parse_quantity
from workloads.exceptions import RayspaceError

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/run/rayspace-emulate")
DEFAULT_SUBNET = "10.213.7.0/24"
#: The emulated Kubernetes namespaces and their labels (the workspace's namespace is added at plan time).
EXTERNAL_NAMESPACES = ("kube-system", "kuberay-system", "ingress-nginx", "monitoring", "default")
REQUIRED_TOOLS = ("ip", "nft", "unshare", "nsenter")
DASHBOARD_PORT = 8265
GCS_PORT = 6379


class EmulatorError(RayspaceError):
    """The emulated cluster could not be brought up, inspected or torn down."""


@dataclass
class PodSpec:
    """One emulated pod.

    Attributes:
        name: Pod name (also its hostname).
        group: ``headgroup`` or the worker group's name.
        node_type: ``head`` or ``worker``.
        ip: Pod address on the emulated bridge.
        labels: Pod labels (template labels plus KubeRay's).
        ports: Named container ports: name -> (port, protocol).
        command: The container command (``ray start ... --block``).
        env: The container environment.
        empty_dirs: ``{"target", "size_bytes"}`` of each emptyDir mount.
        shared_mounts: ``{"source", "target"}`` of each PVC mount.
        netns: Network namespace name.
        host_if: Host side of the pod's veth pair.
        pid: Host pid of the pod's PID 1 (0 before start).
        launcher_pid: Host pid of the ``unshare`` process that launched it.
        state: ``Pending``, ``Running``, ``Failed`` or ``Killed``.
    """

    name: str
    group: str
    node_type: str
    ip: str
    labels: dict[str, str]
    ports: dict[str, list[Any]]
    command: list[str]
    env: dict[str, str]
    empty_dirs: list[dict[str, Any]]
    shared_mounts: list[dict[str, str]]
    netns: str = ""
    host_if: str = ""
    pid: int = 0
    launcher_pid: int = 0
    state: str = "Pending"

    def endpoint(self, namespace: str) -> netpol.PodEndpoint:
        """The pod as the NetworkPolicy translation sees it."""
        return netpol.PodEndpoint(self.name, namespace, self.labels, self.ip,
                                  {k: (int(v[0]), str(v[1])) for k, v in self.ports.items()})


@dataclass
class EmulatedCluster:
    """Everything the emulator made, as saved in ``state.json``."""

    overlay: str
    cluster_name: str
    namespace: str
    subnet: str
    node_ip: str
    bridge: str
    token: str
    data_dir: str
    created_mountpoints: list[str]
    pods: list[PodSpec] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    raycluster: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def head(self) -> PodSpec:
        """The head pod."""
        return next(p for p in self.pods if p.node_type == "head")

    @property
    def dashboard_url(self) -> str:
        """The head's dashboard / Jobs API, as the host reaches it."""
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def to_json(self) -> str:
        """Serialize to the state file's JSON."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "EmulatedCluster":
        """Load the state file's JSON."""
        raw = json.loads(text)
        raw["pods"] = [PodSpec(**p) for p in raw.get("pods", [])]
        return cls(**raw)


# ----------------------------------------------------------------------------- planning


def _short_id(state_dir: Path) -> str:
    """Four hex digits naming this state dir's interfaces (Linux allows 15 characters)."""
    return f"{zlib.crc32(str(state_dir.resolve()).encode()) & 0xFFFF:04x}"


def _quantity_int(value: Any) -> int:
    """A Kubernetes quantity rounded up, as KubeRay's ``resource.Value()`` does."""
    return int(math.ceil(parse_quantity(str(value)) - 1e-9))


def _ray_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        raise EmulatorError("a Ray pod template has no containers")
    # KubeRay picks the container with env RAY=true, else the first one.
    for c in containers:
        if any(e.get("name") == "RAY" and str(e.get("value")).lower() == "true" for e in c.get("env") or []):
            return c
    return containers[0]


def ray_start_command(
    node_type: str, params: dict[str, Any], container: dict[str, Any], *, head_address: str, autoscaling: bool
) -> list[str]:
    """The ``ray start`` command KubeRay generates for a group.

    Resources not given in ``rayStartParams`` come from the container's limits (CPU
    rounded up, memory in bytes, any ``*gpu`` limit as GPUs); workers get
    ``--address`` of the head Service; ``--block`` keeps the container in the
    foreground; with in-tree autoscaling the head gets ``--no-monitor`` (the
    autoscaler runs in its own sidecar).
    """
    params = {str(k): str(v) for k, v in (params or {}).items()}
    resources = container.get("resources") or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if "num-cpus" not in params:
        cpu = limits.get("cpu", requests.get("cpu"))
        if cpu is not None:
            params["num-cpus"] = str(_quantity_int(cpu))
    if "memory" not in params and "memory" in limits:
        params["memory"] = str(_quantity_int(limits["memory"]))
    if "num-gpus" not in params:
        for key, value in limits.items():
            if key.endswith("gpu") and _quantity_int(value) > 0:
                params["num-gpus"] = str(_quantity_int(value))
                break
    if node_type == "worker":
        params.setdefault("address", head_address)
    else:
        params.setdefault("dashboard-host", "0.0.0.0")
        if autoscaling:
            params["no-monitor"] = "true"
    params.setdefault("block", "true")
    cmd = ["ray", "start"] + (["--head"] if node_type == "head" else [])
    for key in sorted(params):
        value = params[key]
        cmd.append(f"--{key}" if value.lower() == "true" else f"--{key}={value}")
    return cmd


def _container_env(container: dict[str, Any], pod_name: str, namespace: str, labels: dict[str, str],
                   ip: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item.get("name")
        if "value" in item:
            env[name] = str(item["value"])
            continue
        ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        if ref == "metadata.name":
            env[name] = pod_name
        elif ref == "metadata.namespace":
            env[name] = namespace
        elif ref == "status.podIP":
            env[name] = ip
        elif ref.startswith("metadata.labels['"):
            env[name] = labels.get(ref[len("metadata.labels['"):-2], "")
        else:
            raise EmulatorError(
                f"pod {pod_name}: env {name} uses {item.get('valueFrom')!r}, which the emulator cannot provide "
                "(it supports plain values and metadata/status fieldRefs; Secrets are not emulated)"
            )
    return env


def _volumes(template: dict[str, Any], container: dict[str, Any], data_dir: Path) -> tuple[list, list]:
    volumes = {v.get("name"): v for v in (template.get("spec") or {}).get("volumes") or []}
    empty_dirs, shared = [], []
    for mount in container.get("volumeMounts") or []:
        vol = volumes.get(mount.get("name")) or {}
        target = mount["mountPath"]
        if "emptyDir" in vol:
            size = (vol["emptyDir"] or {}).get("sizeLimit")
            empty_dirs.append({"target": target, "size_bytes": _quantity_int(size) if size else None})
        elif "persistentVolumeClaim" in vol:
            # Every claim is the one shared host directory (the workspace has one PVC, rayspace-data).
            shared.append({"source": str(data_dir), "target": target,
                           "claim": vol["persistentVolumeClaim"].get("claimName", "")})
    return empty_dirs, shared


def _pod_labels(template: dict[str, Any], cluster_name: str, node_type: str, group: dict[str, Any]) -> dict[str, str]:
    """The labels KubeRay gives the pod (:func:`cluster._internal.objects.pod_labels`), plus its identifier label."""
    from cluster._internal.objects import PodTemplate, pod_labels

    role = "ray-head" if node_type == "head" else "ray-worker"
    labels = pod_labels(PodTemplate(owner=f"RayCluster/{cluster_name}", path="", role=role, template=template,
                                    group=group))
    labels["ray.io/identifier"] = f"{cluster_name}-{node_type}"
    return labels


def _ports(container: dict[str, Any]) -> dict[str, list[Any]]:
    return {p["name"]: [int(p["containerPort"]), str(p.get("protocol") or "TCP")]
            for p in container.get("ports") or [] if p.get("name")}


def plan(
    objects: list[dict[str, Any]], *, overlay: str, cluster_name: str = "rayspace",
    replicas: dict[str, int] | None = None, subnet: str = DEFAULT_SUBNET, data_dir: Path,
    token: str | None = None, state_dir: Path = DEFAULT_STATE_DIR,
) -> EmulatedCluster:
    """Turn rendered objects into the pods to run (pure: starts nothing).

    Args:
        objects: Rendered manifests (``cluster.manifests.render``).
        overlay: Overlay name, for the record.
        cluster_name: The RayCluster to emulate.
        replicas: Pods per worker group (default ``max(replicas, minReplicas)``; capped by ``maxReplicas``).
        subnet: IPv4 pod network (the host takes the first address).
        data_dir: Host directory standing in for the PersistentVolumeClaim(s).
        token: Ray auth token (default: a new random one, as KubeRay generates).
        state_dir: Where state lives (names the interfaces).

    Raises:
        EmulatorError: No such RayCluster, a bad replica count or subnet, or a pod the emulator cannot run.
    """
    rc = next((o for o in objects if o.get("kind") == "RayCluster"
               and (o.get("metadata") or {}).get("name") == cluster_name), None)
    if rc is None:
        raise EmulatorError(f"overlay {overlay!r} renders no RayCluster named {cluster_name!r}")
    namespace = (rc.get("metadata") or {}).get("namespace") or "default"
    spec = rc.get("spec") or {}
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as e:
        raise EmulatorError(f"Got {subnet!r} for --subnet: must be an IPv4 CIDR such as {DEFAULT_SUBNET}") from e
    if net.version != 4 or not net.is_private or net.num_addresses < 8:
        raise EmulatorError(f"Got {subnet!r} for --subnet: must be a private IPv4 network of at least 8 addresses")
    hosts = list(net.hosts())
    node_ip = str(hosts[0])
    groups = {g["groupName"]: g for g in spec.get("workerGroupSpecs") or []}
    counts = {}
    for name, group in groups.items():
        counts[name] = max(int(group.get("replicas") or 0), int(group.get("minReplicas") or 0))
    for name, n in (replicas or {}).items():
        if name not in groups:
            raise EmulatorError(f"Got {name!r} for --replicas: RayCluster {cluster_name} has worker groups "
                                f"{sorted(groups)}")
        top = int(groups[name].get("maxReplicas") or n)
        if not 0 <= n <= top:
            raise EmulatorError(f"Got {n} for --replicas {name}: must be between 0 and the group's maxReplicas {top}")
        counts[name] = n
    if 1 + sum(counts.values()) > len(hosts) - 1:
        raise EmulatorError(f"subnet {subnet} has too few addresses for {1 + sum(counts.values())} pods")
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    head_svc = f"{cluster_name}-head-svc"
    head_port = str((spec.get("headGroupSpec") or {}).get("rayStartParams", {}).get("port", GCS_PORT))
    head_address = f"{head_svc}.{namespace}.svc.cluster.local:{head_port}"
    token = token or secrets.token_hex(32)
    auth = ((spec.get("authOptions") or {}).get("mode") or "disabled").lower()
    sid = _short_id(state_dir)
    cluster = EmulatedCluster(
        overlay=overlay, cluster_name=cluster_name, namespace=namespace, subnet=str(net), node_ip=node_ip,
        bridge=f"rsb{sid}", token=token if auth == "token" else "", data_dir=str(data_dir), created_mountpoints=[],
        policies=[o for o in objects if o.get("kind") == "NetworkPolicy"], raycluster=rc,
    )
    addr_iter = iter(str(h) for h in hosts[1:])
    entries = [("head", "headgroup", spec["headGroupSpec"], 1)]
    entries += [("worker", name, groups[name], counts[name]) for name in groups]
    for node_type, group_name, group, count in entries:
        template = group.get("template") or {}
        container = _ray_container(template)
        for i in range(count):
            name = (f"{cluster_name}-head-{secrets.token_hex(3)[:5]}" if node_type == "head"
                    else f"{cluster_name}-{group_name}-worker-{secrets.token_hex(3)[:5]}")
            cluster.pods.append(_pod(cluster, name, node_type, group_name, group, template, container,
                                     next(addr_iter), head_address, autoscaling, Path(data_dir), len(cluster.pods)))
    return cluster


def _pod(cluster: EmulatedCluster, name: str, node_type: str, group_name: str, group: dict, template: dict,
         container: dict, ip: str, head_address: str, autoscaling: bool, data_dir: Path, index: int) -> PodSpec:
    labels = _pod_labels(template, cluster.cluster_name, node_type, group)
    command = ray_start_command(node_type, group.get("rayStartParams") or {}, container,
                                head_address=head_address, autoscaling=autoscaling)
    env = _container_env(container, name, cluster.namespace, labels, ip)
    head_host, head_port = head_address.rsplit(":", 1)
    injected = {
        "RAY_CLUSTER_NAME": cluster.cluster_name,
        "RAY_CLOUD_INSTANCE_ID": name,
        "RAY_NODE_TYPE_NAME": group_name,
        "RAY_PORT": head_port,
        "RAY_IP": "127.0.0.1" if node_type == "head" else head_host.split(".")[0],
        "FQ_RAY_IP": head_host,
        "RAY_USAGE_STATS_ENABLED": "0",
        "KUBERAY_GEN_RAY_START_CMD": " ".join(command),
    }
    if node_type == "head":
        injected["RAY_ADDRESS"] = f"127.0.0.1:{head_port}"
    if cluster.token:
        injected.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token})
    for key, value in injected.items():
        env.setdefault(key, value)
    empty_dirs, shared = _volumes(template, container, data_dir)
    return PodSpec(
        name=name, group=group_name, node_type=node_type, ip=ip, labels=labels, ports=_ports(container),
        command=command, env=env, empty_dirs=empty_dirs, shared_mounts=shared,
        netns=f"rsemu-{cluster.bridge[3:]}-{index}", host_if=f"rsv{cluster.bridge[3:]}{index}",
    )


def namespaces_of(cluster: EmulatedCluster) -> dict[str, dict[str, str]]:
    """The Kubernetes namespaces as the policies' namespaceSelectors see them."""
    names = {cluster.namespace, *EXTERNAL_NAMESPACES}
    return {ns: {"kubernetes.io/metadata.name": ns} for ns in names}


def policy_view(cluster: EmulatedCluster, policies: list[dict[str, Any]] | None = None) -> list[netpol.PodPolicy]:
    """Each running pod's resolved NetworkPolicy rules."""
    live = [p for p in cluster.pods if p.state in ("Pending", "Running")]
    return netpol.resolve(cluster.policies if policies is None else policies,
                          [p.endpoint(cluster.namespace) for p in live], namespaces_of(cluster))


def explain(cluster: EmulatedCluster) -> str:
    """``--explain``: every pod's policies in words and as nftables rules."""
    out = [f"# node (host) address {cluster.node_ip}: reaches every pod (kubelet, port-forward); "
           f"nothing leaves {cluster.subnet}"]
    for pp in policy_view(cluster):
        out.append(netpol.explain(pp))
        out.append(netpol.nft_ruleset(pp, node_ip=cluster.node_ip, subnet=cluster.subnet))
    return "\n".join(out)


# ----------------------------------------------------------------------------- running


def _run(cmd: list[str], *, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    logger.debug("run %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input_text)
    if check and proc.returncode != 0:
        raise EmulatorError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def check_prerequisites() -> None:
    """Root and the tools the emulator needs.

    Raises:
        EmulatorError: Not root, or a tool is missing (the message says which and how to get it).
    """
    if os.geteuid() != 0:
        raise EmulatorError("the emulated cluster needs root (network and mount namespaces, nftables)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise EmulatorError(f"the emulated cluster needs {', '.join(missing)} on PATH "
                            "(Debian: apt-get install iproute2 nftables util-linux)")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _child_pid(pid: int, timeout_s: float = 10.0) -> int:
    """The pid of ``unshare --fork``'s child (the pod's PID 1), as the host sees it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise EmulatorError(f"the pod launcher (pid {pid}) started no PID 1 within {timeout_s:g}s")


class Emulator:
    """Bring an emulated RayCluster up, inspect it, change it and tear it down.

    Args:
        state_dir: Where ``state.json``, the pods' specs, hosts files and logs live.
    """

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir)
        self.state_file = self.state_dir / "state.json"

    # -- state
    def load(self) -> EmulatedCluster:
        """The running emulated cluster.

        Raises:
            EmulatorError: None is recorded in this state dir.
        """
        try:
            return EmulatedCluster.from_json(self.state_file.read_text())
        except FileNotFoundError as e:
            raise EmulatorError(f"no emulated cluster is running (no {self.state_file}); "
                                "start one with `rayspace cluster emulate up`") from e
        except (ValueError, TypeError) as e:
            raise EmulatorError(f"{self.state_file} is corrupt ({e}); remove it with `rayspace cluster emulate down`") from e

    def _save(self, cluster: EmulatedCluster) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(cluster.to_json())
        os.replace(tmp, self.state_file)

    # -- lifecycle
    def up(self, cluster: EmulatedCluster, *, timeout_s: float = 180.0) -> EmulatedCluster:
        """Create the network, start every pod, and wait until all of them joined the Ray cluster.

        Raises:
            EmulatorError: One is running already, a prerequisite is missing, or the pods did not come up
                (everything made so far is removed again).
        """
        check_prerequisites()
        if self.state_file.exists():
            raise EmulatorError(f"an emulated cluster is already running (state in {self.state_dir}); "
                                "stop it first with `rayspace cluster emulate down`")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pods").mkdir(exist_ok=True)
        data = Path(cluster.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        # Ray pods run as the image's non-root user on a real cluster; the volume's group (fsGroup) may write.
        os.chmod(data, 0o777)
        cluster.started_at = time.time()
        self._save(cluster)
        try:
            self._make_network(cluster)
            self._save(cluster)
            for pod in cluster.pods:
                self._start_pod(cluster, pod)
                self._save(cluster)
                if pod.node_type == "head":
                    self._wait_head(cluster, timeout_s)
                    self._publish_cluster_config(cluster)
            self.wait_nodes(cluster, timeout_s=timeout_s)
        except BaseException:
            logger.warning("emulated cluster did not come up; removing what was made")
            self.down()
            raise
        return cluster

    def _make_network(self, cluster: EmulatedCluster) -> None:
        prefix = ipaddress.ip_network(cluster.subnet).prefixlen
        if _run(["ip", "link", "show", cluster.bridge], check=False).returncode == 0:
            raise EmulatorError(f"interface {cluster.bridge} exists already (a leftover?); remove it with "
                                f"`ip link del {cluster.bridge}` after checking it is not in use")
        _run(["ip", "link", "add", cluster.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{cluster.node_ip}/{prefix}", "dev", cluster.bridge])
        _run(["ip", "link", "set", cluster.bridge, "up"])
        for pod in cluster.pods:
            self._make_pod_network(cluster, pod)
        self.apply_policies(cluster)

    def _make_pod_network(self, cluster: EmulatedCluster, pod: PodSpec) -> None:
        prefix = ipaddress.ip_network(cluster.subnet).prefixlen
        _run(["ip", "netns", "add", pod.netns])
        peer = f"{pod.host_if}p"
        _run(["ip", "link", "add", pod.host_if, "type", "veth", "peer", "name", peer])
        _run(["ip", "link", "set", peer, "netns", pod.netns])
        _run(["ip", "link", "set", pod.host_if, "master", cluster.bridge, "up"])
        inside = ["ip", "netns", "exec", pod.netns]
        _run(inside + ["ip", "link", "set", peer, "name", "eth0"])
        _run(inside + ["ip", "addr", "add", f"{pod.ip}/{prefix}", "dev", "eth0"])
        _run(inside + ["ip", "link", "set", "eth0", "up"])
        _run(inside + ["ip", "link", "set", "lo", "up"])
        # A default route lets Ray find the pod's own address as on a real pod; nothing is forwarded
        # beyond the bridge (the pod's egress chain drops any destination outside the subnet).
        _run(inside + ["ip", "route", "add", "default", "via", cluster.node_ip])
        _run(inside + ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)

    def apply_policies(self, cluster: EmulatedCluster, policies: list[dict[str, Any]] | None = None) -> None:
        """(Re)load every running pod's nftables rules from ``policies`` (default: the rendered ones)."""
        for pp in policy_view(cluster, policies):
            pod = next(p for p in cluster.pods if p.name == pp.pod.name)
            ruleset = netpol.nft_ruleset(pp, node_ip=cluster.node_ip, subnet=cluster.subnet)
            flush = f"table inet {netpol.NFT_TABLE}\ndelete table inet {netpol.NFT_TABLE}\n"
            _run(["ip", "netns", "exec", pod.netns, "nft", "-f", "-"], input_text=flush + ruleset)

    def _hosts_file(self, cluster: EmulatedCluster, pod: PodSpec) -> Path:
        head = cluster.head
        svc = f"{cluster.cluster_name}-head-svc"
        lines = ["127.0.0.1\tlocalhost", f"{pod.ip}\t{pod.name}",
                 f"{head.ip}\t{svc}.{cluster.namespace}.svc.cluster.local {svc}.{cluster.namespace}.svc "
                 f"{svc}.{cluster.namespace} {svc}"]
        path = self.state_dir / "pods" / f"{pod.name}.hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _keep_paths(self) -> list[str]:
        """Host paths a pod's processes need even if an emptyDir mount would hide them."""
        import cluster as pkg

        paths = {sys.prefix, sys.base_prefix, str(Path(pkg.__file__).resolve().parents[1]), str(self.state_dir)}
        return sorted(paths)

    def _start_pod(self, cluster: EmulatedCluster, pod: PodSpec) -> None:
        venv_bin = str(Path(sys.executable).parent)
        env = {"PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/tmp/home", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **pod.env}
        spec = {
            "hostname": pod.name, "hosts_file": str(self._hosts_file(cluster, pod)),
            "shared_mounts": pod.shared_mounts, "empty_dirs": pod.empty_dirs, "keep_paths": self._keep_paths(),
            "workdir": "/tmp/home", "command": [os.path.join(venv_bin, pod.command[0]), *pod.command[1:]], "env": env,
        }
        for shared in pod.shared_mounts:
            target = Path(shared["target"])
            if not target.exists():
                # A mount point must exist on the host's root to bind onto it inside the pod.
                target.mkdir(parents=True)
                cluster.created_mountpoints.append(str(target))
        spec_path = self.state_dir / "pods" / f"{pod.name}.json"
        spec_path.write_text(json.dumps(spec))
        log = open(self.state_dir / "pods" / f"{pod.name}.log", "ab")  # noqa: SIM115 - the pod keeps it
        try:
            launcher = subprocess.Popen(
                ["ip", "netns", "exec", pod.netns, "unshare", "--mount", "--uts", "--pid", "--fork",
                 "--propagation", "private", sys.executable, "-m", "cluster._internal.emulate_pod", str(spec_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd="/", env={**os.environ, "PYTHONPATH": self._package_root()},
            )
        finally:
            log.close()
        pod.launcher_pid = launcher.pid
        pod.pid = _child_pid(launcher.pid)
        pod.state = "Running"
        logger.info("pod %s (%s) started: pid %d, %s", pod.name, pod.group, pod.pid, pod.ip)

    @staticmethod
    def _package_root() -> str:
        import cluster as pkg

        return str(Path(pkg.__file__).resolve().parents[1])

    def _wait_head(self, cluster: EmulatedCluster, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _pid_alive(cluster.head.pid):
                raise EmulatorError(f"the head pod exited during start; see {self.log_path(cluster.head)}")
            try:
                self.api(cluster, "/api/version")
                return
            except EmulatorError:
                time.sleep(1.0)
        raise EmulatorError(f"the head's dashboard did not answer within {timeout_s:g}s; see {self.log_path(cluster.head)}")

    def log_path(self, pod: PodSpec) -> Path:
        """Where a pod's container output goes."""
        return self.state_dir / "pods" / f"{pod.name}.log"

    def api(self, cluster: EmulatedCluster, path: str, timeout_s: float = 5.0) -> Any:
        """GET a path of the head's dashboard HTTP API (with the token) and decode its JSON.

        Raises:
            EmulatorError: Unreachable, or an HTTP error.
        """
        req = urllib.request.Request(cluster.dashboard_url + path)
        if cluster.token:
            req.add_header("Authorization", f"Bearer {cluster.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - our own pod address
                return json.loads(resp.read() or b"null")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise EmulatorError(f"dashboard {cluster.dashboard_url}{path}: {e}") from e

    def ray_nodes(self, cluster: EmulatedCluster) -> list[dict[str, Any]]:
        """Ray's node table (State API): node id, address, state, resources."""
        reply = self.api(cluster, "/api/v0/nodes?limit=1000&detail=true")
        return list(((reply or {}).get("data") or {}).get("result", {}).get("result") or [])

    def wait_nodes(self, cluster: EmulatedCluster, *, timeout_s: float = 180.0) -> dict[str, str]:
        """Wait until every running pod is an ALIVE Ray node; returns pod name -> Ray node id."""
        deadline = time.monotonic() + timeout_s
        want = {p.ip: p for p in cluster.pods if p.state == "Running"}
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            for pod in want.values():
                if not _pid_alive(pod.pid):
                    raise EmulatorError(f"pod {pod.name} exited during start; see {self.log_path(pod)}")
            try:
                nodes = self.ray_nodes(cluster)
            except EmulatorError:
                nodes = []
            seen = {want[n["node_ip"]].name: n["node_id"] for n in nodes
                    if n.get("state") == "ALIVE" and n.get("node_ip") in want}
            if len(seen) == len(want):
                return seen
            time.sleep(1.0)
        missing = sorted(set(p.name for p in want.values()) - set(seen))
        raise EmulatorError(f"pods {missing} did not join the Ray cluster within {timeout_s:g}s; "
                            f"see their logs in {self.state_dir / 'pods'}")

    def _publish_cluster_config(self, cluster: EmulatedCluster) -> None:
        """Publish the groups' capacity in the GCS as the KubeRay autoscaler v2 would.

        Ray reads it with ``ray._private.state.state.get_cluster_config()`` (Ray Train V2's
        worker group and Ray Data size themselves from it); without an autoscaler it would be absent.
        """
        view = autoscaler_view(cluster.raycluster)
        groups = []
        for name, nt in view.node_types.items():
            resources = {k: int(v) for k, v in nt.resources.items() if v == int(v) and v >= 0}
            count = 1 if name == "headgroup" else None
            groups.append({"name": name, "resources": resources,
                           "min_count": count if count is not None else nt.min_workers,
                           "max_count": count if count is not None else nt.max_workers})
        script = (
            "import json,sys\n"
            "from ray.core.generated import autoscaler_pb2\n"
            "from ray._raylet import GcsClient, GCS_AUTOSCALER_STATE_NAMESPACE as NS, "
            "GCS_AUTOSCALER_CLUSTER_CONFIG_KEY as KEY\n"
            "cfg = autoscaler_pb2.ClusterConfig()\n"
            "for g in json.loads(sys.argv[1]):\n"
            "    ng = cfg.node_group_configs.add(name=g['name'], min_count=g['min_count'], max_count=g['max_count'])\n"
            "    ng.resources.update(g['resources'])\n"
            "client = GcsClient(address='127.0.0.1:%s')\n"
            "client.internal_kv_put(KEY.encode(), cfg.SerializeToString(), True, NS.encode())\n"
        ) % cluster.head.env.get("RAY_PORT", GCS_PORT)
        proc = self.exec(cluster, cluster.head.name, [sys.executable, "-c", script, json.dumps(groups)])
        if proc.returncode != 0:
            raise EmulatorError(f"publishing the cluster config failed: {proc.stderr.strip()[-500:]}")

    # -- operations on pods
    def pod(self, cluster: EmulatedCluster, name: str) -> PodSpec:
        """A pod by name (or by unique prefix, or ``head``)."""
        if name == "head":
            return cluster.head
        hits = [p for p in cluster.pods if p.name == name] or [p for p in cluster.pods if p.name.startswith(name)]
        if len(hits) != 1:
            raise EmulatorError(f"Got {name!r} for the pod: must name one pod of "
                                f"{[p.name for p in cluster.pods if p.state == 'Running']}")
        return hits[0]

    def exec(self, cluster: EmulatedCluster, name: str, command: list[str], *, capture: bool = True,
             timeout_s: float | None = None, background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
        """Run a command inside a pod (like ``kubectl exec``): its namespaces, environment and working dir.

        With ``background=True`` returns the ``Popen`` (the caller stops it by pid).
        """
        pod = self.pod(cluster, name)
        if not _pid_alive(pod.pid):
            raise EmulatorError(f"pod {pod.name} is not running")
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp/home",
               "LANG": "C.UTF-8", **pod.env, "PYTHONPATH": self._package_root()}
        cmd = ["nsenter", "-t", str(pod.pid), "-m", "-u", "-p", "-n", "--wd", *command]
        if background:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        return subprocess.run(cmd, env=env, capture_output=capture, text=True, timeout=timeout_s)

    def kill(self, name: str, *, replace: bool = False, timeout_s: float = 180.0) -> tuple[PodSpec, PodSpec | None]:
        """Kill a pod as a node failure would: SIGKILL its PID 1 (the kernel ends the rest) and cut its link.

        Args:
            name: Pod name or unique prefix.
            replace: Start a new pod of the same group, as KubeRay replaces a failed worker.

        Returns:
            (the killed pod, its replacement or ``None``).
        """
        cluster = self.load()
        pod = self.pod(cluster, name)
        _run(["ip", "link", "set", pod.host_if, "down"], check=False)
        self._kill_pod_process(pod)
        pod.state = "Killed"
        _run(["ip", "netns", "del", pod.netns], check=False)
        self._save(cluster)
        new = None
        if replace:
            if pod.node_type == "head":
                raise EmulatorError("the emulator does not restart the head (no GCS fault tolerance here)")
            group = next(g for g in cluster.raycluster["spec"]["workerGroupSpecs"] if g["groupName"] == pod.group)
            template = group.get("template") or {}
            head_address = next(a.split("=", 1)[1] for a in pod.command if a.startswith("--address="))
            used = {p.ip for p in cluster.pods} | {cluster.node_ip}
            ip = next(str(h) for h in ipaddress.ip_network(cluster.subnet).hosts() if str(h) not in used)
            new = _pod(cluster, f"{cluster.cluster_name}-{pod.group}-worker-{secrets.token_hex(3)[:5]}", "worker",
                       pod.group, group, template, _ray_container(template), ip, head_address,
                       bool(cluster.raycluster["spec"].get("enableInTreeAutoscaling")), Path(cluster.data_dir),
                       len(cluster.pods))
            cluster.pods.append(new)
            self._save(cluster)
            self._make_pod_network(cluster, new)
            self.apply_policies(cluster)
            self._start_pod(cluster, new)
            self._save(cluster)
            self.wait_nodes(cluster, timeout_s=timeout_s)
        else:
            self.apply_policies(cluster)
        return pod, new

    @staticmethod
    def _kill_pod_process(pod: PodSpec, grace_s: float = 0.0) -> None:
        for pid in (pod.pid, pod.launcher_pid):
            if not _pid_alive(pid):
                continue
            try:
                os.kill(pid, signal.SIGTERM if grace_s else signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace_s
        while grace_s and time.monotonic() < deadline and _pid_alive(pod.pid):
            time.sleep(0.2)
        for pid in (pod.pid, pod.launcher_pid):
            if _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in (pod.pid, pod.launcher_pid):
            # Reap our own child (the launcher) so no zombie is left behind.
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(pod.pid):
            time.sleep(0.1)

    def down(self, *, grace_s: float = 10.0) -> list[str]:
        """Stop every pod and remove every namespace, interface, mount point and file the emulator made.

        Returns:
            What was removed, one line each.
        """
        try:
            cluster = self.load()
        except EmulatorError:
            if self.state_dir.exists() and not self.state_file.exists():
                shutil.rmtree(self.state_dir, ignore_errors=True)
            return []
        removed = []
        # Workers first, then the head, each with a grace period for `ray start --block` to stop its processes.
        for pod in sorted(cluster.pods, key=lambda p: p.node_type == "head"):
            if _pid_alive(pod.pid) or _pid_alive(pod.launcher_pid):
                self._kill_pod_process(pod, grace_s=grace_s)
                removed.append(f"pod {pod.name} (pid {pod.pid})")
            if _run(["ip", "netns", "del", pod.netns], check=False).returncode == 0:
                removed.append(f"netns {pod.netns}")
            if _run(["ip", "link", "del", pod.host_if], check=False).returncode == 0:
                removed.append(f"veth {pod.host_if}")
        if _run(["ip", "link", "del", cluster.bridge], check=False).returncode == 0:
            removed.append(f"bridge {cluster.bridge}")
        for mp in cluster.created_mountpoints:
            try:
                os.rmdir(mp)
                removed.append(f"mount point {mp}")
            except OSError:
                logger.warning("left %s in place (not empty or in use)", mp)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        removed.append(f"state {self.state_dir}")
        return removed

    def status(self) -> dict[str, Any]:
        """Each pod: group, netns, address, Ray node id, state; plus the head's addresses."""
        cluster = self.load()
        try:
            nodes = {n["node_ip"]: n for n in self.ray_nodes(cluster)}
        except EmulatorError:
            nodes = {}
        pods = []
        for p in cluster.pods:
            node = nodes.get(p.ip) if p.state == "Running" else None
            alive = _pid_alive(p.pid)
            state = p.state if p.state != "Running" else ("Running" if alive else "Failed")
            pods.append({"pod": p.name, "group": p.group, "type": p.node_type, "netns": p.netns, "ip": p.ip,
                         "pid": p.pid, "state": state, "ray_node_id": (node or {}).get("node_id"),
                         "ray_state": (node or {}).get("state")})
        return {"overlay": cluster.overlay, "cluster": cluster.cluster_name, "namespace": cluster.namespace,
                "dashboard": cluster.dashboard_url, "gcs": f"{cluster.head.ip}:{GCS_PORT}",
                "serve": f"http://{cluster.head.ip}:8000", "data_dir": cluster.data_dir,
                "state_dir": str(self.state_dir), "pods": pods}

    def env_lines(self) -> list[str]:
        """``export`` lines for a host shell to submit jobs to the emulated head."""
        cluster = self.load()
        lines = [f"export RAY_ADDRESS={cluster.dashboard_url}"]
        if cluster.token:
            lines += ["export RAY_AUTH_MODE=token", f"export RAY_AUTH_TOKEN={cluster.token}"]
        return lines
