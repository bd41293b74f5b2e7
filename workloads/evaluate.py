"""Test-split evaluation of a checkpoint: metrics, a JSON report and a PNG.

The test split is re-derived from the lake with the same patient-id hash, and
standardized with the checkpoint's own fitted standardization (never refit on
test data). Predictions stream through Ray Data batch by batch; only the
predicted probabilities and labels reach the driver.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import numpy as np

from workloads import storage
from workloads.config import WorkspaceConfig
from workloads.exceptions import CheckpointError, DataError, StorageError

logger = logging.getLogger(__name__)


def compute_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, ROC AUC, precision, recall, F1 and the confusion matrix for binary predictions.

    The confusion matrix is ``[[tn, fp], [fn, tp]]`` with malignant as the positive class.
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    if len(labels) == 0:
        raise DataError("the test split is empty: nothing to evaluate")
    pred = (probs >= threshold).astype(int)
    y = labels.astype(int)
    two_classes = len(np.unique(y)) == 2
    return {
        "test_accuracy": float((pred == y).mean()),
        "test_roc_auc": float(roc_auc_score(y, probs)) if two_classes else float("nan"),
        "test_precision": float(precision_score(y, pred, zero_division=0)),
        "test_recall": float(recall_score(y, pred, zero_division=0)),
        "test_f1": float(f1_score(y, pred, zero_division=0)),
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        "test_rows": int(len(y)),
        "threshold": threshold,
    }


def _predict_split(cfg: WorkspaceConfig, checkpoint_dir: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from workloads.data import process
    from workloads.model import load_checkpoint

    model = load_checkpoint(checkpoint_dir)
    processed = process(cfg.data, standardizer=model.standardizer)
    probs, labels = [], []
    torch = model._torch
    # Inputs are already standardized by the pipeline: call the module directly.
    for batch in processed.datasets["test"].iter_batches(batch_size=4096, batch_format="numpy"):
        with torch.inference_mode():
            logits = model.module(torch.from_numpy(np.array(batch["x"], dtype=np.float32))).reshape(-1)
        probs.append(torch.sigmoid(logits).numpy())
        labels.append(np.asarray(batch["y"]))
    if not probs:
        raise DataError("the test split is empty: nothing to evaluate")
    info = {"data_fingerprint": processed.fingerprint, "counts": processed.counts}
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels), {**info, "meta": model.meta}


def plot_report(path: str, probs: np.ndarray, labels: np.ndarray, history: list[dict[str, Any]], title: str) -> None:
    """Write a PNG with the ROC curve and the learning curves (loss, validation AUC/accuracy) to a path or URI."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels.astype(int), probs)
        axes[0].plot(fpr, tpr, label="model")
    axes[0].plot([0, 1], [0, 1], "--", color="grey", label="chance")
    axes[0].set(title="ROC curve (test split)", xlabel="false positive rate", ylabel="true positive rate")
    axes[0].legend(loc="lower right")
    epochs = [h["epoch"] for h in history]
    if history:
        axes[1].plot(epochs, [h.get("train_loss") for h in history], label="train loss")
        axes[1].plot(epochs, [h.get("val_loss") for h in history], label="validation loss")
        axes[2].plot(epochs, [h.get("val_roc_auc") for h in history], label="validation ROC AUC")
        axes[2].plot(epochs, [h.get("val_accuracy") for h in history], label="validation accuracy")
    axes[1].set(title="Learning curve: loss", xlabel="epoch")
    axes[2].set(title="Learning curve: validation metrics", xlabel="epoch")
    axes[1].legend()
    axes[2].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())


