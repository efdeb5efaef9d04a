"""`degenerate_repetition`: replies that loop instead of carrying information.

The failed fine-tune answered `」」」」」」…` forever; rows like that in training data teach
it. Checked on each assistant reply, on tokens that work without word boundaries: a Latin
word or number is one token, any other non-space character (kana, kanji, punctuation) is one.
A reply is degenerate when
- one character repeats more than `max_char_run` times in a row (digits, spaces, rule and
  table characters `-=_*~#.…・─|:+` and closing `)]}>` are exempt: numbers, tables and code
  legitimately repeat them),
- a phrase of up to `max_phrase_tokens` tokens repeats more than `max_word_repeats` times
  back to back (`the the the`, `ですですです`), or
- a reply of 200+ bytes compresses (zlib) more than `max_compression_ratio` times: long
  loops of any period. Natural text compresses 1.5-3x, code up to ~4x, loops 10x and more.
"""

from __future__ import annotations

import operator
import re
import zlib
from functools import lru_cache

from data_engine.config import CleanConfig, RepetitionConfig
from data_engine.filters.base import MessageView, Reasons, per_reply

TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
# Digits, whitespace and the characters that tables, rules and code repeat legitimately.
_EXEMPT_RUN = set("0123456789-=_*~#.…・─━|:+)]}> \t\n\u3000")
_MIN_BYTES_FOR_RATIO = 200


@lru_cache(maxsize=8)
def _run_longer_than(limit: int) -> re.Pattern:
    exempt = re.escape("".join(sorted(_EXEMPT_RUN)))
    return re.compile(f"([^{exempt}])\\1{{{limit},}}")


def has_char_run(text: str, limit: int) -> bool:
    """True when one non-exempt character repeats more than ``limit`` times in a row."""
    return _run_longer_than(limit).search(text) is not None


def repeated_phrase(tokens: list[str], max_len: int, max_repeats: int) -> bool:
    """True when some phrase of up to ``max_len`` tokens repeats > ``max_repeats`` times in a row.

    Single-character tokens (a kana, a kanji, punctuation) only count as a repeated phrase
    when the phrase has 2+ tokens; single-character runs are the char-run rule's business.
    """
    n = len(tokens)
    for size in range(1, max_len + 1):
        if size * (max_repeats + 1) > n:
            break
        # same[i] is 1 where tokens[i + size] == tokens[i]; a phrase of `size` tokens repeated
        # max_repeats more times is a run of size * max_repeats ones.
        same = bytes(map(operator.eq, tokens[size:], tokens))
        run = b"\x01" * (size * max_repeats)
        start = same.find(run)
        while start >= 0:
            if _counts_as_phrase(tokens[start:start + size]):
                return True
            start = same.find(run, start + 1)
    return False


def _counts_as_phrase(phrase: list[str]) -> bool:
    if all(t.isdigit() or t in _EXEMPT_RUN for t in phrase):
        return False
    return len(phrase) > 1 or len(phrase[0]) > 1


def is_degenerate(text: str, config: RepetitionConfig) -> bool:
    """True when ``text`` loops by any of the module's three rules."""
    if has_char_run(text, config.max_char_run):
        return True
    tokens = TOKEN.findall(text.lower())
    if repeated_phrase(tokens, config.max_phrase_tokens, config.max_word_repeats):
        return True
    data = text.encode("utf-8")
    return (len(data) >= _MIN_BYTES_FOR_RATIO
            and len(data) / len(zlib.compress(data)) > config.max_compression_ratio)


def degenerate_repetition(view: MessageView, config: CleanConfig) -> Reasons:
    return per_reply(view, "degenerate_repetition",
                     lambda text: is_degenerate(text, config.repetition))
