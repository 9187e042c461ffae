"""LoRA adapters served by `selfmoa serve`, loaded and unloaded at runtime the way vLLM does it.

Mirrors vLLM v0.10 (`OpenAIServingModels` and the LoRA worker manager), the pinned serving
image, so that whatever works against `selfmoa serve` works against vLLM:

- `lora_path` must name a local adapter directory (one with `adapter_config.json`). vLLM makes
  an absolute path or `~` absolute, a relative path absolute if it exists, and otherwise tries
  it as a Hugging Face repo id; an `s3://` URI is none of these, so vLLM answers **404**
  `NotFoundError` "Loading lora NAME failed: No adapter found for PATH". This server does not
  download from the Hub: a path with no local adapter gets that same 404.
- Loading a name that is already loaded answers **400** `InvalidUserInput` "The lora adapter
  'NAME' has already been loaded." whatever the path (the name is checked first); nothing
  changes, so a client may treat the reply as success.
- A missing `lora_name` / `lora_path` is a 400 `InvalidUserInput`; unloading a name that isn't
  loaded is a 404 `NotFoundError`.
"""

from __future__ import annotations

import os
import threading
from http import HTTPStatus
from typing import Any

from selfmoa.engines.server.protocol import ApiError

ADAPTER_CONFIG = "adapter_config.json"


def local_adapter_dir(path: str) -> str | None:
    """The absolute directory vLLM would read `path` from, if an adapter is there."""
    if os.path.isabs(path):
        resolved = path
    elif path.startswith("~"):
        resolved = os.path.expanduser(path)
    elif os.path.exists(path):
        resolved = os.path.abspath(path)
    else:
        return None  # vLLM would try the Hub here; this server never downloads
    return resolved if os.path.isfile(os.path.join(resolved, ADAPTER_CONFIG)) else None


class AdapterRegistry:
    """Adapter name -> local directory, safe to use from the HTTP handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, str] = {}

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._paths)

    def path(self, name: str) -> str | None:
        with self._lock:
            return self._paths.get(name)

    def load(self, body: dict[str, Any]) -> str:
        """`/v1/load_lora_adapter`: the success text, or an `ApiError` as vLLM answers it."""
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ApiError(
                "Both 'lora_name' and 'lora_path' must be provided.", kind="InvalidUserInput"
            )
        with self._lock:
            if name in self._paths:
                raise ApiError(
                    f"The lora adapter '{name}' has already been loaded.", kind="InvalidUserInput"
                )
            local = local_adapter_dir(path)
            if local is None:
                raise ApiError(
                    f"Loading lora {name} failed: No adapter found for {path}",
                    HTTPStatus.NOT_FOUND,
                    "NotFoundError",
                )
            self._paths[name] = local
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict[str, Any]) -> str:
        """`/v1/unload_lora_adapter`: the success text, or an `ApiError` as vLLM answers it."""
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise ApiError(
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                kind="InvalidUserInput",
            )
        with self._lock:
            if name not in self._paths:
                raise ApiError(
                    f"The lora adapter '{name}' cannot be found.",
                    HTTPStatus.NOT_FOUND,
                    "NotFoundError",
                )
            del self._paths[name]
        return f"Success: LoRA adapter '{name}' removed successfully."
