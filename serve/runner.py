"""Start, wait for, query and stop the Serve application on a local (or already running) Ray.

Library entry points the pipeline and the CLI call:

* :func:`ray_env` -- environment variables Serve's ingress needs *before* Ray starts;
* :func:`start` -- deploy the app (starting Ray if needed), wait until it answers, return its URL;
* :func:`predict` -- send one KServe V1 predict request over HTTP;
* :func:`shutdown` -- remove the app, and stop Serve and Ray if :func:`start` started Ray;
* :func:`serve_forever` -- ``rayspace serve``: start, wait for Ctrl-C/SIGTERM, stop cleanly.

Which HTTP ingress answers is decided when Ray starts: Serve reads its ingress
flags from the environment of its controller, proxy and replica processes. When
:func:`start` starts Ray it applies ``serve.ingress`` (HAProxy by default); when
Ray is already running (the pipeline's, a test session's) the app runs behind
whatever ingress that Ray was started with, so start Ray with :func:`ray_env`
in its environment to get HAProxy there too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serve.app import APP_NAME, app_args_from_config, build_app
from workloads.exceptions import ServeError
from workloads.registry import ModelRegistry

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {"started_ray": False, "url": None}
_lock = threading.Lock()


def ray_env(ingress: str = "haproxy") -> dict[str, str]:
    """Environment variables to set before Ray starts so Serve uses the chosen ingress.

    ``haproxy`` turns on Serve's HAProxy ingress (replicas get direct HTTP ports
    and HAProxy routes to them) with Ray's throughput-optimised request path, and
    shortens the drain a replica waits for load balancers to deregister it on
    shutdown (30 s by default, which only matters across nodes).
    """
    # Ray runs its workers at nice 15 so batch work yields to its own daemons; a serving replica
    # would then lose every CPU race to ordinary processes on a shared machine.
    common = {"RAY_worker_niceness": "0"}
    if ingress == "haproxy":
        return common | {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            # Ray's bundle of request-path optimisations meant to go with HAProxy: user code on the
            # replica's main loop (no thread hop per request), no per-request stderr logs, frozen GC.
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
            # HAProxy always opens a stats page and a metrics endpoint, on fixed ports (8404, 9101) of
            # every interface; free ports keep two local Serve instances (or a stray one) from colliding.
            "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
            # HAProxy's default of 4 threads competes with the replica for cores on a small machine.
            "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, (os.cpu_count() or 2) // 2))),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        }
    if ingress == "proxy":
        return common
    raise ServeError(f'Got "{ingress}" for serve.ingress: must be "haproxy" or "proxy"')


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint_url(host: str, port: int, route_prefix: str = "/") -> str:
    """The base URL clients use (``0.0.0.0`` binds everywhere but is reached on loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}"


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until_ready(url: str, *, version: str | None = None, timeout_s: float = 60.0, interval_s: float = 0.25) -> dict[str, Any]:
    """Poll ``GET /healthz`` until it answers 200 (and serves ``version``, if given).

    Raises:
        ServeError: It did not within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = _http("GET", f"{url}/healthz", timeout=5)
            if status == 200:
                health = json.loads(body)
                if version is None or health.get("version") == version:
                    return health
                last = f"serving {health.get('version')}, waiting for {version}"
            else:
                last = f"HTTP {status}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = str(e)
        time.sleep(interval_s)
    raise ServeError(f"{url}/healthz did not answer as ready within {timeout_s:.0f}s (last: {last})")


def predict(url: str, model_name: str, instances: Sequence[Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send one KServe V1 predict request and return the decoded answer.

    Raises:
        ServeError: The server answered with an error status or could not be reached.
    """
    body = json.dumps({"instances": list(instances)}).encode()
    target = f"{url}/v1/models/{model_name}:predict"
    try:
        status, raw = _http("POST", target, body, timeout=timeout)
    except (urllib.error.URLError, OSError) as e:
        raise ServeError(f"POST {target}: {e}") from e
    if status != 200:
        raise ServeError(f"POST {target}: HTTP {status}: {raw[:300].decode(errors='replace')}")
    return json.loads(raw)


def _actual_http_port(default: int) -> int:
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return default
    return int(client.http_config.port)


