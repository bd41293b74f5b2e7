"""``rayspace cluster up|down|status|scale|token|connect`` and ``rayspace job submit|status|logs|stop``.

Thin handlers over :mod:`cluster.client`: they build the connection and the
customised manifests from the workspace config, call the client, and print a
table or (``--json``) one JSON object. Destructive actions (``cluster down``,
scaling down, ``job stop``) ask first unless ``--yes``.

Namespace: ``--namespace``/``cluster.namespace`` if set, else the kubeconfig
context's (or the pod's) namespace if it names one, else the manifests' namespace.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from cluster.client import (
    DashboardClient,
    KubeApi,
    RayCluster,
    RayJob,
    RayService,
    WorkerGroupSize,
    connect_plan,
    from_manifest,
    objects_for,
)
from cluster.client import preflight
from cluster.client.manifests import without_autoscaled_replicas
from cluster.client.rayservice import ensure_token_secret
from cluster.client.rayjob import TERMINAL_JOB_STATUSES
from workloads.cli import config_from_args, confirm, emit, print_table, progress
from workloads.config import WorkspaceConfig
from workloads.exceptions import ClusterConfigError, DashboardError, ForbiddenError, NotFoundError

logger = logging.getLogger(__name__)

#: Where `cluster connect` forwards the dashboard, so `job logs` finds it by default.
DEFAULT_DASHBOARD_URL = "http://127.0.0.1:8265"


# --------------------------------------------------------------------------- plumbing


def _k8s_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("Kubernetes")
    g.add_argument("--name", help="cluster base name (cluster.name; default rayspace)")
    g.add_argument("--namespace", "-n", help="namespace (cluster.namespace; default: kubeconfig context, else the manifests')")
    g.add_argument("--context", help="kubeconfig context (cluster.context)")
    g.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--overlay", help="manifest overlay under cluster/overlays (cluster.overlay; default dev)")
    return p


def _config(args: argparse.Namespace) -> WorkspaceConfig:
    return config_from_args(args, extra={
        "cluster.name": getattr(args, "name", None),
        "cluster.namespace": getattr(args, "namespace", None),
        "cluster.context": getattr(args, "context", None),
        "cluster.overlay": getattr(args, "overlay", None),
        "cluster.image": getattr(args, "image", None),
    })


def _connect(args: argparse.Namespace, cfg: WorkspaceConfig) -> KubeApi:
    """The API connection, with the namespace resolved as the module docstring says."""
    from cluster.manifests import NAMESPACE

    api = KubeApi.from_settings(context=cfg.cluster.context, namespace=cfg.cluster.namespace,
                                kubeconfig=getattr(args, "kubeconfig", None))
    if api.namespace_source == "default":
        api.namespace = NAMESPACE
    logger.info("namespace %s (%s)", api.namespace, api.namespace_source)
    return api


def _objects(api: KubeApi, cfg: WorkspaceConfig, workers: list[str] | None = None) -> list[dict[str, Any]]:
    sizes = dict(WorkerGroupSize.parse(w) for w in workers or [])
    return objects_for(cfg.cluster, namespace=api.namespace, worker_groups=sizes)


def _name_of(cfg: WorkspaceConfig, base: str) -> str:
    """The name a manifest object ``base`` gets under ``cluster.name``."""
    from cluster.client.manifests import renamed
    from cluster.manifests import RAYCLUSTER_NAME

    return renamed(RAYCLUSTER_NAME, cfg.cluster.name, base)


def _cluster_ref(api: KubeApi, cfg: WorkspaceConfig) -> str:
    from cluster.manifests import RAYCLUSTER_NAME

    return _name_of(cfg, RAYCLUSTER_NAME)


def _token_command(args: argparse.Namespace, cluster: RayCluster, cfg: WorkspaceConfig) -> str:
    cmd = ["rayspace", "cluster", "token", "--name", cfg.cluster.name, "--namespace", str(cluster.namespace)]
    if cfg.cluster.context:
        cmd += ["--context", cfg.cluster.context]
    if getattr(args, "kubeconfig", None):
        cmd += ["--kubeconfig", str(args.kubeconfig)]
    return shlex.join(cmd)


# --------------------------------------------------------------------------- cluster up/down/status/scale


#: Kinds a namespace admin usually may not write; `up` reports them and goes on.
ADMIN_ONLY_KINDS = ("ResourceQuota", "LimitRange")


def _up(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _connect(args, cfg) as api:
        objects = _objects(api, cfg, args.workers)
        skip = {"RayJob"} | (set() if args.with_cron else {"RayCronJob"}) | ({"RayService"} if args.without_serve else set())
        objects = [o for o in objects if o["kind"] not in skip]
        # Re-applying must not take `replicas` back from the autoscaler (only groups sized with --workers keep it).
        objects = without_autoscaled_replicas(objects, keep=[WorkerGroupSize.parse(w)[0] for w in args.workers])
        # Missing StorageClasses and Secrets make the cluster stall, not fail: refuse before applying.
        warnings = preflight.check(api, objects)
        if args.with_cron:
            warnings += preflight.check_cron_gate(api, objects)
        for warning in warnings:
            progress(args, f"warning: {warning}")
        rows = []
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            res = from_manifest(api, obj)
            if kind == "Namespace":
                # Creating a namespace needs cluster-scoped rights many users lack; an existing one is fine.
                try:
                    type(res).get(api, name)
                    rows.append({"kind": kind, "name": name, "namespace": "", "action": "exists"})
                    continue
                except NotFoundError:
                    pass
            if kind == "RayService" and ensure_token_secret(api, obj):
                rows.append({"kind": "Secret", "name": obj["spec"]["rayClusterConfig"]["authOptions"]["secretName"],
                             "namespace": api.namespace, "action": "created (random token)"})
            progress(args, f"applying {res.ref}")
            try:
                res.apply()
            except ForbiddenError as e:
                # A namespace admin may not write quotas or limit ranges (the `admin` ClusterRole only reads
                # them); that is a cluster admin's job and must not stop the rest of the workspace.
                if kind not in ADMIN_ONLY_KINDS:
                    raise
                progress(args, f"warning: not allowed to apply {res.ref} ({e}); ask a cluster admin to apply it")
                rows.append({"kind": kind, "name": name, "namespace": res.namespace or "", "action": "forbidden"})
                continue
            rows.append({"kind": kind, "name": name, "namespace": res.namespace or "", "action": "applied"})
        cluster = RayCluster.get(api, _cluster_ref(api, cfg))
        if not args.no_wait:
            progress(args, f"waiting up to {args.timeout:g}s for {cluster.ref} to be ready")
            cluster.wait_ready(timeout=args.timeout)
        payload = {"namespace": api.namespace, "objects": rows, "cluster": cluster.summary()}
        if args.json:
            emit(args, payload)
        else:
            print_table(rows, ["kind", "name", "namespace", "action"])
            print(f"{cluster.ref}: {cluster.describe_status()}")
    return 0


def _down(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _connect(args, cfg) as api:
        objects = _objects(api, cfg)
        ray_kinds = ("RayService", "RayCronJob", "RayCluster")
        targets = [o for o in objects if o["kind"] in ray_kinds]
        if args.purge:
            targets += [o for o in objects if o["kind"] not in ray_kinds + ("Namespace", "RayJob")]
        names = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in targets)
        if not confirm(args, f"Delete {len(targets)} objects in namespace {api.namespace} ({names})?"):
            print("aborted; nothing deleted")
            return 1
        rows = []
        for obj in targets:
            res = from_manifest(api, obj)
            try:
                res.delete(propagation="Foreground")
                action = "deleted"
            except NotFoundError:
                action = "absent"
            progress(args, f"{action}: {res.ref}")
            rows.append({"kind": obj["kind"], "name": res.name, "action": action})
        if args.wait:
            for obj in targets:
                from_manifest(api, obj).wait_deleted(timeout=args.timeout)
        if args.json:
            emit(args, {"namespace": api.namespace, "objects": rows})
        else:
            print_table(rows, ["kind", "name", "action"])
    return 0


def _status(args: argparse.Namespace) -> int:
    from cluster.manifests import RAYSERVICE_NAME

    cfg = _config(args)
    with _connect(args, cfg) as api:
        cluster = RayCluster.get(api, _cluster_ref(api, cfg))
        rows: list[dict[str, Any]] = [{"kind": "RayCluster", "name": cluster.name, "ready": cluster.is_ready,
                                       "status": cluster.describe_status()}]
        payload: dict[str, Any] = {"namespace": api.namespace, "cluster": cluster.summary()}
        try:
            svc = RayService.get(api, _name_of(cfg, RAYSERVICE_NAME))
            payload["service"] = svc.summary()
            rows.append({"kind": "RayService", "name": svc.name, "ready": svc.is_ready, "status": svc.describe_status()})
        except NotFoundError:
            payload["service"] = None
        jobs = RayJob.list(api)
        payload["jobs"] = [j.summary() for j in jobs]
        rows += [{"kind": "RayJob", "name": j.name, "ready": j.job_status == "SUCCEEDED", "status": j.describe_status()}
                 for j in jobs]
        if args.json:
            emit(args, payload)
        else:
            print_table(rows, ["kind", "name", "ready", "status"])
            print()
            print_table([{"group": g.get("groupName"), "replicas": g.get("replicas", 0), "min": g.get("minReplicas", 0),
                          "max": g.get("maxReplicas", "")} for g in cluster.worker_groups])
    return 0


def _scale(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _connect(args, cfg) as api:
        cluster = RayCluster.get(api, _cluster_ref(api, cfg))
        # With autoscaling the number is the group's floor (minReplicas); the autoscaler owns replicas.
        field = "minReplicas" if cluster.autoscaling else "replicas"
        current = next((g.get(field, 0) for g in cluster.worker_groups if g.get("groupName") == args.group), None)
        if current is not None and args.replicas < int(current):
            if not confirm(args, f"Scale worker group {args.group} of {cluster.ref} down from {current} to "
                                 f"{args.replicas} (running tasks on removed workers fail)?"):
                print("aborted; nothing changed")
                return 1
        cluster.scale(args.group, args.replicas)
        emit(args, {"cluster": cluster.name, "group": args.group, "field": field, "from": current,
                    "replicas": args.replicas},
             f"{cluster.ref}: worker group {args.group} {field} {current} -> {args.replicas}")
    return 0


def _rotate_token(args: argparse.Namespace) -> int:
    from cluster.manifests import RAYSERVICE_NAME

    cfg = _config(args)
    with _connect(args, cfg) as api:
        svc = RayService.get(api, _name_of(cfg, RAYSERVICE_NAME))
        if not confirm(args, f"Rotate the Ray auth token of {svc.ref} (an upgrade to a new cluster, no downtime)?"):
            print("aborted; nothing changed")
            return 1
        old = svc.auth_secret_name
        progress(args, f"rotating the token of {svc.ref}: waiting up to {args.timeout:g}s for the upgrade")
        new = svc.rotate_token(timeout=args.timeout)
        emit(args, {"service": svc.name, "old_secret": old, "secret": new, "cluster": svc.active_cluster},
             f"{svc.ref}: token rotated; Secret {new} (cluster {svc.active_cluster}), {old} deleted")
    return 0


def _token(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _connect(args, cfg) as api:
        token = RayCluster.get(api, _cluster_ref(api, cfg)).auth_token()
    emit(args, {"token": token}, token)
    return 0


def _connect_cmd(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.run:
        _require_kubectl("cluster connect --run", "drop --run and run the printed kubectl command where kubectl is")
    with _connect(args, cfg) as api:
        cluster = RayCluster.get(api, _cluster_ref(api, cfg))
        endpoints = cluster.endpoints()
        try:
            cluster.auth_secret_ref()
            token_cmd: str | None = _token_command(args, cluster, cfg)
        except NotFoundError:
            token_cmd = None
        local = {"dashboard": args.dashboard_port, "client": args.client_port, "serve": args.serve_port}
        plan = connect_plan(cluster, endpoints, context=cfg.cluster.context,
                            local_ports={k: v for k, v in local.items() if v is not None}, token_command=token_cmd,
                            kubeconfig=getattr(args, "kubeconfig", None))
    if args.json:
        emit(args, {"command": plan.command, "ports": plan.ports, "env": plan.env})
    else:
        print(plan.shell())
    if not args.run:
        return 0
    progress(args, f"running: {shlex.join(plan.command)} (Ctrl-C to stop)")
    try:
        proc = subprocess.Popen(plan.command)  # noqa: S603 - argv built from validated names, no shell
    except OSError as e:
        print(f"error: cannot run {plan.command[0]}: {e.strerror or e}", file=sys.stderr, flush=True)
        return 127
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        return 130


# --------------------------------------------------------------------------- job


def _job_submit(args: argparse.Namespace) -> int:
    from cluster.manifests import RAYJOB_NAME, find

    cfg = _config(args)
    with _connect(args, cfg) as api:
        objects = _objects(api, cfg, args.workers)
        template = find(objects, "RayJob", _name_of(cfg, RAYJOB_NAME))
        job = RayJob.from_template(api, template, entrypoint=args.entrypoint, name=args.job_name,
                                   unique=not args.exact_name)
        job.submit()
        progress(args, f"submitted {job.ref}")
        if args.wait:
            progress(args, f"waiting up to {args.timeout:g}s for {job.ref} to finish")
            job.wait_finished(timeout=args.timeout)
        emit(args, job.summary(), f"{job.ref}: {job.describe_status()}")
        if args.wait and not job.succeeded:
            return 1
    return 0


def _job_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _connect(args, cfg) as api:
        jobs = [RayJob.get(api, args.job)] if args.job else RayJob.list(api)
    rows = [j.summary() for j in jobs]
    if args.json:
        emit(args, {"jobs": rows} if not args.job else rows[0])
    else:
        print_table(rows, ["name", "job_status", "deployment_status", "job_id", "cluster"])
    if args.job and jobs[0].job_status in TERMINAL_JOB_STATUSES and not jobs[0].succeeded:
        return 1
    return 0


def _kubectl_flags(args: argparse.Namespace, cfg: WorkspaceConfig) -> list[str]:
    """``--kubeconfig``/``--context`` for kubectl, so it talks to the same cluster as the client."""
    flags = ["--kubeconfig", str(args.kubeconfig)] if getattr(args, "kubeconfig", None) else []
    return flags + (["--context", cfg.cluster.context] if cfg.cluster.context else [])


def _require_kubectl(what: str, instead: str) -> str:
    """The kubectl executable, or one clear error before anything else is done (the API is not contacted)."""
    path = shutil.which("kubectl")
    if path is None:
        raise ClusterConfigError(f"{what} needs kubectl, which is not on PATH: install it "
                                 f"(https://kubernetes.io/docs/tasks/tools/) or {instead}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DashboardError(f"kubectl port-forward exited with {proc.returncode} before the port opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DashboardError(f"kubectl port-forward did not open 127.0.0.1:{port} within {timeout:g}s")


def _job_logs(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.port_forward:
        _require_kubectl("job logs --port-forward", "drop --port-forward and pass --dashboard-url (e.g. the one "
                                                    "`rayspace cluster connect` forwards)")
    with _connect(args, cfg) as api:
        job = RayJob.get(api, args.job)
        if not job.job_id:
            raise NotFoundError(f"{job.ref} has no Ray job ID yet (status: {job.describe_status()})")
        # The RayJob's own cluster has its own token: $RAY_AUTH_TOKEN (exported by `cluster connect` for the
        # long-lived cluster) would be refused there with 403, so it is only the last resort.
        token = args.token
        cluster = RayCluster(api, {"metadata": {"name": job.cluster_name or _cluster_ref(api, cfg)}})
        if token is None and job.cluster_name:
            try:
                token = cluster.refresh().auth_token()
            except NotFoundError as e:
                # A finished RayJob's cluster may be gone; the dashboard then needs no token or --token.
                logger.warning("no auth token from %s: %s", cluster.ref, e)
        if token is None:
            token = os.environ.get("RAY_AUTH_TOKEN")
        proc = None
        url = args.dashboard_url
        if args.port_forward:
            port = _free_port()
            cmd = ["kubectl", *_kubectl_flags(args, cfg), "port-forward",
                   "--namespace", api.namespace, f"svc/{cluster.head_service}", f"{port}:8265"]
            try:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
            except OSError as e:
                raise ClusterConfigError(f"cannot run kubectl for --port-forward: {e.strerror or e}") from e
            url = f"http://127.0.0.1:{port}"
    try:
        if proc is not None:
            _wait_port(int(url.rsplit(":", 1)[1]), proc, timeout=20)
        logs = DashboardClient(url or DEFAULT_DASHBOARD_URL, token=token).job_logs(str(job.job_id))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    emit(args, {"job": job.name, "job_id": job.job_id, "logs": logs}, logs.rstrip("\n"))
    return 0


def _job_stop(args: argparse.Namespace) -> int:
    cfg = _config(args)
    with _connect(args, cfg) as api:
        job = RayJob.get(api, args.job)
        what = "delete" if args.delete else "stop (suspend)"
        if not confirm(args, f"{what.capitalize()} {job.ref} ({job.describe_status()})?"):
            print("aborted; nothing changed")
            return 1
        if args.delete:
            job.delete(propagation="Foreground")
            emit(args, {"job": job.name, "action": "deleted"}, f"deleted {job.ref}")
        else:
            job.stop()
            emit(args, {"job": job.name, "action": "suspended"}, f"suspended {job.ref}")
    return 0


# --------------------------------------------------------------------------- registration


def register(subparsers: argparse._SubParsersAction, cluster_sub: argparse._SubParsersAction,
             common: argparse.ArgumentParser) -> None:
    """Add ``up|down|status|scale|token|connect`` to ``rayspace cluster`` and the ``job`` group."""
    k8s = _k8s_parent()
    parents = [common, k8s]

    up = cluster_sub.add_parser("up", parents=parents, help="apply the overlay's objects and wait until the cluster is ready")
    up.add_argument("--workers", action="append", default=[], metavar="GROUP=N[:MIN:MAX]",
                    help="worker group size, e.g. cpu=2 or cpu=2:0:4 (repeatable)")
    up.add_argument("--image", help="Ray image for every Ray container (cluster.image)")
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for readiness (default 900)")
    up.add_argument("--no-wait", action="store_true", help="apply and return without waiting")
    up.add_argument("--with-cron", action="store_true",
                    help="also apply the RayCronJob (needs the operator's RayCronJob feature gate; checked first)")
    up.add_argument("--without-serve", action="store_true", help="do not apply the RayService")
    up.set_defaults(func=_up)

    down = cluster_sub.add_parser("down", parents=parents, help="delete the KubeRay objects (asks unless --yes)")
    down.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    down.add_argument("--purge", action="store_true",
                      help="also delete ServiceAccounts, RBAC, policies, quota and the data PVC (not the Namespace)")
    down.add_argument("--wait", action="store_true", help="wait until the objects are gone")
    down.add_argument("--timeout", type=float, default=300)
    down.set_defaults(func=_down)

    status = cluster_sub.add_parser("status", parents=parents, help="RayCluster, RayService and RayJobs at a glance")
    status.set_defaults(func=_status)

    rotate = cluster_sub.add_parser("rotate-token", parents=parents,
                                    help="rotate the RayService's Ray auth token without downtime")
    rotate.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the upgrade (default 1800)")
    rotate.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rotate.set_defaults(func=_rotate_token)
    scale = cluster_sub.add_parser("scale", parents=parents, help="set a worker group's replicas (within min/max)")
    scale.add_argument("group", help="worker group name, e.g. cpu")
    scale.add_argument("replicas", type=int)
    scale.add_argument("--yes", "-y", action="store_true", help="do not ask before scaling down")
    scale.set_defaults(func=_scale)

    token = cluster_sub.add_parser("token", parents=parents, help="print the cluster's Ray auth token")
    token.set_defaults(func=_token)

    conn = cluster_sub.add_parser("connect", parents=parents,
                                  help="print (or --run) the port-forward for dashboard/client/serve and the env exports")
    conn.add_argument("--run", action="store_true", help="run kubectl port-forward in the foreground")
    conn.add_argument("--dashboard-port", type=int, help="local port for the dashboard (default 8265)")
    conn.add_argument("--client-port", type=int, help="local port for the Ray client (default 10001)")
    conn.add_argument("--serve-port", type=int, help="local port for Serve (default 8000)")
    conn.set_defaults(func=_connect_cmd)

    job = subparsers.add_parser("job", help="RayJobs: submit the pipeline, follow, read logs, stop",
                                description="Run the workspace's RayJob manifest on the cluster.")
    job_sub = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    submit = job_sub.add_parser("submit", parents=parents, help="create a RayJob from the manifests")
    submit.add_argument("--entrypoint", help="command to run (default: the manifest's pipeline)")
    submit.add_argument("--job-name", help="RayJob name (default: the manifest's, plus a random suffix)")
    submit.add_argument("--exact-name", action="store_true", help="do not add a random suffix")
    submit.add_argument("--workers", action="append", default=[], metavar="GROUP=N[:MIN:MAX]")
    submit.add_argument("--image", help="Ray image (cluster.image)")
    submit.add_argument("--wait", action="store_true", help="wait for SUCCEEDED/FAILED; exit 1 unless SUCCEEDED")
    submit.add_argument("--timeout", type=float, default=3 * 3600)
    submit.set_defaults(func=_job_submit)

    jstatus = job_sub.add_parser("status", parents=parents, help="a RayJob's status, or all of them")
    jstatus.add_argument("job", nargs="?", help="RayJob name (default: list all)")
    jstatus.set_defaults(func=_job_status)

    logs = job_sub.add_parser("logs", parents=parents, help="driver logs from the Ray dashboard's job API")
    logs.add_argument("job", help="RayJob name")
    logs.add_argument("--dashboard-url", default=None,
                      help=f"dashboard URL (default {DEFAULT_DASHBOARD_URL}, what `cluster connect` forwards)")
    logs.add_argument("--token", help="Ray auth token (default $RAY_AUTH_TOKEN, else the job cluster's Secret)")
    logs.add_argument("--port-forward", action="store_true",
                      help="port-forward to the job's own cluster for this call (needs kubectl)")
    logs.set_defaults(func=_job_logs)

    stop = job_sub.add_parser("stop", parents=parents, help="stop a RayJob (suspend; --delete removes it)")
    stop.add_argument("job", help="RayJob name")
    stop.add_argument("--delete", action="store_true", help="delete the RayJob (and its cluster) instead")
    stop.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    stop.set_defaults(func=_job_stop)
