"""The Serve app on the session's real local Ray, over real HTTP on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from serve import runner
from serve.testing import make_checkpoint, synthetic_rows
from workloads.config import load_config
from workloads.model import load_checkpoint
from workloads.registry import ModelRegistry, promote
from workloads.schema import FEATURE_NAMES

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    ckpts = [make_checkpoint(base / f"ckpt{i}", seed=i, fit_steps=40) for i in range(2)]
    cfg = load_config(None, {
        "registry.path": str(base / "models"),
        "serve.port": _free_port(),
        "serve.max_replicas": 1,
        "serve.max_instances": 64,
        # A wide batching window makes concurrent requests meet in one batch even on a busy 2-core box.
        "serve.max_batch_size": 16,
        "serve.batch_wait_timeout_s": 0.05,
        "serve.reload_poll_s": 0.5,
    })
    promote(cfg.registry, ckpts[0], {"test_roc_auc": 0.90, "test_accuracy": 0.88})
    url = runner.start(cfg)
    try:
        yield {"url": url, "cfg": cfg, "ckpts": ckpts}
    finally:
        runner.shutdown()


def _rows(n: int, seed: int = 0) -> list[list[float]]:
    return synthetic_rows(n, seed)[0].tolist()


def test_predict_with_lists_and_objects(served):
    url = served["url"]
    rows = _rows(3)
    instances = [rows[0], dict(zip(FEATURE_NAMES, rows[1])), rows[2]]
    r = httpx.post(f"{url}/v1/models/wdbc:predict", json={"instances": instances}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "wdbc" and body["model_version"] == "v1"
    assert len(body["predictions"]) == 3
    for p in body["predictions"]:
        assert p["label"] in (0, 1) and p["class"] in ("benign", "malignant") and 0 <= p["probability"] <= 1
    # Same rows, same answers, whichever form they were sent in.
    again = runner.predict(url, "wdbc", [dict(zip(FEATURE_NAMES, rows[0])), rows[1], rows[2]])
    assert [p["probability"] for p in again["predictions"]] == [p["probability"] for p in body["predictions"]]


def test_metadata_list_health_and_docs(served):
    url = served["url"]
    meta = httpx.get(f"{url}/v1/models/wdbc", timeout=30).json()
    assert meta["name"] == "wdbc" and meta["ready"] is True and meta["version"] == "v1"
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["metrics"]["test"]["test_roc_auc"] == 0.90
    assert meta["metrics"]["validation"]["val_roc_auc"] == 0.9
    assert httpx.get(f"{url}/v1/models", timeout=30).json() == {"models": ["wdbc"]}
    assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/v1/models/{model}:predict", "/v1/models/{model}", "/v1/models", "/healthz"} <= set(spec["paths"])
    assert httpx.get(f"{url}/docs", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "content, status, fragment",
    [
        (b"this is not json", 400, "not valid JSON"),
        (json.dumps({"instances": []}).encode(), 422, "empty"),
        (json.dumps({"instances": [[1.0] * 29]}).encode(), 422, "has 29 values: must have 30"),
        (json.dumps({"instances": [{"mean_radius": 1.0}]}).encode(), 422, "wrong feature names"),
        (json.dumps({"instances": [["x"] * 30]}).encode(), 422, "must be a number"),
        (b'{"instances": [[NaN' + b", 1.0" * 29 + b"]]}", 422, "finite number"),
        (b'{"instances": [[1e999' + b", 1.0" * 29 + b"]]}", 422, "finite number"),
        (json.dumps({"instances": [[1.0] * 30] * 65}).encode(), 413, "at most 64"),
    ],
    ids=["not-json", "empty", "count", "names", "non-numeric", "nan", "inf", "over-limit"],
)
def test_bad_input_gets_4xx_with_a_reason(served, content, status, fragment):
    r = httpx.post(f"{served['url']}/v1/models/wdbc:predict", content=content, timeout=30)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_unknown_model_is_404(served):
    r = httpx.post(f"{served['url']}/v1/models/nope:predict", json={"instances": [[1.0] * 30]}, timeout=30)
    assert r.status_code == 404 and "not served here" in r.json()["error"]
    assert httpx.get(f"{served['url']}/v1/models/nope", timeout=30).status_code == 404


def test_concurrent_requests_are_batched(served):
    url = served["url"]
    before = httpx.get(f"{url}/v1/models/wdbc", timeout=30).json()["batching"]

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            reqs = [client.post(f"{url}/v1/models/wdbc:predict", json={"instances": _rows(1, i)}) for i in range(48)]
            return await asyncio.gather(*reqs)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 48
    # Each request got its own row's answer back out of the shared batch.
    model = load_checkpoint(ModelRegistry(served["cfg"].registry.path).local_path("wdbc", "v1"))
    expected = model.predict_proba(np.array([_rows(1, i)[0] for i in range(48)]))
    got = [r.json()["predictions"][0]["probability"] for r in responses]
    np.testing.assert_allclose(got, expected, atol=2e-6)
    sizes = [int(r.headers["x-rayspace-batch-size"]) for r in responses]
    assert max(sizes) > 1, f"no request shared a batch: {sizes}"
    after = httpx.get(f"{url}/v1/models/wdbc", timeout=30).json()["batching"]
    assert after["requests"] - before["requests"] == 48
    # Fewer forward passes than requests: that is what batching is for.
    assert after["batches"] - before["batches"] < 48
    assert after["largest"] > 1


def test_version_switch_under_load_drops_nothing(served):
    """Promote v2 while clients keep sending: every request succeeds and the answers move to v2."""
    url, cfg = served["url"], served["cfg"]
    stop = threading.Event()
    outcomes: list[tuple[float, str]] = []  # (time, version) or (time, "ERR ...")
    lock = threading.Lock()

    def client_loop(seed: int) -> None:
        body = json.dumps({"instances": _rows(2, seed)}).encode()
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{url}/v1/models/wdbc:predict", content=body)
                    got = r.json()["model_version"] if r.status_code == 200 else f"ERR {r.status_code} {r.text[:100]}"
                except httpx.HTTPError as e:
                    got = f"ERR {type(e).__name__}: {e}"
                with lock:
                    outcomes.append((time.monotonic(), got))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        res = promote(cfg.registry, served["ckpts"][1], {"test_roc_auc": 0.95, "test_accuracy": 0.9})
        assert res.promoted and res.version == "v2"
        switched_at = time.monotonic()
        deadline = switched_at + 60
        while time.monotonic() < deadline:
            with lock:
                if any(v == "v2" for _, v in outcomes):
                    break
            time.sleep(0.1)
        time.sleep(1.0)  # keep the load on after the switch too
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [v for _, v in outcomes if v.startswith("ERR")]
    assert errors == [], errors[:5]
    counts = Counter(v for _, v in outcomes)
    assert counts["v1"] > 0 and counts["v2"] > 0, counts
    # Once v2 answered, v1 never answered again (one replica swaps once).
    first_v2 = min(t for t, v in outcomes if v == "v2")
    assert all(v == "v2" for t, v in outcomes if t > first_v2 + 0.5)
    meta = httpx.get(f"{url}/v1/models/wdbc", timeout=30).json()
    assert meta["version"] == "v2" and meta["reloads"] >= 1
    assert ModelRegistry(cfg.registry.path).current("wdbc") == "v2"
