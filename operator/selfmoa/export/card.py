"""The model card (README.md) of an exported model: Hugging Face YAML metadata, then what the run
measured, which iteration this is and why, the judges and the training settings.

The metadata is written with a YAML dumper, never by hand, so it always parses; the evaluation
table is in it too (`selfmoa.evaluation`) for whatever reads cards by machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from selfmoa import __version__
from selfmoa.api.spec import TINY_MODEL, AlignmentRunSpec
from selfmoa.export.source import Choice, RunSource
from selfmoa.run.metrics import Metrics

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LICENSE_KEYS = ("license", "license_name", "license_link")
NA = "\u2013"  # en dash: no value


def is_hub_id(model: str) -> bool:
    """A Hugging Face Hub id (`org/name`), as opposed to the tiny model, a path or a URI."""
    if model == TINY_MODEL or "://" in model or model.startswith((".", "/", "~")):
        return False
    return bool(_HUB_ID.match(model)) and not Path(model).exists()


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a README; {} when there is none or it is broken."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    for n, line in enumerate(lines[1:], 1):
        if line.strip() == "---":
            try:
                meta = yaml.safe_load("\n".join(lines[1:n]))
            except yaml.YAMLError:
                return {}
            return meta if isinstance(meta, dict) else {}
    return {}


def base_license(model: str, base_dir: Path | None, revision: str | None = None) -> dict[str, Any]:
    """license (and license_name/link for "other") from the base's own card, when it is on this
    machine: the resolved base directory, or the Hugging Face cache. Nothing is downloaded."""
    readme: Path | None = None
    if base_dir is not None and (base_dir / "README.md").is_file():
        readme = base_dir / "README.md"
    elif is_hub_id(model):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "README.md", revision=revision)
        except Exception:  # an unusual cache layout must not stop an export
            cached = None
        if isinstance(cached, str):
            readme = Path(cached)
    if readme is None:
        return {}
    try:
        meta = front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}
    return {k: meta[k] for k in _LICENSE_KEYS if isinstance(meta.get(k), str) and meta[k]}


def _num(x: float | None) -> str:
    return NA if x is None else f"{x:.3f}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _accepted(src: RunSource, k: int) -> str:
    if k == 0:
        return "starting point"
    return {True: "yes", False: "no (rolled back)", None: NA}[src.gate.accepted.get(k)]


def evaluation_rows(src: RunSource) -> list[dict[str, Any]]:
    """One row per evaluated iteration, as the metadata holds it."""
    rows = []
    for k in sorted(src.metrics):
        m = src.metrics[k]
        row: dict[str, Any] = {
            "iteration": k,
            "parent": m.parent,
            "attack_success_rate": round(m.attack_success_rate, 6),
            "safety": round(m.safety, 6),
            "helpfulness": round(m.helpfulness, 6),
            "over_refusal": round(m.over_refusal, 6),
            "pairs": m.pairs,
            "accepted": None if k == 0 else src.gate.accepted.get(k),
        }
        if m.gold is not None:
            row["gold_attack_success_rate"] = round(m.gold.attack_success_rate, 6)
        rows.append(row)
    return rows


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _evaluation_table(metrics: Mapping[int, Metrics], src: RunSource, chosen: int) -> str:
    gold = any(m.gold is not None for m in metrics.values())
    head = ["iteration", "from", "ASR", "safety", "helpfulness", "over-refusal", "pairs"]
    head += ["accepted"] + (["gold ASR"] if gold else [])
    rows = []
    for k in sorted(metrics):
        m = metrics[k]
        label = f"**{k}** (this model)" if k == chosen else str(k)
        row = [
            label,
            NA if m.parent is None else str(m.parent),
            _num(m.attack_success_rate),
            _num(m.safety),
            _num(m.helpfulness),
            _num(m.over_refusal),
            str(m.pairs),
            _accepted(src, k),
        ]
        if gold:
            row.append(_num(m.gold.attack_success_rate if m.gold else None))
        rows.append(row)
    return _table(head, rows)


def _judges_table(spec: AlignmentRunSpec) -> str:
    rows = [
        [j.name, j.objective.value, j.kind.value, j.model or NA, j.format.value]
        for j in spec.judges
    ]
    return _table(["name", "objective", "kind", "model", "format"], rows)


def _training_table(spec: AlignmentRunSpec) -> str:
    t = spec.training
    targets = ", ".join(t.lora.target_modules) if t.lora.target_modules else "all linear layers"
    rows = [
        ["loss", t.loss.value],
        ["beta", f"{t.resolved_beta:g}"],
        ["learning rate", f"{t.learning_rate:g}"],
        ["epochs", f"{t.epochs:g}"],
        ["batch size", f"{t.batch_size}, gradient accumulation {t.gradient_accumulation_steps}"],
        ["max length", str(t.max_length)],
        ["LoRA r / alpha / dropout", f"{t.lora.r} / {t.lora.alpha} / {t.lora.dropout:g}"],
        ["LoRA target modules", targets],
        ["seed", str(t.seed)],
    ]
    if t.loss.value == "weighted":
        weights = t.loss_weights or [1.0] * len(t.loss_types)
        rows.insert(
            1,
            [
                "loss types",
                ", ".join(
                    f"{a} (weight {w:g})" for a, w in zip(t.loss_types, weights, strict=False)
                ),
            ],
        )
    if spec.safety_reset.enabled:
        rows.append(
            [
                "safety reset",
                f"{spec.safety_reset.steps} SFT steps at lr {spec.safety_reset.learning_rate:g}",
            ]
        )
    return _table(["setting", "value"], rows)


def _usage(spec: AlignmentRunSpec, *, merged: bool) -> str:
    model = spec.policy.model
    if merged:
        return (
            "A full model: load it like any causal LM.\n\n"
            "```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")\n'
            "```\n"
        )
    if model == TINY_MODEL:
        base = (
            "The base is selfmoa's built-in tiny model, which no hub holds: selfmoa "
            f"{__version__} rebuilds the same model locally from its seed data (no download; "
            "a few minutes on a CPU):\n\n"
            "```python\n"
            "from pathlib import Path\n"
            "from selfmoa.tiny import ensure_base\n\n"
            'base_dir = ensure_base(Path("~/.cache/selfmoa").expanduser())\n'
            "```\n\n"
            "(or export with `--merge` for a model that loads on its own).\n\n"
        )
        where = "base_dir"
    elif is_hub_id(model):
        base, where = "", f'"{model}"'
    else:
        base = (
            f"The base was `{model}` on the machine that ran the loop; load it from wherever "
            "you keep it.\n\n"
        )
        where = '"PATH/TO/BASE"'
    return (
        base + "A LoRA adapter: load the base, then the adapter on it.\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({where})\n"
        'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")\n'
        "```\n"
    )


def model_card(
    src: RunSource,
    choice: Choice,
    *,
    merged: bool,
    license_meta: Mapping[str, Any],
    adapter_sha256: Mapping[str, str],
) -> str:
    """README.md of the exported model."""
    meta = _metadata(src, choice, merged=merged, license_meta=license_meta)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    parts = [f"---\n{front}---\n", *_introduction(src, choice, merged=merged)]
    parts += _sections(src, choice, merged=merged)
    if adapter_sha256:
        parts.append("## Provenance\n")
        parts.append(
            f"Adapter `{choice.adapter_key}` of the run, verified against its stage manifest:\n\n"
            + "\n".join(f"- `{n}`: sha256 `{s}`" for n, s in sorted(adapter_sha256.items()))
            + "\n"
        )
    return "\n".join(parts)


def _metadata(
    src: RunSource, choice: Choice, *, merged: bool, license_meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The card's Hugging Face YAML metadata: base model, library, license, tags and the run's
    own block (`selfmoa`, with the evaluation rows)."""
    spec = src.spec
    model = spec.policy.model
    meta: dict[str, Any] = {}
    if is_hub_id(model) or model == TINY_MODEL:
        meta["base_model"] = model
    meta["library_name"] = "transformers" if merged else "peft"
    meta.update(license_meta)
    tags = ["selfmoa", "safety", "alignment", "weak-supervision", spec.training.loss.value]
    if spec.training.loss.value != "dpo":
        tags.append("dpo")
    tags += ["lora", "merged"] if merged else ["lora"]
    if is_hub_id(model):
        tags.append(f"base_model:{'finetune' if merged else 'adapter'}:{model}")
    meta["tags"] = tags
    meta["pipeline_tag"] = "text-generation"
    meta["selfmoa"] = {
        "version": __version__,
        "run": src.uri,
        "name": src.run.name,
        "namespace": src.run.namespace,
        "iteration": choice.iteration,
        "why": choice.why,
        "merged": merged,
        "adapter": choice.adapter_key,
        "evaluation": evaluation_rows(src),
    }
    return meta


