"""``rayspace promote CHECKPOINT`` evaluates on the real lake's test split, then gates; ``rayspace models`` lists."""

from __future__ import annotations

import json

import pytest

from serve.cli import EXIT_REJECTED
from serve.testing import make_checkpoint
from workloads import lake
from workloads.cli import main
from workloads.registry import ModelRegistry

pytestmark = pytest.mark.integration


def test_promote_evaluates_gates_and_lists(ray_local, tmp_path, capsys):
    lake_dir = tmp_path / "lake"
    lake.ingest(str(lake_dir))  # the built-in WDBC data
    ckpt = make_checkpoint(tmp_path / "ckpt", seed=0, fit_steps=10)
    common = ["--registry", str(tmp_path / "models"), "--set", f"data.lake={lake_dir}",
              "--set", f"train.storage_path={tmp_path / 'results'}", "--json"]

    assert main(["promote", str(ckpt), *common]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["version"] == "v1" and first["promoted"] is True
    card = ModelRegistry(tmp_path / "models").card("wdbc")
    # Test metrics came from evaluating on the lake's test split (real rows, real labels).
    assert card["test_metrics"]["test_rows"] > 0
    assert 0.0 <= card["test_metrics"]["test_roc_auc"] <= 1.0
    assert card["gate"]["metric"] == "test_roc_auc"

    # A second, evaluated promotion re-scores v1 on the same test rows instead of trusting v1's card.
    better = make_checkpoint(tmp_path / "better", seed=1, fit_steps=60)
    assert main(["promote", str(better), *common]) in (0, EXIT_REJECTED)
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    comparison = ModelRegistry(tmp_path / "models").card("wdbc", rescored["version"])["comparison"]
    assert comparison["rows"] == card["test_metrics"]["test_rows"] and comparison["metric"] == "test_roc_auc"
    assert comparison["current"] == pytest.approx(card["test_metrics"]["test_roc_auc"], abs=1e-6)
    lo, hi = comparison["ci95"]
    assert lo <= comparison["delta"] <= hi and "95% bootstrap interval" in rescored["gate"]["reason"]
    assert main(["models", "--set-current", "v1", *common]) == 0
    capsys.readouterr()

    # A promotion that claims a worse metric is written but kept out of current (exit 3).
    worse = card["test_metrics"]["test_roc_auc"] - 0.1
    code = main(["promote", str(ckpt), "--metrics", json.dumps({"test_roc_auc": worse}), *common])
    assert code == EXIT_REJECTED
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["version"], second["promoted"], second["current"]) == ("v3", False, "v1")

    assert main(["models", *common]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listing["current"] == "v1"
    assert [(v["version"], v["gate"]) for v in listing["versions"]][::2] == [("v1", "passed"), ("v3", "rejected")]

    # Roll back / forward by hand.
    assert main(["models", "--set-current", "v3", *common]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["current"] == "v3"


def test_promote_errors_are_one_line(ray_local, tmp_path, capsys):
    code = main(["promote", str(tmp_path / "missing"), "--metrics", '{"test_roc_auc": 0.9}',
                 "--registry", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and "for CHECKPOINT: no such directory" in err
    code = main(["promote", str(tmp_path), "--metrics", "{oops", "--registry", str(tmp_path / "models")])
    assert code != 0 and "not valid JSON" in capsys.readouterr().err
