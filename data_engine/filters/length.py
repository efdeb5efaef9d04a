"""`too_short` / `too_long`: token bounds, with a real tokenizer or a CJK-aware estimate.

The estimate counts one token per CJK character (kana, kanji, Hangul, CJK and full-width
punctuation) and one per four other characters: close to Qwen's and Llama's tokenizers on
Japanese/Chinese and English, with no whitespace-tokenisation assumption. The clean stage
computes the estimate for all messages at once with Arrow (``estimate_tokens_array``).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import to_numpy_bool
from data_engine.config import CleanConfig, LengthConfig
from data_engine.filters.base import MessageView, Reasons
from data_engine.normalizers.text import has_bytes, re2_class_pattern

_CJK_RANGES = ((0x1100, 0x11FF), (0x2E80, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
               (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x20000, 0x3FFFF))
_CJK = re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _CJK_RANGES) + "]")
# UTF-8 lead bytes whose every character (a 4096 block of 3-byte ones) is CJK; any other byte
# from 0xC0 on starts a character that is not ASCII and not such a CJK one.
_CJK_LEADS = {0xE0 | block >> 12 for block in range(0, 0x10000, 0x1000)
              if any(lo <= block and block + 0xFFF <= hi for lo, hi in _CJK_RANGES)}
_OTHER_STARTS = [(b, b) for b in range(0xC0, 0x100) if b not in _CJK_LEADS]


def estimate_tokens(text: str) -> int:
    """Character-based token estimate (see the module docstring)."""
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / 4)
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_tokens_array(*parts: pa.Array) -> np.ndarray:
    """``estimate_tokens`` of each concatenation ``parts[0][i] + parts[1][i] + ...`` (null
    parts read as ""), vectorised. The estimate needs only the text's length and CJK count,
    both sums over the parts; ASCII and empty text have no CJK, so one formula covers all.

    A string whose characters are all ASCII (1 byte) or start with a byte of ``_CJK_LEADS``
    (3 bytes, CJK) has (bytes - characters) / 2 CJK characters: only the strings holding a
    byte of ``_OTHER_STARTS`` need counting. There the CJK count is the length that deleting
    every run of CJK characters removes (one regex match per run, not per character)."""
    length = np.zeros(len(parts[0]), dtype=np.int64)
    cjk = np.zeros(len(parts[0]), dtype=np.int64)
    runs = re2_class_pattern(_CJK.pattern) + "+"
    for part in parts:
        part = pc.fill_null(part, "")
        chars = pc.utf8_length(part).to_numpy(zero_copy_only=False)
        length += chars
        other = has_bytes(part, _OTHER_STARTS)
        cjk += np.where(other, 0, (pc.binary_length(part).to_numpy(zero_copy_only=False)
                                   - chars) // 2)
        if other.any():
            some = part.filter(pa.array(other))
            removed = pc.subtract(pc.utf8_length(some),
                                  pc.utf8_length(pc.replace_substring_regex(some, runs, "")))
            cjk[other] += removed.to_numpy(zero_copy_only=False)
    return cjk + (length - cjk + 3) // 4


@lru_cache(maxsize=2)
def _tokenizer(name: str):
    from transformers import AutoTokenizer  # heavy: only when a tokenizer is configured

    return AutoTokenizer.from_pretrained(name)


def tokenizer_problem(name: str | None) -> str | None:
    """Why the configured tokenizer cannot be loaded here (None when it can, or when none is
    configured): checked in the driver before any worker would fail on it."""
    if name is None:
        return None
    try:
        _tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - any load failure is the config's problem
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"clean.length.tokenizer: cannot load {name!r} (a tokenizer folder, or a hub "
                f"id when the hub is reachable): {reason}")
    return None


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
        if config.tokenizer is None:
            view.cache[key] = estimate_tokens_array(
                view.column("content"), view.column("reasoning_content"),
                view.column("tool_calls"))
        else:
            texts = [c + (r or "") + (t or "") for c, r, t in
                     zip(view.contents, view.reasoning, view.tool_calls)]
            view.cache[key] = count_tokens(texts, config.tokenizer)
    return view.cache[key]


def tool_tokens(view: MessageView, config: LengthConfig) -> np.ndarray:
    """Tokens of each row's tool definitions, which the chat template puts in the prompt:
    their JSON text and, for a row offering any, the template's instructions around them
    (`tools_overhead_tokens`); 0 for a row without."""
    if view.tools is None or view.tools.null_count == len(view.tools):
        return np.zeros(view.num_rows, dtype=np.int64)
    key = ("tool_tokens", config.tokenizer, config.tools_overhead_tokens)
    if key not in view.cache:
        if config.tokenizer is None:
            tokens = estimate_tokens_array(view.tools)
        else:
            tokens = count_tokens([t or "" for t in view.tools.to_pylist()], config.tokenizer)
        offered = to_numpy_bool(pc.not_equal(view.tools, "[]"))  # null: none offered
        view.cache[key] = tokens + np.where(offered, config.tools_overhead_tokens, 0)
    return view.cache[key]


def row_tokens(view: MessageView, config: LengthConfig) -> np.ndarray:
    """Tokens of each whole conversation, chat-template overhead and the tool definitions
    it offers included."""
    per_message = message_tokens(view, config) + config.turn_overhead_tokens
    sums = np.concatenate([[0], np.cumsum(per_message)])
    return sums[view.offsets[1:]] - sums[view.offsets[:-1]] + tool_tokens(view, config)


def length_bounds(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                  ) -> Reasons:
    cfg = config.length
    per_message = message_tokens(view, cfg)
    totals = row_tokens(view, cfg)
    short = view.any_per_row(view.is_assistant & ~view.has_calls
                             & (per_message < cfg.min_reply_tokens))
    out = np.where(short, "too_short", np.where(totals > cfg.max_tokens, "too_long", None))
    return out.tolist()
