"""Offline validation of rendered objects: schemas, KubeRay webhook rules, versions.

* Core kinds are validated against the Kubernetes OpenAPI schemas that
  ``kubernetes-validate`` ships, in *strict* mode (unknown fields are errors), for
  the oldest and newest Kubernetes versions the workspace supports. Every error is
  reported, not only the first.
* ``ray.io`` kinds are validated against the KubeRay v1.7.0 CRD schemas
  (``../shared/kuberay/crds/`` or ``$RAYSPACE_KUBERAY_CRDS``): all schema errors, plus
  fields the schema does not know (the API server would silently prune them), plus
  the CRDs' CEL rules (``x-kubernetes-validations``), plus every embedded pod
  template against the core ``PodTemplateSpec`` schema.
* The rules KubeRay's validating webhook enforces and the schema does not.
* Versions agree: ``rayVersion``, image tags, the Dockerfile's base and the installed Ray.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import zoneinfo
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from cluster._internal.findings import Finding, failed, obj_id, passed
from cluster._internal.objects import RAY_KINDS, cluster_specs, job_specs, pod_templates
from workloads.exceptions import ManifestError

logger = logging.getLogger(__name__)

CLUSTER_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = CLUSTER_DIR.parent
CRDS_ENV = "RAYSPACE_KUBERAY_CRDS"
K8S_VERSIONS_ENV = "RAYSPACE_K8S_VERSIONS"
#: Oldest and newest Kubernetes minor versions the manifests are validated against.
DEFAULT_K8S_VERSIONS = ("1.31", "1.37")
#: The KubeRay release whose CRDs and webhook rules are checked.
KUBERAY_VERSION = "v1.7.0"
CRD_HINT = (
    "the KubeRay v1.7.0 CRDs ship in cluster/crds/ (or ../shared/kuberay/crds/ next to the repository, or "
    f"${CRDS_ENV}); get them from https://github.com/ray-project/kuberay/tree/v1.7.0/ray-operator/config/crd/bases"
)

# KubeRay's webhook: names become Service and pod names with suffixes appended.
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47, "RayCronJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
TOKEN_AUTH_MIN_RAY = (2, 52)


# ------------------------------------------------------------------------------------- schemas


#: The KubeRay v1.7.0 CRDs shipped with the package (byte-identical to the release; origin in SOURCE.txt).
PACKAGED_CRDS = CLUSTER_DIR / "crds"


def crd_dir() -> Path:
    """Directory holding the ``ray.io_*.yaml`` CRDs: ``$RAYSPACE_KUBERAY_CRDS``, else the copies shipped in the package."""
    env = os.environ.get(CRDS_ENV)
    if env:
        return Path(env)
    if any(PACKAGED_CRDS.glob("ray.io_*.yaml")):
        return PACKAGED_CRDS
    return REPO_ROOT.parent / "shared" / "kuberay" / "crds"


@functools.lru_cache(maxsize=4)
def crd_schemas(directory: str) -> dict[str, dict[str, Any]]:
    """The ``v1`` OpenAPI schema of every ``ray.io`` kind in ``directory``, by kind.

    Raises:
        ManifestError: The directory or a kind is missing (the message says how to get them).
    """
    path = Path(directory)
    files = sorted(path.glob("ray.io_*.yaml")) if path.is_dir() else []
    if not files:
        raise ManifestError(f"no KubeRay CRDs in {path}: {CRD_HINT}")
    schemas: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            crd = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ManifestError(f"{f}: cannot load the CRD: {e}") from e
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1":
                schemas[kind] = version["schema"]["openAPIV3Schema"]
    missing = [k for k in RAY_KINDS if k not in schemas]
    if missing:
        raise ManifestError(f"{path}: no ray.io/v1 schema for {missing}: {CRD_HINT}")
    return schemas


def k8s_versions() -> tuple[str, ...]:
    """Kubernetes minor versions to validate against (``$RAYSPACE_K8S_VERSIONS``, comma-separated)."""
    env = os.environ.get(K8S_VERSIONS_ENV)
    return tuple(v.strip() for v in env.split(",") if v.strip()) if env else DEFAULT_K8S_VERSIONS


def _schema_version(minor: str) -> str:
    from kubernetes_validate import utils as kv

    candidates = [v for v in kv.all_versions() if kv.major_minor(v) == minor]
    if not candidates:
        raise ManifestError(
            f'Got "{minor}" for a Kubernetes version: kubernetes-validate ships {sorted({kv.major_minor(v) for v in kv.all_versions()})}'
        )
    return candidates[-1]


@functools.lru_cache(maxsize=64)
def _core_validator(kind: str, api_version: str, minor: str):
    """A strict jsonschema validator for one core kind (``None`` when no schema exists)."""
    import jsonschema
    from kubernetes_validate import utils as kv
    from referencing import Registry, Resource

    version = _schema_version(minor)
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kv.schema_contents(f"{folder}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    defs = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def _errors(validator, instance: Any, prefix: str = "") -> list[str]:
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    out = []
    for e in errors:
        where = _path(e.absolute_path)
        where = f"{prefix}.{where}" if prefix and where != "(root)" else (prefix or where)
        message = e.message if len(e.message) <= 300 else e.message[:297] + "..."
        out.append(f"{where}: {message}")
    return out


def validate_core(obj: dict[str, Any], versions: Iterable[str] | None = None) -> list[Finding]:
    """Validate a core object against the strict Kubernetes OpenAPI schema of each version."""
    findings = []
    oid = obj_id(obj)
    for minor in versions or k8s_versions():
        check = f"k8s-openapi-{minor}"
        validator = _core_validator(str(obj.get("kind")), str(obj.get("apiVersion")), minor)
        if validator is None:
            findings.append(failed(check, oid, f"no Kubernetes {minor} schema for {obj.get('apiVersion')} {obj.get('kind')}"))
            continue
        errors = _errors(validator, obj)
        if errors:
            findings.append(failed(check, oid, f"{len(errors)} error(s): " + "; ".join(errors)))
        else:
            findings.append(passed(check, oid, f"valid against the strict Kubernetes {minor} OpenAPI schema"))
    return findings


def unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Paths in ``value`` that a structural schema does not declare (the API server prunes them)."""
    out: list[str] = []
    if not isinstance(schema, dict):
        return out
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        if props is None:
            if isinstance(additional, dict):
                for k, v in value.items():
                    out.extend(unknown_fields(v, additional, f"{path}.{k}"))
            return out
        for k, v in value.items():
            if k not in props:
                out.append(f"{path}.{k}")
            else:
                out.extend(unknown_fields(v, props[k], f"{path}.{k}"))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out.extend(unknown_fields(item, schema["items"], f"{path}[{i}]"))
    return out


