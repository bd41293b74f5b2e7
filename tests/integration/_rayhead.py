"""A real Ray head (``ray start --head``) with token authentication, on loopback only: helpers.

The session fixture ``ray_head`` in ``conftest.py`` starts it with :func:`start_head`.

``ray_head`` is what a researcher's laptop talks to: a separate Ray cluster,
started the way the docs say (``RAY_AUTH_MODE=token`` and a token from
``ray get-auth-token --generate``), reached over HTTP (job submission,
dashboard) and GCS (a notebook's ``ray.init``). It is independent of the
in-process ``ray_local`` Ray: its own temp dir, its own free ports, and nothing
of it enters this process's environment (``RAY_ADDRESS`` would make every other
test join it).

It runs as ``ray start --head --block`` in a new session (``setsid``), so every
process it spawns (GCS, raylet, dashboard, workers, Serve) carries its session
id. Teardown stops it by its pid (SIGTERM: ``--block`` then stops its children),
then checks by session id and temp dir that no process is left, killing any
straggler by pid and failing if one survives.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Variables that would point a client at some other Ray or change how it authenticates.
_CLIENT_RAY_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    """A port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its ")" are space-separated.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[3]) if fields[0] != "Z" else None  # fields[3] is the session id (field 6)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_of(sid: int, temp_dir: str) -> dict[int, str]:
    """Live processes in session ``sid`` or naming ``temp_dir`` on their command line."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        cmd = _cmdline(pid)
        if _session_of(pid) == sid or (temp_dir in cmd and _session_of(pid) is not None):
            found[pid] = cmd[:160]
    return found


@dataclass(frozen=True)
class RayHead:
    """A running ``ray start --head`` and how to reach it.

    Attributes:
        pid: The ``ray start --block`` process (leader of its own session).
        gcs_address: ``127.0.0.1:<port>`` for ``ray.init`` / ``RAY_ADDRESS`` of a driver.
        dashboard_url: ``http://127.0.0.1:<port>`` for ``ray job submit --address``.
        client_address: ``ray://127.0.0.1:<port>`` (Ray Client).
        token: The cluster's auth token.
        temp_dir: Ray's ``--temp-dir`` (sessions and logs).
        home: ``HOME`` of the head and of clients started by tests (holds ``.ray/auth_token``).
        num_cpus: Logical CPUs of the head.
    """

    pid: int
    gcs_address: str
    dashboard_url: str
    client_address: str
    token: str
    temp_dir: str
    home: str
    num_cpus: int
    log_path: str

    def client_env(self, *, token: str | None = "__cluster__", **extra: str) -> dict[str, str]:
        """Environment for a client process (``ray job submit``, a notebook kernel).

        Args:
            token: ``"__cluster__"`` sends the cluster's token, another string sends that
                (wrong) token, ``None`` sends none at all (no auth mode, no token, an empty HOME).
            extra: More variables.
        """
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_RAY_VARS}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a driver on this machine joins via loopback
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["PYTHONUNBUFFERED"] = "1"
        if token is None:
            empty_home = Path(self.temp_dir) / "no-token-home"
            empty_home.mkdir(exist_ok=True)
            env["HOME"] = str(empty_home)
        else:
            env["HOME"] = self.home
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN"] = self.token if token == "__cluster__" else token
        env.update(extra)
        return env

    def api(self, method: str, path: str, body: dict | None = None, *, token: str | None = "__cluster__",
            timeout: float = 30) -> tuple[int, bytes]:
        """One request to the dashboard's REST API (the job API ``ray job`` uses)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == '__cluster__' else token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.dashboard_url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def processes(self) -> dict[int, str]:
        return processes_of(self.pid, self.temp_dir)

    def diagnostics(self) -> str:
        """Whether the head still runs, and the tail of its logs (for assertion messages)."""
        alive = _session_of(self.pid) is not None
        lines = [f"ray start pid {self.pid} {'running' if alive else 'EXITED'}; {len(self.processes())} process(es) in its session"]
        logs = [Path(self.log_path)] + sorted(Path(self.temp_dir).glob("session_latest/logs/ray_process_exit.log"))
        for path in logs:
            if path.is_file():
                lines.append(f"--- {path}:\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(lines)


class HeadStartFailed(RuntimeError):
    """``ray start --head`` exited before the head was up."""


def _wait_ready(head: RayHead, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``ray start`` reports the runtime started and the job API answers."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HeadStartFailed(f"ray start exited with {proc.returncode}:\n{Path(head.log_path).read_text()[-3000:]}")
        # The dashboard can answer before the raylet has registered; `ray start` may still give up on the
        # node then ("timed out during startup", a fixed 30 s in Ray 2.60) and exit.
        if "Ray runtime started" in Path(head.log_path).read_text(errors="replace"):
            try:
                status, body = head.api("GET", "/api/jobs/", timeout=5)
                if status == 200:
                    return
                last = f"HTTP {status} {body[:200]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
        else:
            last = "ray start has not reported the runtime started"
        time.sleep(1.0)
    raise RuntimeError(f"the Ray head was not ready within {timeout:.0f}s (last: {last})")


def stop_head(head: RayHead, proc: subprocess.Popen) -> None:
    """Stop the head by its pid and make sure nothing of it is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its children on SIGTERM
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            logger.warning("ray start (pid %d) ignored SIGTERM for 90s; killing its process group", head.pid)
            os.killpg(head.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    left = head.processes()
    while left and time.monotonic() < deadline:  # children may still be exiting
        time.sleep(0.5)
        left = head.processes()
    for pid in left:  # each one is ours: same session or our temp dir
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1.0)
    survivors = head.processes()
    if survivors:
        raise RuntimeError(f"Ray processes survived the head's stop: {survivors}")
    if left:
        logger.warning("killed %d Ray process(es) the head's stop left behind: %s", len(left), left)


def start_head(*, num_cpus: int = 4, ready_timeout: float = 180, attempts: int = 3) -> tuple[RayHead, subprocess.Popen]:
    """Start ``ray start --head --block`` with token auth on free loopback ports, in a new session.

    On a saturated machine the raylet can miss Ray's fixed 30 s registration window and ``ray start``
    exits; that start is cleaned up and retried (fresh ports and temp dir), up to ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _start_head_once(num_cpus=num_cpus, ready_timeout=ready_timeout)
        except HeadStartFailed as e:
            if attempt == attempts:
                raise
            logger.warning("ray start --head failed (attempt %d of %d), retrying: %s", attempt, attempts, str(e)[-300:])
    raise AssertionError("unreachable")


def _start_head_once(*, num_cpus: int, ready_timeout: float) -> tuple[RayHead, subprocess.Popen]:
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Short: Ray puts Unix sockets under it, and socket paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rsh-", dir="/tmp")
    home = Path(temp_dir) / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in _CLIENT_RAY_VARS}
    base.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # The documented way to get a token: generated once, saved to ~/.ray/auth_token (here the temp HOME).
    gen = subprocess.run([ray_bin, "get-auth-token", "--generate"], env=base, capture_output=True, text=True,
                         timeout=120, check=True)
    token = gen.stdout.strip()
    if len(token) < 32 or (home / ".ray" / "auth_token").read_text().strip() != token:
        raise RuntimeError(f"ray get-auth-token --generate gave no usable token: {gen.stderr[-500:]}")

    ports = {name: free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")}
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--include-dashboard", "true", "--num-cpus", str(num_cpus), "--object-store-memory", str(512 * 2**20),
           "--temp-dir", temp_dir, "--disable-usage-stats"]
    for name, port in ports.items():
        cmd += [f"--{name}", str(port)]
    env = dict(base, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               # Ray's switch for single-machine mode: every listener on the node IP (127.0.0.1), none on 0.0.0.0.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               # On SIGTERM a node drains (30 s by default) so other nodes' proxies stop routing to it;
               # a single-node test head has no other node to wait for.
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3")
    log_path = os.path.join(temp_dir, "ray-start.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(
        pid=proc.pid, gcs_address=f"127.0.0.1:{ports['port']}", dashboard_url=f"http://127.0.0.1:{ports['dashboard-port']}",
        client_address=f"ray://127.0.0.1:{ports['ray-client-server-port']}", token=token, temp_dir=temp_dir,
        home=str(home), num_cpus=num_cpus, log_path=log_path,
    )
    try:
        _wait_ready(head, proc, timeout=ready_timeout)
    except BaseException:
        stop_head(head, proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return head, proc
