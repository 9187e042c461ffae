"""Pure child builders, config and the operator entry point (no cluster)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import kubernetes_validate
import pytest

from selfmoa.api import parse_run
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig, load_config

OWNER = {
    "apiVersion": "selfmoa.dev/v1alpha1",
    "kind": "AlignmentRun",
    "metadata": {"name": "r", "namespace": "ml", "uid": "u-1"},
}


def _spec(**over: object):
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
    respond = builders.stage_job(
        run="r",
        namespace="ml",
        spec=_spec(),
        iteration=1,
        stage="respond",
        parent=0,
        config=OperatorConfig(),
    )
    assert "nvidia.com/gpu" not in respond["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ].get("limits", {})


def test_serving_objects_validate_for_hub_s3_and_pvc_models() -> None:
    spec = _spec(serving={"engine": "vllm", "hfTokenSecretRef": "hf"})
    for model in ("org/p", "s3://bucket/models/m", "pvc://models/qwen"):
        dep, svc = builders.serving_objects(
            run="r",
            namespace="ml",
            spec=spec,
            model=model,
            replicas=1,
            config=OperatorConfig(),
            owner=OWNER,
        )
        kubernetes_validate.validate(dep, "1.30.0", strict=True)
        kubernetes_validate.validate(svc, "1.30.0", strict=True)
    assert "initContainers" in dep["spec"]["template"]["spec"] or model.startswith("pvc")


def test_config_reads_camel_case_and_names_bad_keys(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        "workerImage: w:1\njobTtlSecondsAfterFinished: 60\nstorage: {uri: s3://b/p, secretRef: s}\n"
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
