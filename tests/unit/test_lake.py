"""The Parquet lake: ingest of good and bad input, atomicity, synthetic cohorts."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from workloads import lake
from workloads.exceptions import DataError, LakeNotFoundError, SchemaError
from workloads.schema import FEATURE_NAMES, ID_COLUMN, LABEL_COLUMN, LAKE_SCHEMA


def _leftovers(root) -> list[str]:
    """Everything under the lake's table dir that no kept snapshot names (bookkeeping files aside)."""
    table = root / "patients"
    if not table.exists():
        return []
    named = {p.path for s in lake.snapshot_history(str(root)) for p in s.partitions}
    out = [p.name for p in table.iterdir() if not p.name.startswith(("source=", "_"))]
    for part in table.glob("source=*"):
        out += [f"{part.name}/{v.name}" for v in part.iterdir() if v.is_dir() and f"{part.name}/{v.name}" not in named]
    return sorted(out)


def _current_dir(root):
    """The directory of the current snapshot's only partition."""
    (ref,) = lake.resolve(str(root)).partitions
    return root / "patients" / ref.path


SPLIT = {"salt": "rayspace-v1", "val_fraction": 0.15, "test_fraction": 0.15}


@pytest.fixture(scope="module")
def wdbc() -> pd.DataFrame:
    return lake.builtin_frame()


def test_builtin_ingest_writes_schema_manifest_and_real_data(tmp_path):
    m = lake.ingest(str(tmp_path))
    assert m.row_count == 569
    part = _current_dir(tmp_path)
    assert part.parent.name == "source=wdbc"
    manifest = json.loads((part / "_manifest.json").read_text())
    assert manifest["row_count"] == 569
    assert manifest["content_hash"].startswith("sha256:") and len(manifest["content_hash"]) == 71
    assert "load_breast_cancer" in manifest["origin"]
    assert [c["name"] for c in manifest["schema"]] == LAKE_SCHEMA.names
    table = pq.read_table(part / manifest["files"][0])
    assert table.schema.equals(LAKE_SCHEMA)
    df = table.to_pandas()
    assert df[ID_COLUMN].is_unique
    # WDBC: 212 malignant, 357 benign.
    assert int(df[LABEL_COLUMN].sum()) == 212
    assert df["mean_radius"].between(6, 30).all()


def test_reingest_replaces_partition_and_hash_is_stable(tmp_path):
    first = lake.ingest(str(tmp_path))
    second = lake.ingest(str(tmp_path))
    assert first.content_hash == second.content_hash
    parts = lake.list_partitions(str(tmp_path))
    assert [p.source for p in parts] == ["wdbc"]
    assert sum(p.row_count for p in parts) == 569
    assert _leftovers(tmp_path) == []


def test_csv_with_original_names_and_letter_labels(tmp_path, wdbc):
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer(as_frame=True)
    df = raw.data.copy()
    df.insert(0, "patient_id", [f"p{i}" for i in range(len(df))])
    df["malignant"] = np.where(raw.target == 0, "M", "B")
    src = tmp_path / "clinic.csv"
    df.head(100).to_csv(src, index=False)
    m = lake.ingest(str(tmp_path / "lake"), str(src))
    assert (m.source, m.row_count) == ("clinic", 100)
    got = pq.read_table(_current_dir(tmp_path / "lake")).to_pandas()
    assert int(got[LABEL_COLUMN].sum()) == int((raw.target.head(100) == 0).sum())


