"""``rayspace cluster ...`` and ``rayspace job ...`` end to end against the fake API server and operator."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakekube import FakeKube, FakeOperator, service_account_token, write_kubeconfig
from tests.fakekube.dashboard import FakeDashboard
from workloads.cli import main

SA_TOKEN = service_account_token("system:serviceaccount:rayspace:rayspace-ci")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(kubeconfig: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``rayspace ARGS --kubeconfig <fake>``; return (exit code, stdout, stderr)."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAYSPACE_CONFIG", raising=False)

    def _run(*args: str, kubeconfig_path: Path = kubeconfig) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--kubeconfig", str(kubeconfig_path)])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def dashboard() -> Iterator[FakeDashboard]:
    stub = FakeDashboard({}, token=None).start()
    try:
        yield stub
    finally:
        stub.stop()


def test_cluster_lifecycle(run: Run, fake: FakeKube, operator: FakeOperator) -> None:
    code, out, _ = run("cluster", "up", "--timeout", "15", "--json")
    assert code == 0
    result = last_json(out)
    applied = {(o["kind"], o["name"]) for o in result["objects"]}
    assert ("RayCluster", "rayspace") in applied and ("RayService", "rayspace-serve") in applied
    assert not {k for k, _ in applied} & {"RayJob", "RayCronJob"}
    assert ("Namespace", "rayspace") in applied and result["namespace"] == "rayspace"
    assert result["cluster"]["ready"] is True
    assert fake.get("ServiceAccount", "rayspace-head", "rayspace") is not None

    code, out, _ = run("cluster", "status", "--json")
    status = last_json(out)
    assert code == 0 and status["cluster"]["name"] == "rayspace" and status["cluster"]["ready"] is True
    assert status["service"]["serve_service"] == "rayspace-serve-serve-svc"

    # `up` leaves `replicas` of autoscaled groups to the autoscaler (KubeRay starts them at minReplicas).
    assert "replicas" not in fake.get("RayCluster", "rayspace", "rayspace")["spec"]["workerGroupSpecs"][0]
    code, out, _ = run("cluster", "scale", "cpu", "2", "--json")
    assert code == 0 and last_json(out)["replicas"] == 2 and last_json(out)["field"] == "minReplicas"
    assert fake.get("RayCluster", "rayspace", "rayspace")["spec"]["workerGroupSpecs"][0]["minReplicas"] == 2

    code, out, err = run("cluster", "scale", "cpu", "0")  # scaling down asks; no TTY means no
    assert code == 1 and "Refusing without --yes" in err
    assert fake.get("RayCluster", "rayspace", "rayspace")["spec"]["workerGroupSpecs"][0]["minReplicas"] == 2
    assert run("cluster", "scale", "cpu", "0", "--yes")[0] == 0

    code, out, err = run("cluster", "scale", "cpu", "99")
    assert code == 2 and 'error: Got 99 for minReplicas of worker group "cpu"' in err

    code, out, _ = run("cluster", "token")
    secret = fake.get("Secret", "rayspace", "rayspace")
    assert code == 0 and out.strip() == base64.b64decode(secret["data"]["auth_token"]).decode()

    code, out, _ = run("cluster", "connect", "--json", "--dashboard-port", "18265")
    plan = last_json(out)
    # kubectl gets the same kubeconfig as the client (it used to fall back to ~/.kube/config).
    assert plan["command"][:3] == ["kubectl", "--kubeconfig", plan["command"][2]] and plan["command"][2].endswith("kubeconfig")
    assert plan["command"][3:7] == ["port-forward", "--namespace", "rayspace", "svc/rayspace-head-svc"]
    assert plan["command"][7:] == ["18265:8265", "10001:10001", "8000:8000"]
    assert plan["env"]["RAY_ADDRESS"] == "http://127.0.0.1:18265"
    assert plan["env"]["RAY_AUTH_TOKEN"].startswith('"$(rayspace cluster token --name rayspace --namespace rayspace')
    code, out, _ = run("cluster", "connect")
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    assert "port-forward --namespace rayspace svc/rayspace-head-svc 8265:8265" in out and "kubectl --kubeconfig " in out
    assert "export RAY_ADDRESS=http://127.0.0.1:8265" in out and "export RAY_AUTH_MODE=token" in out
    assert token not in out, "connect must not print the secret itself"

    code, out, err = run("cluster", "down")
    assert code == 1 and "Refusing without --yes" in err and "aborted" in out
    assert fake.get("RayCluster", "rayspace", "rayspace") is not None
    code, out, _ = run("cluster", "down", "--yes", "--json")
    rows = {(o["kind"], o["action"]) for o in last_json(out)["objects"]}
    assert ("RayCluster", "deleted") in rows and ("RayService", "deleted") in rows and ("RayCronJob", "absent") in rows
    assert fake.get("RayCluster", "rayspace", "rayspace") is None
    assert fake.get("ServiceAccount", "rayspace-head", "rayspace") is not None, "without --purge only Ray objects go"
    assert ("RayCluster", "rayspace", "rayspace", "Foreground") in fake.deletions


def test_up_with_name_namespace_and_workers(run: Run, fake: FakeKube, operator: FakeOperator) -> None:
    code, out, _ = run("cluster", "up", "--name", "demo", "--namespace", "team-b", "--workers", "cpu=1",
                       "--image", "example.com/ray:test", "--without-serve", "--json", "--timeout", "15")
    assert code == 0, out
    rc = fake.get("RayCluster", "demo", "team-b")
    assert rc is not None and rc["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    assert rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "example.com/ray:test"
    assert fake.get("Namespace", "team-b") is not None
    assert fake.get("RayService", "demo-serve", "team-b") is None
    code, out, _ = run("cluster", "status", "--name", "demo", "--namespace", "team-b", "--json")
    assert code == 0 and last_json(out)["cluster"]["ready"] is True


def test_namespace_defaults_to_the_manifests_when_the_context_has_none(
        tmp_path: Path, run: Run, fake: FakeKube, operator: FakeOperator) -> None:
    kc = write_kubeconfig(tmp_path / "plain", fake.url, SA_TOKEN, namespace=None)
    code, out, _ = run("cluster", "up", "--no-wait", "--without-serve", "--json", kubeconfig_path=kc)
    assert code == 0 and last_json(out)["namespace"] == "rayspace"


def test_job_submit_wait_status_and_failure(run: Run, fake: FakeKube, operator: FakeOperator) -> None:
    code, out, _ = run("job", "submit", "--entrypoint", "python -m workloads.pipeline --smoke", "--wait",
                       "--timeout", "15", "--json")
    job = last_json(out)
    assert code == 0 and job["job_status"] == "SUCCEEDED" and job["name"].startswith("rayspace-pipeline-")
    assert fake.get("RayJob", job["name"], "rayspace")["spec"]["entrypoint"] == "python -m workloads.pipeline --smoke"

    code, out, _ = run("job", "status", job["name"], "--json")
    assert code == 0 and last_json(out)["job_id"] == job["job_id"]

    code, out, _ = run("job", "submit", "--entrypoint", "python -m workloads.pipeline --fail", "--wait",
                       "--timeout", "15", "--json")
    failed = last_json(out)
    assert code == 1 and failed["job_status"] == "FAILED"
    code, out, _ = run("job", "status")
    assert code == 0 and job["name"] in out and failed["name"] in out and "FAILED" in out
    assert run("job", "status", failed["name"])[0] == 1


def test_job_logs_use_the_clusters_token(run: Run, fake: FakeKube, kubeconfig: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    op = FakeOperator(fake, ready_after=0.0, job_runtime=60).start()
    stub = None
    try:
        code, out, _ = run("job", "submit", "--exact-name", "--job-name", "logs-demo", "--json")
        assert code == 0
        from cluster.client import KubeApi, RayJob

        with KubeApi.from_kubeconfig(kubeconfig) as api:
            job = RayJob.get(api, "logs-demo").wait(lambda j: j.job_status == "RUNNING", timeout=10,
                                                    what="running", interval=0.05)
        secret = fake.get("Secret", job.cluster_name, "rayspace")
        token = base64.b64decode(secret["data"]["auth_token"]).decode()
        stub = FakeDashboard({job.job_id: "epoch 1 loss 0.5\n"}, token=token).start()
        code, out, err = run("job", "logs", "logs-demo", "--dashboard-url", stub.url)
        assert code == 0, err
        assert out.strip() == "epoch 1 loss 0.5"
        assert stub.seen[-1] == {"path": f"/api/jobs/{job.job_id}/logs", "auth": f"Bearer {token}"}
        # $RAY_AUTH_TOKEN from `cluster connect` belongs to the long-lived cluster; the job's own cluster wins.
        monkeypatch.setenv("RAY_AUTH_TOKEN", "token-of-the-long-lived-cluster")
        code, out, err = run("job", "logs", "logs-demo", "--dashboard-url", stub.url)
        assert code == 0, err
        assert stub.seen[-1]["auth"] == f"Bearer {token}"
        monkeypatch.delenv("RAY_AUTH_TOKEN")

        code, out, err = run("job", "logs", "logs-demo", "--dashboard-url", stub.url, "--token", "wrong")
        assert code == 1 and "HTTP 403" in err

        code, out, err = run("job", "stop", "logs-demo")
        assert code == 1 and "Refusing without --yes" in err
        code, out, _ = run("job", "stop", "logs-demo", "--yes", "--json")
        assert code == 0 and last_json(out)["action"] == "suspended"
        code, out, _ = run("job", "stop", "logs-demo", "--delete", "--yes")
        assert code == 0 and fake.get("RayJob", "logs-demo", "rayspace") is None
    finally:
        op.stop()
        if stub is not None:
            stub.stop()
    assert not op.errors


def test_job_logs_without_a_job_id_yet(run: Run, fake: FakeKube) -> None:
    assert run("job", "submit", "--exact-name", "--job-name", "pending")[0] == 0
    code, _, err = run("job", "logs", "pending")
    assert code == 1 and 'has no Ray job ID yet' in err


def test_errors_are_one_line_with_the_reason(run: Run, fake: FakeKube, tmp_path: Path) -> None:
    code, _, err = run("cluster", "status")
    assert code == 1 and err.strip() == 'error: RayCluster "rayspace/rayspace" not found'
    fake.deny("get", "rayclusters")
    code, _, err = run("cluster", "status")
    assert code == 1 and 'RBAC denied verb "get" on resource "rayclusters.ray.io"' in err
    assert 'ServiceAccount "rayspace/rayspace-ci"' in err and "Traceback" not in err
    code, _, err = run("cluster", "status", kubeconfig_path=tmp_path / "missing")
    assert code == 1 and "cannot load kubeconfig" in err
    code, _, err = run("cluster", "up", "--workers", "cpu=lots")
    assert code == 2 and "--workers" in err


def test_connect_run_spawns_kubectl(run: Run, fake: FakeKube, operator: FakeOperator, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("cluster", "up", "--without-serve", "--timeout", "15")[0] == 0
    # A stand-in kubectl on PATH records its argv, so `--run` is checked without a real cluster.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.json"
    script = bindir / "kubectl"
    script.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    code, out, _ = run("cluster", "connect", "--run")
    assert code == 0
    argv = json.loads(record.read_text())
    assert argv[:2] == ["--kubeconfig", argv[1]] and argv[1].endswith("kubeconfig")
    assert argv[2:] == ["port-forward", "--namespace", "rayspace", "svc/rayspace-head-svc", "8265:8265", "10001:10001", "8000:8000"]


def test_up_as_namespace_admin_goes_on_without_the_quota(run: Run, fake: FakeKube, operator: FakeOperator) -> None:
    # The `admin` ClusterRole reads quotas but may not write them; `up` used to stop at the ResourceQuota.
    fake.deny("patch", "resourcequotas", group="")
    fake.deny("create", "resourcequotas", group="")
    code, out, err = run("cluster", "up", "--without-serve", "--timeout", "15", "--json")
    assert code == 0, err
    rows = {(o["kind"], o["action"]) for o in last_json(out)["objects"]}
    assert ("ResourceQuota", "forbidden") in rows and ("RayCluster", "applied") in rows
    assert "ask a cluster admin to apply it" in err
    assert fake.get("RayCluster", "rayspace", "rayspace") is not None


def test_rayservice_token_is_stable_and_rotates_without_downtime(run: Run, fake: FakeKube, operator: FakeOperator) -> None:
    code, out, err = run("cluster", "up", "--timeout", "15", "--json")
    assert code == 0, err
    assert ("Secret", "created (random token)") in {(o["kind"], o["action"]) for o in last_json(out)["objects"]}
    first = fake.get("Secret", "rayspace-serve-auth", "rayspace")
    assert first is not None and base64.b64decode(first["data"]["auth_token"])
    assert run("cluster", "up", "--timeout", "15")[0] == 0  # a second up keeps the token
    assert fake.get("Secret", "rayspace-serve-auth", "rayspace")["data"] == first["data"]

    before = fake.get("RayService", "rayspace-serve", "rayspace")["status"]["activeServiceStatus"]["rayClusterName"]
    code, out, err = run("cluster", "rotate-token", "--yes", "--json", "--timeout", "15")
    assert code == 0, err
    result = last_json(out)
    assert result["old_secret"] == "rayspace-serve-auth" and result["secret"].startswith("rayspace-serve-auth-r")
    svc = fake.get("RayService", "rayspace-serve", "rayspace")
    assert svc["spec"]["rayClusterConfig"]["authOptions"]["secretName"] == result["secret"]
    assert svc["status"]["activeServiceStatus"]["rayClusterName"] not in ("", before)
    assert fake.get("Secret", result["secret"], "rayspace")["data"] != first["data"]
    assert fake.get("Secret", "rayspace-serve-auth", "rayspace") is None
