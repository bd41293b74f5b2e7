"""workloads.storage: canonical locations, scheme round trips, atomic writes; local and memory:// only (no network)."""

from __future__ import annotations

import os

import pytest

from workloads import storage
from workloads.config import load_config
from workloads.exceptions import ConfigError, StorageError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/data/results/", "/data/results"),
        ("/data//results/./run", "/data/results/run"),
        ("file:///data/results/", "/data/results"),
        ("s3://bucket/results/", "s3://bucket/results"),
        ("S3://bucket/results", "s3://bucket/results"),
        ("s3://bucket", "s3://bucket"),
        ("gs://bucket/a/b", "gs://bucket/a/b"),
        ("s3://bucket/r/?endpoint_override=127.0.0.1:9000&scheme=http",
         "s3://bucket/r?endpoint_override=127.0.0.1:9000&scheme=http"),
        ("memory://t/models", "memory://t/models"),
    ],
)
def test_canonical_forms(value, expected):
    assert storage.canonical(value) == expected
    assert storage.canonical(expected) == expected  # idempotent


def test_relative_and_home_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.canonical("./results") == str(tmp_path / "results")
    assert storage.canonical("file://results") == str(tmp_path / "results")
    assert storage.canonical("~/models") == str(tmp_path / "home" / "models")


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "must be a local path or a URI"),
        ("s3://", "s3:// names no location"),
        ("s3:///results", "must be followed by the bucket"),
        ("s3:/bucket/results", "looks like a URI without '//'"),
        ("nosuchscheme://x/y", "unknown scheme nosuchscheme://"),
        ("file://", "file:// names no path"),
        (" /data", "whitespace"),
    ],
)
def test_check_names_the_rule(value, rule):
    with pytest.raises(ValueError, match=rule):
        storage.check(value)
    with pytest.raises(StorageError, match=rule):
        storage.canonical(value)


@pytest.mark.parametrize("field", ["data.lake", "train.storage_path", "tune.storage_path", "registry.path"])
def test_config_storage_fields_are_checked_at_load_time(field):
    with pytest.raises(ConfigError) as err:
        load_config(None, {field: "s3:///results"})
    assert str(err.value).startswith(f'Got "s3:///results" for {field}: ')
    assert "bucket" in str(err.value)
    assert err.value.problems[0][0] == field
    # A valid URI passes untouched (canonicalization happens where it is used).
    assert load_config(None, {field: "s3://bucket/x/"}).model_dump()[field.split(".")[0]][field.split(".")[1]] == \
        "s3://bucket/x/"


def test_join_parent_name_keep_scheme_and_query():
    base = "s3://bucket/results?endpoint_override=127.0.0.1:9000&scheme=http"
    run = storage.join(base, "run-1", "/checkpoint_2/")
    assert run == "s3://bucket/results/run-1/checkpoint_2?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.name(run) == "checkpoint_2"
    assert storage.parent(run) == "s3://bucket/results/run-1?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("/data/results", "reports", "r") == "/data/results/reports/r"
    assert storage.parent("/data/results/run") == "/data/results"


@pytest.mark.parametrize(
    ("base", "fs_path", "expected"),
    [
        # What Ray Train and Tune report for storage_path=s3://bucket/results: no scheme.
        ("s3://bucket/results", "bucket/results/run/checkpoint_1", "s3://bucket/results/run/checkpoint_1"),
        ("gs://bucket/r", "bucket/r/run/checkpoint_1/", "gs://bucket/r/run/checkpoint_1"),
        ("s3://b/r?endpoint_override=h:1", "b/r/x", "s3://b/r/x?endpoint_override=h:1"),
        # pyarrow's HDFS paths leave out the namenode.
        ("hdfs://namenode:8020/results", "/results/run", "hdfs://namenode:8020/results/run"),
        ("memory://t/results", "/t/results/run", "memory://t/results/run"),
        ("/data/results", "/data/results/run/checkpoint_1", "/data/results/run/checkpoint_1"),
        ("file:///data/results", "/data/results/run", "/data/results/run"),
        # Already a URI: only made canonical.
        ("s3://bucket/results", "s3://bucket/results/run/", "s3://bucket/results/run"),
    ],
)
def test_from_fs_path_puts_the_scheme_back(base, fs_path, expected):
    assert storage.from_fs_path(base, fs_path) == expected


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_write_read_list_download_round_trip(kind, tmp_path):
    root = str(tmp_path / "store") if kind == "local" else f"memory://rayspace-storage-{os.getpid()}/{tmp_path.name}"
    ckpt = storage.join(root, "run", "checkpoint_1")
    assert not storage.exists(ckpt) and storage.list_dir(ckpt) == []
    written = storage.write_bytes(storage.join(ckpt, "model.json"), b'{"epoch": 1}')
    assert written == storage.join(ckpt, "model.json")
    storage.upload_file(_local_file(tmp_path, b"weights"), storage.join(ckpt, "model.pt"))
    assert storage.exists(ckpt) and storage.is_dir(ckpt) and not storage.is_dir(written)
    assert storage.read_bytes(written) == b'{"epoch": 1}'
    assert storage.list_dir(storage.join(root, "run")) == [("checkpoint_1", True)]
    assert storage.list_dir(ckpt) == [("model.json", False), ("model.pt", False)]
    local = storage.download_dir(ckpt, tmp_path / "down")
    assert (local / "model.pt").read_bytes() == b"weights"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(ckpt, "missing.json"))
    with pytest.raises(FileNotFoundError):
        storage.download_dir(storage.join(root, "nothing"), tmp_path / "none")


