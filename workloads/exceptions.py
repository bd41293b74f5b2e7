"""The one exceptions module of rayspace.

Every error the library raises on purpose derives from :class:`RayspaceError`,
so the CLI can turn it into a clear message and an exit code, and callers can
catch one family. Errors raised because another library failed are re-raised
``from`` the original so the cause stays visible.
"""

from __future__ import annotations

from typing import Any


class RayspaceError(Exception):
    """Base class of every error rayspace raises on purpose."""

    #: Exit code the CLI uses for this family of errors.
    exit_code: int = 1


# --- configuration ---------------------------------------------------------


class ConfigError(RayspaceError, ValueError):
    """A configuration value is invalid.

    Attributes:
        problems: One entry per invalid field: ``(field, value, rule)``.
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[tuple[str, Any, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


# --- data ------------------------------------------------------------------


class DataError(RayspaceError):
    """Data could not be read, validated or written."""


class SchemaError(DataError):
    """Input data does not match the lake schema.

    Attributes:
        path: File the problem was found in.
        row: Zero-based row index in that file, if known.
        column: Column name, if known.
        reason: What is wrong.
    """

    def __init__(self, path: str, reason: str, *, row: int | None = None, column: str | None = None):
        where = path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.row = row
        self.column = column
        self.reason = reason


class LakeNotFoundError(DataError):
    """The lake has no committed data to read."""


class LakeCorruptError(DataError):
    """A lake pointer, snapshot record or manifest is not valid (e.g. edited by hand, or truncated)."""


# --- storage -----------------------------------------------------------------


class StorageError(RayspaceError, OSError):
    """A storage location (local path or URI) could not be opened, read or written."""


# --- training / tuning / models ---------------------------------------------


class TrainingError(RayspaceError):
    """A training run failed."""


class CheckpointError(RayspaceError):
    """A checkpoint is missing, incomplete or unreadable."""


class TuneError(RayspaceError):
    """A Tune sweep failed as a whole (individual failed trials are reported, not raised)."""


class RunRecordError(RayspaceError):
    """A pipeline run's record (``<train.storage_path>/runs/<run-id>.json``) is missing or unreadable."""


class RegistryError(RayspaceError):
    """The model registry could not be read or written."""


class CurrentChangedError(RegistryError):
    """``current`` moved between reading it and switching it (another promotion won the race).

    Attributes:
        expected: The version the caller compared against.
        actual: The version ``current`` points at now.
    """

    def __init__(self, message: str, *, expected: str | None, actual: str | None):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class PromotionRejectedError(RegistryError):
    """The promotion gate refused to make a version current."""


class ModelNotFoundError(RegistryError):
    """No such model or version in the registry."""


# --- serving -----------------------------------------------------------------


class ServeError(RayspaceError):
    """The Serve application could not be started or reached."""


class InvalidRequestError(RayspaceError):
    """An inference request is malformed (answered with HTTP 4xx)."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


# --- Kubernetes / KubeRay ---------------------------------------------------------


class ManifestError(RayspaceError):
    """A rendered manifest is invalid or could not be rendered."""


class SimulationError(ManifestError):
    """The local autoscaling simulation of a RayCluster could not run (not: it ran and scaled wrongly)."""


class KubernetesError(RayspaceError):
    """Base class of errors from the Kubernetes API.

    Attributes:
        status: HTTP status the API server returned, if any.
        reason: The API server's reason, if any.
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class NotFoundError(KubernetesError):
    """The object does not exist (HTTP 404)."""


class AlreadyExistsError(KubernetesError):
    """The object already exists (HTTP 409, reason AlreadyExists)."""


class ConflictError(KubernetesError):
    """The write conflicted with a newer version of the object (HTTP 409)."""


class ForbiddenError(KubernetesError):
    """RBAC denied the request (HTTP 403)."""


class ValidationError(KubernetesError):
    """The API server rejected the object as invalid (HTTP 422).

    Attributes:
        causes: ``(field, message)`` pairs from the server's status details.
    """

    def __init__(self, message: str, *, causes: list[tuple[str, str]] | None = None, status: int | None = 422,
                 reason: str | None = "Invalid"):
        super().__init__(message, status=status, reason=reason)
        self.causes = causes or []


class WaitTimeoutError(KubernetesError):
    """A wait for a condition ran out of time."""


class ClusterConfigError(KubernetesError):
    """No usable kubeconfig or in-cluster configuration."""


class DashboardError(RayspaceError):
    """The Ray dashboard's REST API refused a request or could not be reached.

    Attributes:
        status: HTTP status the dashboard returned (``None`` if it was unreachable).
    """

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


# --- Ray jobs --------------------------------------------------------------------------


class JobError(RayspaceError):
    """A Ray job's context could not be read, or its record could not be written."""
