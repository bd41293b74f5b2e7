"""Every mistake gets one clear line: the table of bad inputs and what ``rayspace`` answers.

Each row is a command line a person could type, with the words its answer must
contain. The answer must be exactly one ``error: ...`` line on stderr, no
traceback, and a non-zero exit, and it must come before Ray starts (starting Ray
fails these tests). A new command joins by adding a row to :data:`CASES`.

Placeholders in argv: ``{tmp}`` is the per-test workspace built by :func:`workspace`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workloads import lake
from workloads.cli import main


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, what the one error line must say, and its environment."""

    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


JOB_ENV = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"metadata": {"job_submission_id": "raysubmit_t1"}})}

CASES: list[Case] = [
    # 1. an empty CSV
    Case("empty-csv", ("data", "ingest", "--source", "{tmp}/empty.csv", "--lake", "{tmp}/lake-new"),
         ("empty.csv", "empty file", "header row")),
    # 2. a lake under a regular file, or under /proc
    Case("lake-under-file", ("data", "ingest", "--lake", "{tmp}/afile/lake"),
         ('"{tmp}/afile/lake" for data.lake', "cannot create", "Not a directory")),
    Case("lake-under-proc", ("data", "ingest", "--lake", "/proc/rayspace-lake"),
         ('"/proc/rayspace-lake" for data.lake', "cannot create")),
    Case("list-lake-under-file", ("data", "list", "--lake", "{tmp}/afile/lake"),
         ('"{tmp}/afile/lake" for data.lake', "no lake there")),
    # 3. a corrupt pointer / manifest
    Case("list-corrupt-pointer", ("data", "list", "--lake", "{tmp}/lake-bad-pointer"),
         ("_current.json", "not a valid lake pointer")),
    Case("list-corrupt-legacy-manifest", ("data", "list", "--lake", "{tmp}/lake-bad-manifest"),
         ("_manifest.json", "not a valid partition manifest")),
    # 4. and 8. kubectl missing: one line on stderr, before the cluster is contacted
    Case("job-logs-port-forward-without-kubectl", ("job", "logs", "some-job", "--port-forward"),
         ("job logs --port-forward needs kubectl", "not on PATH", "--dashboard-url"), {"PATH": "{tmp}/nobin"}),
    Case("connect-run-without-kubectl", ("cluster", "connect", "--run"),
         ("cluster connect --run needs kubectl", "not on PATH", "drop --run"), {"PATH": "{tmp}/nobin"}),
    # 5. a lake or registry that is not there is not "(none)"
    Case("list-lake-typo", ("data", "list", "--lake", "{tmp}/typo"),
         ('"{tmp}/typo" for data.lake', "no lake there", "rayspace data ingest")),
    Case("gc-lake-typo", ("data", "gc", "--lake", "{tmp}/typo"), ('No lake at "{tmp}/typo"',)),
    Case("models-registry-typo", ("models", "--registry", "{tmp}/typo"),
         ('"{tmp}/typo" for registry.path', "no registry there")),
    # 6. a text setting keeps its text; a number setting still says the rule
    Case("set-number-not-a-number", ("config", "validate", "--set", "train.lr=abc"),
         ('"abc" for train.lr', "must be a valid number")),
    # 7. a semicolon- or tab-separated CSV is a delimiter problem, not 30 missing columns
    Case("semicolon-csv", ("data", "ingest", "--source", "{tmp}/semi.csv", "--lake", "{tmp}/lake-new"),
         ("semi.csv", "';'-separated", "comma-separated")),
    Case("tab-csv", ("data", "ingest", "--source", "{tmp}/tab.csv", "--lake", "{tmp}/lake-new"),
         ("tab.csv", "'\\t'-separated")),
    # 9. a Ray job without a job config: one line naming every setting and the fix
    Case("job-without-job-config", ("run", "--smoke"),
         ('"./lake" for data.lake, "./results" for train.storage_path, "./results" for tune.storage_path, '
          '"./models" for registry.path', "must be an absolute path or a URI inside a Ray job",
          "--config jobs/kuberay.yaml", "--config jobs/local.yaml"), JOB_ENV),
    # 11. a missing checkpoint or lake, before Ray starts
    Case("evaluate-missing-checkpoint", ("evaluate", "{tmp}/results/nope", "--set", "data.lake={tmp}/lake"),
         ('"{tmp}/results/nope" for CHECKPOINT', "no such directory")),
    Case("evaluate-not-a-checkpoint", ("evaluate", "{tmp}/afolder", "--set", "data.lake={tmp}/lake"),
         ('"{tmp}/afolder" for CHECKPOINT', "model.json is missing")),
    Case("evaluate-missing-lake", ("evaluate", "{tmp}/ckpt", "--set", "data.lake={tmp}/typo"),
         ('"{tmp}/typo" for data.lake', "no lake there")),
    Case("train-missing-lake", ("train", "--set", "data.lake={tmp}/typo"), ('"{tmp}/typo" for data.lake', "no lake there")),
    Case("train-empty-lake", ("train", "--set", "data.lake={tmp}/lake-empty"), ("lake-empty", "no committed data")),
    Case("train-unknown-snapshot", ("train", "--set", "data.lake={tmp}/lake", "--set", "data.snapshot=99"),
         ("Got 99 for data.snapshot", "no such snapshot")),
    Case("tune-missing-lake", ("tune", "--set", "data.lake={tmp}/typo"), ('"{tmp}/typo" for data.lake', "no lake there")),
    Case("promote-missing-checkpoint", ("promote", "{tmp}/nope", "--set", "data.lake={tmp}/lake", "--registry", "{tmp}/m"),
         ('"{tmp}/nope" for CHECKPOINT', "no such directory")),
    Case("promote-missing-lake", ("promote", "{tmp}/ckpt", "--set", "data.lake={tmp}/typo", "--registry", "{tmp}/m"),
         ('"{tmp}/typo" for data.lake', "no lake there")),
    Case("promote-with-metrics-missing-checkpoint",
         ("promote", "{tmp}/nope", "--metrics", '{"test_roc_auc": 0.9}', "--registry", "{tmp}/m"),
         ('"{tmp}/nope" for CHECKPOINT',)),
    Case("run-skip-ingest-missing-lake",
         ("run", "--skip-ingest", "--smoke", "--lake", "{tmp}/typo", "--storage", "{tmp}/results", "--registry", "{tmp}/m"),
         ('"{tmp}/typo" for data.lake', "no lake there")),
    Case("run-skip-ingest-empty-lake",
         ("run", "--skip-ingest", "--lake", "{tmp}/lake-empty", "--storage", "{tmp}/results", "--registry", "{tmp}/m"),
         ("lake-empty", "no committed data")),
]


