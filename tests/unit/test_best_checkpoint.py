"""Best-checkpoint selection survives a NaN validation metric (one class in the validation split).

Built on Ray's own ``ray.train.Result`` and ``Checkpoint`` (no Ray cluster is started).
"""

from __future__ import annotations

import math

import pytest
from ray.train import Checkpoint, Result

from workloads.train import best_checkpoint


def _result(tmp_path, scores: list[object]) -> tuple[Result, list[Checkpoint]]:
    checkpoints = [Checkpoint.from_directory(str(tmp_path / f"checkpoint_{i:06d}")) for i in range(len(scores))]
    kept = [(c, {} if s is ... else {"val_roc_auc": s}) for c, s in zip(checkpoints, scores)]
    return Result(metrics={}, checkpoint=checkpoints[-1], error=None, path=str(tmp_path), best_checkpoints=kept), checkpoints


def test_a_nan_score_is_never_the_best(tmp_path):
    result, ckpts = _result(tmp_path, [math.nan, 0.9, 0.8])
    # What broke: Ray ranks NaN like a number, and a NaN first wins every comparison.
    assert result.get_best_checkpoint("val_roc_auc", "max").path == ckpts[0].path
    assert best_checkpoint(result, "val_roc_auc", "max").path == ckpts[1].path
    assert best_checkpoint(result, "val_roc_auc", "min").path == ckpts[2].path


def test_no_finite_score_falls_back_to_the_latest_checkpoint(tmp_path, caplog):
    result, ckpts = _result(tmp_path, [math.nan, math.nan, math.nan])
    assert best_checkpoint(result, "val_roc_auc", "max").path == ckpts[-1].path
    assert "no checkpoint has a finite val_roc_auc" in caplog.text


def test_a_missing_metric_falls_back_instead_of_raising(tmp_path):
    result, ckpts = _result(tmp_path, [..., None])
    # What broke: Ray raises here rather than returning None, so `... or result.checkpoint` never ran.
    with pytest.raises(RuntimeError, match="Invalid metric name"):
        result.get_best_checkpoint("val_roc_auc", "max")
    assert best_checkpoint(result, "val_roc_auc", "max").path == ckpts[-1].path


def test_a_run_without_checkpoints_gives_none(tmp_path):
    result = Result(metrics={}, checkpoint=None, error=None, path=str(tmp_path), best_checkpoints=[])
    assert best_checkpoint(result, "val_roc_auc", "max") is None  # train() turns this into a TrainingError
