"""``rayspace config|data|train|evaluate|run``: thin wrappers over the workloads library."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the workloads subcommands."""
    from workloads import pipeline

    p = subparsers.add_parser("run", parents=[common], help="the main job: ingest -> train -> evaluate -> tune -> promote -> serve")
    pipeline.add_arguments(p)
    p.set_defaults(func=pipeline.cli_run)

    cfg = subparsers.add_parser("config", help="show or validate the workspace configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", parents=[common], help="print the effective configuration as YAML")
    show.set_defaults(func=_config_show)
    val = cfg_sub.add_parser("validate", parents=[common], help="validate --config/--set and exit")
    val.set_defaults(func=_config_validate)
    ex = cfg_sub.add_parser("example", help="print the annotated example config (every field, default and rule)")
    ex.set_defaults(func=_config_example)

    data = subparsers.add_parser("data", help="the Parquet lake")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    ing = data_sub.add_parser("ingest", parents=[common], help="write the built-in WDBC dataset, or --source PATH, into the lake")
    ing.add_argument("--source", help="CSV/Parquet file or folder with the lake schema (default: the built-in dataset)")
    ing.add_argument("--lake", help="lake root (default: data.lake)")
    ing.add_argument("--name", help="partition name (default: wdbc, or the file/folder name)")
    ing.set_defaults(func=_data_ingest)
    syn = data_sub.add_parser("synth", parents=[common], help="write a SYNTHETIC cohort with the same schema (for scale benchmarks)")
    syn.add_argument("--rows", type=int, required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--lake", help="lake root (default: a separate lake beside data.lake, e.g. ./lake-synth); "
                     "the generator is fitted on training-split patients only")
    syn.add_argument("--name", default="synthetic")
    syn.set_defaults(func=_data_synth)
    ls = data_sub.add_parser("list", parents=[common], help="the current snapshot's partitions and their manifests")
    ls.add_argument("--lake")
    ls.add_argument("--snapshot", type=int, help="list this kept snapshot instead of the current one")
    ls.set_defaults(func=_data_list)
    gc = data_sub.add_parser("gc", parents=[common], help="delete old lake snapshots (keeps data.keep_snapshots and any a run holds)")
    gc.add_argument("--lake")
    gc.add_argument("--keep", type=int, help="data.keep_snapshots")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    gc.set_defaults(func=_data_gc)

    tr = subparsers.add_parser("train", parents=[common], help="train on the lake with Ray Train (TorchTrainer)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--workers", type=int, help="train.num_workers")
    tr.add_argument("--storage", help="train.storage_path")
    tr.set_defaults(func=_train)

    ev = subparsers.add_parser("evaluate", parents=[common], help="test-split metrics of a checkpoint, as JSON + PNG")
    ev.add_argument("checkpoint", help="checkpoint directory or URI")
    ev.add_argument("--out", help="report directory (default: <train.storage_path>/reports/<run>)")
    ev.set_defaults(func=_evaluate)


def check_inputs(cfg, *, checkpoint: str | None = None, lake: bool = True) -> None:
    """Fail with one line before Ray starts when a command's inputs are not there.

    Starting Ray costs seconds and prints its own lines first; a typo in a checkpoint
    path or a lake that was never ingested should not wait for that.

    Args:
        cfg: The command's :class:`~workloads.config.WorkspaceConfig`.
        checkpoint: The ``CHECKPOINT`` argument, if the command takes one.
        lake: Whether the command reads the lake (``data.lake``, ``data.snapshot``).

    Raises:
        CheckpointError: ``checkpoint`` is not a location, not there, or has no ``model.json``.
        LakeNotFoundError: No lake at ``data.lake``, or it holds no committed data.
    """
    from workloads import lake as lake_mod
    from workloads import storage
    from workloads.exceptions import CheckpointError, StorageError
    from workloads.model import META_FILE

    if checkpoint is not None:
        try:
            uri = storage.canonical(checkpoint)
            there, complete = storage.exists(uri), storage.exists(storage.join(uri, META_FILE))
        except StorageError as e:
            raise CheckpointError(f'Got "{checkpoint}" for CHECKPOINT: {e}') from e
        if not there:
            raise CheckpointError(f'Got "{checkpoint}" for CHECKPOINT: no such directory; pass a checkpoint directory, '
                                  "e.g. the `best checkpoint:` that `rayspace train` prints")
        if not complete:
            raise CheckpointError(f'Got "{checkpoint}" for CHECKPOINT: not a complete checkpoint ({META_FILE} is '
                                  "missing); pass a checkpoint_* directory of a finished run")
    if lake:
        lake_mod.require(cfg.data.lake, cfg.data.snapshot)


def _config_show(args: argparse.Namespace) -> int:
    from workloads.cli import config_from_args, emit
    from workloads.config import dump_config

    cfg = config_from_args(args)
    emit(args, cfg.model_dump(mode="json"), dump_config(cfg).rstrip())
    return 0


def _config_example(args: argparse.Namespace) -> int:
    from workloads.config import example_yaml

    print(example_yaml(), end="")
    return 0


def _config_validate(args: argparse.Namespace) -> int:
    from workloads.cli import config_from_args, emit

    config_from_args(args)
    emit(args, {"valid": True}, "configuration is valid")
    return 0


