"""A validation split with one class: no ROC AUC (NaN) in any epoch, and training still picks a checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from workloads import lake
from workloads.config import load_config
from workloads.data import split_of
from workloads.schema import ID_COLUMN, LABEL_COLUMN

pytestmark = pytest.mark.integration


def test_one_class_validation_split_still_selects_the_latest_checkpoint(ray_local, tmp_path):
    from workloads.train import train

    cfg = load_config(overrides={
        "data.lake": str(tmp_path / "lake"), "train.storage_path": str(tmp_path / "results"),
        "train.hidden": 8, "train.depth": 1, "train.epochs": 3, "train.num_workers": 1,
    })
    df = lake.builtin_frame()
    val = [split_of(i, cfg.data.split_salt, cfg.data.val_fraction, cfg.data.test_fraction) == "val" for i in df[ID_COLUMN]]
    df.loc[val, LABEL_COLUMN] = 0  # every validation patient benign: ROC AUC is undefined
    df.to_csv(tmp_path / "one-class-val.csv", index=False)
    lake.ingest(cfg.data.lake, str(tmp_path / "one-class-val.csv"))

    result = train(cfg)

    assert all(math.isnan(h["val_roc_auc"]) for h in result.history)
    # No finite score to rank: the run's latest checkpoint, not whichever NaN came first.
    meta = json.loads((Path(result.checkpoint) / "model.json").read_text())
    assert meta["epoch"] == max(h["epoch"] for h in result.history), (meta["epoch"], result.history)
