"""Driver process of the autoscaling simulation (see :mod:`cluster._internal.simulate`).

Run as ``python -m cluster._internal.sim_driver ADDRESS PARAMS_JSON``. It connects to
the fake cluster, submits tasks that each need one whole worker node, and prints one
JSON object per line: every change in the number of alive worker nodes, when the
tasks finish, and when the cluster is back at its minimum. It runs in its own
process so the caller's Ray (e.g. a test session's ``ray.init``) is untouched.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

#: Node id the fake multi-node provider gives the head (ray.autoscaler._private.fake_multi_node).
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"


def _emit(event: str, workers: int, **extra: Any) -> None:
    print(json.dumps({"wall": time.time(), "event": event, "workers": workers, **extra}), flush=True)


def main(argv: list[str]) -> int:
    """Run the workload and report the worker count over time; exit 0 when it ran to the end."""
    import ray

    address, params = argv[0], json.loads(argv[1])
    # Started together with the head so importing Ray overlaps its start-up; the controller
    # creates the ready file once `ray start` reports the head is up.
    ready = params["ready_file"]
    deadline = time.time() + params.get("connect_timeout_s", 120.0)
    while not os.path.exists(ready):
        if time.time() > deadline:
            _emit("timeout", 0, phase="connect")
            return 2
        time.sleep(0.2)
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)

    def workers() -> int:
        return sum(1 for n in ray.nodes() if n.get("Alive") and n.get("NodeID") != FAKE_HEAD_NODE_ID)

    last = workers()
    _emit("connected", last)

    @ray.remote
    def hold(seconds: float) -> str:
        time.sleep(seconds)
        return ray.get_runtime_context().get_node_id()

    refs = [
        hold.options(num_cpus=params["task_cpus"], num_gpus=params.get("task_gpus", 0)).remote(
            params["task_seconds"]
        )
        for _ in range(params["tasks"])
    ]
    _emit("submitted", last, tasks=params["tasks"], task_cpus=params["task_cpus"], task_seconds=params["task_seconds"])

    deadline = time.time() + params["up_timeout_s"]
    pending = list(refs)
    while pending and time.time() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        now = workers()
        if now != last:
            last = now
            _emit("workers", now)
    if pending:
        _emit("timeout", last, phase="scale-up", unfinished=len(pending))
        return 3
    nodes_used = sorted(set(ray.get(refs)))
    _emit("tasks-finished", last, distinct_nodes=len(nodes_used))

    deadline = time.time() + params["down_timeout_s"]
    while last > params["min_workers"] and time.time() < deadline:
        time.sleep(1.0)
        now = workers()
        if now != last:
            last = now
            _emit("workers", now)
    if last > params["min_workers"]:
        _emit("timeout", last, phase="scale-down")
        return 4
    _emit("idle", last)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
