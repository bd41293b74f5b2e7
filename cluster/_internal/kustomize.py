"""A pure-Python build of the small kustomize subset ``cluster/`` uses.

``kubectl kustomize`` is the reference renderer. Machines without ``kubectl``
(a CI image, a laptop with only Python) still need the rendered objects, so this
module implements exactly the features the workspace's kustomizations use and
refuses anything else with a clear error rather than rendering it wrongly:

* ``resources``: YAML files (multi-document) and directories holding a kustomization;
* ``namespace``: sets ``metadata.namespace`` of namespaced objects (and renames a
  ``Namespace`` object, as kustomize does);
* ``labels``: ``pairs`` added to ``metadata.labels`` only (``includeSelectors`` and
  ``includeTemplates`` must be false, their default);
* ``patches``: JSON 6902 patches (a YAML list of ``add``/``replace``/``remove``/``test``
  operations, from ``path`` or inline ``patch``) with a ``target`` of kind/name;
* ``images``: ``name`` -> ``newName``/``newTag``/``digest`` on every ``containers`` and
  ``initContainers`` entry anywhere in an object (so custom resources are covered too);
* ``configMapGenerator`` with ``files``/``literals``, only when
  ``generatorOptions.disableNameSuffixHash`` is true (the hash is kustomize's own).

A unit test renders every overlay both ways and asserts the results are equal.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from workloads.exceptions import ManifestError

logger = logging.getLogger(__name__)

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

_SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "patches", "images",
     "configMapGenerator", "generatorOptions"}
)

#: Kinds without a namespace (the ones this workspace could plausibly contain).
CLUSTER_SCOPED_KINDS = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass",
     "CustomResourceDefinition", "PersistentVolume", "ValidatingWebhookConfiguration",
     "MutatingWebhookConfiguration", "RuntimeClass"}
)


def find_kustomization(directory: Path) -> Path:
    """Return the kustomization file of ``directory``.

    Raises:
        ManifestError: The directory holds none.
    """
    for name in KUSTOMIZATION_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise ManifestError(f"{directory}: no kustomization.yaml (one of {', '.join(KUSTOMIZATION_NAMES)})")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Load every non-empty YAML document of ``path`` as a mapping.

    Raises:
        ManifestError: The file is unreadable, not YAML, or holds a non-mapping document.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ManifestError(f"{path}: cannot read it ({e.strerror})") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML ({e})") from e
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ManifestError(f"{path}: document {i} is a {type(doc).__name__}, must be a mapping (a Kubernetes object)")
    return docs


def build(directory: str | Path) -> list[dict[str, Any]]:
    """Build the kustomization in ``directory`` the way ``kubectl kustomize`` would.

    Args:
        directory: A directory holding a ``kustomization.yaml``.

    Returns:
        The rendered objects, in resource order (callers sort them).

    Raises:
        ManifestError: A file is missing or invalid, a patch does not apply, or the
            kustomization uses a feature this fallback does not implement.
    """
    return _build(Path(directory).resolve(), stack=())


def _build(directory: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    if directory in stack:
        chain = " -> ".join(str(p) for p in (*stack, directory))
        raise ManifestError(f"kustomization cycle: {chain}")
    kfile = find_kustomization(directory)
    docs = load_yaml_documents(kfile)
    if len(docs) != 1:
        raise ManifestError(f"{kfile}: must hold exactly one YAML document, found {len(docs)}")
    kust = docs[0]
    unsupported = sorted(set(kust) - _SUPPORTED_FIELDS)
    if unsupported:
        raise ManifestError(
            f"{kfile}: field(s) {unsupported} are not implemented by the pure-Python kustomize fallback; "
            "install kubectl (https://kubernetes.io/docs/tasks/tools/) or use only: " + ", ".join(sorted(_SUPPORTED_FIELDS))
        )

    objects: list[dict[str, Any]] = []
    for entry in kust.get("resources") or []:
        if not isinstance(entry, str):
            raise ManifestError(f"{kfile}: resources entry {entry!r} must be a path string")
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(_build(target, (*stack, directory)))
        elif target.is_file():
            objects.extend(load_yaml_documents(target))
        else:
            raise ManifestError(f"{kfile}: resource {entry!r} does not exist ({target})")

    objects.extend(_generate_configmaps(kust, kfile, directory))

    for i, spec in enumerate(kust.get("patches") or []):
        _apply_patch_entry(objects, spec, kfile, directory, i)

    namespace = kust.get("namespace")
    if namespace:
        for obj in objects:
            if obj.get("kind") == "Namespace":
                obj.setdefault("metadata", {})["name"] = namespace
            elif obj.get("kind") not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = namespace

    for i, spec in enumerate(kust.get("labels") or []):
        if spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise ManifestError(
                f"{kfile}: labels[{i}] sets includeSelectors/includeTemplates, which the fallback does not implement"
            )
        for obj in objects:
            labels = obj.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({str(k): str(v) for k, v in (spec.get("pairs") or {}).items()})

    for spec in kust.get("images") or []:
        for obj in objects:
            _set_images(obj, spec)
    return objects


def _generate_configmaps(kust: dict[str, Any], kfile: Path, directory: Path) -> list[dict[str, Any]]:
    generators = kust.get("configMapGenerator") or []
    if not generators:
        return []
    if not (kust.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise ManifestError(
            f"{kfile}: configMapGenerator without generatorOptions.disableNameSuffixHash: true is not implemented "
            "by the fallback (the name hash is kustomize's own)"
        )
    common_labels = (kust.get("generatorOptions") or {}).get("labels") or {}
    out = []
    for gen in generators:
        unknown = sorted(set(gen) - {"name", "namespace", "files", "literals", "options"})
        if unknown:
            raise ManifestError(f"{kfile}: configMapGenerator {gen.get('name')!r}: fields {unknown} not implemented by the fallback")
        data: dict[str, str] = {}
        for item in gen.get("files") or []:
            key, _, rel = item.partition("=") if "=" in item else (Path(item).name, "", item)
            try:
                data[key] = (directory / rel).read_text(encoding="utf-8")
            except OSError as e:
                raise ManifestError(f"{kfile}: configMapGenerator file {rel!r}: {e.strerror}") from e
        for item in gen.get("literals") or []:
            key, _, value = item.partition("=")
            data[key] = value
        meta: dict[str, Any] = {"name": gen["name"]}
        if gen.get("namespace"):
            meta["namespace"] = gen["namespace"]
        labels = {**common_labels, **((gen.get("options") or {}).get("labels") or {})}
        if labels:
            meta["labels"] = dict(labels)
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    return out


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    api = str(obj.get("apiVersion", ""))
    group, _, version = api.rpartition("/")
    checks = {
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "group": group,
        "version": version,
    }
    for key, value in target.items():
        if key not in checks:
            raise ManifestError(f"patch target selector {key!r} is not implemented by the fallback (use kind/name/group/version)")
        if checks[key] != value:
            return False
    return True


def _apply_patch_entry(objects: list[dict[str, Any]], spec: dict[str, Any], kfile: Path, directory: Path, index: int) -> None:
    where = f"{kfile}: patches[{index}]"
    if "path" in spec:
        path = directory / spec["path"]
        try:
            ops = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ManifestError(f"{where}: cannot load {path}: {e}") from e
        where += f" ({spec['path']})"
    elif "patch" in spec:
        try:
            ops = yaml.safe_load(spec["patch"])
        except yaml.YAMLError as e:
            raise ManifestError(f"{where}: inline patch is not YAML: {e}") from e
    else:
        raise ManifestError(f"{where}: needs 'path' or 'patch'")
    if not isinstance(ops, list):
        raise ManifestError(
            f"{where}: only JSON 6902 patches (a list of operations) are implemented by the fallback; "
            "strategic-merge patches need kubectl"
        )
    target = spec.get("target")
    if not isinstance(target, dict) or not target:
        raise ManifestError(f"{where}: a JSON 6902 patch needs a target (kind and name)")
    hits = [o for o in objects if _matches(o, target)]
    if not hits:
        raise ManifestError(f"{where}: target {target} matches no object")
    for obj in hits:
        for op in ops:
            apply_json_patch_op(obj, op, where)


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_json_patch_op(doc: dict[str, Any], op: dict[str, Any], where: str = "patch") -> None:
    """Apply one RFC 6902 operation (add, replace, remove, test) to ``doc`` in place.

    Raises:
        ManifestError: The operation is unknown or its path does not resolve.
    """
    kind = op.get("op")
    path = op.get("path")
    if kind not in ("add", "replace", "remove", "test") or not isinstance(path, str) or not path.startswith("/"):
        raise ManifestError(f"{where}: unsupported or malformed operation {op!r} (op must be add/replace/remove/test, path must start with /)")
    tokens = [_unescape(t) for t in path[1:].split("/")]
    parent: Any = doc
    for tok in tokens[:-1]:
        try:
            parent = parent[int(tok)] if isinstance(parent, list) else parent[tok]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ManifestError(f"{where}: path {path} does not exist (at {tok!r})") from e
    last = tokens[-1]
    value = copy.deepcopy(op.get("value"))
    try:
        if isinstance(parent, list):
            if kind == "add":
                if last == "-":
                    parent.append(value)
                else:
                    idx = int(last)
                    if not 0 <= idx <= len(parent):
                        raise IndexError(idx)
                    parent.insert(idx, value)
            elif kind == "replace":
                parent[int(last)] = value
            elif kind == "remove":
                del parent[int(last)]
            elif parent[int(last)] != value:
                raise ManifestError(f"{where}: test failed at {path}")
        elif isinstance(parent, dict):
            if kind == "add":
                parent[last] = value
            elif kind == "replace":
                if last not in parent:
                    raise KeyError(last)
                parent[last] = value
            elif kind == "remove":
                del parent[last]
            elif parent[last] != value:
                raise ManifestError(f"{where}: test failed at {path}")
        else:
            raise TypeError(type(parent).__name__)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ManifestError(f"{where}: cannot {kind} {path}: the path does not exist ({e})") from e


def _split_image(image: str) -> tuple[str, str]:
    """Split ``repo[:tag][@digest]`` into the name and the rest (``:tag``/``@digest``)."""
    at = image.find("@")
    head, digest = (image[:at], image[at:]) if at >= 0 else (image, "")
    colon = head.rfind(":")
    if colon > head.rfind("/"):
        return head[:colon], head[colon:] + digest
    return head, digest


def _set_images(node: Any, spec: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _retag(container["image"], spec)
            _set_images(value, spec)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, spec)


def _retag(image: str, spec: dict[str, Any]) -> str:
    name, rest = _split_image(image)
    if name != spec.get("name"):
        return image
    new_name = spec.get("newName") or name
    if spec.get("digest"):
        return f"{new_name}@{spec['digest']}"
    if spec.get("newTag"):
        return f"{new_name}:{spec['newTag']}"
    return new_name + rest
