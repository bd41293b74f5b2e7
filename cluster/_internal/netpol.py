"""Kubernetes NetworkPolicies translated into nftables rules, pod by pod.

This is what a policy-enforcing CNI (Calico, Cilium, kube-router...) does on a node,
reduced to the pods the emulator (:mod:`cluster._internal.emulate`) runs: for every
pod, the policies of its namespace that select it decide whether its ingress and/or
egress is isolated, and the union of their rules is what stays allowed. The
semantics follow the NetworkPolicy API reference
(https://kubernetes.io/docs/concepts/services-networking/network-policies/):

* a pod is isolated for ingress (egress) when at least one policy selecting it has
  ``Ingress`` (``Egress``) in ``policyTypes``; ``policyTypes`` defaults to
  ``["Ingress"]`` plus ``"Egress"`` when the policy has egress rules;
* rules are additive (allow-only); an empty or missing ``from``/``to`` means every
  peer, an empty or missing ``ports`` every port;
* a peer is a ``podSelector`` (pods of the policy's namespace), a
  ``namespaceSelector`` (all pods of the matching namespaces), both (the matching
  pods of the matching namespaces), or an ``ipBlock`` (a CIDR minus ``except``);
* a port is a number or a container port *name* (resolved against the pod that
  receives the traffic), with an optional ``endPort`` range; protocol defaults to TCP;
* replies of an allowed connection always pass (connection tracking).

Two things a real node adds are kept: traffic from the node itself (kubelet probes,
``kubectl port-forward``) reaches every pod, and loopback inside a pod is never
filtered. Peers that the emulator does not run (the ingress controller, Prometheus,
the KubeRay operator, kube-dns) resolve to no address, so their rules allow nothing;
``--explain`` says so. Nothing leaves the emulated subnet at all: that is the
emulator's sandbox, not a policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster._internal.objects import labels_match
from workloads.exceptions import ManifestError

#: nftables table every pod's rules live in (one table per network namespace).
NFT_TABLE = "rayspace_netpol"
_PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class PodEndpoint:
    """A pod as the policies see it.

    Attributes:
        name: Pod name.
        namespace: Kubernetes namespace.
        labels: Pod labels (template labels plus what KubeRay adds).
        ip: Pod IPv4 address.
        ports: Named container ports: name -> (port, protocol).
    """

    name: str
    namespace: str
    labels: Mapping[str, str]
    ip: str
    ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class Rule:
    """One allow rule of one pod, in one direction.

    Attributes:
        policy: NetworkPolicy it comes from.
        peers: Peer addresses/CIDRs (``None``: any peer).
        excepts: CIDRs excluded from ``peers`` (ipBlock ``except``).
        protocol: ``tcp``/``udp``/``sctp``, or ``None`` for every protocol.
        ports: Port numbers or ``lo-hi`` ranges (``None``: every port of the protocol).
        note: Why a rule allows nothing (peers that the emulator does not run).
    """

    policy: str
    peers: list[str] | None
    excepts: list[str] = field(default_factory=list)
    protocol: str | None = None
    ports: list[str] | None = None
    note: str = ""

    @property
    def empty(self) -> bool:
        """True when no address can match (every peer resolved to nothing)."""
        return self.peers is not None and not self.peers

    def describe(self, direction: str) -> str:
        """A line for ``--explain``."""
        who = "any peer" if self.peers is None else (", ".join(self.peers) or "no emulated peer")
        if self.excepts:
            who += f" except {', '.join(self.excepts)}"
        what = "all traffic" if self.protocol is None else (
            f"{self.protocol} {'any port' if self.ports is None else ','.join(self.ports)}")
        arrow = "from" if direction == "ingress" else "to"
        text = f"allow {what} {arrow} {who}  [{self.policy}]"
        return text + (f"  ({self.note})" if self.note else "")


@dataclass
class PodPolicy:
    """What the policies make of one pod.

    Attributes:
        pod: The pod.
        selected_by: Policies whose podSelector selects it.
        ingress_isolated: Ingress is default-deny plus ``ingress`` rules.
        egress_isolated: Egress is default-deny plus ``egress`` rules.
        ingress: Allowed ingress rules.
        egress: Allowed egress rules.
    """

    pod: PodEndpoint
    selected_by: list[str] = field(default_factory=list)
    ingress_isolated: bool = False
    egress_isolated: bool = False
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)


def _policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes")
    if types:
        return list(types)
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def _peer_addresses(
    peer: dict[str, Any], policy_ns: str, pods: Iterable[PodEndpoint], namespaces: Mapping[str, Mapping[str, str]]
) -> tuple[list[str], list[str], str]:
    """Addresses a peer stands for: (addresses or CIDRs, except CIDRs, note)."""
    if "ipBlock" in peer:
        block = peer["ipBlock"] or {}
        try:
            cidr = str(ipaddress.ip_network(block["cidr"], strict=False))
            excepts = [str(ipaddress.ip_network(c, strict=False)) for c in block.get("except") or []]
        except (KeyError, ValueError) as e:
            raise ManifestError(f"NetworkPolicy ipBlock {block!r}: not a CIDR ({e})") from e
        if ipaddress.ip_network(cidr).version != 4:
            return [], [], f"IPv6 block {cidr} (the emulator is IPv4 only)"
        return [cidr], excepts, ""
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    if ns_sel is None:
        candidate_ns = {policy_ns}
    else:
        candidate_ns = {ns for ns, labels in namespaces.items() if labels_match(ns_sel, dict(labels))}
    selector = pod_sel if pod_sel is not None else {}
    hits = sorted(p.ip for p in pods if p.namespace in candidate_ns and labels_match(selector, dict(p.labels)))
    note = "" if hits else f"no emulated pod matches {peer}"
    return hits, [], note


def _port_specs(ports: list[dict[str, Any]] | None, receiver: PodEndpoint | None) -> list[tuple[str, list[str] | None]]:
    """(protocol, ports) pairs of a rule's ``ports``; ``[]`` ports list means unresolvable."""
    if not ports:
        return [("any", None)]
    out: dict[str, list[str] | None] = {}
    for p in ports:
        proto = str(p.get("protocol") or "TCP").upper()
        if proto not in _PROTOCOLS:
            raise ManifestError(f"NetworkPolicy port {p!r}: protocol {proto!r} is not one of {_PROTOCOLS}")
        key = proto.lower()
        port = p.get("port")
        if port is None:
            out[key] = None
            continue
        if isinstance(port, str) and not port.isdigit():
            named = (receiver.ports if receiver else {}).get(port)
            if named is None or named[1].upper() != proto:
                out.setdefault(key, [])
                continue
            port = named[0]
        lo = int(port)
        end = p.get("endPort")
        spec = f"{lo}-{int(end)}" if end and int(end) > lo else str(lo)
        if out.get(key, []) is not None:
            out.setdefault(key, [])
            out[key].append(spec)  # type: ignore[union-attr]
    return [(proto, ports_) for proto, ports_ in out.items()]


