"""KServe V1 request validation and the HTTP routes, without Ray (in-process ASGI)."""

from __future__ import annotations

import json
import re

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
    # A client's names are echoed shortened, so a 50 KB key never comes back whole.
    with pytest.raises(InvalidRequestError) as info:
        parse_instances(_body({"instances": [{"k" * 50_000: 1.0}]}), NAMES, 16)
    assert len(str(info.value)) < 500 and "kkk..." in str(info.value)
    with pytest.raises(InvalidRequestError) as info:
        parse_instances(_body({"x" * 50_000: 1}), NAMES, 16)
    assert len(str(info.value)) < 200 and 'has no "instances"' in str(info.value)


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
    assert client.get("/healthz").json() == {"status": "ok", "model": "wdbc", "version": "v1", "stale": False}
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


def _holder(reg, loader, clock=None):
    """A holder whose metrics are recorded in lists (they stand in for the Ray metrics)."""
    from serve.app import ModelHolder, ServeMetrics

    class Recording(ServeMetrics):
        def __init__(self):
            self.served_as: list[tuple[str, bool]] = []
            self.failed: list[str] = []

        def served(self, version, stale):
            self.served_as.append((version, stale))

        def load_failed(self, version):
            self.failed.append(version)

    metrics = Recording()
    kwargs = {"clock": clock} if clock else {}
    return ModelHolder(reg, "wdbc", loader=loader, metrics=metrics, **kwargs), metrics


def _point(registry_path, text: str) -> None:
    """Rewrite ``current`` behind the registry's back: a version name, or raw text."""
    from pathlib import Path

    body = json.dumps({"version": text}) if re.fullmatch(r"v\d+", text) else text
    (Path(registry_path) / "wdbc" / "current").write_text(body)


def test_holder_follows_current_and_keeps_serving_on_a_failed_load(tmp_path, caplog):
    import asyncio

    from serve.app import direct_predictor
    from workloads.exceptions import ServeError
    from workloads.registry import ModelRegistry

    cfg = RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc")
    promote(cfg, make_checkpoint(tmp_path / "a", seed=1), {"test_roc_auc": 0.9})
    reg = ModelRegistry(cfg.path)
    loads: list[str] = []
    now = [0.0]

    def loader(path):
        loads.append(path.name)
        if path.name == "v3":
            raise OSError("disk went away")
        return _FakeModel(path)

    holder, metrics = _holder(reg, loader, clock=lambda: now[0])
    with pytest.raises(ServeError, match="not loaded yet"):
        holder.slot
    holder.load()
    assert holder.slot.version == "v1" and holder.refresh() is False and loads == ["v1"]
    promote(cfg, make_checkpoint(tmp_path / "b", seed=2), {"test_roc_auc": 0.95})
    assert holder.refresh() is True and holder.slot.version == "v2" and holder.reloads == 1
    slot = holder.slot
    probs, used, n = asyncio.run(direct_predictor(holder)(np.zeros((2, 30)), slot))
    assert probs.tolist() == [0.75, 0.75] and used is slot and n == 1
    assert holder.stale is False and metrics.served_as[-1] == ("v2", False)

    # current moves to a version that cannot load: no exception, v2 keeps answering, staleness is reported.
    promote(cfg, make_checkpoint(tmp_path / "c", seed=3), {"test_roc_auc": 0.99})
    with caplog.at_level("WARNING", logger="serve.app"):
        assert holder.refresh() is False
        assert holder.slot.version == "v2" and holder.current == "v3" and holder.stale is True
        assert "v3" in holder.last_error and "disk went away" in holder.last_error
        assert metrics.failed == ["v3"] and metrics.served_as[-1] == ("v2", True)
        assert holder.health() == {"version": "v2", "current": "v3", "stale": True, "fallback": False,
                                   "load_failures": 1, "last_error": holder.last_error}
        # Retried only after a growing wait, and the persisting failure is logged once.
        holder.refresh()
        assert loads.count("v3") == 1
        now[0] += 1.5
        holder.refresh()
        now[0] += 1.5
        holder.refresh()
        assert loads.count("v3") == 2 and metrics.failed == ["v3", "v3"]  # the second wait is 2 s
        now[0] += 2.0
        holder.refresh()
        assert loads.count("v3") == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "keeping v2 (stale: True)" in warnings[0] and "v3" in warnings[0], warnings

    # Putting current back ends the staleness.
    _point(cfg.path, "v2")
    assert holder.refresh() is False and holder.stale is False and holder.last_error is None
    assert metrics.served_as[-1] == ("v2", False)


