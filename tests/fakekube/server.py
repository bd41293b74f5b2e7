"""The fake API server: an in-memory object store behind the Kubernetes REST protocol.

What it implements, because the client depends on it:

* paths ``/api/v1/namespaces/{ns}/{plural}[/{name}[/status]]``,
  ``/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/status]]`` and
  ``/api/v1/namespaces[/{name}]``; a resource type it does not serve answers the
  API server's plain ``404 page not found``;
* bearer-token authentication (unknown token: 401) and configurable RBAC denials
  (403 with the API server's ``Status`` body naming user, verb, resource, namespace);
* ``GET`` (get, and list with ``labelSelector``), ``POST`` (create; 409
  ``AlreadyExists``), ``PUT`` (replace; ``resourceVersion`` required and checked:
  409 ``Conflict``), ``PATCH`` with ``application/merge-patch+json``,
  ``application/json-patch+json`` (including ``test``), and server-side apply
  ``application/apply-patch+yaml`` (``fieldManager`` required, per-field ownership,
  conflicts unless ``force``), ``DELETE`` with ``propagationPolicy`` and
  owner-reference garbage collection;
* the ``/status`` subresource: writes to the main resource keep the live status,
  writes to ``/status`` change only the status;
* 422 ``Invalid`` with ``details.causes`` for objects breaking the (small) schema:
  DNS names, required RayCluster head group, non-negative integer replicas.

Tests read :attr:`FakeKube.requests` to check what went over the wire.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

# (group, version, plural) -> (kind, namespaced, has status subresource)
SERVED: dict[tuple[str, str, str], tuple[str, bool, bool]] = {
    ("ray.io", "v1", "rayclusters"): ("RayCluster", True, True),
    ("ray.io", "v1", "rayjobs"): ("RayJob", True, True),
    ("ray.io", "v1", "rayservices"): ("RayService", True, True),
    ("ray.io", "v1", "raycronjobs"): ("RayCronJob", True, True),
    ("", "v1", "namespaces"): ("Namespace", False, True),
    ("", "v1", "secrets"): ("Secret", True, False),
    ("", "v1", "endpoints"): ("Endpoints", True, False),
    ("", "v1", "services"): ("Service", True, True),
    ("", "v1", "serviceaccounts"): ("ServiceAccount", True, False),
    ("", "v1", "configmaps"): ("ConfigMap", True, False),
    ("", "v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True, True),
    ("", "v1", "resourcequotas"): ("ResourceQuota", True, True),
    ("", "v1", "pods"): ("Pod", True, True),
    ("", "v1", "limitranges"): ("LimitRange", True, False),
    ("rbac.authorization.k8s.io", "v1", "roles"): ("Role", True, False),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"): ("RoleBinding", True, False),
    ("networking.k8s.io", "v1", "networkpolicies"): ("NetworkPolicy", True, False),
    ("policy", "v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True, True),
    ("storage.k8s.io", "v1", "storageclasses"): ("StorageClass", False, False),
    ("apps", "v1", "deployments"): ("Deployment", True, True),
}

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ApiError(Exception):
    """An API error answer: HTTP status plus a ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 plain: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.plain = plain

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            out["details"] = self.details
        return out


