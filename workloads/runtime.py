"""Connecting to Ray: the embedded local default, or the cluster at ``RAY_ADDRESS``.

The same code runs on a laptop (a Ray started in-process, token auth on, only
loopback listeners, no dashboard) and on a KubeRay cluster (the driver of a
``ray job submit`` or a notebook on the head, where ``RAY_ADDRESS`` is set).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


#: Ray only binds loopback when it believes it is not forming a multi-node cluster (its macOS/Windows mode).
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only_while_starting():
    """Make the Ray started inside this block listen on 127.0.0.1 only, and leave no trace after it.

    By default Ray binds every port (GCS, raylet, object manager, workers) to the
    machine's routable address so other nodes can join. An embedded single-machine
    Ray has no other nodes. Ray's switch for that is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (its single-node mode): read by the processes Ray starts (they inherit it) and, in
    this process, by ``ray._private.ray_constants`` at import. ``_node_ip_address="127.0.0.1"``
    does not do it: measured with Ray 2.60, the GCS still binds ``*`` and advertises the
    routable address. Both the variable and, if Ray was imported earlier, the constant are
    restored when the block ends, so a later ``ray.init(address=...)`` in this process (a
    notebook joining a cluster) resolves its own address normally.
    """
    import ray._private.ray_constants as ray_constants

    saved_env = os.environ.get(_LOOPBACK_ENV)
    saved_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = saved_env
        ray_constants.ENABLE_RAY_CLUSTER = saved_const


def pin_ray_address() -> None:
    """Worker setup hook: point ``RAY_ADDRESS`` at the worker's own cluster.

    Ray code that runs inside workers and asks the State API without an address
    (Ray Train's placement-group cleaner does) auto-detects "the" Ray on the
    machine. With a second Ray running (another user's, a ``ray start`` head) it
    either fails or picks the wrong one, and a stopped Tune trial's CPUs are
    never given back. An in-process Ray has no bootstrap file, so say it here.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def cluster_cpu_capacity() -> tuple[float, str]:
    """CPUs the connected Ray cluster can offer: its configured maximum, else what is up now.

    On KubeRay the autoscaler (v2) publishes every group's resources and maxReplicas in
    the GCS; Ray Train V2 sizes its worker group from the same record
    (``ray/train/v2/_internal/execution/worker_group/worker_group.py`` calls
    ``get_max_resources_from_cluster_config``). A cluster scaled to zero workers then
    still counts the CPUs it can scale up to. Without that record (a local Ray, a fixed
    cluster) the CPUs of the nodes alive now are the capacity.

    Returns:
        ``(cpus, source)`` with source ``"max"`` (configured maximum) or ``"now"``.
    """
    import ray
    from ray._private.state import state

    try:
        maximum = state.get_max_resources_from_cluster_config()
    except Exception as e:  # noqa: BLE001 - private API: absent/changed means "no record", logged
        logger.debug("no cluster config from the GCS: %s", e)
        maximum = None
    if maximum and float(maximum.get("CPU") or 0) > 0:
        return float(maximum["CPU"]), "max"
    return float(ray.cluster_resources().get("CPU", 0)), "now"


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_local_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start a new in-process Ray on loopback only (token auth on).

    The dashboard runs, bound to 127.0.0.1 on a free port: Ray Train's placement-group
    cleaner asks the State API (served by the dashboard) whether a trainer died, and
    without it the workers' CPUs of a Tune trial that was stopped stay reserved forever.
    """
    import ray

    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env.setdefault("worker_process_setup_hook", "workloads.runtime.pin_ray_address")
    kwargs["runtime_env"] = runtime_env
    kwargs.setdefault("include_dashboard", True)
    if kwargs["include_dashboard"]:
        kwargs.setdefault("dashboard_host", "127.0.0.1")
        kwargs.setdefault("dashboard_port", free_loopback_port())
    with _loopback_only_while_starting():
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def ensure_ray(*, address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Initialize Ray once and describe what we are connected to.

    Args:
        address: Cluster to join; default ``RAY_ADDRESS`` or, when unset, a new
            local Ray (``address="local"`` never joins a stale session by accident).
        num_cpus: Logical CPUs of a new local Ray (default: the machine's).
        quiet: Keep worker logs and Ray Data progress bars off the console.

    Returns:
        ``{"address": ..., "mode": "local"|"cluster", "cpus": float}``.
    """
    import ray

    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {"logging_level": "WARNING" if quiet else "INFO", "log_to_driver": not quiet}
        logger.info("starting/joining Ray at %s", target)
        if target == "local":
            init_local_ray(num_cpus, **kwargs)
        else:
            ray.init(address=target, **kwargs)
        if quiet:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            # Ray Data and Train log every execution plan at INFO on the driver.
            for name in ("ray.data", "ray.train", "ray.tune", "ray.serve"):
                logging.getLogger(name).setLevel(logging.WARNING)
    address_now = ray.get_runtime_context().gcs_address
    mode = "cluster" if (address or os.environ.get("RAY_ADDRESS")) else "local"
    return {"address": address_now, "mode": mode, "cpus": float(ray.cluster_resources().get("CPU", 0))}
