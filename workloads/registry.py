"""The model registry: immutable model versions and an atomically switched ``current`` pointer.

Layout under the registry root (a local directory or any URI :mod:`workloads.storage` opens)::

    <root>/<name>/v1/            model.pt, preprocessor.json, model.json, model_card.json
    <root>/<name>/v2/            ...
    <root>/<name>/current        {"version": "v2", "switched_at": "..."}

A version directory is never modified after it is written. It is assembled in a
hidden temporary directory next to its final place and renamed into place in one
step; ``model_card.json`` is written last inside it, so a version without a card
is incomplete and is ignored by readers. ``current`` is a small JSON file replaced
atomically (temp file + ``os.replace``), so a reader sees either the old or the new
version, never a mix.

Atomicity on URIs: on object stores (S3, GCS) a single-object PUT is atomic, so
``current`` switches atomically there too; a version "directory" is uploaded
object by object, which is why the card is written last and readers skip versions
without a card. Renaming a version into place is a copy there, not atomic.

Promotion (:func:`promote`) is pure: it takes the checkpoint path and the test
metrics it was evaluated with and never starts Ray, so it is unit-testable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from workloads import storage
from workloads.exceptions import (
    CheckpointError,
    CurrentChangedError,
    ModelNotFoundError,
    RegistryError,
    StorageError,
)
from workloads.model import META_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, read_checkpoint_meta

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.json"
CURRENT_FILE = "current"
#: Files copied from a checkpoint into a version, besides the card.
VERSION_FILES = (WEIGHTS_FILE, PREPROCESSOR_FILE, META_FILE)
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_TMP_PREFIX = ".tmp-"


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_number(version: str) -> int:
    m = _VERSION_RE.match(version)
    if not m:
        raise ModelNotFoundError(f'Got "{version}" for a model version: must look like v1, v2, ...')
    return int(m.group(1))


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or len(name) > 63:
        raise RegistryError(
            f'Got "{name}" for a model name: must be lowercase letters, digits and "-" '
            "(a DNS label, at most 63 characters)"
        )


# ------------------------------------------------------------------------ storage


class _LocalStore:
    """Registry storage on a local (or mounted) filesystem; renames are atomic."""

    def __init__(self, root: str):
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def list_dirs(self, name: str) -> list[str]:
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        return [p.name for p in d.iterdir() if p.is_dir()]

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read_text(self, name: str, rel: str) -> str | None:
        p = self.model_dir(name) / rel
        try:
            return p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RegistryError(f"{p}: cannot read ({e.strerror})") from e

    def write_text_atomic(self, name: str, rel: str, text: str) -> None:
        target = self.model_dir(name) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{_TMP_PREFIX}{target.name}-{uuid.uuid4().hex}"
        try:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RegistryError(f"{target}: cannot write ({e.strerror})") from e

    @contextlib.contextmanager
    def pointer_lock(self, name: str):
        """Hold the model's pointer lock (``flock``: released by the kernel if the holder dies)."""
        import fcntl

        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        with (d / ".current.lock").open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def publish_dir(self, name: str, version: str, build: Callable[[Path], None]) -> str:
        """Build a version in a temp dir beside its final place, then rename it into place."""
        parent = self.model_dir(name)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + version + "-", dir=parent))
        target = parent / version
        try:
            build(tmp)
            if target.exists():
                raise FileExistsError(str(target))
            # rename(2) of a directory is atomic; it fails if the target exists and is not empty.
            os.rename(tmp, target)
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another promoter took this version
                raise FileExistsError(str(target)) from e
            raise RegistryError(f"{target}: cannot write the version ({e.strerror})") from e
        except BaseException:
            # Interrupted (or failed) build: leave nothing half-written behind.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(target)

    def local_path(self, name: str, version: str) -> Path:
        return self.model_dir(name) / version


