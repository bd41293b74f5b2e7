"""`rayspace serve` on a taken port: one line at once, before Ray starts, never the foreign server taken for itself."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from serve import runner
from serve.testing import make_checkpoint
from workloads.config import WorkspaceConfig
from workloads.exceptions import ServeError
from workloads.registry import promote


@pytest.fixture
def foreign_server():
    """Something else on a loopback port that even answers GET /healthz with 200 and JSON."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = b'{"status": "ok", "version": "v1"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_port_is_refused_before_ray_starts(tmp_path, foreign_server, monkeypatch):
    promote(WorkspaceConfig().registry.model_copy(update={"path": str(tmp_path / "models")}),
            make_checkpoint(tmp_path / "ckpt"), {"test_roc_auc": 0.9})
    cfg = WorkspaceConfig.model_validate({"registry": {"path": str(tmp_path / "models")},
                                          "serve": {"port": foreign_server}})
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    started = []
    monkeypatch.setattr(runner, "prepare_local_ray", lambda *a, **k: None)
    monkeypatch.setattr(runner, "remove_run_dir", lambda: None)
    import workloads.runtime

    monkeypatch.setattr(workloads.runtime, "init_local_ray", lambda *a, **k: started.append("ray"))
    with pytest.raises(ServeError, match=f"port {foreign_server} on 127.0.0.1 is already in use by another process"):
        runner.start(cfg)
    assert started == []


def test_a_free_port_passes_the_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner.check_port_free("127.0.0.1", port)
