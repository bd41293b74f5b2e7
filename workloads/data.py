"""Processing with Ray Data: read the lake, clean, split by patient, standardize.

Everything here stays a lazy, streaming :class:`ray.data.Dataset`. The only
values brought to the driver are small aggregates (row counts and the training
split's feature moments), never the rows themselves.

Splitting hashes the patient id (with a salt from config), so the split of a
patient never changes when data is added, and no patient lands in two splits.

A run reads one lake snapshot: :func:`open_snapshot` resolves the pointer once
(or takes ``data.snapshot``), leases it, and Ray Data reads exactly the files that
snapshot lists, so ingests during the run change nothing it reads. The
fingerprint recorded with the run names that snapshot (``...@snapshot-<id>``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workloads.config import DataConfig
from workloads.exceptions import DataError
from workloads import lake as _lake
from workloads.lake import Manifest, Snapshot
from workloads.model import Standardizer
from workloads.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")


def split_of(patient_id: str, salt: str, val_fraction: float, test_fraction: float) -> str:
    """The split a patient belongs to: a pure function of the id and the salt."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(batch: pd.DataFrame, salt: str, val_fraction: float, test_fraction: float) -> pd.DataFrame:
    """Add the ``split`` column to a batch (vectorised over ``split_of``)."""
    batch = batch.copy()
    batch[SPLIT_COLUMN] = [split_of(pid, salt, val_fraction, test_fraction) for pid in batch[ID_COLUMN]]
    return batch


def clean_batch(batch: pd.DataFrame, missing: str) -> pd.DataFrame:
    """Cast to model types and handle rows with missing measurements.

    ``drop`` removes them; ``flag`` keeps them with ``has_missing=1`` and leaves
    the NaNs for :func:`standardize_batch` to impute with the training mean.
    """
    feats = batch[list(FEATURE_NAMES)].astype("float64")
    has_missing = feats.isna().any(axis=1) | batch[LABEL_COLUMN].isna()
    out = pd.DataFrame({ID_COLUMN: batch[ID_COLUMN].astype(str)})
    out[list(FEATURE_NAMES)] = feats
    out[LABEL_COLUMN] = batch[LABEL_COLUMN].fillna(-1).astype("int8")
    out["has_missing"] = has_missing.astype("int8").to_numpy()
    if missing == "drop":
        out = out[~has_missing.to_numpy()]
    else:
        # A missing label can never be imputed: such rows are unusable for supervised training.
        out = out[out[LABEL_COLUMN] >= 0]
    return out.reset_index(drop=True)


