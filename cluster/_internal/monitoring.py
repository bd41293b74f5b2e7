"""Offline checks of ``cluster/monitoring``: PodMonitors, PrometheusRule and Grafana dashboards.

The prometheus-operator CRD schemas are not available offline, so these checks
verify what matters for the workspace: each PodMonitor selects Ray pods of the
overlays and scrapes a port those pods expose; every metric the alerts and the
dashboards query is one Ray exports (:data:`RAY_METRICS`, verified against Ray's
source by a unit test); expressions are balanced; dashboards are valid JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cluster._internal.findings import Finding, failed, obj_id, passed
from cluster._internal.objects import labels_match, pod_templates

#: Prometheus names of the Ray metrics the monitoring uses -> the name Ray's source defines.
RAY_METRICS = {
    "ray_serve_num_http_requests_total": "serve_num_{protocol_name}_requests",
    "ray_serve_num_http_error_requests_total": "serve_num_{protocol_name}_error_requests",
    "ray_serve_http_request_latency_ms_bucket": "serve_{protocol_name}_request_latency_ms",
    "ray_serve_deployment_replica_healthy": "serve_deployment_replica_healthy",
    "ray_cluster_active_nodes": "cluster_active_nodes",
    "ray_node_cpu_utilization": "node_cpu_utilization",
    "ray_node_mem_used": "node_mem_used",
    "ray_node_cpu_count": "node_cpu_count",
}
_METRIC = re.compile(r"\b(ray_[a-z0-9_]+)\b")
_ABSENT = re.compile(r"\babsent(_over_time)?\s*\(\s*(ray_[a-z0-9_]+)")
#: The label kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules by
#: (podMonitorSelector/ruleSelector default to ``release: <Helm release name>``).
RELEASE_LABEL = "release"
#: NetworkPolicy that admits Prometheus; its namespace selector names where Prometheus and Grafana run.
METRICS_POLICY = "metrics-from-monitoring"


def monitoring_namespace(overlay_objects: list[dict[str, Any]]) -> str | None:
    """Namespace of Prometheus/Grafana as the overlay's metrics NetworkPolicy names it."""
    for o in overlay_objects:
        if o.get("kind") == "NetworkPolicy" and (o.get("metadata") or {}).get("name") == METRICS_POLICY:
            for rule in (o.get("spec") or {}).get("ingress") or []:
                for peer in rule.get("from") or []:
                    name = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                    if name:
                        return name
    return None


def metrics_in(expr: str) -> set[str]:
    """Ray metric names referenced by a PromQL expression."""
    return set(_METRIC.findall(expr))


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in expr:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def _check_expr(where: str, expr: str) -> list[str]:
    problems = []
    if not _balanced(expr):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    absent = sorted({m.group(2) for m in _ABSENT.finditer(expr)})
    if absent:
        problems.append(f"{where}: absent({absent[0]}) fires whenever no Ray cluster runs (RayJob clusters come and go); "
                        "condition on a head that is up instead")
    unknown = sorted(metrics_in(expr) - set(RAY_METRICS))
    if unknown:
        problems.append(f"{where}: metrics {unknown} are not among the Ray metrics this workspace knows ({sorted(RAY_METRICS)})")
    return problems


def monitoring_findings(monitoring: list[dict[str, Any]], overlay_objects: list[dict[str, Any]]) -> list[Finding]:
    """Check the rendered monitoring bundle against an overlay's rendered objects."""
    out: list[Finding] = []
    for o in monitoring:
        if o.get("kind") in ("PodMonitor", "PrometheusRule"):
            labels = (o.get("metadata") or {}).get("labels") or {}
            out.append(passed("monitoring-release-label", obj_id(o), f"release={labels[RELEASE_LABEL]}")
                       if labels.get(RELEASE_LABEL) else
                       failed("monitoring-release-label", obj_id(o), f"no `{RELEASE_LABEL}` label: kube-prometheus-stack's "
                              "Prometheus selects PodMonitors and PrometheusRules by release=<Helm release> and would ignore it"))
    grafana_ns = monitoring_namespace(overlay_objects)
    templates = [t for o in overlay_objects for t in pod_templates(o) if t.role in ("ray-head", "ray-worker")]
    for pm in (o for o in monitoring if o.get("kind") == "PodMonitor"):
        spec = pm.get("spec") or {}
        hits = [t for t in templates if labels_match(spec.get("selector"), (t.template.get("metadata") or {}).get("labels") or {})]
        problems = []
        if not hits:
            problems.append("its selector matches no Ray pod template")
        for ep in spec.get("podMetricsEndpoints") or []:
            for t in hits:
                ports = {p.get("name") for c in t.spec.get("containers") or [] for p in c.get("ports") or []}
                if ep.get("port") not in ports:
                    problems.append(f"{t.where} exposes no port named {ep.get('port')!r}")
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or []
        ns = {(o.get("metadata") or {}).get("namespace") for o in overlay_objects if o.get("kind") == "RayCluster"}
        if namespaces and not ns & set(namespaces):
            problems.append(f"namespaceSelector {namespaces} misses the Ray namespace {sorted(ns)}")
        out.append(failed("podmonitor-targets", obj_id(pm), "; ".join(problems)) if problems
                   else passed("podmonitor-targets", obj_id(pm), f"scrapes {len(hits)} Ray pod templates on a port they expose"))
    for rule_obj in (o for o in monitoring if o.get("kind") == "PrometheusRule"):
        problems = []
        count = 0
        for group in (rule_obj.get("spec") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                count += 1
                name = rule.get("alert") or rule.get("record") or "?"
                if not rule.get("expr"):
                    problems.append(f"{name}: no expr")
                    continue
                problems += _check_expr(name, str(rule["expr"]))
                if rule.get("alert") and not (rule.get("annotations") or {}).get("summary"):
                    problems.append(f"{name}: alerts need a summary annotation")
        out.append(failed("prometheusrule-exprs", obj_id(rule_obj), "; ".join(problems)) if problems
                   else passed("prometheusrule-exprs", obj_id(rule_obj), f"{count} rules query known Ray metrics"))
    for cm in (o for o in monitoring if o.get("kind") == "ConfigMap"):
        problems = []
        for key, text in (cm.get("data") or {}).items():
            try:
                dash = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{key}: not JSON ({e})")
                continue
            if not dash.get("uid") or not dash.get("panels"):
                problems.append(f"{key}: a dashboard needs a uid and panels")
            for panel in dash.get("panels") or []:
                for target in panel.get("targets") or []:
                    problems += _check_expr(f"{key} panel {panel.get('title')!r}", str(target.get("expr", "")))
        if ((cm.get("metadata") or {}).get("labels") or {}).get("grafana_dashboard") != "1":
            problems.append("missing label grafana_dashboard=1 (the Grafana sidecar would not load it)")
        cm_ns = (cm.get("metadata") or {}).get("namespace")
        if grafana_ns and cm_ns != grafana_ns:
            problems.append(f"in namespace {cm_ns!r}, but the Grafana sidecar searches only its own namespace "
                            f"{grafana_ns!r} (unless grafana.sidecar.dashboards.searchNamespace is set)")
        out.append(failed("grafana-dashboards", obj_id(cm), "; ".join(problems)) if problems
                   else passed("grafana-dashboards", obj_id(cm), "valid dashboard JSON querying known Ray metrics"))
    return out
