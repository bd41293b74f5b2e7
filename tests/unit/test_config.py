"""The workspace config: defaults, files, overrides and the wording of errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from workloads.config import (
    SMOKE_OVERRIDES,
    WorkspaceConfig,
    example_yaml,
    load_config,
    parse_override,
    with_overrides,
)
from workloads.exceptions import ConfigError


def test_defaults_are_valid_and_complete():
    cfg = load_config()
    assert isinstance(cfg, WorkspaceConfig)
    assert cfg.data.lake == "./lake"
    assert cfg.train.lr > 0 and cfg.serve.host == "127.0.0.1"
    assert set(cfg.model_dump()) == {"data", "train", "tune", "registry", "serve", "cluster"}


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"train.lr": -0.1}, "Got -0.1 for train.lr: must be greater than 0"),
        ({"train.lr": "x"}, 'Got "x" for train.lr: must be a valid number'),
        ({"train.epochs": 0}, "Got 0 for train.epochs: must be greater than or equal to 1"),
        ({"train.dropout": 1.0}, "Got 1.0 for train.dropout: must be less than 1"),
        ({"train.lrr": 0.1}, "Got 0.1 for train.lrr: unknown field"),
        ({"data.missing": "impute"}, "Got \"impute\" for data.missing: must be 'drop' or 'flag'"),
        ({"serve.port": 70000}, "Got 70000 for serve.port: must be less than or equal to 65535"),
        ({"registry.model_name": "Bad Name"}, 'Got "Bad Name" for registry.model_name: must match pattern'),
        ({"tune.search_space": {"lr": {"kind": "loguniform", "low": 0, "high": 1}}},
         "Got 0 for tune.search_space.lr.low: must be greater than 0"),
        ({"tune.search_space": {"momentum": {"kind": "choice", "values": [1]}}}, "unknown parameters ['momentum']"),
        ({"tune.search_space": {"lr": {"kind": "gaussian"}}}, "tune.search_space.lr"),
    ],
)
def test_invalid_values_name_field_value_and_rule(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=override)
    assert expected in str(info.value)
    field = next(iter(override))
    assert info.value.problems, "problems must list (field, value, rule)"
    assert any(p[0].startswith(field) for p in info.value.problems)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match=r"min_replicas=3 must be <= max_replicas=2"):
        load_config(overrides={"serve.min_replicas": 3, "serve.max_replicas": 2})
    with pytest.raises(ConfigError, match=r"val_fraction \+ test_fraction"):
        load_config(overrides={"data.val_fraction": 0.5, "data.test_fraction": 0.45})
    with pytest.raises(ConfigError, match=r"low=0.5 must be < high=0.1"):
        load_config(overrides={"tune.search_space": {"dropout": {"kind": "uniform", "low": 0.5, "high": 0.1}}})


def test_every_problem_is_reported_not_only_the_first():
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"train.lr": -1, "train.epochs": 0, "serve.port": 0})
    fields = {p[0] for p in info.value.problems}
    assert {"train.lr", "train.epochs", "serve.port"} <= fields


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "ws.yaml"
    f.write_text("train:\n  lr: 0.02\n  epochs: 7\ndata:\n  lake: /tmp/elsewhere\n")
    cfg = load_config(f, ["train.epochs=9", "serve.max_replicas=4"])
    assert cfg.train.lr == 0.02
    assert cfg.train.epochs == 9
    assert cfg.data.lake == "/tmp/elsewhere"
    assert cfg.serve.max_replicas == 4


def test_env_var_names_the_default_file(tmp_path, monkeypatch):
    f = tmp_path / "ws.yaml"
    f.write_text("train:\n  epochs: 3\n")
    monkeypatch.setenv("RAYSPACE_CONFIG", str(f))
    assert load_config().train.epochs == 3


@pytest.mark.parametrize(
    "content, expected",
    [
        ("train: [1, 2", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping of sections"),
        ("trian:\n  lr: 1\n", "Got {'lr': 1} for trian: unknown field"),
    ],
)
def test_bad_files(tmp_path, content, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(f)
    assert expected in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override_reads_yaml_values():
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_override("train.use_gpu=true") == ("train.use_gpu", True)
    assert parse_override("tune.search_space={}") == ("tune.search_space", {})
    with pytest.raises(ConfigError, match="must be section.field=value"):
        parse_override("train.lr")


def test_shipped_configs_load(repo_root):
    """Every YAML config the repository ships is valid (the example documents every field)."""
    example = repo_root / "rayspace.yaml"
    cfg = load_config(example)
    assert cfg == load_config(), "rayspace.yaml should spell out the built-in defaults"
    text = example.read_text()
    assert text == example_yaml(), "rayspace.yaml is stale: run `rayspace config example > rayspace.yaml`"
    for section, model in WorkspaceConfig.model_fields.items():
        for field in model.annotation.model_fields:
            assert f"  {field}:" in text, f"rayspace.yaml does not document {section}.{field}"
    smoke = with_overrides(cfg, SMOKE_OVERRIDES)
    assert smoke.train.epochs < cfg.train.epochs


def test_cli_rejects_bad_config_before_ray_starts(repo_root):
    code = textwrap.dedent(
        """
        import sys
        from workloads.cli import main
        rc = main(["run", "--smoke", "--set", "train.lr=-1", "--lake", "/nonexistent/lake"])
        print("RC", rc, "RAY_IMPORTED", "ray" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert "RC 2 RAY_IMPORTED False" in out.stdout, out.stdout + out.stderr
    assert "error: Got -1 for train.lr: must be greater than 0" in out.stderr
