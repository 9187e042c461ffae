"""The AlignmentRun CRD: generated from the pydantic models, structural, valid, and in sync."""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from selfmoa.api import AlignmentRunSpec, AlignmentRunStatus, SpecError, parse_run
from selfmoa.api.crd import build_crd, main, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "manifests" / "crd.yaml"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
# Oldest Kubernetes we claim, and the newest kubernetes-validate ships schemas for.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]

# Keywords a Kubernetes structural schema node may carry (apiextensions JSONSchemaProps that we
# use); anything else (title, $ref, anyOf, $defs, const...) means the conversion missed a case.
ALLOWED = {
    "type",
    "description",
    "nullable",
    "enum",
    "default",
    "format",
    "pattern",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "multipleOf",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def schema() -> dict[str, Any]:
    crd = build_crd()
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def walk(node: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(where or "<root>", node)]
    for name, sub in node.get("properties", {}).items():
        out += walk(sub, f"{where}.{name}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{where}.*")
    return out


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0 (as Kubernetes reads it) -> JSON Schema draft 4: only `nullable` differs."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in out:
        out["properties"] = {k: to_jsonschema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = to_jsonschema(out[key])
    return out


def validator() -> jsonschema.Draft4Validator:
    s = to_jsonschema(schema())
    jsonschema.Draft4Validator.check_schema(s)
    return jsonschema.Draft4Validator(s)


def alignment_runs() -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "AlignmentRun":
                runs.append((path.name, doc))
    return runs


# ------------------------------------------------------------------ drift


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.exists(), "manifests/crd.yaml is missing: run `selfmoa crd`"
    assert CRD_FILE.read_text() == render_crd_yaml(), (
        "manifests/crd.yaml is out of date with operator/selfmoa/api/spec.py: run `selfmoa crd`"
    )


def test_main_writes_file_and_stdout(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "crd.yaml"
    assert main(["--output", str(out)]) == 0
    assert out.read_text() == render_crd_yaml()
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["-o", "-"]) == 0
    assert yaml.safe_load_all(buf.getvalue()).__next__() == build_crd()


# ------------------------------------------------------------------ shape


def test_names_columns_and_subresources() -> None:
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "alignmentruns.selfmoa.dev"
    assert spec["group"] == "selfmoa.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "AlignmentRun"
    assert spec["names"]["plural"] == "alignmentruns"
    assert spec["names"]["shortNames"] == ["arun"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols == ["Phase", "Iteration", "Stage", "Safety", "Helpfulness", "Result", "Age"]
    props = schema()["properties"]["status"]["properties"]
    for col in version["additionalPrinterColumns"]:
        path = col["jsonPath"].split(".")[1:]
        if path[0] == "status":
            assert path[1] in props, f"printer column {col['name']} points at nothing"


def test_schema_is_structural() -> None:
    for where, node in walk(schema()):
        extra = set(node) - ALLOWED
        assert not extra, f"{where}: non-structural keywords {sorted(extra)}"
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or preserve, f"{where}: every node needs a type"
        if node.get("type") == "object":
            assert not ("properties" in node and "additionalProperties" in node), where
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{where}: array without items"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True, f"{where}: {bound} must be boolean in OpenAPI 3.0"
        if "nullable" in node:
            assert node["nullable"] is True and "default" not in node, where


def test_every_model_field_is_in_the_schema() -> None:
    props = schema()["properties"]
    for model, node in ((AlignmentRunSpec, props["spec"]), (AlignmentRunStatus, props["status"])):
        for name, field in model.model_fields.items():
            assert (field.alias or name) in node["properties"], f"{model.__name__}.{name}"
    spec = props["spec"]
    assert spec["required"] == ["policy"]
    assert spec["properties"]["policy"]["required"] == ["model"]


def test_constraints_survive_the_conversion() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    judge = spec["judges"]["items"]["properties"]
    assert judge["objective"]["enum"] == ["safety", "helpfulness"]
    assert judge["name"]["pattern"] == r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert judge["kind"]["default"] == "heuristic"
    assert judge["model"] == {
        "type": "string",
        "description": judge["model"]["description"],
        "nullable": True,
    }
    assert spec["judges"]["x-kubernetes-list-map-keys"] == ["name"]
    helpful = spec["helpfulness"]["properties"]["fraction"]
    assert (helpful["maximum"], helpful["exclusiveMaximum"]) == (1, True)
    assert spec["iterations"] | {"description": ""} == {
        "type": "integer",
        "description": "",
        "default": 3,
        "minimum": 1,
        "maximum": 100,
    }
    weights = spec["preferences"]["properties"]["weights"]
    assert weights["additionalProperties"] == {"type": "number"}
    attempts = schema()["properties"]["status"]["properties"]["attempts"]
    assert attempts["additionalProperties"] == {"type": "integer"}


def test_defaults_are_valid_against_their_own_nodes() -> None:
    # The API server refuses a CRD whose defaults don't validate; check each one here.
    checked = 0
    for where, node in walk(schema()):
        if "default" in node:
            sub = to_jsonschema({k: v for k, v in node.items() if k != "default"})
            errors = [
                e.message for e in jsonschema.Draft4Validator(sub).iter_errors(node["default"])
            ]
            assert not errors, f"{where}: default {node['default']!r}: {errors}"
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crd_object_is_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(build_crd(), version, strict=True)
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), version, strict=True)


# ------------------------------------------------------------------ examples


def test_there_are_examples() -> None:
    names = {name for name, _ in alignment_runs()}
    assert {"tiny-cpu.yaml", "qwen-0.5b.yaml", "minio-s3.yaml"} <= names


@pytest.mark.parametrize("name,doc", alignment_runs(), ids=[n for n, _ in alignment_runs()])
def test_examples_validate_against_crd_and_model(name: str, doc: dict[str, Any]) -> None:
    validator().validate(doc)
    run = parse_run(doc)
    assert run.name == doc["metadata"]["name"]


# Invalid specs the schema can refuse: the API server and the model must agree on each.
BAD = [
    ("iterations", 0),
    ("sampling.temperature", 3.0),
    ("helpfulness.fraction", 1.0),
    ("judges.0.objective", "honesty"),
    ("judges.0.name", "Bad_Name"),
    ("judges.0.weight", 0),
    ("storage.uri", "ftp://x"),
    ("training.loss", "ppo"),
    ("policy.model", ""),
    ("redTeam.categories", []),
    ("redTeam.categories", ["violence", ""]),
    ("redTeam.categories", ["  "]),
    ("iterations", True),
    ("iterations", 2.5),
    ("sampling.seed", 2**31),
    ("sampling.seed", -1),
    ("sampling.maxNewTokens", 32769),
    ("evaluation.maxNewTokens", 10**6),
    ("trainer.activeDeadlineSeconds", 7 * 24 * 3600 + 1),
    ("trainer.resources.cpu", "lots"),
    ("trainer.resources.memory", "16 GB"),
    ("storage.endpoint", "minio:9000"),
    ("storage.secretRef", "Bad_Secret"),
    ("storage.timeoutSeconds", 0),
    ("sampling.temperature", "0.5"),
    ("redTeam.adaptive", "yes"),
]


@pytest.mark.parametrize("path,value", BAD, ids=[p for p, _ in BAD])
def test_schema_and_model_both_refuse(path: str, value: Any) -> None:
    doc = copy.deepcopy(dict(alignment_runs())["tiny-cpu.yaml"])
    node: Any = doc["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(leaf) if leaf.isdigit() else leaf] = value
    errors = list(validator().iter_errors(doc))
    assert errors, f"the CRD schema accepts spec.{path}={value!r}"
    with pytest.raises(SpecError):
        parse_run(doc)


@pytest.mark.parametrize("name", ["a.b", "1run", "Run", "x" * 64, "../x", "a/b"])
def test_schema_and_model_both_refuse_run_names(name: str) -> None:
    # metadata.name is the one metadata field a CRD may constrain: run names become Service
    # names and store paths, so the API server refuses what `selfmoa validate` refuses.
    meta = schema()["properties"]["metadata"]["properties"]["name"]
    assert (meta["maxLength"], meta["pattern"]) == (63, r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    doc = copy.deepcopy(dict(alignment_runs())["tiny-cpu.yaml"])
    doc["metadata"]["name"] = name
    assert list(validator().iter_errors(doc)), f"the CRD schema accepts metadata.name={name!r}"
    with pytest.raises(SpecError, match=r"^metadata.name: "):
        parse_run(doc)


def test_nullable_fields_accept_null() -> None:
    doc = copy.deepcopy(dict(alignment_runs())["tiny-cpu.yaml"])
    doc["spec"]["redTeam"]["model"] = None
    doc["spec"]["evaluation"]["maxPrompts"] = None
    validator().validate(doc)
    parse_run(doc)
