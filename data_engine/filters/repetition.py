"""`degenerate_repetition`: replies that loop instead of carrying information.

The failed fine-tune answered `」」」」」」…` forever; rows like that in training data teach
it. Checked on each assistant reply, on tokens that work without word boundaries: a Latin
word or number is one token, any other non-space character (kana, kanji, punctuation) is one.
A reply is degenerate when
- one character repeats more than `max_char_run` times in a row (digits, spaces, rule and
  table characters `-=_*~#.,…・─|:+`, closing `)]}>` and masking or rating marks
  `○〇●◯◎□■△▲☆★×＊` are exempt: numbers, tables, code and redacted names legitimately
  repeat them; phrases made only of these and digits are exempt from the phrase rule, so
  `1,000,000,000` and `[0, 0, 0, 1]` are no loops). Laughter, music and elongation marks
  (`ｗ 哈 ㅋ ♪ 〜 ー っ`) may run to `max_expressive_run`: `ｗｗｗｗｗ`, `哈哈哈哈哈`,
  `すごーーーーい` are writing, not loops (`！` keeps the plain limit: `タイトル！！！！！！`
  is where a title turns into a loop);
- a phrase of up to `max_phrase_tokens` tokens repeats more than `max_word_repeats` times
  back to back (`the the the`, `ですですです`). Emphasis said three times (`はいはいはい`,
  `まだまだまだ`) is dropped too: lexically it is a model's loop (`タイトルですですです`), and
  a loop taught costs more than a few such rows; conversational data may want
  `max_word_repeats: 3`;
- the reply is three or more punctuation marks and nothing else (`」」」」`, `...`): no
  content at all; or
- a reply of 200+ bytes compresses (zlib) more than `max_compression_ratio` times: long
  loops of any period. Natural text compresses 1.5-3x, code up to ~4x, loops 10x and more.

``is_degenerate`` is the definition, one text at a time. ``degenerate_flags`` gives the same
answers for a batch of texts: the character-run rule exactly in NumPy, the phrase rule in
NumPy over hashed tokens as a prefilter (a necessary condition) with ``repeated_phrase``
deciding the few candidates, and zlib only for texts no other rule caught.
"""

from __future__ import annotations

import operator
import re
import unicodedata
import zlib
from functools import lru_cache

import numpy as np

from data_engine.config import CleanConfig, RepetitionConfig
from data_engine.filters.base import MessageView, Reasons, reasons_of
from data_engine.normalizers.text import python_whitespace_table

TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
# Digits, whitespace and the characters that numbers (`1,000,000`), tables, rules and code
# repeat legitimately, and the marks that mask or rate (`被告人○○○○`, `★★★★★`).
_EXEMPT_RUN = set("0123456789-=_*~#.,…・─━|:+)]}> \t\n\u3000○〇●◯◎□■△▲☆★×＊")
# Characters writers repeat for laughter, emphasis and elongation (`ｗ` is `w` once widths
# are folded): runs up to `max_expressive_run`.
_EXPRESSIVE = set("wW哈呵嘿嘻笑ㅋㅎㅠㅜ♪♫♡♥〜～ーっッ")
# Longest text the punctuation-only rule looks at: longer all-punctuation text loops, and
# the run, phrase and compression rules catch it.
_MAX_PUNCTUATION_ONLY = 64
_MIN_BYTES_FOR_RATIO = 200
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: powers never collapse to 0 mod 2**64
_ALNUM_TAG = np.uint64(1 << 63)  # keeps word hashes apart from single-character tokens
_SEPARATOR_TAG = np.uint64(1 << 62)  # and both apart from the ids between texts


@lru_cache(maxsize=8)
def _run_longer_than(limit: int, expressive_limit: int) -> re.Pattern:
    exempt = re.escape("".join(sorted(_EXEMPT_RUN | _EXPRESSIVE)))
    expressive = re.escape("".join(sorted(_EXPRESSIVE)))
    return re.compile(f"([^{exempt}])\\1{{{limit},}}|([{expressive}])\\2{{{expressive_limit},}}")


def has_char_run(text: str, limit: int, expressive_limit: int | None = None) -> bool:
    """True when one non-exempt character repeats more than ``limit`` times in a row (an
    expressive one more than ``expressive_limit``, by default three times ``limit``)."""
    expressive_limit = 3 * limit if expressive_limit is None else expressive_limit
    return _run_longer_than(limit, expressive_limit).search(text) is not None


