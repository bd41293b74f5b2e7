"""``rayspace tune``: a Ray Tune sweep over the training, printed as a table and saved as CSV/JSON."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``rayspace tune``."""
    p = subparsers.add_parser("tune", parents=[common], help="sweep the training with Ray Tune (ASHA early stopping)")
    p.add_argument("--samples", type=int, help="tune.num_samples")
    p.add_argument("--concurrency", type=int, help="tune.max_concurrent_trials")
    p.add_argument("--time-budget", type=float, help="tune.time_budget_s")
    p.add_argument("--seed", type=int, help="tune.seed")
    p.add_argument("--storage", help="tune.storage_path")
    p.add_argument("--dry-run", action="store_true", help="print the configs the sweep would try, and exit")
    p.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    from workloads.cli import config_from_args, emit, print_table, progress

    from tune.sweep import run_sweep, sample_configs

    cfg = config_from_args(args, {
        "tune.num_samples": args.samples, "tune.max_concurrent_trials": args.concurrency,
        "tune.time_budget_s": args.time_budget, "tune.seed": args.seed, "tune.storage_path": args.storage,
    })
    if args.dry_run:
        configs = sample_configs(cfg.tune)
        if args.json:
            emit(args, {"configs": configs})
        else:
            print_table([{"#": i, **{k: _fmt(v) for k, v in c.items()}} for i, c in enumerate(configs)])
        return 0
    from workloads._cli import check_inputs
    from workloads.runtime import ensure_ray

    check_inputs(cfg)  # a missing lake is one line, before Ray starts
    info = ensure_ray()
    from workloads.shared_storage import check_shared

    check_shared({"data.lake": cfg.data.lake, "tune.storage_path": cfg.tune.storage_path})
    progress(args, f"sweeping {cfg.tune.num_samples} trials on {info['mode']} Ray ({info['cpus']:g} CPUs)...")
    result = run_sweep(cfg)
    if not args.json:
        print_table(
            [{"trial": t.trial_id[-14:], "status": t.status, f"best {result.metric}": _fmt(t.best_metric),
              "epochs": f"{t.epochs_run}/{t.epochs_planned}", "stopped by": t.stopped_by,
              **{k: _fmt(v) for k, v in t.config.items()}} for t in result.trials]
        )
        print(f"\nbest trial: {result.best.trial_id} {result.metric}={result.best.best_metric:.4f}")
        print(f"best checkpoint: {result.best.best_checkpoint}")
        budget = sum(t.stopped_by_budget for t in result.trials)
        print(f"{len(result.failed)} failed, {sum(t.stopped_early for t in result.trials)} stopped early by "
              f"{cfg.tune.scheduler.upper()}"
              + (f", {budget} stopped by the time budget (tune.time_budget_s={cfg.tune.time_budget_s:g}s)" if budget else "")
              + f", {result.concurrency} at a time, {result.elapsed_s:.0f}s")
        print(f"table: {result.files.get('csv')}  {result.files.get('json')}")
    else:
        emit(args, result.to_dict())
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
