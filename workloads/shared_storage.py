"""Refuse node-local storage on a multi-node Ray cluster before any work starts.

On a KubeRay cluster every pod has its own ``/tmp`` and root filesystem: a lake,
results directory or registry at such a path is written on one pod and missing on
the others (Ray Data readers, Train workers, Serve replicas). Ray Train V2 finds
this late, at the first checkpoint upload, with a validation marker
(``ray/train/v2/_internal/execution/storage.py``: ``_create_validation_file`` on
the driver, ``_check_validation_file`` on the workers). This does the same check
up front, for every storage setting a command uses, on every live node: the driver
writes a marker, a zero-CPU task pinned to each node looks for it.

URIs (``s3://``, ``gs://``...) are shared by definition and are not probed here.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from workloads.exceptions import ConfigError

logger = logging.getLogger(__name__)

MARKER_PREFIX = ".rayspace-shared-check-"


def _sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared(settings: dict[str, str], *, timeout_s: float = 60.0) -> None:
    """Check that every local path in ``settings`` is the same directory on every live Ray node.

    Args:
        settings: Setting name (``train.storage_path``) -> path or URI.
        timeout_s: How long to wait for the probe tasks.

    Raises:
        ConfigError: A path some node cannot see; names the setting, the value, the nodes and the fix.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    local = {k: v for k, v in settings.items() if v and "://" not in v}
    if len(nodes) < 2 or not local:
        return
    probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
    problems = []
    for setting, value in local.items():
        directory = Path(value)
        # The directory may not exist yet: probe its closest existing ancestor the command will write into.
        while not directory.exists() and directory.parent != directory:
            directory = directory.parent
        marker = directory / f"{MARKER_PREFIX}{uuid.uuid4().hex}"
        try:
            marker.write_text("rayspace shared-storage check\n")
        except OSError as e:
            raise ConfigError(f'Got "{value}" for {setting}: cannot write there ({e.strerror})',
                              [(setting, value, "must be writable")]) from e
        try:
            refs = {n["NodeManagerAddress"]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
                for n in nodes}
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
            blind = sorted(ip for ip, ref in refs.items() if ref not in ready or not ray.get(ref))
        finally:
            marker.unlink(missing_ok=True)
        if blind:
            problems.append((setting, value, blind))
    if problems:
        setting, value, blind = problems[0]
        raise ConfigError(
            f'Got "{value}" for {setting}: must be storage every Ray node shares (a URI such as s3://..., or a path '
            f"on a volume mounted on every pod, e.g. /data), but node(s) {', '.join(blind)} cannot see it",
            [(s, v, f"not visible on {', '.join(b)}") for s, v, b in problems],
        )
    logger.info("shared storage checked on %d nodes: %s", len(nodes), ", ".join(local))