def test_folder_of_parquet_and_csv(tmp_path, wdbc):
    src = tmp_path / "drop"
    src.mkdir()
    wdbc.iloc[:300].to_parquet(src / "a.parquet")
    wdbc.iloc[300:].to_csv(src / "b.csv", index=False)
    (src / "_SUCCESS").write_text("")  # marker files are ignored
    m = lake.ingest(str(tmp_path / "lake"), str(src), name="hospital-a")
    assert m.row_count == 569
    assert m.source == "hospital-a"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns=["worst_symmetry"]), "missing required column(s): worst_symmetry"),
        (lambda df: df.assign(mean_area=df["mean_area"].astype(object).where(df.index != 7, "12,5mm")),
         "row 8, column 'mean_area': non-numeric value '12,5mm'"),
        (lambda df: df.assign(malignant=df["malignant"].astype(object).where(df.index != 3, "maybe")),
         "row 4, column 'malignant': label 'maybe'"),
        (lambda df: df.assign(patient_id=df["patient_id"].where(df.index != 5, df["patient_id"][4])),
         "appears more than once"),
        (lambda df: df.assign(mean_radius=df["mean_radius"].where(df.index != 2, np.inf)),
         "row 3, column 'mean_radius': infinite value"),
    ],
)
def test_bad_csv_rejected_with_location_and_nothing_left(tmp_path, wdbc, mutate, message):
    root = tmp_path / "lake"
    lake.ingest(str(root))  # an existing committed partition must survive a failed ingest
    src = tmp_path / "bad.csv"
    mutate(wdbc.copy()).to_csv(src, index=False)
    with pytest.raises((SchemaError, DataError)) as info:
        lake.ingest(str(root), str(src))
    assert message in str(info.value)
    if isinstance(info.value, SchemaError):
        assert str(src) in str(info.value)
    assert _leftovers(root) == [], "a rejected ingest must leave no temporary partition"
    assert [p.source for p in lake.list_partitions(str(root))] == ["wdbc"]


def test_parquet_with_wrong_type_is_rejected(tmp_path, wdbc):
    src = tmp_path / "bad.parquet"
    df = wdbc.copy()
    df["mean_texture"] = df["mean_texture"].astype(str)
    df.loc[10, "mean_texture"] = "high"
    df.to_parquet(src)
    with pytest.raises(SchemaError, match=r"row 11, column 'mean_texture': non-numeric value 'high'"):
        lake.ingest(str(tmp_path / "lake"), str(src))
    assert lake.list_partitions(str(tmp_path / "lake")) == []


def test_missing_measurements_are_kept_for_processing(tmp_path, wdbc):
    df = wdbc.copy()
    df.loc[0, "mean_radius"] = np.nan
    src = tmp_path / "gaps.csv"
    df.to_csv(src, index=False)
    m = lake.ingest(str(tmp_path / "lake"), str(src))
    assert m.row_count == 569


def test_interrupted_ingest_leaves_nothing(tmp_path, wdbc):
    root = str(tmp_path / "lake")

    def frames():
        yield wdbc.iloc[:100]
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        lake._write_partition(root, "partial", frames(), origin="test")
    assert _leftovers(tmp_path / "lake") == []
    assert lake.list_partitions(root) == []


def test_uncommitted_partition_is_invisible(tmp_path):
    lake.ingest(str(tmp_path))
    stray = tmp_path / "patients" / "source=half"
    stray.mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(stray / "part-00000.parquet")  # no manifest: never committed
    assert [p.source for p in lake.list_partitions(str(tmp_path))] == ["wdbc"]
    _, files, _ = lake.lake_files(str(tmp_path))
    assert all("source=wdbc" in f for f in files)


def test_empty_lake_error_says_what_to_do(tmp_path):
    with pytest.raises(LakeNotFoundError, match="rayspace data ingest"):
        lake.lake_files(str(tmp_path / "nothing"))


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        lake.ingest(str(tmp_path), str(tmp_path / "nope.csv"))


def test_synth_is_chunked_labelled_and_plausible(tmp_path):
    m = lake.synth(str(tmp_path), 2500, seed=3, chunk_rows=1000, **SPLIT)
    assert m.synthetic is True and m.row_count == 2500
    assert len(m.files) == 3, "rows must be generated and written chunk by chunk"
    df = pq.read_table(_current_dir(tmp_path)).to_pandas()
    assert df[ID_COLUMN].is_unique
    assert 0.25 < df[LABEL_COLUMN].mean() < 0.5  # WDBC is 37% malignant
    assert (df[list(FEATURE_NAMES)] >= -1e-9).all().all()
    # Malignant tumours are larger on average, as in the real data.
    by = df.groupby(LABEL_COLUMN)["mean_radius"].mean()
    assert by[1] > by[0]
    again = lake.synth(str(tmp_path / "again"), 2500, seed=3, chunk_rows=1000, **SPLIT)
    assert again.content_hash == m.content_hash, "same seed, same cohort"


