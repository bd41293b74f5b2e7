"""Ray Tune sweeps over the Ray Train training of ``workloads/train.py``.

The pattern Ray 2.60 supports for Tune over Train V2: each trial is a Tune
*function trainable* (the trial driver) that builds and fits its own
``TorchTrainer``; ``TuneReportCallback`` forwards rank 0's per-epoch metrics and
checkpoint path to Tune, so ASHA can stop weak trials early. A V2 trainer passed
straight to ``Tuner`` fails, and ``ray.train.report`` inside a Tune function is
deprecated, so neither is used.

Resources: a trial holds ``tune.trial_driver_cpus`` for its driver plus
``workers_per_trial * train.cpus_per_worker`` for its workers. Concurrency is
capped so every running trial's workers fit the cluster at once: trials never
deadlock with drivers holding CPUs their workers wait for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from workloads import storage as storage_location
from workloads.config import Choice, LogUniform, RandInt, TuneConfig, Uniform, WorkspaceConfig, with_overrides
from workloads.exceptions import ConfigError, TuneError

if TYPE_CHECKING:
    from workloads.data import Processed

logger = logging.getLogger(__name__)

CHECKPOINT_PATH_KEY = "checkpoint_path"  # what TuneReportCallback adds to the metrics


@dataclass
class TrialRow:
    """One line of the trial table."""

    trial_id: str
    status: str
    config: dict[str, Any]
    best_metric: float | None
    epochs_run: int
    epochs_planned: int
    #: Stopped by the scheduler (ASHA) before its planned epochs.
    stopped_early: bool
    best_checkpoint: str | None
    error: str | None = None
    #: Stopped (or never started) because the sweep's time budget (``tune.time_budget_s``) ran out.
    stopped_by_budget: bool = False

    @property
    def stopped_by(self) -> str:
        """Who ended the trial short of its planned epochs: ``"asha"``, ``"time budget"`` or ``""``."""
        return "time budget" if self.stopped_by_budget else "asha" if self.stopped_early else ""


@dataclass
class SweepResult:
    """What a sweep produced: every trial, and the best one by the validation metric."""

    name: str
    path: str
    metric: str
    mode: str
    trials: list[TrialRow]
    best: TrialRow | None
    concurrency: int
    elapsed_s: float
    files: dict[str, str] = field(default_factory=dict)
    #: Whether an interrupted sweep of the same name was restored (``Tuner.restore``) instead of started.
    restored: bool = False

    @property
    def failed(self) -> list[TrialRow]:
        return [t for t in self.trials if t.status == "ERROR"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "metric": self.metric,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "elapsed_s": round(self.elapsed_s, 2),
            "restored": self.restored,
            "best_trial": asdict(self.best) if self.best else None,
            "trials": [asdict(t) for t in self.trials],
            "files": self.files,
        }


# ------------------------------------------------------------------- search space


def search_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    """Turn the config's typed parameter specs into Ray Tune sampling domains."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, spec in tune_cfg.search_space.items():
        if isinstance(spec, LogUniform):
            space[name] = tune.loguniform(spec.low, spec.high)
        elif isinstance(spec, Uniform):
            space[name] = tune.uniform(spec.low, spec.high)
        elif isinstance(spec, RandInt):
            space[name] = tune.randint(spec.low, spec.high)
        elif isinstance(spec, Choice):
            space[name] = tune.choice(spec.values)
        else:  # pragma: no cover - the config's discriminated union admits nothing else
            raise ConfigError(f"Got {spec!r} for tune.search_space.{name}: unknown sampling kind", [])
    return space


