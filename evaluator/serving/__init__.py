"""Serving a trained model behind an OpenAI-compatible API (vLLM or transformers), for
`tunesmith serve`, the evaluator and tests."""

from evaluator.serving.errors import ServeError
from evaluator.serving.manager import ModelServer, client_snippet, serve_model, start_server
from evaluator.serving.vllm_cli import max_lora_rank, vllm_command

__all__ = ["ModelServer", "ServeError", "client_snippet", "max_lora_rank", "serve_model",
           "start_server", "vllm_command"]
