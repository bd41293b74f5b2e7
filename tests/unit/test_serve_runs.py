"""The run temp dirs of local Serve runs: ownership, leftovers of killed runs, who belongs to a run (no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve import runner

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")


def _dead_pid() -> int:
    """A pid that ran and is gone (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _sleeper(*, argv_path: Path | None = None, env_run_dir: Path | None = None) -> subprocess.Popen:
    """A process started here that names a run dir the way HAProxy (argv) or Ray's daemons (env) do."""
    env = dict(os.environ)
    env.pop(runner.RUN_DIR_ENV, None)
    if env_run_dir is not None:
        env[runner.RUN_DIR_ENV] = str(env_run_dir)
    args = [sys.executable, "-c", "import sys, time; time.sleep(120)"]
    if argv_path is not None:
        args.append(str(argv_path))
    return subprocess.Popen(args, env=env)


def _owned_by(run_dir: Path, pid: int, started: str | None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "owner").write_text(f"{pid} {started}\n")
    return run_dir


def test_sweep_kills_what_names_a_dead_runs_dir_and_keeps_live_runs(tmp_path):
    root = tmp_path / "runs"
    dead = _owned_by(root / "aaaaaa", _dead_pid(), "12345")
    live = _owned_by(root / "bbbbbb", os.getpid(), runner._start_time(os.getpid()))
    (dead / "node").mkdir()
    by_argv = _sleeper(argv_path=dead / "node" / "haproxy.cfg")
    by_env = _sleeper(env_run_dir=dead)
    of_live_run = _sleeper(argv_path=live / "haproxy.cfg")
    bystander = _sleeper(argv_path=tmp_path / "aaaaaa-not-under-it")
    try:
        deadline = time.monotonic() + 10
        while len(runner.processes_of_run(dead)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # until both have exec'd
        assert runner.processes_of_run(dead) == sorted([by_argv.pid, by_env.pid])

        found = runner.sweep_leftovers(root)

        assert sorted(found.pids) == sorted([by_argv.pid, by_env.pid])
        assert found.dirs == [str(dead)]
        assert by_argv.wait(timeout=10) == -9 and by_env.wait(timeout=10) == -9
        assert not dead.exists()
        assert live.exists() and of_live_run.poll() is None and bystander.poll() is None
        line = found.describe()
        assert "\n" not in line and str(by_argv.pid) in line and str(dead) in line
    finally:
        for proc in (by_argv, by_env, of_live_run, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """Same pid, other start time: the run's process is gone even though the pid is taken again."""
    stale = _owned_by(tmp_path / "runs" / "cccccc", os.getpid(), "1")
    assert runner.sweep_leftovers(tmp_path / "runs").dirs == [str(stale)]
    assert not stale.exists()


def test_a_dir_being_created_is_left_alone(tmp_path):
    fresh = tmp_path / "runs" / "dddddd"
    fresh.mkdir(parents=True)  # its owner file is written right after mkdir
    assert not runner.sweep_leftovers(tmp_path / "runs")
    assert fresh.exists()
    old = time.time() - 2 * runner._OWNERLESS_GRACE_S
    os.utime(fresh, (old, old))
    assert runner.sweep_leftovers(tmp_path / "runs").dirs == [str(fresh)]


def test_run_dir_is_private_and_short_enough_for_haproxys_sockets(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.tempfile, "gettempdir", lambda: str(tmp_path))
    root = runner.runs_root()
    assert len(str(root)) + len("/123456") <= runner._MAX_RUN_DIR_LEN or str(root).startswith("/tmp/")
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    public.chmod(0o755)
    with pytest.raises(runner.ServeError, match="mode 0700"):
        runner._private_dir(public)


def test_haproxy_env_points_into_the_run_dir(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    env = runner.ray_env("haproxy", str(run_dir))
    assert env[runner.RUN_DIR_ENV] == str(run_dir)
    for key in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        assert env[key].startswith(f"{run_dir}/"), key
    launcher = env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if launcher:  # Linux with an HAProxy binary: the launcher runs it
        out = subprocess.run([launcher, "-v"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "HAProxy" in out.stdout
    assert runner.ray_env("proxy", str(run_dir)) == {"RAY_worker_niceness": "0", runner.RUN_DIR_ENV: str(run_dir)}


def test_an_earlier_runs_settings_are_never_reused(tmp_path, monkeypatch):
    """Values inherited from a parent rayspace (under the runs' root) are replaced; the user's own are kept."""
    monkeypatch.setattr(runner, "_state", {**runner._state, "env_set": {}})
    monkeypatch.setattr(os, "environ", dict(os.environ))  # _apply_env writes more keys than this test sets
    stale = f"{runner.runs_root()}/0ld0ld"
    monkeypatch.setenv(runner.RUN_DIR_ENV, stale)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_SOCKET_PATH", f"{stale}/admin.sock")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", f"{stale}/haproxy")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/srv/mine/haproxy.cfg")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    runner._apply_env(runner.ray_env("haproxy", str(run_dir)))
    assert os.environ[runner.RUN_DIR_ENV] == str(run_dir)
    assert os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"] == f"{run_dir}/admin.sock"
    assert os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] == "/srv/mine/haproxy.cfg"
    binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    assert not binary.startswith(stale)
    if binary:
        assert f"{stale}/" not in Path(binary).read_text()
