"""The `python -m llama_cpp.server` command line for a GGUF file (the `llama_cpp` backend of
`tunesmith serve`, chosen when MODEL is a .gguf file).

llama-cpp-python's server is OpenAI-compatible: /v1/models lists `--model_alias`, and
/v1/chat/completions renders prompts with the GGUF's own chat template
(`tokenizer.chat_template`, which `tunesmith export gguf` checks renders like the merged
tokenizer's) and stops on the GGUF's eos. It has no /health route: readiness is /v1/models
listing the served name. `--logits_all true` (the server's default, stated here so it
stays) keeps /v1/completions with `echo` + `logprobs` working for prompt log-probabilities;
`--n_ctx` defaults to the model's trained context, capped at MAX_CTX (llama.cpp allocates
the KV cache, and with logits_all a logits buffer, for the whole context up front).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluator.serving.errors import ServeError

MAX_CTX = 4096


def check_gguf_file(path: Path | str) -> Path:
    """The absolute .gguf file; ServeError(model_not_found) unless it is one."""
    file = Path(path).expanduser().resolve()
    if not file.is_file() or file.suffix != ".gguf":
        raise ServeError("model_not_found", f"{file} is not a .gguf file", field="model_dir")
    with open(file, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ServeError("model_not_found", f"{file} does not start with the GGUF magic",
                             field="model_dir")
    return file


def is_gguf(path: Path | str) -> bool:
    return Path(path).suffix == ".gguf" and Path(path).is_file()


def find_llama_cpp_server() -> bool:
    """Whether llama-cpp-python and its server extra are importable here."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("llama_cpp", "sse_starlette", "starlette_context",
                            "pydantic_settings"))


def trained_context(gguf: Path) -> int | None:
    """`<arch>.context_length` from the GGUF's metadata, or None."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf))
        arch_field = reader.fields.get("general.architecture")
        if arch_field is None:
            return None
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[field.data[0]][0]) if field is not None else None
    except Exception:  # noqa: BLE001 - an unreadable header is llama.cpp's to report
        return None


def llama_cpp_command(gguf: Path, *, host: str, port: int, served_name: str,
                      n_ctx: int | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """`python -m llama_cpp.server` serving `gguf` under `served_name` on host:port."""
    if not find_llama_cpp_server():
        raise ServeError("llama_cpp_not_found", "serving a .gguf needs llama-cpp-python with "
                         "its server extra: pip install 'llama-cpp-python[server]==0.3.36'",
                         field="backend")
    if n_ctx is None:
        n_ctx = min(trained_context(gguf) or 2048, MAX_CTX)
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--model_alias", served_name, "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx), "--logits_all", "true", "--verbose", "false",
            *extra_args]
