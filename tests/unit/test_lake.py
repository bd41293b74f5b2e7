"""The Parquet lake: ingest of good and bad input, snapshots under faults and concurrent reads, gc, synthetic cohorts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workloads import lake
from workloads.exceptions import DataError, LakeCorruptError, LakeNotFoundError, SchemaError
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


@pytest.mark.parametrize("mode", ["interrupt", "kill"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupt_at_every_durability_step_on_a_local_disk(tmp_path, monkeypatch, old_and_new, mode, when):
    """The local path's own steps (fsync, os.replace, cleanup unlinks): same guarantee as above."""
    old, new = old_and_new
    real = {name: getattr(os, name) for name in ("fsync", "replace", "unlink")}

    def run(root: str, injector: _Injector) -> None:
        def wrap(name):
            return lambda *a, **k: injector.step(f"os.{name}", lambda: real[name](*a, **k))

        with monkeypatch.context() as m:
            for name in real:
                m.setattr(os, name, wrap(name))
            lake.ingest(root, new, name="wdbc")

    counter = _Injector(None, when, mode)
    lake.ingest(str(tmp_path / "count"), old, name="wdbc")
    run(str(tmp_path / "count"), counter)
    assert counter.steps.count("os.replace") == 2, counter.steps  # the pointer, then the history record
    reference = lake.ingest(str(tmp_path / "ref"), new, name="wdbc").content_hash
    failures = []
    for k, name in enumerate(counter.steps):
        root = str(tmp_path / f"{when}-{mode}-{k}")
        first = lake.ingest(root, old, name="wdbc")
        with contextlib.suppress(KeyboardInterrupt):
            run(root, _Injector(k, when, mode))
        try:
            state = _check_lake(root, {"old": first.content_hash, "new": reference})
            # Until the pointer is replaced the old snapshot is current, from then on the new one.
            switched = counter.steps[: k + (when == "after")].count("os.replace") >= 1
            assert state == ("new" if switched else "old"), f"{state} after step {k}"
            assert _check_lake(root, {"new": lake.ingest(root, new, name="wdbc").content_hash}) == "new"
        except (AssertionError, DataError, OSError) as e:
            failures.append(f"step {k} {name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    assert not failures, "\n".join(failures)


_KILL_LOOP = """
import sys
from workloads import lake
root, a, b = sys.argv[1:4]
i = 0
while True:
    lake.ingest(root, (a, b)[i % 2], name="wdbc")
    print("committed", flush=True)
    i += 1
"""


def test_sigkill_during_reingests_never_loses_the_partition(tmp_path, old_and_new, repo_root):
    """Real processes killed with SIGKILL at arbitrary moments of back-to-back re-ingests."""
    import random
    import signal
    import subprocess
    import sys
    import time

    old, new = old_and_new
    root = str(tmp_path / "lake")
    hashes = {"old": lake.ingest(str(tmp_path / "ra"), old, name="wdbc").content_hash,
              "new": lake.ingest(str(tmp_path / "rb"), new, name="wdbc").content_hash}
    lake.ingest(root, old, name="wdbc")
    rng = random.Random(7)
    seen = set()
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_LOOP, root, new, old], cwd=repo_root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Once it is ingesting back to back, kill it at an arbitrary moment of a later ingest.
            # Two commits in a row alternate the sources, so each process changes the lake at least once.
            for _ in range(2):
                assert proc.stdout.readline().strip() == "committed", proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        seen.add(_check_lake(root, hashes))
    assert _check_lake(root, {"new": lake.ingest(root, new, name="wdbc").content_hash}) == "new"
    assert lake.snapshot_history(root)[0].id >= 5, "the killed processes committed snapshots in between"


# ------------------------------------------------------------------ snapshots, pinning, gc


