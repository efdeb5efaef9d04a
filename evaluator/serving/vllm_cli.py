"""The `vllm serve` command line for a merged model or a base model plus a LoRA adapter.

Three flags matter beyond the obvious ones. `--served-model-name` makes the name clients use
explicit (vLLM's default is the folder path). `--generation-config vllm` keeps vLLM's own
sampling defaults: its default (`auto`) silently applies the model folder's
generation_config.json (temperature, top_p, ...) to every request that does not set them,
so the same request would sample differently here than on the transformers backend.
`--max-lora-rank` must cover the adapter's rank: vLLM's default of 16 rejects larger
adapters at load time, and it accepts only a fixed set of values.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluator.serving.errors import ServeError
from evaluator.serving.inputs import adapter_rank

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks


def max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that fits an adapter of `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ServeError("adapter_rank_too_large", f"the adapter's LoRA rank {rank} is above "
                     f"{VLLM_LORA_RANKS[-1]}, the largest vLLM serves; use --backend "
                     "transformers or serve the merged model", field="adapter")


def find_vllm(vllm_bin: str | None = None) -> str | None:
    """The `vllm` executable: `vllm_bin` if given, the one installed beside this Python (the
    `gpu` extra), else one on PATH (a separate environment); None when there is none."""
    if vllm_bin:
        found = shutil.which(vllm_bin)
        if found is None:
            raise ServeError("vllm_not_found", f"{vllm_bin} is not an executable",
                             field="vllm_bin")
        return found
    beside = Path(sys.executable).parent / "vllm"
    if importlib.util.find_spec("vllm") is not None and beside.is_file():
        return str(beside)
    return shutil.which("vllm")


def vllm_command(model_dir: Path, *, host: str, port: int, served_name: str,
                 adapter: Path | None = None, vllm_bin: str = "vllm", dtype: str = "auto",
                 extra_args: Sequence[str] = (), tool_parser: str | None = None) -> list[str]:
    """`vllm serve` for `model_dir` under `served_name`; with an adapter, the base is served
    under its folder's name and the adapter under `served_name` (requests naming it get base
    + adapter), with `--max-lora-rank` from the adapter's own rank. With `tool_parser`,
    requests with `tool_choice: auto` get the model's calls in `tool_calls`
    (`--enable-auto-tool-choice --tool-call-parser`; vLLM answers them 400 without)."""
    base_name = model_dir.name if adapter is not None else served_name
    command = [vllm_bin, "serve", str(model_dir), "--host", host, "--port", str(port),
               "--served-model-name", base_name, "--generation-config", "vllm"]
    if dtype != "auto":
        command += ["--dtype", dtype]
    if tool_parser is not None:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", tool_parser]
    if adapter is not None:
        command += ["--enable-lora", "--lora-modules", f"{served_name}={adapter}",
                    "--max-lora-rank", str(max_lora_rank(adapter_rank(adapter)))]
    return command + list(extra_args)


def tool_call_parser(model_dir: Path, extra_args: Sequence[str] = ()) -> str | None:
    """vLLM's `--tool-call-parser` for the model: the form its chat template writes calls in
    (`chat_format.known_call_format`, named as vLLM's parsers are: hermes, qwen3_xml,
    llama3_json, mistral, gemma4); None when the template writes none, in a form none of
    those reads, or when `extra_args` already choose (`--tool-call-parser`,
    `--enable-auto-tool-choice`)."""
    if any(arg.split("=")[0] in ("--tool-call-parser", "--enable-auto-tool-choice")
           for arg in extra_args):
        return None
    from transformers import AutoTokenizer

    from trainer_service.recipe.chat_format import known_call_format

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):  # no tokenizer here: vLLM's own error says more
        return None
    return known_call_format(tokenizer, tokenizer.chat_template)
