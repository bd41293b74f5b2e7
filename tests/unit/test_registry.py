"""The model registry: immutable versions, the promotion gate, the atomic ``current`` switch."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from serve.testing import make_checkpoint
from workloads.config import RegistryConfig
from workloads.exceptions import CheckpointError, ModelNotFoundError, RegistryError
from workloads.model import load_checkpoint
from workloads.registry import CARD_FILE, CURRENT_FILE, ModelRegistry, gate, promote


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(base / f"c{i}", seed=i) for i in range(3)]


def _cfg(root: Path, **kw) -> RegistryConfig:
    return RegistryConfig(path=str(root), model_name="wdbc", **kw)


def test_first_promotion_writes_v1_and_current(tmp_path, ckpts):
    res = promote(_cfg(tmp_path), ckpts[0], {"test_roc_auc": 0.95, "test_accuracy": 0.9},
                  trial_config={"lr": 0.01, "hidden": 16})
    assert (res.version, res.promoted, res.previous, res.current) == ("v1", True, None, "v1")
    vdir = tmp_path / "wdbc" / "v1"
    assert sorted(p.name for p in vdir.iterdir()) == sorted([CARD_FILE, "model.json", "model.pt", "preprocessor.json"])
    card = json.loads((vdir / CARD_FILE).read_text())
    assert card["name"] == "wdbc" and card["version"] == "v1"
    assert card["test_metrics"] == {"test_roc_auc": 0.95, "test_accuracy": 0.9}
    assert card["val_metrics"] == {"val_roc_auc": 0.9, "val_accuracy": 0.85}
    assert card["trial_config"] == {"lr": 0.01, "hidden": 16}
    assert card["data_manifest_hash"] == "sha256:test"
    assert card["versions"]["ray"] and card["versions"]["torch"]
    assert card["created"].endswith("+00:00")
    assert len(card["feature_names"]) == 30 and card["feature_names"][0] == "mean_radius"
    assert card["gate"]["passed"] is True and card["gate"]["reason"] == "no current version"
    pointer = json.loads((tmp_path / "wdbc" / CURRENT_FILE).read_text())
    assert pointer["version"] == "v1"
    # The version is loadable with the checkpoint reader and hash-verified.
    loaded = load_checkpoint(ModelRegistry(tmp_path).local_path("wdbc"))
    assert loaded.feature_names[0] == "mean_radius"


def test_trial_config_defaults_to_checkpoint_train_config(tmp_path, ckpts):
    promote(_cfg(tmp_path), ckpts[1], {"test_roc_auc": 0.9})
    assert ModelRegistry(tmp_path).card("wdbc")["trial_config"]["seed"] == 1


def test_gate_rejects_worse_keeps_version_and_current(tmp_path, ckpts):
    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.95})
    res = promote(cfg, ckpts[1], {"test_roc_auc": 0.90})
    assert res.version == "v2" and not res.promoted
    assert res.current == "v1" and res.previous == "v1"
    assert "lower than current v1's 0.95" in res.gate.reason
    reg = ModelRegistry(tmp_path)
    assert reg.current("wdbc") == "v1"
    assert reg.versions("wdbc") == ["v1", "v2"]
    assert reg.card("wdbc", "v2")["gate"]["passed"] is False


def test_gate_accepts_equal_and_better(tmp_path, ckpts):
    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.95})
    assert promote(cfg, ckpts[1], {"test_roc_auc": 0.95}).promoted
    res = promote(cfg, ckpts[2], {"test_roc_auc": 0.97})
    assert (res.version, res.promoted, res.previous) == ("v3", True, "v2")
    assert ModelRegistry(tmp_path).current("wdbc") == "v3"


def test_gate_tolerance_and_min_mode(tmp_path, ckpts):
    cfg = _cfg(tmp_path, gate_tolerance=0.02)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.95})
    assert promote(cfg, ckpts[1], {"test_roc_auc": 0.935}).promoted  # within 0.02
    assert not promote(cfg, ckpts[2], {"test_roc_auc": 0.90}).promoted
    other = tmp_path / "min"
    mcfg = _cfg(other, gate_metric="test_log_loss", gate_mode="min")
    promote(mcfg, ckpts[0], {"test_log_loss": 0.20})
    assert not promote(mcfg, ckpts[1], {"test_log_loss": 0.25}).promoted
    assert promote(mcfg, ckpts[2], {"test_log_loss": 0.10}).promoted


def test_force_overrides_the_gate(tmp_path, ckpts):
    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.95})
    res = promote(cfg, ckpts[1], {"test_roc_auc": 0.5}, force=True)
    assert res.promoted and res.current == "v2" and res.gate.forced
    assert "forced" in res.gate.reason


def test_missing_gate_metric_is_a_clear_error(tmp_path, ckpts):
    with pytest.raises(RegistryError, match=r"no numeric 'test_roc_auc'.*\['test_accuracy'\]"):
        promote(_cfg(tmp_path), ckpts[0], {"test_accuracy": 0.9})
    assert ModelRegistry(tmp_path).versions("wdbc") == []


def test_gate_function_directly():
    card = {"test_metrics": {"test_roc_auc": 0.9}}
    assert gate({"test_roc_auc": 0.9}, card, metric="test_roc_auc", mode="max", tolerance=0).passed
    d = gate({"test_roc_auc": 0.89}, card, metric="test_roc_auc", mode="max", tolerance=0, current_version="v4")
    assert not d.passed and d.current_value == 0.9 and d.new_value == 0.89 and "v4" in d.reason
    # A current version lacking the metric cannot be compared: reject, unless forced.
    assert not gate({"test_roc_auc": 1.0}, {"test_metrics": {}}, metric="test_roc_auc", mode="max", tolerance=0).passed


def test_incomplete_checkpoint_is_refused(tmp_path, ckpts):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpts[0], broken)
    (broken / "model.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="does not match the hash"):
        promote(_cfg(tmp_path / "reg"), broken, {"test_roc_auc": 0.9})
    with pytest.raises(CheckpointError, match="not a directory"):
        promote(_cfg(tmp_path / "reg"), tmp_path / "nope", {"test_roc_auc": 0.9})
    assert not (tmp_path / "reg" / "wdbc").exists() or ModelRegistry(tmp_path / "reg").versions("wdbc") == []


def test_interrupted_version_write_leaves_nothing(tmp_path, ckpts, monkeypatch):
    """A failure after files were copied but before the rename leaves no version and no temp dir."""
    reg = ModelRegistry(tmp_path)
    import workloads.registry as registry_mod

    real = registry_mod.read_checkpoint_meta
    calls = {"n": 0}

    def fail_on_verify_of_copy(path):
        calls["n"] += 1
        if calls["n"] == 2:  # the re-verification of the copy inside the temp dir
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(registry_mod, "read_checkpoint_meta", fail_on_verify_of_copy)
    with pytest.raises(KeyboardInterrupt):
        reg.add_version("wdbc", ckpts[0], {"test_metrics": {}})
    assert list((tmp_path / "wdbc").iterdir()) == []


def test_versions_are_immutable_and_incomplete_ones_ignored(tmp_path, ckpts):
    reg = ModelRegistry(tmp_path)
    reg.add_version("wdbc", ckpts[0], {"test_metrics": {"test_roc_auc": 0.9}})
    before = (tmp_path / "wdbc" / "v1" / "model.pt").read_bytes()
    # A directory without a card (an upload cut short on an object store) is not a version...
    (tmp_path / "wdbc" / "v2").mkdir()
    (tmp_path / "wdbc" / "v2" / "model.pt").write_bytes(b"x")
    assert reg.versions("wdbc") == ["v1"]
    # ...and its number is not reused: the next version skips it instead of writing into it.
    mv = reg.add_version("wdbc", ckpts[1], {"test_metrics": {"test_roc_auc": 0.9}})
    assert mv.version == "v3"
    assert (tmp_path / "wdbc" / "v1" / "model.pt").read_bytes() == before
    assert reg.versions("wdbc") == ["v1", "v3"]


def test_concurrent_promotions_get_distinct_versions(tmp_path, ckpts):
    reg = ModelRegistry(tmp_path)
    results: list[str] = []
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            results.append(reg.add_version("wdbc", ckpts[i % 3], {"test_metrics": {}}).version)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 7)]
    assert reg.versions("wdbc") == [f"v{i}" for i in range(1, 7)]


def test_current_switch_is_atomic_for_concurrent_readers(tmp_path, ckpts):
    """Readers polling ``current`` while it flips never see a missing or partial pointer."""
    reg = ModelRegistry(tmp_path)
    for c in ckpts[:2]:
        reg.add_version("wdbc", c, {"test_metrics": {}})
    reg.set_current("wdbc", "v1")
    stop = threading.Event()
    seen: set[str] = set()
    bad: list[BaseException] = []

    def reader() -> None:
        r = ModelRegistry(tmp_path)
        while not stop.is_set():
            try:
                seen.add(r.current("wdbc"))
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                bad.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(300):
        reg.set_current("wdbc", "v2" if i % 2 == 0 else "v1")
    stop.set()
    for t in threads:
        t.join()
    assert bad == []
    assert seen <= {"v1", "v2"} and None not in seen
    leftovers = [p.name for p in (tmp_path / "wdbc").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_set_current_requires_an_existing_version(tmp_path, ckpts):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no version 'v9'"):
        reg.set_current("wdbc", "v9")
    with pytest.raises(ModelNotFoundError, match="no current version"):
        reg.get("wdbc")
    with pytest.raises(ModelNotFoundError, match="must look like v1"):
        reg.get("wdbc", "latest")
    with pytest.raises(RegistryError, match="model name"):
        reg.versions("Bad_Name")


def test_rollback_with_set_current(tmp_path, ckpts):
    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.9})
    promote(cfg, ckpts[1], {"test_roc_auc": 0.95})
    reg = ModelRegistry(tmp_path)
    assert reg.set_current("wdbc", "v1") == "v2"
    assert reg.current("wdbc") == "v1"


def test_corrupt_pointer_is_reported(tmp_path, ckpts):
    reg = ModelRegistry(tmp_path)
    reg.add_version("wdbc", ckpts[0], {"test_metrics": {}})
    (tmp_path / "wdbc" / CURRENT_FILE).write_text("garbage")
    with pytest.raises(RegistryError, match="not a valid pointer"):
        reg.current("wdbc")


def test_file_uri_and_fsspec_memory_registry(tmp_path, ckpts):
    # file:// is the local store.
    res = promote(RegistryConfig(path=f"file://{tmp_path}", model_name="wdbc"), ckpts[0], {"test_roc_auc": 0.9})
    assert res.promoted and (tmp_path / "wdbc" / "v1" / CARD_FILE).is_file()
    # Any fsspec URI works through fsspec (memory:// here: no network).
    root = f"memory://rayspace-test-{os.getpid()}/models"
    cfg = RegistryConfig(path=root, model_name="wdbc")
    reg = ModelRegistry(root, cache_dir=str(tmp_path / "cache"))
    promote(cfg, ckpts[0], {"test_roc_auc": 0.9}, registry=reg)
    res = promote(cfg, ckpts[1], {"test_roc_auc": 0.8}, registry=reg)
    assert not res.promoted and reg.versions("wdbc") == ["v1", "v2"] and reg.current("wdbc") == "v1"
    local = reg.local_path("wdbc")
    assert load_checkpoint(local).meta["train_config"]["seed"] == 0
    assert reg.models() == ["wdbc"]


# ------------------------------------------------------------------ races and unservable versions


def _nan_checkpoint(directory: Path) -> Path:
    """A complete, hash-valid checkpoint whose weights answer NaN (a training run that diverged)."""
    import torch

    from serve.testing import FEATURE_NAMES, synthetic_rows
    from workloads.model import Standardizer, build_mlp, save_checkpoint

    x, _ = synthetic_rows(64, 0)
    std = Standardizer.from_moments(FEATURE_NAMES, len(x), x.sum(axis=0), (x**2).sum(axis=0))
    module = build_mlp(len(FEATURE_NAMES), 8, 1, 0.0)
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))
    return save_checkpoint(directory, module, std, arch={"n_features": len(FEATURE_NAMES), "hidden": 8, "depth": 1,
                                                         "dropout": 0.0}, train_config={}, epoch=1,
                           metrics={"val_roc_auc": 0.99})


def test_a_version_that_cannot_serve_never_becomes_current(tmp_path, ckpts):
    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.9})
    with pytest.raises(RegistryError, match=r"wdbc v2 cannot serve: .*current stays v1"):
        promote(cfg, _nan_checkpoint(tmp_path / "nan"), {"test_roc_auc": 0.99})
    reg = ModelRegistry(tmp_path)
    assert reg.current("wdbc") == "v1" and "v2" in reg.versions("wdbc")  # written, inspectable, not current


@pytest.mark.parametrize("round_", range(5))
def test_two_promotions_at_once_the_better_one_wins(tmp_path, ckpts, monkeypatch, round_):
    """Both read current=v1 and pass the gate; the worse one switches last. Before compare-and-swap it won."""
    import time

    import workloads.registry as registry_mod

    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.90})
    real_gate = registry_mod.gate
    both_gated = threading.Barrier(2)

    def slow_gate(new_metrics, *args, **kwargs):
        decision = real_gate(new_metrics, *args, **kwargs)
        if kwargs.get("current_version") == "v1":  # the first gating of each promoter
            both_gated.wait(timeout=30)
            # Fault injection: the worse candidate reaches the switch last.
            time.sleep(0.3 if new_metrics["test_roc_auc"] < 0.95 else 0.0)
        return decision

    monkeypatch.setattr(registry_mod, "gate", slow_gate)
    results = {}

    def run(key, ckpt, auc):
        results[key] = promote(cfg, ckpt, {"test_roc_auc": auc})

    threads = [threading.Thread(target=run, args=("better", ckpts[1], 0.97)),
               threading.Thread(target=run, args=("worse", ckpts[2], 0.93))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    reg = ModelRegistry(tmp_path)
    current = reg.current("wdbc")
    assert reg.card("wdbc", current)["test_metrics"]["test_roc_auc"] == 0.97
    assert results["better"].promoted and not results["worse"].promoted
    assert "became current while" in results["worse"].gate.reason
    assert results["worse"].current == results["better"].version
    assert len(reg.versions("wdbc")) == 3  # nothing half-written, nothing lost


def test_rollback_switches_unconditionally_and_cas_refuses_a_stale_expectation(tmp_path, ckpts):
    from workloads.exceptions import CurrentChangedError

    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.9})
    promote(cfg, ckpts[1], {"test_roc_auc": 0.95})
    reg = ModelRegistry(tmp_path)
    with pytest.raises(CurrentChangedError, match="current is v2 now, not v1"):
        reg.set_current("wdbc", "v1", expected="v1")
    assert reg.current("wdbc") == "v2"
    assert reg.set_current("wdbc", "v1") == "v2" and reg.current("wdbc") == "v1"


def test_paired_bootstrap_on_the_same_rows():
    import numpy as np

    from workloads.evaluate import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.clip(y * 0.7 + rng.normal(0.15, 0.2, 200), 0, 1)
    noise = rng.uniform(0, 1, 200)
    same = paired_bootstrap(good, good, y, "test_roc_auc", resamples=200)
    assert same["delta"] == 0 and same["ci95"] == [0.0, 0.0] and same["rows"] == 200
    better = paired_bootstrap(good, noise, y, "test_roc_auc", resamples=200)
    assert better["delta"] > 0.2 and 0 < better["ci95"][0] <= better["delta"] <= better["ci95"][1]
    assert better["new"] > better["current"]


def test_gate_uses_the_rescored_current_not_its_card(tmp_path, ckpts):
    cfg = _cfg(tmp_path)
    promote(cfg, ckpts[0], {"test_roc_auc": 0.99})  # v1's card claims 0.99 (from another test set, say)
    seen = []

    def compare(current_dir):
        seen.append(Path(current_dir).name)
        return {"metric": "test_roc_auc", "new": 0.91, "current": 0.88, "delta": 0.03, "ci95": [-0.01, 0.07],
                "rows": 78, "resamples": 1000, "seed": 0}

    res = promote(cfg, ckpts[1], {"test_roc_auc": 0.91}, compare=compare)
    assert res.promoted and seen == ["v1"]
    card = ModelRegistry(tmp_path).card("wdbc", res.version)
    assert card["comparison"]["ci95"] == [-0.01, 0.07] and card["gate"]["current_value"] == 0.88
    assert "re-scored on the same 78 test rows" in res.gate.reason and "+0.0300" in res.gate.reason
