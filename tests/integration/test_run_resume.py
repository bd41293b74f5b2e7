"""Fault injection: `rayspace run` killed with SIGKILL mid-training, then mid-sweep; `--resume` finishes its work.

One run, three processes: the first is killed once Train has written checkpoints, the
second (``--resume``) once the sweep has trial checkpoints, the third (``--resume``)
finishes. Each resume skips what the run record says is done and matches, Train V2
continues the interrupted training from its latest checkpoint (the checkpoint's
``attempt.resumed_from_epoch``), and Tune restores the interrupted sweep.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

RUN_ID = "resume-test"
EPOCHS = 12


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, s, stat in (line.split(None, 2) for line in out.splitlines())
            if int(s) == sid and not stat.startswith("Z")]


def _kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything its session started (its local Ray), as a node failure would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while (left := _session_pids(proc.pid)) and time.monotonic() < deadline:
        for pid in left:  # anything of that session that left the process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    assert _session_pids(proc.pid) == []


def _start(cmd: list[str], cwd, env, log) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(proc: subprocess.Popen, pattern: str, count: int, log_path, timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(glob.glob(pattern))
        if len(found) >= count:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {count} x {pattern}:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {count} x {pattern} within {timeout}s")


def _registered_epoch(run_dir: str) -> int | None:
    """The epoch of the latest checkpoint Train's controller has registered (what a restart resumes from).

    Workers write checkpoint folders before the controller registers them, so the folders alone overstate it.
    """
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            snap = json.load(f)
    except (OSError, ValueError):  # not written yet, or being replaced
        return None
    latest = snap.get("latest_checkpoint_result") or {}
    return (latest.get("metrics") or {}).get("epoch")


def _record(results) -> dict:
    return json.loads((results / "runs" / f"{RUN_ID}.json").read_text())


def test_a_run_killed_mid_training_and_mid_sweep_is_finished_by_resume(tmp_path):
    lake, results, models = tmp_path / "lake", tmp_path / "results", tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSPACE_CONFIG")}
    env["PYTHONUNBUFFERED"] = "1"
    base = [
        sys.executable, "-m", "workloads.pipeline", "--smoke", "--json", "--until", "promote",
        "--lake", str(lake), "--storage", str(results), "--registry", str(models),
        # Long enough to be caught mid-way: the kill waits for checkpoints, never for a time.
        # FIFO: every trial runs its epochs, so the interrupted one is seen to finish from its checkpoint.
        "--set", f"train.epochs={EPOCHS}", "--set", "tune.num_samples=2", "--set", "tune.max_concurrent_trials=1",
        "--set", "tune.scheduler=fifo",
        "--set", "tune.search_space={lr: {kind: loguniform, low: 0.001, high: 0.01}, epochs: {kind: choice, values: [6]}}",
    ]

    # 1. Killed mid-training, once Train has registered the checkpoint of epoch 2.
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as log:
        proc = _start([*base, "--run-id", RUN_ID], tmp_path, env, log)
        try:
            run_dir = _wait_for(proc, str(results / f"wdbc-mlp-{RUN_ID}-*" / "checkpoint_manager_snapshot.json"), 1,
                                log1)[0].rsplit("/", 1)[0]
            deadline = time.monotonic() + 600
            while (_registered_epoch(run_dir) or 0) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            _kill_run(proc)
    registered = _registered_epoch(run_dir)  # as the kill left it
    assert registered is not None and 2 <= registered < EPOCHS, (registered, open(log1).read()[-3000:])
    rec = _record(results)
    assert rec["status"] == "running" and set(rec["stages"]) == {"ingest", "process"}, rec
    train_runs = glob.glob(str(results / f"wdbc-mlp-{RUN_ID}-*"))
    assert train_runs == [run_dir]

    # 2. Resumed, and killed again mid-sweep, once a trial's trainer has registered the checkpoint of epoch 2.
    log2 = tmp_path / "run2.log"
    with open(log2, "w") as log:
        proc = _start([*base, "--resume", RUN_ID], tmp_path, env, log)
        try:
            trial_dir = _wait_for(proc, str(results / f"wdbc-sweep-{RUN_ID}-*" / "*" / "checkpoint_manager_snapshot.json"),
                                  1, log2)[0].rsplit("/", 1)[0]
            deadline = time.monotonic() + 600
            while (_registered_epoch(trial_dir) or 0) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            _kill_run(proc)
    trial_registered = _registered_epoch(trial_dir)
    assert trial_registered is not None and 2 <= trial_registered < 6, (trial_registered, open(log2).read()[-3000:])
    rec = _record(results)
    assert rec["attempts"] == 2 and rec["skipped"] == ["ingest"], rec
    assert {"train", "evaluate"} <= set(rec["stages"]) and "tune" not in rec["stages"], rec
    trained = rec["stages"]["train"]["outputs"]
    # Train V2 continued the same run from its latest checkpoint: no epoch before it was trained again.
    assert glob.glob(str(results / f"wdbc-mlp-{RUN_ID}-*")) == train_runs
    resumed_from = trained["attempt"]["resumed_from_epoch"]
    assert resumed_from == registered  # epochs 1..registered were not trained again
    assert [h["epoch"] for h in trained["history"]] == list(range(1, EPOCHS + 1))
    assert trained["run_name"] == os.path.basename(train_runs[0])

    # 3. Resumed again: finishes, skipping everything the record has, restoring the sweep.
    proc = subprocess.run([*base, "--resume", RUN_ID], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["run"] == {"id": RUN_ID, "resumed": True, "attempt": 3,
                              "record": str(results / "runs" / f"{RUN_ID}.json")}
    assert summary["skipped"] == ["ingest", "train", "evaluate"]
    assert summary["stages"] == ["process", "tune", "promote"]
    assert summary["sweep"]["restored"] is True and summary["sweep"]["trials"] == 2
    assert len(glob.glob(str(results / f"wdbc-sweep-{RUN_ID}-*"))) == 1  # the same sweep, not a second one
    assert summary["checkpoint"] == trained["checkpoint"]
    assert summary["train_attempt"]["resumed_from_epoch"] == resumed_from
    assert summary["model_version"] == "v1" and (models / "wdbc" / "v1" / "model_card.json").is_file()
    rec = _record(results)
    assert rec["status"] == "finished" and rec["attempts"] == 3
    assert set(rec["stages"]) == {"ingest", "process", "train", "evaluate", "tune", "promote"}
    assert "[train] skipped" in proc.stderr and "[evaluate] skipped" in proc.stderr
    # The interrupted trial's trainer continued from its registered checkpoint and ran to its last epoch.
    assert _registered_epoch(trial_dir) == 6
    latest = json.loads(open(os.path.join(trial_dir, "checkpoint_manager_snapshot.json")).read())
    meta = json.loads(open(os.path.join(trial_dir, latest["latest_checkpoint_result"]["checkpoint_dir_name"],
                                        "model.json")).read())
    assert meta["attempt"]["resumed_from_epoch"] == trial_registered
    trials = json.loads(open(os.path.join(summary["sweep"]["path"], "trials.json")).read())["trials"]
    assert [(t["status"], t["epochs_run"], t["stopped_early"]) for t in trials] == [("TERMINATED", 6, False)] * 2