def searcher(tune_cfg: TuneConfig):
    """The seeded random searcher (same seed -> same sampled configs)."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=tune_cfg.seed)


def sample_configs(tune_cfg: TuneConfig) -> list[dict[str, Any]]:
    """The configs a sweep will try, in order, without running anything (``--dry-run``).

    Mirrors what ``BasicVariantGenerator(random_state=seed)`` draws: one seeded
    generator, ``num_samples`` resolutions of ``{"config": space}`` in turn.
    """
    from ray.tune.search.basic_variant import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    rng = _BackwardsCompatibleNumpyRng(tune_cfg.seed)
    spec = {"config": search_space(tune_cfg)}
    out = []
    for _ in range(tune_cfg.num_samples):
        for _, resolved in generate_variants(spec, random_state=rng):
            out.append(resolved["config"])
    return out


def _validate_trial_config(base: WorkspaceConfig, params: dict[str, Any]) -> WorkspaceConfig:
    return with_overrides(base, {f"train.{k}": v for k, v in params.items()})


# ----------------------------------------------------------------- resources


def plan_concurrency(tune_cfg: TuneConfig, cpus_per_worker: float, cluster_cpus: float) -> int:
    """How many trials may run at once so that all their drivers and workers fit.

    Raises:
        ConfigError: Not even one trial fits the cluster.
    """
    per_trial = tune_cfg.trial_driver_cpus + tune_cfg.workers_per_trial * cpus_per_worker
    fits = int(math.floor(cluster_cpus / per_trial + 1e-9))
    if fits < 1:
        raise ConfigError(
            f"Got {tune_cfg.workers_per_trial} for tune.workers_per_trial: one trial needs {per_trial:g} CPUs "
            f"(driver {tune_cfg.trial_driver_cpus:g} + workers), the cluster has {cluster_cpus:g}; "
            "lower tune.workers_per_trial or train.cpus_per_worker",
            [("tune.workers_per_trial", tune_cfg.workers_per_trial, f"must fit {cluster_cpus:g} CPUs")],
        )
    if tune_cfg.max_concurrent_trials is not None:
        fits = min(fits, tune_cfg.max_concurrent_trials)
    return max(1, min(fits, tune_cfg.num_samples))


# -------------------------------------------------------------------- trial driver


def _trial_driver(params: dict[str, Any], *, base: dict[str, Any], processed: "Processed", storage: str, sweep: str) -> None:
    """One trial: build and fit a ``TorchTrainer``; metrics reach Tune through the callback."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from workloads.train import build_trainer

    cfg = _validate_trial_config(WorkspaceConfig.model_validate(base), params)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_trainer(
        cfg, processed,
        run_name=f"{sweep}-train-{trial_id}",
        storage_path=storage,
        num_workers=cfg.tune.workers_per_trial,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


# ----------------------------------------------------------------------- sweep


def _max_epochs(cfg: WorkspaceConfig) -> int:
    spec = cfg.tune.search_space.get("epochs")
    if isinstance(spec, Choice):
        return int(max(spec.values))
    if isinstance(spec, RandInt):
        return int(spec.high - 1)
    return cfg.train.epochs


def _row(result: Any, metric: str, mode: str, default_epochs: int, storage: str) -> TrialRow:
    df = result.metrics_dataframe
    cfg = dict(result.config or {})
    planned = int(cfg.get("epochs", default_epochs))
    error = None if result.error is None else _error_summary(result.error)
    best_metric = None
    best_ckpt = None
    epochs_run = 0
    if df is not None and len(df) and metric in df.columns:
        scored = df.dropna(subset=[metric])
        if len(scored):
            idx = scored[metric].idxmax() if mode == "max" else scored[metric].idxmin()
            best_metric = float(scored.loc[idx, metric])
            if CHECKPOINT_PATH_KEY in scored.columns:
                best_ckpt = scored.loc[idx, CHECKPOINT_PATH_KEY]
                # TuneReportCallback reports the path on the storage's filesystem, without the scheme.
                best_ckpt = storage_location.from_fs_path(storage, best_ckpt) if isinstance(best_ckpt, str) else None
        if "epoch" in df.columns and df["epoch"].notna().any():
            # The epoch the trainer reached: a trial restored after an interruption restarts Tune's
            # training_iteration at 1 while its trainer continues from its checkpoint's epoch.
            epochs_run = int(df["epoch"].max())
        else:
            epochs_run = int(df["training_iteration"].max()) if "training_iteration" in df.columns else len(df)
    status = "ERROR" if result.error is not None else "TERMINATED"
    trial_id = str((result.metrics or {}).get("trial_id") or (os.path.basename(str(result.path)) if result.path else "?"))
    return TrialRow(
        trial_id=trial_id, status=status, config=cfg, best_metric=best_metric, epochs_run=epochs_run,
        epochs_planned=planned, stopped_early=status != "ERROR" and epochs_run < planned,
        best_checkpoint=best_ckpt, error=error,
    )


def _label_stops(rows: list[TrialRow], asha_stopped: set[str], *, budget_spent: bool) -> None:
    """Say who cut each trial that ended short of its planned epochs: ASHA, or the time budget.

    Args:
        rows: The trial rows (``stopped_early`` set for every short trial by :func:`_row`).
        asha_stopped: Trial ids ASHA stopped (:data:`tune.stops.ASHA_STOPPED`).
        budget_spent: Whether the sweep's time budget ran out; then every short trial ASHA did
            not stop was stopped by the budget (Ray stops all running trials and starts no new one).
    """
    for row in rows:
        if not row.stopped_early or row.trial_id in asha_stopped or not budget_spent:
            continue  # ASHA's decision; or no budget ran out (a restored sweep's earlier ASHA stops)
        row.stopped_early, row.stopped_by_budget = False, True


def _error_summary(error: BaseException) -> str:
    """The root cause of a trial's failure: Ray wraps it, and its traceback ends with the original exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _write_table(path: str, result: SweepResult) -> dict[str, str]:
    """Save the trial table as CSV and JSON beside the sweep, in its storage (each file atomically)."""
    buf = io.StringIO()
    keys = sorted({k for t in result.trials for k in t.config})
    writer = csv.writer(buf)
    writer.writerow(["trial_id", "status", f"best_{result.metric}", "epochs_run", "epochs_planned", "stopped_early",
                     "stopped_by", *keys, "error"])
    for t in result.trials:
        writer.writerow([t.trial_id, t.status, t.best_metric, t.epochs_run, t.epochs_planned, t.stopped_early,
                         t.stopped_by, *[t.config.get(k) for k in keys], t.error or ""])
    return {
        "csv": storage_location.write_bytes(storage_location.join(path, "trials.csv"), buf.getvalue().encode()),
        "json": storage_location.write_bytes(
            storage_location.join(path, "trials.json"), json.dumps(result.to_dict(), indent=1, default=str).encode()
        ),
    }


def run_sweep(cfg: WorkspaceConfig, *, processed: "Processed | None" = None, name: str | None = None) -> SweepResult:
    """Run the sweep described by ``cfg.tune`` over ``cfg.train``; Ray must be initialized.

    Failed trials are reported in the result, not raised; only a sweep in which no
    trial produced a checkpoint raises.

    Args:
        cfg: The workspace config (``tune`` and ``train`` sections).
        processed: Already processed datasets; else the lake is processed here.
        name: The sweep's name under ``tune.storage_path`` (default: a new unique one). When a sweep
            of that name was interrupted, it is restored (``Tuner.restore``) rather than started again:
            finished trials are kept, unfinished ones run again, and each one's ``TorchTrainer`` (named
            after its trial) continues from its latest checkpoint (Ray Train V2 resumes a run of the same
            name). Trials that failed stay failed.

    Raises:
        ConfigError: No trial fits the cluster, or a sampled value breaks a train rule.
        TuneError: Every trial failed.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tune.stops import ASHA_STOPPED, BUDGET_SPENT, RecordingASHA

    from workloads.data import process
    from workloads.train import new_run_name

    tc = cfg.tune
    for params in sample_configs(tc):
        _validate_trial_config(cfg, params)  # fail before any trial starts if a sampled value breaks a rule
    start = time.monotonic()
    from workloads.runtime import cluster_cpu_capacity

    # The configured maximum on an autoscaling cluster (trials wait for nodes to come), else what is up.
    cluster_cpus, _ = cluster_cpu_capacity()
    concurrency = plan_concurrency(tc, cfg.train.cpus_per_worker, cluster_cpus)
    processed = processed or process(cfg.data)
    storage = storage_location.canonical(tc.storage_path)
    name = name or new_run_name(tc.name)
    max_t = _max_epochs(cfg)
    if tc.scheduler == "asha":
        scheduler = RecordingASHA(
            sweep=name, time_attr="training_iteration", max_t=max_t,
            grace_period=min(tc.grace_period, max_t), reduction_factor=tc.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial_driver, base=cfg.model_dump(mode="json"), processed=processed,
            storage=storage_location.join(storage, name), sweep=name,
        ),
        _driver_resources(tc),
    )
    path = storage_location.join(storage, name)
    restored = tune.Tuner.can_restore(path)
    if restored:
        # Tune keeps the searcher's state and every trial's status in the experiment directory: the same
        # samples are kept, finished trials are not run again.
        logger.info("sweep %s: restoring the interrupted sweep at %s", name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = _new_tuner(tc, trainable, scheduler, concurrency, name, storage)
    logger.info("sweep %s: %d samples, %d at a time, scheduler %s", name, tc.num_samples, concurrency, tc.scheduler)
    grid = tuner.fit()
    rows = [_row(r, tc.metric, tc.mode, cfg.train.epochs, storage) for r in grid]
    budget_spent = name in BUDGET_SPENT
    BUDGET_SPENT.discard(name)
    _label_stops(rows, ASHA_STOPPED.pop(name, set()), budget_spent=budget_spent)
    # A trial that crashed may have reported a good early epoch; only trials that ran to their end (or were
    # stopped by the scheduler) are candidates.
    scored = [r for r in rows if r.status != "ERROR" and r.best_metric is not None and r.best_checkpoint]
    if not scored:
        errors = "; ".join(r.error for r in rows if r.error) or "no trial reported a checkpoint"
        raise TuneError(f"sweep {name}: no trial finished with a checkpoint ({errors})")
    best = (max if tc.mode == "max" else min)(scored, key=lambda r: r.best_metric)
    result = SweepResult(
        name=name, path=path, metric=tc.metric, mode=tc.mode, trials=rows, best=best,
        concurrency=concurrency, elapsed_s=time.monotonic() - start, restored=restored,
    )
    result.files = _write_table(result.path, result)
    return result


def _new_tuner(tc: TuneConfig, trainable: Any, scheduler: Any, concurrency: int, name: str, storage: str):
    from ray import tune

    from tune.stops import BudgetStopper

    return tune.Tuner(
        trainable,
        param_space=search_space(tc),
        tune_config=tune.TuneConfig(
            metric=tc.metric, mode=tc.mode, num_samples=tc.num_samples, scheduler=scheduler,
            search_alg=searcher(tc), max_concurrent_trials=concurrency,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=0), verbose=0,
            # What TuneConfig(time_budget_s=...) builds, recording that it fired (for the trial table).
            stop=BudgetStopper(tc.time_budget_s, sweep=name) if tc.time_budget_s else None,
        ),
    )


def _driver_resources(tc: TuneConfig) -> dict[str, float]:
    # Ray refuses an all-zero bundle; a driver that only waits on its trainer reserves memory, not CPU.
    resources: dict[str, float] = {"memory": float(256 * 1024**2)}
    if tc.trial_driver_cpus > 0:
        resources["CPU"] = tc.trial_driver_cpus
    return resources