# CEL rules of the KubeRay CRDs, evaluated in Python. Rules comparing with oldSelf only apply to
# updates and cannot fail on a create; any other rule not listed here is reported as unchecked.
def _has(d: dict[str, Any], key: str) -> bool:
    return key in d and d[key] is not None


_CEL_RULES = {
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']":
        lambda v: v in ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))":
        lambda v: not ((_has(v, "onSuccess") or _has(v, "onFailure")) and _has(v, "deletionRules")),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))":
        lambda v: (_has(v, "onSuccess") and _has(v, "onFailure")) or _has(v, "deletionRules"),
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))":
        lambda v: not (_has(v, "jobStatus") and _has(v, "jobDeploymentStatus")),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)":
        lambda v: _has(v, "jobStatus") or _has(v, "jobDeploymentStatus"),
}


def cel_violations(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Evaluate the CRD's ``x-kubernetes-validations`` on the fields present in ``value``."""
    out: list[str] = []
    if not isinstance(schema, dict):
        return out
    for rule in schema.get("x-kubernetes-validations") or []:
        expr = rule.get("rule", "")
        if "oldSelf" in expr:
            continue
        fn = _CEL_RULES.get(expr)
        if fn is None:
            out.append(f"{path}: CEL rule {expr!r} is not evaluated offline; add it to cluster/_internal/validate.py")
        elif not fn(value):
            out.append(f"{path}: {rule.get('message', expr)}")
    if isinstance(value, dict):
        for k, v in value.items():
            sub = (schema.get("properties") or {}).get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                out.extend(cel_violations(v, sub, f"{path}.{k}"))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out.extend(cel_violations(item, schema["items"], f"{path}[{i}]"))
    return out


def validate_custom(obj: dict[str, Any], schemas: dict[str, dict[str, Any]], versions: Iterable[str] | None = None) -> list[Finding]:
    """Validate a ``ray.io`` object against its CRD schema, CEL rules and embedded pod templates."""
    import jsonschema

    oid = obj_id(obj)
    kind = str(obj.get("kind"))
    schema = schemas.get(kind)
    if schema is None:
        return [failed("crd-schema", oid, f"no KubeRay {KUBERAY_VERSION} CRD schema for kind {kind}")]
    if obj.get("apiVersion") != "ray.io/v1":
        return [failed("crd-schema", oid, f"apiVersion {obj.get('apiVersion')!r}: must be ray.io/v1 (v1alpha1 is deprecated)")]
    findings = []
    errors = _errors(jsonschema.Draft4Validator(schema), obj)
    findings.append(
        failed("crd-schema", oid, f"{len(errors)} error(s) against the KubeRay {KUBERAY_VERSION} CRD: " + "; ".join(errors))
        if errors else passed("crd-schema", oid, f"valid against the KubeRay {KUBERAY_VERSION} {kind} CRD schema")
    )
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    unknown = unknown_fields(body, {"properties": {k: v for k, v in schema.get("properties", {}).items()}}, kind)
    findings.append(
        failed("crd-unknown-fields", oid, f"fields the CRD does not declare (the API server would drop them): {', '.join(unknown)}")
        if unknown else passed("crd-unknown-fields", oid, "every field is declared by the CRD")
    )
    cel = cel_violations(body, {"properties": schema.get("properties", {})}, kind)
    findings.append(
        failed("crd-cel-rules", oid, "; ".join(cel)) if cel
        else passed("crd-cel-rules", oid, "the CRD's x-kubernetes-validations hold")
    )
    for minor in versions or k8s_versions():
        validator = _core_validator("PodTemplateSpec", "v1", minor)
        errs: list[str] = []
        for tmpl in pod_templates(obj):
            errs.extend(_errors(validator, tmpl.template, tmpl.path))
        check = f"embedded-pod-templates-{minor}"
        findings.append(
            failed(check, oid, f"{len(errs)} error(s) against the strict Kubernetes {minor} PodTemplateSpec: " + "; ".join(errs))
            if errs else passed(check, oid, f"every nested pod template is a valid Kubernetes {minor} PodTemplateSpec (strict)")
        )
    return findings


# ---------------------------------------------------------------------------- webhook rules


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", str(text))
    return tuple(int(p) for p in parts[:3])


def _check_cluster_spec(oid: str, base: str, cspec: dict[str, Any]) -> list[Finding]:
    out = []
    # minReplicas <= maxReplicas, replicas within, unique group names.
    groups = cspec.get("workerGroupSpecs") or []
    problems = []
    names = [g.get("groupName") for g in groups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"worker group names must be unique, repeated: {dupes}")
    for i, g in enumerate(groups):
        lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1)
        if lo > hi:
            problems.append(f"{base}.workerGroupSpecs[{i}] ({g.get('groupName')}): minReplicas {lo} > maxReplicas {hi}")
        rep = g.get("replicas")
        if rep is not None and not lo <= rep <= hi:
            problems.append(f"{base}.workerGroupSpecs[{i}] ({g.get('groupName')}): replicas {rep} outside [{lo}, {hi}]")
    out.append(failed("webhook-replicas", oid, "; ".join(problems)) if problems
               else passed("webhook-replicas", oid, f"{base}: minReplicas <= replicas <= maxReplicas in every worker group"))

    # The Ray container must be containers[0] (KubeRay starts Ray in the first container).
    version = str(cspec.get("rayVersion", ""))
    bad = []
    for label, group in [("headGroupSpec", cspec.get("headGroupSpec") or {})] + [
        (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(groups)
    ]:
        ctrs = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        if not ctrs:
            bad.append(f"{base}.{label}: no containers")
            continue
        image = str(ctrs[0].get("image", ""))
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag.startswith(version + "-") and tag != version:
            bad.append(f"{base}.{label}.template.spec.containers[0] image {image!r} is not the Ray {version} image")
    out.append(failed("webhook-ray-container-first", oid, "; ".join(bad) + " (KubeRay runs Ray in containers[0])") if bad
               else passed("webhook-ray-container-first", oid, f"{base}: containers[0] of every group runs the Ray {version} image"))

    auth = cspec.get("authOptions") or {}
    if auth.get("mode") == "token":
        ok = _version_tuple(version) >= TOKEN_AUTH_MIN_RAY
        msg = f"{base}: authOptions.mode=token with rayVersion {version}"
        out.append(passed("webhook-token-auth-version", oid, msg + " (>= 2.52)") if ok
                   else failed("webhook-token-auth-version", oid, msg + ": token authentication needs Ray >= 2.52"))

    gcs = cspec.get("gcsFaultToleranceOptions")
    if gcs is not None:
        problems = []
        if gcs.get("backend", "redis") == "redis" and not gcs.get("redisAddress"):
            problems.append("gcsFaultToleranceOptions.redisAddress is required for the redis backend")
        pw = gcs.get("redisPassword") or {}
        if "value" in pw and pw["value"]:
            problems.append("redisPassword.value puts the password in the manifest; use valueFrom.secretKeyRef")
        out.append(failed("webhook-gcs-fault-tolerance", oid, f"{base}: " + "; ".join(problems)) if problems
                   else passed("webhook-gcs-fault-tolerance", oid, f"{base}: GCS fault tolerance uses Redis with a Secret password"))
    return out


def _check_cron(value: str) -> str | None:
    fields = value.split()
    if len(fields) != 5:
        return f"schedule {value!r} must have 5 fields (minute hour day-of-month month day-of-week)"
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for text, (lo, hi), name in zip(fields, ranges, ("minute", "hour", "day-of-month", "month", "day-of-week")):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not step.isdigit():
                return f"schedule {value!r}: bad step in {name} field {text!r}"
            if base == "*":
                continue
            for num in base.split("-"):
                if not num.isdigit() or not lo <= int(num) <= hi:
                    return f"schedule {value!r}: {name} field {text!r} must be within {lo}-{hi}"
    return None


def webhook_rules(obj: dict[str, Any]) -> list[Finding]:
    """The checks KubeRay's validating webhook makes that the CRD schema does not."""
    kind = obj.get("kind")
    if kind not in RAY_KINDS:
        return []
    oid = obj_id(obj)
    name = str((obj.get("metadata") or {}).get("name", ""))
    limit = NAME_LIMITS[kind]
    findings = []
    if len(name) > limit or not DNS1035.match(name):
        findings.append(failed("webhook-name", oid, f"name {name!r} must be a DNS-1035 label (lowercase letters, digits, '-', "
                                                    f"starting with a letter) of at most {limit} characters for a {kind}"))
    else:
        findings.append(passed("webhook-name", oid, f"name is a DNS-1035 label of {len(name)} <= {limit} characters"))
    for base, cspec in cluster_specs(obj):
        findings.extend(_check_cluster_spec(oid, base, cspec))
    for base, jspec in job_specs(obj):
        problems = []
        has_spec, has_selector = bool(jspec.get("rayClusterSpec")), bool(jspec.get("clusterSelector"))
        if has_spec == has_selector:
            problems.append("exactly one of rayClusterSpec and clusterSelector must be set")
        ttl = int(jspec.get("ttlSecondsAfterFinished") or 0)
        if ttl > 0 and not jspec.get("shutdownAfterJobFinishes"):
            problems.append(f"ttlSecondsAfterFinished={ttl} needs shutdownAfterJobFinishes: true")
        if jspec.get("shutdownAfterJobFinishes") and has_selector:
            problems.append("shutdownAfterJobFinishes cannot be used with clusterSelector")
        # KubeRay v1.7.0 utils/validation.go (validateRayJobDeletionStrategy): rules exclude shutdown and legacy fields.
        strategy = jspec.get("deletionStrategy") or {}
        if strategy.get("deletionRules") and jspec.get("shutdownAfterJobFinishes"):
            problems.append("shutdownAfterJobFinishes and deletionStrategy.deletionRules are mutually exclusive")
        if strategy.get("deletionRules") and (strategy.get("onSuccess") or strategy.get("onFailure")):
            problems.append("deletionStrategy cannot use deletionRules with onSuccess/onFailure")
        if ttl < 0 or int(jspec.get("activeDeadlineSeconds") or 0) < 0:
            problems.append("ttlSecondsAfterFinished and activeDeadlineSeconds must not be negative")
        mode = jspec.get("submissionMode", "K8sJobMode")
        if mode != "InteractiveMode" and not str(jspec.get("entrypoint") or "").strip():
            problems.append(f"submissionMode {mode} needs an entrypoint")
        if jspec.get("runtimeEnvYAML"):
            try:
                env = yaml.safe_load(jspec["runtimeEnvYAML"])
                if not isinstance(env, dict):
                    problems.append("runtimeEnvYAML must be a YAML mapping")
            except yaml.YAMLError as e:
                problems.append(f"runtimeEnvYAML is not valid YAML: {e}")
        findings.append(failed("webhook-rayjob", oid, f"{base}: " + "; ".join(problems)) if problems
                        else passed("webhook-rayjob", oid, f"{base}: own cluster, shut down after the job, TTL and deadline set consistently"))
    if kind == "RayService":
        raw = (obj.get("spec") or {}).get("serveConfigV2")
        try:
            conf = yaml.safe_load(raw) if isinstance(raw, str) else None
            ok = isinstance(conf, dict) and isinstance(conf.get("applications"), list) and conf["applications"]
            findings.append(passed("webhook-serve-config", oid, "serveConfigV2 is a Serve config with applications") if ok
                            else failed("webhook-serve-config", oid, "serveConfigV2 must be a YAML Serve config with a non-empty applications list"))
        except yaml.YAMLError as e:
            findings.append(failed("webhook-serve-config", oid, f"serveConfigV2 is not valid YAML: {e}"))
    if kind == "RayCronJob":
        spec = obj.get("spec") or {}
        problem = _check_cron(str(spec.get("schedule", "")))
        tz = spec.get("timeZone")
        if tz:
            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                problem = (problem + "; " if problem else "") + f"timeZone {tz!r} is not an IANA time zone"
        findings.append(failed("webhook-cron-schedule", oid, problem) if problem
                        else passed("webhook-cron-schedule", oid, f"schedule {spec.get('schedule')!r} in {tz or 'the controller time zone'}"))
    return findings


# ------------------------------------------------------------------------------- versions


def dockerfile_ray_tag(path: Path | None = None) -> str | None:
    """The tag of the ``rayproject/ray`` base image in ``cluster/image/Dockerfile`` (``None``: not found)."""
    path = path or CLUSTER_DIR / "image" / "Dockerfile"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    match = re.search(r"^FROM\s+(\S+)", text, flags=re.M)
    if not match:
        return None
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
    return image.split("@", 1)[0].rsplit(":", 1)[-1] if image.startswith("rayproject/ray:") else None


def version_agreement(objects: list[dict[str, Any]], installed: str | None = None) -> list[Finding]:
    """``rayVersion``, every Ray image tag, the Dockerfile's base image and the installed Ray agree."""
    if installed is None:
        import ray

        installed = ray.__version__
    problems = []
    seen = 0
    for obj in objects:
        for base, cspec in cluster_specs(obj):
            seen += 1
            where = f"{obj_id(obj)}:{base}"
            if str(cspec.get("rayVersion")) != installed:
                problems.append(f"{where}.rayVersion is {cspec.get('rayVersion')!r}, installed Ray is {installed}")
        for tmpl in pod_templates(obj):
            if tmpl.role not in ("ray-head", "ray-worker", "submitter"):
                continue
            for c in tmpl.spec.get("containers") or []:
                image = str(c.get("image", ""))
                tag = image.split("@", 1)[0].rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
                if not tag.startswith(installed + "-"):
                    problems.append(f"{tmpl.where} container {c.get('name')} image {image!r}: tag must start with {installed}-")
    tag = dockerfile_ray_tag()
    if tag is None or not tag.startswith(installed + "-"):
        problems.append(f"cluster/image/Dockerfile base image tag {tag!r} must be rayproject/ray:{installed}-...")
    if problems:
        return [failed("versions-agree", "(all)", "; ".join(problems))]
    return [passed("versions-agree", "(all)", f"rayVersion of {seen} cluster spec(s), Ray image tags and the Dockerfile base all say Ray {installed}, as installed")]


def dockerfile_findings(path: Path | None = None, torch_version: str | None = None) -> list[Finding]:
    """The workspace image builds reproducibly and runs as its non-root user on any builder.

    * torch is pinned (``torch==${TORCH_VERSION}``) to the version installed here, the one the tests ran;
    * every ``WORKDIR`` is created by ``RUN mkdir`` under the non-root ``USER`` first: the classic builder
      creates a missing WORKDIR owned by root (BuildKit uses USER), leaving it unwritable for Ray.
    """
    path = path or CLUSTER_DIR / "image" / "Dockerfile"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return [failed("image-dockerfile", str(path), f"cannot read it ({e.strerror})")]
    if torch_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch").split("+", 1)[0]
        except PackageNotFoundError:
            torch_version = None
    problems = []
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    pins = re.findall(r"torch==\$\{?(\w+)\}?|torch==([0-9][\w.]*)", text)
    pinned = [args.get(a) if a else v for a, v in pins]
    if not pinned or None in pinned:
        problems.append("pip installs torch without a pin (torch==<version>): the image would get whatever is newest")
    elif torch_version and any(p != torch_version for p in pinned):
        problems.append(f"torch pinned to {pinned} but the tested (installed) torch is {torch_version}")
    user, made = "root", []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "USER":
            user = words[1].split(":", 1)[0]
        elif words[0] == "RUN" and "mkdir" in words and user not in ("root", "0"):
            made += [w for w in words if w.startswith("/")]
        elif words[0] == "WORKDIR" and not any(words[1] == m or words[1].startswith(m.rstrip("/") + "/") for m in made):
            problems.append(f"WORKDIR {words[1]} is not created by `RUN mkdir -p {words[1]}` as the non-root USER first "
                            "(a classic builder would create it owned by root)")
    copied = {w.rstrip("/") for line in text.splitlines() if line.split()[:1] == ["COPY"]
              for w in line.split()[1:-1] if not w.startswith("--")}
    missing = [p for p in IMAGE_RUNTIME_FILES if p not in copied]
    if missing:
        problems.append(f"the image does not COPY {', '.join(missing)}: the entrypoints read them from the working "
                        "directory at run time (--config jobs/kuberay.yaml, runtime_env.yaml, the notebooks)")
    ignore = path.with_name(path.name + ".dockerignore")
    if ignore.is_file():
        allowed = {ln.strip().lstrip("!").rstrip("/") for ln in ignore.read_text().splitlines() if ln.startswith("!")}
        if "*" in ignore.read_text().split() and (lost := [p for p in IMAGE_RUNTIME_FILES if p not in allowed]):
            problems.append(f"{ignore.name} leaves {', '.join(lost)} out of the build context")
    return [failed("image-dockerfile", "cluster/image/Dockerfile", "; ".join(problems))] if problems else [
        passed("image-dockerfile", "cluster/image/Dockerfile",
               f"torch pinned to {pinned[0]}; WORKDIR owned by the non-root user; {', '.join(IMAGE_RUNTIME_FILES)} copied")]


#: What the image must carry besides the installed packages: read from the working directory at run time.
IMAGE_RUNTIME_FILES = ("workloads", "tune", "serve", "cluster", "jobs", "runtime_env.yaml", "notebooks")


def validate_objects(objects: list[dict[str, Any]], *, crds: Path | None = None,
                     versions: Iterable[str] | None = None) -> list[Finding]:
    """Every schema, webhook and version check on a rendered overlay.

    Raises:
        ManifestError: The KubeRay CRDs are missing (the message says how to get them).
    """
    schemas = crd_schemas(str(crds or crd_dir()))
    versions = tuple(versions or k8s_versions())
    findings: list[Finding] = []
    for obj in objects:
        if str(obj.get("apiVersion", "")).startswith("ray.io/"):
            findings.extend(validate_custom(obj, schemas, versions))
            findings.extend(webhook_rules(obj))
        elif str(obj.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            continue  # prometheus-operator kinds: checked by cluster._internal.monitoring
        else:
            findings.extend(validate_core(obj, versions))
    findings.extend(version_agreement(objects))
    findings.extend(dockerfile_findings())
    return findings
