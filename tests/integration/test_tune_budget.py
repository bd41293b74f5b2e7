"""``tune.time_budget_s`` stops the running trials (Ray's TimeoutStopper), and the table says so, not "ASHA"."""

from __future__ import annotations

import csv

import pytest

from workloads import lake
from workloads.config import load_config

pytestmark = pytest.mark.integration


def test_trials_cut_by_the_time_budget_are_labelled_as_such(ray_local, tmp_path):
    from tune.sweep import run_sweep

    lake.ingest(str(tmp_path / "lake"))
    cfg = load_config(overrides={
        "data.lake": str(tmp_path / "lake"),
        "tune.storage_path": str(tmp_path / "sweeps"),
        "train.hidden": 8, "train.depth": 1, "train.max_failures": 0,
        # One trial at a time, each planned far longer than the budget: the budget must cut the running
        # trial mid-way and the second one before it starts. ASHA's first rung is at the last epoch, so
        # ASHA stops nothing here.
        "tune.num_samples": 2, "tune.max_concurrent_trials": 1, "tune.seed": 3,
        "tune.grace_period": 10_000, "tune.time_budget_s": 45,
        "tune.search_space": {"lr": {"kind": "loguniform", "low": 1e-3, "high": 1e-2},
                              "epochs": {"kind": "choice", "values": [10_000]}},
    })

    result = run_sweep(cfg)

    assert len(result.trials) == 2
    assert all(t.epochs_run < t.epochs_planned for t in result.trials)
    assert [t.stopped_by for t in result.trials] == ["time budget", "time budget"], result.trials
    assert not any(t.stopped_early for t in result.trials)  # not counted as stopped early by ASHA
    assert max(t.epochs_run for t in result.trials) >= 1  # a running trial was stopped, not only a pending one
    with open(result.files["csv"]) as f:
        assert {r["stopped_by"] for r in csv.DictReader(f)} == {"time budget"}
