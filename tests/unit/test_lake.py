"""The Parquet lake: ingest of good and bad input, atomicity, synthetic cohorts."""

from __future__ import annotations

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
    """Everything under the lake's table dir except committed partitions."""
    table = root / "patients"
    if not table.exists():
        return []
    return sorted(p.name for p in table.iterdir() if not p.name.startswith("source="))


@pytest.fixture(scope="module")
def wdbc() -> pd.DataFrame:
    return lake.builtin_frame()


def test_builtin_ingest_writes_schema_manifest_and_real_data(tmp_path):
    m = lake.ingest(str(tmp_path))
    assert m.row_count == 569
    part = tmp_path / "patients" / "source=wdbc"
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
    got = pq.read_table(tmp_path / "lake" / "patients" / "source=clinic").to_pandas()
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
    m = lake.synth(str(tmp_path), 2500, seed=3, chunk_rows=1000)
    assert m.synthetic is True and m.row_count == 2500
    assert len(m.files) == 3, "rows must be generated and written chunk by chunk"
    df = pq.read_table(tmp_path / "patients" / "source=synthetic").to_pandas()
    assert df[ID_COLUMN].is_unique
    assert 0.25 < df[LABEL_COLUMN].mean() < 0.5  # WDBC is 37% malignant
    assert (df[list(FEATURE_NAMES)] >= -1e-9).all().all()
    # Malignant tumours are larger on average, as in the real data.
    by = df.groupby(LABEL_COLUMN)["mean_radius"].mean()
    assert by[1] > by[0]
    again = lake.synth(str(tmp_path / "again"), 2500, seed=3, chunk_rows=1000)
    assert again.content_hash == m.content_hash, "same seed, same cohort"


def test_lake_uri_scheme(tmp_path):
    m = lake.ingest(f"file://{tmp_path}")
    assert m.row_count == 569
    assert os.path.isdir(tmp_path / "patients" / "source=wdbc")
