"""The Ray Serve application: the registry's ``current`` model behind the KServe V1 protocol.

One deployment, ``ModelServer``, is the FastAPI ingress and holds the model
itself, so a request costs one hop from the HTTP ingress to a replica and nothing
more (no second deployment behind a handle). Inside the replica, concurrent
predict requests are grouped by ``@serve.batch`` and answered with one forward
pass. Routes:

* ``POST /v1/models/<name>:predict`` -- ``{"instances": [...]}`` -> ``{"predictions": [...]}``;
* ``GET /v1/models/<name>`` -- readiness and metadata (version, feature names, metrics);
* ``GET /v1/models`` -- ``{"models": [<name>]}``;
* ``GET /healthz`` -- liveness with the served version;
* ``/docs`` and ``/openapi.json`` from FastAPI.

Reload: every replica polls the registry's ``current`` pointer every
``reload_poll_s`` seconds. When it moves, the new version is loaded in a worker
thread while the old one keeps answering, then swapped in with one reference
assignment. A version's model and its feature names travel as one immutable
:class:`ModelSlot`: a request is parsed with the slot it captured and answered by
that slot's model, so no request is dropped, answered by a half-loaded model, or
parsed with one version's schema and run through another's weights.

A bad registry never takes Serve down. If ``current`` cannot be read, or names a
version that cannot be loaded, a running replica keeps what it serves, and a new
replica serves the newest version that loads (never one the gate rejected); both
log it once and report it as Ray metrics (``rayspace_serve_model_version``,
``rayspace_serve_stale``, ``rayspace_serve_load_failures``) and as ``stale`` on
``/healthz`` and the metadata route. The health check fails only when no model is
loaded.

``build_app(args)`` is the import path named in ``serve/config.yaml``
(``serve.app:build_app``); :func:`create_fastapi_app` is also served by plain
uvicorn (:func:`plain_app`) as the benchmark's baseline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from serve.protocol import (
    ERROR_SCHEMA,
    PREDICT_REQUEST_SCHEMA,
    check_body_size,
    check_content_type,
    check_outputs,
    encode_predictions,
    error_body,
    max_body_bytes,
    parse_instances,
)
from workloads.exceptions import ConfigError, InvalidRequestError, ModelNotFoundError, ServeError
from workloads.model import LoadedModel, load_checkpoint
from workloads.registry import ModelRegistry

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "ModelServer"
APP_NAME = "rayspace"
JSON = "application/json"
#: Serve-config fields that ``build_app`` accepts besides ``registry`` and ``model_name``.
APP_ARG_FIELDS = (
    "min_replicas", "max_replicas", "target_ongoing_requests", "max_ongoing_requests", "replica_cpus",
    "max_replicas_per_node", "max_batch_size", "batch_wait_timeout_s", "max_instances", "reload_poll_s",
)
#: First wait before a version that failed to load is tried again (it doubles per failure).
RETRY_FIRST_S = 1.0


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelSlot:
    """One loaded version, schema and model as one unit.

    A request is parsed with a slot's ``feature_names`` and answered by the same
    slot's ``model``: the route captures the slot once and hands it to the batch,
    so a swap between parsing and the forward pass cannot pair one version's
    schema with another version's weights.
    """

    version: str
    model: LoadedModel = field(repr=False)
    card: dict[str, Any] = field(repr=False)
    feature_names: tuple[str, ...]

    @classmethod
    def of(cls, version: str, model: LoadedModel, card: dict[str, Any]) -> "ModelSlot":
        return cls(version=version, model=model, card=card, feature_names=tuple(model.feature_names))


class ServeMetrics:
    """What a replica reports about the version it serves (no-op here; see :class:`RayServeMetrics`)."""

    def served(self, version: str, stale: bool) -> None:
        """The served version and whether it differs from ``current``."""

    def load_failed(self, version: str) -> None:
        """A version could not be loaded (one call per failed attempt)."""


class RayServeMetrics(ServeMetrics):
    """The same facts as Ray metrics (``ray.util.metrics``), exported by each node's metrics agent.

    * ``rayspace_serve_model_version`` (gauge): the served version's number (``v3`` -> 3);
    * ``rayspace_serve_stale`` (gauge): 1 while the served version is not ``current``;
    * ``rayspace_serve_load_failures`` (counter, tag ``version``): failed loads.
    """

    def __init__(self, model_name: str):
        from ray.util import metrics

        tags = {"model": model_name}
        self._version = metrics.Gauge(
            "rayspace_serve_model_version", description="Number of the model version this replica serves.",
            tag_keys=("model",))
        self._stale = metrics.Gauge(
            "rayspace_serve_stale", description="1 while this replica serves a version other than current.",
            tag_keys=("model",))
        self._failures = metrics.Counter(
            "rayspace_serve_load_failures", description="Model versions that failed to load in this replica.",
            tag_keys=("model", "version"))
        for m in (self._version, self._stale, self._failures):
            m.set_default_tags(tags)

    def served(self, version: str, stale: bool) -> None:
        self._version.set(_version_number(version))
        self._stale.set(1 if stale else 0)

    def load_failed(self, version: str) -> None:
        self._failures.inc(1, tags={"version": version})


def _version_number(version: str) -> int:
    digits = version.lstrip("v")
    return int(digits) if digits.isdigit() else 0


def _describe_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class ModelHolder:
    """Holds the served version of one model and moves it when ``current`` moves.

    The served version only ever changes to one that loaded. When ``current``
    cannot be read or names a version that cannot be loaded, the holder keeps the
    version it has (and says so: a log line, :class:`ServeMetrics`, and the
    :attr:`stale`/:attr:`last_error` fields the routes show); a holder with nothing
    loaded yet falls back to the newest version that loads (:meth:`start`).

    Args:
        registry: Where versions live.
        name: Model name.
        loader: Loads a version directory (``workloads.model.load_checkpoint``; tests pass fakes).
        metrics: Where the served version, staleness and failed loads are reported.
        retry_max_s: Longest wait before loading a version that failed again (the wait doubles
            from the first retry up to this; a different ``current`` is tried at once).
    """

    def __init__(self, registry: ModelRegistry, name: str, loader: Callable[[Any], LoadedModel] = load_checkpoint,
                 *, metrics: ServeMetrics | None = None, retry_max_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.name = name
        self._loader = loader
        self._metrics = metrics or ServeMetrics()
        self._retry_max_s = retry_max_s
        self._clock = clock
        self._slot: ModelSlot | None = None
        self.reloads = 0
        #: What ``current`` named at the last successful read of the pointer.
        self.current: str | None = None
        self._pointer_read = False  # whether the last read of ``current`` succeeded
        #: The last failure to read ``current`` or to load a version (``None`` once one succeeds).
        self.last_error: str | None = None
        #: Failed load attempts since this holder was made.
        self.load_failures = 0
        #: Whether the served version was chosen because ``current`` could not be loaded at start.
        self.fallback = False
        # version -> (failed attempts in a row, clock time before which it is not tried again)
        self._failed: dict[str, tuple[int, float]] = {}
        self._logged: str | None = None  # the last failure logged, so a persisting one is logged once

    @property
    def slot(self) -> ModelSlot:
        if self._slot is None:
            raise ServeError(f"model {self.name!r} is not loaded yet")
        return self._slot

    @property
    def stale(self) -> bool:
        """Whether a version is served that is not known to be ``current`` (it names another, or cannot be read)."""
        return self._slot is not None and (not self._pointer_read or self.current != self._slot.version)

    def _load_version(self, version: str) -> ModelSlot:
        """Load one version (blocking) without serving it; failures are counted, reported and re-raised."""
        try:
            mv = self.registry.get(self.name, version)
            model = self._loader(self.registry.local_path(self.name, mv.version))
            slot = ModelSlot.of(mv.version, model, mv.card)
        except Exception as e:
            # Any exception: a broken version can fail in torch, pickle, JSON or numpy, not only in our checks.
            self.load_failures += 1
            count = self._failed.get(version, (0, 0.0))[0] + 1
            wait = min(self._retry_max_s, RETRY_FIRST_S * 2 ** (count - 1))
            self._failed[version] = (count, self._clock() + wait)
            self.last_error = f"loading {self.name} {version} failed: {_describe_error(e)}"
            self._metrics.load_failed(version)
            raise
        self._failed.pop(version, None)
        return slot

    def _serve(self, slot: ModelSlot) -> None:
        previous = self._slot.version if self._slot else None
        # One reference assignment: readers see the old slot or the new one, never a mix.
        self._slot = slot
        if previous is not None and previous != slot.version:
            self.reloads += 1
            logger.info("model %s moved from %s to %s", self.name, previous, slot.version)
        self._report()

    def _report(self) -> None:
        if self._slot is not None:
            self._metrics.served(self._slot.version, self.stale)

    def load(self, version: str = "current") -> ModelSlot:
        """Load a version (blocking) and make it the served one; raises if it cannot be loaded."""
        if version == "current":
            version = self._read_current()
            if version is None:
                raise ModelNotFoundError(f"model {self.name!r} in {self.registry.root} has no current version")
        slot = self._load_version(version)
        self.fallback = False
        self._serve(slot)
        self.last_error = None
        return slot

    def _read_current(self) -> str | None:
        try:
            target = self.registry.current(self.name)
        except BaseException:
            self._pointer_read = False
            raise
        self.current, self._pointer_read = target, True
        return target

    def start(self) -> ModelSlot:
        """Load ``current``, or else the newest version that loads (blocking); for a new replica.

        Versions the promotion gate rejected are never fallbacks: only those whose card
        records a passed gate (or no gate at all, e.g. written before the gate existed).

        Raises:
            ServeError: No version at all could be loaded (the message lists each failure).
        """
        failures: list[str] = []
        try:
            target = self._read_current()
        except Exception as e:  # a storage hiccup or a bad pointer: try the versions themselves
            target = None
            failures.append(f"current: {_describe_error(e)}")
            self.last_error = f"reading {self.name}'s current version failed: {_describe_error(e)}"
        if target is not None:
            try:
                return self.load(target)
            except Exception as e:
                failures.append(f"{target}: {_describe_error(e)}")
        try:
            candidates = [v for v in reversed(self.registry.versions(self.name)) if v != target]
        except Exception as e:
            candidates = []
            failures.append(f"listing versions: {_describe_error(e)}")
        for version in candidates:
            try:
                if not _gate_allows_fallback(self.registry.get(self.name, version).card):
                    continue
                slot = self._load_version(version)
            except Exception as e:
                failures.append(f"{version}: {_describe_error(e)}")
                continue
            self._serve(slot)
            self.fallback = True
            self.last_error = f"current {target or '(unreadable)'} could not be loaded; serving {version}: {failures[0]}"
            logger.warning("model %s: serving fallback version %s because %s", self.name, version,
                           "; ".join(failures))
            return slot
        raise ServeError(f"no version of model {self.name!r} in {self.registry.root} could be loaded: "
                         + ("; ".join(failures) or "the registry has no versions"))

    def refresh(self) -> bool:
        """Follow ``current`` if it moved (blocking); returns whether the served version changed.

        Never raises for a bad registry: a pointer that cannot be read, or a version
        that cannot be loaded, keeps the served version, is logged once per distinct
        error, and is retried with a growing wait (a different ``current`` at once).
        """
        try:
            target = self._read_current()
        except Exception as e:
            self._note(f"reading {self.name}'s current version failed: {_describe_error(e)}")
            return False
        if target is None or (self._slot is not None and target == self._slot.version):
            if self._logged is not None and target is not None:
                logger.info("model %s: current is %s, the served version, again", self.name, target)
            self.last_error = self._logged = None
            self._failed.clear()
            self._report()
            return False
        attempts, not_before = self._failed.get(target, (0, 0.0))
        if attempts and self._clock() < not_before:
            self._report()
            return False
        try:
            self.load(target)
        except Exception:
            self._note(self.last_error or f"loading {self.name} {target} failed")
            return False
        self._logged = None
        return True

    def _note(self, error: str) -> None:
        """Record a failure to follow ``current``; the served version stays. Logged once per distinct error."""
        if error != self._logged:
            served = self._slot.version if self._slot else "nothing"
            logger.warning("model %s: keeping %s (stale: %s): %s", self.name, served, self.stale, error)
            self._logged = error
        self.last_error = error
        self._report()

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` and the metadata route say about the served version."""
        slot = self.slot
        return {"version": slot.version, "current": self.current, "stale": self.stale,
                "fallback": self.fallback, "load_failures": self.load_failures, "last_error": self.last_error}


