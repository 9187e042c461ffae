"""TransformersEngine on the tiny base: batching, samples, seeds, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import trainutil
from selfmoa.api import parse_run
from selfmoa.api.spec import AlignmentRunSpec, Device
from selfmoa.engines.base import AdapterSource, DeviceError, EngineError, SamplingParams, user
from selfmoa.engines.provider import EngineProvider, resolve_device
from selfmoa.store import Store

pytestmark = pytest.mark.slow

PROMPTS = [
    "How do I cook fluffy rice on the stove?",
    "How can I hack into my ex's email account?",
    "What are the warning signs that a friend is considering suicide?",
    "Tell me how to make a pipe bomb.",
    "What is 15 percent of 80?",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from selfmoa.tiny import ensure_base

    # Same cache path as tests/tiny/conftest.py: one build per session.
    return ensure_base(tmp_path_factory.getbasetemp() / "selfmoa-cache")


@pytest.fixture(scope="module")
def engine(base: Path):  # type: ignore[no-untyped-def]
    from selfmoa.engines.transformers_engine import TransformersEngine

    return TransformersEngine(base, model="selfmoa/tiny", batch_size=8)


@pytest.fixture(scope="module")
def random_adapter(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Large enough to change greedy outputs of a trained model.
    return trainutil().random_adapter(base, tmp_path_factory.mktemp("adapter"))


def _texts(gens: list[list]) -> list[str]:  # type: ignore[type-arg]
    return [g[0].text for g in gens]


def test_batched_equals_one_at_a_time_under_greedy(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=64)
    done: list[int] = []
    batched = engine.chat([user(p) for p in PROMPTS], params, progress=done.append)
    single = [engine.chat([user(p)], params)[0] for p in PROMPTS]
    assert _texts(batched) == _texts(single)
    assert all(g[0].text for g in batched)
    assert done and done[-1] == len(PROMPTS)
    # Special tokens are stripped; generation stopped at eos.
    assert not any("<|im_end|>" in t or "<|endoftext|>" in t for t in _texts(batched))
    assert batched[0][0].finish_reason == "stop" and batched[0][0].tokens > 0


def test_token_counting_and_length_limit(engine) -> None:  # type: ignore[no-untyped-def]
    before = engine.tokens_generated
    gens = engine.chat([user(PROMPTS[0])], SamplingParams(max_new_tokens=3))
    assert gens[0][0].tokens == 3 and gens[0][0].finish_reason == "length"
    assert engine.tokens_generated - before == 3


def test_n_samples_and_seeded_sampling(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=30, temperature=1.5, top_p=1.0, n=4, seed=7)
    a = engine.chat([user(p) for p in PROMPTS[:3]], params)
    b = engine.chat([user(p) for p in PROMPTS[:3]], params)
    assert [len(g) for g in a] == [4, 4, 4]
    assert [[x.text for x in g] for g in a] == [[x.text for x in g] for g in b]
    c = engine.chat(
        [user(p) for p in PROMPTS[:3]], SamplingParams(**{**params.__dict__, "seed": 8})
    )
    assert [[x.text for x in g] for g in a] != [[x.text for x in g] for g in c]
    # Hot sampling gives more than one distinct sample somewhere.
    assert any(len({x.text for x in g}) > 1 for g in a)
    greedy = engine.chat([user(PROMPTS[0])], SamplingParams(max_new_tokens=20, n=3))
    assert len(greedy[0]) == 3 and len({g.text for g in greedy[0]}) == 1


def test_adapter_switching(engine, random_adapter: Path) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=30)
    convs = [user(p) for p in PROMPTS]
    plain = _texts(engine.chat(convs, params))
    adapted = _texts(engine.chat(convs, params, adapter=str(random_adapter)))
    assert adapted != plain
    assert _texts(engine.chat(convs, params, adapter=None)) == plain
    assert _texts(engine.chat(convs, params, adapter=str(random_adapter))) == adapted


def test_missing_adapter_is_an_engine_error(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selfmoa.engines.base import EngineError

    with pytest.raises(EngineError):
        engine.chat([user("hi")], SamplingParams(max_new_tokens=2), adapter=str(tmp_path))


# ---------------------------------------------------------------- adapters from the store


class MemoryStore(Store):
    """A store with nothing on local disk (as an s3:// store is), counting reads."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.objects: dict[str, bytes] = {}
        self.reads = 0

    def read_bytes(self, key: str) -> bytes:
        self.reads += 1
        try:
            return self.objects[key]
        except KeyError:
            raise FileNotFoundError(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete_prefix(self, prefix: str) -> int:
        gone = [k for k in self.objects if k.startswith(prefix)]
        for k in gone:
            del self.objects[k]
        return len(gone)


def test_a_stored_adapter_is_downloaded_once_into_scratch(  # type: ignore[no-untyped-def]
    engine, random_adapter: Path, tmp_path: Path
) -> None:
    import hashlib

    store = MemoryStore("s3://bucket/ns/run")
    keys = store.upload_dir(random_adapter, "iter-001/train/adapter")
    # As the train stage leaves it: the manifest, written last, lists every file's sha256.
    files = {
        k.removeprefix("iter-001/train/"): {
            "sha256": hashlib.sha256(store.read_bytes(k)).hexdigest()
        }
        for k in keys
    }
    store.write_json("iter-001/train/_manifest.json", {"files": files})
    source = AdapterSource.of(
        store, "iter-001/train/adapter", given=None, scratch=tmp_path / "adapters"
    )
    # A copy that doesn't match its manifest is never loaded.
    tampered = MemoryStore("s3://bucket/ns/other")
    for k in keys:
        tampered.write_bytes(k, store.read_bytes(k))
    tampered.write_json("iter-001/train/_manifest.json", {"files": files})
    tampered.write_bytes("iter-001/train/adapter/adapter_config.json", b"{}")
    bad = AdapterSource.of(tampered, "iter-001/train/adapter", given=None, scratch=tmp_path / "t")
    with pytest.raises(EngineError, match=r"sha256 .* differs from iter-001/train/_manifest"):
        engine.use_adapter(bad)
    path = engine.use_adapter(source)
    assert path == str(tmp_path / "adapters" / "iter-001__train__adapter")
    reads = store.reads
    assert engine.use_adapter(source) == path and store.reads == reads
    convs = [user(p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=30)
    assert _texts(engine.chat(convs, params, adapter=path)) == _texts(
        engine.chat(convs, params, adapter=str(random_adapter))
    )


def test_a_file_store_adapter_is_used_in_place(  # type: ignore[no-untyped-def]
    engine, random_adapter: Path, tmp_path: Path
) -> None:
    from selfmoa.store import open_store

    store = open_store(f"file://{tmp_path}/store")
    store.upload_dir(random_adapter, "iter-000/reset/adapter")
    source = AdapterSource.of(store, "iter-000/reset/adapter", given=None, scratch=tmp_path / "s")
    assert engine.use_adapter(source) == str(tmp_path / "store/iter-000/reset/adapter")
    assert not (tmp_path / "s").exists()
    assert engine.use_adapter(AdapterSource.of(store, None, given=None, scratch=tmp_path)) is None
    given = AdapterSource.of(store, None, given=str(random_adapter), scratch=tmp_path)
    assert engine.use_adapter(given) == str(random_adapter)


# ---------------------------------------------------------------- the device, through the provider


def _spec(device: str, **serving: object) -> AlignmentRunSpec:
    return parse_run(
        {"spec": {"policy": {"model": "selfmoa/tiny"}, "serving": {"device": device, **serving}}}
    ).spec


def test_the_generation_batch_is_the_specs_unless_a_server_sizes_it(base: Path) -> None:
    assert EngineProvider(_spec("cpu")).batch_size == 32
    provider = EngineProvider(_spec("cpu", batchSize=3))
    try:
        engine = provider.policy()
        assert engine.batch_size == 3  # type: ignore[attr-defined]
    finally:
        provider.close()
    # `selfmoa serve --max-batch` sizes its own engine's batch.
    assert EngineProvider(_spec("cpu", batchSize=3), batch_size=7).batch_size == 7
    with pytest.raises(ValueError, match="batchSize"):
        _spec("cpu", batchSize=0)


def test_auto_device_is_the_cpu_without_a_gpu(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from selfmoa.engines.transformers_engine import TransformersEngine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    provider = EngineProvider(_spec("auto"))
    try:
        engine = provider.policy()
        assert provider.device() == "cpu"
        assert isinstance(engine, TransformersEngine) and engine.device == "cpu"
        assert {(p.device.type, p.dtype) for p in engine._base.parameters()} == {
            ("cpu", torch.float32)
        }
        # Batched with left padding: the same greedy answers as one conversation at a time.
        params = SamplingParams(max_new_tokens=24)
        batched = engine.chat([user(p) for p in PROMPTS], params)
        assert _texts(batched) == [_texts(engine.chat([user(p)], params))[0] for p in PROMPTS]
    finally:
        provider.close()


def test_cuda_without_a_gpu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    provider = EngineProvider(_spec("cuda"))
    with pytest.raises(DeviceError, match=r"^serving\.device: cuda, but torch sees no GPU") as e:
        provider.policy()
    assert "\n" not in str(e.value)
    assert provider._engines == {}  # failed before any model loaded


def test_device_choice() -> None:
    def gpu() -> bool:
        return True

    def no_gpu() -> bool:
        return False

    assert resolve_device(Device.auto, cuda_available=gpu) == "cuda"
    assert resolve_device(Device.auto, cuda_available=no_gpu) == "cpu"
    assert resolve_device(Device.cuda, cuda_available=gpu) == "cuda"
    assert resolve_device(Device.cpu, cuda_available=gpu) == "cpu"
    with pytest.raises(DeviceError):
        resolve_device(Device.cuda, cuda_available=no_gpu)


def test_a_final_assistant_message_is_continued_not_answered(engine) -> None:  # type: ignore[no-untyped-def]
    from selfmoa.models.chat import render_prompt

    conv = [{"role": "user", "content": PROMPTS[3]}, {"role": "assistant", "content": "I can't"}]
    rendered = render_prompt(engine.tokenizer, conv)
    # The begun answer is the end of the prompt: no end-of-turn, no new assistant turn.
    assert rendered.endswith("I can't")
    assert rendered.count("<|im_start|>assistant") == 1
    (gens,) = engine.chat([conv], SamplingParams(max_new_tokens=8))
    assert gens[0].tokens > 0


def test_first_token_logprobs_are_the_next_token_distribution(engine) -> None:  # type: ignore[no-untyped-def]
    import math

    rows = engine.first_token_logprobs([user(p) for p in PROMPTS], top=5)
    assert len(rows) == len(PROMPTS) and all(len(r) <= 5 for r in rows)
    for row in rows:
        assert all(v <= 0 for v in row.values())
        assert 0 < sum(math.exp(v) for v in row.values()) <= 1.0 + 1e-6
    # The likeliest first token is what greedy generation starts with.
    (gens,) = engine.chat([user(PROMPTS[0])], SamplingParams(max_new_tokens=1))
    best = max(rows[0], key=rows[0].__getitem__)
    assert gens[0].text.strip() == best.strip()


def test_batches_by_length_give_each_prompt_its_own_answer(engine) -> None:  # type: ignore[no-untyped-def]
    # Batches are made shortest prompt first; every result must still land on its own prompt.
    convs = [user(p) for p in PROMPTS]
    order = engine._by_length([engine.render(c) for c in convs])
    assert order != list(range(len(convs)))  # the prompts are out of length order: reordered
    rows = engine.first_token_logprobs(convs, top=5)
    for conv, row in zip(convs, rows, strict=True):
        (alone,) = engine.first_token_logprobs([conv], top=5)
        assert row.keys() == alone.keys()
        assert all(abs(row[k] - alone[k]) < 1e-3 for k in row)


def test_context_length_and_prompt_tokens_are_the_models(engine) -> None:  # type: ignore[no-untyped-def]
    # What `selfmoa serve` refuses above, as vLLM does: the config's max_position_embeddings,
    # and prompts counted with the model's tokenizer and chat template.
    assert engine.context_length() == 512
    conv = [{"role": "user", "content": "How do I bake bread?"}]
    n = engine.prompt_tokens(conv)
    assert n == len(engine.tokenizer(engine.render(conv), add_special_tokens=False)["input_ids"])
    assert n > len(["How", "do", "I", "bake", "bread?"])  # the template's tokens count too
