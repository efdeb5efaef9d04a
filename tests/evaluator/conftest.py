"""Tiny models shared by the evaluator's tests (see models.py)."""

from __future__ import annotations

import pytest

from tests.evaluator import models


@pytest.fixture(scope="session")
def chat_tokenizer():
    """SmolLM2's tokenizer (ChatML, end of turn <|im_end|>), from the local default model."""
    from transformers import AutoTokenizer

    from tunesmith.models import fetch_default

    return AutoTokenizer.from_pretrained(fetch_default())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, chat_tokenizer):
    """A random 2-layer Llama in float32 with SmolLM2's vocabulary."""
    return models.random_model(chat_tokenizer, tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="session")
def polite_model_dir(tmp_path_factory, chat_tokenizer):
    """Answers every prompt "Hello there" and stops with <|im_end|>."""
    steps = models.chain_of(chat_tokenizer, "Hello there")
    return models.scripted_model(chat_tokenizer, tmp_path_factory.mktemp("polite") / "polite",
                                 steps)


@pytest.fixture(scope="session")
def endless_model_dir(tmp_path_factory, chat_tokenizer):
    """Never emits <|im_end|>: "The cat sat on a mat. The cat sat..." until the budget."""
    steps = models.chain_of(chat_tokenizer, "The cat sat on a mat.", then=None)
    return models.scripted_model(chat_tokenizer, tmp_path_factory.mktemp("endless") / "endless",
                                 steps)


@pytest.fixture(scope="session")
def looping_model_dir(tmp_path_factory, chat_tokenizer):
    """The founding failure: 」」」」... forever."""
    steps = models.chain_of(chat_tokenizer, "」", then=None)
    return models.scripted_model(chat_tokenizer, tmp_path_factory.mktemp("loop") / "loop", steps)