def test_lake_uri_scheme(tmp_path):
    m = lake.ingest(f"file://{tmp_path}")
    assert m.row_count == 569
    assert os.path.isdir(tmp_path / "patients" / "source=wdbc")


# ------------------------------------------------------------------ fault injection
#
# Every mutating filesystem call an ingest makes is a "step". The harness counts
# the steps of a clean re-ingest, then repeats it once per step with a
# KeyboardInterrupt injected there: before the call, or right after it returns;
# with the code's own cleanup running ("interrupt", Ctrl-C) or with every later
# mutation refused too ("kill": a dead process cleans up nothing). After each,
# the lake must hold exactly the previous snapshot or exactly the new one, and
# every file it names must read back to the manifest's rows and content hash.

class _Injector:
    """Counts steps and raises KeyboardInterrupt at step ``at`` (never when ``at`` is None)."""

    def __init__(self, at: int | None, when: str, mode: str):
        self.at, self.when, self.mode = at, when, mode
        self.steps: list[str] = []
        self.fired = False

    def step(self, name: str, call):
        if self.fired and self.mode == "kill":
            raise KeyboardInterrupt(f"process already dead (after {name})")
        index = len(self.steps)
        self.steps.append(name)
        if index == self.at and self.when == "before":
            self.fired = True
            raise KeyboardInterrupt(f"injected before step {index}: {name}")
        result = call()
        if index == self.at and self.when == "after":
            self.fired = True
            raise KeyboardInterrupt(f"injected after step {index}: {name}")
        return result


def _fault_fs(inner, injector: _Injector):
    """``inner`` behind a pyarrow filesystem whose mutating calls go through ``injector``."""
    import pyarrow.fs as pafs

    def step(name, *args):
        label = f"{name}({', '.join(os.path.basename(a.rstrip('/')) for a in args)})"
        return injector.step(label, lambda: getattr(inner, name)(*args))

    class Handler(pafs.FileSystemHandler):
        def __eq__(self, other):
            return self is other

        def __ne__(self, other):
            return self is not other

        def get_type_name(self):
            return "fault-injecting"

        def normalize_path(self, path):
            return inner.normalize_path(path)

        def get_file_info(self, paths):
            return inner.get_file_info(paths)

        def get_file_info_selector(self, selector):
            return inner.get_file_info(selector)

        def open_input_stream(self, path):
            return inner.open_input_stream(path)

        def open_input_file(self, path):
            return inner.open_input_file(path)

        def create_dir(self, path, recursive):
            return injector.step(f"create_dir({os.path.basename(path)})", lambda: inner.create_dir(path, recursive=recursive))

        def delete_dir(self, path):
            return step("delete_dir", path)

        def delete_dir_contents(self, path, missing_dir_ok=False):
            return injector.step(f"delete_dir_contents({os.path.basename(path)})",
                                 lambda: inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

        def delete_root_dir_contents(self):
            raise AssertionError("the lake never empties a filesystem root")

        def delete_file(self, path):
            return step("delete_file", path)

        def move(self, src, dest):
            return step("move", src, dest)

        def copy_file(self, src, dest):
            return step("copy_file", src, dest)

        def open_output_stream(self, path, metadata):
            return injector.step(f"open_output_stream({os.path.basename(path)})", lambda: inner.open_output_stream(path))

        def open_append_stream(self, path, metadata):
            return injector.step(f"open_append_stream({os.path.basename(path)})", lambda: inner.open_append_stream(path))

    return pafs.PyFileSystem(Handler())


def _check_lake(root: str, allowed: dict[str, str]) -> str:
    """Assert the lake reads back complete and equal to one allowed state; return that state's name."""
    parts = lake.list_partitions(root)
    assert [p.source for p in parts] == ["wdbc"], f"partition missing or extra: {[p.source for p in parts]}"
    m = parts[0]
    state = next((k for k, h in allowed.items() if h == m.content_hash), None)
    assert state is not None, f"unknown content {m.content_hash}"
    fs, files, manifests = lake.lake_files(root)
    h, rows = hashlib.sha256(), 0
    for f in files:
        frame = pq.read_table(f, filesystem=fs).to_pandas()[LAKE_SCHEMA.names]
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        rows += len(frame)
    assert rows == m.row_count, f"{rows} rows readable, manifest says {m.row_count}"
    assert "sha256:" + h.hexdigest() == m.content_hash, "files do not hold what the manifest says"
    return state


def _two_file_source(tmp_path, frame: pd.DataFrame, name: str) -> str:
    src = tmp_path / name
    src.mkdir()
    frame.iloc[:300].to_csv(src / "a.csv", index=False)
    frame.iloc[300:].to_csv(src / "b.csv", index=False)
    return str(src)


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory, wdbc):
    base = tmp_path_factory.mktemp("sources")
    old = _two_file_source(base, wdbc, "old")
    new = _two_file_source(base, wdbc.assign(mean_radius=wdbc["mean_radius"] + 1.0), "new")
    return old, new


