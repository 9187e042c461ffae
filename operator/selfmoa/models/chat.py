"""How text meets a tokenizer, in one place for generation, training and judging.

A policy must be trained on prompts rendered exactly as the engines render them at generation
time, and every loader must read a saved tokenizer exactly as saved: `AutoTokenizer` may swap
in the model type's own tokenizer class and pre-tokenizer (transformers 5 does), so a folder with a
`tokenizer.json` is loaded with `PreTrainedTokenizerFast`. transformers is imported only when a
tokenizer is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict


class Message(TypedDict):
    role: str
    content: str


Conversation = Sequence[Message]


def user(text: str, system: str | None = None) -> list[Message]:
    """A one-turn conversation."""
    msgs: list[Message] = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": text})
    return msgs


def load_tokenizer(path: Path | str, *, padding_side: str | None = None) -> Any:
    """The tokenizer saved at `path`, with a pad token (the eos token when it has none)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if Path(path, "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(path))
    if padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def has_chat_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def continues(conversation: Conversation) -> bool:
    """A conversation that ends with an assistant message asks for that message to be
    continued (vLLM's `continue_final_message`), not for a new turn."""
    return bool(conversation) and conversation[-1]["role"] == "assistant"


def render_prompt(tok: Any, conversation: Conversation) -> str:
    """The conversation up to where the assistant speaks next: a new assistant turn, or, when
    the conversation ends with an assistant message, the inside of that message (the model
    continues it)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in conversation]
    cont = continues(conversation)
    if has_chat_template(tok):
        return str(
            tok.apply_chat_template(
                msgs,
                add_generation_prompt=not cont,
                continue_final_message=cont,
                tokenize=False,
            )
        )
    # No template (a base LM): a plain transcript ending where the assistant speaks.
    if cont:
        head = "".join(f"{m['role']}: {m['content']}\n" for m in msgs[:-1])
        return head + f"assistant: {msgs[-1]['content']}"
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