def test_an_unreadable_pointer_is_staleness_not_an_error(tmp_path):
    from workloads.registry import ModelRegistry

    cfg = RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc")
    promote(cfg, make_checkpoint(tmp_path / "a", seed=1), {"test_roc_auc": 0.9})
    holder, _ = _holder(ModelRegistry(cfg.path), _FakeModel)
    holder.start()
    assert holder.stale is False
    _point(cfg.path, "garbage")
    assert holder.refresh() is False and holder.slot.version == "v1"
    assert "current version failed" in holder.last_error and "not a valid pointer" in holder.last_error
    assert holder.stale is True  # v1 is no longer known to be current
    _point(cfg.path, "v1")
    assert holder.refresh() is False and holder.last_error is None and holder.stale is False


def test_a_new_holder_falls_back_to_the_newest_version_that_loads(tmp_path, caplog):
    from workloads.exceptions import ServeError
    from workloads.registry import ModelRegistry

    cfg = RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc")
    for i, metric in enumerate((0.90, 0.95, 0.50, 0.99)):  # v3 is rejected by the gate
        promote(cfg, make_checkpoint(tmp_path / f"c{i}", seed=i), {"test_roc_auc": metric})
    reg = ModelRegistry(cfg.path)
    assert reg.current("wdbc") == "v4" and reg.card("wdbc", "v3")["gate"]["passed"] is False
    broken = {"v4"}

    def loader(path):
        if path.name in broken:
            raise ValueError(f"{path.name} is corrupt")
        return _FakeModel(path)

    with caplog.at_level("WARNING", logger="serve.app"):
        holder, metrics = _holder(reg, loader)
        slot = holder.start()
    # v3 loads but the gate rejected it: never served as a fallback.
    assert slot.version == "v2" and holder.fallback is True and holder.stale is True and holder.current == "v4"
    assert metrics.failed == ["v4"] and metrics.served_as[-1] == ("v2", True)
    assert any("serving fallback version v2" in r.getMessage() and "v4 is corrupt" in r.getMessage()
               for r in caplog.records), caplog.text

    # An unreadable pointer at start: the newest loadable, gate-passed version.
    _point(cfg.path, "garbage")
    holder, metrics = _holder(reg, loader)
    assert holder.start().version == "v2" and holder.fallback is True and holder.stale is True
    assert metrics.served_as[-1] == ("v2", True)

    # Nothing loads: that, and only that, is fatal for a new replica.
    broken.update({"v1", "v2", "v3"})
    _point(cfg.path, "v4")
    holder, metrics = _holder(reg, loader)
    with pytest.raises(ServeError, match=r"no version of model 'wdbc' .* could be loaded: v4: ValueError: v4 is corrupt; "
                                         r"v2: ValueError: v2 is corrupt; v1: ValueError: v1 is corrupt"):
        holder.start()
    assert metrics.failed == ["v4", "v2", "v1"]

    # current loads: no fallback.
    broken.clear()
    holder, _ = _holder(reg, loader)
    assert holder.start().version == "v4" and holder.fallback is False and holder.stale is False


