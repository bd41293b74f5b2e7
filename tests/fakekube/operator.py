"""A minimal stand-in for the KubeRay operator, acting on :class:`FakeKube`'s store.

It does what the client waits for, with short delays:

* RayCluster: after ``ready_after`` seconds, ``HeadPodReady`` and
  ``RayClusterProvisioned`` become True (and worker counts follow the spec);
  ``spec.suspend`` sets ``RayClusterSuspended``; it creates the head Service
  ``<name>-head-svc`` and, for ``authOptions.mode: token``, the token Secret.
* RayJob: creates its RayCluster (owned by the job), goes ``Initializing`` ->
  ``Running`` once the cluster is ready -> after ``job_runtime`` seconds
  ``Complete``/``SUCCEEDED``, or ``Failed``/``FAILED`` when the entrypoint contains
  one of ``fail_markers``; ``spec.suspend`` stops it (``Suspended``/``STOPPED``).
* RayService: after ``ready_after``, the ``Ready`` condition and every application
  of ``serveConfigV2`` ``RUNNING``, plus the ``<name>-serve-svc`` Service.

Run it as a thread (:meth:`start`/:meth:`stop`) or step it with :meth:`reconcile_once`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
import threading
import time
from typing import Any

import yaml

from tests.fakekube.server import FakeKube

DEFAULT_HEAD_PORTS = [("gcs-server", 6379), ("dashboard", 8265), ("client", 10001), ("metrics", 8080)]


def _cond(type_: str, ok: bool, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class FakeOperator:
    """Reconciles Ray objects in a :class:`FakeKube`.

    Args:
        fake: The server whose store it acts on.
        ready_after: Seconds from first sight (or resume) until a RayCluster is ready.
        job_runtime: Seconds a RayJob runs once its cluster is ready.
        fail_markers: Entrypoint substrings that make a RayJob fail.
        interval: Seconds between reconcile passes when run as a thread.
    """

    def __init__(self, fake: FakeKube, *, ready_after: float = 0.3, job_runtime: float = 0.3,
                 fail_markers: tuple[str, ...] = ("--fail",), interval: float = 0.05):
        self.fake = fake
        self.ready_after = ready_after
        self.job_runtime = job_runtime
        self.fail_markers = fail_markers
        self.interval = interval
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeOperator":
        self._thread = threading.Thread(target=self._run, name="fake-operator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception as e:  # noqa: BLE001 - kept for the test to assert on; the loop must go on
                self.errors.append(e)
            self._stop.wait(self.interval)

    def reconcile_once(self) -> None:
        with self.fake.lock:
            for rc in self.fake.list("RayCluster"):
                self._cluster(rc)
            for job in self.fake.list("RayJob"):
                self._job(job)
            for svc in self.fake.list("RayService"):
                self._service(svc)

    # ------------------------------------------------------------------ helpers

    def _age(self, key: str) -> float:
        return time.monotonic() - self._seen.setdefault(key, time.monotonic())

    @staticmethod
    def _owner(obj: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
                "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}

    def _ensure(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if self.fake.get(obj["kind"], meta["name"], meta.get("namespace", "")) is None:
            self.fake.seed(obj, manager="kuberay-operator")

    # ------------------------------------------------------------------ RayCluster

    def _cluster(self, rc: dict[str, Any]) -> None:
        meta, spec = rc["metadata"], rc.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        key = f"rc/{ns}/{name}/{meta['uid']}"
        head_svc = f"{name}-head-svc"
        head = (spec.get("headGroupSpec") or {}).get("template", {}).get("spec", {})
        ports = [(p.get("name"), p.get("containerPort")) for c in head.get("containers", [])[:1]
                 for p in c.get("ports") or [] if p.get("name")] or DEFAULT_HEAD_PORTS
        self._ensure({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": head_svc, "namespace": ns, "ownerReferences": [self._owner(rc)],
                                   "labels": {"ray.io/cluster": name, "ray.io/node-type": "head"}},
                      "spec": {"type": "ClusterIP", "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                               "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in ports]}})
        auth = spec.get("authOptions") or {}
        if str(auth.get("mode", "")).lower() == "token" and not auth.get("secretName"):
            token = base64.b64encode(secrets.token_urlsafe(24).encode()).decode()
            self._ensure({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": name, "namespace": ns, "ownerReferences": [self._owner(rc)]},
                          "data": {"auth_token": token}})
        desired = sum(int(g.get("replicas", 0) or 0) for g in spec.get("workerGroupSpecs") or [])
        status = copy.deepcopy(rc.get("status") or {})
        if spec.get("suspend"):
            self._seen.pop(key, None)
            # Like KubeRay, every status write records the generation it describes.
            status.update(state="suspended", readyWorkerReplicas=0, availableWorkerReplicas=0,
                          desiredWorkerReplicas=0, observedGeneration=meta.get("generation", 1), conditions=[
                              _cond("HeadPodReady", False, "HeadPodNotFound"),
                              _cond("RayClusterProvisioned", False, "RayClusterPodsProvisioning"),
                              _cond("RayClusterSuspended", True, "RayClusterSuspended")])
        else:
            ready = self._age(key) >= self.ready_after
            status.update(
                readyWorkerReplicas=desired if ready else 0, availableWorkerReplicas=desired if ready else 0,
                desiredWorkerReplicas=desired, observedGeneration=meta.get("generation", 1),
                head={"serviceName": head_svc, "podIP": "10.0.0.10", "serviceIP": "10.96.0.10"},
                endpoints={n: str(p) for n, p in ports},
                conditions=[_cond("HeadPodReady", ready, "HeadPodRunningAndReady" if ready else "HeadPodNotReady"),
                            _cond("RayClusterProvisioned", ready,
                                  "AllPodRunningAndReadyFirstTime" if ready else "RayClusterPodsProvisioning"),
                            _cond("RayClusterSuspended", False, "RayClusterSuspended")],
            )
            if ready:
                status["state"] = "ready"
            else:
                status.pop("state", None)
        old = rc.get("status") or {}
        # Keep transition times stable when nothing changed, so a no-op pass is a no-op write.
        if [(c["type"], c["status"]) for c in old.get("conditions", [])] == [
                (c["type"], c["status"]) for c in status["conditions"]]:
            status["conditions"] = old["conditions"]
        self.fake.update_status("RayCluster", name, ns, status)

    # ------------------------------------------------------------------ RayJob

    def _job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        status = copy.deepcopy(job.get("status") or {})
        phase = status.get("jobDeploymentStatus")
        if phase in ("Complete", "Failed", "Suspended"):
            return
        if spec.get("suspend"):
            if status.get("rayClusterName") and spec.get("shutdownAfterJobFinishes"):
                self.fake.remove("RayCluster", status["rayClusterName"], ns)
            status.update(jobDeploymentStatus="Suspended", jobStatus="STOPPED", message="the RayJob was suspended")
            self.fake.update_status("RayJob", name, ns, status)
            return
        if not phase:
            selector = spec.get("clusterSelector") or {}
            cluster = selector.get("ray.io/cluster") or f"{name}-{secrets.token_hex(3)[:5]}"
            status.update(jobDeploymentStatus="Initializing", jobStatus="", rayClusterName=cluster,
                          jobId=spec.get("jobId") or f"{name}-{secrets.token_hex(4)}",
                          startTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            if not selector and spec.get("rayClusterSpec"):
                self._ensure({"apiVersion": "ray.io/v1", "kind": "RayCluster",
                              "metadata": {"name": cluster, "namespace": ns, "ownerReferences": [self._owner(job)],
                                           "labels": {"ray.io/originated-from-crd": "RayJob"}},
                              "spec": copy.deepcopy(spec["rayClusterSpec"])})
            self.fake.update_status("RayJob", name, ns, status)
            return
        rc = self.fake.get("RayCluster", status["rayClusterName"], ns)
        conds = {c["type"]: c["status"] for c in ((rc or {}).get("status") or {}).get("conditions", [])}
        if phase == "Initializing":
            if conds.get("HeadPodReady") == "True" and conds.get("RayClusterProvisioned") == "True":
                status.update(jobDeploymentStatus="Running", jobStatus="RUNNING",
                              dashboardURL=f"{status['rayClusterName']}-head-svc.{ns}.svc.cluster.local:8265")
                self._seen[f"job/{ns}/{name}/{meta['uid']}"] = time.monotonic()
                self.fake.update_status("RayJob", name, ns, status)
            return
        if phase == "Running" and self._age(f"job/{ns}/{name}/{meta['uid']}") >= self.job_runtime:
            failed = any(m in str(spec.get("entrypoint", "")) for m in self.fail_markers)
            status.update(jobDeploymentStatus="Failed" if failed else "Complete",
                          jobStatus="FAILED" if failed else "SUCCEEDED",
                          endTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          message="Job entrypoint command failed with exit code 1" if failed else "Job finished successfully.")
            if failed:
                status["failed"] = 1
            else:
                status["succeeded"] = 1
            self.fake.update_status("RayJob", name, ns, status)
            if spec.get("shutdownAfterJobFinishes"):
                self.fake.remove("RayCluster", status["rayClusterName"], ns)

    # ------------------------------------------------------------------ RayService

    def _service(self, svc: dict[str, Any]) -> None:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        ready = self._age(f"svc/{ns}/{name}/{meta['uid']}") >= self.ready_after
        try:
            serve_cfg = yaml.safe_load(spec.get("serveConfigV2") or "") or {}
        except yaml.YAMLError:
            serve_cfg = {}
        apps = [a.get("name", "default") for a in serve_cfg.get("applications") or []]
        # Like KubeRay, a changed rayClusterConfig means a new cluster (an upgrade); the name follows the config.
        config_hash = hashlib.sha1(json.dumps(spec.get("rayClusterConfig") or {}, sort_keys=True).encode()).hexdigest()
        cluster = f"{name}-raycluster-{config_hash[:5]}"
        if ready:
            self._ensure({"apiVersion": "v1", "kind": "Service",
                          "metadata": {"name": f"{name}-serve-svc", "namespace": ns,
                                       "ownerReferences": [self._owner(svc)]},
                          "spec": {"type": "ClusterIP", "selector": {"ray.io/serve": "true"},
                                   "ports": [{"name": "serve", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]}})
        status = {
            "activeServiceStatus": {
                "rayClusterName": cluster if ready else "",
                "applicationStatuses": {a: {"status": "RUNNING" if ready else "DEPLOYING"} for a in apps},
            },
            "conditions": [_cond("Ready", ready, "NonZeroServeEndpoints" if ready else "Initializing"),
                           _cond("UpgradeInProgress", False, "NoPendingCluster")],
            "observedGeneration": meta.get("generation", 1),
        }
        old = svc.get("status") or {}
        if [(c["type"], c["status"]) for c in old.get("conditions", [])] == [
                (c["type"], c["status"]) for c in status["conditions"]]:
            status["conditions"] = old["conditions"]
        self.fake.update_status("RayService", name, ns, status)
