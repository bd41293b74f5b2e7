"""``rayspace cluster emulate up|status|env|exec|kill|explain|down``: the RayCluster as a multi-node Ray on this machine.

A test and demo tool, not a production runtime (see :mod:`cluster._internal.emulate`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workloads.exceptions import ConfigError


def register(cluster_sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``emulate`` to the ``rayspace cluster`` group."""
    from cluster import manifests
    from cluster._internal.emulate import DEFAULT_STATE_DIR, DEFAULT_SUBNET

    p = cluster_sub.add_parser(
        "emulate", help="run the overlay's RayCluster as a real multi-node Ray on this machine (root; test/demo only)",
        description="Bring up the rendered RayCluster as a real multi-node Ray: one Linux network namespace per pod "
        "on a private bridge, private /tmp, /tmp/ray and /dev/shm, the PVC bind-mounted at /data from one host "
        "directory, KubeRay's ray start command and token auth, and the NetworkPolicies enforced with nftables. "
        "Needs root, ip and nft. A test and demo tool, NOT a production runtime: no Kubernetes, containers, "
        "images, autoscaling or restarts.",
    )
    sub = p.add_subparsers(dest="emulate_command", metavar="ACTION", required=True)
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help=f"where the emulator keeps its state, pod specs and logs (default: {DEFAULT_STATE_DIR})")

    up = sub.add_parser("up", parents=[common, state], help="start the emulated cluster and wait until every pod joined")
    up.add_argument("--overlay", "-o", default="dev", choices=manifests.OVERLAYS, help="overlay (default: dev)")
    up.add_argument("--replicas", action="append", default=[], metavar="GROUP=N",
                    help="pods of a worker group (default: max(replicas, minReplicas); at most maxReplicas)")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"private IPv4 pod network (default: {DEFAULT_SUBNET})")
    up.add_argument("--data-dir", type=Path, default=None,
                    help="host directory standing in for the shared volume (default: STATE_DIR/data)")
    up.add_argument("--explain", action="store_true", help="also print how the NetworkPolicies were translated")
    up.add_argument("--dry-run", action="store_true", help="print the plan (pods, commands, rules) and start nothing")
    up.add_argument("--timeout", type=float, default=240.0, metavar="S", help="give up after this long")
    up.set_defaults(func=_cmd_up)

    st = sub.add_parser("status", parents=[common, state], help="list the pods: group, netns, address, Ray node id, state")
    st.set_defaults(func=_cmd_status)
    env = sub.add_parser("env", parents=[common, state], help="print the export lines a host shell needs to submit jobs")
    env.set_defaults(func=_cmd_env)
    ex = sub.add_parser("explain", parents=[common, state], help="print the NetworkPolicies as the running pods' nftables rules")
    ex.set_defaults(func=_cmd_explain)

    run = sub.add_parser("exec", parents=[common, state], help="run a command in a pod (like kubectl exec)")
    run.add_argument("pod", help="pod name, unique prefix, or `head`")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="command (after --)")
    run.set_defaults(func=_cmd_exec)

    kill = sub.add_parser("kill", parents=[common, state], help="kill a pod as a node failure would")
    kill.add_argument("pod", help="pod name or unique prefix")
    kill.add_argument("--replace", action="store_true", help="start a new pod of the same group, as KubeRay would")
    kill.set_defaults(func=_cmd_kill)

    down = sub.add_parser("down", parents=[common, state], help="stop every pod and remove everything the emulator made")
    down.set_defaults(func=_cmd_down)


def _replicas(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"Got {item!r} for --replicas: must be GROUP=N with N a whole number, e.g. cpu=2")
        out[name.strip()] = int(value)
    return out


def _cmd_up(args: argparse.Namespace) -> int:
    from cluster import manifests
    from cluster._internal import emulate
    from workloads.cli import emit, progress

    objects = manifests.render(args.overlay)
    state_dir = args.state_dir
    cluster = emulate.plan(objects, overlay=args.overlay, replicas=_replicas(args.replicas), subnet=args.subnet,
                           data_dir=(args.data_dir or state_dir / "data").resolve(), state_dir=state_dir)
    if args.dry_run:
        plan = [{"pod": p.name, "group": p.group, "ip": p.ip, "command": " ".join(p.command)} for p in cluster.pods]
        if args.json:
            emit(args, {"pods": plan, "explain": emulate.explain(cluster)})
        else:
            for row in plan:
                print(f"{row['pod']} ({row['group']}, {row['ip']}): {row['command']}")
            print(emulate.explain(cluster))
        return 0
    progress(args, f"emulating overlay {args.overlay}'s RayCluster {cluster.cluster_name}: "
             f"{len(cluster.pods)} pods on {cluster.subnet} (test/demo tool, not a production runtime) ...")
    emulator = emulate.Emulator(state_dir)
    emulator.up(cluster, timeout_s=args.timeout)
    if args.explain:
        print(emulate.explain(cluster), file=sys.stderr if args.json else sys.stdout)
    return _print_status(args, emulator)


def _print_status(args: argparse.Namespace, emulator) -> int:
    from workloads.cli import print_table

    status = emulator.status()
    if args.json:
        print(json.dumps(status))
        return 0
    print_table(status["pods"], ["pod", "group", "netns", "ip", "ray_node_id", "state"])
    print(f"\ndashboard/Jobs API {status['dashboard']}  GCS {status['gcs']}  Serve {status['serve']}")
    print(f"shared volume (/data in every pod): {status['data_dir']}")
    print("submit from this shell: eval \"$(rayspace cluster emulate env)\" && ray job submit --working-dir . -- ...")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from cluster._internal.emulate import Emulator

    return _print_status(args, Emulator(args.state_dir))


def _cmd_env(args: argparse.Namespace) -> int:
    from cluster._internal.emulate import Emulator

    lines = Emulator(args.state_dir).env_lines()
    if args.json:
        print(json.dumps(dict(line.removeprefix("export ").split("=", 1) for line in lines)))
    else:
        print("\n".join(lines))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from cluster._internal import emulate

    print(emulate.explain(emulate.Emulator(args.state_dir).load()))
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    from cluster._internal.emulate import Emulator

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("Got no command for `emulate exec`: give one after --, e.g. emulate exec head -- ray status")
    emulator = Emulator(args.state_dir)
    return emulator.exec(emulator.load(), args.pod, cmd, capture=False).returncode


def _cmd_kill(args: argparse.Namespace) -> int:
    from cluster._internal.emulate import Emulator
    from workloads.cli import emit

    killed, new = Emulator(args.state_dir).kill(args.pod, replace=args.replace)
    emit(args, {"killed": killed.name, "replacement": new.name if new else None},
         f"killed {killed.name}" + (f"; replaced by {new.name} ({new.ip})" if new else ""))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from cluster._internal.emulate import Emulator
    from workloads.cli import emit

    removed = Emulator(args.state_dir).down()
    emit(args, {"removed": removed}, "\n".join(f"removed {r}" for r in removed) or "nothing was running")
    return 0
