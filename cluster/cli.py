"""``rayspace`` subcommands of the cluster package (registered by ``workloads.cli``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this package's subcommands to the ``rayspace`` parser."""
