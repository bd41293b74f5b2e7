"""``rayspace serve`` as a person runs it: its own Ray, HAProxy ingress, Ctrl-C/SIGTERM stop, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from serve.testing import make_checkpoint, synthetic_rows
from workloads.config import RegistryConfig
from workloads.registry import promote

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    alive = []
    for line in out.splitlines():
        pid, s, stat, args = line.split(None, 3)
        if int(s) == sid and not stat.startswith("Z"):
            alive.append(f"{pid} {args[:80]}")
    return alive


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_rayspace_serve_foreground_and_clean_stop(tmp_path, stop_signal):
    ckpt = make_checkpoint(tmp_path / "ckpt", seed=5, fit_steps=20)
    promote(RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc"), ckpt, {"test_roc_auc": 0.9})
    port = _free_port()
    cmd = [sys.executable, "-m", "workloads.cli", "serve", "--registry", str(tmp_path / "models"),
           "--port", str(port), "--set", "serve.max_replicas=1", "--set", "serve.reload_poll_s=0.5"]
    if stop_signal == signal.SIGINT:
        cmd += ["--ingress", "proxy"]  # cover Serve's own proxy too; SIGTERM covers the HAProxy default
    # A new session: Ray, HAProxy and every worker this command starts share its session id.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        line = ""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith("serving "):
                break
        if not line.startswith(f"serving wdbc at http://127.0.0.1:{port}"):
            proc.kill()
            err = proc.stderr.read()
            start = max(err.find("Traceback"), err.find("error: "), 0)
            pytest.fail(f"no 'serving' line (exit {proc.wait()}): {line!r}\n{err[start:start + 4000]}")
        body = json.dumps({"instances": synthetic_rows(2, 1)[0].tolist()}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/wdbc:predict", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["model_version"] == "v1" and len(answer["predictions"]) == 2
        # A promotion while it runs is picked up by polling `current`, no restart.
        promote(RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc"),
                make_checkpoint(tmp_path / "ckpt2", seed=6, fit_steps=20), {"test_roc_auc": 0.95})
        health: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and health.get("version") != "v2":
            time.sleep(0.5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                health = json.loads(r.read())
        assert health.get("version") == "v2", health
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out
    # Nothing of that Ray (raylet, GCS, workers, HAProxy) outlives the command.
    deadline = time.monotonic() + 20
    left = _session_pids(proc.pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _session_pids(proc.pid)
    assert left == [], left
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