def evaluate(cfg: WorkspaceConfig, checkpoint: str, *, output_dir: str | None = None) -> dict[str, Any]:
    """Compute test-split metrics for a checkpoint and write ``report.json`` and ``report.png``.

    Ray must be initialized (the test split is read with Ray Data).

    Args:
        cfg: Workspace config (the ``data`` section locates and splits the lake).
        checkpoint: Checkpoint directory: a local path or a URI (a remote one is fetched first).
        output_dir: Where to write the report (path or URI); default:
            ``<train.storage_path>/reports/<run name>``, in the configured storage.

    Returns:
        ``test_accuracy``, ``test_roc_auc``, ``test_precision``, ``test_recall``, ``test_f1``,
        ``confusion_matrix``, ``test_rows``, plus ``report_json``/``report_png`` locations and
        ``checkpoint``, all in canonical form (see :mod:`workloads.storage`).

    Raises:
        CheckpointError: The checkpoint is incomplete or unreadable.
        DataError: The lake is empty or the test split has no rows.
    """
    try:
        uri = storage.canonical(checkpoint)
    except StorageError as e:
        raise CheckpointError(f'Got "{checkpoint}" for the checkpoint: {e}') from None
    with tempfile.TemporaryDirectory(prefix="rayspace-eval-") as scratch:
        local = _localize(uri, scratch)
        probs, labels, info = _predict_split(cfg, local)
    metrics = compute_metrics(probs, labels)
    meta = info["meta"]
    if meta.get("data_fingerprint") and meta["data_fingerprint"] != info["data_fingerprint"]:
        logger.warning(
            "checkpoint was trained on lake %s but the lake is now %s: test metrics use the current data",
            meta["data_fingerprint"], info["data_fingerprint"],
        )
    run_name = storage.name(storage.parent(uri))
    out = output_dir or storage.join(cfg.train.storage_path, "reports", run_name)
    report = {
        **metrics,
        "checkpoint": uri,
        "epoch": meta.get("epoch"),
        "val_metrics": meta.get("metrics", {}),
        "data_fingerprint": info["data_fingerprint"],
        "split_counts": info["counts"],
    }
    report_json = storage.write_bytes(storage.join(out, "report.json"), json.dumps(report, indent=1, default=str).encode())
    report_png = storage.join(out, "report.png")
    plot_report(report_png, probs, labels, _run_history(uri, meta),
                f"{run_name}: test accuracy {metrics['test_accuracy']:.3f}, ROC AUC {metrics['test_roc_auc']:.3f}")
    report["report_json"] = report_json
    report["report_png"] = storage.canonical(report_png)
    return report


