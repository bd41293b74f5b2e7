"""A loopback stub of the Ray dashboard's job REST API, with Ray's token rules.

Ray's dashboard (``ray._private.authentication.http_token_authentication``) answers
401 without an ``Authorization`` header and 403 with a wrong bearer token; the job
routes answer 404 ``Job <id> does not exist`` for unknown IDs.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeDashboard:
    """``GET /api/jobs/<id>`` and ``GET /api/jobs/<id>/logs`` on 127.0.0.1.

    Args:
        jobs: Submission ID -> driver log text.
        token: The token requests must carry; ``None`` disables auth.
    """

    def __init__(self, jobs: dict[str, str], token: str | None = None):
        self.jobs = jobs
        self.token = token
        self.seen: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "FakeDashboard":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                auth = self.headers.get("Authorization", "")
                fake.seen.append({"path": self.path, "auth": auth or None})
                if fake.token is not None:
                    if not auth:
                        return self._send(401, "Unauthorized: Missing authentication token", "text/plain")
                    if auth != f"Bearer {fake.token}":
                        return self._send(403, "Forbidden: Invalid authentication token", "text/plain")
                parts = self.path.strip("/").split("/")
                if parts == ["api", "jobs", "garbled", "logs"]:
                    return self._send(200, "<html>", "text/html")
                if len(parts) in (3, 4) and parts[:2] == ["api", "jobs"] and parts[3:] in ([], ["logs"]):
                    if parts[2] not in fake.jobs:
                        return self._send(404, f"Job {parts[2]} does not exist", "text/plain")
                    if len(parts) == 4:
                        return self._send(200, json.dumps({"logs": fake.jobs[parts[2]]}), "application/json")
                    return self._send(200, json.dumps({"submission_id": parts[2], "status": "SUCCEEDED"}),
                                      "application/json")
                return self._send(404, "404: Not Found", "text/plain")

            def _send(self, code: int, text: str, ctype: str) -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
