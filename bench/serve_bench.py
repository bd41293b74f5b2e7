"""Throughput of the Serve app against a bare uvicorn server loading the same model.

Starts, on loopback and in one invocation:

* ``uvicorn``: ``serve.app:plain_app`` (the same FastAPI routes and validation, one
  forward pass per request) on one uvicorn worker (uvloop + httptools) -- the baseline;
* ``serve_haproxy``: ``rayspace serve`` with Serve's HAProxy ingress (the default);
* ``serve_proxy``: ``rayspace serve --ingress proxy`` (Serve's Python proxy), for reference.

Each server runs in its own process group, started here and stopped here by pid.
All stay up while they are measured in turn for ``--rounds`` rounds, so a busy
neighbour on a shared machine slows every target alike; each round's ratio uses
the uvicorn measurement of the same round. The load generator is a minimal asyncio HTTP/1.1 keep-alive client (far cheaper per
request than an HTTP library, so the client steals less CPU from the servers on a
small machine) that sends KServe V1 predict requests with one instance each from
``--concurrency`` connections, bounded by ``--requests`` and ``--duration`` per target.
Every answer is checked (status 200); one is parsed and verified (model version, one prediction).

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
        "_latencies": latencies,
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


def _summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = sorted(x for r in rounds for x in r["_latencies"])
    elapsed = sum(r["elapsed_s"] for r in rounds)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 3) if lat else float("nan")

    return {
        "requests": len(lat),
        "errors": sum(r["errors"] for r in rounds),
        "error_samples": [e for r in rounds for e in r["error_samples"]][:3],
        "elapsed_s": round(elapsed, 3),
        "rps": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "rps_per_round": [r["rps"] for r in rounds],
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        "first_response": next((r["first_response"] for r in rounds if r["first_response"]), None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="uvicorn,serve_haproxy,serve_proxy")
    ap.add_argument("--requests", type=int, default=6000, help="requests per target in all (after warm-up)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per target in all, at most")
    ap.add_argument("--rounds", type=int, default=5,
                    help="targets are measured in turn this many times, so a busy neighbour hits all alike")
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
    base_rounds: dict[str, list[dict[str, Any]]] = {}
    serve_rounds: dict[str, list[dict[str, Any]]] = {}
    serve_targets = [t for t in targets if t != "uvicorn"]

    def measure(target: str, port: int, rnd: int) -> dict[str, Any]:
        res = asyncio.run(_load(port, body, requests=args.requests // args.rounds,
                                duration_s=args.duration / args.rounds, concurrency=args.concurrency))
        print(f"[{target}] round {rnd + 1}: {res['rps']} rps, p50 {res['latency_ms']['p50']} ms, "
              f"errors {res['errors']}", flush=True)
        return res

    def launch(target: str) -> tuple[subprocess.Popen, int | None]:
        port = _free_port()
        print(f"[{target}] starting on 127.0.0.1:{port} ...", flush=True)
        proc = _start(target, port, work / "models", work, args.replica_cpus, args.serve_set)
        t0 = time.monotonic()
        try:
            _wait_healthy(port, proc, timeout_s=240)
        except RuntimeError as e:
            results[target] = {"error": str(e)}
            print(f"[{target}] failed: {e}; its log:", flush=True)
            print((work / f"{target}.log").read_text(errors="replace")[-3000:], flush=True)
            return proc, None
        results[target] = {"startup_s": round(time.monotonic() - t0, 1)}
        asyncio.run(_load(port, body, requests=args.warmup, duration_s=30, concurrency=args.concurrency))
        return proc, port

    with tempfile.TemporaryDirectory(prefix="rayspace-bench-") as tmp:
        work = Path(tmp)
        _prepare_registry(work)
        base_proc, base_port = (None, None)
        try:
            if "uvicorn" in targets:
                base_proc, base_port = launch("uvicorn")
            # One Serve target at a time, measured in turn with the baseline (which idles meanwhile),
            # so both see the same neighbours and only one Ray runs.
            for target in serve_targets or [None]:
                proc, port = launch(target) if target else (None, None)
                try:
                    for rnd in range(args.rounds):
                        if base_port:
                            base_rounds.setdefault(target or "uvicorn", []).append(measure("uvicorn", base_port, rnd))
                        if target and port:
                            serve_rounds.setdefault(target, []).append(measure(target, port, rnd))
                finally:
                    if proc is not None:
                        _stop(proc)
        finally:
            if base_proc is not None:
                _stop(base_proc)

    def check(target: str) -> None:
        answer = results[target]["first_response"] or {}
        if answer.get("model_version") != "v1" or len(answer.get("predictions", [])) != 1:
            results[target]["error"] = f"unexpected answer: {answer!r:.200}"

    all_base = [r for rounds in base_rounds.values() for r in rounds]
    if all_base:
        results["uvicorn"].update(_summarise(all_base))
        check("uvicorn")
    ratios: dict[str, Any] = {}
    for target, rounds in serve_rounds.items():
        results[target].update(_summarise(rounds))
        check(target)
        paired = base_rounds.get(target, [])
        if not paired:
            continue
        each = sorted(r["rps"] / b["rps"] for r, b in zip(rounds, paired) if b["rps"])
        base_rps = _summarise(paired)["rps"]
        ratios[f"{target}/uvicorn"] = {
            "overall": round(results[target]["rps"] / base_rps, 3) if base_rps else None,
            "median_of_rounds": round(each[len(each) // 2], 3) if each else None,
            "per_round": [round(x, 3) for x in each],
            "uvicorn_rps_same_rounds": base_rps,
        }
    report = {
        "benchmark": "serve",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_after": os.getloadavg()},
        "settings": {"requests": args.requests, "duration_s": args.duration, "rounds": args.rounds,
                     "concurrency": args.concurrency, "warmup": args.warmup, "instances_per_request": 1,
                     "replica_cpus": args.replica_cpus, "serve_set": args.serve_set},
        "results": results,
        "rps_ratio_vs_uvicorn": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(json.dumps({"rps": {t: r.get("rps") for t, r in results.items()},
                      "ratios": {k: v["median_of_rounds"] for k, v in ratios.items()}}))
    bad = [t for t, r in results.items() if "error" in r or r.get("errors")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
