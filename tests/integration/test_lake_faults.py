"""Lake faults under real Ray Data: a run reading during a concurrent re-ingest sees exactly one snapshot.

The kill/interrupt-at-every-step cases need no Ray and live in ``tests/unit/test_lake.py``.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from workloads import lake
from workloads.config import DataConfig
from workloads.schema import ID_COLUMN

pytestmark = pytest.mark.integration


def _two_file_source(tmp_path, frame: pd.DataFrame, name: str) -> str:
    src = tmp_path / name
    src.mkdir()
    frame.iloc[:300].to_csv(src / "a.csv", index=False)
    frame.iloc[300:].to_csv(src / "b.csv", index=False)
    return str(src)


@pytest.fixture()
def old_new(tmp_path):
    wdbc = lake.builtin_frame()
    changed = wdbc.assign(mean_radius=wdbc["mean_radius"] + 1.0)
    return wdbc, _two_file_source(tmp_path, wdbc, "old"), _two_file_source(tmp_path, changed, "new")


def test_ray_data_read_during_reingest_sees_the_snapshot_it_started_on(ray_local, tmp_path, old_new):
    from workloads.data import read_lake

    wdbc, old, new = old_new
    root = str(tmp_path / "lake")
    lake.ingest(root, old, name="wdbc")
    ds, manifests = read_lake(DataConfig(lake=root))  # planned, not yet read (Ray Data is lazy)
    lake.ingest(root, new, name="wdbc")  # a re-ingest of changed data lands before the read runs
    got = ds.to_pandas().sort_values(ID_COLUMN).reset_index(drop=True)
    want = wdbc.sort_values(ID_COLUMN).reset_index(drop=True)
    assert len(got) == 569 == manifests[0].row_count
    assert np.allclose(got["mean_radius"], want["mean_radius"]), \
        "rows of the new snapshot were read under the old snapshot's manifests"


def test_processing_pins_leases_and_fingerprints_one_snapshot(ray_local, tmp_path, old_new):
    from workloads.data import process

    wdbc, old, new = old_new
    root = str(tmp_path / "lake")
    lake.ingest(root, old, name="wdbc")
    cfg = DataConfig(lake=root, materialize=False)
    # Re-ingests back to back while processing runs: processing must still see one whole snapshot.
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            lake.ingest(root, (new, old)[i % 2], name="wdbc")
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        p = process(cfg)
    finally:
        stop.set()
        t.join()
    assert sum(p.counts.values()) == 569
    assert lake.resolve(root).id > 2, "re-ingests landed while processing ran"
    read = lake.resolve(root, p.snapshot)
    assert p.fingerprint == read.fingerprint and p.fingerprint.endswith(f"@snapshot-{p.snapshot}")
    # The standardizer was fitted on that snapshot's rows: old or new radius, never a mix.
    mean_old = process(DataConfig(lake=root, snapshot=1, materialize=False)).standardizer.mean[0]
    assert p.standardizer.mean[0] == pytest.approx(mean_old) or p.standardizer.mean[0] == pytest.approx(mean_old + 1.0)
    held = {l.snapshot for l in lake.list_leases(root)}
    assert {1, p.snapshot} <= held
    report = lake.gc(root, keep=1, lease_ttl_hours=24)
    assert 1 in report.kept and p.snapshot in report.kept, "gc removed a snapshot a live run reads"
    lake.release_held()
    assert lake.list_leases(root) == []
