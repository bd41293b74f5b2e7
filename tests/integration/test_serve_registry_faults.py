"""Serve survives its registry: a version that cannot load made ``current`` behind Serve's back.

The experiment, from outside, over real HTTP: serve a promoted v1, then write a
corrupt v2 (its weights do not match the hashes in ``model.json``) and point
``current`` at it by rewriting the pointer file, as a bad promote or a hand edit
would. Clients keep sending predictions and health checks for a bounded window.
Then the replica is killed, so a fresh replica has to start while ``current``
still names the broken version. Every request must be answered 200 by v1, and the
staleness must be visible (metadata, and Ray metrics scraped from the node's
metrics agent).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from serve import runner
from serve.testing import make_checkpoint, synthetic_rows
from workloads.config import load_config
from workloads.registry import ModelRegistry, promote

pytestmark = pytest.mark.integration

#: How long clients hammer the endpoint after the bad switch. Serve's health checks run
#: every 5 s and a replica is replaced after 3 failed ones, so this covers a full cycle.
WINDOW_S = 40.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("serve-faults")
    cfg = load_config(None, {
        "registry.path": str(base / "models"),
        "serve.port": _free_port(),
        "serve.max_replicas": 1,
        "serve.reload_poll_s": 0.5,
    })
    promote(cfg.registry, make_checkpoint(base / "ckpt", seed=0, fit_steps=20), {"test_roc_auc": 0.9})
    url = runner.start(cfg)
    try:
        yield {"url": url, "cfg": cfg, "root": Path(cfg.registry.path) / cfg.registry.model_name}
    finally:
        runner.shutdown()


def _write_pointer(model_dir: Path, version: str) -> None:
    """Switch ``current`` the way any writer could: a new pointer file renamed over the old one."""
    tmp = model_dir / ".tmp-current-test"
    tmp.write_text(json.dumps({"version": version, "switched_at": "test"}) + "\n")
    os.replace(tmp, model_dir / "current")


def _write_corrupt_version(model_dir: Path, good: str, bad: str) -> None:
    """A complete-looking version (it has a card) whose weights fail their hash check."""
    staging = model_dir / f".tmp-{bad}-test"
    shutil.copytree(model_dir / good, staging)
    (staging / "model.pt").write_bytes(b"not a torch file")
    card = json.loads((staging / "model_card.json").read_text())
    card["version"] = bad
    (staging / "model_card.json").write_text(json.dumps(card))
    os.rename(staging, model_dir / bad)


def _kill_replica(ray) -> str:
    """Kill the one ModelServer replica actor, so Serve must start a new one."""
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::rayspace#ModelServer")]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    return names[0]["name"]


def _scrape(ray) -> str:
    port = ray._private.worker.global_worker.node.metrics_export_port
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _logged(logs: Path, line: str) -> bool:
    for f in logs.rglob("*"):
        try:
            if f.is_file() and line in f.read_text(errors="replace"):
                return True
        except OSError:  # a log rotated away while we read
            continue
    return False


def _metric(text: str, name: str) -> list[float]:
    """Values of every sample of a metric whose name ends with ``name`` (Ray may prefix it)."""
    pattern = re.compile(rf"^\w*{name}(?:_total)?\{{[^}}]*\}} ([0-9.e+-]+)$", re.M)
    return [float(v) for v in pattern.findall(text)]


def test_bad_current_keeps_the_last_good_version_answering(served, ray_local):
    url, root = served["url"], served["root"]
    body = json.dumps({"instances": synthetic_rows(2, 1)[0].tolist()}).encode()
    assert runner.predict(url, "wdbc", synthetic_rows(1, 0)[0].tolist())["model_version"] == "v1"

    _write_corrupt_version(root, "v1", "v2")
    _write_pointer(root, "v2")
    assert ModelRegistry(served["cfg"].registry.path).current("wdbc") == "v2"

    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def client(kind: str) -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    if kind == "predict":
                        r = c.post(f"{url}/v1/models/wdbc:predict", content=body)
                        got = r.json()["model_version"] if r.status_code == 200 else f"ERR {r.status_code}"
                    else:
                        r = c.get(f"{url}/healthz")
                        got = f"health {r.json()['version']}" if r.status_code == 200 else f"ERR health {r.status_code}"
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    got = f"ERR {kind} {type(e).__name__}"
                outcomes.append((time.monotonic(), got))
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(k,)) for k in ("predict", "predict", "health")]
    start = time.monotonic()
    for t in threads:
        t.start()
    try:
        stop.wait(WINDOW_S)
    finally:
        stop.set()
        for t in threads:
            t.join()
    counts = Counter(v for _, v in outcomes)
    errors = [(round(t - start, 1), v) for t, v in outcomes if v.startswith("ERR")]
    print(f"after the bad switch, {WINDOW_S:.0f}s: {dict(counts)}; first errors {errors[:3]}")
    assert errors == [], f"{len(errors)} of {len(outcomes)} requests failed: {errors[:5]} ... {counts}"
    assert set(counts) == {"v1", "health v1"}, counts

    meta = httpx.get(f"{url}/v1/models/wdbc", timeout=10).json()
    assert meta["version"] == "v1" and meta["current"] == "v2" and meta["stale"] is True, meta
    assert "v2" in meta["last_error"], meta

    # A new replica starts while current still names the broken version: it falls back to v1.
    killed = _kill_replica(ray_local)
    health = runner.wait_until_ready(url, timeout_s=120)
    assert health["version"] == "v1" and health["stale"] is True, health
    meta = httpx.get(f"{url}/v1/models/wdbc", timeout=10).json()
    assert (meta["version"], meta["current"], meta["stale"]) == ("v1", "v2", True), meta
    assert meta["fallback"] is True and meta["load_failures"] >= 1, meta
    assert killed not in [a["name"] for a in ray_local.util.list_named_actors(all_namespaces=True)]
    r = httpx.post(f"{url}/v1/models/wdbc:predict", content=body, timeout=10)
    assert r.status_code == 200 and r.json()["model_version"] == "v1", r.text

    # The new replica said so in its log (Ray writes replica output under the session's logs).
    logs = Path(ray_local._private.worker.global_worker.node.get_logs_dir_path())
    deadline = time.monotonic() + 30
    while not _logged(logs, "serving fallback version v1 because v2: CheckpointError"):
        assert time.monotonic() < deadline, f"no fallback line under {logs}"
        time.sleep(1)

    # Staleness and failed loads are Ray metrics too (the metrics agent exports them within seconds).
    deadline = time.monotonic() + 60
    while True:
        text = _scrape(ray_local)
        stale, failures, served_version = (_metric(text, n) for n in (
            "rayspace_serve_stale", "rayspace_serve_load_failures", "rayspace_serve_model_version"))
        if 1.0 in stale and failures and max(failures) >= 1 and 1.0 in served_version:
            break
        assert time.monotonic() < deadline, (stale, failures, served_version)
        time.sleep(1)

    # A pointer that cannot be read (a storage hiccup, a truncated write) is staleness too, not an error.
    (root / "current").write_text('{"version": ')
    deadline = time.monotonic() + 30
    while "not a valid pointer" not in (httpx.get(f"{url}/v1/models/wdbc", timeout=10).json()["last_error"] or ""):
        assert time.monotonic() < deadline, "the replica never noticed the unreadable pointer"
        time.sleep(0.25)
    for _ in range(20):
        r = httpx.post(f"{url}/v1/models/wdbc:predict", content=body, timeout=10)
        assert r.status_code == 200 and r.json()["model_version"] == "v1", r.text
        health = httpx.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["stale"] is True, health.text

    # Fixing the pointer ends the staleness without a restart.
    _write_pointer(root, "v1")
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/v1/models/wdbc", timeout=10).json()["stale"]:
        assert time.monotonic() < deadline, "still stale after current was put back"
        time.sleep(0.25)
    assert httpx.get(f"{url}/healthz", timeout=10).json()["version"] == "v1"
