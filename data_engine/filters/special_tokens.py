"""`special_token_literal`: chat-control tokens written into the text itself.

The tokenizer adds `<|im_start|>`, `<|im_end|>`, `</s>` and friends around turns. Text that
already contains them trains the model to emit them mid-reply, or breaks the template's
parsing of turns.
"""

from __future__ import annotations

import re
from functools import lru_cache

from data_engine.config import CleanConfig
from data_engine.filters.base import MessageView, Reasons

_PIPE_TOKEN = r"<\|[^|<>\s]{1,40}\|>"


@lru_cache(maxsize=8)
def _pattern(literals: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = [_PIPE_TOKEN] + [re.escape(t) for t in literals if t]
    return re.compile("|".join(alternatives))


def special_token_literal(view: MessageView, config: CleanConfig) -> Reasons:
    pattern = _pattern(tuple(config.special_tokens))
    out: Reasons = []
    for row in range(view.num_rows):
        hit = any(pattern.search(view.contents[i]) or
                  (view.reasoning[i] and pattern.search(view.reasoning[i]))
                  for i in view.span(row))
        out.append("special_token_literal" if hit else None)
    return out
