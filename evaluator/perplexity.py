"""Assistant-only perplexity: exp of the mean negative log-likelihood of the assistant
tokens (each reply and its end-of-turn token), with every prompt token excluded.

Rows are rendered with the training template, so the tokens scored are exactly those the
fine-tune was trained on, and the end-of-turn token counts: a model that never learned to
stop pays for it here. Two ways to get the log-probabilities, which must agree:
- through the server: `/v1/completions` with the rendered token ids, `echo` and
  `logprobs` (vLLM's prompt log-probabilities; chat endpoints do not return them), several
  rows per request;
- locally: a direct forward pass of the model in this process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from evaluator.data import EvalError, EvalRow

# Rows per /v1/completions request and per local forward pass.
BATCH_ROWS = 16


@dataclass
class Encoded:
    """One row rendered for scoring: token ids and the assistant mask (1 = scored)."""

    row_id: str
    source: str
    ids: list[int]
    mask: list[int]

    @property
    def scored(self) -> int:
        return sum(self.mask[1:])  # the first token has no prediction


def encode_rows(tokenizer, rows: Sequence[EvalRow]) -> list[Encoded]:
    """Renders rows with the training template: the tokenizer's own when it has generation
    markers (a merged model saves the one it was trained with), else the one the recipe
    trains a base model with (`resolve_template`'s auto)."""
    from trainer_service.recipe.chat_format import ChatFormatError, encode_row, resolve_template

    out = []
    try:
        template = resolve_template(tokenizer, "auto")
        for row in rows:
            enc = encode_row(tokenizer, template, row.messages, tools=row.tools)
            out.append(Encoded(row.id, row.source, enc.input_ids, enc.mask))
    except ChatFormatError as exc:
        raise EvalError(exc.code, f"{exc.message} {exc.fix}".strip(), "tokenizer") from None
    return out


def cut_to(encoded: Sequence[Encoded], max_len: int | None) -> tuple[list[Encoded], int]:
    """Rows cut to their first ``max_len`` tokens (what the model's positions hold: one
    longer row made the server refuse the whole batch and the evaluation end), and how
    many were cut."""
    if max_len is None:
        return list(encoded), 0
    out = [e if len(e.ids) <= max_len else
           Encoded(e.row_id, e.source, e.ids[:max_len], e.mask[:max_len]) for e in encoded]
    return out, sum(len(e.ids) > max_len for e in encoded)


def context_length(folder: str | Path | None) -> int | None:
    """The positions a model folder's config gives (`max_position_embeddings`, or its text
    model's), or None when it does not say."""
    import json

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (TypeError, OSError, ValueError):
        return None
    for block in (config, config.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(block.get(key), int) and block[key] > 1:
                return block[key]
    return None


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pad_right(batch: Sequence[Encoded]):
    """(input ids, attention mask) of a batch, right-padded with zeros to its longest row."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, e in enumerate(batch):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        attention[i, :len(e.ids)] = 1
    return ids, attention


def local_logprobs(model, encoded: Sequence[Encoded], batch_rows: int = BATCH_ROWS
                   ) -> list[list[float | None]]:
    """Per row, ``[None, log P(ids[1] | ids[:1]), ...]`` from forward passes of ``model``
    (right-padded batches, log-softmax in float32)."""
    import torch

    device = next(model.parameters()).device
    out: list[list[float | None]] = []
    for batch in _batches(list(encoded), batch_rows):
        ids, attention = pad_right(batch)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        taken = logp[:, :-1].gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for i, e in enumerate(batch):
            out.append([None] + taken[i, :len(e.ids) - 1].tolist())
    return out


def _short(exc: Exception, limit: int = 240) -> str:
    """A server's error on one line, cut: a validation error's body can run to kilobytes."""
    from data_engine.engines.openai_engine import classify

    text = " ".join(str(exc).split())
    return f"{classify(exc)[0]}: {text[:limit]}{'...' if len(text) > limit else ''}"


def server_logprobs(base_url: str, model_name: str, encoded: Sequence[Encoded],
                    batch_rows: int = BATCH_ROWS, api_key: str = "EMPTY",
                    timeout_s: float = 600.0, progress: Callable[[int], None] | None = None
                    ) -> list[list[float | None]]:
    """The same through an OpenAI-compatible server: token-id prompts, ``echo``,
    ``logprobs=1`` and ``max_tokens=1`` (vLLM refuses 0), the generated token dropped."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                           max_retries=2)
    out: list[list[float | None]] = []
    try:
        for batch in _batches(list(encoded), batch_rows):
            try:
                reply = client.completions.create(
                    model=model_name, prompt=[e.ids for e in batch], echo=True, logprobs=1,
                    max_tokens=1, temperature=0.0)
            except openai.OpenAIError as exc:
                raise EvalError("server_logprobs_failed", f"{base_url} did not return prompt "
                                f"log-probabilities ({_short(exc)}); a server without echo + "
                                "logprobs on token-id prompts (llama.cpp's) cannot score: "
                                "`--ppl local` scores the model's folder here", "base_url"
                                ) from None
            choices = sorted(reply.choices, key=lambda c: c.index)
            if len(choices) != len(batch):
                raise EvalError("server_logprobs_failed", f"{len(batch)} prompts sent, "
                                f"{len(choices)} choices returned", "base_url")
            for e, choice in zip(batch, choices):
                values = choice.logprobs.token_logprobs if choice.logprobs else None
                if not values or len(values) < len(e.ids):
                    raise EvalError("no_prompt_logprobs", f"{base_url} answered without prompt "
                                    "log-probabilities (echo + logprobs); serve the model with "
                                    "`tunesmith serve` or vLLM, or score it locally",
                                    "base_url")
                out.append([None] + list(values[1:len(e.ids)]))
            if progress:
                progress(len(batch))
    finally:
        client.close()
    return out


def summarize(encoded: Sequence[Encoded], logprobs: Sequence[Sequence[float | None]],
              method: str) -> dict[str, Any]:
    """PPL over all scored tokens (token-weighted, not a mean of row PPLs), and per source."""
    totals: dict[str, list[float]] = {}
    nll_all, tokens_all, rows_all = 0.0, 0, 0
    for e, values in zip(encoded, logprobs):
        nll = -sum(v for v, m in zip(values[1:], e.mask[1:]) if m and v is not None)
        n = e.scored
        if n == 0:
            continue
        bucket = totals.setdefault(e.source, [0.0, 0, 0])
        bucket[0] += nll
        bucket[1] += n
        bucket[2] += 1
        nll_all, tokens_all, rows_all = nll_all + nll, tokens_all + n, rows_all + 1
    if tokens_all == 0:
        raise EvalError("no_assistant_tokens", "no row has an assistant reply to score",
                        "data")
    by_source = {source: {"ppl": math.exp(nll / n), "tokens": n, "rows": rows}
                 for source, (nll, n, rows) in sorted(totals.items())}
    return {"ppl": math.exp(nll_all / tokens_all), "mean_nll": nll_all / tokens_all,
            "tokens": tokens_all, "rows": rows_all, "method": method, "by_source": by_source}


def load_local(model_dir: str | Path, dtype: str = "auto", device: str = "cpu"):
    """The model for `--ppl local`. `auto` is the served model's dtype (`resolve_dtype`):
    float32 on CPU, where a bf16 checkpoint (every merged folder) scored in bf16 moved a
    PPL by 0.2-0.4% and with its batch's shape."""
    from transformers import AutoModelForCausalLM

    from evaluator.serving.hf_app import resolve_dtype

    model = AutoModelForCausalLM.from_pretrained(str(model_dir),
                                                 dtype=resolve_dtype(dtype, device))
    return model.to(device).eval()