def only_punctuation(text: str) -> bool:
    """True when ``text`` is three or more punctuation marks (and whitespace), nothing
    else: `」」」」`, `...`, `！？！`."""
    if len(text) > _MAX_PUNCTUATION_ONLY:
        return False
    marks = [c for c in text if not c.isspace()]
    return len(marks) >= 3 and all(unicodedata.category(c)[0] == "P" for c in marks)


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
    """True when ``text`` loops by any of the module's rules."""
    if has_char_run(text, config.max_char_run, config.max_expressive_run) \
            or only_punctuation(text.strip()):
        return True
    tokens = TOKEN.findall(text.lower())
    if repeated_phrase(tokens, config.max_phrase_tokens, config.max_word_repeats):
        return True
    data = text.encode("utf-8")
    return (len(data) >= _MIN_BYTES_FOR_RATIO
            and len(data) / len(zlib.compress(data)) > config.max_compression_ratio)


def degenerate_flags(texts: list[str], config: RepetitionConfig) -> np.ndarray:
    """``is_degenerate`` of each text, computed for the batch at once (same answers)."""
    flags = _char_run_flags(texts, config.max_char_run, config.max_expressive_run)
    for i in np.flatnonzero(~flags).tolist():
        if len(texts[i]) <= _MAX_PUNCTUATION_ONLY + 8:  # the few texts short enough
            flags[i] = only_punctuation(texts[i].strip())
    candidates = _phrase_candidates([t.lower() for t in texts], config.max_phrase_tokens,
                                    config.max_word_repeats) & ~flags
    for i in np.flatnonzero(candidates):
        flags[i] = repeated_phrase(TOKEN.findall(texts[i].lower()), config.max_phrase_tokens,
                                   config.max_word_repeats)
    for i in np.flatnonzero(~flags).tolist():
        if len(texts[i]) * 4 < _MIN_BYTES_FOR_RATIO:  # too short in any encoding
            continue
        data = texts[i].encode("utf-8")
        flags[i] = (len(data) >= _MIN_BYTES_FOR_RATIO
                    and len(data) / len(zlib.compress(data)) > config.max_compression_ratio)
    return flags


def _codes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts joined by "\\n" as code points, and where each text starts."""
    codes = np.frombuffer("\n".join(texts).encode("utf-32-le"), dtype=np.uint32)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return codes, starts


def _char_run_flags(texts: list[str], limit: int, expressive_limit: int) -> np.ndarray:
    """``has_char_run(text, limit, expressive_limit)`` of each text, exactly: the pattern
    matches where a non-exempt character starts a run of more than ``limit`` equal
    characters (an expressive one, more than ``expressive_limit``). No run crosses from one
    text into the next: the "\\n" between them is exempt."""
    if limit < 1 or expressive_limit < limit:
        return np.array([has_char_run(t, limit, expressive_limit) for t in texts], dtype=bool)
    flags = np.zeros(len(texts), dtype=bool)
    codes, starts = _codes(texts)
    same = (codes[1:] == codes[:-1]).tobytes()  # same[i]: codes[i + 1] == codes[i]
    run = b"\x01" * limit
    exempt = set(map(ord, _EXEMPT_RUN))
    expressive = set(map(ord, _EXPRESSIVE))
    pos = same.find(run)  # codes[pos:pos + limit + 1] are one character
    while pos >= 0:
        end = -1
        if int(codes[pos]) in exempt or int(codes[pos]) in expressive:
            end = same.find(b"\x00", pos)  # this run's last character
            length = (end if end >= 0 else len(same)) - pos + 1
        if int(codes[pos]) in exempt or (int(codes[pos]) in expressive
                                         and length <= expressive_limit):
            pos = same.find(run, end) if end >= 0 else -1
            continue
        text = int(np.searchsorted(starts, pos, side="right")) - 1
        flags[text] = True
        pos = same.find(run, int(starts[text + 1])) if text + 1 < len(texts) else -1
    return flags


@lru_cache(maxsize=1)
def _char_classes() -> np.ndarray:
    """Class of each code point for TOKEN: 1 `[A-Za-z0-9]`, 2 `\\s`, 0 any other; code
    points past the table's end (beyond all whitespace) read its last entry, 0."""
    table = np.zeros(len(python_whitespace_table()) + 1, dtype=np.uint8)
    table[:-1][python_whitespace_table()] = 2
    for first, last in ("09", "AZ", "az"):
        table[ord(first):ord(last) + 1] = 1
    return table


