"""Storage locations: every place the workspace writes, in one canonical form.

The lake, training results, Tune sweeps, evaluation reports and the registry all
live under settings that take "a local path or a URI". This module is the one
place that turns such a value into a canonical string and a filesystem, so a
location that goes in (``s3://bucket/results/run/checkpoint_...``) comes out of
evaluate, promote and the registry with the same scheme.

Canonical form:

* local storage: an absolute, normalized path without a scheme (``/data/results``);
  ``~/x``, ``./x`` and ``file:///x`` become this (``file://x`` is the relative path ``x``);
* everything else: ``<scheme>://<rest>`` with a lowercase scheme, no trailing
  ``/`` and the query string kept (pyarrow reads options such as
  ``?endpoint_override=host:port&scheme=http`` from it).

Filesystems come from pyarrow (what Ray Train itself uses for ``storage_path``),
with fsspec for the schemes pyarrow lacks (``memory://``, ...). Engines such as
Ray Train and Tune hand back paths *on* the filesystem, without the scheme
(``bucket/results/run/checkpoint_...``); :func:`from_fs_path` puts the storage
setting's scheme back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from workloads.exceptions import StorageError

logger = logging.getLogger(__name__)

#: Schemes pyarrow opens itself (``FileSystem.from_uri``).
PYARROW_SCHEMES = frozenset({"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})
#: Schemes whose filesystem paths leave out the URI's authority (``hdfs://namenode:8020/x`` -> ``/x``).
_AUTHORITY_OUTSIDE_PATH = frozenset({"hdfs", "viewfs"})
#: Schemes whose authority is a bucket/container that must be named.
_BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs", "abfs", "abfss"})

RULE = (
    "must be a local path or a URI with a scheme pyarrow or fsspec can open "
    "(s3://bucket/prefix, gs://bucket/prefix, hdfs://host/path, file:///abs/path, ...)"
)


def _split(value: str) -> tuple[str | None, str, str]:
    """``(scheme, rest, query)``; scheme is ``None`` for a plain path."""
    if "://" not in value:
        return None, value, ""
    scheme, rest = value.split("://", 1)
    rest, _, query = rest.partition("?")
    return scheme.lower(), rest, query


def _known_schemes() -> frozenset[str]:
    try:
        from fsspec.registry import known_implementations
    except ImportError:  # pragma: no cover - fsspec is a dependency
        return PYARROW_SCHEMES
    return PYARROW_SCHEMES | frozenset(known_implementations)


def check(value: str) -> str:
    """Validate a storage setting's form (no I/O); return it unchanged.

    Relative paths stay relative here: whether they are allowed depends on where
    the code runs (a Ray job refuses them, see :mod:`workloads.jobs`).

    Raises:
        ValueError: The rule the value breaks (config validators turn it into
            ``Got "<value>" for <field>: <rule>``).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(RULE)
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if "://" not in value:
        if ":" in value.split("/", 1)[0]:
            raise ValueError(f"looks like a URI without '//' ({value.split(':', 1)[0]}:...): {RULE}")
        return value
    scheme, rest, _ = _split(value)
    if not scheme or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise ValueError(RULE)
    if scheme not in _known_schemes():
        raise ValueError(f"unknown scheme {scheme}://: {RULE}")
    if scheme == "file":
        # file://rel is read as the relative path rel (as before); a Ray job refuses relative ones.
        if not rest.strip():
            raise ValueError("file:// names no path: use file:///abs/path (three slashes) or a plain path")
        return value
    if not rest.strip("/"):
        raise ValueError(f"{scheme}:// names no location: {RULE}")
    if scheme in _BUCKET_SCHEMES and rest.startswith("/"):
        raise ValueError(f"{scheme}:// must be followed by the bucket: {scheme}://bucket/prefix")
    return value


def canonical(value: str | os.PathLike[str]) -> str:
    """The canonical form of a path or URI (see the module doc).

    Raises:
        StorageError: The value is not a storage location.
    """
    text = os.fspath(value)
    try:
        check(text)
    except ValueError as e:
        raise StorageError(f'Got "{text}" for a storage location: {e}') from None
    scheme, rest, query = _split(text)
    if scheme is None:
        return os.path.abspath(os.path.expanduser(text))
    if scheme == "file":
        return os.path.abspath(os.path.expanduser(rest))
    rest = rest.rstrip("/") or rest
    return f"{scheme}://{rest}" + (f"?{query}" if query else "")


def is_local(uri: str) -> bool:
    """Whether a location is on the local (or a mounted) filesystem."""
    return _split(os.fspath(uri))[0] in (None, "file")


def join(base: str, *parts: str) -> str:
    """``base/part/...`` in canonical form, keeping ``base``'s scheme and query."""
    uri = canonical(base)
    scheme, rest, query = _split(uri)
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if scheme is None:
        return os.path.join(uri, *clean) if clean else uri
    rest = "/".join([rest.rstrip("/"), *clean])
    return f"{scheme}://{rest}" + (f"?{query}" if query else "")


