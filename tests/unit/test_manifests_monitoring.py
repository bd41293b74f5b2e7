"""cluster/monitoring: PodMonitors target Ray pods, alerts and dashboards query metrics Ray exports."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from cluster import manifests
from cluster._internal.monitoring import RAY_METRICS, metrics_in, monitoring_findings


@pytest.fixture(scope="module")
def bundle():
    return manifests.render("monitoring"), manifests.render("dev")


def test_known_metrics_are_defined_in_ray_source():
    import ray

    root = Path(ray.__file__).parent
    sources = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                        for sub in ("serve/_private", "_private", "dashboard", "autoscaler")
                        for p in (root / sub).rglob("*.py"))
    for prom_name, ray_name in RAY_METRICS.items():
        assert f'"{ray_name}"' in sources or f'f"{ray_name}"' in sources, f"{ray_name} ({prom_name}) not in Ray {ray.__version__}"
        base = ray_name.replace("{protocol_name}", "http")
        assert prom_name.startswith(f"ray_{base}"), prom_name


def test_monitoring_checks_pass(bundle):
    monitoring, dev = bundle
    findings = monitoring_findings(monitoring, dev)
    assert [f.check for f in findings].count("podmonitor-targets") == 2
    assert all(f.ok for f in findings), [f.message for f in findings if not f.ok]
    rule = manifests.find(monitoring, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"RayServeHighErrorRate", "RayServeHighLatency", "RayHeadDown"} <= alerts
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    assert {"ray_serve_num_http_error_requests_total", "ray_serve_http_request_latency_ms_bucket"} <= metrics_in(exprs)


def test_broken_monitoring_is_reported(bundle):
    monitoring, dev = copy.deepcopy(bundle[0]), bundle[1]
    manifests.find(monitoring, "PodMonitor", "rayspace-ray-workers")["spec"]["podMetricsEndpoints"][0]["port"] = "prom"
    rule = manifests.find(monitoring, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "sum(rate(ray_serve_requests_totl[5m]"
    cm = manifests.find(monitoring, "ConfigMap", "rayspace-grafana-serve")
    cm["data"]["rayspace-serve.json"] = "{not json"
    failures = {f.check: f.message for f in monitoring_findings(monitoring, dev) if not f.ok}
    assert "exposes no port named 'prom'" in failures["podmonitor-targets"]
    assert "unbalanced brackets" in failures["prometheusrule-exprs"]
    assert "ray_serve_requests_totl" in failures["prometheusrule-exprs"]
    assert "rayspace-serve.json: not JSON" in failures["grafana-dashboards"]


def test_old_monitoring_defects_are_reported(bundle):
    # The old bundle: no `release` label, dashboards in the workspace namespace, and an absent() alert.
    monitoring, dev = copy.deepcopy(bundle[0]), bundle[1]
    for o in monitoring:
        o["metadata"]["labels"].pop("release")
        if o["kind"] == "ConfigMap":
            o["metadata"]["namespace"] = "rayspace"
    rule = manifests.find(monitoring, "PrometheusRule")
    rule["spec"]["groups"][1]["rules"][1]["expr"] = "absent(ray_cluster_active_nodes) or sum(ray_cluster_active_nodes) == 0"
    failures = {}
    for f in monitoring_findings(monitoring, dev):
        if not f.ok:
            failures.setdefault(f.check, []).append(f.message)
    assert len(failures["monitoring-release-label"]) == 3
    assert "kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules by release" in failures["monitoring-release-label"][0]
    assert "but the Grafana sidecar searches only its own namespace 'monitoring'" in failures["grafana-dashboards"][0]
    assert "absent(ray_cluster_active_nodes) fires whenever no Ray cluster runs" in failures["prometheusrule-exprs"][0]


def test_no_nodes_alert_needs_a_head_that_is_up(bundle):
    rule = manifests.find(bundle[0], "PrometheusRule")
    expr = next(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "RayClusterNoNodes")
    assert 'up{job="rayspace/rayspace-ray-head"}' in expr and "absent(" not in expr
    assert {o["metadata"]["namespace"] for o in bundle[0] if o["kind"] == "ConfigMap"} == {"monitoring"}
