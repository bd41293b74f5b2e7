"""The classifier, its preprocessing, and the on-disk checkpoint format.

A checkpoint is a directory (local, or fetched from storage by Ray) with:

* ``model.pt`` -- the MLP's ``state_dict``;
* ``preprocessor.json`` -- feature names in schema order and the standardization
  (mean, scale) fitted on the training split;
* ``train_state.pt`` (optional) -- optimizer state, to resume training;
* ``model.json`` -- architecture, the training config, epoch, validation metrics,
  the metric history, and the SHA-256 of the files above. It is written last, so a directory
  without it, or whose hashes disagree, is an incomplete checkpoint and is
  refused by :func:`load_checkpoint`.

Serving, evaluation, promotion and Tune all read checkpoints through this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workloads.exceptions import CheckpointError, DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
PREPROCESSOR_FILE = "preprocessor.json"
META_FILE = "model.json"
TRAIN_STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class Standardizer:
    """Per-feature standardization ``(x - mean) / scale`` fitted on the training split only."""

    feature_names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardize a ``(n, n_features)`` array (float32 out)."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Standardizer":
        names = tuple(d["feature_names"])
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        if not (len(names) == len(mean) == len(scale)):
            raise CheckpointError(
                f"preprocessor has {len(names)} feature names, {len(mean)} means and {len(scale)} scales: must agree"
            )
        return cls(names, mean, scale)

    @classmethod
    def from_moments(
        cls, feature_names: tuple[str, ...], count: int | np.ndarray, sums: np.ndarray, sq_sums: np.ndarray
    ) -> "Standardizer":
        """Build from streaming moments of the training split.

        Args:
            feature_names: Feature names in schema order.
            count: Values seen per feature (or one count for all): missing values are not counted.
            sums: Per-feature sums.
            sq_sums: Per-feature sums of squares.

        Raises:
            DataError: A feature has fewer than 2 values.
        """
        count = np.broadcast_to(np.asarray(count, dtype=np.float64), np.shape(sums))
        if (count < 2).any():
            i = int(np.argmax(count < 2))
            raise DataError(
                f"feature {feature_names[i]!r} has {int(count[i])} values in the training split: "
                "need at least 2 to standardize"
            )
        mean = sums / count
        var = np.maximum(sq_sums / count - mean**2, 0.0)
        scale = np.sqrt(var)
        # A constant feature would divide by zero; leave it centered but unscaled.
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(tuple(feature_names), mean, scale)


def build_mlp(n_features: int, hidden: int, depth: int, dropout: float):
    """The classifier: ``depth`` hidden layers of ``hidden`` units, ReLU and dropout, one logit out."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    width = n_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: Any,
    standardizer: Standardizer,
    *,
    arch: dict[str, Any],
    train_config: dict[str, Any],
    epoch: int,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (``model.json`` last, so partial writes are detectable).

    Args:
        directory: Target directory (created).
        model: The ``torch.nn.Module`` (unwrapped from DDP).
        standardizer: The fitted preprocessing.
        arch: ``n_features``, ``hidden``, ``depth``, ``dropout``.
        train_config: The ``train`` section used.
        epoch: Epoch just finished (1-based).
        metrics: Validation metrics of that epoch.
        extra: More metadata (e.g. the lake manifest hash, the metric history).
        train_state: Optimizer state etc. needed only to resume training (``train_state.pt``).
    """
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # Host copies: a checkpoint written by a GPU worker loads anywhere (Serve replicas run on CPUs).
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, d / WEIGHTS_FILE)
    (d / PREPROCESSOR_FILE).write_text(json.dumps(standardizer.to_dict(), indent=1))
    resume_sha = {}
    if train_state is not None:
        torch.save(train_state, d / TRAIN_STATE_FILE)
        resume_sha[TRAIN_STATE_FILE] = _sha256(d / TRAIN_STATE_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "train_config": train_config,
        "epoch": epoch,
        "metrics": metrics,
        "sha256": {name: _sha256(d / name) for name in (WEIGHTS_FILE, PREPROCESSOR_FILE)},
        # Kept apart from "sha256": copies made for serving may leave the resume state out.
        "resume_sha256": resume_sha,
        **(extra or {}),
    }
    tmp = d / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, d / META_FILE)
    return d


@dataclass
class LoadedModel:
    """A checkpoint loaded for inference on CPU."""

    module: Any
    standardizer: Standardizer
    meta: dict[str, Any]
    path: str = ""
    _torch: Any = field(default=None, repr=False)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.standardizer.feature_names

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class (malignant) for each row of a raw ``(n, n_features)`` array."""
        torch = self._torch
        z = torch.from_numpy(self.standardizer.transform(x))
        with torch.inference_mode():
            logits = self.module(z).reshape(-1)
            return torch.sigmoid(logits).numpy().astype(np.float64)


def read_checkpoint_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify a checkpoint's ``model.json`` (raises if incomplete)."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{d} is not a complete checkpoint: {META_FILE} is missing (interrupted write?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e})") from e
    for name, digest in meta.get("sha256", {}).items():
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"{d} is not a complete checkpoint: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: content does not match the hash in {META_FILE} (corrupt or half-written)")
    return meta


def load_train_state(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The optimizer state saved with a checkpoint, or ``None`` if it has none."""
    import torch

    d = Path(directory)
    f = d / TRAIN_STATE_FILE
    if not f.is_file():
        return None
    expected = read_checkpoint_meta(d).get("resume_sha256", {}).get(TRAIN_STATE_FILE)
    if expected is not None and _sha256(f) != expected:
        raise CheckpointError(f"{f}: content does not match the hash in {META_FILE} (corrupt or half-written)")
    return torch.load(f, map_location="cpu", weights_only=True)


def load_checkpoint(directory: str | os.PathLike[str]) -> LoadedModel:
    """Load a checkpoint directory for CPU inference, verifying it is complete.

    Raises:
        CheckpointError: Missing files, hash mismatch, or incompatible format.
    """
    import torch

    d = Path(directory)
    meta = read_checkpoint_meta(d)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{d}: format_version {meta.get('format_version')!r}, this rayspace reads {FORMAT_VERSION}")
    std = Standardizer.from_dict(json.loads((d / PREPROCESSOR_FILE).read_text()))
    arch = meta["arch"]
    module = build_mlp(int(arch["n_features"]), int(arch["hidden"]), int(arch["depth"]), float(arch["dropout"]))
    try:
        state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as e:
        raise CheckpointError(f"{d / WEIGHTS_FILE}: cannot load weights into the recorded architecture ({e})") from e
    module.eval()
    return LoadedModel(module=module, standardizer=std, meta=meta, path=str(d), _torch=torch)
