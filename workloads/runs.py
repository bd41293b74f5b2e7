"""Run records: what a pipeline run has finished, so ``rayspace run --resume RUN_ID`` finishes its work.

A pipeline run has a run id (``--run-id``; inside a Ray job, the job's submission
id; else a fresh ``<time>-<hex>``). The id names the run's Train run and Tune
sweep, and its record ``<train.storage_path>/runs/<run-id>.json``, rewritten
atomically after every stage with the stage's inputs and outputs.

A resumed run skips a stage only when the record says it finished, the inputs it
would use now are the recorded ones (the same data fingerprint, the same train
or tune settings, the same checkpoint), and the outputs it recorded are still
there. Anything else is run again, and the engines resume what they can: Ray
Train V2 continues a run of the same name from its latest checkpoint in storage,
and Tune restores an interrupted sweep (``Tuner.restore``). Because the Train and
Tune names carry a digest of their inputs, a run whose inputs changed starts a
fresh Train run instead of continuing one trained on other data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from workloads import storage
from workloads.exceptions import ConfigError, RunRecordError

logger = logging.getLogger(__name__)

#: Folder under ``train.storage_path`` holding one record per pipeline run.
RUNS_DIR = "runs"
#: What a run id may look like: it becomes part of file and Train/Tune run names.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RUN_ID_RULE = "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
FORMAT = 1


def check_run_id(value: str, setting: str = "--run-id") -> str:
    """Return ``value`` if it is a valid run id.

    Raises:
        ConfigError: It is not (the message names the setting, the value and the rule).
    """
    if not isinstance(value, str) or not RUN_ID_PATTERN.match(value):
        raise ConfigError(f'Got "{value}" for {setting}: {RUN_ID_RULE}', [(setting, value, RUN_ID_RULE)])
    return value


def new_run_id(submission_id: str | None = None) -> str:
    """The id of a new run: the Ray job's submission id inside a job, else a fresh ``<time>-<hex>``.

    Args:
        submission_id: The job's submission id (:func:`workloads.jobs.current_job`), if any.
    """
    if submission_id and RUN_ID_PATTERN.match(submission_id):
        return submission_id
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def digest(value: Any) -> str:
    """A short, stable digest of a JSON-able value (inputs of a stage, a config section)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def engine_run_name(prefix: str, run_id: str, inputs: Any) -> str:
    """The name of the Train run or Tune sweep of a pipeline run.

    Stable across ``--resume`` (so Ray Train V2 and Tune continue it) as long as the
    inputs are the same; other inputs give another name, so a run trained on other
    data is never continued.
    """
    return f"{prefix}-{run_id}-{digest(inputs)[:8]}"


def record_uri(storage_path: str, run_id: str) -> str:
    """Where a run's record lives: ``<train.storage_path>/runs/<run-id>.json``."""
    return storage.join(storage_path, RUNS_DIR, f"{check_run_id(run_id)}.json")


