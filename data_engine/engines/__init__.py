"""Model engines behind one interface (`base.Engine`): transformers, OpenAI-compatible, vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_engine.config import EngineConfig
    from data_engine.engines.base import Engine


def resolve_model(model: str) -> str:
    """`default` is the embedded SmolLM2-135M-Instruct, converted once into the cache."""
    if model == "default":
        from tunesmith.models import fetch_default

        return str(fetch_default())
    return model


def build_engine(config: "EngineConfig") -> "Engine":
    """The engine a config names; heavy imports happen here, not at module import."""
    from data_engine.engines.base import EngineError

    if config.kind == "transformers":
        from data_engine.engines.hf import TransformersEngine

        return TransformersEngine(resolve_model(config.model), device=config.device,
                                  dtype=config.dtype, batch_size=config.batch_size,
                                  template_kwargs=config.chat_template_kwargs)
    if config.kind == "openai":
        from data_engine.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(config)
    if config.kind == "vllm":
        from data_engine.engines.vllm_engine import VLLMEngine

        return VLLMEngine.from_config(config)
    raise EngineError("unknown_engine", f"{config.kind!r}", "engine.kind")
