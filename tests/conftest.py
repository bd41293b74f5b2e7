"""Shared fixtures.

Tiers (see pyproject's markers): unmarked tests are fast unit tests with no Ray and
no network; ``integration`` tests share one real local Ray started in-process by
the ``ray_local`` session fixture; ``k8s`` tests need a real cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One real local Ray for the whole integration session (each start costs seconds).

    ``address="local"`` always starts a new cluster, so a stale session file in
    Ray's temp dir is never joined. Four logical CPUs on a 2-core machine let a
    Tune trial's driver and its training workers coexist.
    """
    import ray

    from workloads.runtime import init_local_ray

    init_local_ray(
        num_cpus=4,
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        yield ray
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - best-effort teardown; Serve may never have started
            pass
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on a free loopback port with one bucket, for the session.

    Skips where moto is not installed, with how to install it; under ``CI=true`` a
    missing server fails instead, so CI never passes by skipping the S3 tests.
    """
    from tests import _s3server

    executable = _s3server.find_moto_server()
    if executable is None:
        message = f"moto_server not found: {_s3server.INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server, proc = _s3server.start(executable)
    try:
        yield server
    finally:
        _s3server.stop(proc)


@pytest.fixture
def s3_prefix(s3_server, monkeypatch, request):
    """``s3://<bucket>/<test name>`` with this process's AWS variables pointing at the moto server."""
    import re

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3_server.bucket}/{re.sub(r'[^A-Za-z0-9_.-]+', '-', request.node.name)}"