def _ingest_with(monkeypatch, root: str, source: str, injector: _Injector):
    import pyarrow.fs as pafs

    real_fs = lake._fs

    def patched(uri):
        fs, path = real_fs(uri)
        if isinstance(fs, pafs.LocalFileSystem) and os.path.abspath(path).startswith(root):
            return _fault_fs(fs, injector), path
        return fs, path

    with monkeypatch.context() as m:
        m.setattr(lake, "_fs", patched)
        lake.ingest(root, source, name="wdbc")


@pytest.mark.parametrize("mode", ["interrupt", "kill"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupt_at_every_step_of_a_reingest_keeps_one_complete_snapshot(tmp_path, monkeypatch, old_and_new, mode, when):
    old, new = old_and_new
    counter_root = str(tmp_path / "count")
    lake.ingest(counter_root, old, name="wdbc")
    counter = _Injector(None, when, mode)
    _ingest_with(monkeypatch, counter_root, new, counter)
    assert counter.steps, "the harness saw no filesystem step"
    states = {"old": lake.list_partitions(counter_root)[0].content_hash}
    failures = []
    for k, name in enumerate(counter.steps):
        root = str(tmp_path / f"{when}-{mode}-{k}")
        first = lake.ingest(root, old, name="wdbc")
        states = {"old": first.content_hash, "new": states.get("new", "")}
        inj = _Injector(k, when, mode)
        try:
            _ingest_with(monkeypatch, root, new, inj)
        except KeyboardInterrupt:
            pass
        try:
            _check_lake(root, {"old": first.content_hash, "new": lake.ingest(str(tmp_path / "ref"), new, name="wdbc").content_hash})
            # The lake is still writable: the same re-ingest now succeeds.
            again = lake.ingest(root, new, name="wdbc")
            assert _check_lake(root, {"new": again.content_hash}) == "new"
        except (AssertionError, DataError, OSError) as e:
            failures.append(f"step {k} {name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    assert not failures, f"{len(failures)}/{len(counter.steps)} steps lose or mix data:\n" + "\n".join(failures)


def test_read_during_reingest_sees_exactly_one_snapshot(tmp_path, old_and_new):
    """A reader lists files, reads lazily; a re-ingest of changed data lands in between."""
    old, new = old_and_new
    root = str(tmp_path / "lake")
    first = lake.ingest(root, old, name="wdbc")
    fs, files, manifests = lake.lake_files(root)  # the reader starts here
    assert len(files) == 2
    got = [pq.read_table(files[0], filesystem=fs).to_pandas()]
    second = lake.ingest(root, new, name="wdbc")
    assert second.content_hash != first.content_hash
    got += [pq.read_table(f, filesystem=fs).to_pandas() for f in files[1:]]  # the lazy rest of the read
    frame = pd.concat(got, ignore_index=True)[LAKE_SCHEMA.names]
    h = hashlib.sha256()
    for part in got:
        h.update(pd.util.hash_pandas_object(part[LAKE_SCHEMA.names], index=False).to_numpy().tobytes())
    assert len(frame) == 569
    assert "sha256:" + h.hexdigest() == first.content_hash == manifests[0].content_hash, \
        "the reader mixed rows of two snapshots under the first one's fingerprint"
    # And a new reader sees the new snapshot, whole.
    assert _check_lake(root, {"new": second.content_hash}) == "new"
