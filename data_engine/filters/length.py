"""`too_short` / `too_long`: token bounds, with a real tokenizer or a CJK-aware estimate.

The estimate counts one token per CJK character (kana, kanji, Hangul, CJK and full-width
punctuation) and one per four other characters: close to Qwen's and Llama's tokenizers on
Japanese/Chinese and English, with no whitespace-tokenisation assumption.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np

from data_engine.config import CleanConfig, LengthConfig
from data_engine.filters.base import MessageView, Reasons

_CJK = re.compile("[\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f"
                  "\uff00-\uffef\U00020000-\U0003ffff]")


def estimate_tokens(text: str) -> int:
    """Character-based token estimate (see the module docstring)."""
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / 4)
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


@lru_cache(maxsize=2)
def _tokenizer(name: str):
    from transformers import AutoTokenizer  # heavy: only when a tokenizer is configured

    return AutoTokenizer.from_pretrained(name)


def count_tokens(texts: list[str], tokenizer: str | None) -> np.ndarray:
    """Token count of each text, by ``tokenizer`` (folder or hub id) or the estimate."""
    if tokenizer is None:
        return np.fromiter((estimate_tokens(t) for t in texts), dtype=np.int64, count=len(texts))
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = _tokenizer(tokenizer)(texts, add_special_tokens=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def message_tokens(view: MessageView, config: LengthConfig) -> np.ndarray:
    """Tokens of each message (content + reasoning + tool calls), cached on the view."""
    key = ("message_tokens", config.tokenizer)
    if key not in view.cache:
        texts = [c + (r or "") + (t or "") for c, r, t in
                 zip(view.contents, view.reasoning, view.tool_calls)]
        view.cache[key] = count_tokens(texts, config.tokenizer)
    return view.cache[key]


def row_tokens(view: MessageView, config: LengthConfig) -> np.ndarray:
    """Tokens of each whole conversation, chat-template overhead included."""
    per_message = message_tokens(view, config) + config.turn_overhead_tokens
    sums = np.concatenate([[0], np.cumsum(per_message)])
    return sums[view.offsets[1:]] - sums[view.offsets[:-1]]


def length_bounds(view: MessageView, config: CleanConfig) -> Reasons:
    cfg = config.length
    per_message = message_tokens(view, cfg)
    totals = row_tokens(view, cfg)
    out: Reasons = []
    for row in range(view.num_rows):
        short = any(view.roles[i] == "assistant" and not view.tool_calls[i]
                    and per_message[i] < cfg.min_reply_tokens for i in view.span(row))
        out.append("too_short" if short else "too_long" if totals[row] > cfg.max_tokens else None)
    return out
