"""Run checkov on the core (non-``ray.io``) objects of a rendered overlay.

checkov reads core Kubernetes kinds but skips custom resources, which is why the
policy checks in :mod:`cluster._internal.policy` walk the KubeRay pod templates.
checkov is not a dependency of the project (it pins its own versions of many
packages); install it in its own virtual environment and point ``$RAYSPACE_CHECKOV``
at it, or put ``checkov`` on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cluster._internal.findings import Finding, failed, passed
from workloads.exceptions import ManifestError

CHECKOV_ENV = "RAYSPACE_CHECKOV"
INSTALL_HINT = (f"set ${CHECKOV_ENV} or put checkov on PATH "
                "(python3.11 -m venv /tmp/checkov-venv && /tmp/checkov-venv/bin/pip install checkov)")


def checkov_path() -> str | None:
    """The checkov executable (``$RAYSPACE_CHECKOV`` first, then ``PATH``), or ``None``."""
    return os.environ.get(CHECKOV_ENV) or shutil.which("checkov")


def run_checkov(objects: list[dict[str, Any]], executable: str | None = None, timeout_s: float = 300) -> dict[str, Any]:
    """Scan the core objects with checkov (offline: ``--skip-download``) and return its JSON report.

    Raises:
        ManifestError: checkov is missing, fails to run, or prints no report.
    """
    exe = executable or checkov_path()
    if exe is None:
        raise ManifestError(f"checkov not found: {INSTALL_HINT}")
    core = [o for o in objects if not str(o.get("apiVersion", "")).startswith("ray.io/")]
    with tempfile.TemporaryDirectory(prefix="rayspace-checkov-") as tmp:
        path = Path(tmp) / "core.yaml"
        path.write_text(yaml.safe_dump_all(core, sort_keys=False), encoding="utf-8")
        try:
            proc = subprocess.run(
                [exe, "-f", str(path), "--framework", "kubernetes", "--skip-download", "-o", "json"],
                capture_output=True, text=True, timeout=timeout_s, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ManifestError(f"checkov ({exe}) could not run: {e}") from e
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise ManifestError(f"checkov printed no JSON report (exit {proc.returncode}): {proc.stderr[-2000:]}") from e
    return report[0] if isinstance(report, list) else report


def checkov_findings(objects: list[dict[str, Any]], executable: str | None = None) -> list[Finding]:
    """checkov's failed checks as findings, plus one finding per justified suppression."""
    report = run_checkov(objects, executable)
    results = report.get("results") or {}
    out = []
    for c in results.get("failed_checks") or []:
        out.append(failed(f"checkov-{c['check_id']}", c.get("resource", "?"), c.get("check_name", "")))
    for c in results.get("skipped_checks") or []:
        reason = (c.get("check_result") or {}).get("suppress_comment")
        if reason:
            out.append(passed(f"checkov-{c['check_id']}", c.get("resource", "?"), f"suppressed: {reason}"))
        else:
            out.append(failed(f"checkov-{c['check_id']}", c.get("resource", "?"), "suppressed without a justification"))
    passed_count = len(results.get("passed_checks") or [])
    if not [f for f in out if not f.ok]:
        out.append(passed("checkov", "(core objects)", f"{passed_count} checkov checks passed on the core objects"))
    return out
