"""Pure processing functions: split by patient hash, cleaning, standardization, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workloads.data import assign_splits, clean_batch, split_of, standardize_batch
from workloads.evaluate import compute_metrics
from workloads.lake import builtin_frame
from workloads.model import Standardizer
from workloads.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN


def test_split_is_a_pure_function_of_id_and_salt():
    ids = [f"p{i}" for i in range(5000)]
    a = [split_of(i, "s", 0.15, 0.15) for i in ids]
    b = [split_of(i, "s", 0.15, 0.15) for i in reversed(ids)][::-1]
    assert a == b, "order of arrival must not matter"
    c = [split_of(i, "other-salt", 0.15, 0.15) for i in ids]
    assert a != c, "the salt must change the assignment"
    counts = pd.Series(a).value_counts(normalize=True)
    assert counts["test"] == pytest.approx(0.15, abs=0.02)
    assert counts["val"] == pytest.approx(0.15, abs=0.02)


def test_no_patient_in_two_splits_even_with_repeated_rows():
    df = builtin_frame()
    doubled = pd.concat([df, df.sample(frac=1.0, random_state=1)], ignore_index=True)
    tagged = assign_splits(doubled, "rayspace-v1", 0.15, 0.15)
    per_patient = tagged.groupby(ID_COLUMN)["split"].nunique()
    assert (per_patient == 1).all()


def test_adding_patients_never_moves_existing_ones():
    df = builtin_frame()
    before = assign_splits(df.iloc[:300], "k", 0.2, 0.2).set_index(ID_COLUMN)["split"]
    after = assign_splits(df, "k", 0.2, 0.2).set_index(ID_COLUMN)["split"]
    assert (after.loc[before.index] == before).all()


def test_clean_drop_and_flag():
    df = builtin_frame().head(10).copy()
    df.loc[2, "mean_area"] = np.nan
    dropped = clean_batch(df, "drop")
    assert len(dropped) == 9 and "wdbc-00002" not in set(dropped[ID_COLUMN])
    flagged = clean_batch(df, "flag")
    assert len(flagged) == 10
    assert flagged.loc[flagged[ID_COLUMN] == "wdbc-00002", "has_missing"].item() == 1
    assert flagged["has_missing"].sum() == 1


def test_standardize_imputes_missing_with_training_mean():
    df = builtin_frame().head(4).copy()
    df.loc[1, "mean_radius"] = np.nan
    cleaned = clean_batch(df, "flag")
    mean = np.full(len(FEATURE_NAMES), 10.0)
    scale = np.full(len(FEATURE_NAMES), 2.0)
    out = standardize_batch(cleaned, mean, scale)
    assert out["x"].shape == (4, 30) and out["x"].dtype == np.float32
    assert out["x"][1, 0] == 0.0  # imputed at the mean
    assert out["x"][0, 0] == pytest.approx((df.loc[0, "mean_radius"] - 10.0) / 2.0)
    assert out["y"].tolist() == df[LABEL_COLUMN].astype(float).tolist()


def test_standardizer_round_trip_and_constant_feature():
    std = Standardizer.from_moments(("a", "b"), 4, np.array([4.0, 8.0]), np.array([6.0, 16.0]))
    assert std.mean.tolist() == [1.0, 2.0]
    assert std.scale[1] == 1.0, "a constant feature is centred, not divided by zero"
    again = Standardizer.from_dict(std.to_dict())
    assert np.allclose(again.transform([[1.0, 2.0]]), [[0.0, 0.0]])
    from workloads.exceptions import DataError

    with pytest.raises(DataError, match="feature 'b' has 1 values"):
        Standardizer.from_moments(("a", "b"), np.array([5, 1]), np.array([4.0, 8.0]), np.array([6.0, 64.0]))


def test_metrics_and_confusion_matrix():
    probs = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    m = compute_metrics(probs, labels)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]  # [[tn, fp], [fn, tp]]
    assert m["test_accuracy"] == pytest.approx(4 / 6)
    assert m["test_precision"] == pytest.approx(2 / 3)
    assert m["test_recall"] == pytest.approx(2 / 3)
    assert m["test_roc_auc"] == pytest.approx(8 / 9)


def test_open_snapshot_resolves_once_pins_and_leases(tmp_path):
    from workloads import lake
    from workloads.config import DataConfig
    from workloads.data import open_snapshot
    from workloads.exceptions import LakeNotFoundError

    root = str(tmp_path / "lake")
    with pytest.raises(LakeNotFoundError, match="rayspace data ingest"):
        open_snapshot(DataConfig(lake=root))
    first = lake.ingest(root)
    src = tmp_path / "more.csv"
    builtin_frame().assign(mean_radius=lambda d: d["mean_radius"] * 1.1).to_csv(src, index=False)
    second = lake.ingest(root, str(src), name="wdbc")
    try:
        current = open_snapshot(DataConfig(lake=root))
        pinned = open_snapshot(DataConfig(lake=root, snapshot=first.snapshot))
        assert (current.id, pinned.id) == (second.snapshot, first.snapshot)
        assert pinned.manifests[0].content_hash == first.content_hash
        assert sorted(l.snapshot for l in lake.list_leases(root)) == [first.snapshot, second.snapshot]
        assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == [], "leased snapshots are kept"
    finally:
        lake.release_held()
    assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == [first.snapshot]


def test_validation_uses_the_workers_device_and_returns_host_arrays():
    """The device path of GPU training, exercised on the CPU with an explicit device."""
    import numpy as np
    import torch

    from workloads.train import _gather_preds

    class Shard:
        def __init__(self):
            self.kwargs = []

        def iter_torch_batches(self, **kwargs):
            self.kwargs.append(kwargs)
            device = kwargs.get("device") or torch.device("cpu")
            yield {"x": torch.ones(4, 3, device=device), "y": torch.tensor([0.0, 1.0, 0.0, 1.0], device=device)}

    shard = Shard()
    model = torch.nn.Linear(3, 1)
    probs, labels, loss = _gather_preds(model, shard, 32, torch.device("cpu"))
    assert shard.kwargs[0]["device"] == torch.device("cpu")
    assert isinstance(probs, np.ndarray) and probs.shape == (4,) and list(labels) == [0, 1, 0, 1]
    assert np.isfinite(loss)
