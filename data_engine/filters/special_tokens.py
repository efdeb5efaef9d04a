"""`special_token_literal`: chat-control tokens written into the text itself.

The tokenizer adds `<|im_start|>`, `<|im_end|>`, `</s>` and friends around turns. Text that
already contains them trains the model to emit them mid-reply, or breaks the template's
parsing of turns.

``special_token_literal`` matches the same strings as ``_pattern`` with Arrow over the
whole batch: the same alternatives in RE2 syntax, with ``\\s`` spelled as Python's
whitespace set (RE2's ``\\s`` is ASCII only) and every literal character escaped.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pyarrow as pa

from data_engine.config import CleanConfig
from data_engine.filters.base import MessageView, Reasons, reasons_of
from data_engine.normalizers.text import matches_where, python_whitespace, re2_literal

# `<|im_end|>`-style tokens; Gemma 4's half-piped ones (`<|turn>`, `<turn|>`, `<|tool_call>`,
# `<tool_response|>`); DeepSeek's full-width ones (`<｜end▁of▁sentence｜>`). No HTML tag has a
# `|` right after `<` or right before `>`.
_PIPE_TOKEN = (r"<\|[^|<>\s]{1,40}\|>|<\|[a-z_]{1,40}>|<[a-z_]{1,40}\|>"
               r"|<｜[^｜<>\s]{1,40}｜>")


@lru_cache(maxsize=8)
def _pattern(literals: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = [_PIPE_TOKEN] + [re.escape(t) for t in literals if t]
    return re.compile("|".join(alternatives))


@lru_cache(maxsize=8)
def _re2_pattern(literals: tuple[str, ...]) -> str:
    """``_pattern(literals)`` in RE2 syntax."""
    space = python_whitespace()
    pipe = "<\\|[^" + re2_literal("|<>" + space) + "]{1,40}\\|>"
    half = "<\\|[a-z_]{1,40}>|<[a-z_]{1,40}\\|>"
    wide = (re2_literal("<｜") + "[^" + re2_literal("｜<>" + space) + "]{1,40}"
            + re2_literal("｜>"))
    return "|".join([pipe, half, wide] + [re2_literal(t) for t in literals if t])


def _contains(texts: pa.Array, literals: tuple[str, ...]) -> np.ndarray:
    """Per string: ``_pattern(literals).search`` finds something (nulls: False). Every match
    starts with `<` or a literal's first character: RE2 runs only where one of those is."""
    starts = [(b, b) for b in {ord("<")} | {t.encode("utf-8")[0] for t in literals if t}]
    return matches_where(texts, _re2_pattern(literals), starts)


def special_token_literal(view: MessageView, config: CleanConfig,
                          alive: np.ndarray | None = None) -> Reasons:
    literals = tuple(config.special_tokens)
    hit = _contains(view.column("content"), literals)
    hit |= _contains(view.column("reasoning_content"), literals)
    return reasons_of(view.any_per_row(hit), "special_token_literal")
