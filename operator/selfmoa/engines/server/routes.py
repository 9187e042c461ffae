"""The HTTP side of `selfmoa serve`: routes, replies and injected faults (stdlib `http.server`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol

from selfmoa.engines.base import Conversation, Generation, SamplingParams
from selfmoa.engines.server import protocol
from selfmoa.engines.server.adapters import AdapterRegistry
from selfmoa.engines.server.protocol import ApiError

#: What a faulty server does with one generation request.
#: error: HTTP `FaultPlan.status` (500); rate_limit: HTTP 429 with `Retry-After: 0`;
#: slow: sleep `FaultPlan.sleep_s` before answering (past a client's timeout);
#: garbage: HTTP 200 with a body that isn't JSON; no_choices: HTTP 200 JSON without `choices`;
#: bad_request: HTTP 400.
Fault = Literal["error", "rate_limit", "slow", "garbage", "no_choices", "bad_request"]


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


class Owner(Protocol):
    """What the routes ask of the server that owns them (`OpenAIServer`): named here, so the
    routes don't import the server that imports them."""

    model_name: str
    faults: FaultPlan
    adapter_registry: AdapterRegistry

    def models_list(self) -> dict[str, Any]: ...
    def next_fault(self) -> Fault | None: ...
    def sleep_fault(self) -> None: ...
    def resolve_model(self, body: dict[str, Any]) -> str | None: ...
    def check_context(self, conversations: list[Conversation], params: SamplingParams) -> None: ...
    def submit(
        self, conversations: list[Conversation], params: SamplingParams, adapter: str | None
    ) -> list[list[Generation]]: ...


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog (5) drops connections when dozens of clients connect at once.
    request_queue_size = 512
    owner: Owner


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

    def _error(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        kind: str | None = None,
    ) -> None:
        self._json(status, protocol.error_body(status, message, kind), headers)

    def _text(self, text: str) -> None:
        # vLLM answers the adapter routes with plain text on success.
        self._send(200, text.encode(), "text/plain; charset=utf-8")

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
        adapters = self.server.owner.adapter_registry
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ApiError("the request body must be a JSON object")
            if self.path == "/v1/chat/completions":
                self._generate(body, chat=True)
            elif self.path == "/v1/completions":
                self._generate(body, chat=False)
            elif self.path == "/v1/load_lora_adapter":
                self._text(adapters.load(body))
            elif self.path == "/v1/unload_lora_adapter":
                self._text(adapters.unload(body))
            else:
                self._error(404, f"no route POST {self.path}")
        except json.JSONDecodeError as e:
            self._error(400, f"the request body is not JSON: {e}")
        except ApiError as e:
            self._error(int(e.status), str(e), kind=e.kind)

    def _injected(self, fault: Fault | None) -> bool:
        """Answer a fault that replaces the reply; True when the request is done."""
        owner = self.server.owner
        if fault == "error":
            self._error(owner.faults.status, "injected server error")
        elif fault == "rate_limit":
            self._error(429, "injected rate limit", {"Retry-After": "0"})
        elif fault == "bad_request":
            self._error(400, "injected bad request")
        elif fault == "garbage":
            self._send(200, b"<html>upstream exploded</html>", "text/html")
        else:
            if fault == "slow":
                owner.sleep_fault()  # then answer normally, most likely to nobody
            return False
        return True

    def _generate(self, body: dict[str, Any], *, chat: bool) -> None:
        owner = self.server.owner
        fault = owner.next_fault()
        if self._injected(fault):
            return
        params = protocol.sampling(body)
        adapter = owner.resolve_model(body)
        conversations = protocol.conversations(body, chat=chat)
        owner.check_context(conversations, params)
        try:
            results = owner.submit(conversations, params, adapter)
        except RuntimeError as e:
            self._error(500, str(e))
            return
        model = body.get("model") or owner.model_name
        reply = protocol.reply_head(chat=chat, model=model, prompts=conversations, results=results)
        if fault != "no_choices":
            reply["choices"] = protocol.choices(results, chat=chat, n=params.n)
        self._json(200, reply)
