"""What ``rayspace cluster connect`` prints or runs: a ``kubectl port-forward`` and env exports."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from cluster.client.raycluster import HEAD_PORTS, Endpoint, RayCluster
from workloads.exceptions import NotFoundError


@dataclass(frozen=True)
class ConnectPlan:
    """A port-forward to a cluster's head Service and the environment that uses it.

    Attributes:
        command: The ``kubectl port-forward`` argv.
        ports: ``{port name: (local port, remote port)}`` forwarded.
        env: Variables to export (the token by command substitution, never inline).
    """

    command: list[str]
    ports: dict[str, tuple[int, int]]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command and the exports as shell lines."""
        lines = [shlex.join(self.command) + " &"]
        lines += [f"export {k}={v}" for k, v in self.env.items()]
        return "\n".join(lines)


def plan(
    cluster: RayCluster,
    endpoints: Mapping[str, Endpoint],
    *,
    context: str | None = None,
    local_ports: Mapping[str, int] | None = None,
    token_command: str | None = None,
    kubeconfig: str | None = None,
) -> ConnectPlan:
    """Build the port-forward for the dashboard (8265), Ray client (10001) and Serve (8000) ports.

    Args:
        cluster: The RayCluster.
        endpoints: Its head Service's ports (:meth:`RayCluster.endpoints`).
        context: kubeconfig context to pass to kubectl.
        kubeconfig: kubeconfig file to pass to kubectl (the one the client used), if not the default.
        local_ports: Local port per name; default the same as the remote one.
        token_command: Shell command printing the token, for ``RAY_AUTH_TOKEN=$(...)``;
            ``None`` when the cluster does not use token auth.

    Raises:
        NotFoundError: The head Service exposes none of those ports.
    """
    local_ports = dict(local_ports or {})
    ports: dict[str, tuple[int, int]] = {}
    for pname in HEAD_PORTS:
        ep = endpoints.get(pname)
        if ep is not None:
            ports[pname] = (int(local_ports.get(pname, ep.port)), ep.port)
    if not ports:
        raise NotFoundError(f"head Service {cluster.head_service} of {cluster.ref} exposes none of the ports "
                            f"{list(HEAD_PORTS)} (found: {sorted(endpoints)})")
    cmd = ["kubectl"]
    if kubeconfig:
        cmd += ["--kubeconfig", str(kubeconfig)]
    if context:
        cmd += ["--context", context]
    cmd += ["port-forward", "--namespace", str(cluster.namespace), f"svc/{cluster.head_service}"]
    cmd += [f"{local}:{remote}" for local, remote in ports.values()]
    env: dict[str, str] = {}
    if "dashboard" in ports:
        env["RAY_ADDRESS"] = f"http://127.0.0.1:{ports['dashboard'][0]}"
    if token_command:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = f'"$({token_command})"'
    return ConnectPlan(command=cmd, ports=ports, env=env)