def test_unchanged_reingest_makes_no_snapshot_changed_one_does(tmp_path, old_and_new):
    old, new = old_and_new
    root = str(tmp_path)
    a = lake.ingest(root, old, name="wdbc")
    b = lake.ingest(root, old, name="wdbc")
    assert (a.snapshot, a.changed, b.snapshot, b.changed) == (1, True, 1, False)
    assert _leftovers(tmp_path) == [], "the unneeded copy is removed"
    c = lake.ingest(root, new, name="wdbc")
    assert (c.snapshot, c.changed) == (2, True)
    assert [s.id for s in lake.snapshot_history(root)] == [2, 1]


def test_pinned_snapshot_reads_its_own_files_after_reingest(tmp_path, old_and_new):
    old, new = old_and_new
    root = str(tmp_path)
    first = lake.ingest(root, old, name="wdbc")
    lake.ingest(root, new, name="wdbc")
    fs, files, manifests = lake.lake_files(root, snapshot=first.snapshot)
    assert manifests[0].content_hash == first.content_hash
    rows = sum(pq.read_table(f, filesystem=fs).num_rows for f in files)
    assert rows == 569
    snap = lake.resolve(root, 1)
    assert snap.fingerprint.endswith("@snapshot-1") and lake.resolve(root).fingerprint.endswith("@snapshot-2")
    assert snap.fingerprint.split("@")[0] == lake.lake_fingerprint(snap.manifests), "hash part = content only"
    with pytest.raises(LakeNotFoundError, match=r"Got 7 for data.snapshot: .*no such snapshot \(kept: \[1, 2\]"):
        lake.resolve(root, 7)


def test_two_sources_committed_concurrently_both_stay(tmp_path, wdbc):
    import threading

    root = str(tmp_path / "lake")
    srcs = []
    for name in ("north", "south"):
        (tmp_path / name).mkdir()
        wdbc.assign(patient_id=name + wdbc[ID_COLUMN]).to_csv(tmp_path / name / "a.csv", index=False)
        srcs.append(str(tmp_path / name))
    errors = []

    def go(src):
        try:
            lake.ingest(root, src)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(s,)) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.source for p in lake.list_partitions(root)] == ["north", "south"]


def _age_lease(path, hours: float) -> None:
    import datetime as dt

    d = json.loads(open(path).read())
    d["created_at"] = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)).isoformat(timespec="seconds")
    open(path, "w").write(json.dumps(d))


def test_gc_keeps_newest_and_leased_snapshots_and_frees_the_rest(tmp_path, wdbc):
    root = str(tmp_path)
    snaps = []
    for i in range(5):
        src = tmp_path / f"s{i}.csv"
        wdbc.assign(mean_radius=wdbc["mean_radius"] + i).to_csv(src, index=False)
        snaps.append(lake.ingest(root, str(src), name="wdbc"))
    lease = lake.acquire_lease(root, 2, purpose="a running job")
    dry = lake.gc(root, keep=2, lease_ttl_hours=24, dry_run=True)
    assert (dry.removed, dry.kept, dry.held) == ([1, 3], [5, 4, 2], {2: 1})
    assert [s.id for s in lake.snapshot_history(root)] == [5, 4, 3, 2, 1], "a dry run deletes nothing"
    report = lake.gc(root, keep=2, lease_ttl_hours=24)
    assert report.removed == [1, 3] and len(report.removed_versions) == 2
    assert [s.id for s in lake.snapshot_history(root)] == [5, 4, 2]
    fs, files, _ = lake.lake_files(root, snapshot=2)  # the leased one is still whole
    assert sum(pq.read_table(f, filesystem=fs).num_rows for f in files) == 569
    assert _leftovers(tmp_path) == [], "removed snapshots' files are gone"
    with pytest.raises(LakeNotFoundError, match="no such snapshot"):
        lake.resolve(root, 1)
    # Released (the run ended), or stale: snapshot 2 goes at the next gc.
    lake.release_lease(root, lease)
    assert lake.gc(root, keep=2, lease_ttl_hours=24).removed == [2]


