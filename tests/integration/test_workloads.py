"""Processing, training (with an injected failure) and evaluation on a real local Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workloads import lake
from workloads.config import load_config
from workloads.data import SPLIT_COLUMN, process, split_datasets, split_of
from workloads.exceptions import TrainingError
from workloads.schema import FEATURE_NAMES, ID_COLUMN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    lake.ingest(str(root))
    return str(root)


def _cfg(lake_dir, tmp_path, **train):
    overrides = {"data.lake": lake_dir, "train.storage_path": str(tmp_path / "results"), "train.hidden": 16,
                 "train.depth": 1, "train.batch_size": 64}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return load_config(overrides=overrides)


def test_splits_hold_every_patient_once(ray_local, lake_dir):
    cfg = load_config(overrides={"data.lake": lake_dir})
    splits, manifests = split_datasets(cfg.data)
    ids = {name: set(ds.to_pandas()[ID_COLUMN]) for name, ds in splits.items()}
    assert sum(len(v) for v in ids.values()) == 569
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    # The Ray Data split agrees with the pure function (so evaluation and serving re-derive it exactly).
    for name, members in ids.items():
        assert all(split_of(i, cfg.data.split_salt, 0.15, 0.15) == name for i in members)
    assert manifests[0].row_count == 569


def test_standardization_is_fitted_on_the_training_split_only(ray_local, lake_dir):
    cfg = load_config(overrides={"data.lake": lake_dir})
    processed = process(cfg.data)
    df = lake.builtin_frame()
    df[SPLIT_COLUMN] = [split_of(i, cfg.data.split_salt, 0.15, 0.15) for i in df[ID_COLUMN]]
    train = df[df[SPLIT_COLUMN] == "train"][list(FEATURE_NAMES)]
    everyone = df[list(FEATURE_NAMES)]
    np.testing.assert_allclose(processed.standardizer.mean, train.mean().to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(processed.standardizer.scale, train.std(ddof=0).to_numpy(), rtol=1e-9)
    assert not np.allclose(processed.standardizer.mean, everyone.mean().to_numpy(), rtol=1e-6)
    batch = processed.datasets["train"].take_batch(1000, batch_format="numpy")
    assert batch["x"].shape[1] == 30
    # Standardized training features: mean 0, std 1 (by construction, on the training split).
    np.testing.assert_allclose(batch["x"].mean(axis=0), 0, atol=1e-5)
    assert processed.counts["train"] + processed.counts["val"] + processed.counts["test"] == 569


@pytest.fixture(scope="module")
def recovered_run(ray_local, lake_dir, tmp_path_factory):
    """One 2-worker run in which a worker dies at epoch 2 (shared by the tests below: each fit costs ~20 s)."""
    from workloads.train import train

    tmp = tmp_path_factory.mktemp("recovered")
    cfg = _cfg(lake_dir, tmp, num_workers=2, epochs=4, lr=0.01, fail_at_epoch=2, max_failures=1)
    return cfg, tmp, train(cfg)


def test_two_workers_resume_from_checkpoint_after_injected_failure(recovered_run):
    """A worker dies at epoch 2; FailureConfig restarts the group, which resumes from epoch 1's checkpoint.

    The injected failure only fires in a run that did not resume, so finishing with
    ``max_failures=1`` proves the restart resumed rather than started over.
    """
    from workloads.model import load_checkpoint, read_checkpoint_meta

    cfg, tmp, result = recovered_run
    assert result.num_workers == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    meta = read_checkpoint_meta(result.checkpoint)
    assert meta["train_config"]["fail_at_epoch"] == 2
    assert meta["data_fingerprint"] == result.data_fingerprint
    model = load_checkpoint(result.checkpoint)
    probs = model.predict_proba(lake.builtin_frame()[list(FEATURE_NAMES)].to_numpy()[:20])
    assert probs.shape == (20,) and ((probs >= 0) & (probs <= 1)).all()
    assert 0.5 < result.metrics["val_roc_auc"] <= 1.0
    assert result.checkpoint.startswith(str(tmp / "results"))


def test_without_retries_the_injected_failure_fails_the_run(ray_local, lake_dir, tmp_path):
    from workloads.train import train

    cfg = _cfg(lake_dir, tmp_path, num_workers=1, epochs=2, fail_at_epoch=2, max_failures=0)
    with pytest.raises(TrainingError, match="injected failure"):
        train(cfg)


def test_evaluate_writes_json_and_png(recovered_run, tmp_path):
    from workloads.evaluate import evaluate

    cfg, _, result = recovered_run
    report = evaluate(cfg, result.checkpoint, output_dir=str(tmp_path / "report"))
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["test_rows"] == report["test_rows"] == result.counts["test"]
    tn, fp = saved["confusion_matrix"][0]
    fn, tp = saved["confusion_matrix"][1]
    assert tn + fp + fn + tp == saved["test_rows"]
    assert saved["test_accuracy"] == pytest.approx((tn + tp) / saved["test_rows"])
    assert saved["test_roc_auc"] > 0.9
    png = (tmp_path / "report" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list((tmp_path / "report").glob(".*")), "no temporary files left beside the report"
