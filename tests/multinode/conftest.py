"""The ``multinode`` tier: the dev overlay's RayCluster emulated as a real multi-node Ray.

One emulated cluster serves the whole module that asks for it (bringing one up costs
about half a minute): the head (``num-cpus: 0``) and two CPU worker pods, each in its
own network, mount, PID and UTS namespace, with the rendered NetworkPolicies enforced
by nftables. It lives in its own state dir and subnet, so a cluster a developer runs
with ``rayspace cluster emulate up`` is left alone, and teardown checks that nothing
it made is left: no pod process, network namespace, interface or state file.

Prerequisites (root, ``ip``, ``nft``, ``unshare``, ``nsenter``) are checked in one
place: without them the tier skips with the reason, and under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster._internal.emulate import EmulatedCluster, Emulator, EmulatorError, check_prerequisites, plan

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.213.9.0/24"


def require_emulator() -> None:
    """Skip (or, under CI=true, fail) when this machine cannot run the emulator."""
    try:
        check_prerequisites()
    except EmulatorError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"multinode tier cannot run under CI: {e}")
        pytest.skip(str(e))


@dataclass
class Cluster:
    """The running emulated cluster and what the tests do with it."""

    emulator: Emulator
    state: EmulatedCluster

    def refresh(self) -> EmulatedCluster:
        self.state = self.emulator.load()
        return self.state

    @property
    def data_dir(self) -> Path:
        return Path(self.state.data_dir)

    def workers(self) -> list:
        return [p for p in self.refresh().pods if p.node_type == "worker" and p.state == "Running"]

    def node_ids(self) -> dict[str, str]:
        """Pod name -> Ray node id of every live pod."""
        return self.emulator.wait_nodes(self.refresh(), timeout_s=120)

    def exec(self, pod: str, *cmd: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        return self.emulator.exec(self.state, pod, list(cmd), timeout_s=timeout_s)

    def env(self) -> dict[str, str]:
        """What a laptop shell has after `eval "$(rayspace cluster emulate env)"`."""
        lines = self.emulator.env_lines()
        return dict(line.removeprefix("export ").split("=", 1) for line in lines)

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.state.dashboard_url,
                                   headers={"Authorization": f"Bearer {self.state.token}"})

    def submit(self, *entrypoint: str) -> str:
        """`ray job submit --no-wait` from the host, as a laptop would; returns the submission id."""
        env = {**os.environ, **self.env()}
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--no-wait", "--working-dir", ".",
             "--runtime-env", "runtime_env.yaml", "--", *entrypoint],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        match = re.search(r"(raysubmit_[A-Za-z0-9]+)", proc.stdout + proc.stderr)
        assert match, proc.stdout + proc.stderr
        return match.group(1)

    def wait_job(self, submission_id: str, timeout_s: float = 900) -> tuple[str, str]:
        """Wait until the job ends; returns (status, logs)."""
        client = self.job_client()
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            status = str(client.get_job_status(submission_id))
            if status.split(".")[-1] in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(2)
        else:
            client.stop_job(submission_id)
            pytest.fail(f"job {submission_id} still {status} after {timeout_s}s:\n{client.get_job_logs(submission_id)[-4000:]}")
        return status.split(".")[-1], client.get_job_logs(submission_id)

    def serve_replicas(self) -> list[dict[str, Any]]:
        """Replicas of every Serve deployment, from the dashboard's Serve API."""
        reply = self.emulator.api(self.refresh(), "/api/serve/applications/")
        out = []
        for app in (reply.get("applications") or {}).values():
            for dep in (app.get("deployments") or {}).values():
                out.extend(dep.get("replicas") or [])
        return out


def last_json_line(logs: str) -> dict[str, Any]:
    """The summary a --json command prints as its last stdout line."""
    for line in reversed(logs.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in the job's logs:\n{logs[-3000:]}")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> Iterator[Cluster]:
    """The dev overlay's RayCluster with two CPU worker pods, for one test module."""
    require_emulator()
    from cluster import manifests

    state_dir = Path(f"/run/rayspace-test-emulate-{os.getpid()}")
    emulator = Emulator(state_dir)
    state = plan(manifests.render("dev"), overlay="dev", replicas={"cpu": 2}, subnet=SUBNET,
                 data_dir=tmp_path_factory.mktemp("pvc"), state_dir=state_dir)
    emulator.up(state, timeout_s=240)
    made = emulator.load()
    try:
        yield Cluster(emulator, made)
    finally:
        try:
            final = emulator.load()
        except EmulatorError:
            final = made
        emulator.down()
        leftovers = assert_nothing_left(final)
        assert not leftovers, f"the emulator left {leftovers}"


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (re-parented) parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_nothing_left(state: EmulatedCluster) -> list[str]:
    """What of an emulated cluster still exists (empty when everything was removed)."""
    left = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for pod in state.pods:
        if pod.netns in netns:
            left.append(f"netns {pod.netns}")
        if pod.pid and _running(pod.pid):
            left.append(f"process {pod.pid} ({pod.name})")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    if f" {state.bridge}:" in links or f" {state.bridge}@" in links:
        left.append(f"bridge {state.bridge}")
    return left
