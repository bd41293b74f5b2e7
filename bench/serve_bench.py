"""Throughput of the Serve app against a bare uvicorn server loading the same model.

Runs, one after another on loopback, in one invocation:

* ``uvicorn``: ``serve.app:plain_app`` (the same FastAPI routes and validation, one
  forward pass per request) on one uvicorn worker (uvloop + httptools) -- the baseline;
* ``serve_haproxy``: ``rayspace serve`` with Serve's HAProxy ingress (the default);
* ``serve_proxy``: ``rayspace serve --ingress proxy`` (Serve's Python proxy), for reference.

Each server runs in its own process group, started here and stopped here by pid.
The load generator is a minimal asyncio HTTP/1.1 keep-alive client (far cheaper per
request than an HTTP library, so the client steals less CPU from the servers on a
small machine) that sends KServe V1 predict requests with one instance each from
``--concurrency`` connections, bounded by ``--requests`` and ``--duration`` per target.
Every answer is checked (status 200); the first is parsed and verified.

Writes ``bench/results/serve.json`` (rps, latency percentiles, errors per target, and
each Serve target's rps as a ratio of the uvicorn baseline measured in the same run).

    python bench/serve_bench.py                      # all three
    python bench/serve_bench.py --targets uvicorn,serve_haproxy --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "wdbc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} did not answer /healthz within {timeout_s}s")


def _stop(proc: subprocess.Popen, timeout_s: float = 90) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created for it, nothing else
        proc.wait()


# ------------------------------------------------------------------ load generator


def _request_bytes(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        k = key.strip().lower()
        if k == b"content-length":
            length = int(value.strip())
        elif k == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts)
    return status, await reader.readexactly(length or 0)


async def _load(port: int, body: bytes, *, requests: int, duration_s: float, concurrency: int) -> dict[str, Any]:
    payload = _request_bytes(port, body)
    latencies: list[float] = []
    errors: list[str] = []
    first: list[bytes] = []
    budget = [requests]
    deadline = time.perf_counter() + duration_s

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while budget[0] > 0 and time.perf_counter() < deadline:
                budget[0] -= 1
                t0 = time.perf_counter()
                writer.write(payload)
                status, resp = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"HTTP {status}: {resp[:120]!r}")
                elif not first:
                    first.append(resp)
        except (OSError, asyncio.IncompleteReadError) as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 3) if lat else float("nan")

    return {
        "requests": len(lat),
        "errors": len(errors),
        "error_samples": errors[:3],
        "elapsed_s": round(elapsed, 3),
        "rps": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        "first_response": json.loads(first[0]) if first else None,
    }


# --------------------------------------------------------------------- targets


def _prepare_registry(root: Path) -> None:
    sys.path.insert(0, str(REPO))
    from serve.testing import make_checkpoint
    from workloads.config import RegistryConfig
    from workloads.registry import promote

    ckpt = make_checkpoint(root / "ckpt", seed=0, hidden=64, depth=2, fit_steps=50)
    promote(RegistryConfig(path=str(root / "models"), model_name=MODEL), ckpt, {"test_roc_auc": 0.95})


def _start(target: str, port: int, registry: Path, workdir: Path, replica_cpus: float,
           serve_set: list[str]) -> subprocess.Popen:
    env = dict(os.environ, RAYSPACE_REGISTRY=str(registry), RAYSPACE_MODEL=MODEL, PYTHONPATH=str(REPO))
    log = open(workdir / f"{target}.log", "wb")
    if target == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "serve.app:plain_app", "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log", "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning"]
    else:
        ingress = "haproxy" if target == "serve_haproxy" else "proxy"
        cmd = [sys.executable, "-m", "workloads.cli", "serve", "--registry", str(registry), "--port", str(port),
               "--ingress", ingress, "--set", "serve.max_replicas=1", "--set", "serve.min_replicas=1",
               "--set", f"serve.replica_cpus={replica_cpus}", "--set", "serve.max_ongoing_requests=256",
               "--set", "serve.reload_poll_s=0", *[a for kv in serve_set for a in ("--set", kv)]]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="uvicorn,serve_haproxy,serve_proxy")
    ap.add_argument("--requests", type=int, default=4000, help="requests per target (after warm-up)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per target at most")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--replica-cpus", type=float, default=1.0)
    ap.add_argument("--serve-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra --set for the Serve targets, e.g. serve.batch_wait_timeout_s=0.002")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve.json"))
    args = ap.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"uvicorn", "serve_haproxy", "serve_proxy"}
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}")

    sys.path.insert(0, str(REPO))
    from serve.testing import synthetic_rows

    body = json.dumps({"instances": synthetic_rows(1, 42)[0].tolist()}).encode()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rayspace-bench-") as tmp:
        work = Path(tmp)
        _prepare_registry(work)
        for target in targets:
            port = _free_port()
            print(f"[{target}] starting on 127.0.0.1:{port} ...", flush=True)
            proc = _start(target, port, work / "models", work, args.replica_cpus, args.serve_set)
            try:
                t0 = time.monotonic()
                _wait_healthy(port, proc, timeout_s=240)
                startup = time.monotonic() - t0
                asyncio.run(_load(port, body, requests=args.warmup, duration_s=30, concurrency=args.concurrency))
                res = asyncio.run(_load(port, body, requests=args.requests, duration_s=args.duration,
                                        concurrency=args.concurrency))
                res["startup_s"] = round(startup, 1)
                results[target] = res
                print(f"[{target}] {res['rps']} rps, p50 {res['latency_ms']['p50']} ms, "
                      f"p99 {res['latency_ms']['p99']} ms, errors {res['errors']}", flush=True)
            except RuntimeError as e:
                results[target] = {"error": str(e)}
                print(f"[{target}] failed: {e}; see the log below", flush=True)
                print((work / f"{target}.log").read_text(errors="replace")[-3000:], flush=True)
            finally:
                _stop(proc)

    base = results.get("uvicorn", {}).get("rps")
    ratios = {
        f"{t}/uvicorn": round(r["rps"] / base, 3)
        for t, r in results.items() if t != "uvicorn" and base and "rps" in r
    }
    report = {
        "benchmark": "serve",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"requests": args.requests, "duration_s": args.duration, "concurrency": args.concurrency,
                     "warmup": args.warmup, "instances_per_request": 1, "replica_cpus": args.replica_cpus,
                     "serve_set": args.serve_set},
        "results": results,
        "rps_ratio_vs_uvicorn": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(json.dumps({"rps": {t: r.get("rps") for t, r in results.items()}, "ratios": ratios}))
    bad = [t for t, r in results.items() if "error" in r or r.get("errors")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