def _run_history(checkpoint: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole run's metric history for the learning curves.

    The best checkpoint only knows the epochs up to itself; a later checkpoint kept
    beside it in the same run directory knows them all. ``model.json`` is written
    last, so a sibling that has one is complete enough to read its history.
    """
    from workloads.model import META_FILE

    history = list(meta.get("history", []))
    run = storage.parent(checkpoint)
    own = storage.name(checkpoint)
    for sibling, is_dir in storage.list_dir(run):
        if sibling == own or not is_dir or not sibling.startswith("checkpoint_"):
            continue
        try:
            other = json.loads(storage.read_bytes(storage.join(run, sibling, META_FILE))).get("history", [])
        except (FileNotFoundError, StorageError, ValueError):
            continue  # an incomplete sibling (e.g. being written) adds nothing
        if len(other) > len(history):
            history = list(other)
    return history


def _localize(checkpoint: str, scratch: str) -> str:
    """A local directory for a canonical checkpoint location (remote ones are downloaded into ``scratch``)."""
    if storage.is_local(checkpoint):
        if not os.path.isdir(checkpoint):
            raise CheckpointError(f'Got "{checkpoint}" for the checkpoint: no such directory')
        return checkpoint
    try:
        return str(storage.download_dir(checkpoint, os.path.join(scratch, storage.name(checkpoint))))
    except FileNotFoundError as e:
        raise CheckpointError(f'Got "{checkpoint}" for the checkpoint: no such directory') from e
    except StorageError as e:
        raise CheckpointError(f'Got "{checkpoint}" for the checkpoint: cannot fetch it ({e})') from e


# ------------------------------------------------------------------ comparing two models on the same rows


def _metric_fn(metric: str):
    """``metric`` (``test_roc_auc``, ``test_accuracy``, ...) as a function of (probs, labels)."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    def auc(p, y):
        return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")

    fns = {
        "test_roc_auc": auc,
        "test_accuracy": lambda p, y: float(((p >= 0.5).astype(int) == y).mean()),
        "test_precision": lambda p, y: float(precision_score(y, (p >= 0.5).astype(int), zero_division=0)),
        "test_recall": lambda p, y: float(recall_score(y, (p >= 0.5).astype(int), zero_division=0)),
        "test_f1": lambda p, y: float(f1_score(y, (p >= 0.5).astype(int), zero_division=0)),
    }
    if metric not in fns:
        raise DataError(f'Got "{metric}" for registry.gate_metric: a re-scored comparison supports {sorted(fns)}')
    return fns[metric]


def paired_bootstrap(
    new_probs: np.ndarray, cur_probs: np.ndarray, labels: np.ndarray, metric: str, *,
    resamples: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Difference of ``metric`` (new minus current) on the same rows, with a paired bootstrap 95% interval.

    Each resample draws the same rows (with replacement) for both models, so the interval
    reflects the test set's size and the models' correlation; resamples with one class only
    (no AUC) are skipped.
    """
    fn = _metric_fn(metric)
    y = labels.astype(int)
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        d = fn(new_probs[idx], y[idx]) - fn(cur_probs[idx], y[idx])
        if np.isfinite(d):
            deltas.append(d)
    new_value, cur_value = fn(new_probs, y), fn(cur_probs, y)
    lo, hi = (np.percentile(deltas, [2.5, 97.5]).tolist() if deltas else [float("nan"), float("nan")])
    return {"metric": metric, "new": new_value, "current": cur_value, "delta": new_value - cur_value,
            "ci95": [float(lo), float(hi)], "rows": int(len(y)), "resamples": len(deltas), "seed": seed}


def make_comparer(cfg: WorkspaceConfig, checkpoint: str, *, resamples: int = 1000):
    """A function that re-scores a current registry version against ``checkpoint`` on the same test rows.

    Both models score every row of one pass over the test split (each with its own
    fitted standardization), so the comparison never mixes test sets. Ray must be initialized.

    Returns:
        ``compare(current_version_dir) -> dict`` (see :func:`paired_bootstrap`).
    """
    from workloads.data import process
    from workloads.model import load_checkpoint

    def compare(current_dir: str | os.PathLike[str]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="rayspace-compare-") as scratch:
            new = load_checkpoint(_localize(storage.canonical(checkpoint), scratch))
            cur = load_checkpoint(current_dir)
            if tuple(cur.feature_names) != tuple(new.feature_names):
                raise DataError("the current version uses other features than the candidate: cannot re-score it "
                                "on the same rows")
            processed = process(cfg.data, standardizer=new.standardizer)
            torch = new._torch
            new_p, cur_p, labels = [], [], []
            for batch in processed.datasets["test"].iter_batches(batch_size=4096, batch_format="numpy"):
                z_new = np.array(batch["x"], dtype=np.float32)
                # Undo the candidate's standardization, apply the current model's own.
                raw = z_new.astype(np.float64) * new.standardizer.scale + new.standardizer.mean
                z_cur = cur.standardizer.transform(raw)
                with torch.inference_mode():
                    new_p.append(torch.sigmoid(new.module(torch.from_numpy(z_new)).reshape(-1)).numpy())
                    cur_p.append(torch.sigmoid(cur.module(torch.from_numpy(z_cur)).reshape(-1)).numpy())
                labels.append(np.asarray(batch["y"]).reshape(-1))
        if not labels:
            raise DataError("the test split is empty: nothing to compare on")
        result = paired_bootstrap(np.concatenate(new_p).astype(np.float64), np.concatenate(cur_p).astype(np.float64),
                                  np.concatenate(labels), cfg.registry.gate_metric, resamples=resamples)
        result["data_fingerprint"] = processed.fingerprint
        return result

    return compare
