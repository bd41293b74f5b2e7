"""customize() on the real rendered ``dev`` overlay."""

from __future__ import annotations

import copy

import pytest

from cluster.client import WorkerGroupSize, customize
from cluster.client.manifests import RAY_KINDS, ray_image
from cluster.manifests import find
from workloads.exceptions import ConfigError


def _images(obj: dict) -> list[str]:
    out: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and "name" in node:
                out.append(node["image"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(obj)
    return out


def test_input_is_never_mutated(rendered_dev: list[dict]) -> None:
    before = copy.deepcopy(rendered_dev)
    customize(rendered_dev, name="team-a", namespace="ml", image="example.com/ray:1",
              worker_groups={"cpu": WorkerGroupSize(1, 0, 4)})
    assert rendered_dev == before


def test_no_options_is_an_equal_copy(rendered_dev: list[dict]) -> None:
    out = customize(rendered_dev)
    assert out == rendered_dev and out is not rendered_dev
    assert all(a is not b for a, b in zip(out, rendered_dev))


def test_name_renames_the_kuberay_objects_only(rendered_dev: list[dict]) -> None:
    out = customize(rendered_dev, name="team-a")
    ray = sorted((o["kind"], o["metadata"]["name"]) for o in out if o["kind"] in RAY_KINDS)
    assert ray == [("RayCluster", "team-a"), ("RayCronJob", "team-a-retrain"), ("RayJob", "team-a-pipeline"),
                   ("RayService", "team-a-serve")]
    others_before = sorted((o["kind"], o["metadata"]["name"]) for o in rendered_dev if o["kind"] not in RAY_KINDS)
    others_after = sorted((o["kind"], o["metadata"]["name"]) for o in out if o["kind"] not in RAY_KINDS)
    assert others_after == others_before


def test_namespace_moves_everything_including_binding_subjects(rendered_dev: list[dict]) -> None:
    out = customize(rendered_dev, namespace="ml-team")
    assert find(out, "Namespace")["metadata"]["name"] == "ml-team"
    namespaced = [o for o in out if o["kind"] != "Namespace"]
    assert namespaced and all(o["metadata"]["namespace"] == "ml-team" for o in namespaced)
    for binding in (o for o in out if o["kind"] == "RoleBinding"):
        sa_subjects = [s for s in binding["subjects"] if s["kind"] == "ServiceAccount"]
        assert sa_subjects and all(s["namespace"] == "ml-team" for s in sa_subjects)


def test_image_replaces_the_ray_image_everywhere(rendered_dev: list[dict]) -> None:
    old = ray_image(rendered_dev)
    out = customize(rendered_dev, image="registry.example.com/rayspace:2.60.0-custom")
    for kind in RAY_KINDS:
        images = _images(find(out, kind))
        assert images, kind
        assert old not in images, f"{kind} still runs {old}"
        assert "registry.example.com/rayspace:2.60.0-custom" in images
    assert ray_image(out) == "registry.example.com/rayspace:2.60.0-custom"


def test_worker_group_sizes_apply_to_every_cluster_spec(rendered_dev: list[dict]) -> None:
    out = customize(rendered_dev, worker_groups={"cpu": WorkerGroupSize(2, 1, 6)})
    rc = find(out, "RayCluster")["spec"]["workerGroupSpecs"][0]
    assert (rc["replicas"], rc["minReplicas"], rc["maxReplicas"]) == (2, 1, 6)
    job = find(out, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["replicas"] for g in job if g["groupName"] == "cpu"] == [2]


def test_worker_group_errors(rendered_dev: list[dict]) -> None:
    hi = find(rendered_dev, "RayCluster")["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(ConfigError, match=rf"Got {hi + 1} for replicas of worker group \"cpu\".*maxReplicas \({hi}\)"):
        customize(rendered_dev, worker_groups={"cpu": hi + 1})
    with pytest.raises(ConfigError, match=r"Got \['gpu'\] for worker groups: must be among \['cpu', 'serve'\]"):
        customize(rendered_dev, worker_groups={"gpu": 1})
    with pytest.raises(ConfigError, match="minReplicas"):
        customize(rendered_dev, worker_groups={"cpu": WorkerGroupSize(1, 3, 2)})


@pytest.mark.parametrize("kwargs, field", [({"name": "Team_A"}, "cluster.name"),
                                           ({"namespace": "-bad"}, "cluster.namespace"),
                                           ({"image": "has space"}, "cluster.image")])
def test_invalid_customisations_name_the_field(rendered_dev: list[dict], kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        customize(rendered_dev, **kwargs)
    assert info.value.problems[0][0] == field


def test_worker_group_size_parse() -> None:
    assert WorkerGroupSize.parse("cpu=2") == ("cpu", WorkerGroupSize(2))
    assert WorkerGroupSize.parse("cpu=2:1:5") == ("cpu", WorkerGroupSize(2, 1, 5))
    for bad in ("cpu", "cpu=", "=2", "cpu=a", "cpu=1:2"):
        with pytest.raises(ConfigError, match="--workers"):
            WorkerGroupSize.parse(bad)


def test_cluster_name_is_limited_by_the_names_kuberay_derives(rendered_dev):
    # `<name>-retrain` runs as `<name>-retrain-<minutes>` whose cluster is `<...>-<5 random>`: KubeRay's RayJob
    # limit (47) leaves 30 characters for cluster.name, not the 47 the old check allowed.
    from cluster.client.manifests import customize, derived_names, name_budget

    assert name_budget(rendered_dev, "rayspace") == (30, "RayJob <name>-retrain-29000000")
    ok = customize(rendered_dev, name="a" * 30)
    assert all(len(n) <= {"RayCluster": 53, "RayJob": 47, "RayService": 47, "RayCronJob": 47, "Service": 63}[k]
               for k, n in derived_names(ok))
    with pytest.raises(ConfigError, match=r"\(31 characters\) for cluster.name: must be at most 30 characters: the "
                                          r"longest name derived from it, RayJob <name>-retrain-29000000"):
        customize(rendered_dev, name="a" * 31)