def _data_ingest(args: argparse.Namespace) -> int:
    from workloads import lake
    from workloads.cli import config_from_args, emit

    cfg = config_from_args(args, {"data.lake": args.lake, "data.source": args.source})
    m = lake.ingest(cfg.data.lake, cfg.data.source, name=args.name)
    state = f"snapshot {m.snapshot}" if m.changed else f"unchanged, snapshot {m.snapshot} stays current"
    emit(args, asdict(m), f"ingested {m.row_count} rows from {m.origin} into {cfg.data.lake} as source={m.source} "
                          f"({m.content_hash}; {state})")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from workloads import lake
    from workloads.cli import config_from_args, emit

    cfg = config_from_args(args)
    target = args.lake or lake.synth_lake(cfg.data.lake)
    m = lake.synth(target, args.rows, seed=args.seed, chunk_rows=cfg.data.synth_chunk_rows, name=args.name,
                   salt=cfg.data.split_salt, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction)
    emit(args, {**asdict(m), "lake": target},
         f"wrote {m.row_count} SYNTHETIC rows into {target} as source={m.source} ({len(m.files)} files; snapshot "
         f"{m.snapshot}; generator fitted on {m.notes['fitted_on']['patients']} training-split patients)")
    return 0


def _data_list(args: argparse.Namespace) -> int:
    from workloads import lake
    from workloads.cli import config_from_args, emit, print_table

    cfg = config_from_args(args, {"data.lake": args.lake})
    snap = lake.require(cfg.data.lake, args.snapshot, committed=False)
    parts = snap.manifests
    if args.json:
        emit(args, {"lake": cfg.data.lake, "snapshot": snap.id, "fingerprint": snap.fingerprint,
                    "created_at": snap.created_at, "partitions": [asdict(p) for p in parts],
                    "snapshots": [s.id for s in lake.snapshot_history(cfg.data.lake)]})
        return 0
    if snap.id:
        kept = [s.id for s in lake.snapshot_history(cfg.data.lake)]
        print(f"snapshot {snap.id} ({snap.operation}, {snap.created_at}); kept snapshots: {', '.join(map(str, kept))}")
    print_table([{"source": p.source, "rows": p.row_count, "synthetic": p.synthetic, "created": p.created_at,
                  "hash": p.content_hash[:19]} for p in parts])
    return 0


def _data_gc(args: argparse.Namespace) -> int:
    from workloads import lake
    from workloads.cli import config_from_args, emit

    cfg = config_from_args(args, {"data.lake": args.lake, "data.keep_snapshots": args.keep})
    r = lake.gc(cfg.data.lake, keep=cfg.data.keep_snapshots, lease_ttl_hours=cfg.data.lease_ttl_hours,
                dry_run=args.dry_run)
    verb = "would remove" if r.dry_run else "removed"
    held = ", ".join(f"{k} ({n} lease{'s' if n > 1 else ''})" for k, n in sorted(r.held.items())) or "none"
    lines = [
        f"current snapshot {r.current}; kept {', '.join(map(str, r.kept))}; held by running jobs: {held}",
        f"{verb} {len(r.removed)} snapshot(s){' ' + ', '.join(map(str, r.removed)) if r.removed else ''} and "
        f"{len(r.removed_versions)} partition version(s) only they used",
    ]
    if r.stale_leases:
        lines.append(f"{verb} {len(r.stale_leases)} stale lease(s): {'; '.join(r.stale_leases)}")
    if r.swept:
        lines.append(f"{verb} debris of interrupted ingests: {', '.join(r.swept)}")
    emit(args, asdict(r), "\n".join(lines))
    return 0


def _train(args: argparse.Namespace) -> int:
    from workloads.cli import config_from_args, emit, progress
    from workloads.runtime import ensure_ray
    from workloads.train import train

    cfg = config_from_args(args, {"train.epochs": args.epochs, "train.num_workers": args.workers, "train.storage_path": args.storage})
    check_inputs(cfg)
    info = ensure_ray()
    from workloads.shared_storage import check_shared

    check_shared({"data.lake": cfg.data.lake, "train.storage_path": cfg.train.storage_path})
    progress(args, f"training on {info['mode']} Ray ({info['cpus']:g} CPUs)...")
    result = train(cfg)
    m = result.metrics
    emit(args, result.to_dict(),
         f"best checkpoint: {result.checkpoint}\nval ROC AUC {m.get('val_roc_auc', float('nan')):.4f}, "
         f"val accuracy {m.get('val_accuracy', float('nan')):.4f}, {len(result.history)} epochs, "
         f"{result.num_workers} workers, {result.elapsed_s:.1f}s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from workloads.cli import config_from_args, emit
    from workloads.evaluate import evaluate
    from workloads.runtime import ensure_ray

    cfg = config_from_args(args)
    check_inputs(cfg, checkpoint=args.checkpoint)
    ensure_ray()
    report = evaluate(cfg, args.checkpoint, output_dir=args.out)
    human = (
        f"test accuracy {report['test_accuracy']:.4f}  ROC AUC {report['test_roc_auc']:.4f}  "
        f"precision {report['test_precision']:.4f}  recall {report['test_recall']:.4f}\n"
        f"confusion matrix [[tn, fp], [fn, tp]]: {json.dumps(report['confusion_matrix'])}\n"
        f"report: {report['report_json']}  plot: {report['report_png']}"
    )
    emit(args, report, human)
    return 0