def _moments(batch: pd.DataFrame) -> pd.DataFrame:
    x = batch[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    present = ~np.isnan(x)
    x0 = np.where(present, x, 0.0)
    return pd.DataFrame(
        {
            "count": [present.sum(axis=0).tolist()],
            "sums": [x0.sum(axis=0).tolist()],
            "sq_sums": [(x0**2).sum(axis=0).tolist()],
        }
    )


def standardize_batch(batch: pd.DataFrame, mean: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Turn a cleaned batch into model tensors: ``x`` (n, 30) float32 and ``y`` (n,) float32."""
    x = (batch[list(FEATURE_NAMES)].to_numpy(dtype=np.float64) - mean) / scale
    # Imputing with the training mean is 0 after standardization.
    x = np.nan_to_num(x, nan=0.0).astype(np.float32)
    return {"x": x, "y": batch[LABEL_COLUMN].to_numpy(dtype=np.float32)}


@dataclass
class Processed:
    """The processed datasets and what was learned while processing."""

    datasets: dict[str, "ray.data.Dataset"]
    standardizer: Standardizer
    counts: dict[str, int]
    manifests: list[Manifest]
    fingerprint: str
    #: The lake snapshot every split was read from (0: a lake in the pre-snapshot layout).
    snapshot: int = 0


def open_snapshot(data_cfg: DataConfig) -> Snapshot:
    """Resolve the lake snapshot a run reads, once, and lease it for the rest of this process.

    ``data.snapshot`` pins one; otherwise the current one. Reading only this snapshot's
    files (each written once, never replaced) keeps the run on it whatever ingests land
    meanwhile; the lease keeps ``rayspace data gc`` from removing it while the run lives.
    """
    snap = _lake.require(data_cfg.lake, data_cfg.snapshot)
    _lake.hold(data_cfg.lake, snap.id, purpose="processing")
    return snap


def read_snapshot(data_cfg: DataConfig) -> tuple["ray.data.Dataset", Snapshot]:
    """One lake snapshot as a Ray Dataset: exactly the files its manifests list."""
    import ray.data

    snap = open_snapshot(data_cfg)
    fs, table = _lake.table_path(data_cfg.lake)
    ds = ray.data.read_parquet(snap.files(table), filesystem=fs)
    logger.info("reading lake snapshot %d (%s)", snap.id, snap.fingerprint)
    return ds, snap


def read_lake(data_cfg: DataConfig) -> tuple["ray.data.Dataset", list[Manifest]]:
    """Read the current (or ``data.snapshot``) lake snapshot as one Ray Dataset."""
    ds, snap = read_snapshot(data_cfg)
    return ds, snap.manifests


def _split(ds: "ray.data.Dataset", data_cfg: DataConfig) -> dict[str, "ray.data.Dataset"]:
    cleaned = ds.map_batches(clean_batch, batch_format="pandas", fn_kwargs={"missing": data_cfg.missing})
    tagged = cleaned.map_batches(
        assign_splits,
        batch_format="pandas",
        fn_kwargs={
            "salt": data_cfg.split_salt,
            "val_fraction": data_cfg.val_fraction,
            "test_fraction": data_cfg.test_fraction,
        },
    )
    # Materialize once so the three filters below do not each re-read and re-hash the lake.
    tagged = tagged.materialize()
    return {name: tagged.filter(expr=f"{SPLIT_COLUMN} == '{name}'") for name in SPLITS}


def split_datasets(data_cfg: DataConfig) -> tuple[dict[str, "ray.data.Dataset"], list[Manifest]]:
    """Cleaned, split (not yet standardized) datasets, one per split."""
    ds, snap = read_snapshot(data_cfg)
    return _split(ds, data_cfg), snap.manifests


def fit_standardizer(train: "ray.data.Dataset") -> Standardizer:
    """Fit standardization on the training split only, from streamed per-batch moments."""
    rows = train.map_batches(_moments, batch_format="pandas").take_all()
    if not rows:
        raise DataError("the training split is empty: ingest more data or lower data.val_fraction/test_fraction")
    return Standardizer.from_moments(
        FEATURE_NAMES,
        np.sum([r["count"] for r in rows], axis=0),
        np.sum([r["sums"] for r in rows], axis=0),
        np.sum([r["sq_sums"] for r in rows], axis=0),
    )


def process(data_cfg: DataConfig, standardizer: Standardizer | None = None) -> Processed:
    """Read, clean, split and standardize the lake.

    Args:
        data_cfg: The ``data`` section.
        standardizer: Use this fitted standardization (e.g. a checkpoint's) instead of
            fitting one on the training split.

    Returns:
        Lazy model-ready datasets ``train``/``val``/``test`` with columns ``x`` and ``y``.
    """
    ds, snap = read_snapshot(data_cfg)
    splits = _split(ds, data_cfg)
    std = standardizer or fit_standardizer(splits["train"])
    kwargs: dict[str, Any] = {"mean": std.mean, "scale": std.scale}
    ready = {name: ds.map_batches(standardize_batch, batch_format="pandas", fn_kwargs=kwargs) for name, ds in splits.items()}
    if data_cfg.materialize:
        # Run the preprocessing now, while CPUs are free: once training workers (or several Tune
        # trials) hold every CPU, Ray Data tasks queued behind them would never be scheduled.
        ready = {name: ds.materialize() for name, ds in ready.items()}
    counts = {name: ds.count() for name, ds in splits.items()}
    for name, n in counts.items():
        if n == 0:
            raise DataError(
                f"the {name} split is empty ({sum(counts.values())} usable rows in the lake): "
                "ingest more data or adjust data.val_fraction/data.test_fraction"
            )
    logger.info("processed lake snapshot %d: %s", snap.id, counts)
    return Processed(ready, std, counts, snap.manifests, snap.fingerprint, snap.id)