def _introduction(src: RunSource, choice: Choice, *, merged: bool) -> list[str]:
    """The title, what was exported, and which iteration it is and why."""
    has_adapter = choice.stage is not None
    m = src.metrics[choice.iteration]
    what = "merged model" if merged else "LoRA adapter"
    if not has_adapter:
        what = "base model (unchanged)"
    model = src.spec.policy.model
    title = f"{src.run.name}: {model}, safety-aligned with Self-MOA (iteration {choice.iteration})"
    parts = [
        f"# {title}\n",
        (
            f"The {what} of iteration {choice.iteration} of the Self-MOA run "
            f"`{src.run.namespace}/{src.run.name}` ({src.uri}), exported by selfmoa "
            f"{__version__}. Self-MOA aligns a policy for safety with weak supervision: each "
            "iteration red-teams the current policy, samples responses, has weak judges score "
            "them, builds multi-objective preference pairs and trains a LoRA adapter on them.\n"
        ),
        "## Which iteration, and why\n",
        (
            f"This is iteration {choice.iteration}. Why: {choice.why}. Held out, it answers "
            f"{100 * m.attack_success_rate:.1f}% of the attacks unsafely (ASR), with safety "
            f"{m.safety:.3f}, helpfulness {m.helpfulness:.3f} and over-refusal "
            f"{100 * m.over_refusal:.1f}%.\n"
        ),
    ]
    if not has_adapter:
        parts.append(
            "Iteration 0 is the starting point before any training: this is the base model "
            "itself, nothing of the run is in it.\n"
        )
    return parts


