"""On a real cluster: bring up the dev overlay, run the pipeline as a RayJob, ask the RayService, tear down.

Needs ``KUBECONFIG`` pointing at a cluster with the KubeRay operator (1.7) and the
workspace image loaded (``RAYSPACE_E2E_IMAGE`` overrides the pinned one, e.g. for a
locally built image in kind). Optional: ``RAYSPACE_E2E_CONTEXT``, ``RAYSPACE_E2E_NAMESPACE``.
Everything runs through the ``rayspace`` CLI, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from cluster.client import KubeApi, RayJob, RayService, resource_class
from workloads.cli import main
from workloads.schema import FEATURE_NAMES

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(3600)]


def _cli(*args: str, namespace: str) -> int:
    extra = ["--namespace", namespace]
    if os.environ.get("RAYSPACE_E2E_CONTEXT"):
        extra += ["--context", os.environ["RAYSPACE_E2E_CONTEXT"]]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def workspace(kube: KubeApi, e2e_namespace: str) -> Iterator[str]:
    """`rayspace cluster up` into a fresh namespace; `cluster down --purge` and the namespace go afterwards."""
    args = ["cluster", "up", "--timeout", "900", "--workers", "cpu=1"]
    if os.environ.get("RAYSPACE_E2E_IMAGE"):
        args += ["--image", os.environ["RAYSPACE_E2E_IMAGE"]]
    try:
        assert _cli(*args, namespace=e2e_namespace) == 0
        yield e2e_namespace
    finally:
        _cli("cluster", "down", "--purge", "--yes", "--wait", namespace=e2e_namespace)
        Namespace = resource_class("v1", "Namespace")
        Namespace(kube, {"metadata": {"name": e2e_namespace}}).delete(propagation="Foreground")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pipeline_runs_as_a_rayjob(kube: KubeApi, workspace: str) -> None:
    assert _cli("job", "submit", "--exact-name", "--job-name", "e2e-pipeline", "--wait", "--timeout", "3000",
                "--entrypoint", "python -m workloads.pipeline --smoke --set data.lake=/data/lake "
                "--set train.storage_path=/data/results --set tune.storage_path=/data/results "
                "--set registry.path=/data/models --until promote",
                namespace=workspace) == 0
    job = RayJob.get(kube, "e2e-pipeline", workspace)
    assert job.job_status == "SUCCEEDED", job.describe_status()


def test_rayservice_answers_a_prediction(kube: KubeApi, workspace: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH (needed to port-forward to the Serve service)")
    svc = RayService.get(kube, "rayspace-serve", workspace).wait_ready(timeout=900)
    port = _free_port()
    cmd = ["kubectl", "port-forward", "--namespace", workspace, f"svc/{svc.serve_service}", f"{port}:8000"]
    if os.environ.get("RAYSPACE_E2E_CONTEXT"):
        cmd[1:1] = ["--context", os.environ["RAYSPACE_E2E_CONTEXT"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "port-forward exited"
                assert time.monotonic() < deadline, "port-forward did not open"
                time.sleep(0.5)
        body = json.dumps({"instances": [[1.0] * len(FEATURE_NAMES)]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/wdbc:predict", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback port-forward
            answer = json.loads(resp.read())
        assert resp.status == 200
        assert len(answer["predictions"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cluster_status_and_scale(workspace: str) -> None:
    assert _cli("cluster", "status", namespace=workspace) == 0
    assert _cli("cluster", "scale", "cpu", "2", namespace=workspace) == 0
