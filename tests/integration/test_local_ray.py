"""The embedded local Ray listens on loopback only, and starting it leaves no process-wide switch behind."""

from __future__ import annotations

import os

import psutil
import pytest

pytestmark = pytest.mark.integration


def test_local_ray_listens_on_loopback_and_leaves_no_global_switch(ray_local):
    import ray
    import ray._private.ray_constants as ray_constants

    node = ray._private.worker._global_node
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    session = node.get_session_dir_path()
    procs = {p.pid for p in psutil.process_iter(["cmdline"])
             if any(session in (c or "") for c in (p.info["cmdline"] or []))}
    assert procs, "the local Ray's processes carry its session dir on their command lines"
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in procs]
    assert listening and all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening), listening
    # The single-node switch was scoped to the start: a later ray.init(address=...) here resolves normally.
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert ray_constants.ENABLE_RAY_CLUSTER is True