@dataclass
class Deny:
    """An RBAC rule that refuses a request (every ``None`` field matches anything).

    Attributes:
        verb: ``get``, ``list``, ``create``, ``update``, ``patch``, ``delete``.
        resource: Plural, with ``/status`` for the subresource.
        group: API group (``""`` for core).
        namespace: Namespace.
        name: Object name.
    """

    verb: str | None = None
    resource: str | None = None
    group: str | None = None
    namespace: str | None = None
    name: str | None = None

    def matches(self, verb: str, resource: str, group: str, namespace: str | None, name: str | None) -> bool:
        return all((
            self.verb in (None, verb), self.resource in (None, resource), self.group in (None, group),
            self.namespace in (None, namespace), self.name in (None, name),
        ))


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    user: str | None
    verb: str = ""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- patch algebra


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f'JSON pointer "{path}" must start with "/"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    """The container of the last token, and that token."""
    return _get_pointer(doc, tokens[:-1], path), tokens[-1]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        path = op.get("path", "")
        tokens = _pointer(path)
        if kind == "test":
            current = _get_pointer(doc, tokens, path)
            if current != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {path} failed: test failed",
                               {"causes": [{"reason": "FieldValueInvalid", "message": "test failed", "field": path}]})
            continue
        if kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_get_pointer(doc, src, op.get("from", "")))
            if kind == "move":
                doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            doc = json_patch(doc, [{"op": "add", "path": path, "value": value}])
            continue
        if not tokens:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op.get("value"))
                continue
            raise ApiError(422, "Invalid", "jsonpatch: cannot remove the root")
        parent, last = _resolve(doc, tokens, path)
        if kind == "add":
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                parent.insert(index, copy.deepcopy(op.get("value")))
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        elif kind in ("replace", "remove"):
            exists = (isinstance(parent, dict) and last in parent) or (
                isinstance(parent, list) and last.isdigit() and int(last) < len(parent))
            if not exists:
                raise ApiError(422, "Invalid", f"jsonpatch {kind} operation does not apply: doc is missing key: {path}",
                               {"causes": [{"reason": "FieldValueInvalid", "message": "missing key", "field": path}]})
            if kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op.get("value"))
        else:
            raise ApiError(422, "Invalid", f"jsonpatch: unknown op {kind!r}")
    return doc


