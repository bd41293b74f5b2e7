"""``rayspace serve``, ``rayspace promote`` and ``rayspace models`` (registered by ``workloads.cli``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from workloads.exceptions import RegistryError

#: Exit code of ``rayspace promote`` when the gate keeps the current version.
EXIT_REJECTED = 3


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands to the ``rayspace`` parser."""
    p = subparsers.add_parser(
        "serve", parents=[common],
        help="serve the registry's current model over HTTP (KServe V1) until Ctrl-C",
        description="Run the Ray Serve app locally in the foreground. Replicas follow the registry's "
                    "`current` pointer by polling it every serve.reload_poll_s seconds, so a promotion "
                    "is picked up without a restart and without dropping requests. "
                    "SIGTERM or Ctrl-C stops Serve, then Ray, removes the run's temp dir "
                    "(<tmp>/rayspace-<uid>/<run>) and exits 0; a second signal forces the stop "
                    "(exit 128+signal: 143 for SIGTERM, 130 for Ctrl-C). HAProxy dies with the run even if "
                    "it is killed, and a start that finds leftovers of a killed run stops them and says so.",
    )
    p.add_argument("--host", help="address to bind (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default: serve.port, 8000)")
    p.add_argument("--registry", help="registry root (default: registry.path)")
    p.add_argument("--model", help="model name (default: registry.model_name)")
    p.add_argument("--ingress", choices=["haproxy", "proxy"], help="HTTP ingress (default: serve.ingress)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "promote", parents=[common],
        help="promote a checkpoint into the model registry (gated on its test metric)",
        description="Write CHECKPOINT as a new immutable version of the model and make it `current` "
                    "if its test metric (registry.gate_metric) is not worse than the current version's. "
                    "Test metrics come from --metrics, or from evaluating the checkpoint on the test split. "
                    f"Exits {EXIT_REJECTED} when the gate keeps the current version.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (local or URI)")
    p.add_argument("--metrics", metavar="JSON_OR_FILE",
                   help='test metrics as JSON (\'{"test_roc_auc": 0.97}\') or a JSON file; default: evaluate')
    p.add_argument("--trial-config", metavar="JSON_OR_FILE", help="hyperparameters to record (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="make it current whatever the gate says")
    p.add_argument("--registry", help="registry root (default: registry.path)")
    p.add_argument("--model", help="model name (default: registry.model_name)")
    p.set_defaults(func=cmd_promote)

    p = subparsers.add_parser(
        "models", parents=[common],
        help="list a model's versions and which is current (or roll back with --set-current)",
    )
    p.add_argument("--registry", help="registry root (default: registry.path)")
    p.add_argument("--model", help="model name (default: registry.model_name)")
    p.add_argument("--set-current", metavar="VERSION", help="point current at an existing version (rollback)")
    p.set_defaults(func=cmd_models)


def _config(args: argparse.Namespace, **extra: Any):
    from workloads.cli import config_from_args

    return config_from_args(args, {
        "registry.path": getattr(args, "registry", None),
        "registry.model_name": getattr(args, "model", None),
        **extra,
    })


def _json_arg(value: str | None, flag: str) -> dict[str, Any] | None:
    if value is None:
        return None
    text = value
    if value.lstrip()[:1] not in ("{", "["):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as e:
            raise RegistryError(f'Got "{value}" for {flag}: not JSON and not a readable file ({e.strerror})') from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RegistryError(f'Got "{value[:60]}" for {flag}: not valid JSON ({e.msg})') from e
    if not isinstance(obj, dict):
        raise RegistryError(f"Got a JSON {type(obj).__name__} for {flag}: must be an object")
    return obj


def _require_registry(path: str) -> None:
    """A registry root that is not there is an error (a typo), not an empty listing."""
    from workloads import storage
    from workloads.exceptions import StorageError

    try:
        there = storage.exists(path)
    except StorageError as e:
        raise RegistryError(f'Got "{path}" for registry.path: {e}') from e
    if not there:
        raise RegistryError(f'Got "{path}" for registry.path: there is no registry there (no such directory); '
                            "check the path (--registry), or create it with `rayspace promote CHECKPOINT --registry "
                            f'{path}`')


def cmd_serve(args: argparse.Namespace) -> int:
    from serve import runner
    from workloads.cli import emit, progress

    cfg = _config(args, **{"serve.host": args.host, "serve.port": args.port, "serve.ingress": args.ingress})

    def ready(url: str) -> None:
        progress(args, f"serving {cfg.registry.model_name} at {url}  (POST {url}/v1/models/{cfg.registry.model_name}:predict; "
                       f"docs at {url}/docs; Ctrl-C to stop)")
        if args.json:
            emit(args, {"endpoint": url, "model_name": cfg.registry.model_name})

    code = runner.serve_forever(cfg, on_ready=ready, say=lambda line: progress(args, line))
    progress(args, "stopped")
    return code


def cmd_promote(args: argparse.Namespace) -> int:
    from workloads.cli import emit, progress
    from workloads.registry import promote

    cfg = _config(args)
    metrics = _json_arg(args.metrics, "--metrics")
    trial_config = _json_arg(args.trial_config, "--trial-config")
    from workloads._cli import check_inputs

    check_inputs(cfg, checkpoint=args.checkpoint, lake=metrics is None)  # before Ray starts: one line
    compare = None
    if metrics is None:
        progress(args, f"evaluating {args.checkpoint} on the test split of {cfg.data.lake} ...")
        from workloads.evaluate import evaluate, make_comparer
        from workloads.runtime import ensure_ray

        ensure_ray()  # the test split is read with Ray Data
        metrics = evaluate(cfg, args.checkpoint)
        # The current version is re-scored on the same rows instead of trusting its card's number.
        compare = make_comparer(cfg, args.checkpoint)
    test_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    res = promote(cfg.registry, args.checkpoint, test_metrics, trial_config=trial_config, force=args.force,
                  compare=compare)
    payload = res.to_dict()
    if res.promoted:
        human = f"{res.name} {res.version} is now current (was {res.previous or 'none'}): {res.gate.reason}"
    else:
        human = f"{res.name} {res.version} written but NOT promoted; current stays {res.current}: {res.gate.reason}"
    emit(args, payload, human)
    return 0 if res.promoted else EXIT_REJECTED


def cmd_models(args: argparse.Namespace) -> int:
    from workloads.cli import emit, print_table, progress
    from workloads.registry import ModelRegistry

    cfg = _config(args)
    _require_registry(cfg.registry.path)
    reg = ModelRegistry(cfg.registry.path)
    name = cfg.registry.model_name
    if args.set_current:
        previous = reg.set_current(name, args.set_current)
        progress(args, f"{name} current: {previous or 'none'} -> {args.set_current}")
    current = reg.current(name)
    rows = []
    metric = cfg.registry.gate_metric
    for v in reg.versions(name):
        card = reg.card(name, v)
        rows.append({
            "version": v,
            "current": "*" if v == current else "",
            "created": card.get("created", ""),
            metric: (card.get("test_metrics") or {}).get(metric, ""),
            "gate": "passed" if (card.get("gate") or {}).get("passed") else "rejected",
            "data_manifest_hash": str(card.get("data_manifest_hash") or "")[:19],
        })
    if args.json:
        emit(args, {"registry": cfg.registry.path, "model_name": name, "current": current, "versions": rows})
    else:
        print(f"registry {cfg.registry.path}, model {name}, current {current or 'none'}")
        print_table(rows)
    return 0
