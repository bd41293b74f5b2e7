"""DashboardClient against a loopback stub of the Ray dashboard's job API (with Ray's token rules)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from cluster.client import DashboardClient
from tests.fakekube.dashboard import FakeDashboard
from workloads.exceptions import DashboardError

TOKEN = "tok-123"
JOB = "rayspace-pipeline-abc"


@pytest.fixture
def dashboard() -> Iterator[FakeDashboard]:
    stub = FakeDashboard({JOB: "ingest ok\ntrain ok\n"}, token=TOKEN).start()
    try:
        yield stub
    finally:
        stub.stop()


def test_logs_with_the_bearer_token(dashboard: FakeDashboard) -> None:
    assert DashboardClient(dashboard.url, token=TOKEN).job_logs(JOB) == "ingest ok\ntrain ok\n"
    assert dashboard.seen[-1] == {"path": f"/api/jobs/{JOB}/logs", "auth": f"Bearer {TOKEN}"}
    assert DashboardClient(dashboard.url + "/", token=TOKEN).job_info(JOB)["status"] == "SUCCEEDED"


def test_missing_and_wrong_tokens(dashboard: FakeDashboard) -> None:
    with pytest.raises(DashboardError, match=r"HTTP 401 \(no token was sent; pass --token") as info:
        DashboardClient(dashboard.url).job_logs(JOB)
    assert info.value.status == 401
    with pytest.raises(DashboardError, match=r"HTTP 403 \(the token was rejected") as info:
        DashboardClient(dashboard.url, token="wrong").job_logs(JOB)
    assert info.value.status == 403


def test_unknown_job_and_bad_payload(dashboard: FakeDashboard) -> None:
    with pytest.raises(DashboardError, match=r"not found \(HTTP 404\): Job nope does not exist"):
        DashboardClient(dashboard.url, token=TOKEN).job_logs("nope")
    with pytest.raises(DashboardError, match="not JSON"):
        DashboardClient(dashboard.url, token=TOKEN).job_logs("garbled")
    with pytest.raises(DashboardError, match="empty job ID"):
        DashboardClient(dashboard.url, token=TOKEN).job_logs("")


def test_job_id_is_path_quoted(dashboard: FakeDashboard) -> None:
    with pytest.raises(DashboardError, match="404"):
        DashboardClient(dashboard.url, token=TOKEN).job_logs("../../etc")
    assert dashboard.seen[-1]["path"] == "/api/jobs/..%2F..%2Fetc/logs"


def test_bad_url_and_unreachable() -> None:
    with pytest.raises(DashboardError, match="must be http"):
        DashboardClient("localhost:8265")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DashboardError, match="cannot reach the Ray dashboard"):
        DashboardClient(f"http://127.0.0.1:{port}", timeout=2).job_logs("x")
