"""A real S3-compatible server for tests: moto's ``moto_server`` on a free loopback port.

moto (with boto3/botocore) pins ``python-dateutil<3`` while the Kubernetes client
needs ``>=3``, so it cannot share the workspace's environment: it runs from a venv
of its own, found through ``$RAYSPACE_MOTO_SERVER`` (the path of its
``moto_server``), ``moto_server`` on ``PATH``, or ``/tmp/rayspace-moto-venv``
(where ``.ci/run`` installs it). The workspace itself talks to it the way it
talks to real S3: pyarrow's S3 filesystem, configured by the standard
``AWS_ENDPOINT_URL`` / ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` variables.

The dedicated venv comes before ``PATH``: an older moto (5.2.1) answers pyarrow's
CompleteMultipartUpload with a body pyarrow reads as an error, so every write fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

MOTO_ENV = "RAYSPACE_MOTO_SERVER"
DEFAULT_VENV_BIN = Path("/tmp/rayspace-moto-venv/bin/moto_server")
INSTALL_HINT = (
    "python3.11 -m venv /tmp/rayspace-moto-venv && /tmp/rayspace-moto-venv/bin/pip install 'moto[server]>=5.2.5' "
    f"(moto >= 5.2.5; or set ${MOTO_ENV} to a moto_server executable)"
)


@dataclass
class S3Server:
    """A running moto server and the bucket the tests write into."""

    endpoint: str
    bucket: str
    pid: int
    env: dict[str, str] = field(default_factory=dict)

    def filesystem(self):
        """A pyarrow S3 filesystem on this server, configured explicitly (not from the environment)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key="testing", secret_key="testing", region="us-east-1",
            endpoint_override=self.endpoint.removeprefix("http://"), scheme="http",
        )


def find_moto_server() -> str | None:
    """The ``moto_server`` executable to use, or ``None``."""
    configured = os.environ.get(MOTO_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access(DEFAULT_VENV_BIN, os.X_OK):
        return str(DEFAULT_VENV_BIN)
    return shutil.which("moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(executable: str, bucket: str = "rayspace-test", timeout_s: float = 60.0) -> tuple[S3Server, subprocess.Popen]:
    """Start ``moto_server`` on 127.0.0.1 in its own session and create ``bucket``.

    Raises:
        RuntimeError: The server did not answer within ``timeout_s`` (its output is in the message).
    """
    port = _free_port()
    # moto logs every request: a file, not a pipe nobody drains (a full pipe would block the server).
    log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open by the child; closed here after the fork
    proc = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, start_new_session=True,
        cwd=tempfile.gettempdir(),
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace")
            log.close()
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {err[-2000:]}")
        try:
            # Creating the bucket doubles as the readiness check.
            req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop(proc)
            log.close()
            raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout_s:g}s")
        time.sleep(0.2)
    log.close()
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # Never wait on the EC2 metadata service for credentials.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return S3Server(endpoint=endpoint, bucket=bucket, pid=proc.pid, env=env), proc


def stop(proc: subprocess.Popen) -> None:
    """Stop the server by its pid (its own session: the whole group) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
