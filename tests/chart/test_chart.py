"""The Helm chart, rendered with the real Helm engine (helm-python-sdk: Helm's Go library)."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from render import (
    CHART,
    INSTALL_YAML,
    NAMESPACE,
    ROOT,
    render_install_yaml,
    render_objects,
    render_templates,
)

from selfmoa.api.crd import build_crd, render_crd_yaml

# Oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest that
# kubernetes-validate ships schemas for.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
# Kinds without a schema in kubernetes-validate (Prometheus Operator CRD); checked by hand below.
NO_SCHEMA = {"ServiceMonitor"}

# The operator's permissions, exactly (issues 4 and 13): (apiGroup, resource) -> verbs. What the
# operator uses, checked against a real apiserver's audit log (tests/cluster): `get` on what it
# creates is for adopting an object whose create answered 409.
EXPECTED_RULES: dict[tuple[str, str], set[str]] = {
    ("selfmoa.dev", "alignmentruns"): {"list", "watch", "patch"},
    ("selfmoa.dev", "alignmentruns/status"): {"patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "services"): {"get", "list", "create", "delete"},
    ("", "pods"): {"list"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
#: What kubeflowTrainer.enabled adds (issue 12): the TrainJobs of runs on several nodes (listed
#: each reconcile, never watched).
TRAINJOB_RULES: dict[tuple[str, str], set[str]] = {
    ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "create", "delete"},
}

CONFIG_KEYS = {
    "workerImage",
    "servingImage",
    "imagePullPolicy",
    "stageResources",
    "trainResources",
    "servingResources",
    "nodeSelector",
    "tolerations",
    "jobTtlSecondsAfterFinished",
    "serviceAccountName",
    "storage",
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}
    },
    "crds-templated": {"crds": {"enabled": True}},
    "kubeflow-trainer": {"kubeflowTrainer": {"enabled": True}},
    "kubeflow-trainer-namespaced": {
        "kubeflowTrainer": {"enabled": True},
        "watchNamespaces": ["team-a"],
    },
    "crds-templated-no-keep": {"crds": {"enabled": True, "keep": False}},
    "custom": {
        "image": {"repository": "registry.example.com/ops/selfmoa-operator", "tag": "dev-1"},
        "imagePullSecrets": [{"name": "regcred"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
                    ]
                }
            }
        },
        "extraArgs": ["--standalone"],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "config": {
            "workerImage": "registry.example.com/ml/selfmoa-worker:dev-1",
            "servingImage": "registry.example.com/ml/vllm-openai:v0.11.0",
            "imagePullPolicy": "Always",
            "trainResources": {
                "requests": {"cpu": "8", "memory": "64Gi"},
                "limits": {"memory": "96Gi", "nvidia.com/gpu": 1},
            },
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "jobTtlSecondsAfterFinished": 600,
            "serviceAccountName": "selfmoa-stage",
            "storage": {
                "uri": "s3://ml-artifacts/selfmoa",
                "endpoint": "http://minio.minio:9000",
                "region": "us-east-1",
                "secretRef": "s3-credentials",
            },
        },
    },
    "external-service-account": {
        "serviceAccount": {"create": False, "name": "preexisting"},
        "rbac": {"create": False},
        "metrics": {"service": {"enabled": False}},
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render_objects(values) for name, values in VALUE_SETS.items()}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = by_kind(objects, kind)
    return obj


def rule_set(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key not in out, f"{key} granted twice"
                out[key] = set(rule["verbs"])
    return out


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def config_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(objects, "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])  # type: ignore[no-any-return]


# ------------------------------------------------------------------ files in sync


def test_chart_crd_is_the_generated_one() -> None:
    text = (CHART / "crds" / "alignmentruns.yaml").read_text()
    assert text == render_crd_yaml(), (
        "charts/selfmoa/crds/alignmentruns.yaml is out of date: run `selfmoa crd`"
    )


def test_install_yaml_is_up_to_date() -> None:
    assert INSTALL_YAML.read_text() == render_install_yaml(), (
        "manifests/install.yaml is out of date: run `.venv/bin/python -m tests.chart.render`"
    )


def test_install_yaml_is_complete_and_valid() -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL_YAML.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
    } <= set(kinds)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[0], strict=True)
        if doc["kind"] not in (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == project["version"] == "0.1.0"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # The default worker image follows the app version; vLLM is pinned, never :latest.
    assert values["config"]["workerImage"].endswith(":" + meta["appVersion"])
    assert re.fullmatch(r"vllm/vllm-openai:v\d+(\.\d+){2,3}", values["config"]["servingImage"])


# ------------------------------------------------------------------ helm lint / schema


def test_lint_is_clean() -> None:
    report = helm.lint(CHART, strict=True, kube_version="v1.28.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_value_sets(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True)
    assert not report["errors"], report


def test_claimed_kubernetes_versions() -> None:
    # What Chart.yaml claims is what the tests validate against.
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"
    tested = meta["annotations"]["selfmoa.dev/tested-kubernetes-versions"]
    assert tested == ", ".join(v.rsplit(".", 1)[0] for v in KUBE_VERSIONS)


BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown-top-level": {"replicas": 2},
    "tag-not-string": {"image": {"tag": 1}},
    "pull-policy": {"image": {"pullPolicy": "Sometimes"}},
    "namespace-not-dns": {"watchNamespaces": ["Team_A"]},
    "namespaces-not-list": {"watchNamespaces": "team-a"},
    "port-range": {"metrics": {"port": 70000}},
    "port-type": {"health": {"port": "8080"}},
    "config-unknown-key": {"config": {"gpuImage": "x"}},
    "config-pull-policy": {"config": {"imagePullPolicy": "Sometimes"}},
    "bad-quantity": {"config": {"stageResources": {"requests": {"cpu": "lots"}}}},
    "resources-typo": {"config": {"trainResources": {"request": {"cpu": "1"}}}},
    "storage-scheme": {"config": {"storage": {"uri": "gs://bucket"}}},
    "ttl-negative": {"config": {"jobTtlSecondsAfterFinished": -1}},
    "toleration-typo": {"config": {"tolerations": [{"key": "a", "effects": "NoSchedule"}]}},
    "interval": {"metrics": {"serviceMonitor": {"interval": "often"}}},
    "empty-worker-image": {"config": {"workerImage": ""}},
    "kubeflow-trainer-not-bool": {"kubeflowTrainer": {"enabled": "yes"}},
    "kubeflow-trainer-unknown-key": {"kubeflowTrainer": {"runtime": "torch-distributed"}},
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_values_schema_rejects(name: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(BAD_VALUES[name])
        # ...and rendering (what `helm install` does) refuses them too.
        with pytest.raises(helm.HelmError):
            chart.render(BAD_VALUES[name], name="selfmoa", namespace=NAMESPACE)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_values_schema_accepts_value_sets(name: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(VALUE_SETS[name])


def undocumented(text: str) -> list[str]:
    """Keys of a values file with no comment right above them nor above an enclosing key."""
    lines = text.splitlines()
    keys: list[tuple[int, str, bool]] = []  # (indent, key, commented)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
        keys.append((len(m.group(1)), m.group(2), prev.strip().startswith("#")))
    missing = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for idx, (indent, key, commented) in enumerate(keys):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = commented or any(d for _, d in stack)
        has_children = idx + 1 < len(keys) and keys[idx + 1][0] > indent
        if not documented and not has_children:
            missing.append(key)
        stack.append((indent, documented))
    return missing


def test_every_value_is_documented() -> None:
    assert undocumented((CHART / "values.yaml").read_text()) == []


def test_undocumented_values_are_found() -> None:
    text = "# -- a\na: 1\nb:\n  # -- c\n  c: 2\n  d: 3\n# -- e\ne:\n  f: 4\ng: 5\n"
    assert undocumented(text) == ["d", "g"]


def test_schema_covers_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]), "values.yaml and values.schema.json differ"


# ------------------------------------------------------------------ rendered objects


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    objects = rendered[name]
    assert objects
    for obj in objects:
        if obj["kind"] in NO_SCHEMA:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert obj["metadata"].get("namespace"), f"{obj['kind']} without a namespace"


def test_default_render(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    assert sorted(o["kind"] for o in objects) == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
        ]
    )
    dep = one(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(objects)
    assert c["image"] == "ghcr.io/selfmoa/operator:0.1.0"
    assert c["args"] == [
        "--all-namespaces",
        "--config",
        "/etc/selfmoa/config.yaml",
        "--health-port",
        "8080",
        "--metrics-port",
        "9090",
    ]
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090} and probe["port"] == "health"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/selfmoa"
    (vol,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert vol["configMap"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    svc = one(objects, "Service")
    assert svc["spec"]["ports"][0]["port"] == 9090
    assert svc["spec"]["selector"].items() <= pod_labels(dep).items()


def pod_labels(dep: dict[str, Any]) -> dict[str, str]:
    return dep["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_cluster_rbac_rules_are_exact(rendered: dict[str, list[dict[str, Any]]]) -> None:
    role = one(rendered["defaults"], "ClusterRole")
    assert rule_set(role["rules"]) == EXPECTED_RULES


def test_trainjob_rbac_only_when_enabled(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # Off by default (the rule set above has no TrainJobs); on: exactly the TrainJob verbs more,
    # cluster-wide or in each watched namespace.
    role = one(rendered["kubeflow-trainer"], "ClusterRole")
    assert rule_set(role["rules"]) == {**EXPECTED_RULES, **TRAINJOB_RULES}
    objects = rendered["kubeflow-trainer-namespaced"]
    assert not by_kind(objects, "ClusterRole")
    (ns_role,) = by_kind(objects, "Role")
    assert ns_role["metadata"]["namespace"] == "team-a"
    assert rule_set(ns_role["rules"]) == {**EXPECTED_RULES, **TRAINJOB_RULES}
    for role in by_kind(rendered["watch-namespaces"], "Role"):
        assert ("trainer.kubeflow.org", "trainjobs") not in rule_set(role["rules"])


def test_namespaced_mode(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["watch-namespaces"]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    roles = by_kind(objects, "Role")
    bindings = by_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert rule_set(role["rules"]) == EXPECTED_RULES
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert b["subjects"][0]["namespace"] == NAMESPACE
    args = container(objects)["args"]
    assert "--all-namespaces" not in args
    assert args[:4] == ["--namespace", "team-a", "--namespace", "team-b"]


def test_service_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["service-monitor"]
    sm = one(objects, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    svc = one(objects, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert not by_kind(rendered["defaults"], "ServiceMonitor")


def test_service_monitor_needs_the_service() -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    with pytest.raises(helm.HelmError, match=r"needs metrics\.service\.enabled"):
        render_objects(values)


def test_templated_crd(rendered: dict[str, list[dict[str, Any]]]) -> None:
    expected = build_crd()
    crd = one(rendered["crds-templated"], "CustomResourceDefinition")
    assert crd["spec"] == expected["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"] == expected["metadata"]["labels"]
    loose = one(rendered["crds-templated-no-keep"], "CustomResourceDefinition")
    assert "annotations" not in loose["metadata"]
    assert not by_kind(rendered["defaults"], "CustomResourceDefinition")


def test_custom_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["custom"]
    values = VALUE_SETS["custom"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    assert c["image"] == "registry.example.com/ops/selfmoa-operator:dev-1"
    assert c["resources"] == values["resources"]
    assert c["args"][-1] == "--standalone"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in c["env"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    config = config_of(objects)
    expected = dict(values["config"])
    expected["stageResources"] = config_of(rendered["defaults"])["stageResources"]
    expected["servingResources"] = config_of(rendered["defaults"])["servingResources"]
    assert config == expected
    # A config change restarts the operator.
    default_dep = one(rendered["defaults"], "Deployment")
    key = "checksum/config"
    assert (
        one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][key]
        != default_dep["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_external_service_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["external-service-account"]
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Deployment"]
    assert (
        one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        == "preexisting"
    )


def test_service_account_name_required_without_create() -> None:
    with pytest.raises(helm.HelmError, match=r"serviceAccount\.name is required"):
        render_objects({"serviceAccount": {"create": False}})


# ------------------------------------------------------------------ operator config


def test_config_defaults(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config = config_of(rendered["defaults"])
    assert set(config) <= CONFIG_KEYS
    assert config["workerImage"] == "ghcr.io/selfmoa/worker:0.1.0"
    assert config["servingImage"].startswith("vllm/vllm-openai:v")
    assert config["jobTtlSecondsAfterFinished"] == 86400
    assert "storage" not in config and "serviceAccountName" not in config  # operator defaults


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_config_keys(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    assert set(config_of(rendered[name])) <= CONFIG_KEYS


def _operator_config_model() -> Any:
    """The operator's pydantic config model, when the controller package provides one."""
    import importlib

    try:
        module = importlib.import_module("selfmoa.controller.config")
    except ModuleNotFoundError:
        return None
    for attr in ("OperatorConfig", "Config", "ControllerConfig"):
        model = getattr(module, attr, None)
        if model is not None and hasattr(model, "model_validate"):
            return model
    return None


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_config_validates_with_operator_model(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    model = _operator_config_model()
    if model is None:
        pytest.skip("selfmoa.controller.config has no config model yet")
    model.model_validate(config_of(rendered[name]))


# ------------------------------------------------------------------ NOTES


def test_notes_tell_what_to_do_next() -> None:
    notes = render_templates()["selfmoa/templates/NOTES.txt"]
    assert "kubectl get arun -w" in notes
    assert "manifests/examples/tiny-cpu.yaml" in notes
    assert "config.storage.uri" in notes
    with_storage = render_templates({"config": {"storage": {"uri": "s3://bkt/p"}}})
    assert "config.storage.uri" not in with_storage["selfmoa/templates/NOTES.txt"]
    namespaced = render_templates({"watchNamespaces": ["team-a"]})["selfmoa/templates/NOTES.txt"]
    assert "in: team-a" in namespaced


def test_chart_and_operator_agree_on_default_images() -> None:
    """Without the chart (operator run by hand) the operator's own defaults are the same images."""
    import importlib

    try:
        module = importlib.import_module("selfmoa.controller.config")
    except ModuleNotFoundError:
        pytest.skip("selfmoa.controller.config not there yet")
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    assert values["workerImage"] == module.DEFAULT_WORKER_IMAGE
    assert values["servingImage"] == module.DEFAULT_SERVING_IMAGE


def test_chart_packages_with_its_crd(tmp_path: Any) -> None:
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        assert packaged.version == "0.1.0"
        (crd,) = packaged.crds
        assert crd["filename"].endswith("crds/alignmentruns.yaml")
        assert packaged.schema is not None