def name(uri: str) -> str:
    """The last component of a location (``.../run/checkpoint_1`` -> ``checkpoint_1``)."""
    _, rest, _ = _split(canonical(uri))
    return rest.rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    """The location one level up, with the same scheme and query."""
    c = canonical(uri)
    scheme, rest, query = _split(c)
    if scheme is None:
        return os.path.dirname(c)
    head = rest.rstrip("/").rsplit("/", 1)[0] if "/" in rest.rstrip("/") else rest
    return f"{scheme}://{head}" + (f"?{query}" if query else "")


def from_fs_path(base: str, fs_path: str) -> str:
    """Turn a path on ``base``'s filesystem (what Ray Train and Tune report) back into a URI.

    Ray hands back ``bucket/results/run/checkpoint_...`` for ``storage_path=s3://bucket/results``;
    this returns ``s3://bucket/results/run/checkpoint_...``. A value that already is a
    URI, or any path for local storage, is only made canonical.

    Args:
        base: The storage setting the path was produced under.
        fs_path: A path on that storage's filesystem (or already a URI).
    """
    fs_path = os.fspath(fs_path)
    if "://" in fs_path:
        return canonical(fs_path)
    scheme, rest, query = _split(canonical(base))
    if scheme is None:
        return canonical(fs_path)
    if scheme in _AUTHORITY_OUTSIDE_PATH:
        authority = rest.split("/", 1)[0]
        path = f"{authority}/{fs_path.lstrip('/')}"
    else:
        path = fs_path.lstrip("/")
    return f"{scheme}://{path.rstrip('/')}" + (f"?{query}" if query else "")


# --------------------------------------------------------------------- filesystems


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path on it for a location (fsspec for schemes pyarrow lacks).

    Raises:
        StorageError: Neither pyarrow nor fsspec can open the scheme (e.g. ``s3fs`` missing).
    """
    c = canonical(uri)
    if is_local(c):
        return pafs.LocalFileSystem(), c
    try:
        return pafs.FileSystem.from_uri(c)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(c)
        except (ImportError, ValueError) as e2:
            raise StorageError(f"{c}: no pyarrow or fsspec filesystem opens it ({e}; {e2})") from e2
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    except OSError as e:
        raise StorageError(f"{c}: cannot open its filesystem ({e})") from e


def _info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    """Whether a file or directory exists at a location."""
    fs, path = filesystem(uri)
    try:
        return _info(fs, path).type != pafs.FileType.NotFound
    except OSError as e:
        raise StorageError(f"{canonical(uri)}: cannot check it ({e})") from e


def is_dir(uri: str) -> bool:
    """Whether a location is a directory (a prefix with objects under it, on object stores)."""
    fs, path = filesystem(uri)
    try:
        return _info(fs, path).type == pafs.FileType.Directory
    except OSError as e:
        raise StorageError(f"{canonical(uri)}: cannot check it ({e})") from e


def list_dir(uri: str) -> list[tuple[str, bool]]:
    """``(name, is_directory)`` of each entry directly under a location; ``[]`` if it does not exist."""
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StorageError(f"{canonical(uri)}: cannot list it ({e})") from e
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def read_bytes(uri: str) -> bytes:
    """The whole content of a file.

    Raises:
        FileNotFoundError: Nothing is there.
        StorageError: It could not be read.
    """
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        # pyarrow reports a missing object as a plain OSError on some stores: look before deciding.
        try:
            missing = _info(fs, path).type == pafs.FileType.NotFound
        except OSError:
            missing = False
        if missing or isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{canonical(uri)}: no such file") from e
        raise StorageError(f"{canonical(uri)}: cannot read it ({e})") from e


def write_bytes(uri: str, data: bytes) -> str:
    """Write a whole file so that readers see the old content or the new one, never a part.

    Local: a temporary file beside the target, fsynced and renamed over it. Object
    stores: one PUT, which they make visible atomically.

    Returns:
        The canonical location written.

    Raises:
        StorageError: It could not be written.
    """
    target = canonical(uri)
    if is_local(target):
        folder = os.path.dirname(target)
        tmp = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"{target}: cannot write it ({e.strerror or e})") from e
        return target
    fs, path = filesystem(target)
    try:
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"{target}: cannot write it ({e})") from e
    return target


def upload_file(local_path: str | os.PathLike[str], uri: str) -> str:
    """Copy one local file to a location (atomically, as :func:`write_bytes`)."""
    return write_bytes(uri, Path(local_path).read_bytes())


def download_dir(uri: str, dest: str | os.PathLike[str]) -> Path:
    """Copy everything under a location into a local directory (created if missing).

    Raises:
        FileNotFoundError: There is no directory at ``uri``.
        StorageError: The copy failed.
    """
    fs, path = filesystem(uri)
    dest = Path(dest)
    try:
        if _info(fs, path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{canonical(uri)}: no such directory")
        dest.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except FileNotFoundError:
        raise
    except OSError as e:
        raise StorageError(f"{canonical(uri)}: cannot download it ({e})") from e
    return dest
