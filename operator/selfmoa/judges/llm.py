"""A served model judges responses: our rubric, or a guard model's native format (requests in
`prompts`, replies read by `formats`).

Every request to one judge shares its format's fixed prefix (the rubric's system message, a guard
model's policy prompt), so vLLM's prefix caching computes it once. Greedy decoding and a few
tokens: the reply is a score or a label.

One bad item must not sink the batch: the engine fails a whole `chat` call when one request fails
for good (after its own retries), e.g. a hosted judge's content filter answering HTTP 400 for one
harmful prompt, or a reply that is never valid JSON. Then every item is asked again on its own
(in parallel, up to the engine's concurrency), and the ones that still fail are unscored with the
reason. Once more items failed than the judge's `min_coverage` allows (a dead server), the rest
are not sent: the panel fails the stage on coverage anyway, naming the commonest error.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace

from selfmoa.api.exits import Unavailable
from selfmoa.api.spec import JudgeFormat, JudgeKind, Objective
from selfmoa.engines.base import Conversation, Engine, EngineError, Generation, SamplingParams
from selfmoa.judges import formats, prompts
from selfmoa.judges.base import Judge, JudgeProgress, Verdict
from selfmoa.judges.formats import parse_score
from selfmoa.judges.prompts import RUBRICS
from selfmoa.run.records import ResponseRecord

__all__ = ["RUBRICS", "LLMJudge", "failure_reason", "parse_score"]

#: Reason of the items left unsent once coverage was lost.
NOT_SENT = "not sent: too many failed requests"
#: Most parallel single-item requests while isolating failures.
MAX_WORKERS = 16
_REASON_CHARS = 160
_REPLY_CHARS = 200

Reply = Generation | Verdict
#: Formats that judge both objectives (the guard formats judge safety only).
BOTH_OBJECTIVES = (JudgeFormat.rubric, JudgeFormat.fulfilment)
#: P(fulfilled) per (prompt, response), per engine: a safety and a helpfulness judge of one
#: model ask the same question, so it is asked once.
_FULFILMENT: weakref.WeakKeyDictionary[Engine, dict[tuple[str, str], float | None]] = (
    weakref.WeakKeyDictionary()
)


def _short(text: str, limit: int = _REASON_CHARS) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[:limit] + "..."


def failure_reason(error: EngineError) -> str:
    """`http <status>: <body>` for a request the server refused, else `error: <message>`."""
    from selfmoa.engines.openai_engine import HTTPStatusEngineError

    if isinstance(error, HTTPStatusEngineError):
        return f"http {error.status}: {_short(error.body) or 'no body'}"
    return f"error: {_short(str(error)) or type(error).__name__}"


def _top_logprobs(gen: Generation) -> Mapping[str, float] | None:
    # Engines that return the first token's top logprobs expose them here; none does yet, and
    # ShieldGemma then falls back to its Yes/No label.
    value = getattr(gen, "top_logprobs", None)
    return value if isinstance(value, Mapping) else None


class LLMJudge(Judge):
    kind = JudgeKind.llm

    def __init__(
        self,
        name: str,
        objective: Objective,
        engine: Engine,
        *,
        weight: float = 1.0,
        fmt: JudgeFormat = JudgeFormat.rubric,
        min_coverage: float = 0.9,
        max_new_tokens: int | None = None,
    ) -> None:
        if fmt not in BOTH_OBJECTIVES and objective != Objective.safety:
            raise ValueError(f"judge '{name}': format {fmt.value} judges safety only")
        super().__init__(name, objective, weight=weight, min_coverage=min_coverage)
        self.engine = engine
        self.format = fmt
        self.params = SamplingParams(
            max_new_tokens=max_new_tokens or formats.MAX_NEW_TOKENS[fmt], temperature=0.0, n=1
        )

    def score_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[float | None]:
        return [v.score for v in self.judge_batch(items, progress)]

    def judge_batch(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None = None
    ) -> list[Verdict]:
        if not items:
            return []
        if self.format == JudgeFormat.fulfilment:
            return self._fulfilment(items, progress)
        convs = [
            prompts.conversation(self.format, self.objective, it["prompt"], it["text"])
            for it in items
        ]
        return [self._verdict(reply) for reply in self._ask(convs, progress)]

    def _verdict(self, reply: Reply) -> Verdict:
        if isinstance(reply, Verdict):
            return reply
        verdict = formats.parse(self.format, reply.text, top_logprobs=_top_logprobs(reply))
        if verdict.score is None:
            return replace(verdict, reply=reply.text[:_REPLY_CHARS])
        return verdict

    def _fulfilment(
        self, items: Sequence[ResponseRecord], progress: JudgeProgress | None
    ) -> list[Verdict]:
        """P(fulfilled) per item, read once per engine for both objectives' judges."""
        seen = _FULFILMENT.setdefault(self.engine, {})
        keys = [(it["prompt"], it["text"]) for it in items]
        todo = list(dict.fromkeys(k for k in keys if k not in seen))
        # Attacks are what safety is asked about; other prompts need the question only for
        # helpfulness (their safety here is 5 whatever the answer).
        needed = {
            (it["prompt"], it["text"])
            for it in items
            if self.objective == Objective.helpfulness or it["kind"] == "harmful"
        }
        todo = [k for k in todo if k in needed]
        if todo:
            convs = [
                prompts.conversation(JudgeFormat.fulfilment, self.objective, p, r) for p, r in todo
            ]
            try:
                rows = self.engine.first_token_logprobs(convs, progress=progress)
            except EngineError as e:
                _raise_outage(e)
                reason = failure_reason(e)
                return [Verdict(None, reason) for _ in items]
            for key, row in zip(todo, rows, strict=True):
                seen[key] = formats.p_yes(row)
        return [
            formats.fulfilment_verdict(self.objective, it["kind"], seen.get(k))
            if k in needed
            else Verdict(formats.SAFE)
            for it, k in zip(items, keys, strict=True)
        ]

    # ------------------------------------------------------------------ requests

    def _ask(self, convs: Sequence[Conversation], progress: JudgeProgress | None) -> list[Reply]:
        """One reply per conversation, or an unscored verdict for a request that failed."""
        try:
            generations = self.engine.chat(convs, self.params, progress=progress)
        except EngineError as e:
            _raise_outage(e)
            return self._one_by_one(convs, progress)
        return [self._first(gens) for gens in generations]

    @staticmethod
    def _first(gens: Sequence[Generation]) -> Reply:
        return gens[0] if gens else Verdict(None, "error: the engine returned no reply")

    def _ask_one(self, conv: Conversation) -> Reply:
        try:
            (gens,) = self.engine.chat([conv], self.params)
        except EngineError as e:
            _raise_outage(e)
            return Verdict(None, failure_reason(e))
        return self._first(gens)

    def _failures_allowed(self, n: int) -> int:
        return n - math.ceil(self.min_coverage * n - 1e-9)

    def _workers(self) -> int:
        # HTTP engines take parallel callers (bounded by their own semaphore); an in-process
        # engine has no `max_concurrency` and is asked one item at a time.
        concurrency = getattr(self.engine, "max_concurrency", 1)
        return max(1, min(MAX_WORKERS, concurrency if isinstance(concurrency, int) else 1))

    def _one_by_one(
        self, convs: Sequence[Conversation], progress: JudgeProgress | None
    ) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(convs)
        allowed = self._failures_allowed(len(convs))
        queue = iter(enumerate(convs))
        failed = done = 0
        workers = self._workers()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # At most `workers` in flight, so that nothing more is sent once coverage is lost.
            in_flight: dict[Future[Reply], int] = {}

            def send(k: int) -> None:
                for i, conv in itertools.islice(queue, k):
                    in_flight[pool.submit(self._ask_one, conv)] = i

            send(workers)
            while in_flight:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    reply = replies[in_flight.pop(future)] = future.result()
                    failed += isinstance(reply, Verdict)
                    done += 1
                    if progress is not None:
                        progress(done)
                if failed <= allowed:
                    send(workers - len(in_flight))
        return [r if r is not None else Verdict(None, NOT_SENT) for r in replies]


def _raise_outage(e: EngineError) -> None:
    """A judge server that is down is an outage of the run (exit code 75), not a judge that
    could not score its items: asking it again item by item would only wait on it longer."""
    if isinstance(e, Unavailable):
        raise e
