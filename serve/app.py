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
assignment; a batch that already started finishes on the model it started with,
so no request is dropped or answered by a half-loaded model.

``build_app(args)`` is the import path named in ``serve/config.yaml``
(``serve.app:build_app``); :func:`create_fastapi_app` is also served by plain
uvicorn (:func:`plain_app`) as the benchmark's baseline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from serve.protocol import (
    PREDICT_REQUEST_SCHEMA,
    encode_predictions,
    error_body,
    parse_instances,
)
from workloads.exceptions import ConfigError, InvalidRequestError, RayspaceError, ServeError
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


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelSlot:
    """One loaded version: what a batch captures, so a swap never changes it mid-batch."""

    version: str
    model: LoadedModel = field(repr=False)
    card: dict[str, Any] = field(repr=False)


class ModelHolder:
    """Holds the served version of one model and moves it when ``current`` moves.

    Args:
        registry: Where versions live.
        name: Model name.
        loader: Loads a version directory (``workloads.model.load_checkpoint``; tests pass fakes).
    """

    def __init__(self, registry: ModelRegistry, name: str, loader: Callable[[Any], LoadedModel] = load_checkpoint):
        self.registry = registry
        self.name = name
        self._loader = loader
        self._slot: ModelSlot | None = None
        self.reloads = 0
        self.last_error: str | None = None

    @property
    def slot(self) -> ModelSlot:
        if self._slot is None:
            raise ServeError(f"model {self.name!r} is not loaded yet")
        return self._slot

    def load(self, version: str = "current") -> ModelSlot:
        """Load a version (blocking) and make it the served one."""
        mv = self.registry.get(self.name, version)
        model = self._loader(self.registry.local_path(self.name, mv.version))
        slot = ModelSlot(version=mv.version, model=model, card=mv.card)
        previous = self._slot.version if self._slot else None
        # One reference assignment: readers see the old slot or the new one, never a mix.
        self._slot = slot
        if previous is not None:
            self.reloads += 1
            logger.info("model %s moved from %s to %s", self.name, previous, slot.version)
        return slot

    def refresh(self) -> bool:
        """Follow ``current`` if it moved (blocking); returns whether the served version changed."""
        target = self.registry.current(self.name)
        if target is None or (self._slot is not None and target == self._slot.version):
            return False
        self.load(target)
        return True


Predictor = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, ModelSlot, int]]]


def direct_predictor(holder: ModelHolder) -> Predictor:
    """Answer each request with its own forward pass (the unbatched baseline)."""

    async def predict(x: np.ndarray) -> tuple[np.ndarray, ModelSlot, int]:
        slot = holder.slot
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


def batching_predictor(
    holder: ModelHolder, *, max_batch_size: int, batch_wait_timeout_s: float, stats: BatchStats
) -> Predictor:
    """Group concurrent requests with ``@serve.batch`` and answer them with one forward pass."""
    from ray import serve

    async def run_batch(xs: list[np.ndarray]) -> list[tuple[np.ndarray, ModelSlot, int]]:
        slot = holder.slot  # the whole batch uses one version
        sizes = [len(x) for x in xs]
        probs = slot.model.predict_proba(np.concatenate(xs) if len(xs) > 1 else xs[0])
        stats.add(len(xs))
        out, start = [], 0
        for n in sizes:
            out.append((probs[start:start + n], slot, len(xs)))
            start += n
        return out

    batched = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)(run_batch)
    return batched


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

    @app.post(
        "/v1/models/{model}:predict",
        summary="Predict (KServe V1)",
        openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": PREDICT_REQUEST_SCHEMA}}}},
    )
    async def predict(model: str, request: Request) -> Response:
        if model != name:
            return unknown_model(model)
        body = await request.body()
        slot = holder.slot
        try:
            x = parse_instances(body, slot.model.feature_names, max_instances)
        except InvalidRequestError as e:
            return json_response(error_body(str(e)), e.status_code)
        probs, used, batch_size = await predictor(x)
        return json_response(
            encode_predictions(probs, model_name=name, model_version=used.version),
            headers={"x-rayspace-batch-size": str(batch_size), "x-rayspace-model-version": used.version},
        )

    @app.get("/v1/models/{model}", summary="Model readiness and metadata (KServe V1)")
    async def model_metadata(model: str) -> Response:
        if model != name:
            return unknown_model(model)
        slot = holder.slot
        card = slot.card
        info = {
            "name": name,
            "version": slot.version,
            "ready": True,
            "platform": "pytorch",
            "feature_names": list(slot.model.feature_names),
            "metrics": {"validation": card.get("val_metrics", {}), "test": card.get("test_metrics", {})},
            "created": card.get("created"),
            "data_manifest_hash": card.get("data_manifest_hash"),
            "max_instances": max_instances,
            "reloads": holder.reloads,
            **dict(extra_info() if extra_info else {}),
        }
        return json_response(json.dumps(info, default=str).encode())

    @app.get("/v1/models", summary="Served models (KServe V1)")
    async def list_models() -> Response:
        return json_response(b'{"models":["' + name.encode() + b'"]}')

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        slot = holder.slot
        return json_response(b'{"status":"ok","model":"' + name.encode() + b'","version":"' + slot.version.encode() + b'"}')

    return app


