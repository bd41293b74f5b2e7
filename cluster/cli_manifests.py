"""``rayspace cluster render|check|simulate|sync-serve``: the offline side of the KubeRay manifests."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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

    p = cluster_sub.add_parser(
        "check", parents=[common], help="validate an overlay offline and print a report",
        description="Schemas (strict Kubernetes OpenAPI, KubeRay CRDs), KubeRay webhook rules, version agreement, "
        "the security checklist over every pod template, and Ray's own autoscaler conversion. Exit 1 on any failure.",
    )
    p.add_argument("--overlay", "-o", default="dev", choices=manifests.TARGETS, help="what to check (default: dev)")
    p.add_argument("--engine", choices=("auto", "kubectl", "python"), default=None, help="kustomize engine")
    p.add_argument("--crds", type=Path, default=None, help="directory of the KubeRay CRDs (default: ../shared/kuberay/crds)")
    p.add_argument("--failures-only", action="store_true", help="list only failing checks")
    p.add_argument("--checkov", action="store_true",
                   help="also run checkov on the core objects ($RAYSPACE_CHECKOV or checkov on PATH)")
    p.set_defaults(func=_cmd_check)

    p = cluster_sub.add_parser(
        "simulate", parents=[common], help="simulate the overlay's autoscaling on this machine",
        description="Start a fake multi-node Ray (its own process group; never `ray stop`) with the node types Ray's "
        "KubeRay autoscaler derives from the overlay's RayCluster, run a workload that needs every worker of a "
        "group, and report the timeline of workers scaling up and back down.",
    )
    p.add_argument("--overlay", "-o", default="dev", choices=manifests.OVERLAYS, help="overlay (default: dev)")
    p.add_argument("--group", default=None, help="worker group to exercise (default: the first without GPUs)")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="idle timeout to simulate (default: the manifest's, capped at 5 s)")
    p.add_argument("--max-workers", type=int, default=2, metavar="N",
                   help="cap on the group's maxReplicas so the run fits this machine (default: 2; 0: no cap)")
    p.add_argument("--task-seconds", type=float, default=4.0, metavar="S", help="how long each task holds its node")
    p.add_argument("--timeout", type=float, default=240.0, metavar="S", help="give up after this long")
    p.set_defaults(func=_cmd_simulate)

    p = cluster_sub.add_parser(
        "sync-serve", parents=[common], help="regenerate the RayService's serveConfigV2 from serve/config.yaml and its Serve env from serve/runner.py",
        description="Rewrite cluster/base/rayservice.yaml's serveConfigV2 and the ha overlay's patch from "
        "serve/config.yaml. With --check, only report whether they are in sync (exit 1 if not).",
    )
    p.add_argument("--check", action="store_true", help="do not write; exit 1 when out of sync")
    p.set_defaults(func=_cmd_sync_serve)


def _cmd_render(args: argparse.Namespace) -> int:
    objects = manifests.render(args.overlay, engine=args.engine)
    if args.json:
        print(json.dumps({"overlay": args.overlay, "engine": manifests.render_engine(args.engine), "objects": objects}))
    else:
        sys.stdout.write(manifests.to_yaml(objects))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from workloads.cli import print_table, progress

    progress(args, f"checking overlay {args.overlay} (kustomize engine: {manifests.render_engine(args.engine)}) ...")
    findings = manifests.check(args.overlay, engine=args.engine, crds=args.crds, checkov=args.checkov)
    errors = [f for f in findings if not f.ok and f.severity == "error"]
    warnings = [f for f in findings if not f.ok and f.severity == "warning"]
    summary = {
        "overlay": args.overlay, "checks": len(findings), "passed": sum(f.ok for f in findings),
        "failed": len(errors), "warnings": len(warnings), "ok": not errors,
    }
    if args.json:
        print(json.dumps({**summary, "findings": [f.to_dict() for f in findings]}))
    else:
        shown = [f for f in findings if not f.ok] if args.failures_only else findings
        print_table([
            {"check": f.check, "object": f.obj, "result": "PASS" if f.ok else ("WARN" if f.severity == "warning" else "FAIL"),
             "message": f.message}
            for f in shown
        ], ["check", "object", "result", "message"])
        print(f"\n{args.overlay}: {summary['passed']}/{summary['checks']} checks passed, "
              f"{len(errors)} failed, {len(warnings)} warning(s)")
    return 0 if not errors else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from workloads.cli import print_table, progress

    progress(args, f"simulating the autoscaling of overlay {args.overlay}'s RayCluster (fake multi-node Ray, about a minute) ...")
    result = manifests.simulate(
        args.overlay, group=args.group, idle_timeout_s=args.idle_timeout,
        max_workers=None if args.max_workers == 0 else args.max_workers,
        task_seconds=args.task_seconds, timeout_s=args.timeout,
    )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"overlay {result.overlay}: group {result.group} {result.node_type}, workers {result.min_workers}-"
              f"{result.max_workers}, autoscaler {result.autoscaler_version}, idle timeout {result.idle_timeout_s:g}s "
              f"(manifest: {result.manifest_idle_timeout_s:g}s)")
        print_table([{"t_s": f"{e.t:.1f}", "event": e.event, "workers": e.workers,
                      "detail": ", ".join(f"{k}={v}" for k, v in e.detail.items())} for e in result.events])
        print(f"peak {result.peak_workers} workers (scale-up {result.scale_up_s}s after submit), "
              f"{result.final_workers} at the end (scale-down {result.scale_down_s}s after the tasks finished)")
        for problem in result.problems:
            print(f"problem: {problem}")
        print("OK: scaled up for the workload and back down when idle" if result.ok else "FAILED")
    return 0 if result.ok else 1


def _cmd_sync_serve(args: argparse.Namespace) -> int:
    from cluster._internal import serve_sync
    from workloads.cli import emit

    root = serve_sync.CLUSTER_DIR.parent
    if args.check:
        stale = serve_sync.out_of_sync()
        names = [str(p.relative_to(root)) for p in stale]
        emit(args, {"in_sync": not stale, "stale": names},
             "in sync with serve/config.yaml" if not stale
             else f"out of sync with serve/config.yaml: {', '.join(names)} (run `{serve_sync.FIX_COMMAND}`)")
        return 0 if not stale else 1
    synced = manifests.sync_serve_config()
    rows = [{"file": str(s.path.relative_to(root)), "changed": s.changed} for s in synced]
    emit(args, {"files": rows}, "\n".join(f"{'updated' if r['changed'] else 'unchanged'}  {r['file']}" for r in rows))
    return 0
