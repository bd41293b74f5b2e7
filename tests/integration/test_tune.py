"""A Ray Tune sweep in tiny mode: seeded sampling, ASHA, a failed trial reported, the best chosen."""

from __future__ import annotations

import csv
import json

import pytest

from workloads import lake
from workloads.config import load_config

pytestmark = pytest.mark.integration


def test_tiny_sweep_reports_every_trial_and_picks_the_best(ray_local, tmp_path):
    from tune.sweep import run_sweep, sample_configs

    lake.ingest(str(tmp_path / "lake"))
    cfg = load_config(overrides={
        "data.lake": str(tmp_path / "lake"),
        "tune.storage_path": str(tmp_path / "sweeps"),
        "train.hidden": 16, "train.depth": 1, "train.max_failures": 0,
        "tune.num_samples": 3, "tune.seed": 7,
        # ASHA may not stop a trial before it reaches the injected failure at epoch 2: grace spans every epoch.
        "tune.grace_period": 3,
        "tune.search_space": {
            "lr": {"kind": "loguniform", "low": 1e-3, "high": 3e-2},
            "epochs": {"kind": "choice", "values": [3]},
            # One trial is made to fail: a failed trial must be reported, not end the sweep.
            "fail_at_epoch": {"kind": "choice", "values": [None, 2]},
        },
    })
    planned = sample_configs(cfg.tune)
    failing = [c for c in planned if c["fail_at_epoch"] == 2]
    assert 0 < len(failing) < len(planned), "seed 7 must plan both failing and healthy trials"

    result = run_sweep(cfg)

    assert len(result.trials) == 3
    assert sorted(json.dumps(t.config, sort_keys=True) for t in result.trials) == sorted(
        json.dumps(c, sort_keys=True) for c in planned
    ), "the seeded searcher must draw exactly the planned configs"
    errored = [t for t in result.trials if t.status == "ERROR"]
    assert len(errored) == len(failing)
    assert all("injected failure" in (t.error or "") for t in errored)
    healthy = [t for t in result.trials if t.status != "ERROR"]
    assert result.best in healthy
    assert result.best.best_metric == max(t.best_metric for t in healthy if t.best_metric is not None)
    assert result.best.best_checkpoint and result.best.best_checkpoint.startswith(str(tmp_path / "sweeps"))
    assert result.concurrency >= 1
    with open(result.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED", "ERROR"}
    saved = json.loads(open(result.files["json"]).read())
    assert saved["best_trial"]["trial_id"] == result.best.trial_id
