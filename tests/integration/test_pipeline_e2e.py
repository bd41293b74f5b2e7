"""`rayspace run --smoke --json` end to end, as a user runs it: a fresh process with its own local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from workloads.runtime import free_loopback_port

pytestmark = pytest.mark.integration


def test_smoke_run_goes_from_raw_data_to_a_served_prediction(tmp_path, repo_root):
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSPACE_CONFIG")}
    cmd = [
        sys.executable, "-m", "workloads.pipeline", "--smoke", "--json",
        "--lake", str(tmp_path / "lake"), "--storage", str(tmp_path / "results"),
        "--registry", str(tmp_path / "models"), "--set", f"serve.port={port}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    summary = json.loads(last)  # the last line of stdout is one JSON object

    assert summary["stages"] == ["ingest", "process", "train", "evaluate", "tune", "promote", "serve"]
    for key in ("test_accuracy", "test_roc_auc", "checkpoint", "elapsed_s", "endpoint", "model_version", "best_trial"):
        assert key in summary, key
    assert 0.8 <= summary["test_accuracy"] <= 1.0 and 0.8 <= summary["test_roc_auc"] <= 1.0
    assert summary["checkpoint"].startswith(str(tmp_path / "results"))
    assert summary["endpoint"] == f"http://127.0.0.1:{port}/v1/models/wdbc:predict"
    assert summary["model_version"] == "v1"
    assert summary["sweep"]["trials"] == 2
    pred = summary["prediction"]
    assert pred["label"] in (0, 1) and 0.0 <= pred["probability"] <= 1.0
    # The lake is versioned: snapshot 1 holds one immutable version of source=wdbc, and the run names it.
    assert len(list((tmp_path / "lake" / "patients" / "source=wdbc").glob("v*/_manifest.json"))) == 1
    assert summary["data_fingerprint"].endswith("@snapshot-1")
    assert (tmp_path / "models" / "wdbc" / "v1" / "model_card.json").is_file()
    card = json.loads((tmp_path / "models" / "wdbc" / "v1" / "model_card.json").read_text())
    assert card["test_metrics"]["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert card["data_manifest_hash"] == summary["data_fingerprint"]
    assert os.path.isfile(summary["report"])
    # Stages report progress on stderr under --json (stdout stays machine-readable).
    assert "[train]" in proc.stderr and "[serve]" in proc.stderr
    # A local run stops what it started: the endpoint is gone once the command returns.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3)
