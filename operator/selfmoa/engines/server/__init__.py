"""An OpenAI-compatible HTTP server backed by any `Engine` (`selfmoa serve`).

What it is for: the tests and benchmarks of `OpenAIEngine` (a real server on 127.0.0.1, with
injectable faults), and clusters without GPUs, where one pod serving the tiny or a small model
over HTTP replaces vLLM. It speaks the subset of the API the stages use: `GET /health`,
`GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`, and vLLM's
`POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter` (an adapter name maps to a local
directory that is passed to the engine as `adapter=`; paths vLLM can't read, such as `s3://`
URIs, are refused the way vLLM refuses them: see `adapters`).

The parts: `protocol` (the wire format), `batching` (micro-batching in front of the
engine), `adapters` (runtime LoRA loading), `routes` (routes and injected faults);
this module wires them together and holds `selfmoa serve`'s entry point.

Stdlib only (`http.server`, `json`, `queue`): importing this module must stay cheap for `--help`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from http import HTTPStatus
from types import FrameType
from typing import Any

from selfmoa.api.exits import Parser
from selfmoa.engines.base import Conversation, Engine, Generation, SamplingParams
from selfmoa.engines.server.adapters import AdapterRegistry
from selfmoa.engines.server.batching import MicroBatcher, ServerStats
from selfmoa.engines.server.protocol import MAX_N, ApiError
from selfmoa.engines.server.routes import Fault, FaultPlan, _Handler, _HTTPServer

__all__ = ["MAX_N", "Fault", "FaultPlan", "OpenAIServer", "ServerStats", "build_parser", "main"]


class OpenAIServer:
    """Serves `engine` over the OpenAI API on `host:port` (port 0: any free port)."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        model_name: str | None = None,
        faults: FaultPlan | None = None,
        max_model_len: int | None = None,
    ) -> None:
        self.engine = engine
        #: Prompt plus completion tokens a request may ask for (vLLM's --max-model-len; None:
        #: the model's own context length, as vLLM defaults it, or no limit when unknown).
        self.max_model_len = max_model_len or engine.context_length()
        self.host = host
        self.port = port
        self.model_name = model_name or engine.model
        self.faults = faults or FaultPlan()
        self.stats = ServerStats()
        self.adapter_registry = AdapterRegistry()
        self._lock = threading.Lock()
        self._batcher = MicroBatcher(
            engine,
            max_batch=max_batch,
            max_wait=max_wait_ms / 1000.0,
            stats=self.stats,
            stats_lock=self._lock,
        )
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []

    @property
    def max_batch(self) -> int:
        return self._batcher.max_batch

    @property
    def adapters(self) -> dict[str, str]:
        """Served adapters: model name -> local directory (a copy)."""
        return self.adapter_registry.snapshot()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        """Bind, start serving in background threads, and return the base URL."""
        if self._httpd is not None:
            return self.url
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._threads = [
            # A short poll interval makes stop() quick (shutdown waits for the next poll).
            threading.Thread(
                target=httpd.serve_forever, args=(0.05,), name="openai-server-http", daemon=True
            ),
            self._batcher.thread(),
        ]
        for t in self._threads:
            t.start()
        return self.url

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a "slow" fault
        httpd.shutdown()
        httpd.server_close()
        self._batcher.close()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        self._batcher.fail_pending("server stopped")

    def __enter__(self) -> OpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_signal(self) -> None:
        """Block until SIGINT/SIGTERM (for `selfmoa serve` in a pod or a terminal)."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        while not stop.wait(1.0):
            pass

    # ------------------------------------------------------------------ what the routes call

    def check_context(self, conversations: list[Conversation], params: SamplingParams) -> None:
        """Refuse, as vLLM does (HTTP 400, its wording), a request whose prompt and
        `max_tokens` together exceed the context length: the failure a stage that asks for too
        much meets on a real server must be met here too."""
        limit = self.max_model_len
        if limit is None:
            return
        for conv in conversations:
            prompt = self.engine.prompt_tokens(conv)
            asked = prompt + params.max_new_tokens
            if asked > limit:
                raise ApiError(
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {asked} tokens ({prompt} in the messages, "
                    f"{params.max_new_tokens} in the completion). Please reduce the length of "
                    "the messages or completion."
                )

    def submit(
        self, conversations: list[Conversation], params: SamplingParams, adapter: str | None
    ) -> list[list[Generation]]:
        """Queue conversations for the batch worker and wait for their generations."""
        return self._batcher.submit(conversations, params, adapter)

    def next_fault(self) -> Fault | None:
        with self._lock:
            index = self.stats.requests
            self.stats.requests += 1
        return self.faults.fault_for(index)

    def sleep_fault(self) -> None:
        self._stopping.wait(self.faults.sleep_s)

    def resolve_model(self, body: dict[str, Any]) -> str | None:
        """The adapter directory a request's `model` selects (None: the base model)."""
        name = body.get("model")
        if name is None or name == "" or name == self.model_name:
            return None
        path = self.adapter_registry.path(str(name))
        if path is None:
            raise ApiError(f"The model `{name}` does not exist.", HTTPStatus.NOT_FOUND)
        return path

    def load_adapter(self, body: dict[str, Any]) -> str:
        return self.adapter_registry.load(body)

    def unload_adapter(self, body: dict[str, Any]) -> str:
        return self.adapter_registry.unload(body)

    def models_list(self) -> dict[str, Any]:
        created = int(time.time())

        def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
            return {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "selfmoa",
                "root": root,
                "parent": parent,
            }

        data = [card(self.model_name, self.model_name, None)]
        data += [card(n, p, self.model_name) for n, p in sorted(self.adapters.items())]
        return {"object": "list", "data": data}


# ---------------------------------------------------------------- `selfmoa serve`


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="selfmoa serve",
        description=(
            "Serve a model over an OpenAI-compatible API with the in-process transformers "
            "engine and micro-batching (a CPU stand-in for vLLM)."
        ),
    )
    p.add_argument("--model", required=True, help="hub id, local path, s3:// URI, or selfmoa/tiny")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-batch", type=int, default=32, help="conversations per engine call")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (ms)"
    )
    p.add_argument(
        "--served-model-name", default=None, help="model id clients use (default --model)"
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help=(
            "prompt plus completion tokens a request may ask for; more is refused with HTTP 400 "
            "as vLLM refuses it (default: the model's context length)"
        ),
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports only now, so that `--help` never loads torch.
    from selfmoa.api import stage_container
    from selfmoa.api.spec import AlignmentRunSpec, PolicySpec
    from selfmoa.engines.base import EngineError
    from selfmoa.engines.provider import EngineProvider
    from selfmoa.store.base import StoreError

    spec = AlignmentRunSpec(policy=PolicySpec(model=args.model))
    provider = EngineProvider(spec, batch_size=args.max_batch)
    try:
        engine = provider.for_model(args.model)
    except (EngineError, StoreError) as e:
        # A model that can't be had (not in the cache volume, no such path) is one line, in the
        # log and in the container's termination message.
        line = f"selfmoa serve: error: {e}".splitlines()[0]
        print(line, file=sys.stderr)
        stage_container.write_termination_message(line)
        provider.close()
        return 1
    server = OpenAIServer(
        engine,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        model_name=args.served_model_name,
        max_model_len=args.max_model_len,
    )
    try:
        with server:
            print(f"serving {server.model_name} at {server.url}", flush=True)
            server.serve_until_signal()
    finally:
        provider.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
