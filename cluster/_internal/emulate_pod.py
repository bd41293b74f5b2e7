"""PID 1 of one emulated pod: the kubelet's and the container runtime's part, reduced.

Started by :mod:`cluster._internal.emulate` as
``ip netns exec NS unshare --mount --uts --pid --fork --propagation private python -m cluster._internal.emulate_pod SPEC``,
so it runs in the pod's own network, mount, UTS and PID namespaces. It then makes the
pod's filesystem view (what the manifest's volumes give a real pod):

* ``/proc`` for the new PID namespace (Ray's address auto-detection and ``ps`` see only this pod);
* the hostname and ``/etc/hosts`` the kubelet would write (pod name, head Service name);
* the shared volume (the PVC) bind-mounted at its ``mountPath`` from one host directory;
* a private tmpfs for every ``emptyDir`` mount (``/tmp``, ``/tmp/ray``, ``/dev/shm`` with its
  ``sizeLimit``), so nothing written there is seen by another pod;
* a private working directory;

and runs the container command (``ray start ... --block``), forwarding SIGTERM to it and
reaping orphans as an init must. When the command ends, this process exits and the kernel
ends every process left in the PID namespace: a pod never leaks processes.

Paths the interpreter needs that sit under a directory an ``emptyDir`` hides (a checkout
or virtualenv under ``/tmp``) are opened before the tmpfs goes on and bound back after.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_NOSUID = 2
_MS_NODEV = 4


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype or 'bind'}): {os.strerror(err)}")


def _setup_filesystem(spec: dict[str, Any]) -> list[int]:
    """Make the pod's mounts; returns file descriptors to close once the command started."""
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV)
    socket.sethostname(spec["hostname"])
    _mount(spec["hosts_file"], "/etc/hosts", None, _MS_BIND)
    for shared in spec["shared_mounts"]:
        Path(shared["target"]).mkdir(parents=True, exist_ok=True)
        _mount(shared["source"], shared["target"], None, _MS_BIND)
    # Keep what the interpreter and the checkout need when a tmpfs hides their parent.
    keep = [p for p in spec.get("keep_paths", []) if os.path.exists(p)]
    fds: list[int] = []
    for empty in sorted(spec["empty_dirs"], key=lambda e: len(e["target"])):
        target = empty["target"]
        hidden = [p for p in keep if p == target or p.startswith(target.rstrip("/") + "/")]
        held = [(p, os.open(p, os.O_PATH)) for p in hidden]
        fds.extend(fd for _, fd in held)
        Path(target).mkdir(parents=True, exist_ok=True)
        opts = "mode=1777" + (f",size={empty['size_bytes']}" if empty.get("size_bytes") else "")
        _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, opts)
        for path, fd in held:
            Path(path).mkdir(parents=True, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    return fds


def main(spec_path: str) -> int:
    """Set the pod up, run its command, and exit with the command's status."""
    spec = json.loads(Path(spec_path).read_text())
    fds = _setup_filesystem(spec)
    child = subprocess.Popen(spec["command"], env=spec["env"], pass_fds=())
    for fd in fds:
        os.close(fd)

    def forward(signum: int, _frame: Any) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while True:
        try:
            pid, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wstatus)
            break
    print(f"[pod {spec['hostname']}] command exited with {status}", flush=True)
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
