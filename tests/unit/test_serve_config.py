"""``serve/config.yaml`` stays in sync with ``serve/app.py``, ``serve/runner.py`` and the workspace config."""

from __future__ import annotations

import importlib

import pytest
import yaml

from serve import app as serve_app
from serve import runner
from workloads.config import ServeConfig, load_config
from workloads.exceptions import ConfigError


@pytest.fixture(scope="module")
def serve_yaml(repo_root):
    return yaml.safe_load((repo_root / "serve" / "config.yaml").read_text())


def _build(args):
    # The exact call `serve deploy` / KubeRay's serveConfigV2 make on import_path + args.
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    return call_user_app_builder_with_args_if_necessary(serve_app.build_app, args)


def test_file_is_a_valid_serve_deploy_config(serve_yaml):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_yaml)
    assert [a.name for a in schema.applications] == [serve_app.APP_NAME]


def test_import_path_and_args_build_the_app(serve_yaml):
    (app_cfg,) = serve_yaml["applications"]
    module, attr = app_cfg["import_path"].split(":")
    assert getattr(importlib.import_module(module), attr) is serve_app.build_app
    assert set(app_cfg["args"]) <= {"registry", "model_name", *serve_app.APP_ARG_FIELDS}
    app = _build(app_cfg["args"])
    dep = app._bound_deployment
    assert dep.name == serve_app.DEPLOYMENT_NAME
    assert dep.init_args == (app_cfg["args"]["registry"], app_cfg["args"]["model_name"])
    # Every option the yaml leaves out comes from the workspace defaults.
    defaults = ServeConfig()
    assert dep.init_kwargs["max_batch_size"] == app_cfg["args"].get("max_batch_size", defaults.max_batch_size)
    assert dep._deployment_config.max_ongoing_requests == defaults.max_ongoing_requests
    assert dep.ray_actor_options["num_cpus"] == defaults.replica_cpus


def test_route_and_http_options_match_the_code(serve_yaml):
    (app_cfg,) = serve_yaml["applications"]
    assert app_cfg["route_prefix"] == ServeConfig().route_prefix
    assert serve_yaml["http_options"]["port"] == ServeConfig().port
    # Inside a pod the proxy must listen on every interface; locally the default stays loopback.
    assert serve_yaml["http_options"]["host"] == "0.0.0.0"
    assert ServeConfig().host == "127.0.0.1"
    assert app_cfg["args"]["model_name"] == load_config(None).registry.model_name


def test_deployment_overrides_name_real_deployments(serve_yaml):
    (app_cfg,) = serve_yaml["applications"]
    for dep in app_cfg.get("deployments", []):
        assert dep["name"] == serve_app.DEPLOYMENT_NAME


def test_autoscaling_and_fixed_replicas_from_config():
    cfg = load_config(None, {"serve.min_replicas": 1, "serve.max_replicas": 3, "serve.target_ongoing_requests": 8})
    dep = _build(serve_app.app_args_from_config(cfg) | {"registry": "/m"})._bound_deployment
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 3, 8)
    fixed = load_config(None, {"serve.min_replicas": 2, "serve.max_replicas": 2})
    dep = _build(serve_app.app_args_from_config(fixed) | {"registry": "/m"})._bound_deployment
    assert dep._deployment_config.autoscaling_config is None and dep.num_replicas == 2


def test_bad_app_args_are_clear_errors():
    with pytest.raises(ConfigError, match=r"\['regsitry'\] for serve app args: unknown"):
        _build({"regsitry": "/m"})
    with pytest.raises(ConfigError, match="serve app args.registry"):
        _build({"model_name": "wdbc"})
    with pytest.raises(ConfigError, match=r"Got 0 for serve app args.max_batch_size: must be greater than or equal to 1"):
        _build({"registry": "/m", "max_batch_size": 0})


def test_relative_registry_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dep = _build({"registry": "models"})._bound_deployment
    assert dep.init_args[0] == str(tmp_path / "models")


def test_haproxy_flags_exist_in_this_ray():
    """The env vars runner sets must be ones this Ray reads (a rename upstream fails here)."""
    from ray._private import ray_constants
    from ray.serve._private import constants

    source = open(constants.__file__).read() + open(ray_constants.__file__).read()
    for key in runner.ray_env("haproxy"):
        assert f'"{key}"' in source, key
    for key in runner.ray_env("proxy"):
        assert key in runner.ray_env("haproxy")
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in runner.ray_env("proxy")
    assert runner.endpoint_url("0.0.0.0", 8000, "/") == "http://127.0.0.1:8000"
    assert runner.endpoint_url("127.0.0.1", 9000, "/api/") == "http://127.0.0.1:9000/api"
