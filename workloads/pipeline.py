"""The main job: ingest -> process -> train -> evaluate (-> tune -> promote -> serve).

``run(cfg) -> dict`` is the pure entry point; ``rayspace run`` and
``python -m workloads.pipeline`` (the ``ray job submit`` / RayJob entrypoint)
both wrap it with the same flags. On a laptop it starts Ray in-process; with
``RAY_ADDRESS`` set (a submitted job, a notebook on the head) it joins that
cluster and writes to the configured storage, never to the job's temp dir.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workloads import runs
from workloads import storage as storage_location
from workloads.config import SMOKE_OVERRIDES, WorkspaceConfig, with_overrides
from workloads.exceptions import DataError, LakeNotFoundError
from workloads.jobs import check_job_storage, job_summary, write_job_record

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: Stages in order; ``--until`` stops after one of them.
STAGES = ("ingest", "process", "train", "evaluate", "tune", "promote", "serve")


@dataclass
class PipelineOptions:
    """How much of the pipeline to run."""

    smoke: bool = False
    until: str = "serve"
    skip_ingest: bool = False
    skip_tune: bool = False
    keep_serving: bool = False
    #: ``--run-id``: the id of this run (default: the Ray job's submission id, else a fresh one).
    run_id: str | None = None
    #: ``--resume``: the id of an interrupted run to finish.
    resume: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _RunState:
    """The run's record and the skip/record chores of each stage."""

    record: runs.RunRecord
    resumed: bool
    storage_path: str
    summary: dict[str, Any]
    say: Progress
    start: float

    def reuse(self, stage: str, inputs: dict[str, Any],
              paths: Callable[[dict[str, Any]], list[str | None]] = lambda out: []) -> dict[str, Any] | None:
        """The recorded outputs of ``stage`` if a resumed run may skip it, else ``None`` (run it)."""
        if not self.resumed:
            return None
        ok, why = runs.reusable(self.record, stage, inputs, paths(self.record.outputs(stage)))
        if not ok:
            self.say(f"[{stage}] not skipped: {why}")
            return None
        self.summary["skipped"].append(stage)
        self.record.skipped.append(stage)
        self.say(f"[{stage}] skipped: run {self.record.run_id} finished it with the same inputs and its outputs are there")
        return self.record.outputs(stage)

    def done(self, stage: str, msg: str, inputs: dict[str, Any] | None = None,
             outputs: dict[str, Any] | None = None) -> None:
        """Count a finished stage; with ``inputs``, record it so a resumed run can skip it."""
        self.summary["stages"].append(stage)
        if inputs is not None:
            self.record.complete(stage, inputs, outputs or {})
            runs.save(self.storage_path, self.record)
        self.say(f"[{stage}] {msg} ({time.monotonic() - self.start:.1f}s)")


def smoke_config(cfg: WorkspaceConfig) -> WorkspaceConfig:
    """The tiny configuration of ``--smoke`` layered over ``cfg``."""
    return with_overrides(cfg, SMOKE_OVERRIDES)


def _stage_enabled(name: str, opts: PipelineOptions) -> bool:
    return STAGES.index(name) <= STAGES.index(opts.until)