def resolve(
    policies: list[dict[str, Any]], pods: list[PodEndpoint], namespaces: Mapping[str, Mapping[str, str]]
) -> list[PodPolicy]:
    """Which rules hold for each pod.

    Args:
        policies: NetworkPolicy objects (any namespace; each applies to its own).
        pods: Every pod the emulator runs.
        namespaces: Namespace name -> labels, for namespaceSelectors.

    Returns:
        One :class:`PodPolicy` per pod, in the order given.
    """
    out = []
    for pod in pods:
        pp = PodPolicy(pod=pod)
        for pol in policies:
            meta, spec = pol.get("metadata") or {}, pol.get("spec") or {}
            if (meta.get("namespace") or pod.namespace) != pod.namespace:
                continue
            if not labels_match(spec.get("podSelector") or {}, dict(pod.labels)):
                continue
            name = meta.get("name", "?")
            pp.selected_by.append(name)
            types = _policy_types(pol)
            policy_ns = meta.get("namespace") or pod.namespace
            for direction, key, peers_key in (("Ingress", "ingress", "from"), ("Egress", "egress", "to")):
                if direction not in types:
                    continue
                setattr(pp, f"{key}_isolated", True)
                for rule in spec.get(key) or []:
                    getattr(pp, key).extend(_rules(name, rule, peers_key, policy_ns, pod, pods, namespaces, key))
        out.append(pp)
    return out


