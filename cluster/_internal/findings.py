"""The result type every offline check returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """The outcome of one named check on one object.

    Attributes:
        check: Name of the rule, e.g. ``crd-schema`` or ``read-only-root-filesystem``.
        obj: ``Kind/name`` of the object (plus a path into it for nested pod templates).
        ok: Whether the object passes.
        message: What was checked, or what is wrong and how to fix it.
        severity: ``error`` fails ``rayspace cluster check``; ``warning`` is reported only.
    """

    check: str
    obj: str
    ok: bool
    message: str
    severity: Severity = "error"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def obj_id(obj: dict[str, Any]) -> str:
    """``Kind/name`` of a Kubernetes object."""
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def passed(check: str, obj: str, message: str) -> Finding:
    """A passing finding."""
    return Finding(check, obj, True, message)


def failed(check: str, obj: str, message: str, severity: Severity = "error") -> Finding:
    """A failing finding (``severity="warning"`` does not fail the report)."""
    return Finding(check, obj, False, message, severity)
