"""Render the selfmoa chart with the real Helm engine (helm-python-sdk), and build install.yaml.

`manifests/install.yaml` is what `helm template --include-crds` gives for the chart's defaults
(release `selfmoa` in namespace `selfmoa-system`), plus the Namespace, so that
`kubectl apply -f manifests/install.yaml` works without Helm. Regenerate it after changing the
chart with:

    .venv/bin/python -m tests.chart.render            # writes manifests/install.yaml
    .venv/bin/python -m tests.chart.render --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "selfmoa"
INSTALL_YAML = ROOT / "manifests" / "install.yaml"
RELEASE = "selfmoa"
NAMESPACE = "selfmoa-system"

# Helm's install order (pkg/release/util/kind_sorter.go), for the kinds the chart renders.
KIND_ORDER = [
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "ServiceMonitor",
]


def render_templates(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as `helm template` renders them."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        out: dict[str, str] = chart.render(values, name=name, namespace=namespace, is_install=True)
    return out


def render_objects(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for these values (CRDs under crds/ excluded)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_templates(values, name=name, namespace=namespace).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects += [d for d in yaml.safe_load_all(text) if d]
    return objects


def chart_crds() -> dict[str, str]:
    """File name -> raw text of every file under the chart's crds/."""
    return {p.name: p.read_text() for p in sorted((CHART / "crds").glob("*.yaml"))}


def _rank(doc: dict[str, Any]) -> tuple[int, str, str]:
    kind = str(doc.get("kind"))
    meta = doc.get("metadata") or {}
    order = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return order, str(meta.get("namespace", "")), str(meta.get("name", ""))


def render_install_yaml() -> str:
    """The text of manifests/install.yaml for the chart's default values."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "selfmoa"}},
    }
    docs: list[tuple[str, dict[str, Any], str]] = [
        ("namespace", namespace, yaml.safe_dump(namespace, sort_keys=False))
    ]
    for fname, text in chart_crds().items():
        body = "\n".join(line for line in text.splitlines() if line.strip() != "---") + "\n"
        docs.append((f"selfmoa/crds/{fname}", yaml.safe_load(body), body))
    for path, text in sorted(render_templates().items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for part in text.split("\n---"):
            doc = yaml.safe_load(part)
            if doc:
                docs.append((path, doc, part.strip("\n").removeprefix("---").strip("\n") + "\n"))
    docs.sort(key=lambda d: _rank(d[1]))
    head = (
        "# selfmoa operator: everything `helm install selfmoa charts/selfmoa -n selfmoa-system`\n"
        "# creates, for `kubectl apply -f manifests/install.yaml` without Helm.\n"
        "# Generated from the chart's default values: do not edit; run\n"
        "#   .venv/bin/python -m tests.chart.render\n"
    )
    return head + "".join(f"---\n# Source: {src}\n{body}" for src, _, body in docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write manifests/install.yaml from the chart.")
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--output", type=Path, default=INSTALL_YAML)
    args = parser.parse_args(argv)
    text = render_install_yaml()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is out of date: run python -m tests.chart.render", file=sys.stderr
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