def _get_pointer(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for tok in tokens:
        if isinstance(node, dict) and tok in node:
            node = node[tok]
        elif isinstance(node, list) and tok.isdigit() and int(tok) < len(node):
            node = node[int(tok)]
        else:
            raise ApiError(422, "Invalid", f"jsonpatch: path {path} does not exist",
                           {"causes": [{"reason": "FieldValueInvalid", "message": "path does not exist", "field": path}]})
    return node


def leaves(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaf paths of a JSON tree; lists are atomic (the CRD default) and so are leaves."""
    if isinstance(obj, dict) and obj:
        out: dict[tuple[str, ...], Any] = {}
        for key, value in obj.items():
            out.update(leaves(value, prefix + (key,)))
        return out
    return {prefix: obj}


def _get_path(obj: Any, path: tuple[str, ...]) -> Any:
    node = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _del_path(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    parents = []
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    # Drop maps the removal left empty, as apply does.
    for parent, key in reversed(parents):
        if parent[key] == {}:
            del parent[key]


_MISSING = object()

# Fields no manager owns (the server's, and identity).
_UNOWNED = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


def _owned_paths(obj: dict[str, Any]) -> set[tuple[str, ...]]:
    paths = set()
    for path in leaves({k: v for k, v in obj.items() if k != "status"}):
        if path in _UNOWNED or (path and path[0] == "metadata" and path[1:2] not in (("labels",), ("annotations",))):
            continue
        paths.add(path)
    return paths


# --------------------------------------------------------------------------- label selectors


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur.strip())
    return terms


def selector_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    """Compile a label selector (``a=b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``)."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector):
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                checks.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                checks.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                checks.append(lambda lb, k=key, v=value: lb.get(k) == v)
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", term)
        if m:
            neg, key = m.groups()
            checks.append((lambda lb, k=key: k not in lb) if neg else (lambda lb, k=key: k in lb))
            continue
        raise ApiError(400, "BadRequest", f'unable to parse requirement: found "{term}", expected a label selector term')
    return lambda labels: all(c(labels) for c in checks)


# --------------------------------------------------------------------------- validation


def _cause(field_: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field_}


def _validate_cluster_spec(spec: Any, prefix: str) -> list[dict[str, str]]:
    causes = []
    if not isinstance(spec, dict):
        return [_cause(prefix, f"Invalid value: {spec!r}: {prefix} in body must be of type object", "FieldValueTypeInvalid")]
    if not isinstance(spec.get("headGroupSpec"), dict):
        causes.append(_cause(f"{prefix}.headGroupSpec", "Required value", "FieldValueRequired"))
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        for key in ("replicas", "minReplicas", "maxReplicas"):
            if key not in group:
                continue
            value = group[key]
            where = f"{prefix}.workerGroupSpecs[{i}].{key}"
            if isinstance(value, bool) or not isinstance(value, int):
                causes.append(_cause(where, f'Invalid value: "{type(value).__name__}": {where} in body must be of type integer',
                                     "FieldValueTypeInvalid"))
            elif value < 0:
                causes.append(_cause(where, f"Invalid value: {value}: {where} in body should be greater than or equal to 0"))
    return causes


def default_validate(kind: str, obj: dict[str, Any]) -> list[dict[str, str]]:
    """The schema rules the fake enforces (a small part of the real CRDs' OpenAPI schemas)."""
    causes = []
    name = (obj.get("metadata") or {}).get("name", "")
    if not _DNS_SUBDOMAIN.match(str(name)) or len(str(name)) > 253:
        causes.append(_cause("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                                              "lower case alphanumeric characters, '-' or '.'"))
    spec = obj.get("spec")
    if kind == "RayCluster":
        causes += _validate_cluster_spec(spec or {}, "spec")
    elif kind == "RayJob" and isinstance(spec, dict):
        if "entrypoint" in spec and not isinstance(spec["entrypoint"], str):
            causes.append(_cause("spec.entrypoint", "Invalid value: spec.entrypoint in body must be of type string",
                                 "FieldValueTypeInvalid"))
        if spec.get("rayClusterSpec") is not None:
            causes += _validate_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec")
    elif kind == "RayService" and isinstance(spec, dict) and spec.get("rayClusterConfig") is not None:
        causes += _validate_cluster_spec(spec["rayClusterConfig"], "spec.rayClusterConfig")
    return causes


# --------------------------------------------------------------------------- the store + protocol


class FakeKube:
    """An in-memory Kubernetes API server on 127.0.0.1.

    Args:
        tokens: Bearer token -> user name (``system:serviceaccount:ns:sa`` for ServiceAccounts).
        namespaces: Namespaces that exist at start.
        supports_apply: ``False`` answers apply patches with 415, like servers without server-side apply.
        serve_ray_crds: ``False`` behaves like a cluster without the KubeRay CRDs.
    """

    def __init__(
        self,
        *,
        tokens: dict[str, str] | None = None,
        namespaces: tuple[str, ...] = ("default",),
        supports_apply: bool = True,
        serve_ray_crds: bool = True,
    ):
        self.tokens = tokens or {"fake-token": "system:serviceaccount:rayspace:rayspace-ci"}
        self.supports_apply = supports_apply
        self.serve_ray_crds = serve_ray_crds
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
        # Field ownership: object key -> manager -> set of leaf paths.
        self.managers: dict[tuple[str, str, str, str, str], dict[str, set[tuple[str, ...]]]] = {}
        self.denies: list[Deny] = []
        self.requests: list[Request] = []
        self.deletions: list[tuple[str, str, str, str]] = []
        self.validators: list[Callable[[str, dict[str, Any]], list[dict[str, str]]]] = [default_validate]
        self._rv = 100
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeKube":
        """Serve on a free loopback port in a daemon thread."""
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakekube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def deny(self, verb: str | None = None, resource: str | None = None, *, group: str | None = None,
             namespace: str | None = None, name: str | None = None) -> Deny:
        """Add an RBAC denial."""
        rule = Deny(verb=verb, resource=resource, group=group, namespace=namespace, name=name)
        self.denies.append(rule)
        return rule

    def next_rv(self) -> str:
        with self.lock:
            self._rv += 1
            return str(self._rv)

    @staticmethod
    def gvp_of(api_version: str, kind: str) -> tuple[str, str, str]:
        group, _, version = api_version.rpartition("/")
        for (g, v, p), (k, _, _) in SERVED.items():
            if g == group and v == version and k == kind:
                return g, v, p
        raise KeyError(f"{api_version}/{kind} is not served by the fake")

    def key_of(self, obj: dict[str, Any]) -> tuple[str, str, str, str, str]:
        g, v, p = self.gvp_of(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        namespaced = SERVED[(g, v, p)][1]
        return g, v, p, meta.get("namespace", "") if namespaced else "", meta["name"]

    def seed(self, obj: dict[str, Any], *, manager: str = "seed") -> dict[str, Any]:
        """Store an object directly (no HTTP, no validation), stamping server fields."""
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["resourceVersion"] = self.next_rv()
            meta.setdefault("generation", 1)
            key = self.key_of(obj)
            self.objects[key] = obj
            self.managers[key] = {manager: _owned_paths(obj)}
            return copy.deepcopy(obj)

    def get(self, kind: str, name: str, namespace: str = "", api_version: str | None = None) -> dict[str, Any] | None:
        """A deep copy of a stored object, or ``None``."""
        with self.lock:
            for (g, v, p, ns, n), obj in self.objects.items():
                if obj.get("kind") == kind and n == name and ns == (namespace if SERVED[(g, v, p)][1] else ""):
                    if api_version is None or obj.get("apiVersion") == api_version:
                        return copy.deepcopy(obj)
        return None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for (g, v, p, ns, n), o in sorted(self.objects.items())
                    if o.get("kind") == kind and (namespace is None or ns == namespace)]

    def update_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> bool:
        """What a controller does: replace ``status`` (bumps resourceVersion only if it changed)."""
        with self.lock:
            for key, obj in self.objects.items():
                if obj.get("kind") == kind and key[4] == name and key[3] == namespace:
                    if obj.get("status") == status:
                        return False
                    obj["status"] = copy.deepcopy(status)
                    obj["metadata"]["resourceVersion"] = self.next_rv()
                    return True
        return False

    def remove(self, kind: str, name: str, namespace: str, propagation: str = "Background") -> bool:
        with self.lock:
            for key, obj in list(self.objects.items()):
                if obj.get("kind") == kind and key[4] == name and key[3] == namespace:
                    self._delete_key(key, propagation)
                    return True
        return False

    def requests_for(self, method: str | None = None, path_contains: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]

    # ------------------------------------------------------------------ protocol

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """Answer one request: ``(status, JSON body or plain text)``."""
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        auth = headers.get("authorization", "")
        user = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        record = Request(method=method, path=parts.path, query=query, content_type=ctype, user=user,
                         headers=dict(headers))
        with self.lock:
            self.requests.append(record)
        try:
            if user is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            status, payload = self._route(method, parts.path, query, ctype, body, user, record)
        except ApiError as e:
            status, payload = e.code, (e.plain if e.plain is not None else e.body())
        record.status = status
        return status, payload

    def _route(self, method: str, path: str, query: dict[str, list[str]], ctype: str, body: bytes, user: str,
               record: Request) -> tuple[int, Any]:
        if path == "/version":
            return 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fakekube"}
        seg = [s for s in path.split("/") if s]
        if len(seg) >= 2 and seg[0] == "api":
            group, version, rest = "", seg[1], seg[2:]
        elif len(seg) >= 3 and seg[0] == "apis":
            group, version, rest = seg[1], seg[2], seg[3:]
        else:
            raise ApiError(404, "NotFound", "404 page not found", plain="404 page not found\n")
        namespace: str | None = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, plural, tail = rest[1], rest[2], rest[3:]
        elif rest:
            plural, tail = rest[0], rest[1:]
        else:
            raise ApiError(404, "NotFound", "404 page not found", plain="404 page not found\n")
        info = SERVED.get((group, version, plural))
        if info is None or (group == "ray.io" and not self.serve_ray_crds):
            raise ApiError(404, "NotFound", "404 page not found", plain="404 page not found\n")
        kind, namespaced, has_status = info
        if namespaced and namespace is None:
            raise ApiError(404, "NotFound", "404 page not found", plain="404 page not found\n")
        name = tail[0] if tail else None
        sub = tail[1] if len(tail) > 1 else None
        if sub not in (None, "status") or len(tail) > 2 or (sub == "status" and not has_status):
            raise ApiError(404, "NotFound", "404 page not found", plain="404 page not found\n")
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"method {method} not allowed")
        if verb == "list" and query.get("watch", ["false"])[0] in ("true", "1"):
            verb = "watch"
        record.verb = verb
        resource = plural + (f"/{sub}" if sub else "")
        ns_key = namespace if namespaced else ""
        for rule in self.denies:
            if rule.matches(verb, resource, group, namespace, name):
                gr = f"{plural}.{group}" if group else plural
                target = f'{gr} "{name}"' if name else gr
                where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                raise ApiError(403, "Forbidden",
                               f'{target} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
                               f'in API group "{group}"{where}',
                               {"name": name or "", "group": group, "kind": plural})
        if verb == "watch":
            raise ApiError(400, "BadRequest", "the fake API server does not implement watch")
        if verb == "deletecollection":
            raise ApiError(405, "MethodNotAllowed", "the fake API server does not implement deletecollection")
        gr = f"{plural}.{group}" if group else plural
        ctx = _Ctx(group=group, version=version, plural=plural, kind=kind, namespaced=namespaced,
                   has_status=has_status, namespace=ns_key, name=name, sub=sub, gr=gr,
                   manager=(query.get("fieldManager") or ["unknown"])[0])
        with self.lock:
            if verb == "list":
                return 200, self._list(ctx, query)
            if verb == "get":
                return 200, copy.deepcopy(self._live(ctx))
            if verb == "delete":
                return 200, self._delete(ctx, query, body)
            payload = self._parse_body(body, ctype, method)
            if verb == "create":
                return 201, self._create(ctx, payload)
            if verb == "update":
                return 200, self._update(ctx, payload)
            return self._patch(ctx, payload, ctype, query)

    # ------------------------------------------------------------------ verbs

    @staticmethod
    def _parse_body(body: bytes, ctype: str, method: str) -> Any:
        if not body:
            raise ApiError(400, "BadRequest", f"{method} request has no body")
        try:
            if ctype == "application/apply-patch+yaml":
                return yaml.safe_load(body.decode("utf-8"))
            return json.loads(body)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"the request body is not valid: {e}") from None

    def _key(self, ctx: "_Ctx", name: str | None = None) -> tuple[str, str, str, str, str]:
        return ctx.group, ctx.version, ctx.plural, ctx.namespace, name or ctx.name or ""

    def _live(self, ctx: "_Ctx") -> dict[str, Any]:
        obj = self.objects.get(self._key(ctx))
        if obj is None:
            raise ApiError(404, "NotFound", f'{ctx.gr} "{ctx.name}" not found',
                           {"name": ctx.name, "group": ctx.group, "kind": ctx.plural})
        return obj

    def _list(self, ctx: "_Ctx", query: dict[str, list[str]]) -> dict[str, Any]:
        match = selector_matcher(query["labelSelector"][0]) if query.get("labelSelector") else (lambda _l: True)
        items = []
        for (g, v, p, ns, _n), obj in sorted(self.objects.items()):
            if (g, v, p) == (ctx.group, ctx.version, ctx.plural) and (not ctx.namespaced or ns == ctx.namespace):
                if match((obj.get("metadata") or {}).get("labels") or {}):
                    item = copy.deepcopy(obj)
                    if ctx.group == "":  # core lists carry kind/apiVersion on the list only
                        item.pop("kind", None)
                        item.pop("apiVersion", None)
                    items.append(item)
        api_version = f"{ctx.group}/{ctx.version}" if ctx.group else ctx.version
        return {"apiVersion": api_version, "kind": f"{ctx.kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _check_identity(self, ctx: "_Ctx", obj: Any, *, name: str | None) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        api_version = f"{ctx.group}/{ctx.version}" if ctx.group else ctx.version
        if obj.get("kind") != ctx.kind or obj.get("apiVersion") != api_version:
            raise ApiError(400, "BadRequest",
                           f"the body is {obj.get('apiVersion')}/{obj.get('kind')}, not {api_version}/{ctx.kind}")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if ctx.namespaced:
            if meta.get("namespace") not in (None, "", ctx.namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                                  "sent on the request")
            meta["namespace"] = ctx.namespace
        if name is not None and meta.get("name") not in (None, name):
            raise ApiError(400, "BadRequest", f'the name of the object ({meta.get("name")}) does not match the name on '
                                              f"the URL ({name})")
        if name is not None:
            meta["name"] = name
        return obj

    def _validate(self, ctx: "_Ctx", obj: dict[str, Any]) -> None:
        causes = [c for v in self.validators for c in v(ctx.kind, obj)]
        if causes:
            name = (obj.get("metadata") or {}).get("name", "")
            listed = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            group_kind = f"{ctx.kind}.{ctx.group}" if ctx.group else ctx.kind
            raise ApiError(422, "Invalid", f'{group_kind} "{name}" is invalid: [{listed}]',
                           {"name": name, "group": ctx.group, "kind": ctx.kind, "causes": causes})

    def _require_namespace(self, ctx: "_Ctx") -> None:
        if ctx.namespaced and ("", "v1", "namespaces", "", ctx.namespace) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{ctx.namespace}" not found',
                           {"name": ctx.namespace, "kind": "namespaces"})

    def _create(self, ctx: "_Ctx", obj: Any, *, manager: str | None = None) -> dict[str, Any]:
        obj = self._check_identity(ctx, copy.deepcopy(obj), name=None)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{ctx.kind} is invalid: metadata.name: Required value",
                           {"kind": ctx.kind, "causes": [_cause("metadata.name", "Required value", "FieldValueRequired")]})
        self._require_namespace(ctx)
        key = self._key(ctx, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{ctx.gr} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": ctx.group, "kind": ctx.plural})
        if ctx.has_status:
            obj.pop("status", None)  # the status subresource: create never sets status
        self._validate(ctx, obj)
        for k in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "deletionTimestamp"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self.next_rv()
        self.objects[key] = obj
        self.managers[key] = {manager or ctx.manager: _owned_paths(obj)}
        return copy.deepcopy(obj)

    def _store(self, ctx: "_Ctx", live: dict[str, Any], new: dict[str, Any], manager: str) -> dict[str, Any]:
        """Write ``new`` over ``live`` with subresource semantics, generation and ownership bookkeeping."""
        new = copy.deepcopy(new)
        if ctx.sub == "status":
            merged = copy.deepcopy(live)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif ctx.has_status:
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        lmeta = live["metadata"]
        for k in ("uid", "creationTimestamp", "name"):
            meta[k] = lmeta.get(k)
        if ctx.namespaced:
            meta["namespace"] = lmeta.get("namespace")
        meta.pop("managedFields", None)
        self._validate(ctx, new)
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
                       {k: v for k, v in live.items() if k not in ("metadata", "status")}
        meta["generation"] = int(lmeta.get("generation", 1)) + (1 if spec_changed else 0)
        if new == {**live, "metadata": {**lmeta, "generation": meta["generation"]}}:
            return copy.deepcopy(live)  # a no-op write keeps the resourceVersion
        meta["resourceVersion"] = self.next_rv()
        key = self._key(ctx)
        if ctx.sub != "status":
            before, after = leaves(live), leaves(new)
            changed = {p for p in _owned_paths(new) if before.get(p, _MISSING) != after.get(p)}
            owners = self.managers.setdefault(key, {})
            for mgr, paths in owners.items():
                if mgr != manager:
                    paths -= changed
            owners.setdefault(manager, set()).update(changed)
        self.objects[key] = new
        return copy.deepcopy(new)

    def _update(self, ctx: "_Ctx", obj: Any) -> dict[str, Any]:
        live = self._live(ctx)
        obj = self._check_identity(ctx, copy.deepcopy(obj), name=ctx.name)
        rv = obj["metadata"].get("resourceVersion")
        if not rv:
            group_kind = f"{ctx.kind}.{ctx.group}" if ctx.group else ctx.kind
            raise ApiError(422, "Invalid",
                           f'{group_kind} "{ctx.name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                           "must be specified for an update",
                           {"name": ctx.name, "group": ctx.group, "kind": ctx.kind, "causes": [_cause(
                               "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")]})
        self._check_rv(ctx, live, rv)
        return self._store(ctx, live, obj, ctx.manager)

    def _check_rv(self, ctx: "_Ctx", live: dict[str, Any], rv: str | None) -> None:
        if rv and rv != live["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on {ctx.gr} "{ctx.name}": the object has been modified; '
                           "please apply your changes to the latest version and try again",
                           {"name": ctx.name, "group": ctx.group, "kind": ctx.plural})

    def _patch(self, ctx: "_Ctx", patch: Any, ctype: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if ctype == "application/apply-patch+yaml":
            return self._apply(ctx, patch, query)
        live = self._live(ctx)
        if ctype == "application/merge-patch+json" or (ctype == "application/strategic-merge-patch+json" and ctx.group == ""):
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            self._check_rv(ctx, live, ((patch.get("metadata") or {}).get("resourceVersion")))
            new = merge_patch(live, patch)
        elif ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a JSON array of operations")
            new = json_patch(live, patch)
            self._check_rv(ctx, live, ((new.get("metadata") or {}).get("resourceVersion")))
        elif ctype == "application/strategic-merge-patch+json":
            raise ApiError(415, "UnsupportedMediaType",
                           "strategic merge patch is not supported for custom resources; use a JSON or merge patch")
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                        f"accepted media types include: application/json-patch+json, "
                                                        f"application/merge-patch+json, application/apply-patch+yaml")
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the patch produced a non-object")
        new.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
        if new.get("kind") != live.get("kind") or new.get("apiVersion") != live.get("apiVersion"):
            raise ApiError(422, "Invalid", "a patch may not change kind or apiVersion")
        return 200, self._store(ctx, live, new, ctx.manager)

    def _apply(self, ctx: "_Ctx", applied: Any, query: dict[str, list[str]]) -> tuple[int, Any]:
        if not self.supports_apply:
            raise ApiError(415, "UnsupportedMediaType", "the server does not support server-side apply")
        manager = (query.get("fieldManager") or [""])[0]
        if not manager:
            raise ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                                           "is required for apply patch",
                           {"kind": "PatchOptions", "causes": [_cause("fieldManager", "Required value: is required "
                                                                      "for apply patch", "FieldValueRequired")]})
        force = (query.get("force") or ["false"])[0].lower() in ("true", "1")
        applied = self._check_identity(ctx, copy.deepcopy(applied), name=ctx.name)
        key = self._key(ctx)
        if key not in self.objects:
            if ctx.sub == "status":
                raise ApiError(404, "NotFound", f'{ctx.gr} "{ctx.name}" not found',
                               {"name": ctx.name, "group": ctx.group, "kind": ctx.plural})
            return 201, self._create(ctx, applied, manager=manager)
        live = self.objects[key]
        self._check_rv(ctx, live, applied["metadata"].get("resourceVersion"))
        applied["metadata"].pop("resourceVersion", None)
        mine = _owned_paths(applied)
        owners = self.managers.setdefault(key, {})
        live_leaves = leaves(live)
        applied_leaves = leaves(applied)
        conflicts = []
        for mgr, paths in owners.items():
            if mgr == manager:
                continue
            for p in sorted(paths & mine):
                if live_leaves.get(p, _MISSING) != applied_leaves.get(p):
                    conflicts.append((mgr, p))
        if conflicts and not force:
            listed = "\n".join(f'- conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
            raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict"
                                            f"{'s' if len(conflicts) > 1 else ''}: {listed}",
                           {"causes": [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"',
                                        "field": "." + ".".join(p)} for m, p in conflicts]})
        new = copy.deepcopy(live)
        # Fields this manager applied before and no longer applies, and nobody else owns, are removed.
        others = set().union(*(p for m, p in owners.items() if m != manager)) if owners else set()
        for p in owners.get(manager, set()) - mine - others:
            _del_path(new, p)
        new = _deep_merge(new, applied)
        result = self._store(ctx, live, new, manager)
        for mgr in list(owners):
            if mgr != manager:
                owners[mgr] -= mine
        owners[manager] = mine
        return 200, result

    def _delete(self, ctx: "_Ctx", query: dict[str, list[str]], body: bytes) -> dict[str, Any]:
        live = self._live(ctx)
        policy = (query.get("propagationPolicy") or [None])[0]
        if policy is None and body:
            try:
                options = json.loads(body)
            except ValueError:
                raise ApiError(400, "BadRequest", "DeleteOptions body is not JSON") from None
            policy = options.get("propagationPolicy") if isinstance(options, dict) else None
        policy = policy or "Background"
        if policy not in ("Foreground", "Background", "Orphan"):
            raise ApiError(400, "BadRequest", f'propagationPolicy "{policy}" is not one of Foreground, Background, Orphan')
        self._delete_key(self._key(ctx), policy)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": ctx.name, "group": ctx.group, "kind": ctx.plural, "uid": live["metadata"]["uid"]}}

    def _delete_key(self, key: tuple[str, str, str, str, str], policy: str) -> None:
        obj = self.objects.pop(key, None)
        self.managers.pop(key, None)
        if obj is None:
            return
        self.deletions.append((obj.get("kind", ""), key[3], key[4], policy))
        uid = obj["metadata"].get("uid")
        for dep_key, dep in list(self.objects.items()):
            refs = (dep.get("metadata") or {}).get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            if policy == "Orphan":
                dep["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                dep["metadata"]["resourceVersion"] = self.next_rv()
            else:
                self._delete_key(dep_key, policy)


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = _deep_merge(out.get(k), v)
        return out
    return copy.deepcopy(over)


@dataclass
class _Ctx:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    namespace: str
    name: str | None
    sub: str | None
    gr: str
    manager: str


def _make_handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fakekube/1.0"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = fake.handle(self.command, self.path, headers, body)
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/plain; charset=utf-8"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
            pass

    return Handler


def service_account_token(subject: str) -> str:
    """A token shaped like a ServiceAccount JWT (unsigned: the fake maps tokens to users, clients read ``sub``)."""
    import base64

    def enc(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{enc({'alg': 'none'})}.{enc({'sub': subject, 'iss': 'kubernetes/serviceaccount'})}.c2ln"


def write_kubeconfig(path: str | Path, server: str, token: str, *, namespace: str | None = "rayspace",
                     context: str = "fake", user: str = "fake-user") -> Path:
    """Write a kubeconfig pointing at ``server`` with a bearer token."""
    ctx: dict[str, Any] = {"cluster": "fake", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
    }
    p = Path(path)
    p.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return p