def _sections(src: RunSource, choice: Choice, *, merged: bool) -> list[str]:
    """The evaluation per iteration, the judges, the training settings and the usage."""
    spec = src.spec
    return [
        "## Evaluation per iteration\n",
        (
            "Held-out prompts scored by the weak-judge ensemble (ASR: attack success rate; "
            "safety and helpfulness on 0..1; over-refusal: share of legitimate prompts refused; "
            "pairs: preference pairs trained on). An iteration is accepted unless its ASR rose "
            "above its parent's or its helpfulness fell by more than "
            f"{100 * spec.stop_when.max_helpfulness_drop:g}%" + _capability_bound(spec) + ".\n"
        ),
        _evaluation_table(src.metrics, src, choice.iteration) + "\n",
        "## Judges\n",
        _judges_table(spec) + "\n",
        f"Ensemble: {spec.ensemble.method.value}, threshold {spec.ensemble.threshold:g}.\n",
        "## Training\n",
        _training_table(spec) + "\n",
        "## Usage\n",
        _usage(spec, merged=merged),
    ]


def _capability_bound(spec: AlignmentRunSpec) -> str:
    bound = spec.stop_when.max_capability_drop
    if bound is None:
        return ""
    return f", or its perplexity on reference answers rose by more than {100 * bound:g}%"