def run(cfg: WorkspaceConfig, opts: PipelineOptions | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the main job and return its summary.

    Args:
        cfg: Workspace config (already including ``--smoke`` overrides if wanted).
        opts: Which stages to run.
        progress: Called with one human-readable line per step.

    Returns:
        Summary with at least ``test_accuracy``, ``test_roc_auc``, ``checkpoint``, ``elapsed_s``,
        and ``endpoint``, ``model_version``, ``best_trial`` when the serving stages ran.
    """
    from workloads import lake
    from workloads.runtime import ensure_ray

    opts = opts or PipelineOptions()
    say = progress or (lambda msg: logger.info(msg))
    start = time.monotonic()
    summary: dict[str, Any] = {"stages": []}
    # As a Ray job's driver: refuse storage the job would lose, and record which job this is.
    job = check_job_storage(cfg)
    if job is not None:
        summary["job"] = job_summary(job, cfg)
    if opts.skip_ingest: lake.require(cfg.data.lake, cfg.data.snapshot)  # noqa: E701 - no lake: one line, before Ray starts
    # The run's id names its Train run, its sweep and its record; --resume continues the recorded run.
    record, resumed = runs.open_run(cfg.train.storage_path, run_id=opts.run_id, resume=opts.resume,
                                    submission_id=job.submission_id if job is not None else None)
    state = _RunState(record, resumed, cfg.train.storage_path, summary, say, start)
    summary["skipped"] = []
    summary["run"] = {"id": record.run_id, "resumed": resumed, "attempt": record.attempts,
                      "record": runs.record_uri(cfg.train.storage_path, record.run_id)}
    done = state.done

    if os.environ.get("RAY_ADDRESS"):
        # On a cluster, refuse node-local storage before writing anything (the ingest included).
        from workloads.shared_storage import check_shared

        ensure_ray()
        check_shared(storage_settings(cfg, serving=_stage_enabled("promote", opts)))

    runs.save(cfg.train.storage_path, record)
    say(f"[run] {'resuming' if resumed else 'run'} {record.run_id} (attempt {record.attempts}); if it is interrupted, "
        f"`rayspace run --resume {record.run_id}` with the same settings finishes it")
    if resumed:
        cfg = _pin_recorded_snapshot(cfg, record, say)

    if not opts.skip_ingest:
        ingest_inputs = {"lake": cfg.data.lake, "source": cfg.data.source}
        # Skipped only while the lake still keeps the snapshot the interrupted run read (pinned above).
        if (state.reuse("ingest", ingest_inputs) if cfg.data.snapshot is not None else None) is None:
            m = lake.ingest(cfg.data.lake, cfg.data.source)
            done("ingest", f"{m.row_count} rows from {m.origin} -> {cfg.data.lake} ({m.content_hash[:19]})",
                 ingest_inputs, {"snapshot": m.snapshot, "content_hash": m.content_hash})
        if opts.until == "ingest":
            return _finish(summary, start, state)

    if _stage_enabled("serve", opts) and not os.environ.get("RAY_ADDRESS"):
        from serve.runner import prepare_local_ray

        # Serve's ingress is chosen by environment variables read when Ray's processes start;
        # HAProxy's files go to this run's temp dir and HAProxy dies with the run.
        prepare_local_ray(cfg.serve.ingress)
    ray_info = ensure_ray()
    summary["ray"] = ray_info
    say(f"[ray] {ray_info['mode']} Ray with {ray_info['cpus']:g} CPUs")

    from workloads.data import process

    processed = process(cfg.data)
    # Evaluation and the serve probe read the same snapshot processing did, even if an ingest lands mid-run.
    if processed.snapshot:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"snapshot": processed.snapshot})})
    summary["split_counts"] = processed.counts
    summary["data_fingerprint"] = processed.fingerprint
    # Processing is always run: its datasets live in Ray's object store and die with the driver.
    done("process", f"splits {processed.counts}, standardization fitted on train only", {"lake": cfg.data.lake},
         {"snapshot": processed.snapshot, "fingerprint": processed.fingerprint, "counts": processed.counts})
    if opts.until == "process":
        return _finish(summary, start, state)

    from workloads.train import TrainResult, train

    train_inputs = {"data_fingerprint": processed.fingerprint, "train": cfg.train.model_dump(mode="json")}
    recorded = state.reuse("train", train_inputs, lambda out: [out.get("checkpoint")])
    if recorded is not None:
        result = TrainResult(**recorded)
    else:
        # Named after the run (and its inputs): a resumed run's Train V2 continues from the latest checkpoint.
        result = train(cfg, processed=processed, run_name=runs.engine_run_name(cfg.train.name, record.run_id, train_inputs))
    summary["checkpoint"] = result.checkpoint
    summary["train_metrics"] = result.metrics
    summary["num_workers"] = result.num_workers
    summary["train_attempt"] = result.attempt  # where each rank ran, and the epoch a restart resumed from
    if recorded is None:
        done(
            "train",
            f"{len(result.history)} epochs on {result.num_workers} workers, best val ROC AUC "
            f"{result.metrics.get('val_roc_auc', float('nan')):.4f} -> {result.checkpoint}"
            + (f" (resumed after epoch {result.attempt['resumed_from_epoch']})"
               if result.attempt.get("resumed_from_epoch") else ""),
            train_inputs, result.to_dict(),
        )
    if opts.until == "train":
        return _finish(summary, start, state)

    from workloads.evaluate import evaluate

    eval_inputs = {"checkpoint": result.checkpoint, "data_fingerprint": processed.fingerprint}
    report = state.reuse("evaluate", eval_inputs, lambda out: [out.get("report_json"), out.get("report_png")])
    if report is None:
        report = evaluate(cfg, result.checkpoint)
        done("evaluate", f"test accuracy {report['test_accuracy']:.4f}, ROC AUC {report['test_roc_auc']:.4f} -> {report['report_png']}",
             eval_inputs, report)
    summary.update({k: report[k] for k in ("test_accuracy", "test_roc_auc", "test_precision", "test_recall")})
    summary["confusion_matrix"] = report["confusion_matrix"]
    summary["report"] = report["report_json"]
    if opts.until == "evaluate":
        return _finish(summary, start, state)

    _serve_stages(cfg, opts, processed, result, report, summary, done, say, state)
    return _finish(summary, start, state)


def _pin_recorded_snapshot(cfg: WorkspaceConfig, record: runs.RunRecord, say: Progress) -> WorkspaceConfig:
    """A resumed run reads the lake snapshot the interrupted run read, while the lake still keeps it."""
    from workloads import lake

    snap = record.outputs("process").get("snapshot") or record.outputs("ingest").get("snapshot")
    if not snap or cfg.data.snapshot is not None:
        return cfg
    try:
        lake.resolve(cfg.data.lake, int(snap))
    except LakeNotFoundError as e:
        say(f"[run] the recorded lake snapshot {snap} is gone ({e}); reading the current one")
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"snapshot": int(snap)})})


def storage_settings(cfg: WorkspaceConfig, *, serving: bool = True) -> dict[str, str]:
    """The storage settings the pipeline writes or reads on every node (setting name -> value)."""
    out = {"data.lake": cfg.data.lake, "train.storage_path": cfg.train.storage_path,
           "tune.storage_path": cfg.tune.storage_path}
    if serving:
        out["registry.path"] = cfg.registry.path
    return out


def _probe_instance(cfg: WorkspaceConfig) -> tuple[str, dict[str, float], int]:
    """One real test-split patient from the lake, as a KServe V1 instance keyed by feature name."""
    import pyarrow.parquet as pq

    from workloads.data import split_of
    from workloads.lake import lake_files
    from workloads.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN

    fs, files, _ = lake_files(cfg.data.lake, snapshot=cfg.data.snapshot)
    for path in files:
        table = pq.read_table(path, filesystem=fs).to_pandas()
        for _, row in table.iterrows():
            pid = row[ID_COLUMN]
            if split_of(pid, cfg.data.split_salt, cfg.data.val_fraction, cfg.data.test_fraction) != "test":
                continue
            values = {f: float(row[f]) for f in FEATURE_NAMES}
            if all(v == v for v in values.values()):  # no NaN: the endpoint rightly refuses gaps
                return pid, values, int(row[LABEL_COLUMN])
    raise DataError("no complete test-split patient in the lake to send as a probe prediction")


def _serve_stages(cfg, opts, processed, result, report, summary, done, say, state: _RunState) -> None:
    """tune -> promote -> serve -> one real prediction over HTTP."""
    from workloads.evaluate import evaluate

    candidate, candidate_report = result.checkpoint, report
    candidate_val = result.metrics.get(cfg.tune.metric)
    trial_config: dict[str, Any] | None = None
    card_extra: dict[str, Any] = {"train_run": result.run_name}
    if not opts.skip_tune:
        sweep_inputs = {"data_fingerprint": processed.fingerprint, "tune": cfg.tune.model_dump(mode="json"),
                        "train": cfg.train.model_dump(mode="json")}
        tune_inputs = {**sweep_inputs, "baseline": result.checkpoint}
        recorded = state.reuse("tune", tune_inputs, lambda out: [(out.get("sweep") or {}).get("table"), out.get("candidate")])
        if recorded is not None:
            summary["best_trial"], summary["sweep"] = recorded["best_trial"], recorded["sweep"]
            candidate, candidate_report = recorded["candidate"], recorded["candidate_report"]
            trial_config, card_extra = recorded["trial_config"], recorded["card_extra"]
        else:
            from tune.sweep import run_sweep

            # Named after the run: a resumed run restores its interrupted sweep (Tuner.restore).
            sweep = run_sweep(cfg, processed=processed,
                              name=runs.engine_run_name(cfg.tune.name, state.record.run_id, sweep_inputs))
            best = sweep.best
            summary["best_trial"] = best.trial_id
            summary["sweep"] = {
                "path": sweep.path, "trials": len(sweep.trials), "failed": len(sweep.failed),
                "stopped_early": sum(t.stopped_early for t in sweep.trials), "best_metric": best.best_metric,
                "table": sweep.files.get("csv"), "restored": sweep.restored,
            }
            # Select on validation data only; the test split stays untouched until the gate.
            better = candidate_val is None or (
                best.best_metric > candidate_val if cfg.tune.mode == "max" else best.best_metric < candidate_val
            )
            if better:
                candidate = best.best_checkpoint
                candidate_report = evaluate(cfg, candidate)
                trial_config = best.config
                card_extra = {"tune_trial": best.trial_id, "sweep": sweep.path}
            done(
                "tune",
                f"{len(sweep.trials)} trials ({summary['sweep']['stopped_early']} stopped early, {len(sweep.failed)} failed"
                + (", restored after an interruption" if sweep.restored else "")
                + f"), best {best.trial_id} {cfg.tune.metric}={best.best_metric:.4f}",
                tune_inputs,
                {"best_trial": best.trial_id, "sweep": summary["sweep"], "candidate": candidate,
                 "candidate_report": candidate_report, "trial_config": trial_config, "card_extra": card_extra},
            )
            if not better:
                say(f"[tune] the baseline run's {cfg.tune.metric}={candidate_val:.4f} beats the sweep; promoting it")
        summary["selected_checkpoint"] = candidate
        summary["test_accuracy"] = candidate_report["test_accuracy"]
        summary["test_roc_auc"] = candidate_report["test_roc_auc"]
        if opts.until == "tune":
            return

    promote_inputs = {"candidate": candidate, "registry": cfg.registry.path, "model_name": cfg.registry.model_name}
    recorded = state.reuse("promote", promote_inputs, lambda out: [_card_uri(cfg, (out.get("promotion") or {}).get("version"))])
    if recorded is not None:
        summary["promotion"], summary["model_version"] = recorded["promotion"], recorded["model_version"]
    else:
        _promote(cfg, candidate, candidate_report, trial_config, card_extra, summary, done, promote_inputs)
    if opts.until == "promote":
        return

    from serve import runner

    url = runner.start(cfg)
    pid, instance, label = _probe_instance(cfg)
    answer = runner.predict(url, cfg.registry.model_name, [instance])
    pred = answer["predictions"][0]
    summary["endpoint"] = f"{url.rstrip('/')}/v1/models/{cfg.registry.model_name}:predict"
    summary["model_version"] = answer.get("model_version", summary["model_version"])
    summary["prediction"] = {"patient_id": pid, "true_label": label, **pred}
    done("serve", f"{summary['endpoint']} answered for {pid}: {pred} (true label {label})")


def _card_uri(cfg: WorkspaceConfig, version: str | None) -> str | None:
    """Where the registry keeps a version's model card (``None`` without a version)."""
    if not version:
        return None
    return storage_location.join(cfg.registry.path, cfg.registry.model_name, version, "model_card.json")


def _promote(cfg, candidate, candidate_report, trial_config, card_extra, summary, done, promote_inputs) -> None:
    """The promote stage: register the candidate and let the gate decide whether it becomes current."""
    from workloads.registry import promote

    test_metrics = {k: v for k, v in candidate_report.items() if k.startswith("test_") or k == "confusion_matrix"}
    from workloads.evaluate import make_comparer

    promoted = promote(cfg.registry, candidate, test_metrics, trial_config=trial_config, extra_card=card_extra,
                       compare=make_comparer(cfg, candidate))
    summary["promotion"] = {
        "version": promoted.version, "promoted": promoted.promoted, "current": promoted.current,
        "previous": promoted.previous, "gate": promoted.gate.reason,
    }
    summary["model_version"] = promoted.current
    done(
        "promote",
        f"{promoted.name} {promoted.version} "
        + ("is now current" if promoted.promoted else f"kept {promoted.current} current")
        + f" ({promoted.gate.reason})",
        promote_inputs, {"promotion": summary["promotion"], "model_version": summary["model_version"]},
    )


def _finish(summary: dict[str, Any], start: float, state: _RunState) -> dict[str, Any]:
    summary["elapsed_s"] = round(time.monotonic() - start, 2)
    # The stages asked for are done: the record says so (a later --resume skips what it can and serves again).
    state.record.status = "finished"
    runs.save(state.storage_path, state.record)
    if "job" in summary:
        # The job's logs go with the cluster; this record stays beside the results it describes.
        summary["job"]["record"] = write_job_record(summary, summary["job"]["storage"]["train.storage_path"])
    return summary


# ------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``rayspace run`` (shared with ``python -m workloads.pipeline``)."""
    parser.add_argument("--smoke", action="store_true", help="tiny config: the whole pipeline in well under a minute after Ray starts")
    parser.add_argument("--until", choices=STAGES, default="serve", help="stop after this stage (default: serve)")
    parser.add_argument("--skip-ingest", action="store_true", help="use what is already in the lake")
    parser.add_argument("--skip-tune", action="store_true", help="promote the trained checkpoint without a sweep")
    parser.add_argument("--keep-serving", action="store_true",
                        help="after the run, keep serving until Ctrl-C or SIGTERM (then exit 0; a second one forces the stop)")
    parser.add_argument("--run-id", help="this run's id: names its Train run, its sweep and its record "
                        "<train.storage_path>/runs/<id>.json (default: the Ray job's submission id, else a fresh one)")
    parser.add_argument("--resume", metavar="RUN_ID",
                        help="finish an interrupted run (give the same settings): stages it finished are skipped, "
                        "its training continues from its latest checkpoint and its sweep is restored")
    parser.add_argument("--lake", help="shorthand for --set data.lake=URI")
    parser.add_argument("--storage", help="shorthand for --set train.storage_path=URI and tune.storage_path=URI")
    parser.add_argument("--registry", help="shorthand for --set registry.path=URI")
    parser.add_argument("--source", help="shorthand for --set data.source=PATH")


def options_from_args(args: argparse.Namespace) -> PipelineOptions:
    return PipelineOptions(
        smoke=args.smoke, until=args.until, skip_ingest=args.skip_ingest, skip_tune=args.skip_tune,
        keep_serving=args.keep_serving, run_id=args.run_id, resume=args.resume,
    )


def config_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data.lake": args.lake,
        "data.source": args.source,
        "train.storage_path": args.storage,
        "tune.storage_path": args.storage,
        "registry.path": args.registry,
    }