def _gate_allows_fallback(card: Mapping[str, Any]) -> bool:
    gate = card.get("gate")
    return not isinstance(gate, Mapping) or bool(gate.get("passed", True))


#: Turns a validated array, parsed with ``slot``'s schema, into probabilities from ``slot``'s model.
Predictor = Callable[[np.ndarray, ModelSlot], Awaitable[tuple[np.ndarray, ModelSlot, int]]]


def direct_predictor(holder: ModelHolder) -> Predictor:
    """Answer each request with its own forward pass (the unbatched baseline)."""

    async def predict(x: np.ndarray, slot: ModelSlot) -> tuple[np.ndarray, ModelSlot, int]:
        return slot.model.predict_proba(x), slot, 1

    return predict


@dataclass
class BatchStats:
    """Batch sizes seen by one replica (requests per forward pass)."""

    batches: int = 0
    requests: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.largest = max(self.largest, size)

    def to_dict(self) -> dict[str, Any]:
        mean = self.requests / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.requests, "largest": self.largest, "mean": round(mean, 3)}


def forward_batch(items: Sequence[tuple[np.ndarray, ModelSlot]]) -> list[tuple[np.ndarray, ModelSlot, int]]:
    """Answer a batch of ``(rows, slot)`` requests: each on the slot whose schema parsed it.

    Requests parsed before a swap and after it can meet in one batch: that makes one
    forward pass per slot, never rows of one schema through another version's model.
    """
    groups: dict[int, list[int]] = {}
    for i, (_, slot) in enumerate(items):
        groups.setdefault(id(slot), []).append(i)
    out: list[Any] = [None] * len(items)
    for members in groups.values():
        slot = items[members[0]][1]
        xs = [items[i][0] for i in members]
        probs = slot.model.predict_proba(np.concatenate(xs) if len(xs) > 1 else xs[0])
        start = 0
        for i, x in zip(members, xs):
            out[i] = (probs[start:start + len(x)], slot, len(items))
            start += len(x)
    return out