def _csv(path: Path, sep: str = ",", rows: int = 5) -> Path:
    lake.builtin_frame().head(rows).to_csv(path, sep=sep, index=False)
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Files the cases name: bad CSVs, a file to nest a lake under, good and broken lakes, a checkpoint-like dir."""
    (tmp_path / "empty.csv").write_bytes(b"")
    _csv(tmp_path / "semi.csv", ";")
    _csv(tmp_path / "tab.csv", "\t")
    (tmp_path / "afile").write_text("a regular file\n")
    (tmp_path / "afolder").mkdir()
    (tmp_path / "nobin").mkdir()  # a PATH without kubectl
    good = _csv(tmp_path / "good.csv", rows=20)
    lake.ingest(str(tmp_path / "lake"), str(good))
    lake.ingest(str(tmp_path / "lake-bad-pointer"), str(good))
    (tmp_path / "lake-bad-pointer" / lake.TABLE / lake.POINTER).write_text("{truncated")
    legacy = tmp_path / "lake-bad-manifest" / lake.TABLE / "source=x"  # the pre-snapshot layout
    legacy.mkdir(parents=True)
    (legacy / lake.MANIFEST).write_text("[1, 2]")
    (tmp_path / "lake-empty" / lake.TABLE).mkdir(parents=True)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.json").write_text("{}")
    return tmp_path


@pytest.fixture(autouse=True)
def _ray_must_not_start(monkeypatch):
    """Every case must be answered before Ray starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the mistake must be reported before")

    monkeypatch.setattr("workloads.runtime.ensure_ray", refuse)


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_line(case: Case, workspace: Path, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("RAYSPACE_CONFIG", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, _fill(value, workspace))
    code = main([_fill(a, workspace) for a in case.argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for words in case.says:
        assert _fill(words, workspace) in lines[0], lines[0]
    assert "Traceback" not in out + err


# ------------------------------------------------------------------ from outside, as a person runs them


def _rayspace(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    # The command as typed, plus a check that Ray was never imported (noticed before Ray starts).
    code = ("import sys; from workloads.cli import main; rc = main(sys.argv[1:]); "
            "sys.stderr.write('RAY IMPORTED\\n' if 'ray' in sys.modules else ''); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k not in ("RAYSPACE_CONFIG", "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("argv", [
    ("evaluate", "{tmp}/nope", "--set", "data.lake={tmp}/lake"),
    ("train", "--set", "data.lake={tmp}/typo"),
    ("tune", "--set", "data.lake={tmp}/typo"),
    ("data", "list", "--lake", "{tmp}/typo"),
    ("run", "--skip-ingest", "--lake", "{tmp}/typo", "--storage", "{tmp}/results", "--registry", "{tmp}/m"),
    ("promote", "{tmp}/nope", "--set", "data.lake={tmp}/lake", "--registry", "{tmp}/m"),
    ("models", "--registry", "{tmp}/typo"),
], ids=["evaluate", "train", "tune", "data-list", "run-skip-ingest", "promote", "models"])
def test_missing_inputs_are_one_line_without_importing_ray(argv, workspace: Path):
    done = _rayspace(*(_fill(a, workspace) for a in argv), cwd=workspace)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert done.stdout == ""


# ------------------------------------------------------------------ inputs that used to be misread


def test_text_setting_keeps_the_text_it_was_given():
    from workloads.config import load_config, parse_override

    # YAML reads these as a float, an int, an octal-looking int and a bool; the salt is text.
    for raw in ("2e5", "12345", "0123", "yes"):
        assert parse_override(f"data.split_salt={raw}") == ("data.split_salt", raw)
        assert load_config(None, [f"data.split_salt={raw}"]).data.split_salt == raw
    assert parse_override('data.split_salt="a b"') == ("data.split_salt", "a b")  # quotes still unquote
    assert parse_override("data.source=null") == ("data.source", None)  # an optional text setting clears
    assert parse_override("cluster.namespace=007") == ("cluster.namespace", "007")
    # Number settings are unchanged: 1e-3 is a number.
    assert parse_override("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_override("tune.time_budget_s=2e5") == ("tune.time_budget_s", 200000.0)
    assert parse_override("tune.search_space.lr.low=1e-4") == ("tune.search_space.lr.low", 0.0001)


def test_config_before_the_subcommand_is_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAYSPACE_CONFIG", raising=False)
    cfg = tmp_path / "x.yaml"
    cfg.write_text("data:\n  split_salt: from-file\n  val_fraction: 0.2\n")
    assert main(["--config", str(cfg), "config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["data"]["split_salt"] == "from-file"
    # --set before and after the subcommand: the later one wins, as on one command line.
    assert main(["-c", str(cfg), "--set", "data.val_fraction=0.25", "--json", "config", "show",
                 "--set", "data.val_fraction=0.3"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["data"]["val_fraction"] == 0.3 and shown["data"]["split_salt"] == "from-file"


@pytest.mark.parametrize("argv, says", [
    (("--config", "a.yaml", "config", "show", "--config", "b.yaml"), '--config given twice ("a.yaml" and "b.yaml")'),
    (("--config", "a.yaml", "config", "example"), "--config given before `config`, which takes no such option"),
])
def test_config_before_the_subcommand_conflicts_are_one_error(argv, says, capsys):
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"rayspace: error: {says}" in err