def start(
    cfg: Any,
    *,
    ray_init_kwargs: Mapping[str, Any] | None = None,
    ready_timeout_s: float = 120.0,
) -> str:
    """Deploy the Serve app for ``cfg`` and return its base URL once it answers.

    Starts a local Ray (with :func:`ray_env` for ``cfg.serve.ingress``) if none is
    initialised in this process; otherwise deploys onto the running one. If Serve
    already runs in that Ray with other HTTP options, its port is kept and the URL
    reports it.

    Args:
        cfg: A :class:`~workloads.config.WorkspaceConfig`.
        ray_init_kwargs: Extra ``ray.init`` arguments when Ray is started here.
        ready_timeout_s: How long to wait for ``/healthz``.

    Raises:
        ModelNotFoundError: The registry has no current version to serve.
        ServeError: Deployment failed or the app never answered.
    """
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    registry = ModelRegistry(cfg.registry.path)
    current = registry.get(cfg.registry.model_name)  # fail fast, before Ray, if nothing is promoted
    with _lock:
        if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
            from workloads.runtime import ensure_ray

            # A job's driver or a notebook on the head: deploy onto that cluster, never a nested local Ray.
            ensure_ray()
        if not ray.is_initialized():
            from workloads.runtime import init_local_ray

            # Serve reads its ingress flags at import time in Ray's own processes: set them before Ray starts.
            # A value already in the environment wins, so operators can tune any of them.
            for key, value in ray_env(cfg.serve.ingress).items():
                os.environ.setdefault(key, value)
            kwargs: dict[str, Any] = {"logging_level": "WARNING"}
            kwargs.update(ray_init_kwargs or {})
            init_local_ray(**kwargs)  # loopback only, no dashboard
            _state["started_ray"] = True
        http_options = {"host": cfg.serve.host, "port": cfg.serve.port}
        serve_errors = (TimeoutError, RuntimeError, RayServeException, ray.exceptions.RayError)
        try:
            try:
                serve.start(http_options=http_options)
            except TimeoutError as e:
                # Serve gives its proxies a fixed 60 s; on a busy machine they can take longer. The
                # controller is up, so connect to it and let wait_until_ready enforce our own deadline.
                logger.warning("Serve's HTTP proxy is slow to start (%s); still waiting for it", e)
                serve.start(http_options=http_options)
        except serve_errors as e:
            raise ServeError(f"starting Serve on {cfg.serve.host}:{cfg.serve.port} failed: {type(e).__name__}: {e}") from e
        port = _actual_http_port(cfg.serve.port)
        if port != cfg.serve.port:
            logger.warning("Serve already runs in this Ray on port %d; serving there, not on %d", port, cfg.serve.port)
        app = build_app(app_args_from_config(cfg))
        try:
            serve.run(app, name=APP_NAME, route_prefix=cfg.serve.route_prefix, blocking=False)
        except serve_errors as e:
            raise ServeError(f"deploying the Serve app failed: {type(e).__name__}: {e}") from e
        url = endpoint_url(cfg.serve.host, port, cfg.serve.route_prefix)
        _state["url"] = url
    health = wait_until_ready(url, timeout_s=ready_timeout_s)
    logger.info("serving %s %s at %s", cfg.registry.model_name, health.get("version", current.version), url)
    return url


def shutdown() -> None:
    """Remove the app; if :func:`start` started Ray, stop Serve and Ray too (no process left behind)."""
    import ray
    from ray import serve

    with _lock:
        if not ray.is_initialized():
            return
        if _state["started_ray"]:
            serve.shutdown()  # stops HAProxy and the replicas gracefully before Ray goes
            ray.shutdown()
            _state["started_ray"] = False
        else:
            serve.delete(APP_NAME)
        _state["url"] = None


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM handler."""


def serve_forever(cfg: Any, *, on_ready: Callable[[str], None] | None = None,
                  ray_init_kwargs: Mapping[str, Any] | None = None) -> int:
    """``rayspace serve``: run in the foreground until Ctrl-C or SIGTERM, then stop cleanly.

    Returns:
        The exit code: 0 after a clean stop.
    """

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        url = start(cfg, ray_init_kwargs=ray_init_kwargs)
        # ray.init installs its own SIGTERM handler (kill the node, exit 1); ours stops Serve first.
        signal.signal(signal.SIGTERM, on_sigterm)
        if on_ready is not None:
            on_ready(url)
        while True:
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        logger.info("stopping")
        return 0
    finally:
        # Ignore a second signal while shutting down; the shutdown is what it asks for anyway.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            shutdown()
        finally:
            signal.signal(signal.SIGTERM, previous)