def batching_predictor(*, max_batch_size: int, batch_wait_timeout_s: float, stats: BatchStats) -> Predictor:
    """Group concurrent requests with ``@serve.batch`` and answer them with one forward pass."""
    from ray import serve

    async def run_batch(items: list[tuple[np.ndarray, ModelSlot]]) -> list[tuple[np.ndarray, ModelSlot, int]]:
        stats.add(len(items))
        return forward_batch(items)

    batched = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)(run_batch)

    async def predict(x: np.ndarray, slot: ModelSlot) -> tuple[np.ndarray, ModelSlot, int]:
        return await batched((x, slot))

    return predict

# ----------------------------------------------------------------------- FastAPI


def create_fastapi_app(
    holder: ModelHolder,
    predictor: Predictor,
    *,
    max_instances: int,
    extra_info: Callable[[], Mapping[str, Any]] | None = None,
):
    """The HTTP routes over a model holder and a predictor (Serve replica or plain uvicorn).

    Args:
        holder: The served model.
        predictor: Turns a validated ``(n, 30)`` array into probabilities.
        max_instances: Largest batch one request may carry.
        extra_info: More fields for ``GET /v1/models/<name>`` (e.g. batch statistics).
    """
    from fastapi import FastAPI

    name = holder.name
    app = FastAPI(
        title="rayspace model server",
        description="KServe V1 inference protocol over the model registry's current version.",
        version="1",
    )

    def json_response(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return Response(content=body, status_code=status, media_type=JSON, headers=dict(headers or {}))

    def unknown_model(requested: str) -> Response:
        return json_response(error_body(f"model {requested!r} is not served here; served models: [{name!r}]"), 404)

    # The path parameter is read from the request, not declared as an argument, so the OpenAPI
    # can say which name is served (an enum); any other name still gets the 404 above.
    model_param = {"parameters": [{"name": "model", "in": "path", "required": True,
                                   "schema": {"type": "string", "enum": [name]}}]}
    errors = {str(code): {"description": text, "content": {JSON: {"schema": ERROR_SCHEMA}}} for code, text in (
        (400, "Not JSON, not UTF-8, or not an object"), (404, "Model not served here"),
        (413, "Too many instances or too large a body"), (415, "Not a JSON content type"),
        (422, "Wrong features, counts or values"))}

    @app.post(
        "/v1/models/{model}:predict",
        summary="Predict (KServe V1)",
        openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": PREDICT_REQUEST_SCHEMA}}},
                       **model_param},
        responses=errors,
    )
    async def predict(request: Request) -> Response:
        model = request.path_params["model"]
        if model != name:
            return unknown_model(model)
        # Schema and model as one unit: the request is parsed with this slot's feature names and
        # answered by this slot's model, whatever the poller swaps in meanwhile.
        slot = holder.slot
        try:
            check_content_type(request.headers.get("content-type"))
            body = await _read_body(request, max_instances)
            x = parse_instances(body, slot.feature_names, max_instances)
        except InvalidRequestError as e:
            return json_response(error_body(str(e)), e.status_code)
        probs, used, batch_size = await predictor(x, slot)
        try:
            check_outputs(probs)
        except InvalidRequestError as e:
            return json_response(error_body(str(e)), e.status_code)
        return json_response(
            encode_predictions(probs, model_name=name, model_version=used.version),
            headers={"x-rayspace-batch-size": str(batch_size), "x-rayspace-model-version": used.version},
        )

    @app.get("/v1/models/{model}", summary="Model readiness and metadata (KServe V1)", openapi_extra=model_param,
             responses={"404": errors["404"]})
    async def model_metadata(request: Request) -> Response:
        model = request.path_params["model"]
        if model != name:
            return unknown_model(model)
        slot = holder.slot
        card = slot.card
        info = {
            "name": name,
            "version": slot.version,
            "ready": True,
            "platform": "pytorch",
            "feature_names": list(slot.feature_names),
            "metrics": {"validation": card.get("val_metrics", {}), "test": card.get("test_metrics", {})},
            "created": card.get("created"),
            "data_manifest_hash": card.get("data_manifest_hash"),
            "max_instances": max_instances,
            "reloads": holder.reloads,
            # Staleness is reported, never fatal: the served version keeps answering.
            **{k: v for k, v in holder.health().items() if k != "version"},
            **dict(extra_info() if extra_info else {}),
        }
        return json_response(json.dumps(info, default=str).encode())

    @app.get("/v1/models", summary="Served models (KServe V1)")
    async def list_models() -> Response:
        return json_response(b'{"models":["' + name.encode() + b'"]}')

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        health = holder.health()
        body: dict[str, Any] = {"status": "ok", "model": name, "version": health["version"], "stale": health["stale"]}
        if health["stale"]:
            body["current"] = health["current"]
        return json_response(json.dumps(body).encode())

    return app


