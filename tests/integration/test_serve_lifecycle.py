"""``rayspace serve`` stops cleanly, and nothing it started outlives it, whatever kills it.

Each ``rayspace serve`` here runs in a session of its own (``start_new_session``), so
the Ray daemons it starts share its session id; Ray's workers and HAProxy are found by
what they are: processes whose command line names the run's temp dir (HAProxy's
``-f <run dir>/<node>/haproxy.cfg``) or that inherited ``RAYSPACE_RUN_DIR=<run dir>``.
The run dir is the one whose ``owner`` file names the command's pid. Nothing is
killed here that this file did not start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve import runner
from serve.testing import make_checkpoint, synthetic_rows
from workloads.config import RegistryConfig
from workloads.registry import promote

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc (Linux)"),
]


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    stderr: Path
    run_dir: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """One promoted tiny model for every start in this file."""
    base = tmp_path_factory.mktemp("lifecycle")
    promote(RegistryConfig(path=str(base / "models"), model_name="wdbc"),
            make_checkpoint(base / "ckpt", seed=5, fit_steps=20), {"test_roc_auc": 0.9})
    return base / "models"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_dir_of(pid: int) -> Path | None:
    """The run dir whose owner file names ``pid`` (``<tmp>/rayspace-<uid>/<run>/owner``)."""
    root = runner.runs_root()
    for d in root.iterdir() if root.exists() else ():
        try:
            if (d / "owner").read_text().split()[0] == str(pid):
                return d
        except (OSError, IndexError):
            continue
    return None


def _session_pids(sid: int) -> list[int]:
    """Live processes in session ``sid`` (the command's Ray daemons; workers keep it too)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            alive.append(int(entry))
    return alive


def _haproxy_pids(run_dir: Path) -> list[int]:
    """HAProxy processes started with a config under ``run_dir``, read from /proc here."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if args and os.path.basename(args[0]) == "haproxy" and state not in ("Z", "X") and any(
                a.startswith(f"{run_dir}/") for a in args):
            pids.append(int(entry))
    return pids


def _left_of(served: Served) -> list[int]:
    return sorted(set(_session_pids(served.proc.pid)) | set(runner.processes_of_run(served.run_dir))
                  | set(_haproxy_pids(served.run_dir)))


def _wait_until_nothing_left(served: Served, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = _left_of(served)
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = _left_of(served)
    return left


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")[:120].decode(errors="replace")
            out.append(f"{pid} {cmdline}")
        except OSError:
            out.append(f"{pid} (gone)")
    return out


def _start(registry: Path, tmp_path: Path, name: str) -> Served:
    port = _free_port()
    stderr = tmp_path / f"{name}.stderr"
    cmd = [sys.executable, "-m", "workloads.cli", "serve", "--registry", str(registry), "--port", str(port),
           "--set", "serve.max_replicas=1"]
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    line = ""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("serving "):
            break
    if not line.startswith(f"serving wdbc at http://127.0.0.1:{port}"):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        text = stderr.read_text()
        at = max(text.find("Traceback"), text.find("error: "), 0)
        pytest.fail(f"no 'serving' line (exit {proc.returncode}): {line!r}\n{text[at:at + 4000]}")
    run_dir = _run_dir_of(proc.pid)
    assert run_dir is not None, f"no run dir under {runner.runs_root()} owned by pid {proc.pid}"
    return Served(proc, port, stderr, run_dir)


def _kill_group(served: Served) -> None:
    if served.proc.poll() is None:
        os.killpg(served.proc.pid, signal.SIGKILL)
    served.proc.wait()


def _assert_every_route_answers(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"instances": synthetic_rows(2, 1)[0].tolist()}).encode()
    requests = {
        "GET /healthz": urllib.request.Request(f"{base}/healthz"),
        "GET /v1/models": urllib.request.Request(f"{base}/v1/models"),
        "GET /v1/models/wdbc": urllib.request.Request(f"{base}/v1/models/wdbc"),
        "POST /v1/models/wdbc:predict": urllib.request.Request(
            f"{base}/v1/models/wdbc:predict", data=body, method="POST", headers={"Content-Type": "application/json"}),
    }
    answers = {}
    for what, req in requests.items():
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                answers[what] = r.status
                payload = json.loads(r.read())
        except urllib.error.HTTPError as e:
            answers[what] = e.code
            continue
        if what.startswith("POST"):
            assert len(payload["predictions"]) == 2, payload
    assert answers == dict.fromkeys(requests, 200), answers


def test_sigkill_then_next_serve_recovers_three_times_and_sigterm_leaves_nothing(registry, tmp_path):
    """Three rounds of: serve, check every route, SIGKILL the process group (a crash, the OOM
    killer), check nothing of it survives (HAProxy included), and let the next start find
    the leftover run dir, say so in one line, remove it and answer 200. The fourth start is
    stopped with SIGTERM: exit 0, one line, no stack dump, no process and no file left."""
    previous: Served | None = None
    served: Served | None = None
    try:
        for round_no in range(4):
            served = _start(registry, tmp_path, f"round{round_no}")
            haproxy = _haproxy_pids(served.run_dir)
            assert haproxy, "HAProxy does not run with its config in the run's own temp dir"
            if previous is not None:
                notes = [ln for ln in served.stderr.read_text().splitlines() if "leftovers" in ln]
                assert len(notes) == 1 and str(previous.run_dir) in notes[0], notes
                assert not previous.run_dir.exists()
            _assert_every_route_answers(served.port)
            if round_no == 3:
                break
            _kill_group(served)
            left = _wait_until_nothing_left(served)
            assert left == [], _describe(left)
            # Only the dir remains (a killed process cannot remove it); the next start does.
            assert served.run_dir.exists()
            previous = served

        served.proc.send_signal(signal.SIGTERM)
        out, _ = served.proc.communicate(timeout=180)
        err = served.stderr.read_text()
        assert served.proc.returncode == 0, err[-3000:]
        assert [ln for ln in out.splitlines() if "SIGTERM" in ln] == [
            "SIGTERM received: stopping Serve, then Ray (SIGTERM again forces it)"], out
        assert out.rstrip().endswith("stopped"), out
        assert "Traceback" not in err and "*** SIGTERM" not in err, err[-3000:]
        left = _wait_until_nothing_left(served, timeout_s=10)
        assert left == [], _describe(left)
        assert not served.run_dir.exists()
    finally:
        if served is not None and served.proc.poll() is None:
            _kill_group(served)


def test_second_signal_forces_the_stop(registry, tmp_path):
    """Ctrl-C twice: the second does not wait for Serve's graceful stop; exit 130, nothing left."""
    served = _start(registry, tmp_path, "twice")
    try:
        served.proc.send_signal(signal.SIGINT)
        # The first line says the stop began; a second signal then cuts it short.
        assert served.proc.stdout.readline().startswith("SIGINT received: stopping Serve")
        served.proc.send_signal(signal.SIGINT)
        out, _ = served.proc.communicate(timeout=60)
        assert served.proc.returncode == 128 + signal.SIGINT, served.stderr.read_text()[-3000:]
        assert "SIGINT again: forcing the stop" in out
        left = _wait_until_nothing_left(served)
        assert left == [], _describe(left)
        assert not served.run_dir.exists()
    finally:
        if served.proc.poll() is None:
            _kill_group(served)