class _RemoteStore:
    """Registry storage on an object store or any other URI (S3, GCS, HDFS, memory, ...).

    Goes through :mod:`workloads.storage` (pyarrow filesystems, fsspec for the rest).
    Single-object writes (``current``) are atomic on object stores; a version is
    uploaded file by file with its card last, so readers skip incomplete versions.
    """

    def __init__(self, root: str, cache_dir: str | None = None):
        self.root = storage.canonical(root)
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "rayspace-registry-cache")

    def model_dir(self, name: str) -> str:
        return storage.join(self.root, name)

    def list_dirs(self, name: str) -> list[str]:
        return [n for n, is_dir in self._list(self.model_dir(name)) if is_dir]

    def list_models(self) -> list[str]:
        return sorted(n for n, is_dir in self._list(self.root) if is_dir and not n.startswith("."))

    def _list(self, uri: str) -> list[tuple[str, bool]]:
        try:
            return storage.list_dir(uri)
        except StorageError as e:
            raise RegistryError(f"{uri}: cannot list ({e})") from e

    def read_text(self, name: str, rel: str) -> str | None:
        uri = storage.join(self.root, name, rel)
        try:
            return storage.read_bytes(uri).decode("utf-8")
        except FileNotFoundError:
            return None
        except StorageError as e:
            raise RegistryError(f"{uri}: cannot read ({e})") from e

    def write_text_atomic(self, name: str, rel: str, text: str) -> None:
        uri = storage.join(self.root, name, rel)
        try:
            storage.write_bytes(uri, text.encode("utf-8"))
        except StorageError as e:
            raise RegistryError(f"{uri}: cannot write ({e})") from e

    @contextlib.contextmanager
    def pointer_lock(self, name: str):
        """No lock on object stores (pyarrow offers no conditional write): compare-then-write only.

        The compare and the single-object PUT of ``current`` are milliseconds apart, so
        concurrent promoters are caught unless they switch within that window.
        """
        yield

    def publish_dir(self, name: str, version: str, build: Callable[[Path], None]) -> str:
        target = storage.join(self.root, name, version)
        if self.read_text(name, f"{version}/{CARD_FILE}") is not None:
            raise FileExistsError(target)
        with tempfile.TemporaryDirectory(prefix="rayspace-version-") as staging:
            build(Path(staging))
            try:
                # The card goes last so that a reader never trusts a partly uploaded version.
                files = sorted(Path(staging).iterdir(), key=lambda p: p.name == CARD_FILE)
                for f in files:
                    storage.upload_file(f, storage.join(target, f.name))
            except (OSError, StorageError) as e:
                raise RegistryError(f"{target}: upload failed ({e})") from e
        return target

    def local_path(self, name: str, version: str) -> Path:
        """Download a version (immutable, so cached forever) and return the local copy."""
        scheme, _, rest = self.root.partition("://")
        dest = self.cache_dir / scheme / rest.split("?", 1)[0].strip("/") / name / version
        if (dest / CARD_FILE).is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=dest.parent))
        try:
            for fname in (*VERSION_FILES, CARD_FILE):
                (tmp / fname).write_bytes(storage.read_bytes(storage.join(self.root, name, version, fname)))
            if dest.exists():  # another process downloaded it meanwhile; versions are immutable
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dest)
        except (OSError, StorageError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryError(f"{storage.join(self.root, name, version)}: download failed ({e})") from e
        return dest


# ----------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelVersion:
    """One complete, immutable version of a model.

    Attributes:
        name: Model name.
        version: ``v1``, ``v2``, ...
        uri: Where the version lives in the registry.
        card: The parsed ``model_card.json``.
    """

    name: str
    version: str
    uri: str
    card: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided and why."""

    passed: bool
    metric: str
    mode: str
    tolerance: float
    new_value: float | None
    current_value: float | None
    current_version: str | None
    forced: bool
    reason: str


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of :func:`promote`.

    Attributes:
        name: Model name.
        version: The version written for this checkpoint (always written, even when rejected).
        uri: Where it lives.
        promoted: Whether it is now ``current``.
        previous: ``current`` before the promotion (``None`` if there was none).
        current: ``current`` after the promotion.
        gate: The gate's decision.
    """

    name: str
    version: str
    uri: str
    promoted: bool
    previous: str | None
    current: str | None
    gate: GateDecision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    """Read and write model versions under one registry root.

    Args:
        root: Local directory or URI (made canonical: see :mod:`workloads.storage`).
        cache_dir: Where remote versions are downloaded for loading (remote roots only).
    """

    def __init__(self, root: str | os.PathLike[str], *, cache_dir: str | None = None):
        root = os.fspath(root)
        if not root:
            raise RegistryError('Got "" for registry.path: must be a directory or URI')
        try:
            # One canonical form, so every URI the registry hands out has the root's scheme.
            self.root = storage.canonical(root)
        except StorageError as e:
            raise RegistryError(f'Got "{root}" for registry.path: {e}') from None
        self._store: _LocalStore | _RemoteStore = (
            _LocalStore(self.root) if storage.is_local(self.root) else _RemoteStore(self.root, cache_dir)
        )

    # -- reading ------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the models that have at least one directory in the registry."""
        return self._store.list_models()

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name`` (those with a card), oldest first."""
        _check_name(name)
        found = []
        for d in self._store.list_dirs(name):
            if _VERSION_RE.match(d) and self._store.read_text(name, f"{d}/{CARD_FILE}") is not None:
                found.append(d)
        return sorted(found, key=_version_number)

    def current(self, name: str) -> str | None:
        """The version ``current`` points at, or ``None`` if nothing was promoted yet."""
        _check_name(name)
        text = self._store.read_text(name, CURRENT_FILE)
        if text is None:
            return None
        try:
            version = json.loads(text)["version"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RegistryError(f"{self._where(name)}/{CURRENT_FILE}: not a valid pointer ({e})") from e
        _version_number(version)
        return version

    def card(self, name: str, version: str = "current") -> dict[str, Any]:
        """The model card of a version (``"current"`` resolves the pointer)."""
        return self.get(name, version).card

    def get(self, name: str, version: str = "current") -> ModelVersion:
        """Resolve a version (``"current"`` follows the pointer).

        Raises:
            ModelNotFoundError: No such model, version, or no current version.
        """
        _check_name(name)
        if version == "current":
            resolved = self.current(name)
            if resolved is None:
                known = self.versions(name)
                hint = f"versions: {', '.join(known)}" if known else "no versions yet; run `rayspace promote CHECKPOINT`"
                raise ModelNotFoundError(f"model {name!r} in {self.root} has no current version ({hint})")
            version = resolved
        _version_number(version)
        text = self._store.read_text(name, f"{version}/{CARD_FILE}")
        if text is None:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} in {self.root} "
                f"(versions: {', '.join(self.versions(name)) or 'none'})"
            )
        try:
            card = json.loads(text)
        except json.JSONDecodeError as e:
            raise RegistryError(f"{self._where(name)}/{version}/{CARD_FILE}: not valid JSON ({e})") from e
        return ModelVersion(name=name, version=version, uri=storage.join(self.root, name, version), card=card)

    def local_path(self, name: str, version: str = "current") -> Path:
        """A local directory holding the version's files (downloaded for remote registries)."""
        mv = self.get(name, version)
        return self._store.local_path(name, mv.version)

    def _where(self, name: str) -> str:
        return storage.join(self.root, name)

    # -- writing ------------------------------------------------------------

    def add_version(self, name: str, checkpoint: str | os.PathLike[str], card: Mapping[str, Any]) -> ModelVersion:
        """Copy a checkpoint into a new immutable version with the given card fields.

        The version number is the next free one; if another writer takes it first,
        the next one after that is used.

        Raises:
            CheckpointError: The checkpoint is incomplete or corrupt.
            RegistryError: The registry cannot be written.
        """
        _check_name(name)
        src = Path(checkpoint)
        read_checkpoint_meta(src)  # verifies hashes: never publish a half-written checkpoint
        for _attempt in range(20):
            existing = [d for d in self._store.list_dirs(name) if _VERSION_RE.match(d)]
            number = max((_version_number(d) for d in existing), default=0) + 1
            version = f"v{number}"
            full_card = {"name": name, "version": version, **card}

            def build(tmp: Path) -> None:
                for fname in VERSION_FILES:
                    shutil.copy2(src / fname, tmp / fname)
                # Re-verify the copy: the checkpoint could have changed while we read it.
                read_checkpoint_meta(tmp)
                with (tmp / CARD_FILE).open("w", encoding="utf-8") as f:
                    json.dump(full_card, f, indent=1, default=str)
                    f.flush()
                    os.fsync(f.fileno())

            try:
                uri = self._store.publish_dir(name, version, build)
            except FileExistsError:
                logger.info("version %s of %s was taken concurrently; trying the next one", version, name)
                continue
            logger.info("wrote %s version %s at %s", name, version, uri)
            return ModelVersion(name=name, version=version, uri=uri, card=full_card)
        raise RegistryError(f"could not allocate a new version of {name!r} in {self.root} after 20 attempts")

    def set_current(self, name: str, version: str, *, expected: Any = ...) -> str | None:
        """Point ``current`` at an existing version atomically; returns the previous one.

        Args:
            name: Model name.
            version: Version to make current.
            expected: Compare-and-swap: switch only if ``current`` is still this version
                (``None``: still unset). Omit for an unconditional switch (a rollback).

        Raises:
            CurrentChangedError: ``current`` is no longer ``expected`` (nothing was changed).
        """
        self.get(name, version)  # must exist and be complete
        with self._store.pointer_lock(name):
            previous = self.current(name)
            if expected is not ... and previous != expected:
                raise CurrentChangedError(
                    f"{name} current is {previous or 'unset'} now, not {expected or 'unset'} as when {version} "
                    "was gated: another promotion switched it meanwhile",
                    expected=expected, actual=previous,
                )
            pointer = json.dumps({"version": version, "switched_at": _utcnow()})
            self._store.write_text_atomic(name, CURRENT_FILE, pointer + "\n")
        logger.info("%s current: %s -> %s", name, previous, version)
        return previous

    def verify_servable(self, name: str, version: str) -> float:
        """Load a version as Serve would and answer one prediction with it.

        Returns:
            The probability it gave for the training mean (a finite number in [0, 1]).

        Raises:
            RegistryError: It cannot load or answers garbage (it must then never become current).
        """
        import numpy as np

        from workloads.model import load_checkpoint

        try:
            model = load_checkpoint(self.local_path(name, version))
            p = float(model.predict_proba(model.standardizer.mean.reshape(1, -1))[0])
        except (CheckpointError, RegistryError, OSError, ValueError, RuntimeError) as e:
            raise RegistryError(f"{name} {version} cannot serve: {e}") from e
        if not (np.isfinite(p) and 0.0 <= p <= 1.0):
            raise RegistryError(f"{name} {version} cannot serve: it answered {p!r} for the training mean")
        return p


# -------------------------------------------------------------------------- gate


def gate(
    new_metrics: Mapping[str, Any],
    current_card: Mapping[str, Any] | None,
    *,
    metric: str,
    mode: str,
    tolerance: float,
    force: bool = False,
    current_version: str | None = None,
) -> GateDecision:
    """Decide whether a version with ``new_metrics`` may replace the current one.

    A version passes when there is no current version, or its ``metric`` is not
    worse than the current one's by more than ``tolerance`` (``max``: new >= cur - tol;
    ``min``: new <= cur + tol). ``force`` passes regardless but records why.

    Raises:
        RegistryError: The new metrics lack ``metric`` (and ``force`` is not set).
    """
    if mode not in ("max", "min"):
        raise RegistryError(f'Got "{mode}" for registry.gate_mode: must be "max" or "min"')
    raw_new = new_metrics.get(metric)
    new_value = float(raw_new) if isinstance(raw_new, (int, float)) else None
    current_value: float | None = None
    if current_card is not None:
        raw_cur = (current_card.get("test_metrics") or {}).get(metric)
        current_value = float(raw_cur) if isinstance(raw_cur, (int, float)) else None

    def decision(passed: bool, reason: str) -> GateDecision:
        return GateDecision(passed, metric, mode, tolerance, new_value, current_value, current_version, force, reason)

    if new_value is None and not force:
        raise RegistryError(
            f"the test metrics have no numeric {metric!r} (registry.gate_metric); "
            f"got {sorted(new_metrics)}: evaluate the checkpoint on the test split, or pass --force"
        )
    if current_card is None:
        return decision(True, "no current version")
    if force:
        return decision(True, "forced (--force): the gate was not applied")
    if current_value is None:
        return decision(
            False,
            f"current version {current_version} has no {metric!r} in its test metrics, so the new one "
            "cannot be compared; use --force to promote anyway",
        )
    assert new_value is not None
    if mode == "max":
        passed = new_value >= current_value - tolerance
        word = "lower"
    else:
        passed = new_value <= current_value + tolerance
        word = "higher"
    if passed:
        return decision(True, f"{metric} {new_value:.6g} is not worse than current {current_value:.6g} (tolerance {tolerance:g})")
    return decision(
        False,
        f"{metric} {new_value:.6g} is {word} than current {current_version}'s {current_value:.6g} "
        f"by more than the tolerance {tolerance:g}; use --force to promote anyway",
    )


def build_card(
    checkpoint: str | os.PathLike[str],
    test_metrics: Mapping[str, Any],
    *,
    trial_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    now: Callable[[], str] = _utcnow,
) -> dict[str, Any]:
    """The model card fields of a checkpoint (everything except name and version)."""
    src = Path(checkpoint)
    meta = read_checkpoint_meta(src)
    try:
        pre = json.loads((src / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{src / PREPROCESSOR_FILE}: unreadable ({e})") from e
    return {
        "created": now(),
        "source_checkpoint": str(src.resolve()),
        "val_metrics": meta.get("metrics", {}),
        "test_metrics": dict(test_metrics),
        "trial_config": dict(trial_config) if trial_config is not None else meta.get("train_config", {}),
        "arch": meta.get("arch", {}),
        "epoch": meta.get("epoch"),
        "feature_names": pre.get("feature_names", []),
        # The training pipeline records the lake's content hash as data_fingerprint.
        "data_manifest_hash": meta.get("data_manifest_hash") or meta.get("data_fingerprint"),
        "versions": {
            "ray": _package_version("ray"),
            "torch": _package_version("torch"),
            "rayspace": _package_version("rayspace"),
            "python": platform.python_version(),
        },
        "sha256": meta.get("sha256", {}),
        **dict(extra or {}),
    }


def _resolve_checkpoint(checkpoint: str | os.PathLike[str], stack: Any) -> Path:
    """A local directory for the checkpoint (remote URIs are downloaded into a temp dir)."""
    text = os.fspath(checkpoint)
    try:
        uri = storage.canonical(text)
    except StorageError as e:
        raise CheckpointError(f'Got "{text}" for CHECKPOINT: {e}') from None
    if storage.is_local(uri):
        path = Path(uri)
        if not path.is_dir():
            raise CheckpointError(f'Got "{text}" for CHECKPOINT: not a directory')
        return path
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rayspace-ckpt-"))
    try:
        for fname in VERSION_FILES:
            Path(tmp, fname).write_bytes(storage.read_bytes(storage.join(uri, fname)))
    except FileNotFoundError as e:
        raise CheckpointError(f'Got "{text}" for CHECKPOINT: not a complete checkpoint ({e})') from e
    except StorageError as e:
        raise CheckpointError(f'Got "{text}" for CHECKPOINT: cannot fetch it ({e})') from e
    return Path(tmp)


def promote(
    registry_cfg: Any,
    checkpoint: str | os.PathLike[str],
    test_metrics: Mapping[str, Any],
    *,
    trial_config: Mapping[str, Any] | None = None,
    force: bool = False,
    registry: ModelRegistry | None = None,
    extra_card: Mapping[str, Any] | None = None,
    compare: Callable[[Path], Mapping[str, Any]] | None = None,
) -> PromotionResult:
    """Promote a checkpoint: write it as a new immutable version, then gate the ``current`` switch.

    The version is always written (so a rejected candidate stays inspectable);
    ``current`` moves to it only if the gate passes or ``force`` is set.

    Args:
        registry_cfg: A :class:`~workloads.config.RegistryConfig` (path, model_name, gate_*).
        checkpoint: Checkpoint directory (``workloads.model`` format), local or URI.
        test_metrics: Metrics on the held-out test split (``test_roc_auc``, ...).
        trial_config: The hyperparameters that produced it (default: the checkpoint's train config).
        force: Make it current whatever the gate says.
        registry: Registry to write (default: one at ``registry_cfg.path``).
        extra_card: More model-card fields (e.g. ``{"tune_trial": "..."}``).
        compare: Re-scores a current version's directory against the candidate on the same test
            rows (``workloads.evaluate.make_comparer``); the gate then compares those numbers, not
            the old card's (which may come from another test set), and the difference with its
            bootstrap interval goes on the card. Without it the old card's number is used.

    Returns:
        What was written and whether it became current.

    Raises:
        CheckpointError: The checkpoint is incomplete or corrupt.
        RegistryError: The registry cannot be read or written, or the gate metric is missing.
    """
    reg = registry or ModelRegistry(registry_cfg.path)
    name = registry_cfg.model_name
    with contextlib.ExitStack() as stack:
        src = _resolve_checkpoint(checkpoint, stack)
        card = build_card(src, test_metrics, trial_config=trial_config, extra=extra_card)
        # The canonical location, with its scheme (never the temp dir a remote one was fetched into).
        card["source_checkpoint"] = storage.canonical(checkpoint)
        previous = reg.current(name)
        decision, comparison = _gate_against(reg, registry_cfg, test_metrics, previous, force, compare)
        card["gate"] = asdict(decision)
        if comparison is not None:
            card["comparison"] = dict(comparison)
        mv = reg.add_version(name, src, card)
    now_current: str | None = previous
    if decision.passed:
        # A version that cannot load and answer never becomes current.
        try:
            reg.verify_servable(name, mv.version)
        except RegistryError as e:
            raise RegistryError(f"{e}; it was written but current stays {previous or 'unset'}") from e
        decision, now_current = _switch_current(reg, registry_cfg, mv.version, test_metrics, decision, previous, force,
                                                compare)
    if not decision.passed:
        logger.warning("%s %s not promoted: %s", name, mv.version, decision.reason)
    return PromotionResult(
        name=name, version=mv.version, uri=mv.uri, promoted=decision.passed,
        previous=previous, current=now_current, gate=decision,
    )


def _gate_against(
    reg: ModelRegistry, registry_cfg: Any, test_metrics: Mapping[str, Any], current: str | None, force: bool,
    compare: Callable[[Path], Mapping[str, Any]] | None,
) -> tuple[GateDecision, Mapping[str, Any] | None]:
    """Gate the candidate against ``current``: re-scored on the same rows when ``compare`` is given."""
    name, metric = registry_cfg.model_name, registry_cfg.gate_metric
    current_card = reg.card(name, current) if current else None
    comparison = None
    new_metrics: Mapping[str, Any] = test_metrics
    if current and compare is not None:
        comparison = compare(reg.local_path(name, current))
        current_card = {**(current_card or {}), "test_metrics": {metric: comparison["current"]}}
        new_metrics = {**test_metrics, metric: comparison["new"]}
    decision = gate(new_metrics, current_card, metric=metric, mode=registry_cfg.gate_mode,
                    tolerance=registry_cfg.gate_tolerance, force=force, current_version=current)
    if comparison is not None:
        lo, hi = comparison["ci95"]
        decision = replace(decision, reason=(
            f"{decision.reason}; re-scored on the same {comparison['rows']} test rows: {metric} "
            f"{comparison['new']:.4f} vs {comparison['current']:.4f}, difference {comparison['delta']:+.4f} "
            f"(95% bootstrap interval {lo:+.4f} to {hi:+.4f})"))
    return decision, comparison


def _switch_current(
    reg: ModelRegistry, registry_cfg: Any, version: str, test_metrics: Mapping[str, Any],
    decision: GateDecision, expected: str | None, force: bool,
    compare: Callable[[Path], Mapping[str, Any]] | None = None,
) -> tuple[GateDecision, str | None]:
    """Compare-and-swap ``current`` from the version the gate compared against.

    If another promotion switched it meanwhile, the gate runs again against the new
    current: the better version wins whichever finishes last, and the loser's version
    stays written but not current, with the reason.
    """
    name = registry_cfg.model_name
    for _attempt in range(10):
        try:
            reg.set_current(name, version, expected=expected)
            return decision, version
        except CurrentChangedError as e:
            expected = e.actual
            decision, _ = _gate_against(reg, registry_cfg, test_metrics, expected, force, compare)
            logger.info("%s: current moved to %s during the promotion of %s; gated again", name, expected, version)
            if not decision.passed:
                reason = f"{expected} became current while {version} was being promoted, and {decision.reason}"
                return replace(decision, reason=reason), expected
    raise RegistryError(f"{name} {version}: current kept moving during the promotion; try again")
