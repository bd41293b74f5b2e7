"""The RayService's serveConfigV2 is generated from serve/config.yaml and kept in sync."""

from __future__ import annotations

import copy

import pytest
import yaml

from cluster import manifests
from cluster._internal import serve_sync
from workloads.exceptions import ManifestError


def test_rayservice_is_in_sync_with_serve_config():
    stale = serve_sync.out_of_sync()
    assert not stale, (
        f"{[str(p) for p in stale]} differ from serve/config.yaml; run `{serve_sync.FIX_COMMAND}` and commit the result"
    )


def test_rendered_serve_config_equals_serve_config_yaml():
    source = serve_sync.load_serve_config()
    for overlay in ("dev", "gpu"):
        rendered = yaml.safe_load(manifests.find(manifests.render(overlay), "RayService")["spec"]["serveConfigV2"])
        assert rendered == source
    ha = yaml.safe_load(manifests.find(manifests.render("ha"), "RayService")["spec"]["serveConfigV2"])
    assert ha == serve_sync.ha_serve_config(source)


def _with_deployments(config, deployments):
    config = copy.deepcopy(config)
    config["applications"][0]["deployments"] = deployments
    return config


def test_ha_variant_runs_two_replicas_one_per_node():
    base = serve_sync.load_serve_config()
    before = copy.deepcopy(base)
    ha = serve_sync.ha_serve_config(_with_deployments(base, [
        {"name": "Fixed", "num_replicas": 1},
        {"name": "Auto", "num_replicas": "auto", "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        {"name": "Big", "num_replicas": 5},
    ]))
    fixed, auto, big = ha["applications"][0]["deployments"]
    assert fixed == {"name": "Fixed", "num_replicas": 2, "max_replicas_per_node": 1}
    assert auto["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 2} and auto["max_replicas_per_node"] == 1
    assert big["num_replicas"] == 5
    assert base == before, "the input must not be modified"


def test_ha_overlay_runs_the_model_server_twice_one_per_node():
    # serve/config.yaml lists ModelServer, so the ha overlay's serveConfigV2 can pin its HA settings.
    from cluster import manifests

    svc = manifests.find(manifests.render("ha"), "RayService")
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    (dep,) = app["deployments"]
    assert dep["name"] == "ModelServer" and dep["max_replicas_per_node"] == 1
    assert dep["autoscaling_config"]["min_replicas"] == 2


def test_regenerating_rewrites_only_the_serve_config_block():
    current = serve_sync.RAYSERVICE_FILE.read_text(encoding="utf-8")
    changed = _with_deployments(serve_sync.load_serve_config(), [{"name": "ModelServer", "max_ongoing_requests": 32}])
    text = serve_sync.render_rayservice_text(current, changed)
    obj = yaml.safe_load(text)
    assert yaml.safe_load(obj["spec"]["serveConfigV2"]) == changed
    before, after = yaml.safe_load(current), obj
    before["spec"].pop("serveConfigV2"), after["spec"].pop("serveConfigV2")
    assert before == after
    assert text.startswith(current[: current.index("serveConfigV2")]), "header comments and fields before it are kept"


def test_sync_writes_atomically_and_reports_changes(monkeypatch, tmp_path):
    rs = tmp_path / "rayservice.yaml"
    rs.write_text(serve_sync.RAYSERVICE_FILE.read_text(encoding="utf-8").replace("port: 8000", "port: 9000"))
    ha = tmp_path / "ha" / "serve-config-patch.yaml"
    monkeypatch.setattr(serve_sync, "RAYSERVICE_FILE", rs)
    monkeypatch.setattr(serve_sync, "HA_PATCH_FILE", ha)
    env = tmp_path / "rayservice-serve-env-patch.yaml"  # missing: sync creates it
    monkeypatch.setattr(serve_sync, "ENV_PATCH_FILE", env)
    assert set(serve_sync.out_of_sync()) == {rs, ha, env}
    result = serve_sync.sync()
    assert [(r.path, r.changed) for r in result] == [(rs, True), (ha, True), (env, True)]
    assert serve_sync.out_of_sync() == []
    assert [r.changed for r in serve_sync.sync()] == [False, False, False]
    assert "value: {name: RAY_SERVE_ENABLE_HA_PROXY, value: '1'}" in env.read_text()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ha", "rayservice-serve-env-patch.yaml", "rayservice.yaml",
                                                           "serve-config-patch.yaml"], "no temp files left"


def test_cli_sync_serve_check(capsys):
    from workloads.cli import main

    assert main(["cluster", "sync-serve", "--check", "--json"]) == 0
    assert '"in_sync": true' in capsys.readouterr().out


def test_broken_serve_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("proxy_location: EveryNode\n")
    with pytest.raises(ManifestError, match="non-empty `applications` list"):
        serve_sync.load_serve_config(bad)


def test_sync_never_rewrites_an_installed_package(monkeypatch, tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages" / "cluster" / "base"
    site.mkdir(parents=True)
    stale = site / "rayservice.yaml"
    stale.write_text(serve_sync.RAYSERVICE_FILE.read_text(encoding="utf-8").replace("port: 8000", "port: 9000"))
    monkeypatch.setattr(serve_sync, "RAYSERVICE_FILE", stale)
    with pytest.raises(ManifestError, match="is inside an installed package .* only rewrites a source checkout"):
        serve_sync.sync()
    assert "port: 9000" in stale.read_text()