def test_stale_leases_do_not_hold_snapshots(tmp_path, old_and_new):
    import subprocess
    import sys

    old, new = old_and_new
    root = str(tmp_path)
    lake.ingest(root, old, name="wdbc")
    lake.ingest(root, new, name="wdbc")
    expired = lake.acquire_lease(root, 1)
    _age_lease(expired.path, 30)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = lake.acquire_lease(root, 1)
    d = json.loads(open(orphan.path).read())
    d["pid"] = int(dead.stdout)  # a process of this host that has exited (killed runs never release)
    open(orphan.path, "w").write(json.dumps(d))
    live = lake.acquire_lease(root, 1)
    r = lake.gc(root, keep=1, lease_ttl_hours=24)
    assert r.removed == [] and r.held == {1: 1}
    assert len(r.stale_leases) == 2 and any("over data.lease_ttl_hours=24" in s for s in r.stale_leases)
    assert any("has exited" in s for s in r.stale_leases)
    lake.release_lease(root, live)
    assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == [1]


def test_gc_sweeps_debris_of_killed_ingests_only_when_old(tmp_path, wdbc):
    root = str(tmp_path)
    lake.ingest(root)
    debris = tmp_path / "patients" / "source=wdbc" / "v20200101T000000-deadbeef"
    debris.mkdir()
    (debris / "part-00000.parquet").write_bytes(b"half")
    fresh = tmp_path / "patients" / "source=wdbc" / f"v{__import__('datetime').datetime.utcnow():%Y%m%dT%H%M%S}-0badcafe"
    fresh.mkdir()  # may be an ingest in progress
    r = lake.gc(root, keep=1, lease_ttl_hours=24)
    assert r.swept == ["source=wdbc/v20200101T000000-deadbeef"]
    assert not debris.exists() and fresh.exists()


def test_hold_leases_once_per_process_and_releases(tmp_path):
    root = str(tmp_path)
    snap = lake.ingest(root).snapshot
    first = lake.hold(root, snap)
    assert lake.hold(root, snap) is first
    assert [l.snapshot for l in lake.list_leases(root)] == [snap]
    lake.release_held()
    assert lake.list_leases(root) == []
    assert lake.hold(root, 0) is None, "the pre-snapshot layout is never collected: no lease"


def test_keep_snapshots_is_validated_naming_the_field():
    from workloads.config import load_config
    from workloads.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"Got 0 for data.keep_snapshots: must be greater than or equal to 1"):
        load_config(None, {"data.keep_snapshots": 0})
    with pytest.raises(ConfigError, match=r"data.lease_ttl_hours: must be greater than 0"):
        load_config(None, {"data.lease_ttl_hours": 0})
    with pytest.raises(DataError, match="data.keep_snapshots"):
        lake.gc("/nonexistent", keep=0, lease_ttl_hours=1)


def _legacy_lake(root, wdbc) -> None:
    """A lake written by the pre-snapshot code: source=<name>/part-*.parquet + _manifest.json, no pointer."""
    for name, frame in (("wdbc", wdbc), ("clinic", wdbc.assign(patient_id="c" + wdbc[ID_COLUMN]).head(50))):
        part = root / "patients" / f"source={name}"
        part.mkdir(parents=True)
        table = pa.Table.from_pandas(frame[LAKE_SCHEMA.names], schema=LAKE_SCHEMA, preserve_index=False)
        pq.write_table(table, part / "part-00000.parquet")
        h = hashlib.sha256(pd.util.hash_pandas_object(frame[LAKE_SCHEMA.names], index=False).to_numpy().tobytes())
        (part / "_manifest.json").write_text(json.dumps({
            "source": name, "origin": "old", "row_count": len(frame), "content_hash": "sha256:" + h.hexdigest(),
            "files": ["part-00000.parquet"], "schema": [], "created_at": "2025-01-01T00:00:00+00:00",
            "synthetic": False, "notes": {}}))