@dataclass
class RunRecord:
    """What a pipeline run has done so far.

    Attributes:
        run_id: The run's id.
        stages: Finished stages by name: ``{"inputs": ..., "outputs": ..., "finished_at": ...}``.
        status: ``running`` until the last requested stage finished, then ``finished``.
        attempts: How many times the run was started (1 + the resumes).
        skipped: Stages the latest attempt skipped because the record had them.
    """

    run_id: str
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    updated_at: str = ""
    status: str = "running"
    attempts: int = 1
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        rec = cls(**known)
        if not isinstance(rec.stages, dict) or not all(isinstance(v, dict) for v in rec.stages.values()):
            raise TypeError("stages must map stage names to objects")
        return rec

    def complete(self, stage: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Record that ``stage`` finished with these inputs and outputs (replacing an earlier entry)."""
        self.stages[stage] = {
            "inputs": inputs, "outputs": outputs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def outputs(self, stage: str) -> dict[str, Any]:
        """The recorded outputs of a finished stage (``{}`` if it did not finish)."""
        return dict(self.stages.get(stage, {}).get("outputs") or {})


def reusable(
    record: RunRecord | None,
    stage: str,
    inputs: dict[str, Any],
    paths: Iterable[str | None] = (),
    exists: Callable[[str], bool] = storage.exists,
) -> tuple[bool, str]:
    """Whether a stage can be skipped: recorded as finished, same inputs, outputs still there.

    Args:
        record: The run's record (``None``: a new run, nothing is skipped).
        stage: The stage name.
        inputs: What the stage would use now; compared with what it used then (JSON-equal).
        paths: Output locations the stage recorded (files or directories); each must exist.
        exists: How to check a location (default: :func:`workloads.storage.exists`).

    Returns:
        ``(True, "")`` to skip, else ``(False, why it runs again)``.
    """
    if record is None:
        return False, "new run"
    entry = record.stages.get(stage)
    if entry is None:
        return False, "not finished in the recorded run"
    then = json.loads(json.dumps(entry.get("inputs") or {}, sort_keys=True, default=str))
    now = json.loads(json.dumps(inputs, sort_keys=True, default=str))
    if then != now:
        changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        return False, f"its inputs changed ({', '.join(changed)})"
    for path in paths:
        if not path:
            return False, "an output was not recorded"
        try:
            if not exists(path):
                return False, f"its output {path} is gone"
        except OSError as e:  # StorageError included: an unreadable output is as good as a missing one
            return False, f"its output {path} cannot be checked ({e})"
    return True, ""


def load(storage_path: str, run_id: str) -> RunRecord:
    """Read a run's record.

    Raises:
        ConfigError: ``run_id`` is not a valid id.
        RunRecordError: There is no record for it, or it is not a run record.
    """
    uri = record_uri(storage_path, run_id)
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise RunRecordError(
            f'Got "{run_id}" for --resume: no run record at {uri}; the run prints its id when it starts '
            "and in its summary (run.id); its storage must be the same train.storage_path"
        ) from None
    try:
        rec = RunRecord.from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise RunRecordError(f"{uri}: not a valid run record ({e})") from e
    if rec.run_id != run_id:
        raise RunRecordError(f"{uri}: records run {rec.run_id!r}, not {run_id!r}")
    return rec


def exists(storage_path: str, run_id: str) -> bool:
    """Whether a run with this id has a record."""
    return storage.exists(record_uri(storage_path, run_id))


def save(storage_path: str, record: RunRecord) -> str:
    """Write a run's record atomically (readers see the previous one or this one); return its location."""
    record.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = json.dumps(record.to_dict(), indent=1, sort_keys=True, default=str).encode()
    return storage.write_bytes(record_uri(storage_path, record.run_id), data)


def open_run(storage_path: str, *, run_id: str | None = None, resume: str | None = None,
             submission_id: str | None = None) -> tuple[RunRecord, bool]:
    """The record a pipeline run starts from, and whether it continues an earlier run.

    Args:
        storage_path: ``train.storage_path`` (records live under it).
        run_id: ``--run-id``: the id of a new run (refused if a run with this id exists).
        resume: ``--resume``: the id of an interrupted run to finish.
        submission_id: The Ray job's submission id when this is a job's driver. It names the run;
            a driver started again under the same submission continues the job's run.

    Raises:
        ConfigError: An id is invalid, ``--run-id`` names an existing run, or the two flags disagree.
        RunRecordError: ``--resume`` names a run without a (readable) record.
    """
    if resume is not None:
        check_run_id(resume, "--resume")
        if run_id is not None and run_id != resume:
            raise ConfigError(
                f'Got "{run_id}" for --run-id with --resume "{resume}": they must name the same run (or give only --resume)',
                [("--run-id", run_id, "must equal --resume")],
            )
        return _continue(load(storage_path, resume)), True
    if run_id is not None:
        check_run_id(run_id)
        if exists(storage_path, run_id):
            rule = f"names an existing run ({record_uri(storage_path, run_id)}); finish it with --resume {run_id}, or choose another id"
            raise ConfigError(f'Got "{run_id}" for --run-id: {rule}', [("--run-id", run_id, rule)])
        return RunRecord(run_id), False
    rid = new_run_id(submission_id)
    if submission_id and rid == submission_id and exists(storage_path, rid):
        logger.info("run %s: the job's driver started again; continuing the job's run", rid)
        return _continue(load(storage_path, rid)), True
    return RunRecord(rid), False


def _continue(record: RunRecord) -> RunRecord:
    record.attempts += 1
    record.status = "running"
    record.skipped = []
    return record
