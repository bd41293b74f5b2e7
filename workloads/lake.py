"""The Parquet lake: data collection with atomic, validated partitions.

Layout (``<lake>`` is a local directory or any pyarrow/fsspec URI)::

    <lake>/patients/source=<name>/part-00000.parquet
    <lake>/patients/source=<name>/_manifest.json     # written last: marks the partition committed

Each ingest writes one partition into a hidden temporary directory beside it and
renames it into place only after every file and the manifest are written, so an
interrupted or rejected ingest leaves nothing a reader would pick up. Readers
only see partitions that hold a ``_manifest.json``. Re-ingesting a source
replaces its partition (the same source twice never duplicates patients).

On a local filesystem (and HDFS) the final rename is atomic. On object stores
(S3, GCS) a "rename" is a copy: readers still ignore the partition until its
manifest lands, but replacing an existing partition has a short window where it
is absent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workloads.exceptions import DataError, LakeNotFoundError, SchemaError
from workloads.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN, LAKE_SCHEMA, snake_case

logger = logging.getLogger(__name__)

TABLE = "patients"
MANIFEST = "_manifest.json"
BUILTIN_SOURCE = "wdbc"
_PART_RE = re.compile(r"^source=([A-Za-z0-9][A-Za-z0-9_.-]*)$")
_CHUNK_ROWS = 100_000


@dataclass
class Manifest:
    """What one committed partition holds."""

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


# ------------------------------------------------------------------ filesystem


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Resolve a lake URI (plain paths included) to a pyarrow filesystem and a path on it."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        # fsspec covers schemes pyarrow lacks (memory://, gcs via gcsfs, ...).
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e2:
            raise DataError(f'Got "{uri}" for data.lake: no pyarrow or fsspec filesystem handles it ({e2})') from e
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def table_path(lake: str) -> tuple[pafs.FileSystem, str]:
    fs, root = _fs(lake)
    return fs, _join(root, TABLE)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


# ------------------------------------------------------------------ validation


def _coerce_frame(df: pd.DataFrame, path: str, row_offset: int) -> pd.DataFrame:
    """Validate one chunk of input against the lake schema and return it in lake types.

    Missing measurements (empty cells, NaN) are allowed here: processing decides
    to drop or flag them. Anything that is present must be a number.

    Raises:
        SchemaError: naming the file, the row (1-based, data rows) and column.
    """
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


# ------------------------------------------------------------------ writing


class _PartitionWriter:
    """Writes one partition into a hidden temp dir; :meth:`commit` renames it into place."""

    def __init__(self, lake: str, source: str):
        if not _PART_RE.match(f"source={source}"):
            raise DataError(f'Got "{source}" for the source name: must match [A-Za-z0-9][A-Za-z0-9_.-]*')
        self.fs, self.table = table_path(lake)
        self.source = source
        self.final = _join(self.table, f"source={source}")
        self.tmp = _join(self.table, f".tmp-{source}-{uuid.uuid4().hex[:8]}")
        self.fs.create_dir(self.tmp, recursive=True)
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
        with self.fs.open_output_stream(_join(self.tmp, name)) as out:
            pq.write_table(table, out, compression="zstd")
        self._hash.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        self.files.append(name)
        self.rows += len(frame)

    def commit(self, origin: str, *, synthetic: bool = False, notes: dict[str, Any] | None = None) -> Manifest:
        if self.rows == 0:
            raise DataError(f"{origin}: no rows to ingest")
        manifest = Manifest(
            source=self.source,
            origin=origin,
            row_count=self.rows,
            content_hash="sha256:" + self._hash.hexdigest(),
            files=self.files,
            schema=[{"name": f.name, "type": str(f.type)} for f in LAKE_SCHEMA],
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            synthetic=synthetic,
            notes=notes or {},
        )
        with self.fs.open_output_stream(_join(self.tmp, MANIFEST)) as out:
            out.write(manifest.to_json().encode())
        trash = None
        if _exists(self.fs, self.final):
            trash = _join(self.table, f".trash-{self.source}-{uuid.uuid4().hex[:8]}")
            self.fs.move(self.final, trash)
        self.fs.move(self.tmp, self.final)
        if trash:
            self.fs.delete_dir(trash)
        logger.info("committed %d rows to %s", self.rows, self.final)
        return manifest

    def abort(self) -> None:
        if _exists(self.fs, self.tmp):
            self.fs.delete_dir(self.tmp)


def _write_partition(
    lake: str, source: str, frames: Iterable[pd.DataFrame], origin: str, *, synthetic: bool = False,
    notes: dict[str, Any] | None = None,
) -> Manifest:
    writer = _PartitionWriter(lake, source)
    try:
        for frame in frames:
            writer.write(frame)
        return writer.commit(origin, synthetic=synthetic, notes=notes)
    except BaseException:
        # Includes KeyboardInterrupt: an interrupted ingest must leave nothing behind.
        writer.abort()
        raise


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


def ingest(lake: str, source: str | None = None, *, name: str | None = None) -> Manifest:
    """Write a dataset into the lake as one atomically committed partition.

    Args:
        lake: Lake root (``data.lake``).
        source: CSV/Parquet file or folder; ``None`` ingests the built-in WDBC dataset.
        name: Partition name; defaults to ``wdbc`` for the built-in data, else the file/folder stem.

    Returns:
        The committed partition's manifest.

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


