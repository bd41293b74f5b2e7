"""All storage on a real S3-compatible server (moto on loopback): one canonical ``s3://`` form end to end.

Everything is checked from the outside, through a pyarrow S3 filesystem configured
explicitly for the server: what is in the bucket, what the registry recorded, and
that nothing was written under the local working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from workloads import storage
from workloads.config import RegistryConfig
from workloads.model import load_checkpoint, read_checkpoint_meta
from workloads.registry import CARD_FILE, CURRENT_FILE, ModelRegistry, promote

pytestmark = pytest.mark.integration


def _key(uri: str) -> str:
    """``s3://bucket/key?query`` -> ``bucket/key`` (a path on the pyarrow S3 filesystem)."""
    assert uri.startswith("s3://"), uri
    return uri.removeprefix("s3://").split("?", 1)[0]


def _is_file(fs, uri: str) -> bool:
    return fs.get_file_info(_key(uri)).type == pafs.FileType.File


def _read(fs, uri: str) -> bytes:
    with fs.open_input_stream(_key(uri)) as f:
        return f.read()


def test_registry_round_trip_on_s3(s3_server, s3_prefix, tmp_path, monkeypatch):
    """promote -> versions/current -> local_path on s3:// (no Ray): URIs keep their scheme."""
    from serve.testing import make_checkpoint

    monkeypatch.chdir(tmp_path)
    first = make_checkpoint(tmp_path / "ckpt-a", seed=0)
    # The checkpoint itself lives in the bucket, as Ray Train leaves it.
    remote_ckpt = storage.join(s3_prefix, "results", "run-a", "checkpoint_000001")
    for f in sorted(first.iterdir()):
        storage.upload_file(f, storage.join(remote_ckpt, f.name))
    root = storage.join(s3_prefix, "models")
    cfg = RegistryConfig(path=root + "/", model_name="wdbc")
    reg = ModelRegistry(cfg.path, cache_dir=str(tmp_path / "cache"))

    res = promote(cfg, remote_ckpt, {"test_roc_auc": 0.9}, registry=reg)
    assert res.promoted and res.version == "v1" and res.uri == f"{root}/wdbc/v1"
    second = promote(cfg, first, {"test_roc_auc": 0.5}, registry=reg)
    assert not second.promoted and second.uri.startswith("s3://")

    fs = s3_server.filesystem()
    card = json.loads(_read(fs, f"{root}/wdbc/v1/{CARD_FILE}"))
    assert card["source_checkpoint"] == remote_ckpt
    assert json.loads(_read(fs, f"{root}/wdbc/{CURRENT_FILE}"))["version"] == "v1"
    assert reg.versions("wdbc") == ["v1", "v2"] and reg.current("wdbc") == "v1"
    assert reg.get("wdbc").uri == f"{root}/wdbc/v1"
    assert load_checkpoint(reg.local_path("wdbc")).meta["train_config"]["seed"] == 0
    # Nothing landed in the working directory (the cache dir is the only local copy, where it was asked).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ckpt-a"]


def test_pipeline_with_all_storage_on_s3_writes_nothing_locally(s3_server, tmp_path, repo_root):
    """ingest -> train -> evaluate -> tune -> promote as a user runs it, every setting on s3://."""
    prefix = f"s3://{s3_server.bucket}/pipeline"
    lake, results, models = f"{prefix}/lake", f"{prefix}/results", f"{prefix}/models"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSPACE_CONFIG")}
    env.update(s3_server.env)
    env["PYTHONPATH"] = str(repo_root)  # the job runs from an empty directory, as a job's driver would
    repo_entries = set(os.listdir(repo_root))
    cmd = [
        sys.executable, "-m", "workloads.pipeline", "--smoke", "--json", "--until", "promote",
        "--lake", lake, "--storage", results, "--registry", models,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The summary is the last JSON line: Ray's log monitor may print a raylet warning after it (seen on 2 cores).
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["stages"] == ["ingest", "process", "train", "evaluate", "tune", "promote"]
    fs = s3_server.filesystem()

    # Training: the best checkpoint comes back with its scheme, and it is in the bucket.
    ckpt = summary["checkpoint"]
    assert ckpt.startswith(f"{results}/"), ckpt
    assert _is_file(fs, f"{ckpt}/model.json") and _is_file(fs, f"{ckpt}/model.pt")
    # The report is beside the run in the configured storage, not in a local temp dir.
    run_name = storage.name(storage.parent(ckpt))
    assert summary["report"] == f"{results}/reports/{run_name}/report.json"
    report = json.loads(_read(fs, summary["report"]))
    assert report["checkpoint"] == ckpt and report["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert _is_file(fs, f"{results}/reports/{run_name}/report.png")

    # Tune: the trial table is in the bucket and every trial's best checkpoint is an s3:// URI that exists.
    sweep = summary["sweep"]
    assert sweep["path"].startswith(f"{results}/") and sweep["table"] == f"{sweep['path']}/trials.csv"
    trials = json.loads(_read(fs, f"{sweep['path']}/trials.json"))
    finished = [t for t in trials["trials"] if t["status"] != "ERROR"]
    assert finished, trials
    for t in finished:
        assert t["best_checkpoint"].startswith(f"{sweep['path']}/"), t["best_checkpoint"]
        assert _is_file(fs, f"{t['best_checkpoint']}/model.json")
    best = trials["best_trial"]["best_checkpoint"]
    local_best = tmp_path / "best"
    local_best.mkdir()
    pafs.copy_files(_key(best), str(local_best), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    assert read_checkpoint_meta(local_best)["epoch"] >= 1  # hash-verified: a complete checkpoint

    # Registry: the version, its card and the current pointer are in the bucket; recorded URIs keep s3://.
    promotion = summary["promotion"]
    assert promotion["promoted"] and promotion["current"] == "v1"
    card = json.loads(_read(fs, f"{models}/wdbc/v1/{CARD_FILE}"))
    assert card["source_checkpoint"] == summary.get("selected_checkpoint", ckpt)
    assert card["source_checkpoint"].startswith(f"{results}/")
    assert card["test_metrics"]["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert json.loads(_read(fs, f"{models}/wdbc/{CURRENT_FILE}"))["version"] == "v1"
    assert _is_file(fs, f"{models}/wdbc/v1/model.pt")

    # The lake too.
    lake_files = fs.get_file_info(pafs.FileSelector(_key(lake), recursive=True))
    assert any(i.path.endswith(".parquet") for i in lake_files)

    # Nothing was written under the working directory (nor a stray "s3:" folder in the repository).
    assert list(cwd.iterdir()) == []
    assert not {"s3:", s3_server.bucket} & (set(os.listdir(repo_root)) - repo_entries)

