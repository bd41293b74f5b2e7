"""The three ways people use the workspace, against a real token-authenticated Ray head.

1. ``ray job submit`` from the repository (the laptop path): the smoke pipeline runs
   as a job, its logs show the stages, checkpoints/models/records land in the
   configured (absolute) storage, and the same submission without the token, or
   with a wrong one, is refused with no job created.
2. The Serve endpoint the job deployed keeps answering over HTTP after the job ended, to the
   curl and Python examples too.
3. The notebook executes top to bottom (nbclient) as a driver attached to the head; its laptop
   fallback, Ray Client, works with the token and its port refuses calls without it.

Last, every listening socket of the head's processes is on loopback (one documented Ray exception).
All tests share one head (``ray_head``) and one smoke job (``smoke_job``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration._rayhead import RayHead, free_port
from workloads import jobs
from workloads.pipeline import STAGES

pytestmark = pytest.mark.integration

MODEL = "wdbc"


@dataclass(frozen=True)
class SmokeJob:
    submission_id: str
    submit: subprocess.CompletedProcess
    info: dict[str, Any]
    logs: str
    summary: dict[str, Any]
    storage: Path
    serve_url: str
    metadata: dict[str, str]


def ray_job_submit(head: RayHead, entrypoint: list[str], *, repo: Path, submission_id: str,
                   metadata: dict[str, str] | None = None, token: str | None = "__cluster__",
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """``ray job submit`` exactly as the README shows it, from the repository as working dir."""
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.dashboard_url,
           "--working-dir", ".", "--runtime-env", jobs.RUNTIME_ENV_FILE, "--submission-id", submission_id]
    if metadata:
        cmd += ["--metadata-json", json.dumps(metadata)]
    return subprocess.run([*cmd, "--", *entrypoint], cwd=repo, env=head.client_env(token=token),
                          capture_output=True, text=True, timeout=timeout)


def job_info(head: RayHead, submission_id: str) -> tuple[int, dict[str, Any]]:
    status, body = head.api("GET", f"/api/jobs/{submission_id}")
    return status, (json.loads(body) if status == 200 else {"body": body.decode(errors="replace")})


def job_logs(head: RayHead, submission_id: str) -> str:
    status, body = head.api("GET", f"/api/jobs/{submission_id}/logs")
    assert status == 200, body
    return json.loads(body)["logs"]


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary line in the job's logs:\n{text[-3000:]}")


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def smoke_job(ray_head: RayHead, repo_root: Path, tmp_path_factory) -> SmokeJob:
    """The smoke pipeline submitted as a Ray job, run once for the module."""
    storage = tmp_path_factory.mktemp("job-storage")
    port = free_port()
    submission_id = f"rayspace-smoke-{uuid.uuid4().hex[:8]}"
    metadata = jobs.submission_metadata("pipeline", repo=repo_root, config="jobs/local.yaml")
    entrypoint = [
        "python", "-m", "workloads.pipeline", "--smoke", "--config", "jobs/local.yaml",
        "--lake", str(storage / "lake"), "--storage", str(storage / "results"), "--registry", str(storage / "models"),
        "--set", f"serve.port={port}", "--set", "serve.host=127.0.0.1", "--json",
    ]
    submit = ray_job_submit(ray_head, entrypoint, repo=repo_root, submission_id=submission_id, metadata=metadata)
    context = (f"--- ray job submit (exit {submit.returncode}):\n{submit.stdout[-4000:]}\n{submit.stderr[-3000:]}\n"
               f"--- head:\n{ray_head.diagnostics()}")
    try:
        status, info = job_info(ray_head, submission_id)
    except OSError as e:
        raise AssertionError(f"the head's job API is gone after job {submission_id}: {e}\n{context}") from e
    logs = job_logs(ray_head, submission_id) if status == 200 else ""
    assert status == 200 and info["status"] == "SUCCEEDED", f"job {submission_id}: {info}\n{context}\n--- logs:\n{logs[-6000:]}"
    return SmokeJob(submission_id, submit, info, logs, last_json_line(logs), storage,
                    f"http://127.0.0.1:{port}", metadata)


# ----------------------------------------------------------------------------- ray job submit


def test_smoke_pipeline_job_succeeds_and_logs_every_stage(smoke_job: SmokeJob):
    assert smoke_job.submit.returncode == 0, smoke_job.submit.stderr[-3000:]
    assert f"Job '{smoke_job.submission_id}' succeeded" in smoke_job.submit.stdout + smoke_job.submit.stderr
    for stage in STAGES:
        assert f"[{stage}] " in smoke_job.logs, f"stage {stage} missing from the job's logs"
    assert smoke_job.summary["stages"] == list(STAGES)
    assert smoke_job.summary["ray"]["mode"] == "cluster"  # joined the head, did not start its own Ray
    assert smoke_job.info["entrypoint"].startswith("python -m workloads.pipeline --smoke --config jobs/local.yaml")


def test_outputs_land_in_the_configured_storage_not_the_jobs_working_dir(smoke_job: SmokeJob):
    from workloads.registry import ModelRegistry

    s, storage = smoke_job.summary, smoke_job.storage
    checkpoint = Path(s["checkpoint"])
    assert checkpoint.is_relative_to(storage / "results") and checkpoint.is_dir(), s["checkpoint"]
    assert Path(s["selected_checkpoint"]).is_relative_to(storage / "results")
    assert Path(s["report"]).is_relative_to(storage / "results") and Path(s["report"]).is_file()
    assert any((storage / "lake").rglob("*.parquet"))
    registry = ModelRegistry(str(storage / "models"))
    assert registry.current(MODEL) == s["model_version"]
    assert (registry.local_path(MODEL) / "model_card.json").is_file()
    # The job ran in Ray's unpacked copy of the upload; none of its outputs went there.
    job = s["job"]
    assert "working_dir_files" in job["working_dir"] and job["working_dir_uri"].startswith("gcs://_ray_pkg_")
    assert not Path(job["working_dir"]).is_relative_to(storage)
    for name in ("lake", "results", "models"):
        assert not (Path(job["working_dir"]) / name).exists()


def test_job_metadata_is_recorded_with_the_results(smoke_job: SmokeJob):
    info_meta = smoke_job.info["metadata"]
    for key, value in smoke_job.metadata.items():
        assert info_meta[key] == value  # what `ray job status` / the dashboard show
    job = smoke_job.summary["job"]
    assert job["submission_id"] == smoke_job.submission_id and job["metadata"]["stage"] == "pipeline"
    assert job["storage"]["train.storage_path"] == str(smoke_job.storage / "results")
    record = smoke_job.storage / "results" / "jobs" / f"{smoke_job.submission_id}.json"
    assert job["record"] == str(record)
    saved = json.loads(record.read_text())
    assert saved["job"]["submission_id"] == smoke_job.submission_id
    assert saved["checkpoint"] == smoke_job.summary["checkpoint"]
    assert saved["stages"] == list(STAGES)


@pytest.mark.parametrize("token", [None, "not-the-cluster-token"], ids=["no-token", "wrong-token"])
def test_submission_without_the_token_is_refused(ray_head: RayHead, repo_root: Path, token):
    submission_id = f"rayspace-refused-{uuid.uuid4().hex[:8]}"
    done = ray_job_submit(ray_head, ["python", "-m", "workloads.pipeline", "--smoke", "--config", "jobs/local.yaml"],
                          repo=repo_root, submission_id=submission_id, token=token, timeout=180)
    assert done.returncode != 0
    expected = "Unauthorized: Missing authentication token" if token is None else "Forbidden: Invalid authentication token"
    assert expected in done.stderr, done.stderr[-2000:]
    # The API itself refuses the same request with 401/403 ...
    status, _ = ray_head.api("GET", "/api/jobs/", token=token)
    assert status == (401 if token is None else 403)
    # ... and no job was created.
    assert job_info(ray_head, submission_id)[0] == 404
    status, body = ray_head.api("GET", "/api/jobs/")
    assert status == 200 and submission_id not in {j.get("submission_id") for j in json.loads(body)}


def test_relative_storage_is_refused_as_a_job_naming_the_setting(ray_head: RayHead, repo_root: Path):
    submission_id = f"rayspace-relative-{uuid.uuid4().hex[:8]}"
    # The laptop defaults (./lake, ./results, ./models) would write into the job's temporary copy.
    done = ray_job_submit(ray_head, ["python", "-m", "workloads.pipeline", "--until", "ingest"],
                          repo=repo_root, submission_id=submission_id, timeout=300)
    status, info = job_info(ray_head, submission_id)
    assert status == 200 and info["status"] == "FAILED", info
    assert done.returncode != 0
    logs = job_logs(ray_head, submission_id)
    assert 'error: Got "./lake" for data.lake, "./results" for train.storage_path' in logs, logs[-3000:]
    assert "must be an absolute path or a URI inside a Ray job" in logs and "--config jobs/kuberay.yaml" in logs
    assert "train.storage_path" in logs and "registry.path" in logs
    assert "Traceback" not in logs  # a clear error, not a crash


# ------------------------------------------------------------------------------ Serve endpoint


def test_serve_endpoint_from_the_job_answers_after_the_job_ended(smoke_job: SmokeJob):
    import pyarrow.parquet as pq

    from workloads.model import load_checkpoint
    from workloads.registry import ModelRegistry
    from workloads.schema import FEATURE_NAMES, LABEL_COLUMN

    url = smoke_job.serve_url
    assert smoke_job.summary["endpoint"] == f"{url}/v1/models/{MODEL}:predict"
    status, health = http("GET", f"{url}/healthz")
    assert status == 200 and health["version"] == smoke_job.summary["model_version"]
    status, meta = http("GET", f"{url}/v1/models/{MODEL}")
    assert status == 200 and meta["ready"] is True and list(meta["feature_names"]) == list(FEATURE_NAMES)

    table = pq.read_table(next((smoke_job.storage / "lake").rglob("*.parquet"))).to_pandas().dropna().head(8)
    instances = [{f: float(row[f]) for f in FEATURE_NAMES} for _, row in table.iterrows()]
    status, answer = http("POST", f"{url}/v1/models/{MODEL}:predict", {"instances": instances})
    assert status == 200, answer
    assert answer["model_version"] == smoke_job.summary["model_version"]
    served = np.array([p["probability"] for p in answer["predictions"]])
    # The same version loaded here, from the registry the job wrote, gives the same probabilities.
    local = load_checkpoint(ModelRegistry(str(smoke_job.storage / "models")).local_path(MODEL))
    expected = local.predict_proba(table[list(FEATURE_NAMES)].to_numpy(dtype=np.float64))
    np.testing.assert_allclose(served, expected, atol=2e-6)
    assert [p["label"] for p in answer["predictions"]] == [int(p >= 0.5) for p in expected]
    assert set(table[LABEL_COLUMN].astype(int)) <= {0, 1}

    # Bad input: a 4xx with the reason, not a 500.
    status, err = http("POST", f"{url}/v1/models/{MODEL}:predict", {"instances": [{FEATURE_NAMES[0]: 1.0}]})
    assert status == 422 and "instances[0] has wrong feature names: missing" in err["error"]


def test_client_examples_against_the_endpoint(smoke_job: SmokeJob, repo_root: Path):
    from workloads.model import load_checkpoint
    from workloads.registry import ModelRegistry
    from workloads.schema import FEATURE_NAMES

    url = smoke_job.serve_url
    sh = subprocess.run(["bash", str(repo_root / "examples" / "predict.sh"), url], capture_output=True, text=True,
                        timeout=120)
    assert sh.returncode == 0, sh.stderr
    assert '{"models":["wdbc"]}' in sh.stdout and '"predictions":[' in sh.stdout
    assert "HTTP 422" in sh.stdout and "must have 30" in sh.stdout  # the bad request's reason

    py = subprocess.run([sys.executable, str(repo_root / "examples" / "predict.py"), url, "--json"],
                        capture_output=True, text=True, timeout=120)
    assert py.returncode == 0, py.stderr
    answer = json.loads(py.stdout)
    instances = json.loads((repo_root / "examples" / "instances.json").read_text())["instances"]
    local = load_checkpoint(ModelRegistry(str(smoke_job.storage / "models")).local_path(MODEL))
    expected = local.predict_proba(np.array([[i[f] for f in FEATURE_NAMES] for i in instances]))
    np.testing.assert_allclose([p["probability"] for p in answer["predictions"]], expected, atol=2e-6)

    refused = subprocess.run([sys.executable, str(repo_root / "examples" / "predict.py"), "--url", url, "--model", "nope"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "HTTP 404" in refused.stderr and "is not served here" in refused.stderr


_CLIENT_PROBE = """
import sys