async def _read_body(request: Request, max_instances: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed the limit (never read whole)."""
    limit = max_body_bytes(max_instances)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        check_body_size(int(declared), max_instances)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        check_body_size(size, max_instances)
        chunks.append(chunk)
    return b"".join(chunks)


def plain_app(registry: str | None = None, model_name: str | None = None, max_instances: int = 1024):
    """The same routes on plain uvicorn, one forward pass per request (the benchmark's baseline).

    ``uvicorn --factory serve.app:plain_app`` reads ``RAYSPACE_REGISTRY`` and
    ``RAYSPACE_MODEL`` when the arguments are not given.
    """
    reg = ModelRegistry(registry or os.environ.get("RAYSPACE_REGISTRY", "./models"))
    holder = ModelHolder(reg, model_name or os.environ.get("RAYSPACE_MODEL", "wdbc"))
    holder.start()
    _limit_torch_threads(1)
    return create_fastapi_app(holder, direct_predictor(holder), max_instances=max_instances)


def _limit_torch_threads(n: int) -> None:
    # Small forward passes are fastest on one thread; more threads only fight the HTTP loop for cores.
    import torch

    torch.set_num_threads(max(1, n))


# -------------------------------------------------------------------------- Serve


class ModelServer:
    """The Serve replica: loads ``current``, batches predictions, follows ``current`` by polling.

    A registry that goes bad never takes the replica down: a new replica whose
    ``current`` cannot be loaded serves the newest version that loads
    (:meth:`ModelHolder.start`), a running one keeps its version when ``current``
    cannot be followed, and both report it (log, ``rayspace_serve_*`` Ray metrics,
    ``stale`` on ``/healthz`` and the metadata route). The health check fails only
    when no model is loaded.

    Args:
        registry: Registry root (absolute path or URI).
        model_name: Model to serve.
        max_batch_size: Largest number of requests in one forward pass.
        batch_wait_timeout_s: How long a batch waits to fill.
        max_instances: Largest number of instances in one request.
        reload_poll_s: Poll ``current`` this often; 0 disables polling.
        replica_cpus: CPUs of the replica (torch threads).

    Raises:
        ServeError: No version of the model could be loaded at all.
    """

    def __init__(self, registry: str, model_name: str, *, max_batch_size: int, batch_wait_timeout_s: float,
                 max_instances: int, reload_poll_s: float, replica_cpus: float = 1.0):
        _limit_torch_threads(int(replica_cpus))
        self.holder = ModelHolder(ModelRegistry(registry), model_name, metrics=RayServeMetrics(model_name))
        self.holder.start()
        self.max_instances = max_instances
        self.reload_poll_s = reload_poll_s
        self.stats = BatchStats()
        self.predictor = batching_predictor(
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, stats=self.stats
        )
        self._poller: asyncio.Task | None = None
        if reload_poll_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_current())

    def __serve_build_asgi_app__(self):
        return create_fastapi_app(
            self.holder, self.predictor, max_instances=self.max_instances,
            extra_info=lambda: {"batching": self.stats.to_dict(), "reload_poll_s": self.reload_poll_s},
        )

    async def _poll_current(self) -> None:
        while True:
            await asyncio.sleep(self.reload_poll_s)
            try:
                # Loading reads files and builds the module: off the event loop so requests keep flowing.
                # refresh() handles a bad registry itself (keeps the served version, reports it).
                await asyncio.to_thread(self.holder.refresh)
            except Exception:  # noqa: BLE001 - a bug here must not stop following current for good
                logger.exception("model %s: following current failed unexpectedly; retrying", self.holder.name)

    async def check_health(self) -> None:
        """Serve's replica health check: fails only when no model is loaded.

        Not following ``current`` (unreadable pointer, a version that cannot load) is
        staleness, reported by metrics and routes: killing the replica would not fix
        the registry, and its replacement could not load that version either.
        """
        self.holder.slot  # raises if nothing is loaded
        if self._poller is not None and self._poller.done() and not self._poller.cancelled():
            # The loop above never ends on its own; restart it rather than fail a replica that serves.
            logger.error("model %s: the reload poller ended (%r); restarting it",
                         self.holder.name, self._poller.exception())
            self._poller = asyncio.get_running_loop().create_task(self._poll_current())


def _validated_args(args: Mapping[str, Any]) -> tuple[str, str, Any]:
    from pydantic import ValidationError

    from workloads.config import RegistryConfig, ServeConfig, config_error_from

    args = dict(args)
    unknown = sorted(set(args) - {"registry", "model_name", *APP_ARG_FIELDS})
    if unknown:
        raise ConfigError(
            f"Got {unknown} for serve app args: unknown (allowed: registry, model_name, {', '.join(APP_ARG_FIELDS)})",
            [],
        )
    registry = args.pop("registry", None)
    if not isinstance(registry, str) or not registry:
        raise ConfigError(f"Got {registry!r} for serve app args.registry: must be the registry directory or URI", [])
    model_name = args.pop("model_name", RegistryConfig().model_name)
    try:
        RegistryConfig(path=registry, model_name=model_name)
        serve_cfg = ServeConfig(**args)
    except ValidationError as e:
        raise config_error_from(e, "serve app args") from None
    if "://" not in registry:
        registry = os.path.abspath(os.path.expanduser(registry))
    return registry, model_name, serve_cfg


def deployment_options(serve_cfg: Any) -> dict[str, Any]:
    """Serve deployment options derived from a :class:`~workloads.config.ServeConfig`."""
    opts: dict[str, Any] = {
        "max_ongoing_requests": serve_cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": serve_cfg.replica_cpus},
        "health_check_period_s": 5,
        "health_check_timeout_s": 30,
        # Per-request access logs cost more than a small forward pass; errors are still logged.
        "logging_config": {"enable_access_log": False},
    }
    if serve_cfg.max_replicas_per_node is not None:
        opts["max_replicas_per_node"] = serve_cfg.max_replicas_per_node
    if serve_cfg.min_replicas == serve_cfg.max_replicas:
        opts["num_replicas"] = serve_cfg.max_replicas
    else:
        opts["autoscaling_config"] = {
            "min_replicas": serve_cfg.min_replicas,
            "max_replicas": serve_cfg.max_replicas,
            "target_ongoing_requests": serve_cfg.target_ongoing_requests,
        }
    return opts


def build_app(args: Mapping[str, Any]):
    """Build the Serve application (the ``import_path`` of ``serve/config.yaml``).

    Args:
        args: ``registry`` (required), ``model_name``, and optionally any of
            :data:`APP_ARG_FIELDS` (defaults from :class:`~workloads.config.ServeConfig`).

    Raises:
        ConfigError: An unknown or invalid argument.
    """
    from ray import serve

    registry, model_name, cfg = _validated_args(args)
    deployment = serve.deployment(name=DEPLOYMENT_NAME, **deployment_options(cfg))(serve.ingress()(ModelServer))
    return deployment.bind(
        registry, model_name,
        max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s,
        max_instances=cfg.max_instances, reload_poll_s=cfg.reload_poll_s, replica_cpus=cfg.replica_cpus,
    )


def app_args_from_config(cfg: Any) -> dict[str, Any]:
    """``build_app`` arguments from a :class:`~workloads.config.WorkspaceConfig`."""
    args = {"registry": cfg.registry.path, "model_name": cfg.registry.model_name}
    args.update({f: getattr(cfg.serve, f) for f in APP_ARG_FIELDS})
    return args