def cli_run(args: argparse.Namespace) -> int:
    """Handler of ``rayspace run`` and ``python -m workloads.pipeline``."""
    import contextlib

    from workloads.cli import config_from_args, emit, progress

    # --smoke sits under the user's --set and flags: `--smoke --set train.num_workers=2` trains on 2 workers.
    from workloads.config import parse_override

    user = dict(parse_override(o) for o in getattr(args, "overrides", []) or [])
    flags = {k: v for k, v in config_overrides_from_args(args).items() if v is not None}
    cfg = config_from_args(args, {**(SMOKE_OVERRIDES if args.smoke else {}), **user, **flags})
    opts = options_from_args(args)
    # Under --json, whatever Ray prints on the driver goes to stderr: stdout ends with the summary line.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet_stdout:
        summary = run(cfg, opts, progress=lambda m: progress(args, m))
        if "endpoint" in summary and not args.keep_serving:
            _stop_local_serving()
    human = [
        "",
        "== rayspace run: summary ==",
        f"elapsed: {summary['elapsed_s']}s   stages: {' -> '.join(summary['stages'])}"
        + (f"   skipped (finished before): {', '.join(summary['skipped'])}" if summary.get("skipped") else ""),
        f"run: {summary['run']['id']} (attempt {summary['run']['attempt']}), record {summary['run']['record']}",
    ]
    for key in ("test_accuracy", "test_roc_auc", "test_precision", "test_recall"):
        if key in summary:
            human.append(f"{key}: {summary[key]:.4f}")
    for key in ("checkpoint", "report", "best_trial", "model_version", "endpoint", "prediction"):
        if key in summary:
            human.append(f"{key}: {summary[key]}")
    emit(args, summary, "\n".join(human))
    if "endpoint" in summary and args.keep_serving:
        from serve.runner import stop_signals

        progress(args, f"serving at {summary['endpoint']} -- Ctrl-C to stop")
        # SIGTERM or Ctrl-C: stop Serve, then Ray, and exit 0; a second one forces the stop.
        with stop_signals(lambda line: progress(args, line)) as signals:
            try:
                while not signals.event.wait(3600.0):
                    pass
                progress(args, f"{signals.name} received: stopping Serve, then Ray ({signals.name} again forces it)")
            finally:
                _stop_local_serving()
    return 0


def _stop_local_serving() -> None:
    """Stop what a local run started (Serve, its HAProxy, Ray) cleanly rather than at interpreter exit.

    On a cluster (``RAY_ADDRESS`` set) the application stays up after the job ends:
    that is the point of deploying it.
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    from serve.runner import shutdown

    shutdown(stop_ray=True)  # Serve, then Ray, then what is left of the run and its temp dir


def main(argv: list[str] | None = None) -> int:
    """``python -m workloads.pipeline``: the job entrypoint, same flags as ``rayspace run``."""
    from workloads.cli import main as cli_main

    # Reuse the CLI's error handling by routing through it.
    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