def _local_file(tmp_path, data: bytes):
    p = tmp_path / "src.bin"
    p.write_bytes(data)
    return p


def test_local_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    target = str(tmp_path / "reports" / "report.json")
    storage.write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="report.json: cannot write it"):
        storage.write_bytes(target, b"new")
    monkeypatch.undo()
    assert open(target, "rb").read() == b"old"
    assert os.listdir(tmp_path / "reports") == ["report.json"]  # no temp file left behind


def test_unopenable_scheme_is_a_storage_error(monkeypatch):
    # A scheme fsspec knows by name but whose package is missing (what s3fs-less fsspec did for s3:// before).
    with pytest.raises(StorageError, match="no pyarrow or fsspec filesystem opens it"):
        storage.filesystem("oci://bucket/results")


def test_tune_best_checkpoint_gets_the_storage_scheme_back():
    """TuneReportCallback reports ``bucket/...`` for s3:// storage; the trial row must say ``s3://bucket/...``."""
    from types import SimpleNamespace

    import pandas as pd

    from tune.sweep import CHECKPOINT_PATH_KEY, _row

    df = pd.DataFrame({
        "training_iteration": [1, 2],
        "val_roc_auc": [0.91, 0.95],
        CHECKPOINT_PATH_KEY: ["bucket/results/sweep/t1/checkpoint_1", "bucket/results/sweep/t1/checkpoint_2"],
    })
    result = SimpleNamespace(metrics_dataframe=df, config={"epochs": 2}, error=None,
                             metrics={"trial_id": "t1"}, path="bucket/results/sweep/t1")
    row = _row(result, "val_roc_auc", "max", 2, "s3://bucket/results/sweep")
    assert row.best_checkpoint == "s3://bucket/results/sweep/t1/checkpoint_2"
    assert row.best_metric == pytest.approx(0.95)
    # Local storage: Ray reports absolute paths, which stay as they are.
    df[CHECKPOINT_PATH_KEY] = ["/data/results/sweep/t1/checkpoint_1", "/data/results/sweep/t1/checkpoint_2"]
    local = _row(result, "val_roc_auc", "min", 2, "/data/results/sweep")
    assert local.best_checkpoint == "/data/results/sweep/t1/checkpoint_1"


def test_evaluate_reads_remote_checkpoints_and_their_run_history(tmp_path):
    """A checkpoint URI is fetched into a scratch dir; the learning curve comes from its siblings in storage."""
    import json

    from serve.testing import make_checkpoint
    from workloads.evaluate import _localize, _run_history
    from workloads.exceptions import CheckpointError

    run = f"memory://rayspace-eval-{os.getpid()}/results/run-1"
    best, later = storage.join(run, "checkpoint_2"), storage.join(run, "checkpoint_3")
    src = make_checkpoint(tmp_path / "src")
    for f in src.iterdir():
        storage.upload_file(f, storage.join(best, f.name))
    storage.write_bytes(storage.join(later, "model.json"), json.dumps({"history": [{"epoch": e} for e in (1, 2, 3)]}).encode())
    storage.write_bytes(storage.join(run, "checkpoint_9", "model.pt"), b"half-written: no model.json yet")

    local = _localize(best, str(tmp_path / "scratch"))
    assert local.startswith(str(tmp_path / "scratch")) and sorted(os.listdir(local)) == sorted(os.listdir(src))
    assert [h["epoch"] for h in _run_history(best, {"history": [{"epoch": 1}, {"epoch": 2}]})] == [1, 2, 3]
    with pytest.raises(CheckpointError, match="no such directory"):
        _localize(storage.join(run, "checkpoint_404"), str(tmp_path / "scratch"))
