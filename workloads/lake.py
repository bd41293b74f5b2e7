"""The Parquet lake: validated partitions in immutable, versioned snapshots.

Layout (``<lake>`` is a local directory or any pyarrow/fsspec URI)::

    <lake>/patients/_current.json                          # THE pointer: the current snapshot, in full
    <lake>/patients/_snapshots/00000007.json               # history: one immutable record per committed snapshot
    <lake>/patients/source=<name>/<version>/part-00000.parquet   # an immutable partition version
    <lake>/patients/source=<name>/<version>/_manifest.json       # its schema, rows, content hash, origin, time
    <lake>/patients/_leases/00000007-<id>.json             # a reading run's hold on snapshot 7 (for `data gc`)

A snapshot is a set of partition versions, one per source. An ingest writes a new
version directory that no reader knows about, then commits by replacing the
pointer in one step (local: temp file + fsync + ``os.replace`` + fsync of the
directory; other filesystems: temp object + move). Before that step readers see
the previous snapshot, after it the new one; an interrupt or a kill anywhere
leaves one of the two, whole. Nothing is ever rewritten in place, so a reader
that resolved the pointer once reads exactly that snapshot's files however many
ingests land meanwhile. Old snapshots stay until :func:`gc` removes them: it keeps
the newest ``data.keep_snapshots`` and any snapshot a live lease holds.

Writers on a local filesystem are serialized by ``flock`` on ``patients/_lock``
(the kernel drops it when a process dies), so two concurrent ingests of different
sources both end up in the current snapshot. pyarrow's filesystems offer no
lock or conditional write, so on object storage run one writer at a time: the
pointer replacement itself is still all-or-nothing there (S3 and GCS create or
replace an object atomically; readers see the old or the new pointer, never a
part), but two overlapping writers can each commit, and the later one's snapshot
lacks the earlier one's partition (which stays in its own snapshot record).

Lakes in the earlier layout (``source=<name>/part-*.parquet`` + ``_manifest.json``,
no pointer) are read as they are, as snapshot 0, and adopted on the first write:
snapshot 1 references the old partitions in place (nothing is copied); the
replaced ones are deleted by :func:`gc` like any other old version.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workloads.exceptions import DataError, LakeCorruptError, LakeNotFoundError, SchemaError, StorageError
from workloads.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN, LAKE_SCHEMA, snake_case

logger = logging.getLogger(__name__)

TABLE = "patients"
MANIFEST = "_manifest.json"
POINTER = "_current.json"
SNAPSHOTS = "_snapshots"
LEASES = "_leases"
LOCK = "_lock"
FORMAT = "rayspace-lake/2"
BUILTIN_SOURCE = "wdbc"
_PART_RE = re.compile(r"^source=([A-Za-z0-9][A-Za-z0-9_.-]*)$")
_VERSION_RE = re.compile(r"^v(\d{8}T\d{6})-[0-9a-f]{8}$")
_RECORD_RE = re.compile(r"^(\d{8})\.json$")
_CHUNK_ROWS = 100_000


@dataclass
class Manifest:
    """What one committed partition version holds (its ``_manifest.json``)."""

    source: str
    origin: str
    row_count: int
    content_hash: str
    files: list[str]
    schema: list[dict[str, str]]
    created_at: str
    synthetic: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


@dataclass
class Committed(Manifest):
    """The manifest an ingest committed, with the snapshot it is part of.

    ``changed`` is false when the data equalled the current partition: no new
    snapshot was made (re-running the pipeline's ingest does not pile up copies).
    """

    snapshot: int = 0
    changed: bool = True


@dataclass(frozen=True)
class PartitionRef:
    """One partition version in a snapshot: its directory (relative to the table) and manifest."""

    path: str
    manifest: Manifest


@dataclass(frozen=True)
class Snapshot:
    """One consistent state of the lake.

    Attributes:
        id: 1, 2, ... in commit order; 0 is a lake in the earlier layout (no pointer yet).
        partitions: One version per source, sorted by source.
        created_at: When it was committed (ISO 8601, UTC).
        parent: The snapshot it was made from (None for the first).
        operation: What made it, e.g. ``ingest wdbc``.
    """

    id: int
    partitions: tuple[PartitionRef, ...]
    created_at: str = ""
    parent: int | None = None
    operation: str = ""

    @property
    def manifests(self) -> list[Manifest]:
        return [p.manifest for p in self.partitions]

    @property
    def fingerprint(self) -> str:
        return lake_fingerprint(self.manifests, self.id)

    def files(self, table: str) -> list[str]:
        return [_join(table, p.path, f) for p in self.partitions for f in p.manifest.files]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "snapshot": self.id, "parent": self.parent, "created_at": self.created_at,
            "operation": self.operation,
            "partitions": [{"path": p.path, "manifest": asdict(p.manifest)} for p in self.partitions],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Snapshot":
        parts = tuple(PartitionRef(p["path"], Manifest(**p["manifest"])) for p in d["partitions"])
        return cls(int(d["snapshot"]), parts, d.get("created_at", ""), d.get("parent"), d.get("operation", ""))


# ------------------------------------------------------------------ filesystem


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Resolve a lake URI (plain paths included) to a pyarrow filesystem and a path on it."""
    from workloads import storage

    try:
        return storage.filesystem(uri)
    except StorageError as e:
        raise DataError(f'Got "{uri}" for data.lake: {e}') from e


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def table_path(lake: str) -> tuple[pafs.FileSystem, str]:
    fs, root = _fs(lake)
    return fs, _join(root, TABLE)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _fsync_dir(path: str) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX: the directory holds the name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a new file that nothing references yet (durably, on a local disk)."""
    if _is_local(fs):
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    else:
        with fs.open_output_stream(path) as out:
            out.write(data)


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` all at once: readers see the old content or the new one, never a part.

    Local: temp file in the same directory, fsync, ``os.replace``, fsync the directory
    (so the switch survives a power cut). Elsewhere: temp object, then ``move``: a
    rename on HDFS and local-like fsspec filesystems; on S3/GCS a server-side copy,
    and creating or replacing one object is atomic there.
    """
    parent, name = path.rsplit("/", 1)
    tmp = _join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    if _is_local(fs):
        try:
            _write_bytes(fs, tmp, data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(parent)
        return
    try:
        _write_bytes(fs, tmp, data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def _read_json(fs: pafs.FileSystem, path: str, what: str) -> dict[str, Any]:
    try:
        with fs.open_input_stream(path) as f:
            value = json.loads(f.read().decode())
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        return value
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise LakeCorruptError(f"{path}: not a valid {what} ({e}); restore it or re-ingest into a new lake") from e


def _ensure_table(fs: pafs.FileSystem, table: str, lake: str) -> None:
    try:
        fs.create_dir(table, recursive=True)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f'Got "{lake}" for data.lake: cannot create {table} there ({e})') from e


@contextlib.contextmanager
def _writer_lock(fs: pafs.FileSystem, table: str) -> Iterator[None]:
    """Serialize commits and gc on one lake (local filesystems; a no-op elsewhere, see the module doc)."""
    if not _is_local(fs):
        yield
        return
    import fcntl

    with open(_join(table, LOCK), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------ validation


def _coerce_frame(df: pd.DataFrame, path: str, row_offset: int) -> pd.DataFrame:
    """Validate one chunk of input against the lake schema and return it in lake types.

    Missing measurements (empty cells, NaN) are allowed here: processing decides
    to drop or flag them. Anything that is present must be a number.

    Raises:
        SchemaError: naming the file, the row (1-based, data rows) and column.
    """
    if len(df.columns) == 1:
        header = str(df.columns[0])
        sep = next((d for d in (";", "\t", "|") if d in header), None)
        if sep is not None:
            raise SchemaError(path, f"the header is one column ({header[:40]!r}...): the file looks {sep!r}-separated; "
                                    "the lake reads comma-separated CSV (save it with ',' as the delimiter)")
    df = df.rename(columns={c: snake_case(str(c)) for c in df.columns})
    required = [ID_COLUMN, *FEATURE_NAMES, LABEL_COLUMN]
    missing = [c for c in required if c not in df.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise SchemaError(path, f"missing required column(s): {shown}")
    extra = [c for c in df.columns if c not in required]
    if extra:
        logger.warning("%s: ignoring %d column(s) not in the lake schema: %s", path, len(extra), extra[:5])

    out = pd.DataFrame(index=df.index)
    ids = df[ID_COLUMN]
    bad = ids.isna() | (ids.astype(str).str.strip() == "")
    if bad.any():
        raise SchemaError(path, "patient id is empty", row=row_offset + int(np.argmax(bad.to_numpy())) + 1, column=ID_COLUMN)
    out[ID_COLUMN] = ids.astype(str).str.strip()

    for col in FEATURE_NAMES:
        raw = df[col]
        if pd.api.types.is_bool_dtype(raw):
            raise SchemaError(path, "has type bool: must be numeric", column=col)
        if pd.api.types.is_numeric_dtype(raw):
            num = raw.astype("float64")
        else:
            num = pd.to_numeric(raw, errors="coerce")
            present = raw.notna() & (raw.astype(str).str.strip() != "")
            bad = present & num.isna()
            if bad.any():
                i = int(np.argmax(bad.to_numpy()))
                raise SchemaError(
                    path, f"non-numeric value {str(raw.iloc[i])!r}: measurements must be numbers",
                    row=row_offset + i + 1, column=col,
                )
            num = num.astype("float64")
        inf = np.isinf(num.to_numpy())
        if inf.any():
            raise SchemaError(path, "infinite value: measurements must be finite", row=row_offset + int(np.argmax(inf)) + 1, column=col)
        out[col] = num

    label = df[LABEL_COLUMN]
    mapped = label.map(lambda v: _label_value(v))
    bad = mapped.isna()
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise SchemaError(
            path, f"label {str(label.iloc[i])!r}: must be 1/0, true/false or M/B (malignant/benign)",
            row=row_offset + i + 1, column=LABEL_COLUMN,
        )
    out[LABEL_COLUMN] = mapped.astype("int8")
    return out


def _label_value(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return float(bool(v))
    if isinstance(v, (int, np.integer, float, np.floating)):
        return float(v) if v in (0, 1) else None
    s = str(v).strip().lower()
    return {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "m": 1.0, "b": 0.0, "malignant": 1.0, "benign": 0.0}.get(s)


def _iter_source_frames(source: str) -> Iterator[tuple[str, pd.DataFrame, int]]:
    """Yield ``(file, chunk, row_offset)`` for every CSV/Parquet file under ``source``."""
    fs, path = _fs(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f'Got "{source}" for --source: no such file or directory')
    if info.type == pafs.FileType.Directory:
        files = sorted(
            f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if f.type == pafs.FileType.File and f.path.lower().endswith((".csv", ".parquet", ".pq"))
            and not os.path.basename(f.path).startswith((".", "_"))
        )
        if not files:
            raise DataError(f'Got "{source}" for --source: the folder holds no .csv or .parquet file')
    else:
        files = [path]
    for f in files:
        lower = f.lower()
        if lower.endswith(".csv"):
            try:
                with fs.open_input_stream(f) as stream:
                    offset = 0
                    # Read as text so a stray "abc" is reported as non-numeric rather than silently NaN.
                    for chunk in pd.read_csv(stream, dtype=str, chunksize=_CHUNK_ROWS, keep_default_na=True):
                        yield f, chunk, offset
                        offset += len(chunk)
            except pd.errors.EmptyDataError as e:
                raise SchemaError(f, "empty file: a CSV needs a header row (patient_id, the 30 features, the label) "
                                     "and data rows") from e
            except (pd.errors.ParserError, UnicodeDecodeError) as e:
                raise SchemaError(f, f"not a readable CSV file ({e})") from e
        elif lower.endswith((".parquet", ".pq")):
            try:
                pf = pq.ParquetFile(f, filesystem=fs)
                offset = 0
                for batch in pf.iter_batches(batch_size=_CHUNK_ROWS):
                    chunk = batch.to_pandas()
                    yield f, chunk, offset
                    offset += len(chunk)
            except (pa.ArrowInvalid, OSError) as e:
                raise SchemaError(f, f"not a readable Parquet file ({e})") from e
        else:
            raise SchemaError(f, "unsupported file type: must be .csv or .parquet")


# ------------------------------------------------------------------ snapshots


def _record_path(table: str, snapshot_id: int) -> str:
    return _join(table, SNAPSHOTS, f"{snapshot_id:08d}.json")


def _read_pointer(fs: pafs.FileSystem, table: str) -> Snapshot | None:
    path = _join(table, POINTER)
    # Checked first: not every pyarrow filesystem maps a missing object to FileNotFoundError.
    if not _exists(fs, path):
        return None
    d = _read_json(fs, path, "lake pointer")
    try:
        return Snapshot.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise LakeCorruptError(f"{path}: not a valid lake pointer (missing or wrong {e})") from e


def _legacy_snapshot(fs: pafs.FileSystem, table: str) -> Snapshot:
    """A lake in the earlier layout: every ``source=<name>/`` holding a ``_manifest.json`` is one partition."""
    if not _exists(fs, table):
        return Snapshot(0, ())
    parts = []
    for info in fs.get_file_info(pafs.FileSelector(table)):
        base = os.path.basename(info.path)
        if info.type != pafs.FileType.Directory or not _PART_RE.match(base):
            continue
        mpath = _join(info.path, MANIFEST)
        if not _exists(fs, mpath):
            # An uncommitted partition of the earlier layout, or a folder of versions before the first pointer.
            logger.debug("skipping %s: no %s", info.path, MANIFEST)
            continue
        try:
            parts.append(PartitionRef(base, Manifest(**_read_json(fs, mpath, "partition manifest"))))
        except TypeError as e:
            raise LakeCorruptError(f"{mpath}: not a valid partition manifest ({e})") from e
    return Snapshot(0, tuple(sorted(parts, key=lambda p: p.manifest.source)))


def _head(fs: pafs.FileSystem, table: str) -> Snapshot:
    """The current snapshot: what the pointer names, else the earlier layout's partitions."""
    return _read_pointer(fs, table) or _legacy_snapshot(fs, table)


def _records(fs: pafs.FileSystem, table: str) -> dict[int, Snapshot]:
    """Every snapshot record kept in the history (unreadable ones are reported and skipped)."""
    folder = _join(table, SNAPSHOTS)
    if not _exists(fs, folder):
        return {}
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        m = _RECORD_RE.match(os.path.basename(info.path))
        if not m or info.type != pafs.FileType.File:
            continue
        try:
            out[int(m.group(1))] = Snapshot.from_dict(_read_json(fs, info.path, "snapshot record"))
        except (LakeCorruptError, KeyError, TypeError, ValueError) as e:
            logger.warning("ignoring unreadable snapshot record %s: %s", info.path, e)
    return out


def resolve(lake: str, snapshot: int | None = None) -> Snapshot:
    """The snapshot to read: ``snapshot`` if given, else the current one. Resolve once per run.

    Raises:
        LakeNotFoundError: ``snapshot`` was never committed or ``data gc`` removed it.
        LakeCorruptError: The pointer or a record is not valid JSON of the lake format.
    """
    fs, table = table_path(lake)
    head = _head(fs, table)
    if snapshot is None or snapshot == head.id:
        return head
    record = _record_path(table, snapshot)
    try:
        if _exists(fs, record):
            return Snapshot.from_dict(_read_json(fs, record, "snapshot record"))
    except FileNotFoundError:
        pass  # removed by gc between the two calls
    except (KeyError, TypeError, ValueError) as e:
        raise LakeCorruptError(f"{record}: not a valid snapshot record ({e})") from e
    kept = sorted(_records(fs, table))
    raise LakeNotFoundError(
        f"Got {snapshot} for data.snapshot: the lake at \"{lake}\" has no such snapshot "
        f"(kept: {kept or [head.id]}; current: {head.id}); `rayspace data list` shows them"
    )


def require(lake: str, snapshot: int | None = None, *, committed: bool = True) -> Snapshot:
    """Like :func:`resolve`, but a lake that is not there is an error, not an empty snapshot.

    Cheap and Ray-free, so commands check the lake before they start Ray.

    Args:
        lake: The lake root (``data.lake``).
        snapshot: ``data.snapshot``, or ``None`` for the current one.
        committed: Also refuse a lake that exists but holds no committed data (readers need some).

    Raises:
        LakeNotFoundError: Nothing at ``lake`` (a typo, or never ingested), ``snapshot`` is not
            kept, or (``committed``) the lake holds no data yet.
        LakeCorruptError: The pointer or a record is not valid.
    """
    fs, table = table_path(lake)
    if not _exists(fs, table):
        raise LakeNotFoundError(
            f'Got "{lake}" for data.lake: there is no lake there ({table} does not exist); '
            f"check the path, or create it with `rayspace data ingest --lake {lake}`"
        )
    snap = resolve(lake, snapshot)
    if committed and not snap.partitions:
        raise LakeNotFoundError(
            f'The lake at "{lake}" has no committed data: run `rayspace data ingest` (or set data.lake)'
        )
    return snap


def snapshot_history(lake: str) -> list[Snapshot]:
    """Every snapshot still kept, newest first (the current one included)."""
    fs, table = table_path(lake)
    head = _head(fs, table)
    recs = _records(fs, table)
    recs.setdefault(head.id, head)
    return [recs[i] for i in sorted(recs, reverse=True)]


def _commit(fs: pafs.FileSystem, table: str, ref: PartitionRef, operation: str) -> tuple[Snapshot, bool]:
    """Make ``ref`` its source's partition in a new current snapshot (the caller holds the writer lock).

    Returns:
        The current snapshot afterwards and whether it is new (false when ``ref`` held the
        same data as the current partition: then nothing changes).
    """
    head = _head(fs, table)
    same = next((p for p in head.partitions if p.manifest.source == ref.manifest.source), None)
    if same is not None and _same_data(same.manifest, ref.manifest):
        return head, False
    if head.partitions and not _exists(fs, _record_path(table, head.id)):
        # A kill between the last pointer switch and its record, or the first write to a lake of the
        # earlier layout (snapshot 0): record it, so pinned readers and gc see it like any other.
        fs.create_dir(_join(table, SNAPSHOTS), recursive=True)
        _write_atomic(fs, _record_path(table, head.id), json.dumps(head.to_dict(), indent=1).encode())
    parts = [p for p in head.partitions if p.manifest.source != ref.manifest.source] + [ref]
    new = Snapshot(
        head.id + 1, tuple(sorted(parts, key=lambda p: p.manifest.source)),
        created_at=_now().isoformat(timespec="seconds"), parent=head.id or None, operation=operation,
    )
    body = json.dumps(new.to_dict(), indent=1).encode()
    fs.create_dir(_join(table, SNAPSHOTS), recursive=True)
    # The commit point: before this replace readers get `head`, after it `new`.
    _write_atomic(fs, _join(table, POINTER), body)
    # History for pinned readers and gc; the pointer alone is enough to read `new`.
    _write_atomic(fs, _record_path(table, new.id), body)
    return new, True


def _same_data(a: Manifest, b: Manifest) -> bool:
    return (a.content_hash, a.row_count, a.origin, a.synthetic, a.notes) == (b.content_hash, b.row_count, b.origin, b.synthetic, b.notes)


def _references(fs: pafs.FileSystem, table: str, path: str) -> bool:
    """Whether the current snapshot holds the partition version at ``path`` (i.e. it was committed)."""
    try:
        return any(p.path == path for p in _head(fs, table).partitions)
    except (DataError, OSError):
        return True  # when in doubt, keep the data; gc sweeps real debris later


# ------------------------------------------------------------------ writing


class _PartitionWriter:
    """Writes one partition version into its own new directory; :meth:`commit` switches the pointer."""

    def __init__(self, lake: str, source: str):
        if not _PART_RE.match(f"source={source}"):
            raise DataError(f'Got "{source}" for the source name: must match [A-Za-z0-9][A-Za-z0-9_.-]*')
        self.fs, self.table = table_path(lake)
        _ensure_table(self.fs, self.table, lake)
        self.source = source
        # Unique and never reused: a reader holding an older snapshot's file names never sees them change.
        self.rel = f"source={source}/v{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.dir = _join(self.table, self.rel)
        self.fs.create_dir(self.dir, recursive=True)
        self.files: list[str] = []
        self.rows = 0
        self._hash = hashlib.sha256()
        self._seen_ids: set[str] | None = set()

    def write(self, frame: pd.DataFrame) -> None:
        if self._seen_ids is not None:
            ids = frame[ID_COLUMN]
            dup_inside = ids.duplicated()
            if dup_inside.any() or not self._seen_ids.isdisjoint(ids):
                dup = ids[dup_inside].iloc[0] if dup_inside.any() else next(iter(self._seen_ids.intersection(ids)))
                raise DataError(f"patient id {dup!r} appears more than once in source {self.source!r}: ids must be unique")
            # Ids are tracked only while it is cheap; synthetic cohorts generate unique ids by construction.
            if len(self._seen_ids) < 5_000_000:
                self._seen_ids.update(ids)
        table = pa.Table.from_pandas(frame[[f.name for f in LAKE_SCHEMA]], schema=LAKE_SCHEMA, preserve_index=False)
        name = f"part-{len(self.files):05d}.parquet"
        path = _join(self.dir, name)
        if _is_local(self.fs):
            with open(path, "wb") as out:
                pq.write_table(table, out, compression="zstd")
                out.flush()
                os.fsync(out.fileno())  # on disk before any pointer can name it
        else:
            with self.fs.open_output_stream(path) as out:
                pq.write_table(table, out, compression="zstd")
        self._hash.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        self.files.append(name)
        self.rows += len(frame)

    def commit(self, origin: str, *, synthetic: bool = False, notes: dict[str, Any] | None = None) -> Committed:
        if self.rows == 0:
            raise DataError(f"{origin}: no rows to ingest")
        manifest = Manifest(
            source=self.source,
            origin=origin,
            row_count=self.rows,
            content_hash="sha256:" + self._hash.hexdigest(),
            files=self.files,
            schema=[{"name": f.name, "type": str(f.type)} for f in LAKE_SCHEMA],
            created_at=_now().isoformat(timespec="seconds"),
            synthetic=synthetic,
            notes=notes or {},
        )
        _write_bytes(self.fs, _join(self.dir, MANIFEST), manifest.to_json().encode())
        if _is_local(self.fs):
            _fsync_dir(self.dir)
        with _writer_lock(self.fs, self.table):
            snap, changed = _commit(self.fs, self.table, PartitionRef(self.rel, manifest), f"ingest {self.source}")
        if not changed:
            self.abort()
            current = next(p.manifest for p in snap.partitions if p.manifest.source == self.source)
            logger.info("source %s unchanged (%s): snapshot %d stays current", self.source, manifest.content_hash, snap.id)
            return Committed(**asdict(current), snapshot=snap.id, changed=False)
        logger.info("committed %d rows to %s as snapshot %d", self.rows, self.dir, snap.id)
        return Committed(**asdict(manifest), snapshot=snap.id, changed=True)

    def abort(self) -> None:
        # An interrupt right after the pointer switch must not delete what is now current.
        if _exists(self.fs, self.dir) and not _references(self.fs, self.table, self.rel):
            self.fs.delete_dir(self.dir)


def _write_partition(
    lake: str, source: str, frames: Iterable[pd.DataFrame], origin: str, *, synthetic: bool = False,
    notes: dict[str, Any] | None = None,
) -> Committed:
    writer = _PartitionWriter(lake, source)
    try:
        for frame in frames:
            writer.write(frame)
        return writer.commit(origin, synthetic=synthetic, notes=notes)
    except BaseException:
        # Includes KeyboardInterrupt: an interrupted ingest must leave nothing a reader sees.
        writer.abort()
        raise


# ------------------------------------------------------------------ leases and gc
#
# "In use" is known from lease files: a run that reads a snapshot writes
# _leases/<snapshot>-<id>.json (host, pid, time) when it resolves the snapshot and
# deletes it when its process exits. `data gc` keeps every snapshot with a live
# lease. A lease is stale, and ignored and deleted by gc, when its process is gone
# (checked only on the same host: another pod's pids mean nothing here) or when it
# is older than data.lease_ttl_hours (a killed process on another host never
# removes its lease; a run longer than the TTL should raise it).


@dataclass(frozen=True)
class Lease:
    """A reading run's hold on one snapshot."""

    path: str
    snapshot: int
    host: str
    pid: int
    created_at: str
    purpose: str = ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def _lease_stale(lease: Lease, ttl_hours: float, now: _dt.datetime) -> str | None:
    """Why ``lease`` no longer holds its snapshot, or None while it is live."""
    try:
        age_h = (now - _dt.datetime.fromisoformat(lease.created_at)).total_seconds() / 3600
    except (TypeError, ValueError):
        return f"unreadable time {lease.created_at!r}"
    if age_h > ttl_hours:
        return f"{age_h:.1f}h old, over data.lease_ttl_hours={ttl_hours:g}"
    if lease.host == socket.gethostname() and not _pid_alive(lease.pid):
        return f"its process {lease.pid} on {lease.host} has exited"
    return None


def acquire_lease(lake: str, snapshot: int, purpose: str = "") -> Lease:
    """Record that this process reads ``snapshot``, so ``data gc`` keeps it.

    Raises:
        LakeNotFoundError: The snapshot was removed before the lease landed.
    """
    fs, table = table_path(lake)
    fs.create_dir(_join(table, LEASES), recursive=True)
    path = _join(table, LEASES, f"{snapshot:08d}-{uuid.uuid4().hex[:12]}.json")
    lease = Lease(path, snapshot, socket.gethostname(), os.getpid(), _now().isoformat(timespec="seconds"), purpose)
    _write_bytes(fs, path, json.dumps(asdict(lease)).encode())
    # gc may have run between resolving and leasing: only a snapshot that still exists is held.
    if _head(fs, table).id != snapshot and not _exists(fs, _record_path(table, snapshot)):
        release_lease(lake, lease)
        raise LakeNotFoundError(f"snapshot {snapshot} of the lake at \"{lake}\" was removed by `data gc` while being opened")
    return lease


def release_lease(lake: str, lease: Lease) -> None:
    fs, _ = table_path(lake)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(lease.path)


def list_leases(lake: str) -> list[Lease]:
    fs, table = table_path(lake)
    folder = _join(table, LEASES)
    if not _exists(fs, folder):
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if info.type != pafs.FileType.File or not info.path.endswith(".json") or os.path.basename(info.path).startswith("."):
            continue
        try:
            d = _read_json(fs, info.path, "lease")
            out.append(Lease(**{**d, "path": info.path}))
        except FileNotFoundError:
            continue  # released meanwhile
        except (LakeCorruptError, TypeError) as e:
            # Unreadable: treated as stale (age 0 would keep it forever); gc deletes it.
            logger.warning("unreadable lease %s: %s", info.path, e)
            out.append(Lease(info.path, -1, "", 0, ""))
    return out


_held: dict[tuple[str, int], Lease] = {}
_held_lock = threading.Lock()


def hold(lake: str, snapshot: int, purpose: str = "") -> Lease | None:
    """Lease ``snapshot`` for the rest of this process (once per lake and snapshot); released at exit.

    Snapshot 0 (a lake in the earlier layout) needs no lease: nothing collects it.
    A lake this process cannot write (read-only mount) is read without a lease,
    with a warning: gc run by someone else may then remove it after it stops being current.
    """
    if snapshot == 0:
        return None
    key = (lake, snapshot)
    with _held_lock:
        if key in _held:
            return _held[key]
        try:
            lease = acquire_lease(lake, snapshot, purpose)
        except (OSError, pa.ArrowException) as e:
            logger.warning("reading snapshot %d of %s without a lease (data gc cannot see this run): %s", snapshot, lake, e)
            return None
        if not _held:
            atexit.register(release_held)
        _held[key] = lease
        return lease


def release_held() -> None:
    """Release every lease :func:`hold` took (runs at interpreter exit)."""
    with _held_lock:
        for (lake, _), lease in list(_held.items()):
            with contextlib.suppress(Exception):
                release_lease(lake, lease)
        _held.clear()


@dataclass
class GcReport:
    """What :func:`gc` kept and removed."""

    current: int
    kept: list[int]
    removed: list[int]
    removed_versions: list[str]
    held: dict[int, int]
    stale_leases: list[str]
    swept: list[str]
    dry_run: bool


def _version_age_h(name: str, now: _dt.datetime) -> float | None:
    m = _VERSION_RE.match(name)
    if not m:
        return None
    born = _dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc)
    return (now - born).total_seconds() / 3600


def _delete_version(fs: pafs.FileSystem, table: str, ref: PartitionRef) -> None:
    path = _join(table, ref.path)
    if "/" in ref.path:
        if _exists(fs, path):
            fs.delete_dir(path)
        return
    # A partition of the earlier layout: its directory also holds the newer versions.
    for name in [*ref.manifest.files, MANIFEST]:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(_join(path, name))


def gc(lake: str, *, keep: int, lease_ttl_hours: float, dry_run: bool = False) -> GcReport:
    """Delete old snapshots and the partition versions only they use.

    Kept: the current snapshot, the newest ``keep`` snapshots, and every snapshot a
    live lease holds. Also swept: partition versions no kept snapshot names that are
    older than ``lease_ttl_hours`` (left by killed ingests; younger ones may be an
    ingest in progress).

    Raises:
        DataError: ``keep`` < 1.
        LakeNotFoundError: No lake at ``lake``.
    """
    if keep < 1:
        raise DataError(f"Got {keep} for data.keep_snapshots: must be >= 1 (the current snapshot is always kept)")
    fs, table = table_path(lake)
    if not _exists(fs, table):
        raise LakeNotFoundError(f'No lake at "{lake}": run `rayspace data ingest` (or set data.lake)')
    now = _now()
    with _writer_lock(fs, table):
        head = _read_pointer(fs, table)
        if head is None:  # the earlier layout: one state, nothing to collect until the first write
            return GcReport(0, [0], [], [], {}, [], [], dry_run)
        recs = _records(fs, table)
        if head.id not in recs and not dry_run:
            _write_atomic(fs, _record_path(table, head.id), json.dumps(head.to_dict(), indent=1).encode())
        recs[head.id] = head
        held: dict[int, int] = {}
        stale = []
        for lease in list_leases(lake):
            why = _lease_stale(lease, lease_ttl_hours, now) if lease.snapshot >= 0 else "unreadable"
            if why:
                stale.append(f"{os.path.basename(lease.path)} ({why})")
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        fs.delete_file(lease.path)
            else:
                held[lease.snapshot] = held.get(lease.snapshot, 0) + 1
        kept = set(sorted(recs, reverse=True)[:keep]) | {head.id} | (set(held) & set(recs))
        removed = sorted(set(recs) - kept)
        live = {p.path for i in kept for p in recs[i].partitions}
        dead = {p.path: p for i in removed for p in recs[i].partitions if p.path not in live}
        if not dry_run:
            # Records first: a crash midway leaves unnamed files (swept later), never a record naming deleted ones.
            for i in removed:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(_record_path(table, i))
            for ref in dead.values():
                _delete_version(fs, table, ref)
        swept = _sweep(fs, table, live | set(dead), lease_ttl_hours, now, dry_run)
    logger.info("gc %s: kept %s, removed %s", lake, sorted(kept), removed)
    return GcReport(head.id, sorted(kept, reverse=True), removed, sorted(dead), held, stale, swept, dry_run)


def _sweep(fs: pafs.FileSystem, table: str, named: set[str], ttl_hours: float, now: _dt.datetime, dry_run: bool) -> list[str]:
    """Debris of interrupted writes older than ``ttl_hours``: unnamed versions, temp files, old-layout temp dirs."""
    swept = []
    for info in fs.get_file_info(pafs.FileSelector(table)):
        base = os.path.basename(info.path)
        if info.type == pafs.FileType.Directory and _PART_RE.match(base):
            for sub in fs.get_file_info(pafs.FileSelector(info.path)):
                name = os.path.basename(sub.path)
                age = _version_age_h(name, now)
                if sub.type == pafs.FileType.Directory and age is not None and age > ttl_hours and f"{base}/{name}" not in named:
                    swept.append(f"{base}/{name}")
                    if not dry_run:
                        fs.delete_dir(sub.path)
        elif base.startswith((".tmp-", ".trash-", f".{POINTER}.tmp-")):
            mtime = info.mtime
            if mtime is not None and mtime.tzinfo is None:
                mtime = mtime.replace(tzinfo=_dt.timezone.utc)
            if mtime is not None and (now - mtime).total_seconds() / 3600 > ttl_hours:
                swept.append(base)
                if not dry_run:
                    (fs.delete_dir if info.type == pafs.FileType.Directory else fs.delete_file)(info.path)
    return swept


# ------------------------------------------------------------------ public API


def builtin_frame() -> pd.DataFrame:
    """The Wisconsin Diagnostic Breast Cancer data shipped with scikit-learn, in lake form (569 patients)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    df = bunch.data.rename(columns=snake_case)
    df.insert(0, ID_COLUMN, [f"wdbc-{i:05d}" for i in range(len(df))])
    # scikit-learn codes malignant as 0; the lake's positive class is malignant.
    df[LABEL_COLUMN] = (bunch.target == 0).astype("int8")
    return df


def ingest(lake: str, source: str | None = None, *, name: str | None = None) -> Committed:
    """Write a dataset into the lake as one atomically committed partition.

    Args:
        lake: Lake root (``data.lake``).
        source: CSV/Parquet file or folder; ``None`` ingests the built-in WDBC dataset.
        name: Partition name; defaults to ``wdbc`` for the built-in data, else the file/folder stem.

    Returns:
        The committed partition's manifest, with the snapshot it made current (an unchanged
        re-ingest makes no new snapshot and returns the current one, ``changed=False``).

    Raises:
        SchemaError: A file does not match the schema (file, row, column, reason).
        DataError: The source cannot be read or holds no rows.
    """
    if source is None:
        frame = builtin_frame()
        return _write_partition(
            lake, name or BUILTIN_SOURCE, [_coerce_frame(frame, "sklearn:load_breast_cancer", 0)],
            origin="scikit-learn load_breast_cancer (UCI Wisconsin Diagnostic Breast Cancer, 569 patients)",
        )
    stem = os.path.splitext(os.path.basename(source.rstrip("/")))[0]
    part_name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("-_.") or "upload"
    frames = (_coerce_frame(chunk, f, offset) for f, chunk, offset in _iter_source_frames(source))
    return _write_partition(lake, part_name, frames, origin=source)


def synth_lake(lake: str) -> str:
    """Where ``data synth`` writes by default: a lake beside ``lake`` (``./lake`` -> ``./lake-synth``).

    A separate lake keeps synthetic rows out of anything trained on ``data.lake``.
    """
    return lake.rstrip("/") + "-synth"


def fit_generator(real: pd.DataFrame, *, salt: str, val_fraction: float, test_fraction: float) -> dict[str, Any]:
    """Fit the synthetic generator on the TRAINING-split patients of ``real`` only.

    The split is the one processing uses (:func:`workloads.data.split_of`), so no
    validation or test patient of the real data shapes the synthetic cohort: a model
    trained on synthetic plus real data learns nothing about those patients from it.

    Returns:
        ``p_malignant``, per-class ``(mean, cov)`` in log1p space, and ``patients`` fitted on.
    """
    from workloads.data import split_of

    in_train = np.array([split_of(str(pid), salt, val_fraction, test_fraction) == "train" for pid in real[ID_COLUMN]])
    train = real[in_train]
    labels = train[LABEL_COLUMN].to_numpy()
    if len(train) == 0 or len(np.unique(labels)) < 2:
        raise DataError(f"the training split of the real data has {len(train)} patients, not both classes: cannot fit a generator")
    feats = train[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    params: dict[str, Any] = {"p_malignant": float(labels.mean()), "patients": int(len(train))}
    for k in (0, 1):
        x = np.log1p(np.clip(feats[labels == k], 0, None))  # log space keeps measurements positive
        params[k] = (x.mean(axis=0), np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1]))
    return params


def synth(
    lake: str, rows: int, *, salt: str, val_fraction: float, test_fraction: float, seed: int = 0,
    chunk_rows: int = _CHUNK_ROWS, name: str = "synthetic", real: pd.DataFrame | None = None,
) -> Committed:
    """Write a synthetic cohort with the lake schema, generated chunk by chunk.

    Rows are drawn from class-conditional Gaussians (in log space) fitted to the
    training-split patients of the real WDBC data (``real`` replaces it, for tests),
    with their class balance. They are NOT patient data; the manifest says
    ``synthetic: true``. Memory stays bounded by ``chunk_rows`` whatever ``rows`` is.

    Args:
        lake: Lake to write into; the CLI defaults to :func:`synth_lake` of ``data.lake``.
        salt, val_fraction, test_fraction: The ``data`` section's split, so the generator
            sees exactly the patients processing would put in training.
    """
    if rows < 1:
        raise DataError(f"Got {rows} for --rows: must be >= 1")
    params = fit_generator(builtin_frame() if real is None else real, salt=salt, val_fraction=val_fraction,
                           test_fraction=test_fraction)
    p_malignant = params["p_malignant"]
    rng = np.random.default_rng(seed)

    def frames() -> Iterator[pd.DataFrame]:
        done = 0
        while done < rows:
            n = min(chunk_rows, rows - done)
            y = (rng.random(n) < p_malignant).astype("int8")
            x = np.empty((n, len(FEATURE_NAMES)))
            for k in (0, 1):
                idx = np.flatnonzero(y == k)
                mean, cov = params[k]
                draws = rng.multivariate_normal(mean, cov, size=len(idx), method="cholesky")
                # Measurements are non-negative; concavity features sit at 0 for many real patients.
                x[idx] = np.clip(np.expm1(draws), 0.0, None)
            df = pd.DataFrame(x, columns=list(FEATURE_NAMES))
            df.insert(0, ID_COLUMN, [f"synth-{seed}-{i:09d}" for i in range(done, done + n)])
            df[LABEL_COLUMN] = y
            done += n
            yield df

    writer_notes = {
        "seed": seed,
        "generator": "class-conditional log-normal fitted to the training split of WDBC",
        "fitted_on": {"patients": params["patients"], "split_salt": salt, "val_fraction": val_fraction,
                      "test_fraction": test_fraction},
    }
    return _write_partition(lake, name, frames(), origin=f"synthetic ({rows} rows)", synthetic=True, notes=writer_notes)


def list_partitions(lake: str, snapshot: int | None = None) -> list[Manifest]:
    """Manifests of the current (or the given) snapshot's partitions, sorted by source."""
    return resolve(lake, snapshot).manifests


def lake_files(
    lake: str, *, include_synthetic: bool = True, snapshot: int | None = None,
) -> tuple[pafs.FileSystem, list[str], list[Manifest]]:
    """The Parquet files of one snapshot (the current one unless ``snapshot`` is given).

    Prefer :func:`resolve` plus :meth:`Snapshot.files` when the snapshot id is needed too.

    Raises:
        LakeNotFoundError: The snapshot has no partition.
    """
    fs, table = table_path(lake)
    snap = resolve(lake, snapshot)
    refs = [p for p in snap.partitions if include_synthetic or not p.manifest.synthetic]
    if not refs:
        raise LakeNotFoundError(
            f'The lake at "{lake}" has no committed data: run `rayspace data ingest` (or set data.lake)'
        )
    files = [_join(table, p.path, f) for p in refs for f in p.manifest.files]
    return fs, files, [p.manifest for p in refs]


def lake_fingerprint(manifests: list[Manifest], snapshot: int = 0) -> str:
    """The data's identity, recorded with runs and models for lineage.

    ``sha256:<hash of the partitions' sources, content hashes and row counts>``, plus
    ``@snapshot-<id>`` for a versioned lake, so a run names the exact snapshot it read
    (``--set data.snapshot=<id>`` reads it again while it is kept) and the data it held.
    The hash part is what it was before snapshots existed, for the same data.
    """
    h = hashlib.sha256()
    for m in sorted(manifests, key=lambda m: m.source):
        h.update(f"{m.source}:{m.content_hash}:{m.row_count}\n".encode())
    return "sha256:" + h.hexdigest() + (f"@snapshot-{snapshot}" if snapshot else "")
