"""Prompt log-probabilities in vLLM's `echo` format, from forward passes of a causal LM.

The evaluator measures perplexity through whichever server it talks to. vLLM answers
`/v1/completions` with `echo: true, logprobs: k` by returning log P(token_j | tokens_<j) for
every prompt token; `score_prompts` computes the same numbers from a transformers model (the
float32 log-softmax of the logits, no sampling) and `completion_logprobs` lays them out as vLLM
does in `_create_completion_logprobs` (vllm/entrypoints/openai/completion/serving.py): the
first token has no logprob, each `top_logprobs` entry holds the scored token first and then
the top k (at most k + 1 entries, keyed by the token decoded on its own), values are clamped
at -9999.0, and `text_offset` adds up the lengths of the decoded tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MAX_BATCH = 16  # prompts per forward pass
MAX_BATCH_TOKENS = 8192  # padded tokens per pass: bounds the logits (tokens x vocab x 2-4 B)
LOGPROB_FLOOR = -9999.0  # vLLM's stand-in for -inf, which JSON cannot carry


@dataclass(frozen=True)
class ScoredTokens:
    """One prompt scored: its tokens (and the greedy next token when asked for), the log-prob
    of each given the tokens before it (None for the first), and the top k alternatives at
    each scored position as (token id, log-prob), best first."""

    token_ids: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]] | None]
    generated: int  # 1 when the last token was generated, 0 for the prompt alone


def score_prompts(model: "PreTrainedModel", prompts: Sequence[Sequence[int]], top_k: int,
                  next_token: bool, pad_id: int) -> list[ScoredTokens]:
    """Scores each prompt (a non-empty list of token ids); results come back in order.

    Prompts of similar length share right-padded forward passes with an attention mask, so a
    prompt's numbers do not depend on its neighbours (right padding leaves the positions of
    the real tokens unchanged, and causal attention never looks at the padding after them).
    """
    import torch

    results: list[ScoredTokens | None] = [None] * len(prompts)
    for chunk in _chunks(sorted(range(len(prompts)), key=lambda i: len(prompts[i])), prompts):
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, :len(prompts[i])] = torch.tensor(list(prompts[i]), dtype=torch.long)
            mask[row, :len(prompts[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           use_cache=False).logits
            for row, i in enumerate(chunk):
                results[i] = _score_row(logits[row, :len(prompts[i])], list(prompts[i]), top_k,
                                        next_token)
    return [r for r in results if r is not None]


def _chunks(order: list[int], prompts: Sequence[Sequence[int]]) -> Iterator[list[int]]:
    """Groups prompt indices (sorted by length) into batches within both limits."""
    chunk: list[int] = []
    for i in order:
        padded = (len(chunk) + 1) * len(prompts[i])  # sorted: this prompt is the widest so far
        if chunk and (len(chunk) == MAX_BATCH or padded > MAX_BATCH_TOKENS):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


def _score_row(logits, ids: list[int], top_k: int, next_token: bool) -> ScoredTokens:
    """Logits of one prompt (n x vocab, row t predicting token t + 1) -> its scores."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    scored = logprobs if next_token else logprobs[:-1]  # the rows whose next token is known
    token_ids = list(ids)
    if next_token:
        token_ids.append(int(logprobs[-1].argmax()))
    targets = torch.tensor(token_ids[1:], dtype=torch.long, device=logprobs.device)
    chosen = scored.gather(1, targets[:, None]).squeeze(1).tolist()
    top: list[list[tuple[int, float]] | None] = [None]
    if top_k > 0:
        values, indices = scored.topk(min(top_k, scored.shape[-1]), dim=-1)
        top += [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        top += [[] for _ in chosen]
    return ScoredTokens(token_ids=token_ids, logprobs=[None, *chosen], top=top,
                        generated=int(next_token))


def completion_logprobs(scored: ScoredTokens, top_k: int,
                        decode: Callable[[int], str]) -> dict:
    """vLLM's `choices[i].logprobs` object for a scored prompt; `decode` turns one token id
    into its text (vLLM decodes each token on its own, special tokens kept)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for token_id, logprob, top in zip(scored.token_ids, scored.logprobs, scored.top):
        if logprob is None or top is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
        else:
            token_logprobs.append(max(logprob, LOGPROB_FLOOR))
            ranked = {token_id: logprob}  # the scored token first, then the top k
            for alternative, value in top:
                ranked.setdefault(alternative, value)
            top_logprobs.append({decode(t): max(v, LOGPROB_FLOOR)
                                 for t, v in list(ranked.items())[:top_k + 1]})
        text_offset.append(text_offset[-1] + len(tokens[-1]) if tokens else 0)
        tokens.append(decode(token_id))
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}
