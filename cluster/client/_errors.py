"""Translate Kubernetes API failures into the typed errors of ``workloads.exceptions``.

Every call the client makes goes through :func:`call`, so the translation lives
in one place: the caller says which verb it was attempting on which object, and
a failure comes back as :class:`~workloads.exceptions.NotFoundError`,
:class:`~workloads.exceptions.ForbiddenError`, ... raised ``from`` the original
``ApiException`` (the HTTP body stays reachable through ``__cause__``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException

from workloads.exceptions import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    KubernetesError,
    NotFoundError,
    ValidationError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Operation:
    """What the client was attempting, for error messages.

    Attributes:
        verb: The RBAC verb (``get``, ``list``, ``create``, ``update``, ``patch``, ``delete``).
        resource: ``plural.group`` (``rayclusters.ray.io``) or a core plural (``secrets``).
        kind: The object kind (``RayCluster``).
        namespace: Namespace of the request.
        name: Object name; ``None`` for collection requests.
        identity: Who the client authenticates as (ServiceAccount or kubeconfig user).
    """

    verb: str
    resource: str
    kind: str
    namespace: str | None
    name: str | None
    identity: str

    @property
    def target(self) -> str:
        """``RayCluster "ns/name"`` or ``rayclusters.ray.io in namespace "ns"``."""
        if self.name:
            where = f"{self.namespace}/{self.name}" if self.namespace else self.name
            return f'{self.kind} "{where}"'
        return f'{self.resource} in namespace "{self.namespace}"' if self.namespace else self.resource


def _status_body(exc: ApiException) -> dict[str, Any]:
    """The ``Status`` object the API server sent, or ``{}`` when the body is not one."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {"message": str(body).strip()[:500]}
    return parsed if isinstance(parsed, dict) else {}


def translate(exc: ApiException, op: Operation) -> KubernetesError:
    """Map one ``ApiException`` to the matching typed error.

    Args:
        exc: The client's exception (carries HTTP status and body).
        op: What was being attempted.

    Returns:
        The error to raise (the caller raises it ``from exc``).
    """
    status = exc.status
    body = _status_body(exc)
    reason = body.get("reason") or exc.reason
    message = body.get("message") or exc.reason or "no message"
    details = body.get("details") or {}

    if status == 404:
        plural = op.resource.split("/")[0].split(".")[0]
        if reason == "NotFound" and op.name and details.get("name") == op.name and details.get("kind") == plural:
            return NotFoundError(f"{op.target} not found", status=404, reason=reason)
        if reason == "NotFound":
            # Something else is missing (e.g. the namespace of a create): say what the server said.
            return NotFoundError(f"{op.verb} {op.target}: {message}", status=404, reason=reason)
        # A 404 without an object name means the resource type itself is unknown
        # to the server: for ray.io kinds that is a missing KubeRay CRD.
        hint = " (is the KubeRay operator and its CRDs installed?)" if op.resource.endswith(".ray.io") else ""
        return NotFoundError(
            f"the API server does not serve {op.resource}{hint}: {message}", status=404, reason=reason
        )
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExistsError(f"{op.target} already exists", status=409, reason=reason)
        return ConflictError(f"{op.verb} {op.target} conflicted: {message}", status=409, reason=reason)
    if status == 403:
        return ForbiddenError(
            f'RBAC denied verb "{op.verb}" on resource "{op.resource}"'
            + (f' name "{op.name}"' if op.name else "")
            + (f' in namespace "{op.namespace}"' if op.namespace else "")
            + f" for {op.identity}: {message}",
            status=403,
            reason=reason,
        )
    if status == 422:
        causes = [
            (str(c.get("field") or "(object)"), str(c.get("message") or c.get("reason") or "invalid"))
            for c in details.get("causes") or []
        ]
        listed = "; ".join(f"{f}: {m}" for f, m in causes) or message
        return ValidationError(f"{op.target} is invalid: {listed}", causes=causes, status=422, reason=reason)
    if status == 401:
        return KubernetesError(
            f"the API server rejected the credentials of {op.identity} (HTTP 401 {reason}); "
            "refresh the kubeconfig or the ServiceAccount token",
            status=401,
            reason=reason,
        )
    return KubernetesError(
        f"{op.verb} {op.target} failed: HTTP {status} {reason}: {message}", status=status, reason=reason
    )


def call(op: Operation, fn: Callable[..., T], *args: Any, host: str = "", **kwargs: Any) -> T:
    """Run one API call and translate its failure.

    Args:
        op: What is being attempted (for the error message).
        fn: The ``kubernetes`` client method.
        *args: Positional arguments of ``fn``.
        host: API server URL, named when it cannot be reached.
        **kwargs: Keyword arguments of ``fn``.

    Returns:
        Whatever ``fn`` returns.

    Raises:
        KubernetesError: A subclass matching the HTTP status, ``from`` the original.
    """
    logger.debug("%s %s", op.verb, op.target)
    try:
        return fn(*args, **kwargs)
    except ApiException as e:
        raise translate(e, op) from e
    except urllib3.exceptions.HTTPError as e:
        raise KubernetesError(f"cannot reach the Kubernetes API server {host or ''} to {op.verb} {op.target}: {e}") from e