import ray

ray.init(sys.argv[1], logging_level="ERROR")


@ray.remote(num_cpus=0)
def node_of_task() -> str:
    return ray.get_runtime_context().get_node_id()


# The task ran on a node of the cluster (the head), not in this client process.
print("ray-client-ok", ray.get(node_of_task.remote()) in {n["NodeID"] for n in ray.nodes()},
      ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


def test_ray_client_fallback_works_with_the_token(ray_head: RayHead, tmp_path: Path):
    """The laptop fallback of the notebook: ``ray://`` through the client port, with the token."""
    done = subprocess.run([sys.executable, "-c", _CLIENT_PROBE, ray_head.client_address], cwd=tmp_path,
                          env=ray_head.client_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n--- head:\n{ray_head.diagnostics()}"
    assert f"ray-client-ok True {float(ray_head.num_cpus)}" in done.stdout


@pytest.mark.parametrize("token", [None, "not-the-cluster-token"], ids=["no-token", "wrong-token"])
def test_ray_client_port_refuses_calls_without_the_token(ray_head: RayHead, token):
    """The port the notebook's laptop fallback (``ray://``) uses is token-protected too.

    Without the token, ``ray.init("ray://...")`` only reports "ray client connection timeout" after
    ~30 s of retries; the cause is this refusal, checked directly on the client server's gRPC API.
    """
    import grpc

    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(ray_head.client_address.removeprefix("ray://")) as channel:
        call = channel.unary_unary("/ray.rpc.RayletDriver/ClusterInfo")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=30, metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value


# ------------------------------------------------------------------------------------- notebook


def test_notebook_runs_top_to_bottom_against_the_head(ray_head: RayHead, smoke_job: SmokeJob, repo_root: Path,
                                                     tmp_path: Path):
    import nbformat
    from nbclient import NotebookClient

    # What a user on the head pod exports: the job config (storage) and where the endpoint is.
    config = tmp_path / "notebook.yaml"
    config.write_text(json.dumps({
        "data": {"lake": str(smoke_job.storage / "lake")},
        "train": {"storage_path": str(tmp_path / "nb-results")},
        "registry": {"path": str(smoke_job.storage / "models")},
        "serve": {"host": "127.0.0.1", "port": int(smoke_job.serve_url.rsplit(":", 1)[1])},
    }))
    env = ray_head.client_env(RAY_ADDRESS=ray_head.gcs_address, RAYSPACE_CONFIG=str(config),
                              RAYSPACE_NOTEBOOK_EPOCHS="3", MPLBACKEND="module://matplotlib_inline.backend_inline")
    path = repo_root / "notebooks" / "workspace.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)  # raises CellExecutionError (with the cell's traceback) if any cell fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "expected the learning curves and the ROC curve as images"
    assert f"connected to {ray_head.gcs_address}" in text
    assert "training finished" in text and "test ROC AUC" in text
    assert f"served by {MODEL} {smoke_job.summary['model_version']}" in text
    # The notebook's training wrote to its configured storage, through the head.
    assert any((tmp_path / "nb-results").rglob("checkpoint_*"))


# ------------------------------------------------------------------------------------ listeners


def test_head_listens_on_loopback_only(ray_head: RayHead, smoke_job: SmokeJob):
    """Last in the module: by now the head has run jobs, Serve, a notebook driver and a Ray Client session."""
    import grpc
    import psutil

    procs = ray_head.processes()
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in procs]
    assert listening, "found no listening socket of the head's processes"
    assert int(smoke_job.serve_url.rsplit(":", 1)[1]) in {c.laddr.port for c in listening}  # the Serve proxy is the head's
    exposed = [c for c in listening if c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    # Ray 2.60 Serve replicas open their inter-deployment gRPC server on [::]:0 whatever the node IP
    # (serve/_private/replica.py), with no setting to change it. It is the one listener allowed off loopback,
    # and only because Ray's token interceptor guards it: a call without the token is refused.
    for conn in exposed:
        assert "ServeReplica" in procs[conn.pid], (conn, procs[conn.pid])
        with grpc.insecure_channel(f"127.0.0.1:{conn.laddr.port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
