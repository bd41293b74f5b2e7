"""Helpers for tests and benchmarks: real checkpoints without Ray Train.

:func:`make_checkpoint` writes a checkpoint in the exact format of
:mod:`workloads.model` from a small MLP, either randomly initialised or quickly
fitted on a synthetic, linearly separable problem, so registry and Serve code can
be exercised end to end in a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workloads.model import Standardizer, build_mlp, save_checkpoint
from workloads.schema import FEATURE_NAMES


def synthetic_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of 30 positive, WDBC-scaled features and a label that depends on them."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.05, 900.0, len(FEATURE_NAMES))
    x = rng.lognormal(mean=0.0, sigma=0.3, size=(n, len(FEATURE_NAMES))) * scale
    score = (x[:, 0] / scale[0]) + (x[:, 20] / scale[20]) - 2.0
    y = (score > 0).astype(np.int64)
    return x, y


def make_checkpoint(
    directory: str | os.PathLike[str],
    *,
    seed: int = 0,
    hidden: int = 16,
    depth: int = 1,
    fit_steps: int = 0,
    metrics: dict[str, float] | None = None,
    data_manifest_hash: str | None = "sha256:test",
) -> Path:
    """Write a checkpoint directory of a small MLP.

    Args:
        directory: Where to write it (created).
        seed: Seeds the weights and the synthetic data, so two seeds give two different models.
        hidden: Hidden width.
        depth: Hidden layers.
        fit_steps: Full-batch Adam steps on synthetic rows (0 keeps the random weights).
        metrics: Validation metrics recorded in ``model.json``.
        data_manifest_hash: Recorded at the top level of ``model.json``.
    """
    import torch

    torch.manual_seed(seed)
    x, y = synthetic_rows(256, seed)
    std = Standardizer.from_moments(FEATURE_NAMES, len(x), x.sum(axis=0), (x**2).sum(axis=0))
    module = build_mlp(len(FEATURE_NAMES), hidden, depth, 0.0)
    if fit_steps:
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        xt = torch.from_numpy(std.transform(x))
        yt = torch.from_numpy(y.astype(np.float32))
        for _ in range(fit_steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(module(xt).reshape(-1), yt)
            loss.backward()
            opt.step()
    module.eval()
    train_config: dict[str, Any] = {"hidden": hidden, "depth": depth, "dropout": 0.0, "lr": 1e-2, "seed": seed}
    extra = {"data_manifest_hash": data_manifest_hash} if data_manifest_hash else None
    return save_checkpoint(
        directory, module, std,
        arch={"n_features": len(FEATURE_NAMES), "hidden": hidden, "depth": depth, "dropout": 0.0},
        train_config=train_config, epoch=1,
        metrics=metrics or {"val_roc_auc": 0.9, "val_accuracy": 0.85},
        extra=extra,
    )
