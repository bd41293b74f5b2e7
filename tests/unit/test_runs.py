"""Run records and the stage-skip rules of ``rayspace run --resume`` (no Ray)."""

from __future__ import annotations

import json
import os

import pytest

from workloads import runs
from workloads.exceptions import ConfigError, RunRecordError
from workloads.pipeline import _RunState


def test_record_round_trip_is_atomic_and_lives_under_storage(tmp_path):
    rec = runs.RunRecord("r1")
    rec.complete("train", {"data_fingerprint": "fp"}, {"checkpoint": "/x/checkpoint_1"})
    uri = runs.save(str(tmp_path), rec)
    assert uri == str(tmp_path / "runs" / "r1.json")
    assert os.listdir(tmp_path / "runs") == ["r1.json"]  # no temporary file left beside it
    back = runs.load(str(tmp_path), "r1")
    assert back.stages["train"]["inputs"] == {"data_fingerprint": "fp"}
    assert back.outputs("train") == {"checkpoint": "/x/checkpoint_1"}
    assert back.outputs("evaluate") == {}
    assert back.updated_at


def test_missing_or_corrupt_record_is_one_clear_error(tmp_path):
    with pytest.raises(RunRecordError, match=r'Got "nope" for --resume: no run record at .*runs/nope\.json'):
        runs.load(str(tmp_path), "nope")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.json").write_text("{not json")
    with pytest.raises(RunRecordError, match="not a valid run record"):
        runs.load(str(tmp_path), "bad")
    (tmp_path / "runs" / "other.json").write_text(json.dumps({"run_id": "someone-else"}))
    with pytest.raises(RunRecordError, match="records run 'someone-else'"):
        runs.load(str(tmp_path), "other")


@pytest.mark.parametrize("bad", ["", "../up", "a/b", "-x", "x" * 65, "sp ace"])
def test_run_ids_that_would_escape_or_break_names_are_refused(bad):
    with pytest.raises(ConfigError) as e:
        runs.check_run_id(bad)
    assert str(e.value).startswith(f'Got "{bad}" for --run-id: must be 1-64 letters')


def test_new_run_id_is_the_job_submission_id_inside_a_job_else_fresh():
    assert runs.new_run_id("raysubmit_AbC123") == "raysubmit_AbC123"
    a, b = runs.new_run_id(None), runs.new_run_id(None)
    assert a != b and runs.RUN_ID_PATTERN.match(a)


def test_engine_names_are_stable_for_the_same_inputs_and_differ_for_others():
    same = runs.engine_run_name("wdbc-mlp", "r1", {"data_fingerprint": "a", "train": {"epochs": 3}})
    assert same == runs.engine_run_name("wdbc-mlp", "r1", {"train": {"epochs": 3}, "data_fingerprint": "a"})
    assert same.startswith("wdbc-mlp-r1-")
    assert same != runs.engine_run_name("wdbc-mlp", "r1", {"data_fingerprint": "b", "train": {"epochs": 3}})
    assert same != runs.engine_run_name("wdbc-mlp", "r2", {"data_fingerprint": "a", "train": {"epochs": 3}})


def test_reusable_needs_a_finished_stage_same_inputs_and_existing_outputs(tmp_path):
    ckpt = tmp_path / "checkpoint_000002"
    ckpt.mkdir()
    rec = runs.RunRecord("r1")
    rec.complete("train", {"data_fingerprint": "fp1", "train": {"epochs": 3}}, {"checkpoint": str(ckpt)})
    inputs = {"data_fingerprint": "fp1", "train": {"epochs": 3}}

    assert runs.reusable(None, "train", inputs) == (False, "new run")
    assert runs.reusable(rec, "evaluate", {}) == (False, "not finished in the recorded run")
    ok, why = runs.reusable(rec, "train", {**inputs, "data_fingerprint": "fp2"}, [str(ckpt)])
    assert not ok and why == "its inputs changed (data_fingerprint)"
    assert runs.reusable(rec, "train", inputs, [str(ckpt)]) == (True, "")
    assert runs.reusable(rec, "train", inputs, [None]) == (False, "an output was not recorded")
    ckpt.rmdir()
    ok, why = runs.reusable(rec, "train", inputs, [str(ckpt)])
    assert not ok and why == f"its output {ckpt} is gone"

    def broken(path: str) -> bool:
        raise OSError("storage hiccup")

    ok, why = runs.reusable(rec, "train", inputs, ["s3://b/x"], exists=broken)
    assert not ok and "cannot be checked (storage hiccup)" in why


def test_open_run_new_resume_and_refusals(tmp_path):
    st = str(tmp_path)
    rec, resumed = runs.open_run(st, run_id="mine")
    assert (rec.run_id, resumed, rec.attempts) == ("mine", False, 1)
    runs.save(st, rec)
    # The same --run-id again would mix two runs' outputs: refused, with the fix.
    with pytest.raises(ConfigError, match=r'Got "mine" for --run-id: names an existing run .* --resume mine'):
        runs.open_run(st, run_id="mine")
    rec.skipped = ["ingest"]
    rec.status = "finished"
    runs.save(st, rec)
    again, resumed = runs.open_run(st, resume="mine")
    assert (resumed, again.attempts, again.status, again.skipped) == (True, 2, "running", [])
    with pytest.raises(ConfigError, match="must name the same run"):
        runs.open_run(st, run_id="other", resume="mine")
    with pytest.raises(RunRecordError, match='Got "ghost" for --resume'):
        runs.open_run(st, resume="ghost")
    with pytest.raises(ConfigError, match='for --resume'):
        runs.open_run(st, resume="../x")


def test_a_job_driver_started_again_under_its_submission_continues_the_jobs_run(tmp_path):
    st = str(tmp_path)
    rec, resumed = runs.open_run(st, submission_id="raysubmit_7")
    assert (rec.run_id, resumed) == ("raysubmit_7", False)
    runs.save(st, rec)
    rec2, resumed = runs.open_run(st, submission_id="raysubmit_7")
    assert (rec2.run_id, resumed, rec2.attempts) == ("raysubmit_7", True, 2)


def _state(tmp_path, record, resumed):
    lines: list[str] = []
    summary = {"stages": [], "skipped": []}
    return _RunState(record, resumed, str(tmp_path), summary, lines.append, 0.0), summary, lines


def test_pipeline_records_each_stage_and_a_resumed_run_skips_what_matches(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("{}")
    state, summary, _ = _state(tmp_path, runs.RunRecord("r9"), resumed=False)
    # A new run never skips, even with a record at hand.
    assert state.reuse("evaluate", {"checkpoint": "c1"}) is None
    state.done("evaluate", "ok", {"checkpoint": "c1"}, {"report_json": str(report), "test_accuracy": 0.9})
    state.done("serve", "up")  # not recorded: a live endpoint is never reused
    on_disk = runs.load(str(tmp_path), "r9")
    assert set(on_disk.stages) == {"evaluate"}
    assert summary["stages"] == ["evaluate", "serve"]

    resumed, summary, lines = _state(tmp_path, runs.load(str(tmp_path), "r9"), resumed=True)
    paths = lambda out: [out.get("report_json")]  # noqa: E731
    assert resumed.reuse("evaluate", {"checkpoint": "c1"}, paths) == {"report_json": str(report), "test_accuracy": 0.9}
    assert summary["skipped"] == ["evaluate"] and resumed.record.skipped == ["evaluate"]
    # Another checkpoint (a retrained model) is another input: evaluate runs again, and says why.
    assert resumed.reuse("evaluate", {"checkpoint": "c2"}, paths) is None
    assert lines[-1] == "[evaluate] not skipped: its inputs changed (checkpoint)"
    report.unlink()
    assert resumed.reuse("evaluate", {"checkpoint": "c1"}, paths) is None
    assert lines[-1] == f"[evaluate] not skipped: its output {report} is gone"


def test_resume_of_an_unknown_run_is_one_line_before_ray_starts(tmp_path, capsys):
    from workloads.cli import main

    rc = main(["run", "--smoke", "--storage", str(tmp_path / "results"), "--lake", str(tmp_path / "lake"),
               "--resume", "20990101-000000-abcdef"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f'error: Got "20990101-000000-abcdef" for --resume: no run record at '
                   f"{tmp_path / 'results' / 'runs' / '20990101-000000-abcdef.json'}; the run prints its id when it starts "
                   "and in its summary (run.id); its storage must be the same train.storage_path"]
    assert not (tmp_path / "lake").exists()  # nothing was ingested
