"""Every object a shipped example makes, accepted by the real API server.

For each file in manifests/examples/: its own documents (the AlignmentRun, and a Secret, a PVC or
a seed Job where it has them) and every child the operator would create for it over the whole
run — each stage's Job, each served model's Deployment and Service — built by the same builders
the operator calls, then created with a server-side dry run (`kubectl create --dry-run=server`):
the API server's own defaulting, validation and admission, not only the schemas. A child it
rejects fails the test with the server's message. TrainJobs (multi-node training) need Kubeflow
Trainer's CRD, which this server doesn't have: they are counted and left to the schema tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from realcluster import ROOT, Cluster, Installed

from selfmoa.api import parse_run
from selfmoa.api.infra import ServingEngine
from selfmoa.controller import builders
from selfmoa.controller.config import OperatorConfig
from selfmoa.run import stage_table

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def children_of(run: dict[str, Any], namespace: str) -> tuple[list[dict[str, Any]], int]:
    """Every Job, Deployment and Service the operator makes for `run` (all its stages and
    servers); how many TrainJobs it would make besides."""
    spec = parse_run(run).spec
    name = run["metadata"]["name"]
    config = OperatorConfig()
    objects: list[dict[str, Any]] = []
    trainjobs = 0
    stages = stage_table.stages_of_run(
        spec.iterations, reset=spec.safety_reset.enabled, export=spec.output is not None
    )
    for k, stage in stages:
        if builders.runs_as_trainjob(spec, stage):
            trainjobs += 1
            continue
        objects.append(
            builders.stage_job(
                run=name, namespace=namespace, spec=spec, iteration=k, stage=stage,
                parent=max(k - 1, 0), config=config,
            )
        )  # fmt: skip
    if spec.serving.engine == ServingEngine.vllm:
        for model in spec.models():
            objects += builders.serving_objects(
                run=name, namespace=namespace, spec=spec, model=model, replicas=1, config=config
            )
    return objects, trainjobs


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_object_of_an_example_is_accepted_by_the_api_server(
    cluster: Cluster, chart: Installed, path: Path
) -> None:
    # A namespace of its own: an example's Secret would meet another's.
    namespace = "ex-" + path.stem.replace(".", "-")
    cluster.kubectl("create", "namespace", namespace, check=False)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects: list[dict[str, Any]] = []
    trainjobs = 0
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = namespace
        objects.append(doc)
        if doc["kind"] == "AlignmentRun":
            made, n = children_of(doc, namespace)
            objects += made
            trainjobs += n
    kinds = sorted({o["kind"] for o in objects})
    # --validate=false: no client-side check against kubectl's own (1.20) schemas; the operator
    # sends its objects straight to the API, and the server's validation is what is tested.
    proc = cluster.kubectl(
        "create", "--dry-run=server", "--validate=false", "-o", "name", "-f", "-",
        input="\n".join(json.dumps(o) for o in objects), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{path.name}: the API server refused:\n{proc.stderr[-3000:]}"
    accepted = proc.stdout.split()
    assert len(accepted) == len(objects), (len(accepted), len(objects), kinds)
    print(
        f"{path.name}: {len(objects)} objects accepted ({', '.join(kinds)}), {trainjobs} TrainJobs"
    )
