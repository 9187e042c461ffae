"""vLLM's OpenAI server command, played by `selfmoa serve` (test tiers only).

vLLM needs a GPU and can't be installed here. The operator's serving Pods run
`python3 -m vllm.entrypoints.openai.api_server ARGS`; in the node tier's stand-in image
(`selfmoa/vllm-standin`, the worker image plus this package) that command is `selfmoa serve`,
the project's CPU server that speaks the same OpenAI subset and refuses what vLLM refuses, with
the flags it shares with vLLM. The kubelet player of tests/cluster makes the same substitution
with `serve_command`. Nothing else is rewritten.
"""

from __future__ import annotations

import os
import sys

#: vLLM flags `selfmoa serve` keeps (with their value); every other flag is dropped and logged.
SERVE_KEEPS = ("--model", "--served-model-name", "--max-model-len")
#: vLLM flags that take no value (so dropping them doesn't eat the next flag).
VLLM_BOOL_FLAGS = frozenset({"--enable-lora", "--trust-remote-code", "--enforce-eager"})
#: vLLM's default port.
DEFAULT_PORT = "8000"


def serve_command(args: list[str], host: str) -> tuple[list[str], list[str]]:
    """(`selfmoa serve` with what it shares of vLLM's `args`, on `host` and vLLM's port; the
    vLLM-only args it drops)."""
    port = DEFAULT_PORT
    keep: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        takes_value = flag not in VLLM_BOOL_FLAGS and not inline and i + 1 < len(args)
        value = inline or (args[i + 1] if takes_value else "")
        step = 2 if takes_value else 1
        if flag in SERVE_KEEPS:
            keep += [flag, value]
        elif flag == "--port":
            port = value
        elif flag != "--host":
            dropped += args[i : i + step]
        i += step
    return ["selfmoa", "serve", *keep, "--host", host, "--port", port], dropped


def main() -> None:
    command, dropped = serve_command(sys.argv[1:], host="0.0.0.0")
    if dropped:
        print(f"vllm stand-in: vLLM flags not used by selfmoa serve: {dropped}", flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
