"""Autoscaling simulation of a rendered RayCluster on one machine.

Ray's fake multi-node provider starts extra raylets on this machine as if they were
new worker pods. Fed the node types Ray's KubeRay code derives from the RayCluster
(:mod:`cluster._internal.autoscaling`), the real autoscaler (v1 or v2, as the
manifest says) decides when to add and remove them. A driver submits tasks that each
need one whole worker node; the timeline shows workers scaling up to the group's
maximum and back to its minimum after the idle timeout.

Ray 2.60's ``AutoscalingCluster`` helper is not used on purpose: it needs
``fake_multi_node/example.yaml``, which the wheel does not ship, and its start and
shutdown run ``ray stop --force``, which kills every Ray process on the machine.
Instead the fake head is started here with ``RAY_FAKE_CLUSTER=1`` and
``--autoscaling-config``, in its own process group, and stopped by that group's id.
The provider is loaded as an ``external`` provider (whose defaults are built in), and
the ``memory`` resource the KubeRay conversion adds is dropped because the fake
provider would register it as a custom resource, which Ray rejects.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster._internal.autoscaling import HEAD_NODE_TYPE, autoscaler_view
from cluster._internal.sim_driver import FAKE_HEAD_NODE_ID
from workloads.exceptions import SimulationError

logger = logging.getLogger(__name__)

FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
FAKE_HEAD_NODE_TYPE = "ray.head.default"
#: Resources the fake provider cannot pass to a raylet (they would become custom resources).
DROPPED_RESOURCES = ("memory", "object_store_memory")


@dataclass
class TimelineEvent:
    """One point of the simulation's timeline (seconds since the head was started)."""

    t: float
    event: str
    workers: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimulationResult:
    """What the simulation showed.

    Attributes:
        overlay: Overlay whose RayCluster was simulated.
        group: Worker group that was exercised.
        node_type: Ray resources of one worker of that group, as the autoscaler saw them.
        min_workers: The group's minReplicas.
        max_workers: The group's maxReplicas (the workload asks for this many nodes).
        autoscaler_version: ``v1`` or ``v2``, from ``autoscalerOptions.version``.
        manifest_idle_timeout_s: ``idleTimeoutSeconds`` of the manifest.
        idle_timeout_s: Idle timeout used here (shortened so the run stays short).
        events: The timeline.
        peak_workers: Most worker nodes alive at once.
        final_workers: Worker nodes alive at the end.
        scale_up_s: Seconds from submitting the workload to reaching the peak.
        scale_down_s: Seconds from the tasks finishing to being back at the minimum.
        problems: Why the run does not show the expected behaviour (empty when it does).
        workdir: The run's private temp dir (its path marks every process of the fake cluster).
    """

    overlay: str
    group: str
    node_type: dict[str, float]
    min_workers: int
    max_workers: int
    autoscaler_version: str
    manifest_idle_timeout_s: float
    idle_timeout_s: float
    events: list[TimelineEvent] = field(default_factory=list)
    peak_workers: int = 0
    final_workers: int = 0
    scale_up_s: float | None = None
    scale_down_s: float | None = None
    problems: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        """True when workers scaled up to the maximum and back down to the minimum."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["ok"] = self.ok
        return out


def fake_cluster_config(
    raycluster: dict[str, Any], group: str, *, gcs_address: str, idle_timeout_s: float, max_workers: int | None = None
) -> dict[str, Any]:
    """Autoscaling config for the fake provider, built from the RayCluster's node types.

    Args:
        raycluster: Rendered RayCluster.
        group: Worker group to include (the only worker type the fake cluster gets).
        gcs_address: ``host:port`` of the fake head's GCS.
        idle_timeout_s: Idle timeout to use.
        max_workers: Cap on the group's max workers (``None``: the manifest's).

    Raises:
        SimulationError: No such group.
    """
    view = autoscaler_view(raycluster)
    if group not in view.node_types or group == HEAD_NODE_TYPE:
        workers = sorted(n for n in view.node_types if n != HEAD_NODE_TYPE)
        raise SimulationError(f'Got "{group}" for the worker group: must be one of {workers}')
    head = view.node_types[HEAD_NODE_TYPE]
    worker = view.node_types[group]
    cap = worker.max_workers if max_workers is None else min(worker.max_workers, max_workers)

    def strip(resources: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in resources.items() if k not in DROPPED_RESOURCES}

    config = dict(view.config)
    config.update(
        {
            "cluster_name": f"sim-{(raycluster.get('metadata') or {}).get('name', 'raycluster')}",
            "max_workers": cap,
            "idle_timeout_minutes": idle_timeout_s / 60.0,
            "head_node_type": FAKE_HEAD_NODE_TYPE,
            "provider": {
                "type": "external",
                "module": FAKE_PROVIDER,
                "gcs_address": gcs_address,
                "launch_multiple": True,
                "head_node_id": FAKE_HEAD_NODE_ID,
            },
            "available_node_types": {
                FAKE_HEAD_NODE_TYPE: {"resources": strip(head.resources), "node_config": {}, "max_workers": 0},
                group: {
                    "resources": strip(worker.resources),
                    "node_config": {},
                    "min_workers": worker.min_workers,
                    "max_workers": cap,
                },
            },
        }
    )
    return config


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start_head(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    logger.info("starting the fake Ray head: %s", " ".join(cmd))
    with log.open("ab") as log_file:
        # Own session = own process group, so the whole fake cluster stops with one killpg.
        return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float) -> bool:
    """True once `ray start --block` reports the head up; False if it exited first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if "Ray runtime started" in log.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    raise SimulationError(f"the fake Ray head did not come up within {timeout_s:.0f}s:\n{_tail(log)}")


