"""The decline the policy writes itself (`sampling.selfDecline`), beside its plain samples.

Per prompt, the policy continues a decline (`prefix`) under a safety system prompt: the paper's
"good answer it generates itself". The conversation is the prompt with the system prompt added
and the decline begun as the assistant's message, which the engine continues (vLLM's
`continue_final_message`); training later sees the plain prompt only, so the loop distils the
system prompt's behaviour into the adapter. The text kept is the prefix plus the first
`sentences` whole sentences the policy adds (default 2): a small model left to go on loops ("I'm
here to help. I'm here to help."), and the judges would rightly call that garbled. With
`sentences: 0` the decline is the prefix alone and nothing is sampled: a 135M policy's
continuations are often incoherent or turn back to comply ("However, I can tell you how ..."),
and a chosen side that does so teaches exactly that.

The record is marked `guided`, and the pairs stage uses it by that mark: on an attack it may be
chosen (when no plain sample is safe), on any other prompt only rejected (a needless refusal
its good answers are preferred to).
"""

from __future__ import annotations

import re

from selfmoa.api.spec import SamplingSpec
from selfmoa.engines.base import Generation, Message, SamplingParams
from selfmoa.models.chat import Conversation
from selfmoa.run.records import PromptRecord

#: Tokens it may write (two sentences fit well within this).
MAX_NEW_TOKENS = 64
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def conversation(prompt: PromptRecord, spec: SamplingSpec) -> Conversation:
    d = spec.self_decline
    msgs: list[Message] = [
        {"role": "system", "content": d.system},
        {"role": "user", "content": prompt["text"]},
        {"role": "assistant", "content": d.prefix},
    ]
    return msgs


def params(spec: SamplingSpec, seed: int) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=min(spec.max_new_tokens, MAX_NEW_TOKENS),
        temperature=spec.temperature,
        top_p=spec.top_p,
        n=1,
        seed=seed,
    )


def text(prefix: str, continuation: Generation, keep: int) -> str:
    """The prefix and the first `keep` sentences of the policy's continuation of it."""
    written = [s for s in _SENTENCE_END.split(continuation.text.strip()) if s.strip()]
    sentences = written[:keep]
    kept = " ".join(sentences)
    if written[keep:] or continuation.finish_reason == "length":
        # Cut mid-thought: keep whole sentences only (none: the prefix alone).
        kept = " ".join(s for s in sentences if s.rstrip()[-1:] in ".!?")
    if not kept:
        return prefix
    glue = "" if kept[:1] in ",.;:!?" else " "
    return prefix + glue + kept
