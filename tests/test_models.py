"""The embedded default model: converted once from the bundled GGUF, a ChatML model whose
end-of-turn token is its eos everywhere generation looks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.models import MARKER, cache_root, default_model_dir, fetch_default


def test_default_model_stops_on_im_end(smollm2_dir):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    generation = GenerationConfig.from_pretrained(smollm2_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    eos = generation.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=False)
    assert "<|im_start|>assistant\nhello<|im_end|>" in rendered
    marker = json.loads((Path(smollm2_dir) / MARKER).read_text())
    assert marker["name"] == "SmolLM2-135M-Instruct" and len(marker["sha256"]) == 64


def test_fetch_default_reuses_the_converted_folder(smollm2_dir):
    weights = Path(smollm2_dir) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert fetch_default() == Path(smollm2_dir)
    assert weights.stat().st_mtime_ns == before


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert default_model_dir() == tmp_path / "c" / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("TUNESMITH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "tunesmith"


@pytest.mark.slow
def test_cli_prints_where_the_model_lives(smollm2_dir):
    cli = Path(sys.executable).with_name("tunesmith")
    env = {**os.environ}
    done = subprocess.run([str(cli), "models", "fetch-default"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == Path(smollm2_dir)
