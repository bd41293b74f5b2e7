"""The security checklist: every named check passes on the overlays and fails, with a clear message, when broken.

Also runs checkov (when installed) on the core resources, which it can read; it skips
custom resources, which is why the policy checks walk the KubeRay pod templates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from cluster import manifests
from cluster._internal import policy, serve_sync
from cluster._internal.checkov import INSTALL_HINT, checkov_findings, checkov_path, run_checkov
from cluster._internal.objects import pod_templates


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o: manifests.render(o) for o in manifests.OVERLAYS}


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_every_overlay_passes_the_checklist(rendered, overlay):
    findings = policy.policy_findings(rendered[overlay])
    errors = [f"{f.check} {f.obj}: {f.message}" for f in findings if not f.ok and f.severity == "error"]
    assert not errors, "\n".join(errors)
    assert set(policy.POD_CHECKS) | {"namespace-pss-restricted", "network-default-deny", "network-ray-cluster",
                                    "network-dashboard-in-namespace", "network-serve-from-ingress", "rbac-least-privilege",
                                    "quota-fits-max-scale", "pdb-serve-workers", "serve-config-in-sync"} <= {f.check for f in findings}


def test_checks_reach_every_pod_template_nested_in_kuberay_kinds(rendered):
    where = {t.where for o in rendered["gpu"] for t in pod_templates(o)}
    assert "RayCronJob/rayspace-retrain:spec.jobTemplate.rayClusterSpec.workerGroupSpecs[1].template" in where
    assert "RayJob/rayspace-pipeline:spec.submitterPodTemplate" in where
    assert "RayService/rayspace-serve:spec.rayClusterConfig.headGroupSpec.template" in where
    checked = {f.obj for f in policy.pod_findings(rendered["gpu"]) if f.check == "read-only-root-filesystem"}
    assert where <= checked
    # 4 Ray objects x (head + workers) + 2 submitters; gpu adds a group to RayCluster, RayJob and RayCronJob.
    assert len(where) == 4 * 2 + 3 + 2


def _rc(objects):
    return manifests.find(objects, "RayCluster")


def _head(objects):
    return _rc(objects)["spec"]["headGroupSpec"]["template"]["spec"]


def _worker(objects):
    return _rc(objects)["spec"]["workerGroupSpecs"][0]["template"]["spec"]


BREAKAGES: dict[str, tuple[Callable[[list[dict]], None], str]] = {
    "run-as-non-root": (lambda o: _worker(o)["securityContext"].pop("runAsNonRoot") and
                        _worker(o)["containers"][0]["securityContext"].pop("runAsNonRoot"),
                        "containers[0](ray-worker): runAsNonRoot must be true"),
    "no-privilege-escalation": (lambda o: _head(o)["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
                                "containers[0](ray-head): securityContext.allowPrivilegeEscalation must be false"),
    "drop-all-capabilities": (lambda o: _worker(o)["containers"][0]["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
                              "capabilities.add must be empty, has ['NET_ADMIN']"),
    "seccomp-runtime-default": (lambda o: _head(o)["securityContext"].pop("seccompProfile")
                                and _head(o)["containers"][0]["securityContext"].pop("seccompProfile"),
                                "containers[0](ray-head): seccompProfile.type must be RuntimeDefault"),
    "read-only-root-filesystem": (lambda o: _rc(o)["spec"]["autoscalerOptions"]["securityContext"].update(readOnlyRootFilesystem=False),
                                  "autoscaler-sidecar(autoscalerOptions): securityContext.readOnlyRootFilesystem must be true"),
    "no-host-access": (lambda o: _worker(o)["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
                       "volume host is a hostPath"),
    "resources-set": (lambda o: _head(o)["containers"][0]["resources"].pop("limits"),
                      "resources must set limits.cpu, limits.memory"),
    "memory-requests-equal-limits": (lambda o: _worker(o)["containers"][0]["resources"]["requests"].update(memory="1Gi"),
                                     "memory request 1Gi must equal the limit 3Gi"),
    "image-pinned": (lambda o: _worker(o)["containers"][0].update(image="rayproject/ray:latest"),
                     "image 'rayproject/ray:latest' uses a moving tag"),
    "restricted-volume-types": (lambda o: _worker(o)["volumes"].append({"name": "nfs", "nfs": {"server": "x", "path": "/"}}),
                                "volume nfs is of type nfs"),
    "service-account-token": (lambda o: _head(o)["containers"][0]["volumeMounts"].append(
                                  {"name": "autoscaler-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}),
                              "container ray-head mounts the service-account token volume ['autoscaler-token']"),
    # The old manifests set fsGroup without fsGroupChangePolicy.
    "fsgroup-change-policy": (lambda o: _worker(o)["securityContext"].pop("fsGroupChangePolicy"),
                              "securityContext.fsGroupChangePolicy must be OnRootMismatch (fsGroup 100 and claim volume(s) ['data']"),
    # The old manifests: no object-store-memory, so Ray's default (30% of 3Gi) exceeded the 512Mi /dev/shm.
    "object-store-in-shm": (lambda o: _rc(o)["spec"]["workerGroupSpecs"][0]["rayStartParams"].pop("object-store-memory"),
                            "object store 966367641 bytes (Ray's default (30% of the memory limit)) exceeds the /dev/shm "
                            "volume (536870912 bytes): Ray would put it on disk"),
    "ephemeral-storage-requested": (lambda o: _head(o)["containers"][0]["resources"]["requests"].pop("ephemeral-storage"),
                                    "resources.requests.ephemeral-storage is not set"),
    "ray-writable-tmp": (lambda o: _worker(o)["containers"][0].update(volumeMounts=[
                             m for m in _worker(o)["containers"][0]["volumeMounts"] if m["mountPath"] != "/tmp/ray"]),
                         "needs a writable emptyDir at /tmp/ray"),
}


@pytest.mark.parametrize("check", sorted(BREAKAGES))
def test_each_pod_check_fails_on_a_broken_template(rendered, check):
    objects = copy.deepcopy(rendered["dev"])
    breaker, expected = BREAKAGES[check]
    breaker(objects)
    failures = [f for f in policy.pod_findings(objects) if f.check == check and not f.ok]
    assert failures, f"{check} did not notice the breakage"
    assert any(expected in f.message for f in failures), [f.message for f in failures]
    assert all(f.obj.startswith("RayCluster/rayspace:spec.") for f in failures)


def test_pinned_object_store_larger_than_shm_fails(rendered):
    objects = copy.deepcopy(rendered["ha"])
    _rc(objects)["spec"]["workerGroupSpecs"][0]["rayStartParams"]["object-store-memory"] = str(5 * 2**30)
    failures = [f.message for f in policy.pod_findings(objects) if f.check == "object-store-in-shm" and not f.ok]
    assert failures == ["object store 5368709120 bytes (rayStartParams.object-store-memory) exceeds the /dev/shm volume "
                        "(4294967296 bytes): Ray would put it on disk under /tmp; pin rayStartParams.object-store-memory "
                        "at most the shm sizeLimit or grow the volume"]


def test_object_store_default_is_rays_own():
    # Ray's resolve_object_store_memory: 30% of memory; /dev/shm caps it only above 10 GB.
    from cluster._internal.objects import PodTemplate

    t = PodTemplate("RayCluster/x", "spec.headGroupSpec.template", "ray-head",
                    {"spec": {"containers": [{"resources": {"limits": {"memory": "10Gi"}}}]}}, {}, {"rayStartParams": {}})
    assert policy.object_store_bytes(t, shm_bytes=2**30) == int(10 * 2**30 * 0.3)
    assert policy.object_store_bytes(t, shm_bytes=2**30) > 2**30
    t.group["rayStartParams"]["object-store-memory"] = "1000"
    assert policy.object_store_bytes(t, shm_bytes=2**30) == 1000


def test_automounted_token_is_refused(rendered):
    objects = copy.deepcopy(rendered["dev"])
    manifests.find(objects, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["automountServiceAccountToken"] = True
    failures = [f for f in policy.pod_findings(objects) if f.check == "service-account-token" and not f.ok]
    assert [f.obj for f in failures] == ["RayJob/rayspace-pipeline:spec.submitterPodTemplate"]
    assert "automountServiceAccountToken must be false" in failures[0].message


def _namespace_failure(objects, check):
    findings = [f for f in policy.policy_findings(objects, include_sync=False) if f.check == check and not f.ok]
    assert findings, f"{check} did not fail"
    return " | ".join(f.message for f in findings)


def test_namespace_without_restricted_psa_fails(rendered):
    objects = copy.deepcopy(rendered["dev"])
    manifests.find(objects, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"
    assert "pod-security.kubernetes.io/enforce=restricted" in _namespace_failure(objects, "namespace-pss-restricted")


def test_missing_default_deny_fails(rendered):
    objects = [o for o in copy.deepcopy(rendered["dev"]) if (o["metadata"]["name"] != "default-deny-all")]
    assert "no NetworkPolicy with podSelector {}" in _namespace_failure(objects, "network-default-deny")


#: The policy the manifests had before issue 9: Ray's pinned ports only, between all Ray pods of the namespace.
_OLD_RAY_PORTS = [{"protocol": "TCP", "port": 6379, "endPort": 6383}, {"protocol": "TCP", "port": 8000},
                  {"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8265},
                  {"protocol": "TCP", "port": 10001, "endPort": 10999}, {"protocol": "TCP", "port": 52365}]
OLD_RAY_INTERNAL = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "ray-internal", "namespace": "rayspace"},
    "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}}}],
                     "ports": _OLD_RAY_PORTS}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}}}],
                    "ports": _OLD_RAY_PORTS}],
    },
}


def _without_ray_cluster_policies(objects):
    return [o for o in objects if not (o["kind"] == "NetworkPolicy" and o["metadata"]["name"].startswith("ray-cluster-"))]


def test_pinned_ports_only_between_ray_pods_fails(rendered):
    # The defect of the old manifests: gloo and Serve's replica gRPC use ephemeral ports, which were dropped,
    # and pods of different Ray clusters could reach each other's raylets and workers.
    objects = _without_ray_cluster_policies(copy.deepcopy(rendered["dev"])) + [copy.deepcopy(OLD_RAY_INTERNAL)]
    message = _namespace_failure(objects, "network-ray-cluster")
    assert "port 32768 not allowed from RayCluster/rayspace:spec.headGroupSpec.template (same Ray cluster 'rayspace')" in message
    assert "reachable on port 6380 from RayJob/rayspace-pipeline:spec.rayClusterSpec.headGroupSpec.template, " \
           "a pod of another Ray cluster ('rayspace-pipeline-xxxxx')" in message


def test_all_ports_open_across_ray_clusters_fails(rendered):
    objects = copy.deepcopy(rendered["dev"])
    pol = manifests.find(objects, "NetworkPolicy", "ray-cluster-rayspace")
    everyone = {"matchLabels": {"app.kubernetes.io/name": "rayspace-ray"}}
    pol["spec"]["podSelector"] = everyone
    pol["spec"]["ingress"][0]["from"][0]["podSelector"] = everyone
    pol["spec"]["egress"][0]["to"][0]["podSelector"] = everyone
    message = _namespace_failure(objects, "network-ray-cluster")
    assert "a pod of another Ray cluster ('rayspace-serve-xxxxx'); select peers by their own cluster" in message


def test_ray_pod_template_without_owner_label_is_cut_off(rendered):
    objects = copy.deepcopy(rendered["dev"])
    svc = manifests.find(objects, "RayService")
    del svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]["rayspace.io/ray-owner"]
    message = _namespace_failure(objects, "network-ray-cluster")
    assert "not allowed from RayService/rayspace-serve:spec.rayClusterConfig.headGroupSpec.template" in message


def test_kuberay_pod_labels_are_modelled(rendered):
    from cluster._internal.objects import pod_labels

    labels = {t.where: pod_labels(t) for o in rendered["dev"] for t in pod_templates(o)}
    head = labels["RayCluster/rayspace:spec.headGroupSpec.template"]
    assert head["ray.io/cluster"] == "rayspace" and head["ray.io/node-type"] == "head"
    assert head["app.kubernetes.io/name"] == "rayspace-ray", "template labels override KubeRay's app name"
    assert labels["RayService/rayspace-serve:spec.rayClusterConfig.workerGroupSpecs[0].template"]["ray.io/cluster"] \
        == "rayspace-serve-xxxxx"
    assert "ray.io/cluster" not in labels["RayJob/rayspace-pipeline:spec.submitterPodTemplate"]


def test_dashboard_opened_outside_the_namespace_fails(rendered):
    objects = copy.deepcopy(rendered["dev"])
    pol = manifests.find(objects, "NetworkPolicy", "dashboard-from-namespace")
    pol["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})
    assert "opens 8265 to an ipBlock" in _namespace_failure(objects, "network-dashboard-in-namespace")


def test_operator_selected_by_name_in_a_fixed_namespace_fails(rendered):
    # The old manifests' rule: app.kubernetes.io/name=kuberay-operator (Helm only) and port 8265 only.
    objects = copy.deepcopy(rendered["dev"])
    pol = manifests.find(objects, "NetworkPolicy", "ray-head-from-operator")
    pol["spec"]["ingress"][0]["from"][0]["podSelector"] = {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}
    pol["spec"]["ingress"][0]["ports"] = [{"protocol": "TCP", "port": 8265}]
    message = _namespace_failure(objects, "network-operator-reaches-head")
    assert "the operator installed by kustomize (labels {'app.kubernetes.io/name': 'kuberay'" in message
    assert "cannot reach port 8265" in message
    assert "the operator installed by helm" in message and "cannot reach port 8000" in message


def test_operator_namespace_is_an_overlay_parameter(rendered):
    def namespace(objects):
        pol = manifests.find(objects, "NetworkPolicy", "ray-head-from-operator")
        return pol["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]

    assert namespace(manifests.render("base")) == "default"
    assert {namespace(rendered[o]) for o in ("dev", "gpu", "ha")} == {"kuberay-system"}
    passed = [f for f in policy.check_operator_reaches_head(rendered["dev"]) if f.ok]
    assert len(passed) == 4 and "['kuberay-system']" in passed[0].message


def test_head_egress_to_the_whole_internet_fails(rendered):
    # The old manifests: the head (job drivers, notebooks) could reach 0.0.0.0/0 on 443 and 6443.
    objects = copy.deepcopy(rendered["gpu"])
    pol = manifests.find(objects, "NetworkPolicy", "ray-head-to-apiserver")
    assert pol["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] == "192.0.2.1/32"
    pol["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] = "0.0.0.0/0"
    assert "NetworkPolicy/ray-head-to-apiserver egress[0] allows 0.0.0.0/0, wider than /16" in \
        _namespace_failure(objects, "network-egress-narrow")
    del pol["spec"]["egress"][0]["to"]
    assert "egress[0] allows every destination" in _namespace_failure(objects, "network-egress-narrow")


def test_rbac_beyond_the_autoscaler_fails(rendered):
    objects = copy.deepcopy(rendered["dev"])
    role = manifests.find(objects, "Role", "rayspace-autoscaler")
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    role["rules"][0]["verbs"].append("delete")
    message = _namespace_failure(objects, "rbac-least-privilege")
    assert "core/secrets is not needed by the autoscaler" in message and "verbs ['delete'] are not needed" in message


def _head_rights(objects):
    return {f.obj: f for f in policy.policy_findings(objects, include_sync=False) if f.check == "rbac-head-effective"}


def test_head_rights_include_the_role_kuberay_binds(rendered):
    # The old check modelled only the manifests' Role (pods get/list/watch); KubeRay adds its own per cluster.
    finding = _head_rights(rendered["dev"])["ServiceAccount/rayspace-head"]
    assert finding.ok
    assert "core/pods get/list/patch/watch, core/pods/resize patch, ray.io/rayclusters get/patch" in finding.message
    assert "KubeRay's Role/rayspace," in finding.message and "Role/rayspace-autoscaler" in finding.message


def test_head_service_account_shared_with_workers_fails(rendered):
    objects = copy.deepcopy(rendered["dev"])
    _worker(objects)["serviceAccountName"] = "rayspace-head"
    message = _namespace_failure(objects, "rbac-head-effective")
    assert "non-head pods use it and so get KubeRay's head Role too: ['RayCluster/rayspace:spec.workerGroupSpecs[0].template']" \
        in message


def test_head_rights_beyond_the_documented_fail(rendered):
    objects = copy.deepcopy(rendered["dev"])
    manifests.find(objects, "Role", "rayspace-autoscaler")["rules"].append(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    assert "can core/secrets get beyond what the README documents" in _namespace_failure(objects, "rbac-head-effective")


def test_quota_too_small_for_max_scale_fails(rendered):
    objects = copy.deepcopy(rendered["dev"])
    manifests.find(objects, "ResourceQuota")["spec"]["hard"]["limits.cpu"] = "2"
    message = _namespace_failure(objects, "quota-fits-max-scale")
    assert "limits.cpu: needs 2.7 at maxReplicas, quota allows 2" in message


def test_old_quota_does_not_fit_a_rayservice_upgrade_plus_a_rayjob(rendered):
    # The old dev quota (8 CPU, 24Gi) fitted each object alone but not two RayService clusters and a RayJob.
    objects = copy.deepcopy(rendered["dev"])
    hard = manifests.find(objects, "ResourceQuota")["spec"]["hard"]
    hard.update({"limits.cpu": "8", "requests.cpu": "8", "limits.memory": "24Gi", "requests.memory": "24Gi"})
    assert all(f.ok for f in policy.check_quota(objects) if f.check == "quota-fits-max-scale")
    message = _namespace_failure(objects, "quota-fits-concurrent")
    assert message.startswith("RayCluster + 2 x RayService (upgrade) + RayJob or RayCronJob run: ")
    assert "limits.cpu: needs 9.3, quota allows 8" in message
    hard["pods"] = "5"
    assert "pods: needs 11, quota allows 5" in _namespace_failure(objects, "quota-fits-concurrent")


def test_gpu_quota_is_required_for_gpu_groups(rendered):
    objects = copy.deepcopy(rendered["gpu"])
    del manifests.find(objects, "ResourceQuota")["spec"]["hard"]["requests.nvidia.com/gpu"]
    assert "quota has no requests.nvidia.com/gpu" in _namespace_failure(objects, "quota-fits-max-scale")


def test_ha_serve_workers_without_pdb_fail(rendered):
    objects = [o for o in copy.deepcopy(rendered["ha"]) if o["kind"] != "PodDisruptionBudget"]
    assert "highly available Serve workers without a PodDisruptionBudget" in _namespace_failure(objects, "pdb-serve-workers")


def test_max_unavailable_pdb_on_kuberay_pods_fails(rendered):
    # The old manifests: maxUnavailable: 1 on the RayService's worker pods (no scale subresource: drains hang).
    objects = copy.deepcopy(rendered["ha"])
    pdb = manifests.find(objects, "PodDisruptionBudget", "rayspace-serve-workers")
    del pdb["spec"]["minAvailable"]
    pdb["spec"]["maxUnavailable"] = 1
    assert "maxUnavailable 1 on KubeRay pods (no scale subresource) blocks every eviction" in \
        _namespace_failure(objects, "pdb-serve-workers")
    pdb["spec"] = {"minAvailable": "50%", "selector": pdb["spec"]["selector"]}
    assert "minAvailable '50%' is a percentage" in _namespace_failure(objects, "pdb-serve-workers")
    pdb["spec"]["minAvailable"] = 2
    assert "minAvailable 2 >= minReplicas 2 of RayService/rayspace-serve" in _namespace_failure(objects, "pdb-serve-workers")


def test_pdb_only_in_ha(rendered):
    assert [o for o in rendered["dev"] if o["kind"] == "PodDisruptionBudget"] == []
    assert manifests.find(rendered["ha"], "PodDisruptionBudget", "rayspace-serve-workers")["spec"]["minAvailable"] == 1



@pytest.mark.parametrize("overlay", ["base", "gpu", "ha"])
def test_rwx_claim_without_storage_class_fails(overlay):
    # The old manifests: ReadWriteMany with no storageClassName (Pending on default cloud classes).
    objects = manifests.render(overlay)
    claim = manifests.find(objects, "PersistentVolumeClaim", "rayspace-data")
    assert claim["spec"]["storageClassName"] == "rayspace-rwx"
    del claim["spec"]["storageClassName"]
    assert "spec.storageClassName is not set on a ReadWriteMany claim" in _namespace_failure(objects, "pvc-storage-class")


def test_dev_claim_uses_the_default_class(rendered):
    claim = manifests.find(rendered["dev"], "PersistentVolumeClaim", "rayspace-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim["spec"]
    assert all(f.ok for f in policy.check_pvc_storage_class(rendered["dev"]))


def test_literal_credentials_fail(rendered):
    objects = copy.deepcopy(rendered["ha"])
    manifests.find(objects, "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisPassword"] = {"value": "x"}
    _head(objects)["containers"][0]["env"].append({"name": "REDIS_PASSWORD", "value": "hunter2"})
    message = _namespace_failure(objects, "no-secrets-in-manifests")
    assert "redisPassword.value is a literal" in message and "env REDIS_PASSWORD has a literal value" in message


def test_stray_namespace_fails(rendered):
    objects = copy.deepcopy(rendered["ha"])
    manifests.find(objects, "Deployment", "rayspace-redis")["metadata"].pop("namespace")
    assert "Deployment/rayspace-redis in None" in _namespace_failure(objects, "objects-in-namespace")


def test_ha_needs_spread_serve_workers(rendered):
    objects = copy.deepcopy(rendered["ha"])
    group = manifests.find(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["minReplicas"] = 1
    del group["template"]["spec"]["topologySpreadConstraints"]
    message = _namespace_failure(objects, "serve-ha-replicas")
    assert "minReplicas 1 < 2" in message and "does not spread pods across nodes" in message


def test_ha_without_serve_deployments_fails(rendered):
    # The old manifests: serve/config.yaml had no deployments section (one replica, no per-node cap).
    objects = copy.deepcopy(rendered["ha"])
    svc = manifests.find(objects, "RayService")
    conf = yaml.safe_load(svc["spec"]["serveConfigV2"])
    del conf["applications"][0]["deployments"]
    svc["spec"]["serveConfigV2"] = yaml.safe_dump(conf)
    assert "application 'rayspace' lists no deployments in serve/config.yaml" in _namespace_failure(objects, "serve-ha-replicas")


def test_ha_spread_without_honouring_taints_fails(rendered):
    objects = copy.deepcopy(rendered["ha"])
    group = manifests.find(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    del group["template"]["spec"]["topologySpreadConstraints"][0]["nodeTaintsPolicy"]
    assert "spreads by hostname without nodeTaintsPolicy: Honor" in _namespace_failure(objects, "serve-ha-replicas")


def test_rayservice_without_the_haproxy_settings_fails(rendered):
    # The old manifests: the RayService pods set no Serve ingress env, so Serve used its Python proxy.
    objects = copy.deepcopy(rendered["dev"])
    svc = manifests.find(objects, "RayService")
    for t in pod_templates(svc):
        t.spec["containers"][0]["env"] = [e for e in t.spec["containers"][0]["env"] if not e["name"].startswith("RAY_SERVE")]
    message = _namespace_failure(objects, "serve-ingress-env")
    assert "RAY_SERVE_ENABLE_HA_PROXY=None (want '1')" in message and "RAY_SERVE_THROUGHPUT_OPTIMIZED=None" in message
    assert "run `rayspace cluster sync-serve`" in message


def test_serve_env_comes_from_the_local_runner():
    from serve.runner import ray_env

    env = serve_sync.pod_serve_env()
    assert env == {k: ray_env("haproxy")[k] for k in serve_sync.POD_SERVE_ENV_KEYS}
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_raycronjob_without_self_deleting_runs_fails(rendered):
    # The old manifests: shutdownAfterJobFinishes + ttlSecondsAfterFinished only delete the cluster; the
    # RayJob of every run stayed forever.
    objects = copy.deepcopy(rendered["dev"])
    job = manifests.find(objects, "RayCronJob")["spec"]["jobTemplate"]
    del job["deletionStrategy"]
    job.update(shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=3600)
    message = _namespace_failure(objects, "raycronjob-history-bounded")
    assert "no DeleteSelf rule for ['jobStatus=SUCCEEDED', 'jobStatus=FAILED', 'jobDeploymentStatus=Failed']" in message


def test_cron_deletion_rules_exclude_shutdown_after_job_finishes(rendered):
    from cluster._internal.validate import webhook_rules as webhook_findings

    cron = copy.deepcopy(manifests.find(rendered["dev"], "RayCronJob"))
    assert all(f.ok for f in webhook_findings(cron) if f.check == "webhook-rayjob")
    cron["spec"]["jobTemplate"]["shutdownAfterJobFinishes"] = True
    failures = [f.message for f in webhook_findings(cron) if f.check == "webhook-rayjob" and not f.ok]
    assert failures and "shutdownAfterJobFinishes and deletionStrategy.deletionRules are mutually exclusive" in failures[0]


def test_plaintext_gcs_redis_without_a_recorded_risk_fails(rendered):
    # The old ha overlay: redis:// with nothing saying the plaintext, single-replica choice was deliberate.
    objects = copy.deepcopy(rendered["ha"])
    for kind in ("RayCluster", "RayService"):
        del manifests.find(objects, kind)["metadata"]["annotations"]["rayspace.io/gcs-redis-risk"]
    message = _namespace_failure(objects, "gcs-redis-tls")
    assert "gcsFaultToleranceOptions.redisAddress 'redis://rayspace-redis:6379' is plaintext" in message
    cspec = manifests.find(objects, "RayCluster")["spec"]
    cspec["gcsFaultToleranceOptions"]["redisAddress"] = "rediss://redis.example:6380"
    assert any(f.ok and "over TLS" in f.message for f in policy.check_gcs_redis(objects))


def test_rayservice_token_per_cluster_fails(rendered):
    # The old manifests: no secretName, so each upgrade's RayCluster got its own new token.
    objects = copy.deepcopy(rendered["dev"])
    del manifests.find(objects, "RayService")["spec"]["rayClusterConfig"]["authOptions"]["secretName"]
    assert "authOptions has no secretName" in _namespace_failure(objects, "rayservice-stable-token")


def test_serve_config_out_of_sync_names_the_fix(monkeypatch, tmp_path):
    stale = tmp_path / "rayservice.yaml"
    stale.write_text(serve_sync.RAYSERVICE_FILE.read_text().replace("model_name: wdbc", "model_name: other"))
    monkeypatch.setattr(serve_sync, "RAYSERVICE_FILE", stale)
    finding = policy.check_serve_sync()[0]
    assert not finding.ok and "run `rayspace cluster sync-serve`" in finding.message


# ---------------------------------------------------------------------------- checkov


@pytest.mark.skipif(checkov_path() is None, reason=f"checkov not found: {INSTALL_HINT}")
@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_checkov_passes_on_the_core_resources(rendered, overlay):
    report = run_checkov(rendered[overlay])
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert not failed, "\n".join(failed)
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment")
        assert reason and "digest" in reason, f"unjustified suppression {skipped['check_id']}: {reason!r}"
    assert len(results["passed_checks"]) > 10
    findings = checkov_findings(rendered[overlay])
    assert all(f.ok for f in findings) and findings[-1].check == "checkov"


@pytest.mark.skipif(checkov_path() is None, reason=f"checkov not found: {INSTALL_HINT}")
def test_checkov_failures_become_findings(rendered):
    objects = copy.deepcopy(rendered["ha"])
    redis = manifests.find(objects, "Deployment", "rayspace-redis")["spec"]["template"]["spec"]
    redis["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    failures = [f for f in checkov_findings(objects) if not f.ok]
    assert any(f.check == "checkov-CKV_K8S_20" and "rayspace-redis" in f.obj for f in failures), failures


def test_missing_checkov_is_a_clear_error(monkeypatch, rendered):
    from workloads.exceptions import ManifestError

    monkeypatch.setenv("RAYSPACE_CHECKOV", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ManifestError, match="checkov not found: set \\$RAYSPACE_CHECKOV"):
        run_checkov(rendered["dev"])
