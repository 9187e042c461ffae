"""PyRIT's jailbreak templates (pyrit 1.1.0, MIT): attack wrappers with one `{{ prompt }}` slot.

The templates are Jinja in PyRIT, but only one construct is used here: PyRIT wraps most of them
in `{% raw %}...{% endraw %}` so that braces in the text stay literal, leaving the slot outside.
The markers are removed and the slot is filled by plain string replacement, never by a template
engine (an attack prompt full of braces must not be evaluated). A template is skipped when:

- its `parameters` hold anything besides `prompt` (they need values this project has not got);
- outside the raw blocks it has any other Jinja (`{{ "" }}`, `{{ '{{' }}`, loops): rendering it
  by replacement would leave that syntax in the text;
- it has the slot more than once (or a literal slot inside a raw block): one attack, one copy.

What is left is filtered by length (the template's characters with its slot, before the attack
is put in) and sorted by path; each is named by its path under `datasets/jailbreak/templates`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from selfmoa.public.files import load_yaml, package_dir

NAME = "jailbreaks"
ROOT = "datasets/jailbreak/templates"
#: The slot, as the templates are left after loading (both spellings become this one).
SLOT = "{{ prompt }}"
LICENCE = "MIT (pyrit 1.1.0: pyrit/datasets/jailbreak/templates)"

_RAW = re.compile(r"\{%-?\s*raw\s*-?%\}(.*?)\{%-?\s*endraw\s*-?%\}", re.DOTALL)
_SLOT = re.compile(r"\{\{-?\s*prompt\s*-?\}\}")
_JINJA = re.compile(r"\{\{|\{%|\{#")


@dataclass(frozen=True)
class JailbreakTemplate:
    #: Path under PyRIT's templates folder, e.g. "aim.yaml" or "pliny/openai/gpt_4o.yaml".
    name: str
    #: The template with its single `SLOT`.
    text: str

    def fill(self, prompt: str) -> str:
        """The template with the attack in its slot."""
        return self.text.replace(SLOT, prompt)


def _template(value: Any, parameters: Any) -> str | None:
    """The template text with raw markers removed and the slot in its one spelling, or None
    when it is skipped (see the module doc)."""
    if not isinstance(value, str) or parameters != ["prompt"]:
        return None
    parts: list[str] = []
    pos = 0
    for m in _RAW.finditer(value):
        parts.append(_SLOT.sub(SLOT, value[pos : m.start()]))
        parts.append(m.group(1))
        pos = m.end()
    parts.append(_SLOT.sub(SLOT, value[pos:]))
    outside = "".join(parts[0::2])
    if _JINJA.search(outside.replace(SLOT, "")):
        return None
    text = "".join(parts).strip()
    return text if text.count(SLOT) == 1 else None


@cache
def _templates() -> tuple[JailbreakTemplate, ...]:
    root = package_dir("pyrit", NAME) / ROOT
    out = []
    for path in sorted(root.rglob("*.yaml"), key=lambda p: p.relative_to(root).as_posix()):
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue  # a broken upstream file is one template fewer, not a failed run
        if not isinstance(data, dict):
            continue
        text = _template(data.get("value"), data.get("parameters"))
        if text is not None:
            out.append(JailbreakTemplate(name=path.relative_to(root).as_posix(), text=text))
    return tuple(out)


def jailbreak_templates(max_chars: int = 600) -> list[JailbreakTemplate]:
    """PyRIT's single-slot jailbreak templates no longer than `max_chars`, sorted by path."""
    return [t for t in _templates() if len(t.text) <= max_chars]
