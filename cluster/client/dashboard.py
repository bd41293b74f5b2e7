"""The Ray dashboard's job REST API (``/api/jobs/...``), with Ray token auth.

Ray's dashboard reads the token from the ``Authorization: Bearer <token>``
header (``ray._private.authentication``: missing -> 401, wrong -> 403), so that
is what every request carries when a token is given. Standard library only.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from workloads.exceptions import DashboardError

logger = logging.getLogger(__name__)


class DashboardClient:
    """A small client of the dashboard's job API.

    Args:
        base_url: ``http://127.0.0.1:8265`` (a port-forward) or the in-cluster URL.
        token: Ray auth token; ``None`` sends no ``Authorization`` header.
        timeout: Seconds per request.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 15.0):
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DashboardError(f'Got "{base_url}" for the dashboard URL: must be http(s)://host:port')
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str) -> Any:
        url = self.base_url + path
        req = urllib.request.Request(url, method=method, headers={"Accept": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - URL scheme checked above
                raw = resp.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace").strip()[:300]
            if e.code == 404:
                raise DashboardError(f"{method} {url}: not found (HTTP 404): {text}", status=404) from e
            if e.code in (401, 403):
                hint = ("no token was sent; pass --token or set RAY_AUTH_TOKEN" if not self.token
                        else "the token was rejected; check it with `rayspace cluster token`")
                raise DashboardError(f"{method} {url}: HTTP {e.code} ({hint}): {text}", status=e.code) from e
            raise DashboardError(f"{method} {url}: HTTP {e.code}: {text}", status=e.code) from e
        except urllib.error.URLError as e:
            raise DashboardError(
                f"cannot reach the Ray dashboard at {self.base_url}: {e.reason} "
                "(is `rayspace cluster connect --run` forwarding port 8265?)"
            ) from e
        except TimeoutError as e:
            raise DashboardError(f"{method} {url}: no answer within {self.timeout:g}s") from e
        try:
            return json.loads(raw) if raw else {}
        except ValueError as e:
            raise DashboardError(f"{method} {url}: the answer is not JSON: {raw[:200]!r}") from e

    @staticmethod
    def _quote(job_id: str) -> str:
        if not job_id:
            raise DashboardError("Got an empty job ID: must be the Ray submission ID (status.jobId of the RayJob)")
        return urllib.parse.quote(job_id, safe="")

    def job_logs(self, job_id: str) -> str:
        """The driver logs of a submitted job (``GET /api/jobs/<id>/logs``)."""
        payload = self._request("GET", f"/api/jobs/{self._quote(job_id)}/logs")
        if not isinstance(payload, dict) or not isinstance(payload.get("logs"), str):
            raise DashboardError(f"unexpected logs payload for job {job_id}: {str(payload)[:200]}")
        return payload["logs"]

    def job_info(self, job_id: str) -> dict[str, Any]:
        """A job's details (``GET /api/jobs/<id>``): ``status``, ``message``, ``entrypoint``, ..."""
        payload = self._request("GET", f"/api/jobs/{self._quote(job_id)}")
        if not isinstance(payload, dict):
            raise DashboardError(f"unexpected job payload for {job_id}: {str(payload)[:200]}")
        return payload

    def stop_job(self, job_id: str) -> bool:
        """Ask Ray to stop a job (``POST /api/jobs/<id>/stop``); ``True`` if it was running."""
        payload = self._request("POST", f"/api/jobs/{self._quote(job_id)}/stop")
        return bool(isinstance(payload, dict) and payload.get("stopped"))