def synth(lake: str, rows: int, *, seed: int = 0, chunk_rows: int = _CHUNK_ROWS, name: str = "synthetic") -> Manifest:
    """Write a synthetic cohort with the lake schema, generated chunk by chunk.

    Rows are drawn from class-conditional Gaussians fitted to the real WDBC data
    (so models behave similarly), with the real class balance. They are NOT
    patient data; the manifest says ``synthetic: true``. Memory stays bounded by
    ``chunk_rows`` whatever ``rows`` is.
    """
    if rows < 1:
        raise DataError(f"Got {rows} for --rows: must be >= 1")
    real = builtin_frame()
    feats = real[list(FEATURE_NAMES)].to_numpy()
    labels = real[LABEL_COLUMN].to_numpy()
    p_malignant = float(labels.mean())
    params = {}
    for k in (0, 1):
        x = np.log1p(np.clip(feats[labels == k], 0, None))  # log space keeps measurements positive
        params[k] = (x.mean(axis=0), np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1]))
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

    writer_notes = {"seed": seed, "generator": "class-conditional log-normal fitted to WDBC"}
    return _write_partition(lake, name, frames(), origin=f"synthetic ({rows} rows)", synthetic=True, notes=writer_notes)


def list_partitions(lake: str) -> list[Manifest]:
    """Manifests of every committed partition, sorted by source name."""
    fs, table = table_path(lake)
    if not _exists(fs, table):
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(table)):
        base = os.path.basename(info.path)
        if info.type != pafs.FileType.Directory or not _PART_RE.match(base):
            continue
        mpath = _join(info.path, MANIFEST)
        if not _exists(fs, mpath):
            logger.warning("skipping uncommitted partition %s (no %s)", info.path, MANIFEST)
            continue
        with fs.open_input_stream(mpath) as f:
            out.append(Manifest(**json.loads(f.read().decode())))
    return sorted(out, key=lambda m: m.source)


def lake_files(lake: str, *, include_synthetic: bool = True) -> tuple[pafs.FileSystem, list[str], list[Manifest]]:
    """The Parquet files of every committed partition (what processing reads).

    Raises:
        LakeNotFoundError: The lake has no committed partition.
    """
    fs, table = table_path(lake)
    manifests = [m for m in list_partitions(lake) if include_synthetic or not m.synthetic]
    if not manifests:
        raise LakeNotFoundError(
            f'The lake at "{lake}" has no committed data: run `rayspace data ingest` (or set data.lake)'
        )
    files = [_join(table, f"source={m.source}", f) for m in manifests for f in m.files]
    return fs, files, manifests


def lake_fingerprint(manifests: list[Manifest]) -> str:
    """One hash over the committed partitions (recorded with models for lineage)."""
    h = hashlib.sha256()
    for m in sorted(manifests, key=lambda m: m.source):
        h.update(f"{m.source}:{m.content_hash}:{m.row_count}\n".encode())
    return "sha256:" + h.hexdigest()


