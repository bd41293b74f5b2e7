"""Data-parallel PyTorch training with Ray Train (V2).

``train(cfg) -> TrainResult`` is the pure entry point used by the CLI
(``rayspace train``), by the pipeline, by Tune and by ``ray job submit``.
``build_trainer`` and ``train_loop_per_worker`` are exposed so Tune can build
one ``TorchTrainer`` per trial with the same loop.

Fault tolerance: every epoch rank 0 saves a checkpoint (weights, optimizer
state, the fitted standardization, feature names, config and metric history).
``FailureConfig(max_failures)`` restarts a failed worker group, and the loop
resumes from ``ray.train.get_checkpoint()`` at the next epoch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workloads import storage as storage_location
from workloads.config import TrainConfig, WorkspaceConfig
from workloads.exceptions import ConfigError, TrainingError

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

    from workloads.data import Processed

logger = logging.getLogger(__name__)


class InjectedFailure(RuntimeError):
    """Raised inside a worker by ``train.fail_at_epoch`` to exercise recovery."""


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_path: str
    run_name: str
    num_workers: int
    data_fingerprint: str
    elapsed_s: float
    counts: dict[str, int] = field(default_factory=dict)
    #: Where the ranks of the last attempt ran (rank, Ray node id, node IP) and the epoch it resumed from.
    attempt: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "metrics": self.metrics,
            "history": self.history,
            "run_path": self.run_path,
            "run_name": self.run_name,
            "num_workers": self.num_workers,
            "data_fingerprint": self.data_fingerprint,
            "elapsed_s": round(self.elapsed_s, 3),
            "counts": self.counts,
            "attempt": self.attempt,
        }


# ----------------------------------------------------------------------------- helpers


def default_num_workers(cpus_per_worker: float, capacity_cpus: float | None = None) -> int:
    """What the cluster's CPU capacity allows (at most 4: the dataset is small), at least 1.

    Args:
        cpus_per_worker: ``train.cpus_per_worker``.
        capacity_cpus: The cluster's CPUs (default: :func:`workloads.runtime.cluster_cpu_capacity`,
            the configured maximum on an autoscaling cluster).
    """
    if capacity_cpus is None:
        from workloads.runtime import cluster_cpu_capacity

        capacity_cpus = cluster_cpu_capacity()[0]
    return max(1, min(4, int(capacity_cpus // cpus_per_worker)))


def resolve_num_workers(train_cfg: TrainConfig) -> int:
    """The worker count to use; fails clearly when the cluster can never host it.

    On an autoscaling cluster the capacity is what the worker groups can scale up to
    (their ``maxReplicas``), not the CPUs up right now: a cluster scaled to zero still
    trains with every worker it can get, and a count beyond the maximum fails here
    instead of waiting forever for nodes that cannot come.
    """
    from workloads.runtime import cluster_cpu_capacity

    cpus, source = cluster_cpu_capacity()
    n = train_cfg.num_workers or default_num_workers(train_cfg.cpus_per_worker, cpus)
    needed = n * train_cfg.cpus_per_worker
    # A joined cluster without a published maximum may still add nodes: only check what is known.
    unknown_max = source == "now" and bool(os.environ.get("RAY_ADDRESS"))
    if needed > cpus and not unknown_max:
        what = "can scale up to" if source == "max" else "has"
        raise ConfigError(
            f"Got {n} for train.num_workers: {n} workers x {train_cfg.cpus_per_worker} CPUs = {needed:g} CPUs, "
            f"but this Ray cluster {what} {cpus:g}; lower train.num_workers or train.cpus_per_worker",
            [("train.num_workers", n, f"must fit the cluster's {cpus:g} CPUs")],
        )
    return n


def _gather_preds(model, shard, batch_size: int, device=None):
    """Predict a whole (unsharded) split on ``device``; probabilities and labels come back as numpy on the host.

    Args:
        model: The module (already on ``device``).
        shard: A Ray Data iterator (``iter_torch_batches``).
        batch_size: Training batch size (validation uses at least 256).
        device: The device Ray Train gave this worker (``ray.train.torch.get_device()``); batches are
            placed there, so results must come back with ``.cpu()`` before ``.numpy()``.
    """
    import torch

    probs, labels, losses, n = [], [], 0.0, 0
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    kwargs = {"device": device} if device is not None else {}
    with torch.inference_mode():
        for batch in shard.iter_torch_batches(batch_size=max(batch_size, 256), **kwargs):
            logits = model(batch["x"]).reshape(-1)
            y = batch["y"].reshape(-1)
            losses += float(loss_fn(logits, y))
            n += len(y)
            probs.append(torch.sigmoid(logits).detach().cpu().numpy())
            labels.append(y.detach().cpu().numpy())
    if n == 0:
        return np.array([]), np.array([]), float("nan")
    return np.concatenate(probs), np.concatenate(labels), losses / n


def classification_metrics(probs: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy and ROC AUC (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    pred = (probs >= 0.5).astype(np.float32)
    out = {f"{prefix}_accuracy": float((pred == labels).mean()) if len(labels) else float("nan")}
    if len(np.unique(labels)) == 2:
        out[f"{prefix}_roc_auc"] = float(roc_auc_score(labels, probs))
    else:
        out[f"{prefix}_roc_auc"] = float("nan")
    return out


# ------------------------------------------------------------------------ worker loop


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The per-worker training loop (runs inside Ray Train workers).

    Args:
        config: ``train`` (the train section as a dict), ``standardizer`` (dict),
            ``data_fingerprint``, ``workspace`` (full config dict, stored in checkpoints).
    """
    import torch
    import torch.distributed as dist

    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from workloads.model import Standardizer, build_mlp, load_train_state, read_checkpoint_meta, save_checkpoint

    tc = config["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(int(tc["seed"]))
    torch.set_num_threads(max(1, int(tc.get("cpus_per_worker", 1))))
    std = Standardizer.from_dict(config["standardizer"])
    arch = {"n_features": len(std.feature_names), "hidden": tc["hidden"], "depth": tc["depth"], "dropout": tc["dropout"]}
    model = build_mlp(**arch)
    optimizer_state = None
    history: list[dict[str, float]] = []
    start_epoch = 1

    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            meta = read_checkpoint_meta(d)
            model.load_state_dict(torch.load(os.path.join(d, "model.pt"), map_location="cpu", weights_only=True))
            state = load_train_state(d)
            optimizer_state = state["optimizer"] if state else None
            history = list(meta.get("history", []))
            start_epoch = int(meta["epoch"]) + 1
        logger.info("rank %d resumed from epoch %d", rank, start_epoch - 1)

    # The device Ray Train assigned (a GPU with train.use_gpu, else the CPU); batches and reductions use it.
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    bare = model.module if hasattr(model, "module") else model
    # Where each rank runs, gathered over the torch process group: it records the placement
    # (one worker per node on a cluster) and proves the group works across nodes before training.
    here = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    placement = [here]
    if world > 1 and dist.is_initialized():
        placement = [None] * world
        dist.all_gather_object(placement, here)
    attempt = {"resumed_from_epoch": start_epoch - 1 if resumed is not None else None, "workers": placement}

    for epoch in range(start_epoch, int(tc["epochs"]) + 1):
        # Fail only in a run that did not resume, so the injected failure happens exactly once.
        if tc.get("fail_at_epoch") == epoch and resumed is None and rank == world - 1:
            raise InjectedFailure(f"injected failure on rank {rank} at epoch {epoch} (train.fail_at_epoch)")
        model.train()
        total, count = 0.0, 0
        for batch in train_shard.iter_torch_batches(
            batch_size=int(tc["batch_size"]), local_shuffle_buffer_size=2048, local_shuffle_seed=int(tc["seed"]) + epoch,
            device=device,
        ):
            x, y = batch["x"], batch["y"].reshape(-1, 1)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        # On the worker's device: NCCL (GPU training) only all-reduces CUDA tensors.
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(sums)
        metrics: dict[str, float] = {"epoch": epoch, "train_loss": float(sums[0].item() / max(sums[1].item(), 1.0))}

        if rank == 0:
            # Validation is not sharded: rank 0 scores the whole split so AUC is exact.
            model.eval()
            probs, labels, val_loss = _gather_preds(bare, val_shard, int(tc["batch_size"]), device)
            metrics["val_loss"] = val_loss
            metrics.update(classification_metrics(probs, labels, "val"))
            history.append(dict(metrics))
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(
                    tmp, bare, std, arch=arch, train_config=tc, epoch=epoch, metrics=metrics,
                    extra={"history": history, "data_fingerprint": config["data_fingerprint"], "attempt": attempt,
                           "workspace": config.get("workspace", {}), "feature_names": list(std.feature_names)},
                    train_state={"optimizer": optimizer.state_dict()},
                )
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


# --------------------------------------------------------------------------- trainer


def build_trainer(
    cfg: WorkspaceConfig,
    processed: "Processed",
    *,
    run_name: str,
    storage_path: str,
    num_workers: int,
    callbacks: list[Any] | None = None,
) -> "TorchTrainer":
    """A ``TorchTrainer`` over the processed datasets with checkpointing and failure handling."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    loop_config = {
        "train": tc.model_dump(mode="json"),
        "standardizer": processed.standardizer.to_dict(),
        "data_fingerprint": processed.fingerprint,
        "workspace": cfg.model_dump(mode="json"),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": tc.cpus_per_worker}
        ),
        datasets={"train": processed.datasets["train"], "val": processed.datasets["val"]},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.checkpoints_to_keep,
                checkpoint_score_attribute=tc.checkpoint_metric,
                checkpoint_score_order=tc.checkpoint_mode,
            ),
            callbacks=callbacks,
        ),
    )


def new_run_name(prefix: str) -> str:
    """A unique run name: Ray Train V2 resumes a run whose name already exists in storage."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def best_checkpoint(result: Any, metric: str, mode: str) -> Any:
    """The checkpoint with the best ``metric`` among those kept; the latest one if none has a number.

    A validation split with one class has no ROC AUC (NaN). Ray's ``get_best_checkpoint``
    ranks NaN like a number (the pick then depends on the order) and raises, instead of
    returning ``None``, when no checkpoint has the metric, so a fallback after it never ran.
    Only finite values are ranked here, and the fallback is the run's latest checkpoint.

    Args:
        result: The ``ray.train.Result`` of a run (``best_checkpoints``: ``(checkpoint, metrics)`` pairs).
        metric: ``train.checkpoint_metric``.
        mode: ``train.checkpoint_mode`` (``max`` or ``min``).

    Returns:
        A ``ray.train.Checkpoint``, or ``None`` if the run kept none.
    """
    scored = []
    for checkpoint, metrics in result.best_checkpoints or []:
        value = (metrics or {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            scored.append((float(value), checkpoint))
    if scored:
        pick = max if mode == "max" else min
        return pick(scored, key=lambda pair: pair[0])[1]
    if result.checkpoint is not None:
        logger.warning("no checkpoint has a finite %s (e.g. a validation split with one class): using the latest", metric)
    return result.checkpoint


def train(cfg: WorkspaceConfig, *, processed: "Processed | None" = None, run_name: str | None = None) -> TrainResult:
    """Train the classifier on the lake with Ray Train; Ray must be initialized.

    Args:
        cfg: The workspace config (``data`` and ``train`` sections are used).
        processed: Already processed datasets (the pipeline passes them); else the lake is processed here.
        run_name: Name under ``train.storage_path``; default: unique ``<train.name>-<time>-<id>``.

    Returns:
        The best checkpoint (by ``train.checkpoint_metric``), its metrics and the full metric history.

    Raises:
        TrainingError: Training failed after ``train.max_failures`` restarts.
        ConfigError: The cluster cannot host ``train.num_workers``.
    """
    from ray.train import TrainingFailedError

    from workloads.data import process
    from workloads.model import read_checkpoint_meta

    start = time.monotonic()
    num_workers = resolve_num_workers(cfg.train)
    processed = processed or process(cfg.data)
    name = run_name or new_run_name(cfg.train.name)
    # Ray Train wants an absolute local path or a URI: the canonical form is either.
    storage = storage_location.canonical(cfg.train.storage_path)
    trainer = build_trainer(cfg, processed, run_name=name, storage_path=storage, num_workers=num_workers)
    logger.info("training %s with %d workers into %s", name, num_workers, storage)
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        raise TrainingError(f"training run {name} failed: {e}") from e
    if result.error is not None:  # fit() normally raises; kept for runs that report errors instead
        raise TrainingError(f"training run {name} failed: {result.error}") from result.error
    best = best_checkpoint(result, cfg.train.checkpoint_metric, cfg.train.checkpoint_mode)
    if best is None:
        raise TrainingError(f"training run {name} finished without a checkpoint")
    with best.as_directory() as d:
        meta = read_checkpoint_meta(d)
    latest_history = meta.get("history", [])
    attempt = meta.get("attempt", {})
    if result.checkpoint is not None and result.checkpoint.path != best.path:
        with result.checkpoint.as_directory() as d:
            latest = read_checkpoint_meta(d)
        latest_history = latest.get("history", latest_history)
        attempt = latest.get("attempt", attempt)
    return TrainResult(
        # Ray reports paths on the storage's filesystem, without the scheme: put it back.
        checkpoint=storage_location.from_fs_path(storage, best.path),
        metrics={k: v for k, v in meta["metrics"].items()},
        history=latest_history,
        run_path=storage_location.from_fs_path(storage, result.path),
        run_name=name,
        num_workers=num_workers,
        data_fingerprint=processed.fingerprint,
        elapsed_s=time.monotonic() - start,
        counts=processed.counts,
        attempt=attempt,
    )