def _rules(
    policy: str, rule: dict[str, Any], peers_key: str, policy_ns: str, pod: PodEndpoint,
    pods: list[PodEndpoint], namespaces: Mapping[str, Mapping[str, str]], direction: str,
) -> list[Rule]:
    peers = rule.get(peers_key)
    targets: list[tuple[list[str] | None, list[str], str, PodEndpoint | None]] = []
    if not peers:
        targets.append((None, [], "", pod if direction == "ingress" else None))
    else:
        for peer in peers:
            addrs, excepts, note = _peer_addresses(peer, policy_ns, pods, namespaces)
            if direction == "ingress" or "ipBlock" in peer:
                targets.append((addrs, excepts, note, pod if direction == "ingress" else None))
            else:
                # Named egress ports resolve against each destination pod's own ports.
                by_ip = {p.ip: p for p in pods}
                for ip in addrs:
                    targets.append(([ip], [], "", by_ip[ip]))
                if not addrs:
                    targets.append(([], [], note, None))
    out = []
    for addrs, excepts, note, receiver in targets:
        for proto, ports in _port_specs(rule.get("ports"), receiver):
            r = Rule(policy=policy, peers=addrs, excepts=excepts, protocol=None if proto == "any" else proto,
                     ports=ports, note=note)
            if ports == []:
                r.note = (r.note + "; " if r.note else "") + "named port not declared by the receiving pod"
            out.append(r)
    return out


def _nft_rule(rule: Rule, direction: str) -> str | None:
    if rule.empty or rule.ports == []:
        return None
    addr = "saddr" if direction == "ingress" else "daddr"
    parts = []
    if rule.peers is not None:
        parts.append(f"ip {addr} {{ {', '.join(rule.peers)} }}")
    if rule.excepts:
        parts.append(f"ip {addr} != {{ {', '.join(rule.excepts)} }}")
    if rule.protocol is not None:
        if rule.ports is None:
            parts.append(f"meta l4proto {rule.protocol}")
        else:
            parts.append(f"{rule.protocol} dport {{ {', '.join(rule.ports)} }}")
    parts.append("accept")
    return " ".join(parts)


def nft_ruleset(pp: PodPolicy, *, node_ip: str, subnet: str) -> str:
    """The nftables script (for ``nft -f``) that enforces a pod's policies inside its network namespace.

    Args:
        pp: The pod's resolved policies.
        node_ip: The node's (host bridge) address: kubelet and port-forward traffic comes from it.
        subnet: The emulated pod network; nothing outside it is ever reached.
    """
    lines = [f"table inet {NFT_TABLE} {{"]
    for direction, chain, hook, iface, isolated, rules in (
        ("ingress", "ingress", "input", "iifname", pp.ingress_isolated, pp.ingress),
        ("egress", "egress", "output", "oifname", pp.egress_isolated, pp.egress),
    ):
        lines.append(f"  chain {chain} {{")
        lines.append(f"    type filter hook {hook} priority 0; policy {'drop' if isolated else 'accept'};")
        lines.append(f'    {iface} "lo" accept')
        lines.append("    ct state established,related accept")
        if direction == "ingress":
            lines.append(f"    ip saddr {node_ip} accept")
        else:
            lines.append(f"    ip daddr != {subnet} drop")
            lines.append("    meta nfproto ipv6 drop")
        if isolated:
            for rule in rules:
                text = _nft_rule(rule, direction)
                if text:
                    lines.append(f"    {text}")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def explain(pp: PodPolicy) -> str:
    """Human-readable translation of one pod's policies."""
    out = [f"pod {pp.pod.name} ({pp.pod.ip}) selected by: {', '.join(pp.selected_by) or 'no policy'}"]
    for direction, isolated, rules in (("ingress", pp.ingress_isolated, pp.ingress),
                                       ("egress", pp.egress_isolated, pp.egress)):
        if not isolated:
            out.append(f"  {direction}: not isolated (everything allowed)")
            continue
        out.append(f"  {direction}: default deny, then")
        if not rules:
            out.append("    (nothing)")
        out.extend(f"    {r.describe(direction)}" for r in rules)
    return "\n".join(out)
