#!/usr/bin/env python3
"""Query the rayspace Serve endpoint (KServe V1) from Python, with the standard library only.

Usage::

    python examples/predict.py                                  # http://127.0.0.1:8000
    python examples/predict.py http://127.0.0.1:8000            # KubeRay (or --url URL), after
        kubectl -n rayspace port-forward svc/rayspace-serve-serve-svc 8000:8000
    python examples/predict.py --instances my_patients.json --json

``--instances`` is a JSON file ``{"instances": [...]}``: each instance an object keyed
by every feature name (``GET /v1/models/<name>`` lists them), or a list of the 30
values in that order. Exit codes: 0 answered, 1 the server refused the request
(its reason is printed), 2 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_INSTANCES = Path(__file__).with_name("instances.json")


class RequestRefused(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


def call(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One JSON request; raises :class:`RequestRefused` on a 4xx/5xx with the server's reason."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raw = e.read().decode(errors="replace")
        try:
            reason = json.loads(raw).get("error", raw)
        except ValueError:
            reason = raw
        raise RequestRefused(e.code, reason) from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url_arg", nargs="?", metavar="URL", help="base URL (same as --url)")
    parser.add_argument("--url", default=os.environ.get("RAYSPACE_SERVE_URL", "http://127.0.0.1:8000"),
                        help="base URL of the endpoint (default $RAYSPACE_SERVE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--model", default=os.environ.get("RAYSPACE_MODEL", "wdbc"))
    parser.add_argument("--instances", type=Path, default=DEFAULT_INSTANCES, help="JSON file {\"instances\": [...]}")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the raw answer as one JSON line")
    args = parser.parse_args(argv)
    base = (args.url_arg or args.url).rstrip("/")
    try:
        body = json.loads(args.instances.read_text())
    except (OSError, ValueError) as e:
        print(f"error: cannot read {args.instances}: {e}", file=sys.stderr)
        return 1
    try:
        meta = call("GET", f"{base}/v1/models/{args.model}", timeout=args.timeout)
        answer = call("POST", f"{base}/v1/models/{args.model}:predict", body, timeout=args.timeout)
    except RequestRefused as e:
        print(f"error: {base} refused the request: {e}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"error: cannot reach {base} ({e}); on Kubernetes, is the port-forward to the serve Service running?",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer))
        return 0
    print(f"{answer['model_name']} {answer['model_version']} at {base} ({len(meta['feature_names'])} features, "
          f"ready={meta['ready']})")
    for i, pred in enumerate(answer["predictions"]):
        print(f"  instance {i}: {pred['class']:<9} label={pred['label']}  p(malignant)={pred['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
