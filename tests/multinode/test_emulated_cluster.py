"""The workspace on a real multi-node Ray built from the dev overlay's RayCluster (``rayspace cluster emulate``).

Order matters inside this module (one cluster for all, to keep the tier short): the
cheap checks of the emulation itself come first, then node-local storage is refused,
then a training run survives the loss of a worker pod, and last the whole pipeline is
submitted as a laptop would and its Serve endpoint survives the loss of a pod under load.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster import manifests
from tests.multinode.conftest import REPO_ROOT, last_json_line

pytestmark = pytest.mark.multinode

#: The ray-internal policy as it was before issue 9: Ray's pinned ports only between Ray pods.
PORTS_ONLY_POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "ray-internal-ports-only", "namespace": "rayspace"},
    "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}}}],
                     "ports": [{"protocol": "TCP", "port": 6379, "endPort": 6383}, {"protocol": "TCP", "port": 8000},
                               {"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8265},
                               {"protocol": "TCP", "port": 10001, "endPort": 10999}, {"protocol": "TCP", "port": 52365}]}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}}}],
                    "ports": [{"protocol": "TCP", "port": 6379, "endPort": 6383}, {"protocol": "TCP", "port": 8000},
                              {"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8265},
                              {"protocol": "TCP", "port": 10001, "endPort": 10999}, {"protocol": "TCP", "port": 52365}]}],
    },
}

_LISTEN = ("import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(8); print('listening', flush=True)\n"
           "while True:\n    c,_=s.accept(); c.sendall(b'hi'); c.close()\n")
_CONNECT = ("import socket,sys\ntry:\n    c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
            "    print(c.recv(2).decode())\nexcept OSError as e:\n    print('blocked', type(e).__name__)\n")


def _connect(cluster, pod: str, ip: str, port: int) -> str:
    return cluster.exec(pod, sys.executable, "-c", _CONNECT, ip, str(port)).stdout.strip()


def test_every_pod_is_its_own_node(emulated):
    pods = emulated.refresh().pods
    nodes = emulated.node_ids()
    assert len(pods) == 3 and len(set(nodes.values())) == 3, nodes
    head, w1, w2 = pods[0], *[p for p in pods if p.node_type == "worker"]
    # Hostname and cluster DNS as the kubelet would write them.
    assert emulated.exec(w1.name, "hostname").stdout.strip() == w1.name
    assert head.ip in emulated.exec(w1.name, "getent", "hosts", "rayspace-head-svc.rayspace.svc.cluster.local").stdout
    # emptyDir /tmp is private, the PVC at /data is shared (and is the host directory).
    emulated.exec(head.name, "sh", "-c", "echo head > /tmp/only-here && echo shared > /data/from-head")
    assert emulated.exec(w1.name, "test", "-e", "/tmp/only-here").returncode != 0
    assert emulated.exec(w2.name, "cat", "/data/from-head").stdout.strip() == "shared"
    assert (emulated.data_dir / "from-head").read_text().strip() == "shared"
    # Its own PID namespace: PID 1 is the pod's init, no host process is visible.
    pids = emulated.exec(w1.name, "sh", "-c", "ls /proc | grep -E '^[0-9]+$'").stdout.split()
    assert "1" in pids and str(w1.pid) not in pids and len(pids) < 200
    # The RayCluster's resources: head num-cpus 0, workers 1 CPU from the container limit; the
    # groups' maximum is published as the KubeRay autoscaler v2 would publish it.
    probe = ("import ray, json; ray.init(); from ray._private.state import state; "
             "print(json.dumps([ray.cluster_resources().get('CPU'), state.get_max_resources_from_cluster_config()]))")
    out = emulated.exec(head.name, sys.executable, "-c", probe, timeout_s=120)
    assert out.returncode == 0, out.stderr
    cpus, maximum = json.loads(out.stdout.strip().splitlines()[-1])
    assert cpus == 2.0 and maximum["CPU"] == 2


def test_network_policies_are_enforced(emulated):
    head, w1, w2 = emulated.refresh().pods[0], *emulated.workers()
    listener = emulated.emulator.exec(emulated.state, w1.name, [sys.executable, "-c", _LISTEN, "45678"], background=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        # Any TCP port between the pods of one Ray cluster (gloo and Serve's gRPC use ephemeral ports).
        assert _connect(emulated, w2.name, w1.ip, 45678) == "hi"
        assert _connect(emulated, head.name, w1.ip, 45678) == "hi"
        # Nothing leaves the cluster's pods: a worker cannot open a connection to the node or outside.
        assert _connect(emulated, w2.name, emulated.state.node_ip, 45678).startswith("blocked")
        # With the old ports-only policy, the same connection between workers is dropped.
        old = [p for p in emulated.state.policies if not p["metadata"]["name"].startswith("ray-cluster")]
        emulated.emulator.apply_policies(emulated.state, [*old, copy.deepcopy(PORTS_ONLY_POLICY)])
        try:
            assert _connect(emulated, w2.name, w1.ip, 45678).startswith("blocked")
            assert _connect(emulated, w2.name, head.ip, 6379) != "blocked"  # Ray's pinned ports still pass
        finally:
            emulated.emulator.apply_policies(emulated.state)
        assert _connect(emulated, w2.name, w1.ip, 45678) == "hi"
    finally:
        listener.kill()
        listener.wait()


def test_node_local_storage_is_refused_before_work_starts(emulated):
    sid = emulated.submit("python", "-m", "workloads.pipeline", "--smoke", "--config", "jobs/kuberay.yaml",
                          "--set", "train.storage_path=/tmp/rayspace-results")
    status, logs = emulated.wait_job(sid, timeout_s=300)
    assert status == "FAILED", logs[-3000:]
    assert 'Got "/tmp/rayspace-results" for train.storage_path: must be storage every Ray node shares' in logs
    assert "[ingest]" not in logs and "[train]" not in logs


def test_training_survives_a_worker_pod_killed(emulated, record_property):
    status, logs = emulated.wait_job(emulated.submit("python", "-m", "workloads.cli", "data", "ingest",
                                                     "--config", "jobs/kuberay.yaml"), timeout_s=300)
    assert status == "SUCCEEDED", logs[-3000:]
    nodes_before = emulated.node_ids()
    sid = emulated.submit("python", "-m", "workloads.cli", "train", "--json", "--config", "jobs/kuberay.yaml",
                          "--workers", "2", "--epochs", "12", "--set", "train.max_failures=3",
                          "--set", "train.name=killtest", "--set", "train.checkpoints_to_keep=3")
    client = emulated.job_client()
    # Two checkpoints in shared storage first: the first is then registered with Train's checkpoint
    # manager (a worker killed while reporting its very first one rightly restarts from scratch).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list((emulated.data_dir / "results").glob("killtest-*/checkpoint_*"))) < 2:
        assert str(client.get_job_status(sid)).split(".")[-1] in ("PENDING", "RUNNING"), client.get_job_logs(sid)[-3000:]
        time.sleep(1)
    victim = emulated.workers()[-1]
    killed, replacement = emulated.emulator.kill(victim.name, replace=True)
    status, logs = emulated.wait_job(sid, timeout_s=900)
    assert status == "SUCCEEDED", logs[-4000:]
    result = last_json_line(logs)
    attempt = result["attempt"]
    record_property("train_pod_kill", attempt)
    assert attempt["resumed_from_epoch"] and attempt["resumed_from_epoch"] >= 1, attempt
    assert len(result["history"]) == 12
    nodes_after = emulated.node_ids()
    used = {w["node_id"] for w in attempt["workers"]}
    assert len(used) == 2 and nodes_before[killed.name] not in used
    assert nodes_after[replacement.name] in used or used <= set(nodes_after.values())


def _predict(url: str, body: bytes, timeout: float = 10.0) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our emulated pod
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_pipeline_from_a_laptop_then_serve_survives_a_pod_loss(emulated, record_property):
    sid = emulated.submit(
        "python", "-m", "workloads.pipeline", "--smoke", "--json", "--config", "jobs/kuberay.yaml",
        "--set", "train.num_workers=2", "--set", "serve.min_replicas=2", "--set", "serve.max_replicas=2",
        "--set", "serve.max_replicas_per_node=1",
    )
    status, logs = emulated.wait_job(sid, timeout_s=1200)
    assert status == "SUCCEEDED", logs[-4000:]
    summary = last_json_line(logs)
    nodes = emulated.node_ids()
    workers = {nodes[p.name] for p in emulated.workers()}
    # Data-parallel training placed one worker on each of two pods.
    placed = {w["node_id"] for w in summary["train_attempt"]["workers"]}
    assert len(placed) == 2 and placed <= workers, (placed, workers)
    assert summary["best_trial"] and summary["model_version"]
    # Everything the run wrote is on the shared volume.
    assert summary["checkpoint"].startswith("/data/") and (emulated.data_dir / "models").is_dir()
    # The promoted model is served with a replica on each worker pod, reachable from the host.
    replicas = [r for r in emulated.serve_replicas() if r.get("state") == "RUNNING"]
    assert {r["node_id"] for r in replicas} == workers, replicas
    # The endpoint the driver reports is the head pod's; the host (the node) reaches the head's address.
    path = summary["endpoint"].split(":8000", 1)[1]
    url = f"http://{emulated.state.head.ip}:8000{path}"
    body = (REPO_ROOT / "examples" / "instances.json").read_bytes()
    assert _predict(url, body) == 200

    # Bounded load from 4 client threads while the pod hosting one replica is killed.
    results: list[int] = []
    stop = threading.Event()

    def client():
        for _ in range(400):
            if stop.is_set():
                return
            results.append(_predict(url, body))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    victim = next(p for p in emulated.workers() if nodes[p.name] in {r["node_id"] for r in replicas})
    before = len(results)
    emulated.emulator.kill(victim.name)
    time.sleep(10)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    failed = [code for code in results if code != 200]
    record_property("serve_pod_kill", {"requests": len(results), "failed": len(failed), "codes": sorted(set(failed))})
    assert before > 0 and len(results) > before
    assert len(failed) <= 4, f"{len(failed)} of {len(results)} requests failed: {sorted(set(failed))}"
    # And it keeps answering afterwards.
    assert all(_predict(url, body) == 200 for _ in range(5))
