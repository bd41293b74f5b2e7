"""``rayspace`` subcommands of the cluster package (registered by ``workloads.cli``).

Two groups are shared by the manifest tooling (:mod:`cluster.cli_manifests`: render, check,
simulate, sync-serve) and the Kubernetes client (:mod:`cluster.cli_client`: up, down, status,
scale, token, connect, plus the ``job`` group).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``cluster`` group (and, through the client module, ``job``) to the ``rayspace`` parser."""
    cluster = subparsers.add_parser(
        "cluster", help="KubeRay manifests (render, check, simulate) and the cluster they describe",
        description="Kubernetes side of the workspace: render and verify the manifests offline, "
        "simulate autoscaling, and manage the KubeRay objects.",
    )
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    from cluster import cli_manifests

    cli_manifests.register(cluster_sub, common)  # render, check, simulate, sync-serve
    from cluster import cli_emulate

    cli_emulate.register(cluster_sub, common)  # emulate up|status|env|exec|kill|explain|down
    from cluster import cli_client

    cli_client.register(subparsers, cluster_sub, common)  # up, down, status, scale, token, connect + the `job` group
