"""`spec.modelCache` (issue 14): the builders mount the claim read-only, with the cache's env and
path, in every stage Job and TrainJob that loads a model and in every vLLM pod of a hub model;
the server reads the model in place (no fetch); without the field nothing changes."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest

from selfmoa.api import parse_run, stage_container
from selfmoa.api.crd import build_crd
from selfmoa.api.loader import SpecError
from selfmoa.api.spec import TINY_MODEL, AlignmentRunSpec
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig
from selfmoa.run import stage_table
from selfmoa.store.model_cache import MODELS, hub_key

POLICY = "Org/Policy-1B"
JUDGE = "Org/Judge-1B"


def _spec(model_cache: dict[str, Any] | None = None, **over: Any) -> AlignmentRunSpec:
    spec: dict[str, Any] = {
        "policy": {"model": POLICY, "revision": "v2"},
        "judges": [
            {"name": "refusal", "objective": "safety"},
            {"name": "helper", "objective": "helpfulness", "kind": "llm", "model": JUDGE},
        ],
        "serving": {"engine": "vllm", "hfTokenSecretRef": "hf"},
        "storage": {"uri": "s3://bucket/runs", "secretRef": "s3"},
        "trainer": {"gpus": 2},
        **over,
    }
    if model_cache is not None:
        spec["modelCache"] = model_cache
    return parse_run({"metadata": {"name": "r"}, "spec": spec}).spec


def _job(spec: AlignmentRunSpec, stage: str) -> dict[str, Any]:
    return builders.stage_job(
        run="r", namespace="ml", spec=spec, iteration=1, stage=stage, parent=0,
        config=OperatorConfig(),
    )  # fmt: skip


def _deployment(spec: AlignmentRunSpec, model: str) -> dict[str, Any]:
    dep, _ = builders.serving_objects(
        run="r", namespace="ml", spec=spec, model=model, replicas=1, config=OperatorConfig()
    )
    return dep


def _cache_volumes(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in pod.get("volumes", []) if v["name"] == stage_container.MODEL_CACHE_VOLUME]


def _cache_mounts(container: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = container.get("volumeMounts") or []
    return [m for m in mounts if m["name"] == stage_container.MODEL_CACHE_VOLUME]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


@pytest.mark.parametrize("sub_path", [None, "selfmoa/cache"])
@pytest.mark.parametrize("stage", stage_table.NAMES)
def test_every_stage_job_that_loads_a_model_mounts_the_claim_read_only(
    stage: str, sub_path: str | None
) -> None:
    cache = {"pvc": "models", **({"subPath": sub_path} if sub_path else {})}
    job = _job(_spec(cache), stage)
    kubernetes_validate.validate(job, "1.30.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    if not stage_table.get(stage).loads_models:
        assert _cache_volumes(pod) == [] and _cache_mounts(container) == []
        assert stage_container.MODEL_CACHE_ENV not in _env(container)
        return
    assert _cache_volumes(pod) == [
        {
            "name": stage_container.MODEL_CACHE_VOLUME,
            "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
        }
    ]
    (mount,) = _cache_mounts(container)
    assert mount["readOnly"] is True and mount["mountPath"] == stage_container.MODEL_CACHE_DIR
    assert mount.get("subPath") == sub_path
    env = _env(container)
    assert env[stage_container.MODEL_CACHE_ENV] == stage_container.MODEL_CACHE_DIR
    # The writable cache (tiny builds, s3 models, lock files) stays in the pod's scratch space.
    assert env[stage_container.CACHE_ENV] == stage_container.CACHE_DIR


def test_a_multi_node_train_job_mounts_the_claim_on_every_node() -> None:
    spec = _spec({"pvc": "models"}, trainer={"gpus": 2, "nodes": 2})
    job = builders.train_job(
        run="r", namespace="ml", spec=spec, iteration=1, stage="train", parent=0,
        config=OperatorConfig(),
    )  # fmt: skip
    (node,) = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ]
    pod = node["template"]["spec"]["template"]["spec"]
    assert _cache_volumes(pod)[0]["persistentVolumeClaim"] == {
        "claimName": "models",
        "readOnly": True,
    }
    (mount,) = _cache_mounts(pod["containers"][0])
    assert mount == {
        "name": stage_container.MODEL_CACHE_VOLUME,
        "mountPath": stage_container.MODEL_CACHE_DIR,
        "readOnly": True,
    }
    assert (
        _env(job["spec"]["trainer"])[stage_container.MODEL_CACHE_ENV]
        == stage_container.MODEL_CACHE_DIR
    )


@pytest.mark.parametrize("storage", ["s3://bucket/runs", "file:///shared/runs"])
@pytest.mark.parametrize(("model", "revision"), [(POLICY, "v2"), (JUDGE, "main")])
def test_a_hub_models_server_reads_it_from_the_claim_in_place(
    model: str, revision: str, storage: str
) -> None:
    spec = _spec({"pvc": "models", "subPath": "hub"}, storage={"uri": storage})
    dep = _deployment(spec, model)
    kubernetes_validate.validate(dep, "1.30.0", strict=True)
    pod = dep["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    args = vllm["args"]
    served = args[args.index("--model") + 1]
    # policy.revision pins the policy only, and the path names that revision's copy.
    assert served == f"{stage_container.MODEL_CACHE_DIR}/{MODELS}/{hub_key(model, revision)}"
    assert "--revision" not in args
    assert _cache_volumes(pod)[0]["persistentVolumeClaim"] == {
        "claimName": "models",
        "readOnly": True,
    }
    assert all(v["name"] != "model" for v in pod["volumes"])  # no emptyDir to fetch into
    # No fetch: the init container only checks the model is there, reading the same mount.
    (init,) = pod["initContainers"]
    assert init["name"] == "check-model"
    assert init["command"] == [
        *stage_container.FETCH_COMMAND,
        "--hub",
        model,
        "--revision",
        revision,
        "--check",
        stage_container.MODEL_CACHE_DIR,
    ]
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for container in (vllm, init):
        (mount,) = _cache_mounts(container)
        assert mount["readOnly"] is True and mount["subPath"] == "hub"
        assert mount["mountPath"] == stage_container.MODEL_CACHE_DIR
    # A local check needs no credentials; its spec env names the claim for its message.
    env = {e["name"]: e for e in init["env"]}
    assert set(env) == {stage_container.SPEC_ENV}
    assert json.loads(env[stage_container.SPEC_ENV]["value"]) == {
        "modelCache": {"pvc": "models", "subPath": "hub"}
    }


@pytest.mark.parametrize("model", ["s3://bucket/models/m", "pvc://weights/m", TINY_MODEL])
def test_servers_of_models_that_are_not_on_the_hub_are_unchanged(model: str) -> None:
    with_cache = _deployment(_spec({"pvc": "models"}), model)
    without = _deployment(_spec(), model)
    assert with_cache == without


def test_without_a_model_cache_nothing_mentions_it() -> None:
    spec = _spec()
    objects = [_job(spec, s) for s in stage_table.NAMES]
    objects += [_deployment(spec, m) for m in spec.models()]
    text = json.dumps(objects)
    assert stage_container.MODEL_CACHE_VOLUME not in text
    assert (
        stage_container.MODEL_CACHE_ENV not in text and stage_container.MODEL_CACHE_DIR not in text
    )
    # ... and the hub models' servers still fetch from the run's store.
    pod = _deployment(spec, POLICY)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]


def test_the_pod_templates_roll_when_the_cache_is_added() -> None:
    # A server that read from the run's store restarts onto the claim (a new spec-hash).
    before = builders.spec_hash_of(_deployment(_spec(), POLICY))
    after = builders.spec_hash_of(_deployment(_spec({"pvc": "models"}), POLICY))
    assert before != after


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"pvc": "Models_1"}, "spec.modelCache.pvc: 'Models_1' must be a Kubernetes object name"),
        ({"pvc": "m", "subPath": "../up"}, "spec.modelCache.subPath: '../up' must be a relative"),
        ({"pvc": "m", "subPath": "/abs"}, "spec.modelCache.subPath: '/abs' must be a relative"),
        ({"pvc": "m", "subPath": "a//b"}, "spec.modelCache.subPath: 'a//b' must be a relative"),
        ({"pvc": "m", "readOnly": False}, "spec.modelCache.readOnly: unknown field"),
        ({}, "spec.modelCache.pvc: Field required"),
    ],
)
def test_a_bad_model_cache_is_one_line_naming_the_field(
    cache: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as e:
        _spec(cache)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "sub_path", ["a", "a/b", ".hidden", "..x", "a/.b/c", "..", "a/../b", "/a", "a/", ".", "./a"]
)
def test_the_crd_and_the_model_agree_on_sub_paths(sub_path: str) -> None:
    crd = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node = crd["properties"]["spec"]["properties"]["modelCache"]["properties"]["subPath"]
    crd_accepts = re.search(node["pattern"], sub_path) is not None
    try:
        _spec({"pvc": "m", "subPath": sub_path})
    except SpecError:
        model_accepts = False
    else:
        model_accepts = True
    assert crd_accepts == model_accepts
    # Kubernetes refuses an absolute subPath or one with a '..' element: so do both.
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        assert not model_accepts
