"""One base class for Kubernetes objects, implementing every verb once.

Each kind (``RayCluster``, ``RayJob``, ...) is a small subclass that declares its
``api_version``, ``kind`` and ``plural`` and adds what is particular to it (what
"ready" means, scaling, ...). The base holds the object's last seen body and
implements, once: server-side apply (with a get-and-replace fallback for servers
that refuse ``application/apply-patch+yaml``), create, get, list by label
selector, replace (optimistic concurrency on ``resourceVersion``), merge- and
JSON-patch, delete with a propagation policy, reading ``status``/``conditions``,
and ``wait`` for a predicate with a timeout whose message names the last seen
status. Every API call goes through :func:`cluster.client._errors.call`, so
failures arrive as the typed errors of ``workloads.exceptions``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from cluster.client._api import KubeApi
from cluster.client._errors import Operation, call
from workloads.exceptions import KubernetesError, ManifestError, NotFoundError, WaitTimeoutError

logger = logging.getLogger(__name__)

R = TypeVar("R", bound="Resource")

#: Field manager recorded by server-side apply and updates.
FIELD_MANAGER = "rayspace"

Propagation = Literal["Foreground", "Background", "Orphan"]
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")

_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
_APPLY = "application/apply-patch+yaml"

# Fields the server owns; sending them in an apply body is an error (or a lie).
_SERVER_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
                    "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def _default_plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x")):
        return lower + "es"
    return lower + "s"


class _Endpoint:
    """How to reach one kind: custom-object paths for grouped kinds, ``CoreV1Api`` for core ones.

    Both return plain dicts (the JSON the server sent), never client model objects, so
    every field survives a read-modify-write.
    """

    def __init__(self, api_version: str, kind: str, plural: str, namespaced: bool):
        self.group, _, self.version = api_version.rpartition("/")
        self.kind = kind
        self.plural = plural
        self.namespaced = namespaced
        self.core = self.group == ""

    @property
    def resource(self) -> str:
        return self.plural if self.core else f"{self.plural}.{self.group}"

    # -- core (v1) kinds: CoreV1Api methods, named after the kind --------------------

    def _core(self, api: KubeApi, verb: str) -> Callable[..., Any]:
        scope = "namespaced_" if self.namespaced else ""
        name = f"{verb}_{scope}{_snake(self.kind)}"
        fn = getattr(api.core, name, None)
        if fn is None:
            raise ManifestError(f"kind {self.kind} (v1) is not supported by the rayspace client")
        return fn

    @staticmethod
    def _json(resp: Any) -> Any:
        return json.loads(resp.data) if resp.data else {}

    def request(
        self,
        api: KubeApi,
        verb: str,
        namespace: str | None,
        name: str | None = None,
        body: Any = None,
        *,
        subresource: str | None = None,
        **params: Any,
    ) -> Any:
        """Issue one request. ``verb`` is the RBAC verb; ``params`` are query options."""
        ns = namespace if self.namespaced else None
        # A create names its object in the body, not the URL; messages should still name it.
        op_name = name or ((body.get("metadata") or {}).get("name") if isinstance(body, dict) else None)
        op = Operation(
            verb=verb,
            resource=self.resource + (f"/{subresource}" if subresource else ""),
            kind=self.kind,
            namespace=ns,
            name=op_name,
            identity=api.identity,
        )
        params["_request_timeout"] = api.request_timeout
        if self.core:
            if subresource:
                raise ManifestError(f"subresource {subresource} of {self.kind} is not supported")
            method = {"get": "read", "list": "list", "create": "create", "update": "replace",
                      "patch": "patch", "delete": "delete"}[verb]
            fn = self._core(api, method)
            args: list[Any] = [] if name is None else [name]
            if self.namespaced:
                args.append(ns)
            if body is not None:
                args.append(body)
            resp = call(op, fn, *args, _preload_content=False, host=api.host, **params)
            return self._json(resp)
        g, v, p = self.group, self.version, self.plural
        c = api.custom
        if not self.namespaced:
            # Cluster-scoped grouped kinds (StorageClass) are only read, for checks before applying.
            if verb == "get" and subresource is None:
                return call(op, c.get_cluster_custom_object, g, v, p, name, host=api.host, **params)
            if verb == "list" and subresource is None:
                return call(op, c.list_cluster_custom_object, g, v, p, host=api.host, **params)
            raise ManifestError(f"{verb} on cluster-scoped kind {self.kind} ({self.group}) is not supported by the rayspace client")
        suffix = "_status" if subresource == "status" else ""
        if subresource not in (None, "status"):
            raise ManifestError(f"subresource {subresource} of {self.kind} is not supported")
        if verb == "get":
            return call(op, getattr(c, f"get_namespaced_custom_object{suffix}"), g, v, ns, p, name, host=api.host, **params)
        if verb == "list":
            return call(op, c.list_namespaced_custom_object, g, v, ns, p, host=api.host, **params)
        if verb == "create":
            return call(op, c.create_namespaced_custom_object, g, v, ns, p, body, host=api.host, **params)
        if verb == "update":
            fn = getattr(c, f"replace_namespaced_custom_object{suffix}")
            return call(op, fn, g, v, ns, p, name, body, host=api.host, **params)
        if verb == "patch":
            fn = getattr(c, f"patch_namespaced_custom_object{suffix}")
            return call(op, fn, g, v, ns, p, name, body, host=api.host, **params)
        if verb == "delete":
            return call(op, c.delete_namespaced_custom_object, g, v, ns, p, name, host=api.host, **params)
        raise ValueError(f"unknown verb {verb}")


class Resource:
    """A Kubernetes object: its last seen body plus the verbs that act on it.

    Subclasses declare ``api_version``, ``kind``, ``plural`` (and ``namespaced``).
    Construct one from a manifest to create/apply it, or get one with
    :meth:`get`/:meth:`list`. The body is deep-copied on the way in, so the
    caller's dict is never mutated.

    Args:
        api: The connection to use.
        obj: The object's body (at least ``metadata.name``).
    """

    api_version: ClassVar[str] = "v1"
    kind: ClassVar[str] = ""
    plural: ClassVar[str] = ""
    namespaced: ClassVar[bool] = True

    _registry: ClassVar[dict[tuple[str, str], type["Resource"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            cls.plural = cls.plural or _default_plural(cls.kind)
            Resource._registry[(cls.api_version, cls.kind)] = cls

    def __init__(self, api: KubeApi, obj: Mapping[str, Any]):
        body = copy.deepcopy(dict(obj))
        body.setdefault("apiVersion", self.api_version)
        body.setdefault("kind", self.kind)
        if body["apiVersion"] != self.api_version or body["kind"] != self.kind:
            raise ManifestError(
                f"Got {body['apiVersion']}/{body['kind']} for a {self.api_version}/{self.kind} object"
            )
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            raise ManifestError(f"{self.kind} manifest has no metadata.name")
        if self.namespaced:
            meta.setdefault("namespace", api.namespace)
        self.api = api
        self.raw: dict[str, Any] = body

    # ------------------------------------------------------------- accessors

    @classmethod
    def _endpoint(cls) -> _Endpoint:
        return _Endpoint(cls.api_version, cls.kind, cls.plural, cls.namespaced)

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return str(self.raw["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        """``metadata.namespace`` (``None`` for cluster-scoped kinds)."""
        return self.raw["metadata"].get("namespace") if self.namespaced else None

    @property
    def metadata(self) -> dict[str, Any]:
        return self.raw["metadata"]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.raw["metadata"].get("labels") or {})

    @property
    def resource_version(self) -> str | None:
        return self.raw["metadata"].get("resourceVersion")

    @property
    def spec(self) -> dict[str, Any]:
        return self.raw.setdefault("spec", {})

    @property
    def status(self) -> dict[str, Any]:
        """The last seen ``status`` (``{}`` before the controller wrote one)."""
        return self.raw.get("status") or {}

    @property
    def conditions(self) -> list[dict[str, Any]]:
        """``status.conditions``."""
        return list(self.status.get("conditions") or [])

    def condition(self, type_: str) -> dict[str, Any] | None:
        """The condition of that type, or ``None`` when the controller has not set it."""
        return next((c for c in self.conditions if c.get("type") == type_), None)

    def condition_true(self, type_: str) -> bool:
        """Whether condition ``type_`` has ``status: "True"``."""
        c = self.condition(type_)
        return bool(c) and c.get("status") == "True"

    @property
    def ref(self) -> str:
        """``Kind ns/name`` for messages."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def status_current(self) -> bool:
        """Whether ``status`` describes the current spec: ``status.observedGeneration`` has caught up with
        ``metadata.generation`` (KubeRay sets it on RayCluster, RayJob and RayService). A status without
        ``observedGeneration`` is taken as current (kinds and operators that do not report it)."""
        observed = self.status.get("observedGeneration")
        generation = self.metadata.get("generation")
        return observed is None or generation is None or int(observed) >= int(generation)

    def describe_status(self) -> str:
        """A one-line summary of the status, used in wait timeouts and tables."""
        conds = ", ".join(
            f"{c.get('type')}={c.get('status')}" + (f" ({c['reason']})" if c.get("reason") else "")
            for c in self.conditions
        )
        return conds or "no status yet"

    def summary(self) -> dict[str, Any]:
        """A flat row for tables and ``--json``."""
        return {"kind": self.kind, "name": self.name, "namespace": self.namespace, "status": self.describe_status()}

    def __repr__(self) -> str:
        return f"<{self.ref} rv={self.resource_version}>"

    # ------------------------------------------------------------- class-level reads

    @classmethod
    def get(cls: type[R], api: KubeApi, name: str, namespace: str | None = None) -> R:
        """Read one object.

        Raises:
            NotFoundError: It does not exist (or the kind is not served).
            ForbiddenError: RBAC denied ``get``.
        """
        ns = namespace or api.namespace
        body = cls._endpoint().request(api, "get", ns, name)
        return cls(api, body)

    @classmethod
    def list(cls: type[R], api: KubeApi, label_selector: str | None = None, namespace: str | None = None) -> list[R]:
        """List objects of this kind in a namespace, optionally filtered by a label selector."""
        ns = namespace or api.namespace
        params = {"label_selector": label_selector} if label_selector else {}
        body = cls._endpoint().request(api, "list", ns, **params)
        kind_ver = {"apiVersion": cls.api_version, "kind": cls.kind}
        return [cls(api, {**kind_ver, **item}) for item in body.get("items") or []]

    # ------------------------------------------------------------- writes

    def _take(self: R, body: Any) -> R:
        if isinstance(body, dict) and body.get("metadata"):
            body.setdefault("apiVersion", self.api_version)
            body.setdefault("kind", self.kind)
            self.raw = body
            return self
        # Some client versions drop bodies of status codes they do not expect (201 from an
        # apply that created the object); read the object back rather than keep a stale body.
        return self.refresh()

    def create(self: R) -> R:
        """Create the object.

        Raises:
            AlreadyExistsError: An object of that name exists.
            ValidationError: The server rejected the object (HTTP 422) with its field causes.
        """
        body = self._endpoint().request(self.api, "create", self.namespace, body=self.raw, field_manager=FIELD_MANAGER)
        return self._take(body)

    def apply_body(self) -> dict[str, Any]:
        """The body sent by :meth:`apply`: the intent only, without status or server-owned metadata."""
        body = copy.deepcopy(self.raw)
        body.pop("status", None)
        meta = body["metadata"]
        for key in _SERVER_METADATA:
            meta.pop(key, None)
        return body

    def apply(self: R, *, force: bool = True) -> R:
        """Create or update the object with server-side apply (field manager ``rayspace``).

        ``force`` takes over fields another manager set (what ``kubectl apply
        --server-side --force-conflicts`` does); without it such fields raise
        :class:`~workloads.exceptions.ConflictError`. A server that refuses apply
        patches (HTTP 415) gets a create, or a get-and-replace.
        """
        ep = self._endpoint()
        try:
            # A dict body is serialised as JSON (which is YAML); kubernetes>=37 sends it as such.
            body = ep.request(self.api, "patch", self.namespace, self.name, self.apply_body(),
                              field_manager=FIELD_MANAGER, force=force, _content_type=_APPLY)
        except KubernetesError as e:
            if e.status != 415:
                raise
            logger.info("server refused server-side apply of %s; falling back to create/replace", self.ref)
            return self._apply_by_replace()
        return self._take(body)

    def _apply_by_replace(self: R) -> R:
        try:
            live = type(self).get(self.api, self.name, self.namespace)
        except NotFoundError:
            return self.create()
        desired = self.apply_body()
        desired["metadata"]["resourceVersion"] = live.resource_version
        if "status" in live.raw:
            desired["status"] = live.raw["status"]
        self.raw = desired
        return self.replace()

    def replace(self: R) -> R:
        """Replace the whole object; the body's ``resourceVersion`` guards against lost updates.

        Raises:
            ConflictError: Someone changed the object since this body was read (HTTP 409).
        """
        body = self._endpoint().request(self.api, "update", self.namespace, self.name, self.raw,
                                        field_manager=FIELD_MANAGER)
        return self._take(body)

    def patch(self: R, patch: Mapping[str, Any] | list[dict[str, Any]], *, subresource: str | None = None) -> R:
        """Patch the object: a mapping is a JSON merge patch (RFC 7386), a list a JSON patch (RFC 6902).

        A JSON patch may carry ``test`` operations, so a patch only lands on the
        object it was computed from (a failed test is a 422 ``ValidationError``).
        """
        content_type = _JSON_PATCH if isinstance(patch, list) else _MERGE
        body = self._endpoint().request(self.api, "patch", self.namespace, self.name,
                                        copy.deepcopy(patch if isinstance(patch, list) else dict(patch)),
                                        subresource=subresource, field_manager=FIELD_MANAGER,
                                        _content_type=content_type)
        return self._take(body)

    def refresh(self: R) -> R:
        """Re-read the object from the server."""
        body = self._endpoint().request(self.api, "get", self.namespace, self.name)
        return self._take(body)

    def delete(self, *, propagation: Propagation = "Foreground") -> None:
        """Delete the object.

        Args:
            propagation: ``Foreground`` (dependents first, then the object),
                ``Background`` (the object now, dependents by the garbage collector) or
                ``Orphan`` (dependents are kept).

        Raises:
            NotFoundError: Already gone.
        """
        if propagation not in PROPAGATION_POLICIES:
            raise ValueError(f"Got {propagation!r} for propagation: must be one of {list(PROPAGATION_POLICIES)}")
        self._endpoint().request(self.api, "delete", self.namespace, self.name, propagation_policy=propagation)

    # ------------------------------------------------------------- waiting

    def wait(
        self: R,
        until: Callable[[R], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> R:
        """Poll the object until ``until(self)`` holds.

        Args:
            until: Predicate over the freshly read object.
            timeout: Seconds to wait.
            what: What is awaited, for the timeout message ("ready", "SUCCEEDED or FAILED").
            interval: Most seconds between reads (polling starts faster and backs off to this).
            clock: Monotonic clock (injected so tests need no real waiting).
            sleep: Sleep function.

        Returns:
            ``self``, refreshed.

        Raises:
            WaitTimeoutError: ``timeout`` passed; the message names the last seen status.
            NotFoundError: The object disappeared while waiting.
        """
        deadline = clock() + timeout
        delay = min(0.25, interval)
        while True:
            self.refresh()
            if self.status_current and until(self):
                return self
            now = clock()
            if now >= deadline:
                raise WaitTimeoutError(
                    f"{self.ref} was not {what} after {timeout:g}s; last seen status: {self.describe_status()}"
                )
            sleep(min(delay, deadline - now))
            delay = min(delay * 2, interval)

    def wait_condition(self: R, type_: str, status: str = "True", *, timeout: float, interval: float = 1.0) -> R:
        """Wait until ``status.conditions`` has ``type_`` with ``status``.

        Raises:
            WaitTimeoutError: Not so after ``timeout``; names the last seen conditions.
        """
        return self.wait(lambda r: (r.condition(type_) or {}).get("status") == status, timeout=timeout,
                         what=f"{type_}={status}", interval=interval)

    def wait_deleted(self, *, timeout: float, interval: float = 1.0) -> None:
        """Poll until a read answers 404.

        Raises:
            WaitTimeoutError: Still there after ``timeout`` (finalizers, foreground deletion).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.refresh()
            except NotFoundError:
                return
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"{self.ref} still exists {timeout:g}s after delete; last seen status: {self.describe_status()}"
                )
            time.sleep(interval)


def resource_class(api_version: str, kind: str, *, plural: str | None = None) -> type[Resource]:
    """The class for ``(apiVersion, kind)``: a declared one, or a plain subclass made on the fly."""
    known = Resource._registry.get((api_version, kind))
    if known is not None:
        return known
    namespaced = kind not in ("Namespace",)
    return type(kind, (Resource,), {"api_version": api_version, "kind": kind,
                                    "plural": plural or _default_plural(kind), "namespaced": namespaced})


def from_manifest(api: KubeApi, obj: Mapping[str, Any]) -> Resource:
    """Wrap any manifest in its resource class."""
    try:
        api_version, kind = obj["apiVersion"], obj["kind"]
    except KeyError as e:
        raise ManifestError(f"manifest lacks {e.args[0]}: {dict(obj).get('metadata', {})}") from e
    return resource_class(api_version, kind)(api, obj)