def test_health_check_fails_only_without_a_model(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from serve.app import ModelServer
    from workloads.exceptions import ServeError
    from workloads.registry import ModelRegistry

    cfg = RegistryConfig(path=str(tmp_path / "models"), model_name="wdbc")
    promote(cfg, make_checkpoint(tmp_path / "a", seed=1), {"test_roc_auc": 0.9})
    promote(cfg, make_checkpoint(tmp_path / "b", seed=2), {"test_roc_auc": 0.95})
    holder, _ = _holder(ModelRegistry(cfg.path), _FakeModel)
    server = SimpleNamespace(holder=holder, _poller=None)
    with pytest.raises(ServeError, match="not loaded yet"):
        asyncio.run(ModelServer.check_health(server))
    holder.load("v1")
    for _ in range(5):  # current (v2) "cannot be followed" many times over: still healthy
        holder._note("loading wdbc v2 failed: simulated")
    holder.current = "v2"
    assert holder.stale is True
    asyncio.run(ModelServer.check_health(server))


class _OrderedModel:
    """A fake model whose answer is its first feature, in its own schema order, over 1000."""

    def __init__(self, names):
        self.feature_names = tuple(names)

    def predict_proba(self, x):
        return np.asarray(x)[:, 0] / 1000.0


def _slot(version, names):
    from serve.app import ModelSlot

    return ModelSlot.of(version, _OrderedModel(names), {})


def test_a_batch_answers_each_request_with_the_model_whose_schema_parsed_it():
    from serve.app import forward_batch

    old, new = _slot("v1", NAMES), _slot("v2", tuple(reversed(NAMES)))
    instance = {n: float(i + 1) for i, n in enumerate(NAMES)}  # mean_radius=1 ... worst_fractal_dimension=30
    body = _body({"instances": [instance]})
    x_old = parse_instances(body, old.feature_names, 8)
    x_new = parse_instances(body, new.feature_names, 8)
    out = forward_batch([(x_old, old), (x_new, new), (x_old, old)])
    assert [(s.version, p.tolist(), n) for p, s, n in out] == [
        ("v1", [0.001], 3), ("v2", [0.03], 3), ("v1", [0.001], 3)]


def test_a_swap_between_parsing_and_the_forward_pass_keeps_schema_and_model_together():
    from fastapi.testclient import TestClient

    from serve.app import ModelHolder, create_fastapi_app, forward_batch

    old, new = _slot("v1", NAMES), _slot("v2", tuple(reversed(NAMES)))
    holder = ModelHolder(None, "wdbc")
    holder._slot = old

    async def swapping_predictor(x, slot):
        holder._slot = new  # the poller swaps while the request waits for its batch
        return forward_batch([(x, slot)])[0]

    app = create_fastapi_app(holder, swapping_predictor, max_instances=8)
    with TestClient(app) as c:
        instance = {n: float(i + 1) for i, n in enumerate(NAMES)}
        r = c.post("/v1/models/wdbc:predict", json={"instances": [instance]})
    assert r.status_code == 200, r.text
    # Parsed with v1's order (mean_radius first) and answered by v1: 1/1000, labelled v1.
    assert r.json()["model_version"] == "v1" and r.json()["predictions"][0]["probability"] == 0.001
    assert holder.slot is new


# ----------------------------------------------------------- hostile bodies (no Ray)


def _deep(depth: int) -> bytes:
    return b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"


_ROW = json.dumps([1.0] * 30)
_HOSTILE = [
    # depth (the client's limit is 16 instances, 66 KB; these stay under it)
    ("deep-array", b"[" * 60_000, None, 400, "nested too deeply"),
    ("deep-object", b'{"a":' * 12_000, None, 400, "nested too deeply"),
    ("deep-instances", _deep(25_000), None, 400, "nested too deeply"),
    ("deep-but-parsable", _deep(300), None, 422, r"instances\[0\] has 1 values"),
    # size
    ("too-many-bytes", b" " * (max_body_bytes(16) + 1), None, 413, "must be at most"),
    # encodings
    ("utf16", json.dumps({"instances": [[1.0] * 30]}).encode("utf-16"), None, 400, "not UTF-8"),
    ("latin1", '{"instances": [["caf\u00e9"]]}'.encode("latin-1"), None, 400, "not UTF-8"),
    ("utf8-bom", b"\xef\xbb\xbf" + json.dumps({"instances": [[1.0] * 30]}).encode(), None, 400, "not valid JSON"),
    ("lone-surrogate-key", b'{"instances": [{"\\ud800": 1}]}', None, 422, "wrong feature names"),
    ("nul-bytes", b"\x00" * 64, None, 400, "not valid JSON"),
    # non-object top level
    ("top-list", b"[]", None, 400, "JSON list: must be an object"),
    ("top-string", b'"instances"', None, 400, "JSON str: must be an object"),
    ("top-number", b"12", None, 400, "JSON int: must be an object"),
    ("top-null", b"null", None, 400, "JSON NoneType: must be an object"),
    ("top-true", b"true", None, 400, "JSON bool: must be an object"),
    # types
    ("instances-null", b'{"instances": null}', None, 422, "must be a list"),
    ("instances-string", b'{"instances": "1,2,3"}', None, 422, "must be a list"),
    ("instance-string", b'{"instances": ["1,2,3"]}', None, 422, r"instances\[0\] is a str"),
    ("instance-null", b'{"instances": [null]}', None, 422, r"instances\[0\] is a NoneType"),
    ("value-object", ('{"instances": [[{"a": 1}' + ", 1.0" * 29 + "]]}").encode(), None, 422, "must be a number"),
    ("value-bool", ('{"instances": [[false' + ", 1.0" * 29 + "]]}").encode(), None, 422, "got false: must be a number"),
    # NaN / Infinity / huge numbers
    ("nan", ('{"instances": [[NaN' + ", 1.0" * 29 + "]]}").encode(), None, 422, "finite number"),
    ("minus-infinity", ('{"instances": [[-Infinity' + ", 1.0" * 29 + "]]}").encode(), None, 422, "finite number"),
    ("1e999", ('{"instances": [[1e999' + ", 1.0" * 29 + "]]}").encode(), None, 422, "finite number"),
    ("400-digit-int", ('{"instances": [[1' + "0" * 400 + ", 1.0" * 29 + "]]}").encode(), None, 422, "too large"),
    ("5000-digit-int", ('{"instances": [[1' + "0" * 5000 + ", 1.0" * 29 + "]]}").encode(), None, 422,
     "cannot be read"),
    # content types
    ("text-plain", b'{"instances": [' + _ROW.encode() + b"]}", "text/plain", 415, "must be application/json"),
    ("multipart", b"--x\r\n", "multipart/form-data; boundary=x", 415, "must be application/json"),
    ("json-utf16", b'{"instances": [' + _ROW.encode() + b"]}", "application/json; charset=utf-16", 415,
     "charset must be utf-8"),
]


@pytest.mark.parametrize("body, content_type, status, match", [c[1:] for c in _HOSTILE], ids=[c[0] for c in _HOSTILE])
def test_hostile_bodies_get_a_4xx_with_a_reason(client, body, content_type, status, match):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/models/wdbc:predict", content=body, headers=headers)
    assert r.status_code == status, r.text[:300]
    assert re.search(match, r.json()["error"]), r.json()


def test_json_content_types_and_no_content_type_are_accepted(client):
    body = _body({"instances": [_row()]})
    for ctype in (None, "application/json", "application/json; charset=UTF-8", "application/vnd.kserve+json",
                  "application/x-www-form-urlencoded"):
        r = client.post("/v1/models/wdbc:predict", content=body, headers={"content-type": ctype} if ctype else {})
        assert r.status_code == 200, (ctype, r.text)


def test_a_streamed_body_over_the_limit_is_cut_off_with_413(client):
    sent = []

    def chunks():
        for _ in range(100):  # 100 x 64 KiB, far over the 16-instance limit; no Content-Length
            sent.append(1)
            yield b" " * 65536

    r = client.post("/v1/models/wdbc:predict", content=chunks())
    assert r.status_code == 413 and "must be at most" in r.json()["error"]


def test_values_the_model_cannot_score_get_422_not_nan(client):
    # Finite inputs, but they overflow the model's float32 standardization: today that answered NaN.
    r = client.post("/v1/models/wdbc:predict", json={"instances": [_row(), [1e200] * 30]})
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("instances[1]: the model gives no finite probability")


def test_check_outputs_names_the_instance():
    from serve.protocol import check_outputs

    check_outputs(np.array([0.1, 1.0]))
    with pytest.raises(InvalidRequestError, match=r"instances\[1\]: the model gives no finite probability") as info:
        check_outputs(np.array([0.1, np.nan, 0.2]))
    assert info.value.status_code == 422


def test_fuzzed_requests_from_the_openapi_never_get_a_5xx(client):
    """Schemathesis, from the app's own OpenAPI: valid and invalid requests on every route; no 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/models/{model}:predict", "GET /healthz"}
    cases = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    statuses: dict[int, int] = {}

    @settings(max_examples=300, deadline=2000, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def no_server_error(case):
        response = case.call()
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:300])

    no_server_error()
    # The fuzzer reached both the model (200) and the validation (4xx) of the predict route.
    assert statuses.get(200, 0) > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0, statuses
