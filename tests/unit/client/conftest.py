"""Fixtures of the client tests: a fake API server on loopback, its operator, a kubeconfig for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.client import KubeApi
from tests.fakekube import FakeKube, FakeOperator, service_account_token, write_kubeconfig

#: The ServiceAccount the tests' token belongs to, and that token.
SA_USER = "system:serviceaccount:rayspace:rayspace-ci"
SA_TOKEN = service_account_token(SA_USER)


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    """A started fake API server with the ``default`` and ``rayspace`` namespaces."""
    server = FakeKube(tokens={SA_TOKEN: SA_USER, "other-token": "jane@example.com"},
                      namespaces=("default", "rayspace")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def operator(fake: FakeKube) -> Iterator[FakeOperator]:
    """The fake KubeRay operator, running (clusters ready after 0.2 s, jobs run 0.2 s)."""
    op = FakeOperator(fake, ready_after=0.2, job_runtime=0.2).start()
    try:
        yield op
    finally:
        op.stop()
    assert not op.errors, op.errors


@pytest.fixture
def kubeconfig(tmp_path: Path, fake: FakeKube) -> Path:
    """A kubeconfig whose current context points at the fake, namespace ``rayspace``."""
    return write_kubeconfig(tmp_path / "kubeconfig", fake.url, SA_TOKEN, namespace="rayspace")


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[KubeApi]:
    """A client connection through the real ``kubernetes`` package."""
    conn = KubeApi.from_kubeconfig(kubeconfig, request_timeout=10)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def rendered_dev() -> list[dict]:
    """The real rendered ``dev`` overlay (rendered once per session)."""
    from cluster.manifests import render

    return render("dev")