def test_old_layout_is_read_then_adopted_on_first_write(tmp_path, wdbc, old_and_new):
    root = str(tmp_path)
    _legacy_lake(tmp_path, wdbc)
    snap = lake.resolve(root)
    assert snap.id == 0 and [m.source for m in snap.manifests] == ["clinic", "wdbc"]
    assert snap.fingerprint == lake.lake_fingerprint(snap.manifests), "same fingerprint as before snapshots"
    assert _check_lake_rows(root) == 569 + 50
    # First write: snapshot 1 references the untouched old partition in place and replaces the other.
    m = lake.ingest(root, old_and_new[1], name="wdbc")
    assert m.snapshot == 1
    paths = {p.manifest.source: p.path for p in lake.resolve(root).partitions}
    assert paths["clinic"] == "source=clinic" and paths["wdbc"].startswith("source=wdbc/v")
    assert _check_lake_rows(root) == 569 + 50
    # The replaced old-layout files are not in any snapshot any more; the next ingest + gc frees them.
    assert lake.resolve(root, 0).manifests == snap.manifests, "the old layout's state is kept as snapshot 0"
    lake.ingest(root, old_and_new[0], name="wdbc")
    assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == [0, 1]
    assert not (tmp_path / "patients" / "source=wdbc" / "part-00000.parquet").exists()
    assert (tmp_path / "patients" / "source=clinic" / "part-00000.parquet").exists()
    assert _check_lake_rows(root) == 569 + 50


def _check_lake_rows(root: str) -> int:
    fs, files, manifests = lake.lake_files(root)
    rows = sum(pq.read_table(f, filesystem=fs).num_rows for f in files)
    assert rows == sum(m.row_count for m in manifests)
    return rows


def test_memory_uri_lake_snapshots_and_gc(wdbc, tmp_path):
    root = f"memory://lake-{os.getpid()}-{tmp_path.name}"
    a = lake.ingest(root)
    src = tmp_path / "b.csv"
    wdbc.assign(mean_radius=wdbc["mean_radius"] * 2).to_csv(src, index=False)
    b = lake.ingest(root, str(src), name="wdbc")
    assert (a.snapshot, b.snapshot) == (1, 2)
    assert lake.list_partitions(root)[0].content_hash == b.content_hash
    assert lake.list_partitions(root, snapshot=1)[0].content_hash == a.content_hash
    assert _check_lake_rows(root) == 569
    assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == [1]
    assert [s.id for s in lake.snapshot_history(root)] == [2]