@lru_cache(maxsize=2)
def _hash_powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """_HASH_BASE ** i and _HASH_BASE ** -i (mod 2**64) for i < ``size``."""
    powers = np.full(size, _HASH_BASE, dtype=np.uint64)
    inverses = np.full(size, pow(int(_HASH_BASE), -1, 1 << 64), dtype=np.uint64)
    powers[0] = inverses[0] = 1
    return np.cumprod(powers, dtype=np.uint64), np.cumprod(inverses, dtype=np.uint64)


def _token_ids(codes: np.ndarray, separators: np.ndarray) -> np.ndarray:
    """An id for each of TOKEN's tokens of lower-cased ``codes``, in order, plus one token
    per position in ``separators`` (where one text ends and the next begins).

    Equal tokens get equal ids: a single-character token its code point, a word
    (`[A-Za-z0-9]+`) the polynomial hash sum(code[k] * _HASH_BASE ** k) with the top bit
    set, read off prefix sums of code[j] * _HASH_BASE ** j as (sums[end] - sums[start]) *
    _HASH_BASE ** -start. Different tokens may share an id (a hash collision). Each
    separator's id is unique.
    """
    table = _char_classes()
    classes = table.take(codes, mode="clip")  # past the table's end: its last entry, 0
    starts = classes == 0  # `[^\\sA-Za-z0-9]`: one token per character
    ids = codes.astype(np.uint64)
    edges = np.diff((classes == 1).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    first, end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # `[A-Za-z0-9]+`
    if len(first):
        size = 1 << len(codes).bit_length()  # tables up to 2M positions (32 MB) are kept
        powers, inverses = (_hash_powers if size <= 1 << 21 else _hash_powers.__wrapped__)(size)
        sums = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum(ids * powers[:len(codes)], out=sums[1:])
        ids[first] = (sums[end] - sums[first]) * inverses[first] | _ALNUM_TAG
        starts[first] = True
    ids[separators] = _SEPARATOR_TAG + np.arange(len(separators), dtype=np.uint64)
    starts[separators] = True
    return ids[starts]


def _phrase_candidates(lowered: list[str], max_len: int, max_repeats: int) -> np.ndarray:
    """A superset of the texts ``repeated_phrase`` flags (``lowered`` already lower-cased).

    Necessary condition: for a phrase of ``size`` tokens the rule needs
    ``tokens[i + size] == tokens[i]`` for ``size * max_repeats`` consecutive i (the run
    ``repeated_phrase`` finds). Equal tokens have equal ids, and the texts' tokens are
    consecutive in the joined id sequence, so that run is there too. A run found there lies
    within one text: a unique separator id inside tokens i .. i + size * (max_repeats + 1)
    would break it at i or i + size (max_repeats >= 1). ``_counts_as_phrase`` and any hash
    collision are left to the exact check.
    """
    if max_repeats < 1:
        return np.ones(len(lowered), dtype=bool)
    candidates = np.zeros(len(lowered), dtype=bool)
    codes, starts = _codes(lowered)
    ids = _token_ids(codes, starts[1:] - 1)
    boundaries = np.flatnonzero((ids >= _SEPARATOR_TAG) & (ids < _ALNUM_TAG))
    for size in range(1, max_len + 1):
        need = size * max_repeats
        if len(ids) - size < need:
            break
        same = (ids[size:] == ids[:-size]).tobytes()
        run = b"\x01" * need
        pos = same.find(run)
        while pos >= 0:
            text = int(np.searchsorted(boundaries, pos))
            candidates[text] = True
            pos = same.find(run, int(boundaries[text]) + 1) if text < len(boundaries) else -1
    return candidates


def degenerate_repetition(view: MessageView, config: CleanConfig,
                          alive: np.ndarray | None = None) -> Reasons:
    checked = np.flatnonzero(view.reply_mask & view.message_mask(alive))
    flags = np.zeros(len(view.reply_mask), dtype=bool)
    flags[checked] = degenerate_flags(view.texts(checked), config.repetition)
    return reasons_of(view.any_per_row(flags), "degenerate_repetition")
