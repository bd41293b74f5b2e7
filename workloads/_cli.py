"""``rayspace data|train|evaluate|run`` (placeholder until the workloads land)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the workloads subcommands."""
