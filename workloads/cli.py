"""The ``rayspace`` command line: a thin wrapper over the library's pure entry functions.

This is the only module tree that prints. Each package registers its own
subcommands (``workloads._cli``, ``tune.cli``, ``serve.cli``, ``cluster.cli``) on
the parser built here, so the packages stay independent of each other.

Conventions every subcommand follows:
  * ``--config FILE`` and ``--set section.field=value`` (repeatable) build the config;
  * ``--json`` makes the last line of stdout one JSON object;
  * errors from the library (:class:`~workloads.exceptions.RayspaceError`) print one
    ``error:`` line on stderr and exit non-zero; no traceback unless ``-v``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from workloads.config import WorkspaceConfig, load_config
from workloads.exceptions import RayspaceError

logger = logging.getLogger(__name__)

#: Modules whose ``register(subparsers, common)`` adds subcommands, in help order.
_REGISTRANTS = ("workloads._cli", "tune.cli", "serve.cli", "cluster.cli")

Handler = Callable[[argparse.Namespace], int]


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (use as ``parents=[common]``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: $RAYSPACE_CONFIG or built-in defaults)")
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.lr=0.001 (repeatable)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    return common


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> WorkspaceConfig:
    """Load the workspace config named by ``--config``/``--set``, plus flag-derived overrides.

    Args:
        args: Parsed arguments carrying ``config`` and ``overrides``.
        extra: Dotted overrides from dedicated flags (``--epochs`` -> ``train.epochs``),
            applied after ``--set``; ``None`` values are skipped.
    """
    from workloads.config import parse_override

    merged: dict[str, Any] = dict(parse_override(o) for o in getattr(args, "overrides", []) or [])
    for key, value in (extra or {}).items():
        if value is not None:
            merged[key] = value
    return load_config(getattr(args, "config", None), merged)


def emit(args: argparse.Namespace, payload: dict[str, Any], human: str | None = None) -> None:
    """Print a command's result: ``human`` text normally, one JSON line with ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=str, sort_keys=False), flush=True)
    elif human is not None:
        print(human, flush=True)
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")


def progress(args: argparse.Namespace, message: str) -> None:
    """Print a progress line (to stderr under ``--json`` so stdout stays machine-readable)."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    print(message, file=stream, flush=True)


def confirm(args: argparse.Namespace, question: str) -> bool:
    """Ask a yes/no question unless ``--yes`` was given; no TTY means no."""
    if getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        print(f"{question} Refusing without --yes (stdin is not a terminal).", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Print rows as a plain aligned table."""
    if not rows:
        print("(none)")
        return
    cols = list(columns or rows[0].keys())
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """Build the full ``rayspace`` parser with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="rayspace",
        description="Ray-on-Kubernetes workspace: lake -> Ray Data -> Ray Train -> Ray Tune -> Ray Serve, on a laptop or KubeRay.",
    )
    # The common options are also accepted before the subcommand (`rayspace --config x.yaml run`). They get
    # their own dests: argparse copies every subcommand default over what the main parser read.
    parser.add_argument("--config", "-c", dest="global_config", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="global_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)
    parser.add_argument("--json", dest="global_json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", dest="global_verbose", action="count", default=0, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    common = common_parser()
    for name in _REGISTRANTS:
        module = importlib.import_module(name)
        module.register(subparsers, common)
    return parser


def _merge_global_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold the common options given before the subcommand into the subcommand's own."""
    given = [flag for flag, value in (("--config", args.global_config), ("--set", args.global_overrides),
                                      ("--json", args.global_json)) if value]
    if given and not hasattr(args, "overrides"):
        parser.error(f"{' and '.join(given)} given before `{args.command}`, which takes no such option")
    if args.global_config is not None:
        if args.config is not None and args.config != args.global_config:
            parser.error(f'--config given twice ("{args.global_config}" and "{args.config}"): give it once')
        args.config = args.global_config
    if hasattr(args, "overrides"):
        args.overrides = [*args.global_overrides, *args.overrides]  # the later --set wins, as on one command line
        args.json = args.json or args.global_json
    args.verbose = getattr(args, "verbose", 0) + args.global_verbose


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rayspace`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _merge_global_options(parser, args)
    _setup_logging(getattr(args, "verbose", 0))
    handler: Handler = args.func
    try:
        return int(handler(args) or 0)
    except RayspaceError as e:
        if getattr(args, "verbose", 0) >= 2:
            logger.exception("command failed")
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
