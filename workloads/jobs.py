"""Running as a Ray job: where outputs may go, what the job records, and what it uploads.

``ray job submit --working-dir . -- python -m workloads.pipeline ...`` runs the
entrypoint in a temporary, unpacked copy of the working directory on the head
(``<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>``).
Reading from there is the point (the code and ``--config jobs/*.yaml`` travel
with it), but anything written there is lost with the job and invisible to the
other nodes. So inside a job every setting that names where the workspace
*writes* must be an absolute path on storage all nodes share, or a URI;
:func:`check_job_storage` refuses the rest with the setting, the value and the
rule, before Ray does any work.

Ray marks the driver of a submitted job with ``RAY_JOB_CONFIG_JSON_ENV_VAR``
(the job supervisor sets it for the entrypoint process only, never for tasks or
actors), carrying the submission's runtime env and metadata; :func:`current_job`
reads it. A notebook or ``rayspace run`` on the head is not a job and keeps its
own, persistent working directory.

The runtime env file (``runtime_env.yaml``) lists what the upload leaves out;
:func:`load_runtime_env` reads it for ``ray.init(runtime_env=...)`` (the
notebook) the same way ``ray job submit --runtime-env`` does.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workloads.exceptions import ConfigError, JobError

logger = logging.getLogger(__name__)

#: Set by Ray's job supervisor for a submitted job's entrypoint (and nothing else).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: Key of the submission ID in a job's metadata (Ray's ``JOB_ID_METADATA_KEY``).
SUBMISSION_ID_KEY = "job_submission_id"
#: Settings naming where the workspace writes: the lake (ingest), checkpoints/results, the registry.
STORAGE_SETTINGS = ("data.lake", "train.storage_path", "tune.storage_path", "registry.path")
#: The runtime env file at the repository root.
RUNTIME_ENV_FILE = "runtime_env.yaml"
#: Folder under ``train.storage_path`` holding one record per finished job.
JOB_RECORDS_DIR = "jobs"


@dataclass(frozen=True)
class JobContext:
    """The Ray job this process is the driver of.

    Attributes:
        submission_id: ``raysubmit_...`` or the ``--submission-id`` given; ``None`` for
            a job started some other way that carries no metadata.
        metadata: The submission's ``--metadata-json`` (plus Ray's own keys).
        working_dir: The driver's working directory: Ray's temporary copy of the upload.
        working_dir_uri: The uploaded package (``gcs://_ray_pkg_<hash>.zip``), if any.
    """

    submission_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    working_dir_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_job(environ: Mapping[str, str] | None = None, cwd: str | None = None) -> JobContext | None:
    """Describe the Ray job this process is the entrypoint of, or ``None`` outside one.

    Args:
        environ: Environment to read (default ``os.environ``).
        cwd: Working directory (default ``os.getcwd()``).

    Raises:
        JobError: ``RAY_JOB_CONFIG_JSON_ENV_VAR`` is set but is not the JSON object Ray writes.
    """
    env = os.environ if environ is None else environ
    raw = env.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        job_config = json.loads(raw)
    except ValueError as e:
        raise JobError(f"{JOB_CONFIG_ENV} is not JSON ({e}); was it set by hand?") from e
    if not isinstance(job_config, dict):
        raise JobError(f"{JOB_CONFIG_ENV} must hold a JSON object, got {type(job_config).__name__}")
    metadata = {str(k): str(v) for k, v in (job_config.get("metadata") or {}).items()}
    runtime_env = job_config.get("runtime_env") or {}
    return JobContext(
        submission_id=metadata.get(SUBMISSION_ID_KEY),
        metadata=metadata,
        working_dir=os.path.abspath(cwd or os.getcwd()),
        working_dir_uri=runtime_env.get("working_dir") if isinstance(runtime_env, dict) else None,
    )


def is_uri(path: str) -> bool:
    """Whether a storage setting is a URI (``s3://``, ``gs://``, ``file://``...) rather than a path."""
    return "://" in path


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:  # different drives on Windows
        return False


def _setting(cfg: Any, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return getattr(getattr(cfg, section), name)


#: The rules :func:`storage_problems` reports, one per kind of problem.
RULE_RELATIVE = "must be an absolute path or a URI inside a Ray job"
RULE_INSIDE = "is inside the job's temporary working dir"
#: How to fix every storage problem at once.
STORAGE_FIX = ("pass --config jobs/kuberay.yaml (KubeRay) or --config jobs/local.yaml (local Ray), or set them to "
               "shared storage (/data/... on the KubeRay PVC, s3://, gs://)")


def storage_problems(cfg: Any, job: JobContext) -> list[tuple[str, Any, str]]:
    """Storage settings that would write into the job's temporary working directory.

    Args:
        cfg: A :class:`~workloads.config.WorkspaceConfig`.
        job: The job (its working directory is the temporary copy).

    Returns:
        ``(setting, value, rule)`` per offending setting, in :data:`STORAGE_SETTINGS` order;
        the rule is :data:`RULE_RELATIVE` or :data:`RULE_INSIDE`.
    """
    problems: list[tuple[str, Any, str]] = []
    for dotted in STORAGE_SETTINGS:
        value = str(_setting(cfg, dotted))
        if is_uri(value):
            if not value.startswith("file://"):
                continue
            value_path = value.removeprefix("file://")
        else:
            value_path = os.path.expanduser(value)
        if not os.path.isabs(value_path):
            problems.append((dotted, value, RULE_RELATIVE))
        elif job.working_dir and _inside(value_path, job.working_dir):
            problems.append((dotted, value, RULE_INSIDE))
    return problems


def storage_message(problems: list[tuple[str, Any, str]], working_dir: str) -> str:
    """One line for all storage problems: the settings and values per rule, why, and the fix once."""
    parts = []
    for rule in dict.fromkeys(r for _, _, r in problems):
        named = ", ".join(f'"{v}" for {f}' for f, v, r in problems if r == rule)
        parts.append(f"Got {named}: {rule}")
    return (f"{'; '.join(parts)} (the job runs in a temporary copy of the working dir, {working_dir}: what is "
            f"written there is lost with the job and other nodes cannot see it); {STORAGE_FIX}")


def check_job_storage(
    cfg: Any, environ: Mapping[str, str] | None = None, cwd: str | None = None
) -> JobContext | None:
    """Refuse storage settings that would be lost with the job; outside a job, do nothing.

    Args:
        cfg: A :class:`~workloads.config.WorkspaceConfig`.
        environ: Environment to read (default ``os.environ``).
        cwd: Working directory (default ``os.getcwd()``).

    Returns:
        The job this process runs as, or ``None`` when it is not a Ray job's driver.

    Raises:
        ConfigError: A storage setting is relative or inside the job's working dir;
            ``problems`` names each ``(setting, value, rule)``, the message all of them on one line.
    """
    job = current_job(environ, cwd)
    if job is None:
        return None
    problems = storage_problems(cfg, job)
    if problems:
        raise ConfigError(storage_message(problems, job.working_dir), problems)
    return job


# ------------------------------------------------------------------------------ job records


def job_summary(job: JobContext, cfg: Any) -> dict[str, Any]:
    """What a job's summary says about the job: who it is and where its outputs went."""
    return {
        **job.to_dict(),
        "storage": {dotted: str(_setting(cfg, dotted)) for dotted in STORAGE_SETTINGS},
    }


def write_job_record(summary: Mapping[str, Any], storage_path: str) -> str:
    """Write a finished job's summary to ``<storage_path>/jobs/<submission id>.json``.

    The job's own logs live on the head and go with the cluster; this record stays
    with the results it describes. Local writes go to a temp file renamed into
    place, so a reader never sees half a record; object stores write whole objects.

    Args:
        summary: The pipeline summary, with ``summary["job"]`` from :func:`job_summary`.
        storage_path: ``train.storage_path`` (absolute path or URI).

    Returns:
        Where the record was written.

    Raises:
        JobError: The record could not be written.
    """
    job = summary.get("job") or {}
    name = job.get("submission_id") or "unnamed-job"
    body = json.dumps(summary, indent=1, sort_keys=False, default=str).encode()
    if is_uri(storage_path) and not storage_path.startswith("file://"):
        from workloads import storage
        from workloads.exceptions import StorageError

        try:
            return storage.write_bytes(storage.join(storage_path, JOB_RECORDS_DIR, f"{name}.json"), body)
        except StorageError as e:
            raise JobError(f"cannot write the job record: {e}") from e
    folder = Path(storage_path.removeprefix("file://")).expanduser() / JOB_RECORDS_DIR
    target_path = folder / f"{name}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target_path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise JobError(f"cannot write the job record {target_path}: {e}") from e
    return str(target_path)


# ------------------------------------------------------------------------ submission helpers


def submission_metadata(stage: str, *, repo: str | os.PathLike[str] = ".", config: str | None = None) -> dict[str, str]:
    """Metadata to attach with ``ray job submit --metadata-json`` (strings only, as Ray requires).

    Args:
        stage: What the job runs (``pipeline``, ``ingest``, ``train``, ``tune``...).
        repo: The working directory being uploaded; its git commit is recorded when it is a checkout.
        config: The ``--config`` file the entrypoint reads, if any.

    Raises:
        JobError: ``repo`` is a git checkout but ``git`` could not describe it.
    """
    meta = {"app": "rayspace", "stage": stage, "submitted_by": getpass.getuser()}
    if config:
        meta["config"] = config
    if (Path(repo) / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise JobError(f"cannot read the git commit of {repo}: {e}") from e
        meta["git_commit"] = commit
        meta["git_dirty"] = "true" if dirty else "false"
    return meta


def load_runtime_env(path: str | os.PathLike[str] = RUNTIME_ENV_FILE, *, working_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the runtime env file as ``ray job submit --runtime-env`` does, for ``ray.init(runtime_env=...)``.

    Args:
        path: The YAML file.
        working_dir: Set ``working_dir`` to this (absolute) folder; a relative
            ``working_dir`` in the file is resolved against the file's folder.

    Raises:
        ConfigError: The file is missing, not YAML, or its fields have the wrong types.
    """
    p = Path(path)
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f'Got "{p}" for the runtime env file: cannot read it ({e.strerror})') from e
    except yaml.YAMLError as e:
        raise ConfigError(f'Got "{p}" for the runtime env file: not valid YAML ({e})') from e
    if not isinstance(loaded, dict):
        raise ConfigError(f'Got "{p}" for the runtime env file: must be a mapping of runtime_env fields')
    excludes = loaded.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes):
        raise ConfigError(f"Got {excludes!r} for excludes in {p}: must be a list of gitignore-style patterns")
    env_vars = loaded.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise ConfigError(f"Got {env_vars!r} for env_vars in {p}: must map names to strings (quote numbers)")
    if working_dir is not None:
        loaded["working_dir"] = os.path.abspath(working_dir)
    elif "working_dir" in loaded and not is_uri(str(loaded["working_dir"])):
        loaded["working_dir"] = str((p.parent / str(loaded["working_dir"])).resolve())
    return loaded


def main(argv: list[str] | None = None) -> int:
    """``python -m workloads.jobs metadata|runtime-env``: print JSON for ``ray job submit``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workloads.jobs", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    meta = sub.add_parser("metadata", help="JSON for --metadata-json")
    meta.add_argument("--stage", default="pipeline")
    meta.add_argument("--config")
    env = sub.add_parser("runtime-env", help="the runtime env file as JSON, for --runtime-env-json")
    env.add_argument("--file", default=RUNTIME_ENV_FILE)
    env.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="add an env var (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "metadata":
            out: dict[str, Any] = submission_metadata(args.stage, config=args.config)
        else:
            out = load_runtime_env(args.file)
            out.pop("working_dir", None)  # `ray job submit --working-dir` names it
            for item in args.env:
                name, sep, value = item.partition("=")
                if not sep or not name:
                    raise ConfigError(f'Got "{item}" for --env: must be NAME=VALUE')
                out.setdefault("env_vars", {})[name] = value
    except (ConfigError, JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