def plain_app(registry: str | None = None, model_name: str | None = None, max_instances: int = 1024):
    """The same routes on plain uvicorn, one forward pass per request (the benchmark's baseline).

    ``uvicorn --factory serve.app:plain_app`` reads ``RAYSPACE_REGISTRY`` and
    ``RAYSPACE_MODEL`` when the arguments are not given.
    """
    reg = ModelRegistry(registry or os.environ.get("RAYSPACE_REGISTRY", "./models"))
    holder = ModelHolder(reg, model_name or os.environ.get("RAYSPACE_MODEL", "wdbc"))
    holder.load()
    _limit_torch_threads(1)
    return create_fastapi_app(holder, direct_predictor(holder), max_instances=max_instances)


def _limit_torch_threads(n: int) -> None:
    # Small forward passes are fastest on one thread; more threads only fight the HTTP loop for cores.
    import torch

    torch.set_num_threads(max(1, n))


# -------------------------------------------------------------------------- Serve


class ModelServer:
    """The Serve replica: loads ``current``, batches predictions, follows ``current`` by polling.

    Args:
        registry: Registry root (absolute path or URI).
        model_name: Model to serve.
        max_batch_size: Largest number of requests in one forward pass.
        batch_wait_timeout_s: How long a batch waits to fill.
        max_instances: Largest number of instances in one request.
        reload_poll_s: Poll ``current`` this often; 0 disables polling.
    """

    def __init__(self, registry: str, model_name: str, *, max_batch_size: int, batch_wait_timeout_s: float,
                 max_instances: int, reload_poll_s: float, replica_cpus: float = 1.0):
        _limit_torch_threads(int(replica_cpus))
        self.holder = ModelHolder(ModelRegistry(registry), model_name)
        self.holder.load()
        self.max_instances = max_instances
        self.reload_poll_s = reload_poll_s
        self.stats = BatchStats()
        self.predictor = batching_predictor(
            self.holder, max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, stats=self.stats
        )
        self._poller: asyncio.Task | None = None
        self._poll_failures = 0
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
                await asyncio.to_thread(self.holder.refresh)
                self._poll_failures = 0
                self.holder.last_error = None
            except (RayspaceError, OSError) as e:
                # Keep serving the old version; check_health fails the replica if this persists.
                # Anything else ends the poller, which check_health reports too.
                self._poll_failures += 1
                self.holder.last_error = f"{type(e).__name__}: {e}"
                logger.warning("could not follow %s's current version (keeping %s): %s",
                               self.holder.name, self.holder.slot.version, self.holder.last_error)

    async def check_health(self) -> None:
        """Serve's replica health check: a model is loaded and reloading is not persistently failing."""
        self.holder.slot  # raises if nothing is loaded
        if self._poller is not None and self._poller.done():
            raise ServeError(f"the reload poller stopped: {self._poller.exception()!r}")
        if self._poll_failures >= 3:
            raise ServeError(f"following current failed {self._poll_failures} times: {self.holder.last_error}")


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
