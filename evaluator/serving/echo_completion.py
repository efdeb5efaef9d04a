"""`/v1/completions` with `echo` and `logprobs`: prompt log-probabilities, answered as vLLM
answers them, for the transformers backend.

The evaluator's perplexity sends `{"prompt": ids | [ids, ...] | text, "echo": true,
"logprobs": k, "max_tokens": 0 or 1, "temperature": 0}` and reads
`choices[i].logprobs.token_logprobs`. vLLM requires max_tokens >= 1, so clients send 1 and
get the greedy next token appended; 0 returns the prompt alone. Anything this handler
cannot answer the way vLLM would (more tokens, sampling, streaming, n > 1) is refused with
400 rather than answered differently.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from evaluator.serving.errors import ApiError
from evaluator.serving.prompt_logprobs import completion_logprobs, score_prompts

if TYPE_CHECKING:
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import GenerationState

MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs
OPENAI_DEFAULT_MAX_TOKENS = 16  # what an absent max_tokens means to vLLM and OpenAI


def wants_prompt_logprobs(body: dict) -> bool:
    """True for a request this handler answers (echo with logprobs)."""
    return bool(body.get("echo")) and body.get("logprobs") is not None


class EchoCompletionHandler:
    """Scores prompts with the model transformers' ModelManager holds (one copy in memory),
    on that model's inference thread, so scoring and generation never run at once."""

    def __init__(self, model_manager: "ModelManager", generation_state: "GenerationState",
                 model_id: str, served_name: str):
        self.model_manager = model_manager
        self.generation_state = generation_state
        self.model_id = model_id
        self.served_name = served_name

    async def handle_request(self, body: dict, request_id: str) -> dict:
        top_k, max_tokens = _settings(body)
        model, processor = self.model_manager.load_model_and_processor(self.model_id)
        tokenizer = getattr(processor, "tokenizer", processor)
        prompts = _prompts(body.get("prompt"), tokenizer)
        _check_fits(prompts, model, max_tokens)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        manager = self.generation_state.get_manager(self.model_id)
        results = await manager.async_submit(score_prompts, model, [ids for ids, _ in prompts],
                                             top_k, max_tokens == 1, pad_id)
        decoded: dict[int, str] = {}

        def decode(token_id: int) -> str:
            if token_id not in decoded:
                decoded[token_id] = tokenizer.decode([token_id])
            return decoded[token_id]

        eos = _eos_ids(model)
        choices = []
        for index, ((ids, text), scored) in enumerate(zip(prompts, results)):
            text = tokenizer.decode(ids) if text is None else text
            finish_reason = "length"
            if scored.generated:
                next_id = scored.token_ids[-1]
                text += tokenizer.decode([next_id], skip_special_tokens=True)
                finish_reason = "stop" if next_id in eos else "length"
            choices.append({"index": index, "text": text, "finish_reason": finish_reason,
                            "logprobs": completion_logprobs(scored, top_k, decode)})
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        completion_tokens = sum(scored.generated for scored in results)
        return {"id": f"cmpl-{request_id}", "object": "text_completion",
                "created": int(time.time()), "model": self.served_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _settings(body: dict) -> tuple[int, int]:
    """(top k, max_tokens) of an echo request, or ApiError(400) naming what cannot be done."""
    top_k = body.get("logprobs")
    if not _is_int(top_k) or not 0 <= top_k <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}; "
                            f"got {top_k!r}")
    max_tokens = body.get("max_tokens")
    max_tokens = OPENAI_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if not _is_int(max_tokens) or max_tokens not in (0, 1):
        raise ApiError(400, "echo with logprobs returns prompt log-probabilities: max_tokens "
                            "must be 0 (the prompt alone) or 1 (and the greedy next token); "
                            f"got {max_tokens!r}. Generate longer text without echo.")
    if max_tokens == 1 and body.get("temperature") not in (None, 0):
        raise ApiError(400, "the next token after an echoed prompt is greedy here: send "
                            f"temperature 0 (got {body.get('temperature')!r})")
    if body.get("stream"):
        raise ApiError(400, "echo with logprobs is answered in one response: send stream false")
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"echo with logprobs gives one choice per prompt: n must be 1 "
                            f"(got {body.get('n')!r})")
    return top_k, max_tokens


def _prompts(prompt: object, tokenizer) -> list[tuple[list[int], str | None]]:
    """(token ids, prompt text or None to decode) per prompt, in order: a string (tokenized
    without special tokens, as vLLM does for completions), a list of token ids, or a list of
    either."""
    def one(item: object) -> tuple[list[int], str | None]:
        if isinstance(item, str):
            return tokenizer.encode(item, add_special_tokens=False), item
        if isinstance(item, list) and all(_is_int(t) for t in item):
            return list(item), None
        raise ApiError(400, "prompt must be a string, a list of token ids, or a list of either")

    if isinstance(prompt, list) and prompt and not all(_is_int(t) for t in prompt):
        prompts = [one(item) for item in prompt]
    else:
        prompts = [one(prompt)]
    for index, (ids, _) in enumerate(prompts):
        if not ids:
            raise ApiError(400, f"prompt {index} is empty: there is no token to score")
    return prompts


def _check_fits(prompts: list[tuple[list[int], str | None]], model, max_tokens: int) -> None:
    vocab = model.get_input_embeddings().num_embeddings
    limit = getattr(model.config, "max_position_embeddings", None)
    for index, (ids, _) in enumerate(prompts):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"prompt {index} has token ids outside the vocabulary "
                                f"(0..{vocab - 1}): {bad[:5]}")
        if limit is not None and len(ids) + max_tokens > limit:
            raise ApiError(400, f"prompt {index} has {len(ids)} tokens; with max_tokens "
                                f"{max_tokens} that exceeds the model's {limit} positions")


def _eos_ids(model) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, list) else [] if value is None else [value])
    return ids
