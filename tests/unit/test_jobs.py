"""Job helpers: job detection, storage that survives the job, job records, metadata, the upload.

Fast: no Ray cluster. The job environment is built the way Ray's job supervisor
builds it (a JSON object with ``runtime_env`` and ``metadata``); the upload is
packed by Ray's own packaging code, so the excludes are checked by the matcher
that applies them.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from workloads import jobs
from workloads.config import load_config
from workloads.exceptions import ConfigError, JobError


def job_env(tmp_path: Path, submission_id: str = "raysubmit_abc123", metadata: dict | None = None) -> dict[str, str]:
    """The environment Ray's JobSupervisor gives an entrypoint (see its _get_driver_env_vars)."""
    meta = {jobs.SUBMISSION_ID_KEY: submission_id, **(metadata or {})}
    return {jobs.JOB_CONFIG_ENV: json.dumps({
        "runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip", "env_vars": {"PYTHONUNBUFFERED": "1"}},
        "metadata": meta,
    })}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Stands in for Ray's unpacked copy of the upload (the entrypoint's cwd)."""
    d = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    d.mkdir(parents=True)
    return d


# ------------------------------------------------------------------------------- detection


def test_not_a_job_without_rays_variable(tmp_path):
    assert jobs.current_job({}, str(tmp_path)) is None
    assert jobs.check_job_storage(load_config(None), {}, str(tmp_path)) is None


def test_job_context_from_the_supervisors_variable(tmp_path, workdir):
    ctx = jobs.current_job(job_env(tmp_path, metadata={"stage": "train"}), str(workdir))
    assert ctx is not None
    assert ctx.submission_id == "raysubmit_abc123"
    assert ctx.metadata["stage"] == "train"
    assert ctx.working_dir == str(workdir)
    assert ctx.working_dir_uri == "gcs://_ray_pkg_0123abcd.zip"


@pytest.mark.parametrize("raw, match", [("{not json", "is not JSON"), ("[1, 2]", "JSON object, got list")])
def test_malformed_job_variable_is_an_error(raw, match, tmp_path):
    with pytest.raises(JobError, match=match):
        jobs.current_job({jobs.JOB_CONFIG_ENV: raw}, str(tmp_path))


# --------------------------------------------------------------------------------- storage


def test_relative_storage_refused_in_a_job_naming_every_setting(tmp_path, workdir):
    cfg = load_config(None)  # built-in defaults: ./lake, ./results, ./models
    with pytest.raises(ConfigError) as err:
        jobs.check_job_storage(cfg, job_env(tmp_path), str(workdir))
    assert [p[0] for p in err.value.problems] == list(jobs.STORAGE_SETTINGS)
    msg = str(err.value)
    # One line: every setting and value, the rule once, the fix once (not a paragraph per setting).
    assert "\n" not in msg
    assert ('Got "./lake" for data.lake, "./results" for train.storage_path, "./results" for tune.storage_path, '
            '"./models" for registry.path: must be an absolute path or a URI inside a Ray job') in msg
    assert msg.count(jobs.RULE_RELATIVE) == 1 and msg.count("jobs/local.yaml") == 1
    assert "--config jobs/kuberay.yaml" in msg and "--config jobs/local.yaml" in msg
    assert str(workdir) in msg  # says where the files would have gone


def test_absolute_paths_and_uris_pass(tmp_path, workdir):
    shared = tmp_path / "shared"
    cfg = load_config(None, {
        "data.lake": str(shared / "lake"), "train.storage_path": "s3://bucket/results",
        "tune.storage_path": "gs://bucket/results", "registry.path": f"file://{shared}/models",
    })
    ctx = jobs.check_job_storage(cfg, job_env(tmp_path), str(workdir))
    assert ctx is not None and ctx.submission_id == "raysubmit_abc123"


def test_absolute_path_inside_the_jobs_working_dir_is_refused(tmp_path, workdir):
    cfg = load_config(None, {
        "data.lake": str(tmp_path / "lake"), "train.storage_path": str(workdir / "results"),
        "tune.storage_path": str(tmp_path / "r"), "registry.path": "file://models",
    })
    with pytest.raises(ConfigError) as err:
        jobs.check_job_storage(cfg, job_env(tmp_path), str(workdir))
    assert [(p[0], p[1]) for p in err.value.problems] == [
        ("train.storage_path", str(workdir / "results")), ("registry.path", "file://models")]
    assert "is inside the job's temporary working dir" in str(err.value)


def test_load_config_applies_the_check_inside_a_job(tmp_path, workdir, monkeypatch, repo_root):
    monkeypatch.chdir(workdir)
    for key, value in job_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAYSPACE_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="train.storage_path"):
        load_config(str(repo_root / "rayspace.yaml"))  # the laptop config: relative paths
    # The flags of `rayspace run` arrive as overrides and fix it.
    cfg = load_config(str(repo_root / "rayspace.yaml"), {
        "data.lake": "/data/lake", "train.storage_path": "/data/results",
        "tune.storage_path": "/data/results", "registry.path": "/data/models"})
    assert cfg.train.storage_path == "/data/results"


@pytest.mark.parametrize("name", ["local.yaml", "kuberay.yaml"])
def test_shipped_job_configs_are_valid_inside_a_job(name, tmp_path, workdir, monkeypatch, repo_root):
    monkeypatch.chdir(workdir)
    for key, value in job_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    cfg = load_config(str(repo_root / "jobs" / name))
    assert all(os.path.isabs(str(jobs._setting(cfg, s))) for s in jobs.STORAGE_SETTINGS)


# ---------------------------------------------------------------------------------- records


def test_job_record_is_written_whole_and_names_the_job(tmp_path, workdir):
    ctx = jobs.current_job(job_env(tmp_path), str(workdir))
    cfg = load_config(None, {"train.storage_path": str(tmp_path / "results")})
    summary = {"stages": ["ingest"], "job": jobs.job_summary(ctx, cfg), "elapsed_s": 1.0}
    path = jobs.write_job_record(summary, cfg.train.storage_path)
    assert path == str(tmp_path / "results" / "jobs" / "raysubmit_abc123.json")
    assert json.loads(Path(path).read_text()) == summary
    assert summary["job"]["storage"]["train.storage_path"] == str(tmp_path / "results")
    assert os.listdir(tmp_path / "results" / "jobs") == ["raysubmit_abc123.json"]  # no temp file left


def test_job_record_to_a_uri(tmp_path):
    import fsspec

    summary = {"job": {"submission_id": "raysubmit_uri"}, "stages": []}
    target = jobs.write_job_record(summary, "memory://rayspace-test/results")
    assert target == "memory://rayspace-test/results/jobs/raysubmit_uri.json"
    with fsspec.open(target, "rb") as f:
        assert json.loads(f.read()) == summary


def test_job_record_unwritable_storage_is_a_job_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the storage folder should be")
    with pytest.raises(JobError, match="cannot write the job record"):
        jobs.write_job_record({"job": {"submission_id": "x"}}, str(blocker))


# ----------------------------------------------------------------------------- submission


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def test_submission_metadata_records_the_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    meta = jobs.submission_metadata("train", repo=repo, config="jobs/local.yaml")
    assert meta["git_commit"] == _git(repo, "rev-parse", "HEAD").strip()
    assert meta["git_dirty"] == "false"
    assert (meta["app"], meta["stage"], meta["config"]) == ("rayspace", "train", "jobs/local.yaml")
    assert all(isinstance(v, str) for v in meta.values())  # Ray's metadata is str -> str
    (repo / "a.py").write_text("x = 2\n")
    assert jobs.submission_metadata("train", repo=repo)["git_dirty"] == "true"


def test_submission_metadata_outside_git(tmp_path):
    meta = jobs.submission_metadata("pipeline", repo=tmp_path)
    assert "git_commit" not in meta and meta["stage"] == "pipeline"


def test_metadata_cli_prints_json_for_ray_job_submit(repo_root):
    out = subprocess.run(["python", "-m", "workloads.jobs", "metadata", "--stage", "tune"], cwd=repo_root,
                         capture_output=True, text=True, check=True).stdout
    meta = json.loads(out)
    assert meta["stage"] == "tune" and meta["app"] == "rayspace"
    if (repo_root / ".git").exists():  # a source tarball has no commit to record
        assert len(meta["git_commit"]) == 40 and meta["git_dirty"] in ("true", "false")


# ----------------------------------------------------------------------------- runtime env


def test_runtime_env_file_reads_like_ray_job_submit(repo_root):
    env = jobs.load_runtime_env(repo_root / jobs.RUNTIME_ENV_FILE, working_dir=repo_root)
    assert env["working_dir"] == str(repo_root)
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert "/lake/" in env["excludes"] and ".venv*/" in env["excludes"]
    assert set(env) <= {"working_dir", "excludes", "env_vars"}


@pytest.mark.parametrize("text, match", [
    ("- a\n- b\n", "must be a mapping"),
    ("excludes: lake\n", "must be a list"),
    ("env_vars: {A: 1}\n", "must map names to strings"),
    ("excludes: [\n", "not valid YAML"),
])
def test_runtime_env_file_errors(text, match, tmp_path):
    p = tmp_path / "runtime_env.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        jobs.load_runtime_env(p)


def test_runtime_env_cli_adds_env_vars(repo_root):
    out = subprocess.run(["python", "-m", "workloads.jobs", "runtime-env", "--env", "RAYSPACE_CONFIG=jobs/local.yaml"],
                         cwd=repo_root, capture_output=True, text=True, check=True).stdout
    env = json.loads(out)
    assert env["env_vars"]["RAYSPACE_CONFIG"] == "jobs/local.yaml" and "working_dir" not in env
    bad = subprocess.run(["python", "-m", "workloads.jobs", "runtime-env", "--env", "NOVALUE"], cwd=repo_root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and 'Got "NOVALUE" for --env' in bad.stderr


def _ray_package(root: Path, excludes: list[str], out: Path) -> list[str]:
    """The files Ray would upload for ``--working-dir root`` (packed by Ray's own code)."""
    from ray._private.runtime_env.packaging import _zip_files

    # Without .gitignore: the excludes alone must keep data out (a tarball of the repo has no .gitignore rules
    # Ray could apply when RAY_RUNTIME_ENV_IGNORE_GITIGNORE is set).
    _zip_files(str(root), excludes, str(out), include_gitignore=False)
    with zipfile.ZipFile(out) as z:
        return sorted(n for n in z.namelist() if not n.endswith("/"))


def test_upload_leaves_out_data_environments_and_history(tmp_path, repo_root):
    excludes = jobs.load_runtime_env(repo_root / jobs.RUNTIME_ENV_FILE)["excludes"]
    tree = tmp_path / "repo"
    keep = ["workloads/pipeline.py", "jobs/local.yaml", "runtime_env.yaml", "notebooks/workspace.ipynb",
            "serve/config.yaml", "tests/unit/test_x.py", "cluster/base/raycluster.yaml", "bench/serve_bench.py"]
    drop = ["lake/wdbc/part-0.parquet", "lake/_manifests/wdbc.json", "models/wdbc/v1/model.pt", "results/run/ckpt/x.json",
            "reports/r.png", ".venv/lib/python3.11/site.py", ".venv-checkov/bin/checkov", ".git/objects/ab/cd",
            "bench/results/serve.json", "workloads/__pycache__/pipeline.cpython-311.pyc", "rayspace.egg-info/PKG-INFO",
            ".pytest_cache/v/x", "notebooks/.ipynb_checkpoints/workspace-checkpoint.ipynb", "data/extra.parquet"]
    for rel in keep + drop:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    assert _ray_package(tree, excludes, tmp_path / "pkg.zip") == sorted(keep)


def test_upload_of_this_repository_is_small(tmp_path, repo_root):
    excludes = jobs.load_runtime_env(repo_root / jobs.RUNTIME_ENV_FILE)["excludes"]
    names = _ray_package(repo_root, excludes, tmp_path / "pkg.zip")
    assert "workloads/pipeline.py" in names and "jobs/kuberay.yaml" in names
    assert not [n for n in names if n.split("/")[0] in {"lake", "models", "results", ".venv", ".git"}]
    assert (tmp_path / "pkg.zip").stat().st_size < 8 * 2**20