@pytest.mark.parametrize("target, content", [("_current.json", "{\"snapshot\": 3, \"partit"), ("_current.json", "[]")])
def test_corrupt_pointer_is_one_clear_line(tmp_path, capsys, target, content):
    from workloads.cli import main

    lake.ingest(str(tmp_path))
    (tmp_path / "patients" / target).write_text(content)
    with pytest.raises(LakeCorruptError, match="_current.json: not a valid lake pointer"):
        lake.resolve(str(tmp_path))
    assert main(["data", "list", "--lake", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a valid lake pointer" in err[0]


# ------------------------------------------------------------------ synth: training split only


def test_synth_generator_never_sees_validation_or_test_patients(tmp_path, wdbc):
    from workloads.data import split_of

    split = wdbc[ID_COLUMN].map(lambda pid: split_of(pid, SPLIT["salt"], SPLIT["val_fraction"], SPLIT["test_fraction"]))
    assert set(split) == {"train", "val", "test"}
    held_out = split != "train"
    base = lake.synth(str(tmp_path / "a"), 3000, seed=1, real=wdbc, **SPLIT)
    # Every validation/test patient changed beyond recognition (and flipped): the cohort must not move.
    wild = wdbc.copy()
    wild.loc[held_out, list(FEATURE_NAMES)] = wild.loc[held_out, list(FEATURE_NAMES)] * 50 + 1000
    wild.loc[held_out, LABEL_COLUMN] = 1 - wild.loc[held_out, LABEL_COLUMN]
    same = lake.synth(str(tmp_path / "b"), 3000, seed=1, real=wild, **SPLIT)
    assert same.content_hash == base.content_hash, "a validation/test patient influenced the generator"
    # The check can fail: changing ONE training patient changes the cohort.
    one = wdbc.copy()
    i = int(np.flatnonzero(~held_out.to_numpy())[0])
    one.loc[i, "mean_radius"] += 5
    assert lake.synth(str(tmp_path / "c"), 3000, seed=1, real=one, **SPLIT).content_hash != base.content_hash
    assert base.notes["fitted_on"]["patients"] == int((~held_out).sum())


def test_synth_cli_writes_a_separate_lake_by_default(tmp_path, capsys, monkeypatch):
    from workloads.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--rows", "1500", "--set", "data.lake=./real"]) == 0
    out = capsys.readouterr().out
    assert "into ./real-synth" in out and "training-split patients" in out
    assert not (tmp_path / "real").exists(), "nothing synthetic lands in the real lake"
    assert [p.synthetic for p in lake.list_partitions(str(tmp_path / "real-synth"))] == [True]


@pytest.mark.parametrize("mode", ["interrupt", "kill"])
def test_interrupted_gc_never_leaves_a_snapshot_naming_deleted_files(tmp_path, monkeypatch, wdbc, mode):
    import pyarrow.fs as pafs

    def build(root: str) -> None:
        for i in range(4):
            src = tmp_path / f"gc{i}.csv"
            if not src.exists():
                wdbc.assign(mean_radius=wdbc["mean_radius"] + i).to_csv(src, index=False)
            lake.ingest(root, str(src), name="wdbc")
        lake.acquire_lease(root, 2)

    def run_gc(root: str, injector: _Injector) -> None:
        real_fs = lake._fs

        def patched(uri):
            fs, path = real_fs(uri)
            return (_fault_fs(fs, injector) if isinstance(fs, pafs.LocalFileSystem) else fs), path

        with monkeypatch.context() as m:
            m.setattr(lake, "_fs", patched)
            lake.gc(root, keep=1, lease_ttl_hours=24)

    build(str(tmp_path / "count"))
    counter = _Injector(None, "before", mode)
    run_gc(str(tmp_path / "count"), counter)
    assert len(counter.steps) >= 3, counter.steps  # two records and their versions at least
    failures = []
    for k, name in enumerate(counter.steps):
        root = str(tmp_path / f"gc-{mode}-{k}")
        build(root)
        with contextlib.suppress(KeyboardInterrupt):
            run_gc(root, _Injector(k, "before", mode))
        try:
            for snap in lake.snapshot_history(root):  # every snapshot still listed reads back whole
                fs, files, manifests = lake.lake_files(root, snapshot=snap.id)
                assert sum(pq.read_table(f, filesystem=fs).num_rows for f in files) == 569, snap.id
            assert {4, 2} <= {s.id for s in lake.snapshot_history(root)}
            lake.gc(root, keep=1, lease_ttl_hours=24)
            assert [s.id for s in lake.snapshot_history(root)] == [4, 2]
        except (AssertionError, DataError, OSError) as e:
            failures.append(f"step {k} {name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    assert not failures, "\n".join(failures)


def test_s3_lake_snapshots_pinning_and_gc(s3_prefix, wdbc, tmp_path):
    """On S3 (a local moto server): the pointer is replaced by one object copy; old snapshots stay readable."""
    root = f"{s3_prefix}/lake"
    a = lake.ingest(root)
    src = tmp_path / "b.csv"
    wdbc.assign(mean_radius=wdbc["mean_radius"] + 1).to_csv(src, index=False)
    b = lake.ingest(root, str(src), name="wdbc")
    assert (a.snapshot, b.snapshot, lake.ingest(root, str(src), name="wdbc").changed) == (1, 2, False)
    assert lake.list_partitions(root)[0].content_hash == b.content_hash
    fs, files, manifests = lake.lake_files(root, snapshot=1)
    assert manifests[0].content_hash == a.content_hash
    assert sum(pq.read_table(f, filesystem=fs).num_rows for f in files) == 569
    lease = lake.acquire_lease(root, 1)
    assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == []
    lake.release_lease(root, lease)
    assert lake.gc(root, keep=1, lease_ttl_hours=24).removed == [1]
    assert _check_lake_rows(root) == 569
    assert not any(fs.get_file_info(f).type != __import__("pyarrow.fs").fs.FileType.NotFound for f in files)
