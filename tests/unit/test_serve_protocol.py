"""KServe V1 request validation and the HTTP routes, without Ray (in-process ASGI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve.protocol import encode_predictions, max_body_bytes, parse_instances
from serve.testing import make_checkpoint, synthetic_rows
from workloads.config import RegistryConfig
from workloads.exceptions import InvalidRequestError
from workloads.registry import promote
from workloads.schema import FEATURE_NAMES

NAMES = FEATURE_NAMES


def _row(seed: int = 0) -> list[float]:
    return [float(v) for v in synthetic_rows(1, seed)[0][0]]


def _body(obj) -> bytes:
    return json.dumps(obj).encode()


def _error(body: bytes, status: int, match: str, limit: int = 8) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        parse_instances(body, NAMES, limit)
    assert info.value.status_code == status


def test_list_and_object_instances_parse_to_the_same_rows():
    r0, r1 = _row(0), _row(1)
    x = parse_instances(_body({"instances": [r0, dict(zip(NAMES, r1))]}), NAMES, 8)
    assert x.shape == (2, 30) and x.dtype == np.float64
    np.testing.assert_array_equal(x[0], r0)
    np.testing.assert_array_equal(x[1], r1)
    # Object keys in any order map to schema order.
    shuffled = dict(reversed(list(zip(NAMES, r1))))
    np.testing.assert_array_equal(parse_instances(_body({"instances": [shuffled]}), NAMES, 8)[0], r1)
    # Integers are numbers too.
    ints = [1] * 30
    assert parse_instances(_body({"instances": [ints]}), NAMES, 8).tolist() == [[1.0] * 30]


@pytest.mark.parametrize(
    "body, status, match",
    [
        (b"", 400, "body is empty"),
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not UTF-8"),
        (b"[1, 2]", 400, "JSON list: must be an object"),
        (b'{"inputs": []}', 422, "V2 protocol"),
        (b'{"instances": {"a": 1}}', 422, "must be a list"),
        (b'{"instances": []}', 422, "empty"),
        (b'{"instances": [5]}', 422, r"instances\[0\] is a int"),
    ],
)
def test_malformed_bodies(body, status, match):
    _error(body, status, match)


def test_wrong_feature_count_and_names():
    _error(_body({"instances": [_row()[:29]]}), 422, r"instances\[0\] has 29 values: must have 30")
    obj = dict(zip(NAMES, _row()))
    del obj["mean_radius"]
    obj["mean_radiuss"] = 1.0
    _error(_body({"instances": [_row(), obj]}), 422,
           r"instances\[1\] has wrong feature names: missing \['mean_radius'\]; unknown \['mean_radiuss'\]")
    obj2 = dict(zip(NAMES, _row()))
    obj2["extra"] = 1.0
    _error(_body({"instances": [obj2]}), 422, r"unknown \['extra'\]")


def test_non_numeric_values_name_the_place():
    row = _row()
    row[3] = "12.5"
    _error(_body({"instances": [row]}), 422, r'instances\[0\]\[3\]: got "12.5": must be a number')
    obj = dict(zip(NAMES, _row()))
    obj["worst_area"] = None
    _error(_body({"instances": [_row(), obj]}), 422, r"instances\[1\]\.worst_area: got null: must be a number")
    row = _row()
    row[0] = True
    _error(_body({"instances": [row]}), 422, r"instances\[0\]\[0\]: got true: must be a number")
    row = _row()
    row[7] = [1.0]
    _error(_body({"instances": [row]}), 422, r"instances\[0\]\[7\]: got \[1.0\]: must be a number")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_literals_are_rejected(literal):
    text = json.dumps({"instances": [_row()]}).replace(str(_row()[2]), literal, 1)
    assert literal in text
    _error(text.encode(), 422, "finite number")


def test_overflowing_numbers_are_rejected():
    row = json.dumps(_row())
    _error(('{"instances": [' + row + ", " + row.replace(str(_row()[5]), "1e999", 1) + "]}").encode(),
           422, r"instances\[1\]\.mean_compactness: got inf: must be a finite number")
    _error(('{"instances": [' + row.replace(str(_row()[0]), "1" + "0" * 400, 1) + "]}").encode(),
           422, "too large")


def test_batch_and_body_limits():
    _error(_body({"instances": [_row()] * 9}), 413, "has 9 items: must be at most 8")
    _error(b" " * (max_body_bytes(8) + 1), 413, "body is .* bytes: must be at most")
    assert parse_instances(_body({"instances": [_row()] * 8}), NAMES, 8).shape == (8, 30)


def test_encode_predictions():
    body = json.loads(encode_predictions(np.array([0.2, 0.5, 0.91]), model_name="wdbc", model_version="v2"))
    assert body["model_name"] == "wdbc" and body["model_version"] == "v2"
    assert [p["label"] for p in body["predictions"]] == [0, 1, 1]
    assert [p["class"] for p in body["predictions"]] == ["benign", "malignant", "malignant"]
    assert body["predictions"][2]["probability"] == 0.91


# --------------------------------------------------------------- routes (no Ray)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from serve.app import plain_app

    base = tmp_path_factory.mktemp("reg")
    ckpt = make_checkpoint(base / "ckpt", seed=3, fit_steps=30)
    promote(RegistryConfig(path=str(base / "models"), model_name="wdbc"), ckpt, {"test_roc_auc": 0.93})
    with TestClient(plain_app(str(base / "models"), "wdbc", max_instances=16)) as c:
        yield c


def test_routes_answer(client):
    x, _ = synthetic_rows(3, 7)
    r = client.post("/v1/models/wdbc:predict", json={"instances": [list(x[0]), dict(zip(NAMES, x[1])), list(x[2])]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "v1" and len(body["predictions"]) == 3
    assert all(0.0 <= p["probability"] <= 1.0 for p in body["predictions"])
    meta = client.get("/v1/models/wdbc").json()
    assert meta["name"] == "wdbc" and meta["version"] == "v1" and meta["ready"] is True
    assert meta["feature_names"] == list(NAMES)
    assert meta["metrics"]["test"] == {"test_roc_auc": 0.93}
    assert client.get("/v1/models").json() == {"models": ["wdbc"]}
    assert client.get("/healthz").json() == {"status": "ok", "model": "wdbc", "version": "v1"}
    assert "/v1/models/{model}:predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_routes_reject_bad_input_with_4xx(client):
    assert client.post("/v1/models/other:predict", json={"instances": [_row()]}).status_code == 404
    assert client.get("/v1/models/other").status_code == 404
    r = client.post("/v1/models/wdbc:predict", content=b"not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/v1/models/wdbc:predict", json={"instances": [_row()] * 17})
    assert r.status_code == 413 and "at most 16" in r.json()["error"]
    r = client.post("/v1/models/wdbc:predict", json={"instances": [_row()[:3]]})
    assert r.status_code == 422 and "must have 30" in r.json()["error"]


# ------------------------------------------------------------ model holder (no Ray)


class _FakeModel:
    feature_names = NAMES

    def __init__(self, path):
        self.path = str(path)

    def predict_proba(self, x):
        return np.full(len(x), 0.75)


def test_holder_follows_current_and_keeps_serving_on_a_failed_load(tmp_path):
    import asyncio

    from serve.app import ModelHolder, direct_predictor
    from workloads.exceptions import ServeError
    from workloads.registry import ModelRegistry

    cfg = RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc")
    promote(cfg, make_checkpoint(tmp_path / "a", seed=1), {"test_roc_auc": 0.9})
    reg = ModelRegistry(cfg.path)
    loads: list[str] = []

    def loader(path):
        loads.append(path.name)
        if path.name == "v3":
            raise OSError("disk went away")
        return _FakeModel(path)

    holder = ModelHolder(reg, "wdbc", loader=loader)
    with pytest.raises(ServeError, match="not loaded yet"):
        holder.slot
    holder.load()
    assert holder.slot.version == "v1" and holder.refresh() is False and loads == ["v1"]
    promote(cfg, make_checkpoint(tmp_path / "b", seed=2), {"test_roc_auc": 0.95})
    assert holder.refresh() is True and holder.slot.version == "v2" and holder.reloads == 1
    probs, slot, n = asyncio.run(direct_predictor(holder)(np.zeros((2, 30))))
    assert probs.tolist() == [0.75, 0.75] and slot.version == "v2" and n == 1
    promote(cfg, make_checkpoint(tmp_path / "c", seed=3), {"test_roc_auc": 0.99})
    with pytest.raises(OSError, match="disk went away"):
        holder.refresh()
    assert holder.slot.version == "v2"  # the old version keeps answering

