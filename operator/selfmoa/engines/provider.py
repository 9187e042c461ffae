"""Which engine serves which model, decided once per stage from `spec.serving`.

- `transformers` (and the tiny profile): models load in-process from a local directory;
- `openai`: `spec.serving.endpoints[model]` is an OpenAI-compatible base URL;
- `vllm`: the operator's vLLM servers; their URLs reach the stage Job in the `SELFMOA_ENDPOINTS`
  environment variable (JSON: model id -> base URL).
Engines are created on first use and cached, so a stage that asks twice gets one model load.
In-process models run on `spec.serving.device`: auto takes CUDA when torch sees a GPU, else the
CPU; cuda without a GPU is a `DeviceError` (one line) before any model loads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from selfmoa.api import stage_container
from selfmoa.api.base import is_gguf_model
from selfmoa.api.spec import TINY_MODEL, AlignmentRunSpec, Device, ServingEngine
from selfmoa.engines.base import DeviceError, Engine
from selfmoa.store import Store
from selfmoa.store.model_cache import (
    HUB_PREFIX,
    is_hub_model,
    looks_like_hub_id,
    materialize,
    materialize_hub,
    parse_hub_model,
    seeded_hub,
)


def cache_dir() -> Path:
    """Where built and downloaded models are cached (`SELFMOA_CACHE`, default ~/.cache/selfmoa)."""
    return Path(os.environ.get(stage_container.CACHE_ENV) or Path.home() / ".cache" / "selfmoa")


def model_cache_volume() -> Path | None:
    """The seeded model cache volume (`SELFMOA_MODEL_CACHE`, set with `spec.modelCache`), if any:
    hub models are read from there and never downloaded."""
    raw = os.environ.get(stage_container.MODEL_CACHE_ENV)
    return Path(raw) if raw else None


def resolve_device(wanted: Device, *, cuda_available: Callable[[], bool] | None = None) -> str:
    """The torch device for `serving.device`: "cuda" or "cpu".

    `cuda_available` defaults to `torch.cuda.is_available` (torch is imported only then).
    """
    if wanted == Device.cpu:
        return "cpu"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available
    if cuda_available():
        return "cuda"
    if wanted == Device.cuda:
        raise DeviceError(
            "serving.device: cuda, but torch sees no GPU here (use auto or cpu, or give the "
            "stage a GPU)"
        )
    return "cpu"


class EngineProvider:
    def __init__(
        self,
        spec: AlignmentRunSpec,
        *,
        batch_size: int | None = None,
        shared: Store | None = None,
    ) -> None:
        self.spec = spec
        #: The run's store, where models are materialized once for every stage (None: local).
        self.shared = shared
        #: In-process generation batch: the spec's, unless the caller (a server) sizes it.
        self.batch_size = spec.serving.batch_size if batch_size is None else batch_size
        self._engines: dict[str, Engine] = {}
        self._device: str | None = None

    def device(self) -> str:
        """Where in-process models run ("cuda" or "cpu"); `DeviceError` when cuda is asked for
        and no GPU is visible."""
        if self._device is None:
            self._device = resolve_device(self.spec.serving.device)
        return self._device

    def endpoints(self) -> dict[str, str]:
        if self.spec.serving.engine == ServingEngine.openai:
            return dict(self.spec.serving.endpoints)
        if self.spec.serving.engine == ServingEngine.vllm:
            return stage_container.endpoints_from_env()
        return {}

    def model_path(self, model: str, progress: Callable[[str], None] | None = None) -> Path:
        """A local directory holding the model's weights and tokenizer.

        With a model cache volume (`spec.modelCache`), hub models are read from it in place, and
        one that isn't there is a `ModelCacheMiss` naming the command that seeds it. Else, with a
        shared store (the run's), the tiny base is built once per run and hub models are
        snapshotted into it once; every later stage (every Pod) fetches that copy instead of
        rebuilding or downloading again (`selfmoa.store.model_cache`)."""
        if model == TINY_MODEL:
            from selfmoa.tiny import ensure_base

            return ensure_base(cache_dir(), progress=progress, shared=self.shared)
        volume = model_cache_volume()
        if volume is not None and is_hub_model(model):
            repo, revision = self._hub_ref(model)
            cache = self.spec.model_cache
            return seeded_hub(
                repo,
                revision,
                volume,
                claim=cache.pvc if cache else None,
                sub_path=cache.sub_path if cache else None,
            )
        if is_gguf_model(model):
            return self._gguf_model(model, progress)
        if model.startswith("pkg://"):
            from selfmoa.models import packaged

            return packaged.locate(model)
        if model.startswith(HUB_PREFIX) or (looks_like_hub_id(model) and self._snapshots_hub()):
            return self._hub_snapshot(model, progress)
        if model.startswith("s3://"):
            return self._s3_model(model, progress)
        p = Path(model).expanduser()
        if p.exists():
            return p
        # A hub id on a local run: resolved by transformers from its own cache.
        return Path(model)

    def _s3_model(self, model: str, progress: Callable[[str], None] | None) -> Path:
        """A model in a bucket, fetched once per machine (processes on one node share the
        fetch: the cache's lock; a killed fetch never leaves a half model)."""
        from selfmoa.store import open_store_for

        def download(dest: Path, say: Callable[[str], None]) -> None:
            say(f"fetching {model}")
            open_store_for(model, self.spec.storage).download_dir("", dest)

        key = "s3-" + hashlib.sha256(model.encode()).hexdigest()[:16]
        return materialize(key, download, cache_dir=cache_dir(), progress=progress)

    def _gguf_model(self, model: str, progress: Callable[[str], None] | None) -> Path:
        """A GGUF file converted once to the Hugging Face layout and, when the run's store is
        remote, published in its model cache (every later Pod and server loads that copy in
        seconds; on one machine the local cache already serves every process)."""
        from selfmoa.models import gguf

        shared = self.shared if self._snapshots_hub() else None
        if model.startswith("s3://"):
            parent, _, name = model.rpartition("/")
            key = gguf.cache_key(model, hashlib.sha256(model.encode()).hexdigest())

            def from_bucket(dest: Path, say: Callable[[str], None]) -> None:
                from selfmoa.store import open_store_for

                say(f"fetching {model}")
                local = dest / ".download" / name
                local.parent.mkdir(parents=True)
                local.write_bytes(open_store_for(parent, self.spec.storage).read_bytes(name))
                gguf.convert(local, dest, say, source=model)
                shutil.rmtree(local.parent)

            return materialize(
                key, from_bucket, cache_dir=cache_dir(), shared=shared, progress=progress
            )
        path = gguf.locate(model)
        key = gguf.cache_key(model, gguf.file_sha256(path))
        return materialize(
            key,
            lambda dest, say: gguf.convert(path, dest, say, source=model),
            cache_dir=cache_dir(),
            shared=shared,
            progress=progress,
        )

    def _snapshots_hub(self) -> bool:
        """Hub models are snapshotted into the run's store when that store is remote (each Pod
        has its own disk); a local run keeps using the hub's own cache."""
        return self.shared is not None and not self.shared.uri.startswith("file:")

    def _hub_ref(self, model: str) -> tuple[str, str]:
        """(repo, revision) of a hub model: `policy.revision` pins the policy only (as for its
        vLLM server), so a judge's copy is the same whichever model is the policy."""
        revision = self.spec.policy.revision if model == self.spec.policy.model else None
        return parse_hub_model(model, revision)

    def _hub_snapshot(self, model: str, progress: Callable[[str], None] | None) -> Path:
        repo, revision = self._hub_ref(model)
        return materialize_hub(
            repo, revision, cache_dir=cache_dir(), shared=self.shared, progress=progress
        )

    def for_model(self, model: str) -> Engine:
        if model not in self._engines:
            endpoint = self.endpoints().get(model)
            if endpoint:
                from selfmoa.engines.openai_engine import AgentDelivery, OpenAIEngine

                replicas = self.spec.serving.replicas
                self._engines[model] = OpenAIEngine(
                    endpoint,
                    model=model,
                    # maxConcurrency is per server: the Service spreads requests over replicas.
                    max_concurrency=self.spec.serving.max_concurrency * replicas,
                    # Stored adapters the servers can't read reach every replica via its agent.
                    adapter_agents=AgentDelivery(replicas=replicas),
                )
            else:
                from selfmoa.engines.transformers_engine import TransformersEngine

                device = self.device()
                self._engines[model] = TransformersEngine(
                    self.model_path(model), model=model, batch_size=self.batch_size, device=device
                )
        return self._engines[model]

    def policy(self) -> Engine:
        return self.for_model(self.spec.policy.model)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