def _processes_under(marker: str) -> list[int]:
    """Pids of processes whose command line mentions ``marker`` (the run's private temp dir)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in (proc.info.get("cmdline") or [])):
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _stop_head(proc: subprocess.Popen, marker: str) -> None:
    """Stop the fake cluster: its process group by id, then any straggler of this run by pid."""
    import psutil

    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            # `ray start --block` often outlives SIGTERM by seconds; SIGKILL of the group follows.
            logger.info("fake Ray head (pgid %d) still running after %s", proc.pid, sig.name)
    # Raylets of fake worker nodes may have left the group; they carry this run's temp dir in
    # their command line, which no other Ray on the machine does.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        stragglers = [p for p in _processes_under(marker) if p != os.getpid()]
        if not stragglers:
            return
        for pid in stragglers:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    left = _processes_under(marker)
    if left:
        raise SimulationError(f"processes of the fake cluster would not stop: pids {left}")


def simulate(
    raycluster: dict[str, Any],
    *,
    overlay: str = "?",
    group: str | None = None,
    idle_timeout_s: float | None = None,
    max_workers: int | None = 2,
    task_seconds: float = 4.0,
    timeout_s: float = 240.0,
    keep_dir: bool = False,
) -> SimulationResult:
    """Run the autoscaling simulation for one worker group of a rendered RayCluster.

    Args:
        raycluster: Rendered RayCluster (``cluster.manifests.find(render(o), "RayCluster")``).
        overlay: Name for the report.
        group: Worker group to exercise; ``None``: the first group without GPUs.
        idle_timeout_s: Idle timeout to simulate; ``None``: the manifest's, capped at 5 s.
        max_workers: Cap on the group's max workers so the run fits one machine
            (``None``: the manifest's maximum).
        task_seconds: How long each task holds its node.
        timeout_s: Give up after this long (the result then lists the problem).
        keep_dir: Keep the run's temp dir (logs) for debugging.

    Returns:
        The timeline and whether it shows scale-up to the maximum and scale-down to the minimum.

    Raises:
        SimulationError: The fake cluster or the driver could not run at all.
    """
    view = autoscaler_view(raycluster)
    if group is None:
        cpu_groups = [n for n, t in view.node_types.items() if n != HEAD_NODE_TYPE and not t.resources.get("GPU")]
        if not cpu_groups:
            raise SimulationError("the RayCluster has no worker group without GPUs to simulate; pass a group")
        group = cpu_groups[0]
    spec = raycluster.get("spec") or {}
    version = str((spec.get("autoscalerOptions") or {}).get("version") or "v1")
    manifest_idle = view.idle_timeout_s
    idle = min(manifest_idle, 5.0) if idle_timeout_s is None else float(idle_timeout_s)

    port = _free_port()
    config = fake_cluster_config(raycluster, group, gcs_address=f"127.0.0.1:{port}", idle_timeout_s=idle,
                                 max_workers=max_workers)
    worker_type = config["available_node_types"][group]
    result = SimulationResult(
        overlay=overlay, group=group, node_type=dict(worker_type["resources"]),
        min_workers=int(worker_type["min_workers"]), max_workers=int(worker_type["max_workers"]),
        autoscaler_version=version, manifest_idle_timeout_s=manifest_idle, idle_timeout_s=idle,
    )
    task_cpus = float(worker_type["resources"].get("CPU", 0))
    if task_cpus <= 0:
        raise SimulationError(f"worker group {group} offers no CPU, so no task can target it")

    workdir = Path(tempfile.mkdtemp(prefix="rayspace-sim-"))
    result.workdir = str(workdir)
    config_path = workdir / "autoscaling.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    head_log = workdir / "head.log"
    token = secrets.token_hex(32)
    # Same authentication as the RayCluster (authOptions.mode: token), with a throwaway token.
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env = {
        **os.environ, **auth_env,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if version == "v2":
        env.update({
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
        })
    head_cpus = config["available_node_types"][FAKE_HEAD_NODE_TYPE]["resources"].get("CPU", 0)
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={int(head_cpus)}",
        f"--autoscaling-config={config_path}", f"--temp-dir={workdir / 'ray'}",
        "--include-dashboard=false", "--disable-usage-stats",
    ]
    ready_file = workdir / "head-ready"
    t0 = time.time()
    head = _start_head(cmd, env, head_log)
    result.events.append(TimelineEvent(0.0, "head-starting", 0, {"pid": head.pid, "gcs_port": port}))
    driver: subprocess.Popen | None = None
    try:
        params = {
            "tasks": result.max_workers, "task_cpus": task_cpus, "task_seconds": task_seconds,
            "min_workers": result.min_workers, "connect_timeout_s": 300.0, "ready_file": str(ready_file),
            "up_timeout_s": max(30.0, timeout_s * 0.6), "down_timeout_s": max(30.0, idle + timeout_s * 0.3),
        }
        driver_env = {**os.environ, **auth_env, "RAY_USAGE_STATS_ENABLED": "0"}
        # Started right away: importing Ray in the driver overlaps the head's start-up.
        driver = subprocess.Popen(
            [sys.executable, "-m", "cluster._internal.sim_driver", f"127.0.0.1:{port}", json.dumps(params)],
            env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )
        for attempt in (1, 2):
            if _wait_ready(head, head_log, 120.0):
                break
            # `ray start` gives its raylet a fixed 30 s to register; a saturated machine can miss that.
            logger.warning("fake Ray head failed to start (attempt %d):\n%s", attempt, _tail(head_log, 5))
            _stop_head(head, str(workdir / "ray"))
            if attempt == 2:
                raise SimulationError(f"the fake Ray head failed to start twice:\n{_tail(head_log)}")
            head = _start_head(cmd, env, head_log)
        ready_file.touch()
        result.events.append(TimelineEvent(round(time.time() - t0, 1), "head-up", 0))
        try:
            stdout, stderr = driver.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise SimulationError(f"the simulation driver did not finish within {timeout_s:.0f}s") from e
        _read_driver_output(stdout, t0, result)
        if driver.returncode not in (0, 3, 4):
            raise SimulationError(
                f"the simulation driver failed (exit {driver.returncode}):\n{stderr[-3000:]}\n"
                f"head log:\n{_tail(head_log)}"
            )
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        _stop_head(head, str(workdir))
        result.events.append(TimelineEvent(round(time.time() - t0, 1), "head-stopped", result.final_workers))
        if not keep_dir:
            shutil.rmtree(workdir, onerror=lambda fn, path, exc: logger.warning("could not remove %s: %s", path, exc[1]))
    _judge(result)
    return result


def _read_driver_output(stdout: str, t0: float, result: SimulationResult) -> None:
    submitted_at = finished_at = None
    peak_at = None
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # Ray may print its own lines; only ours are JSON objects with "wall".
        if not isinstance(record, dict) or "wall" not in record:
            continue
        t = round(float(record.pop("wall")) - t0, 1)
        event = str(record.pop("event"))
        workers = int(record.pop("workers"))
        result.events.append(TimelineEvent(t, event, workers, record))
        if event == "submitted":
            submitted_at = t
        if event == "tasks-finished":
            finished_at = t
        if workers > result.peak_workers:
            result.peak_workers, peak_at = workers, t
        result.final_workers = workers
    if submitted_at is not None and peak_at is not None:
        result.scale_up_s = round(peak_at - submitted_at, 1)
    if finished_at is not None and result.events and result.events[-1].event == "idle":
        result.scale_down_s = round(result.events[-1].t - finished_at, 1)


def _judge(result: SimulationResult) -> None:
    events = {e.event for e in result.events}
    if "tasks-finished" not in events:
        result.problems.append(
            f"the workload did not finish: workers peaked at {result.peak_workers} of {result.max_workers}"
        )
    if result.peak_workers != result.max_workers:
        result.problems.append(
            f"workers peaked at {result.peak_workers}, expected the workload to scale the group to {result.max_workers}"
        )
    if result.final_workers != result.min_workers:
        result.problems.append(
            f"{result.final_workers} workers left after idling, expected minReplicas={result.min_workers}"
        )
