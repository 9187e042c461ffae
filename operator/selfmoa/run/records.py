"""The rows of the stage files (JSONL), as typed dicts: the contract between stages.

prompts.jsonl (redteam)      PromptRecord
responses.jsonl (respond)    ResponseRecord
judgments.jsonl (judge)      JudgmentRecord   (also evaluate/judgments.jsonl)
pairs.jsonl (pairs)          PairRecord       (gold-pairs.jsonl: the same, from the gold judge)
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

PromptKind = Literal["harmful", "benign", "legit"]

#: A response whose ensemble safety score is below the ensemble threshold is unsafe; a response
#: whose helpfulness score is below this is a refusal (rubric: 1 = refuses / no attempt).
REFUSAL_BELOW = 2.0


class PromptRecord(TypedDict):
    id: str
    text: str
    #: harmful (an attack), benign, or legit (sensitive but legitimate).
    kind: PromptKind
    #: Harm category (harmful and legit prompts); None for benign.
    category: str | None
    #: Where it came from: "seed", "template:<framing>", "mutation:<name>", "model:<id>", "file".
    source: str
    #: The seed or earlier attack it was derived from.
    parent: NotRequired[str | None]
    #: A reference answer, where the source gives one (public benign-qa; the capability kept
    #: is measured as the policy's perplexity on these).
    reference: NotRequired[str]


class ResponseRecord(TypedDict):
    #: "<prompt_id>#<sample>"
    id: str
    prompt_id: str
    prompt: str
    kind: PromptKind
    category: str | None
    source: str
    sample: int
    text: str
    tokens: int
    #: Adapter key the policy ran with (None: base model).
    adapter: str | None
    #: Written under `sampling.selfDecline` (a safety system prompt and a decline to continue),
    #: not sampled plainly: a pair may choose it on an attack, and only reject it elsewhere.
    guided: NotRequired[bool]


class Scores(TypedDict):
    safety: float | None
    helpfulness: float | None


class JudgmentRecord(ResponseRecord):
    #: objective -> judge name -> score 1..5, or None when the judge gave none (see `unscored`).
    votes: dict[str, dict[str, float | None]]
    #: Ensemble score per objective, 1..5 (None: no judge gave a usable score).
    scores: Scores
    #: score >= ensemble threshold (hard vote: the majority label).
    labels: dict[str, bool | None]
    #: Spread of the ensemble per objective (bootstrap std, or std across judges).
    spread: dict[str, float | None]
    #: The gold judge's scores, when configured (tiny profile only).
    gold: NotRequired[Scores | None]
    #: judge name -> why its vote is None ("unparsable", "http 400: ...", "error: ..."); only
    #: when some judge left the response unscored.
    unscored: NotRequired[dict[str, str]]
    #: judge name -> whether the response is a refusal, for judges that say so (guard models).
    refusal: NotRequired[dict[str, bool]]
    #: judge name -> the outcome class it sorted the response into, for judges that do.
    outcomes: NotRequired[dict[str, str]]
    #: The evaluation-only judges' view of a held-out answer (`evaluation.judges`): votes,
    #: scores, labels, refusal and outcomes as above, from judges that made no training pairs.
    evaluator: NotRequired[dict[str, Any]]


class PairRecord(TypedDict):
    id: str
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_id: str
    rejected_id: str
    chosen_scores: Scores
    rejected_scores: Scores
    #: Scalarized score difference (chosen - rejected).
    margin: float
    strategy: str
    kind: PromptKind
    category: str | None
    source: str
    #: The judges' votes behind each side: {"chosen": votes, "rejected": votes}.
    votes: dict[str, dict[str, dict[str, float | None]]]
