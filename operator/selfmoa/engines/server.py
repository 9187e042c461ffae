"""An OpenAI-compatible HTTP server backed by any `Engine` (`selfmoa serve`).

What it is for: the tests and benchmarks of `OpenAIEngine` (a real server on 127.0.0.1, with
injectable faults), and clusters without GPUs, where one pod serving the tiny or a small model
over HTTP replaces vLLM. It speaks the subset of the API the stages use: `GET /health`,
`GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`, and vLLM's
`POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter` (an adapter name maps to a local
directory that is passed to the engine as `adapter=`).

Why micro-batching: an in-process engine is far faster per sequence on a batch than one sequence
at a time (the same reason vLLM batches). HTTP handler threads only parse and enqueue; a single
worker thread takes up to `max_batch` queued conversations, waiting at most `max_wait_ms` for
more after the first, groups them by identical sampling parameters and adapter, and calls
`engine.chat` once per group. One worker also means the engine is never called concurrently.

Stdlib only (`http.server`, `json`, `queue`): importing this module must stay cheap for `--help`.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal

from selfmoa.engines.base import Conversation, Engine, Generation, Message, SamplingParams

#: What a faulty server does with one generation request.
#: error: HTTP `FaultPlan.status` (500); rate_limit: HTTP 429 with `Retry-After: 0`;
#: slow: sleep `FaultPlan.sleep_s` before answering (past a client's timeout);
#: garbage: HTTP 200 with a body that isn't JSON; no_choices: HTTP 200 JSON without `choices`;
#: bad_request: HTTP 400.
Fault = Literal["error", "rate_limit", "slow", "garbage", "no_choices", "bad_request"]

MAX_N = 128


@dataclass(frozen=True)
class FaultPlan:
    """Faults for generation requests, by arrival order (health, models, adapters are spared)."""

    #: The fault for each of the first `len(first)` generation requests (None: serve it).
    first: Sequence[Fault | None] = ()
    #: The fault for every later request (None: serve normally).
    then: Fault | None = None
    status: int = 500
    sleep_s: float = 1.0

    def fault_for(self, index: int) -> Fault | None:
        return self.first[index] if index < len(self.first) else self.then


@dataclass
class ServerStats:
    #: Generation requests received (faulty ones included).
    requests: int = 0
    #: Calls of `engine.chat`, and the number of conversations in each.
    engine_calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class _BadRequest(Exception):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    """Conversations from one HTTP request, waiting for the batch worker."""

    conversations: list[Conversation]
    params: SamplingParams
    adapter: str | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[list[Generation]] | None = None
    error: str | None = None


# ---------------------------------------------------------------- request parsing


def _content(raw: Any) -> str:
    # OpenAI allows content as a list of parts; only text parts mean anything to our engines.
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        parts = [p.get("text", "") for p in raw if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(raw):
            return "".join(str(p) for p in parts)
    raise _BadRequest("messages[].content must be a string or a list of text parts")


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise _BadRequest("'messages' must be a non-empty list")
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest("each message needs a string 'role' and a 'content'")
        out.append({"role": m["role"], "content": _content(m.get("content"))})
    return out


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _BadRequest(f"'{key}' must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _sampling(body: dict[str, Any]) -> SamplingParams:
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _BadRequest("'stop' must be a string or a list of strings")
    if body.get("stream"):
        raise _BadRequest("streaming is not supported by this server")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return SamplingParams(
        max_new_tokens=int(_number({"max_tokens": max_tokens}, "max_tokens", 64, 1, 1 << 20)),
        # OpenAI's defaults: temperature 1, top_p 1. The seed defaults to 0 (not random) so that
        # unseeded requests stay reproducible and batch together.
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        n=int(_number(body, "n", 1, 1, MAX_N)),
        seed=int(_number(body, "seed", 0, -(1 << 63), (1 << 63) - 1)),
        stop=stops,
    )


# ---------------------------------------------------------------- the server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog (5) drops connections when dozens of clients connect at once.
    request_queue_size = 512
    owner: OpenAIServer


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
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.host = host
        self.port = port
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.model_name = model_name or engine.model
        self.faults = faults or FaultPlan()
        self.stats = ServerStats()
        #: Served adapters: model name -> local directory.
        self.adapters: dict[str, str] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []

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
            threading.Thread(target=self._worker, name="openai-server-batcher", daemon=True),
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
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        # Requests still queued get an error rather than hanging their handler threads.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = "server stopped"
                job.done.set()

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

    # ------------------------------------------------------------------ batching

    def submit(
        self, conversations: list[Conversation], params: SamplingParams, adapter: str | None
    ) -> list[list[Generation]]:
        """Queue conversations for the batch worker and wait for their generations."""
        job = _Job(conversations, params, adapter)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None or job.result is None:
            raise RuntimeError(job.error or "no result")
        return job.result

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        batch, size = [first], len(first.conversations)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            size += len(job.conversations)
        return batch, False

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take_batch(first)
            groups: dict[tuple[SamplingParams, str | None], list[_Job]] = {}
            for job in batch:
                groups.setdefault((job.params, job.adapter), []).append(job)
            for (params, adapter), jobs in groups.items():
                self._run_group(params, adapter, jobs)
            if stop:
                return

    def _run_group(self, params: SamplingParams, adapter: str | None, jobs: list[_Job]) -> None:
        conversations = [c for job in jobs for c in job.conversations]
        try:
            results = self.engine.chat(conversations, params, adapter=adapter)
            if len(results) != len(conversations):
                raise RuntimeError(
                    f"engine returned {len(results)} results for {len(conversations)} conversations"
                )
        except Exception as e:  # any engine failure becomes an HTTP 500 for these requests
            for job in jobs:
                job.error = f"{type(e).__name__}: {e}"
                job.done.set()
            return
        finally:
            with self._lock:
                self.stats.engine_calls += 1
                self.stats.batch_sizes.append(len(conversations))
        i = 0
        for job in jobs:
            job.result = results[i : i + len(job.conversations)]
            i += len(job.conversations)
            job.done.set()

    # ------------------------------------------------------------------ API

    def next_fault(self) -> Fault | None:
        with self._lock:
            index = self.stats.requests
            self.stats.requests += 1
        return self.faults.fault_for(index)

    def resolve_model(self, body: dict[str, Any]) -> str | None:
        """The adapter directory a request's `model` selects (None: the base model)."""
        name = body.get("model")
        if name is None or name == "" or name == self.model_name:
            return None
        with self._lock:
            path = self.adapters.get(str(name))
        if path is None:
            raise _BadRequest(f"The model `{name}` does not exist.", HTTPStatus.NOT_FOUND)
        return path

    def models_list(self) -> dict[str, Any]:
        created = int(time.time())
        data = [
            {
                "id": self.model_name,
                "object": "model",
                "created": created,
                "owned_by": "selfmoa",
                "root": self.model_name,
                "parent": None,
            }
        ]
        with self._lock:
            adapters = sorted(self.adapters.items())
        data += [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "selfmoa",
                "root": path,
                "parent": self.model_name,
            }
            for name, path in adapters
        ]
        return {"object": "list", "data": data}

    def load_adapter(self, body: dict[str, Any]) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise _BadRequest("'lora_name' and 'lora_path' must be non-empty strings")
        with self._lock:
            if name in self.adapters:
                # vLLM's wording; clients treat "already" as success.
                raise _BadRequest(f"The lora adapter '{name}' has already been loaded.")
            self.adapters[name] = path
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_adapter(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        with self._lock:
            if not isinstance(name, str) or name not in self.adapters:
                raise _BadRequest(
                    f"The lora adapter '{name}' cannot be found.", HTTPStatus.NOT_FOUND
                )
            del self.adapters[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def sleep_fault(self) -> None:
        self._stopping.wait(self.faults.sleep_s)


def _usage(prompts: Sequence[Conversation], results: list[list[Generation]]) -> dict[str, int]:
    # The engine reports generated tokens; prompt tokens are a whitespace estimate.
    prompt = sum(len(m["content"].split()) for c in prompts for m in c)
    completion = sum(g.tokens for gens in results for g in gens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add
    # ~40 ms to every keep-alive reply.
    disable_nagle_algorithm = True
    server: _HTTPServer
    #: An idle keep-alive connection's thread ends after this many seconds.
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        return None  # quiet: tests and benchmarks make thousands of requests

    # ------------------------------------------------------------------ replies

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout passed during a "slow" fault).
            self.close_connection = True

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(
            status, "InternalServerError"
        )
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path == "/health":
            self._json(200, {"status": "ok", "model": owner.model_name})
        elif self.path == "/v1/models":
            self._json(200, owner.models_list())
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        owner = self.server.owner
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise _BadRequest("the request body must be a JSON object")
            if self.path == "/v1/chat/completions":
                self._generate(body, chat=True)
            elif self.path == "/v1/completions":
                self._generate(body, chat=False)
            elif self.path == "/v1/load_lora_adapter":
                self._send(200, owner.load_adapter(body).encode(), "text/plain; charset=utf-8")
            elif self.path == "/v1/unload_lora_adapter":
                self._send(200, owner.unload_adapter(body).encode(), "text/plain; charset=utf-8")
            else:
                self._error(404, f"no route POST {self.path}")
        except json.JSONDecodeError as e:
            self._error(400, f"the request body is not JSON: {e}")
        except _BadRequest as e:
            self._error(int(e.status), str(e))

    def _generate(self, body: dict[str, Any], *, chat: bool) -> None:
        owner = self.server.owner
        fault = owner.next_fault()
        if fault == "error":
            self._error(owner.faults.status, "injected server error")
            return
        if fault == "rate_limit":
            self._error(429, "injected rate limit", {"Retry-After": "0"})
            return
        if fault == "bad_request":
            self._error(400, "injected bad request")
            return
        if fault == "garbage":
            self._send(200, b"<html>upstream exploded</html>", "text/html")
            return
        if fault == "slow":
            owner.sleep_fault()  # then answer normally, most likely to nobody

        params = _sampling(body)
        adapter = owner.resolve_model(body)
        if chat:
            conversations: list[Conversation] = [_messages(body.get("messages"))]
        else:
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if (
                not isinstance(prompts, list)
                or not prompts
                or not all(isinstance(p, str) for p in prompts)
            ):
                raise _BadRequest("'prompt' must be a string or a non-empty list of strings")
            # The Engine interface is chat-only: a raw prompt becomes one user turn.
            conversations = [[{"role": "user", "content": p}] for p in prompts]
        try:
            results = owner.submit(conversations, params, adapter)
        except RuntimeError as e:
            self._error(500, str(e))
            return

        reply: dict[str, Any] = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or owner.model_name,
            "usage": _usage(conversations, results),
        }
        if fault == "no_choices":
            self._json(200, reply)
            return
        if chat:
            reply["choices"] = [
                {
                    "index": j,
                    "message": {"role": "assistant", "content": g.text},
                    "finish_reason": g.finish_reason,
                }
                for j, g in enumerate(results[0])
            ]
        else:
            reply["choices"] = [
                {
                    "index": i * params.n + j,
                    "text": g.text,
                    "finish_reason": g.finish_reason,
                    "logprobs": None,
                }
                for i, gens in enumerate(results)
                for j, g in enumerate(gens)
            ]
        self._json(200, reply)


# ---------------------------------------------------------------- `selfmoa serve`


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports only now, so that `--help` never loads torch.
    from selfmoa.api.spec import AlignmentRunSpec, PolicySpec
    from selfmoa.engines.provider import EngineProvider

    spec = AlignmentRunSpec(policy=PolicySpec(model=args.model))
    provider = EngineProvider(spec, batch_size=args.max_batch)
    engine = provider.for_model(args.model)
    server = OpenAIServer(
        engine,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        model_name=args.served_model_name,
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
