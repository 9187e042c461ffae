"""Pure child builders, config and the operator entry point (no cluster)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from selfmoa.api import parse_run
from selfmoa.api.spec import AlignmentRunSpec
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig, load_config

OWNER = {
    "apiVersion": "selfmoa.dev/v1alpha1",
    "kind": "AlignmentRun",
    "metadata": {"name": "r", "namespace": "ml", "uid": "u-1"},
}


def _spec(**over: object) -> AlignmentRunSpec:
    spec = {"policy": {"model": "org/p"}, "trainer": {"gpus": 2}, **over}
    return parse_run({"metadata": {"name": "r"}, "spec": spec}).spec


def test_names_are_deterministic_and_fit() -> None:
    long = "a" * 80
    name = builders.job_name(long, 12, "evaluate")
    assert len(name) <= 63 and name == builders.job_name(long, 12, "evaluate")
    assert name != builders.job_name(long, 12, "train")
    assert builders.job_name("r", 1, "judge") == "r-i1-judge"
    assert builders.serving_name("r", "a/b") != builders.serving_name("r", "a-b")
    assert builders.serving_name("9run", "m")[0].isalpha()


def test_train_job_requests_gpus_and_runs_non_root() -> None:
    job = builders.stage_job(
        run="r",
        namespace="ml",
        spec=_spec(),
        iteration=1,
        stage="train",
        parent=0,
        config=OperatorConfig(),
        owner=OWNER,
    )
    kubernetes_validate.validate(job, "1.30.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["args"][:2] == ["stage", "train"] and "--parent" in c["args"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    # Sampling through vLLM, the respond stage loads nothing itself: no GPU.
    respond = builders.stage_job(
        run="r",
        namespace="ml",
        spec=_spec(serving={"engine": "vllm"}),
        iteration=1,
        stage="respond",
        parent=0,
        config=OperatorConfig(),
    )
    assert "nvidia.com/gpu" not in respond["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ].get("limits", {})


def _gpus_and_memory(spec: AlignmentRunSpec, stage: str) -> tuple[str | None, str | None]:
    config = OperatorConfig()
    job = builders.stage_job(
        run="r", namespace="ml", spec=spec, iteration=1, stage=stage, parent=0, config=config
    )
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    return res.get("limits", {}).get("nvidia.com/gpu"), res.get("limits", {}).get("memory")


def test_the_runs_resources_size_only_the_stages_that_load_a_model() -> None:
    # qwen-0.5b.yaml's shape: vLLM serves every model, trainer.resources 8 CPUs / 32Gi. Pairs
    # and the stages that only talk to the servers must not hold 8 CPUs and 32Gi each.
    config = OperatorConfig()
    spec = _spec(
        judges=_LLM_JUDGES,
        serving={"engine": "vllm"},
        trainer={"gpus": 1, "resources": {"cpu": "8", "memory": "32Gi"}},
    )

    def res(stage: str) -> dict[str, Any]:
        job = builders.stage_job(
            run="r", namespace="ml", spec=spec, iteration=1, stage=stage, parent=0, config=config
        )
        return dict(job["spec"]["template"]["spec"]["containers"][0]["resources"])

    for stage in ("redteam", "respond", "judge", "pairs"):
        assert res(stage) == config.stage_resources, stage
    for stage in ("train", "evaluate"):  # evaluate loads the policy for perplexity
        assert res(stage)["requests"]["cpu"] == "8", stage
        assert res(stage)["limits"]["memory"] == "32Gi", stage
    # In-process serving: respond loads the policy, so it is sized by the run.
    local = _spec(trainer={"gpus": 0, "resources": {"cpu": "3", "memory": "12Gi"}})
    job = builders.stage_job(
        run="r", namespace="ml", spec=local, iteration=1, stage="respond", parent=0, config=config
    )
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "3"


def test_every_stage_that_loads_a_model_in_process_gets_a_gpu_and_the_train_memory() -> None:
    # A 7B policy with the default in-process engine: respond, judge and evaluate load it, so
    # they run where training runs (one GPU, the train resource class), never on a small CPU.
    config = OperatorConfig()
    train_memory = config.train_resources.get("limits", {}).get("memory")
    stage_memory = config.stage_resources.get("limits", {}).get("memory")
    assert train_memory != stage_memory
    local = _spec(
        judges=_LLM_JUDGES,
        redTeam={"model": "org/red"},
        output={"uri": "s3://bkt/out", "merge": True},
    )
    want = {
        "redteam": ("1", train_memory),  # the red-team model writes attacks in-process
        "respond": ("1", train_memory),
        "judge": ("1", train_memory),
        "pairs": (None, stage_memory),
        "train": ("2", train_memory),
        "evaluate": ("1", train_memory),
        # Merging loads the policy, on the CPU whatever the GPUs: its memory, no GPU.
        "export": (None, train_memory),
    }
    assert {s: _gpus_and_memory(local, s) for s in want} == want
    # Served by vLLM: only what no server holds (the capability measure, the merge).
    served = _spec(judges=_LLM_JUDGES, serving={"engine": "vllm"}, output={"uri": "s3://bkt/out"})
    got = {s: _gpus_and_memory(served, s)[0] for s in want}
    assert got == {
        "redteam": None,
        "respond": None,
        "judge": None,
        "pairs": None,
        "train": "2",
        "evaluate": "1",
        "export": None,
    }
    # A classifier judge is never served: the judge stage loads it.
    classifier = [
        *_LLM_JUDGES,
        {"name": "clf", "objective": "safety", "kind": "classifier", "model": "org/clf"},
    ]
    assert _gpus_and_memory(_spec(judges=classifier, serving={"engine": "vllm"}), "judge")[0] == "1"
    # Attacks from seeds and templates only: the red team loads nothing.
    assert _gpus_and_memory(_spec(), "redteam") == (None, stage_memory)
    # No GPUs in the run, or serving.device cpu: none anywhere but where training asks.
    assert _gpus_and_memory(_spec(trainer={"gpus": 0}), "respond")[0] is None
    assert _gpus_and_memory(_spec(serving={"device": "cpu"}), "respond")[0] is None


def test_a_merging_export_gets_memory_for_the_policy_and_no_gpu() -> None:
    # export.write merges on the CPU whatever the run's GPUs: a GPU would sit idle (and a Pod
    # asking for one waits for it, or for its queue's GPU quota) for the merge's minutes.
    config = OperatorConfig()
    train_memory = config.train_resources.get("limits", {}).get("memory")
    stage_memory = config.stage_resources.get("limits", {}).get("memory")
    merge = {"uri": "s3://bkt/out", "merge": True}
    for serving in ({"engine": "vllm"}, {"engine": "transformers"}):
        spec = _spec(serving=serving, output=merge)
        assert _gpus_and_memory(spec, "export") == (None, train_memory), serving
    # The run's own size still applies to it.
    sized = _spec(output=merge, trainer={"gpus": 1, "resources": {"cpu": "4", "memory": "40Gi"}})
    assert _gpus_and_memory(sized, "export") == (None, "40Gi")
    # An adapter export loads nothing; a run without GPUs keeps the small class.
    assert _gpus_and_memory(_spec(output={"uri": "s3://bkt/out"}), "export") == (None, stage_memory)
    cpu_run = _spec(output=merge, trainer={"gpus": 0})
    assert _gpus_and_memory(cpu_run, "export") == (None, stage_memory)


_LLM_JUDGES = [
    {"name": "guard", "objective": "safety", "kind": "llm", "model": "org/judge"},
    {"name": "helper", "objective": "helpfulness", "kind": "llm", "model": "org/judge"},
]


def _serving(spec: AlignmentRunSpec, model: str = "org/p") -> tuple[dict[str, Any], ...]:
    return builders.serving_objects(
        run="r", namespace="ml", spec=spec, model=model, replicas=1, config=OperatorConfig(),
        owner=OWNER,
    )  # fmt: skip


def _vllm(dep: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def test_serving_objects_validate_for_hub_s3_and_pvc_models() -> None:
    spec = _spec(serving={"engine": "vllm", "hfTokenSecretRef": "hf"})
    for model in ("org/p", "s3://bucket/models/m", "pvc://models/qwen"):
        dep, svc = _serving(spec, model)
        kubernetes_validate.validate(dep, "1.30.0", strict=True)
        kubernetes_validate.validate(svc, "1.30.0", strict=True)
        pod = dep["spec"]["template"]["spec"]
        # Only an s3:// model is copied in by an init container; vLLM downloads hub ids itself.
        assert ("initContainers" in pod) == model.startswith("s3://"), model
        args = _vllm(dep)["args"]
        source = args[args.index("--model") + 1]
        assert source == {"org/p": "org/p", "s3://bucket/models/m": "/model"}.get(
            model, "/model/qwen"
        )


@pytest.mark.parametrize(
    ("r", "rank"), [(1, 8), (8, 8), (9, 16), (16, 16), (24, 32), (300, 320), (321, 512), (512, 512)]
)
def test_policy_server_gets_runtime_lora_with_a_rank_vllm_accepts(r: int, rank: int) -> None:
    spec = _spec(serving={"engine": "vllm"}, training={"lora": {"r": r}})
    container = _vllm(_serving(spec)[0])
    args = container["args"]
    assert "--enable-lora" in args
    assert int(args[args.index("--max-lora-rank") + 1]) == rank
    assert rank in builders.LORA_RANKS and rank >= r
    # Current, parent and best iterations' adapters fit at once.
    assert int(args[args.index("--max-loras") + 1]) >= 3
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]


def test_lora_rank_above_vllms_largest_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^training\.lora\.r: 600 is above vLLM's largest"):
        builders.max_lora_rank(600)


def test_other_servers_get_no_lora_and_the_pinned_image() -> None:
    spec = _spec(serving={"engine": "vllm"}, redTeam={"model": "org/red"})
    container = _vllm(_serving(spec, "org/red")[0])
    assert "--enable-lora" not in container["args"]
    assert all(e["name"] != "VLLM_ALLOW_RUNTIME_LORA_UPDATING" for e in container["env"])
    image = container["image"]
    assert image == OperatorConfig().serving_image
    assert re.fullmatch(r"vllm/vllm-openai:v\d+(\.\d+){2,3}", image), image


def _hash(spec: AlignmentRunSpec, model: str = "org/p") -> str:
    dep = _serving(spec, model)[0]
    value = builders.spec_hash_of(dep)
    assert value is not None
    # The annotation is the hash of the template it sits in (computed in one place).
    assert value == builders.spec_hash(dep["spec"]["template"])
    return value


def test_spec_hash_follows_the_serving_spec_only() -> None:
    base = {"serving": {"engine": "vllm", "extraArgs": ["--max-model-len", "4096"]}}
    for model in ("org/p", "s3://bucket/models/m"):
        same = _hash(_spec(**base), model)
        assert _hash(_spec(**base), model) == same
        more = {"serving": {"engine": "vllm", "extraArgs": ["--max-model-len", "8192"]}}
        assert _hash(_spec(**more), model) != same
        image = {"serving": {**base["serving"], "image": "vllm/vllm-openai:v0.11.0"}}
        assert _hash(_spec(**image), model) != same
        gpus = {"serving": {**base["serving"], "gpusPerModel": 2}}
        assert _hash(_spec(**gpus), model) != same
        # What the server doesn't run on leaves it alone (no restart of a warm server).
        assert _hash(_spec(**base, iterations=7, suspend=True), model) == same
    # A LoRA rank that needs a larger --max-lora-rank rolls the policy's server.
    assert _hash(_spec(**base, training={"lora": {"r": 64}})) != _hash(_spec(**base))


def test_spec_hash_is_stable_across_processes() -> None:
    spec = _spec(serving={"engine": "vllm", "extraArgs": ["--max-model-len", "4096"]})
    code = textwrap.dedent(
        """
        import json, sys
        from selfmoa.api import parse_run
        from selfmoa.controller import builders
        from selfmoa.controller.config import OperatorConfig

        spec = parse_run({"metadata": {"name": "r"}, "spec": json.loads(sys.argv[1])}).spec
        dep, _ = builders.serving_objects(
            run="r", namespace="ml", spec=spec, model="org/p", replicas=1, config=OperatorConfig()
        )
        print(builders.spec_hash_of(dep))
        """
    )
    # A different hash seed: nothing may depend on Python's per-process hash().
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec.wire())],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.stdout.strip() == _hash(spec)
    # The hash leaves out only itself: replicas and the owner don't touch the template.
    scaled = builders.serving_objects(
        run="r", namespace="ml", spec=spec, model="org/p", replicas=0, config=OperatorConfig()
    )[0]
    assert builders.spec_hash_of(scaled) == _hash(spec)


def test_config_reads_camel_case_and_names_bad_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        "workerImage: w:1\njobTtlSecondsAfterFinished: 60\nstorage: {uri: s3://bkt/p, secretRef: s}\n"
    )
    cfg = load_config(p)
    assert cfg.worker_image == "w:1" and cfg.storage is not None and cfg.storage.secret_ref == "s"
    p.write_text("workerImag: w\n")
    with pytest.raises(ValueError, match="workerImag"):
        load_config(p)


def test_help_and_controller_import_stay_light() -> None:
    code = textwrap.dedent(
        """
        import sys, contextlib, io
        from selfmoa.controller.entry import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
        assert "kopf" not in sys.modules, "--help imported kopf"
        import selfmoa.controller.handlers, selfmoa.controller.reconcile
        heavy = [m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_needs_a_scope() -> None:
    from selfmoa.controller.entry import main

    assert main(["--metrics-port", "0"]) == 2


def test_stage_pods_run_as_the_worker_images_user() -> None:
    # The image's HOME (HF_HOME, caches) belongs to its USER: any other uid can't write there.
    dockerfile = (Path(__file__).parents[2] / "images" / "worker" / "Dockerfile").read_text()
    user = next(ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("USER "))
    assert user == f"{builders.WORKER_UID}:{builders.WORKER_UID}"
    job = builders.stage_job(
        run="r",
        namespace="ml",
        spec=_spec(),
        iteration=1,
        stage="redteam",
        parent=0,
        config=OperatorConfig(),
    )
    pod = job["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (builders.WORKER_UID, builders.WORKER_UID)


def test_a_runs_memory_is_its_stages_request_and_limit() -> None:
    # 16Gi requested under the default 8Gi stage limit would be a Pod the API server refuses.
    spec = _spec(trainer={"gpus": 0, "resources": {"cpu": "2", "memory": "16Gi"}})
    job = builders.stage_job(
        run="r",
        namespace="ml",
        spec=spec,
        iteration=1,
        stage="respond",  # loads the policy in its own process: sized by the run
        parent=0,
        config=OperatorConfig(),
    )
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"] == "16Gi"
    assert res["requests"]["cpu"] == "2"
