"""``rayspace cluster render|check|simulate|sync-serve``: the offline side of the KubeRay manifests."""

from __future__ import annotations

import argparse
import sys

from cluster import manifests


def register(cluster_sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the manifest actions to the ``rayspace cluster`` group."""
    p = cluster_sub.add_parser(
        "render", parents=[common], help="print the rendered YAML of an overlay",
        description="Render an overlay with `kubectl kustomize` (or the pure-Python fallback when kubectl "
        "is missing; force one with --engine or $RAYSPACE_KUSTOMIZE) and print it.",
    )
    p.add_argument("--overlay", "-o", default="dev", choices=manifests.TARGETS, help="what to render (default: dev)")
    p.add_argument("--engine", choices=("auto", "kubectl", "python"), default=None, help="kustomize engine")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    objects = manifests.render(args.overlay, engine=args.engine)
    if args.json:
        import json

        print(json.dumps({"overlay": args.overlay, "engine": manifests.render_engine(args.engine), "objects": objects}))
    else:
        sys.stdout.write(manifests.to_yaml(objects))
    return 0
