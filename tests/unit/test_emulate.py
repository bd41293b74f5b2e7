"""The emulator's pure parts: KubeRay's pod and command generation, and NetworkPolicies as nftables rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster import manifests
from cluster._internal import emulate, netpol
from cluster._internal.emulate import EmulatorError, ray_start_command


@pytest.fixture(scope="module")
def dev_objects():
    return manifests.render("dev")


def _plan(objects, tmp_path, **kw):
    return emulate.plan(objects, overlay="dev", data_dir=tmp_path / "pvc", state_dir=tmp_path / "state", **kw)


# ----------------------------------------------------------------------------- KubeRay's ray start


def test_ray_start_takes_resources_from_limits_unless_given():
    container = {"resources": {"limits": {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": 1}}}
    cmd = ray_start_command("worker", {"min-worker-port": 10002}, container, head_address="h:6379", autoscaling=True)
    assert cmd[:2] == ["ray", "start"] and "--head" not in cmd
    # KubeRay rounds the CPU limit up (resource.Value()) and passes memory in bytes.
    assert "--num-cpus=1" in cmd and f"--memory={2 * 2**30}" in cmd and "--num-gpus=1" in cmd
    assert "--address=h:6379" in cmd and "--block" in cmd and "--min-worker-port=10002" in cmd
    assert "--no-monitor" not in cmd  # only the head's monitor moves to the autoscaler sidecar
    head = ray_start_command("head", {"num-cpus": "0"}, container, head_address="h:6379", autoscaling=True)
    assert head[:3] == ["ray", "start", "--head"] and "--num-cpus=0" in head and "--no-monitor" in head
    assert "--dashboard-host=0.0.0.0" in head and not any(a.startswith("--address") for a in head)


def test_plan_reads_pods_from_the_rendered_raycluster(dev_objects, tmp_path):
    cluster = _plan(dev_objects, tmp_path, replicas={"cpu": 2})
    head, *workers = cluster.pods
    assert head.node_type == "head" and len(workers) == 2 and {w.group for w in workers} == {"cpu"}
    assert head.labels["ray.io/cluster"] == "rayspace" and head.labels["ray.io/node-type"] == "head"
    assert head.labels["app.kubernetes.io/name"] == "rayspace-ray"  # the template's own label wins
    # Token auth as the RayCluster asks (authOptions.mode: token), the same token on every pod.
    assert {p.env["RAY_AUTH_MODE"] for p in cluster.pods} == {"token"}
    assert len({p.env["RAY_AUTH_TOKEN"] for p in cluster.pods}) == 1
    # Workers reach the head through its Service name; the manifest's env and volumes are kept.
    assert "--address=rayspace-head-svc.rayspace.svc.cluster.local:6379" in workers[0].command
    assert workers[0].env["MPLCONFIGDIR"] == "/tmp/.matplotlib"
    assert {m["target"] for m in workers[0].shared_mounts} == {"/data"}
    shm = next(e for e in workers[0].empty_dirs if e["target"] == "/dev/shm")
    assert shm["size_bytes"] == 512 * 2**20
    assert len({p.ip for p in cluster.pods}) == 3 and cluster.node_ip not in {p.ip for p in cluster.pods}


def test_plan_defaults_to_the_groups_replicas(dev_objects, tmp_path):
    assert [p.node_type for p in _plan(dev_objects, tmp_path).pods] == ["head"]  # dev: replicas 0, minReplicas 0


@pytest.mark.parametrize(("kw", "needle"), [
    ({"replicas": {"cpu": 3}}, "must be between 0 and the group's maxReplicas 2"),
    ({"replicas": {"gpu": 1}}, "Got 'gpu' for --replicas"),
    ({"subnet": "8.8.8.0/24"}, "must be a private IPv4 network"),
    ({"subnet": "nonsense"}, "Got 'nonsense' for --subnet"),
])
def test_plan_refuses_bad_input_with_one_clear_line(dev_objects, tmp_path, kw, needle):
    with pytest.raises(EmulatorError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        _plan(dev_objects, tmp_path, **kw)


def test_a_second_up_is_refused(dev_objects, tmp_path, monkeypatch):
    monkeypatch.setattr(emulate, "check_prerequisites", lambda: None)
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("{}")
    with pytest.raises(EmulatorError, match="already running"):
        emulate.Emulator(state).up(_plan(dev_objects, tmp_path))


def test_prerequisites_name_what_is_missing(monkeypatch):
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 1000)
    with pytest.raises(EmulatorError, match="needs root"):
        emulate.check_prerequisites()
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 0)
    monkeypatch.setattr(emulate.shutil, "which", lambda t: None if t == "nft" else "/usr/bin/" + t)
    with pytest.raises(EmulatorError, match="needs nft on PATH"):
        emulate.check_prerequisites()


def test_cli_dry_run_prints_pods_and_rules_without_starting_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workloads.cli", "cluster", "emulate", "up", "--dry-run",
                          "--replicas", "cpu=2", "--state-dir", str(tmp_path / "s")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ray start") == 3 and "table inet rayspace_netpol" in out.stdout
    assert not (tmp_path / "s").exists()
    bad = subprocess.run([sys.executable, "-m", "workloads.cli", "cluster", "emulate", "up", "--dry-run",
                          "--replicas", "cpu=two"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: Got 'cpu=two' for --replicas")


# ----------------------------------------------------------------------------- NetworkPolicies


def _pod(name, ip, **labels):
    return netpol.PodEndpoint(name, "ns", labels, ip, {"dash": (8265, "TCP")})


def _policy(name, spec, ns="ns"):
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}


NAMESPACES = {"ns": {"kubernetes.io/metadata.name": "ns"}, "mon": {"kubernetes.io/metadata.name": "mon"}}


def test_unselected_pods_are_open_and_default_deny_isolates():
    pods = [_pod("a", "10.0.0.2", app="ray"), _pod("b", "10.0.0.3", app="other")]
    deny = _policy("deny", {"podSelector": {"matchLabels": {"app": "ray"}}, "policyTypes": ["Ingress", "Egress"]})
    a, b = netpol.resolve([deny], pods, NAMESPACES)
    assert a.ingress_isolated and a.egress_isolated and not a.ingress and not a.egress
    assert not b.ingress_isolated and not b.egress_isolated and b.selected_by == []
    rules = netpol.nft_ruleset(a, node_ip="10.0.0.1", subnet="10.0.0.0/24")
    assert "policy drop" in rules and "ip saddr 10.0.0.1 accept" in rules and "accept" not in rules.split(
        "ip daddr != 10.0.0.0/24 drop")[1].replace("meta nfproto ipv6 drop", "")
    assert rules.count("policy accept") == 0
    assert netpol.nft_ruleset(b, node_ip="10.0.0.1", subnet="10.0.0.0/24").count("policy accept") == 2


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist():
    pods = [_pod("a", "10.0.0.2", app="ray")]
    only_ingress = _policy("i", {"podSelector": {}, "ingress": [{}]})
    (a,) = netpol.resolve([only_ingress], pods, NAMESPACES)
    assert a.ingress_isolated and not a.egress_isolated and a.ingress[0].peers is None  # `{}` allows everything
    with_egress = _policy("e", {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]})
    (a,) = netpol.resolve([with_egress], pods, NAMESPACES)
    assert a.ingress_isolated and a.egress_isolated and a.egress[0].protocol == "udp" and a.egress[0].ports == ["53"]


def test_peers_ports_named_ports_ranges_and_ip_blocks():
    pods = [_pod("a", "10.0.0.2", app="ray"), _pod("b", "10.0.0.3", app="ray"), _pod("c", "10.0.0.4", app="x")]
    pol = _policy("p", {
        "podSelector": {"matchLabels": {"app": "ray"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "ray"}}}],
             "ports": [{"port": "dash"}, {"port": 10002, "endPort": 10999}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}],
             "ports": [{"port": 8080}]},
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.4/32"]}}], "ports": [{"port": 443}]},
        ],
    })
    a = netpol.resolve([pol], pods, NAMESPACES)[0]
    first, monitoring, block = a.ingress
    assert first.peers == ["10.0.0.2", "10.0.0.3"] and first.ports == ["8265", "10002-10999"]
    assert monitoring.empty and "no emulated pod matches" in monitoring.note  # nobody runs in `mon`
    assert block.peers == ["10.0.0.0/24"] and block.excepts == ["10.0.0.4/32"]
    rules = netpol.nft_ruleset(a, node_ip="10.0.0.1", subnet="10.0.0.0/24")
    assert "ip saddr { 10.0.0.2, 10.0.0.3 } tcp dport { 8265, 10002-10999 } accept" in rules
    assert "ip saddr { 10.0.0.0/24 } ip saddr != { 10.0.0.4/32 } tcp dport { 443 } accept" in rules
    assert "8080" not in rules  # a rule whose peers resolve to nothing allows nothing
    assert "no emulated pod matches" in netpol.explain(a)


def test_the_rendered_policies_let_ray_pods_talk_on_any_port_and_keep_others_out(dev_objects, tmp_path):
    cluster = _plan(dev_objects, tmp_path, replicas={"cpu": 2})
    view = {pp.pod.name: pp for pp in emulate.policy_view(cluster)}
    head, w1, _ = cluster.pods
    ingress = view[w1.name].ingress
    cluster_wide = [r for r in ingress if r.peers and set(r.peers) == {p.ip for p in cluster.pods} and r.ports is None]
    assert cluster_wide, "pods of one Ray cluster must reach each other on every TCP port (gloo, Serve gRPC)"
    # A pod of another Ray cluster in the namespace is not among the peers of this cluster's rules.
    other = netpol.PodEndpoint("other-head", "rayspace", {**head.labels, "ray.io/cluster": "other"}, "10.213.7.99")
    mixed = netpol.resolve(cluster.policies, [*(p.endpoint("rayspace") for p in cluster.pods), other],
                           emulate.namespaces_of(cluster))
    w1_rules = next(pp for pp in mixed if pp.pod.name == w1.name).ingress
    assert all("10.213.7.99" not in (r.peers or []) or r.ports is not None for r in w1_rules)


# ----------------------------------------------------------------------------- sizing from the cluster's maximum


def test_worker_count_comes_from_the_configured_maximum_not_the_cpus_up_now(monkeypatch):
    import ray
    from ray._private.state import state

    from workloads import train
    from workloads.config import TrainConfig
    from workloads.exceptions import ConfigError

    # A cluster scaled to zero: no worker CPUs up, but its groups can scale to 4 CPUs.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"memory": 1.0})
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 4, "memory": 8})
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert train.resolve_num_workers(TrainConfig()) == 4
    with pytest.raises(ConfigError, match="can scale up to 4"):
        train.resolve_num_workers(TrainConfig(num_workers=5))
    # Without a published maximum, a joined cluster may still grow: what is asked for is kept.
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: None)
    assert train.resolve_num_workers(TrainConfig(num_workers=3)) == 3
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ConfigError, match="has 2"):
        train.resolve_num_workers(TrainConfig(num_workers=3))
