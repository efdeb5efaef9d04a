"""Text normalisers that run before the filters: mojibake, safe width folding, whitespace.

"Safe" NFKC: only full-width letters/digits (`ＡＩ２０２４` -> `AI2024`) and half-width
katakana (`ｶﾞｲﾄﾞ` -> `ガイド`) are folded. Full NFKC would also turn `x²` into `x2`, `①` into
`1` and Japanese full-width punctuation (`！？（）`) into ASCII, changing meaning or style.

``normalize_text`` is the definition, one string at a time. ``normalize_texts`` gives the
same result for a whole Arrow string array: Arrow compute does the line-ending, invisible-
character and trimming steps for every string, and only strings that may need ftfy or width
folding (a cheap vectorised test) go through ``normalize_text``.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache
from typing import Iterable

import ftfy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import string_buffers

# Characters that UTF-8 mis-decoded as Latin-1/cp1252 produces; text without any of them
# cannot hold that mojibake, so ftfy (slow) runs only when one is present.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f0][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178"
                            "\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-"
                            "\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
# C0/C1 controls except tab and newline, zero-width spaces/joiners and the BOM.
_INVISIBLE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
                        "\u200b-\u200d\u2060\ufeff]")
# Unicode's line and paragraph separators (text from web pages and PDFs): line breaks, as
# "\n" and a blank line. Left in, they end a line for Python's `str.splitlines`, so a JSONL
# reader using it cut a row in two.
_SEPARATORS = {"\u2028": "\n", "\u2029": "\n\n"}
_HALFWIDTH_KANA = re.compile("[\uff61-\uff9f]+")
_FULLWIDTH_RANGES = ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
_FULLWIDTH_ALNUM = {cp: cp - 0xFEE0 for r in _FULLWIDTH_RANGES for cp in range(r[0], r[1] + 1)}
# Any character that width folding changes: the keys of _FULLWIDTH_ALNUM and _HALFWIDTH_KANA.
_WIDTH_HINT = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff61-\uff9f]")


def normalize_text(text: str, fix_mojibake: bool = True, normalize_width: bool = True,
                   json_text: bool = False) -> str:
    """Returns ``text`` repaired, width-folded where safe, and trimmed. ``json_text``: the
    text is JSON (a turn's tool calls), where the line and paragraph separators stay (a
    line break there would need an escape for each level of JSON text it is nested in)."""
    if not text:
        return text
    if fix_mojibake and _MOJIBAKE_HINT.search(text):
        text = ftfy.fix_encoding(text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    for separator, breaks in _SEPARATORS.items():
        if separator in text and not json_text:
            text = text.replace(separator, breaks)
    text = _INVISIBLE.sub("", text)
    if normalize_width and not text.isascii():
        text = text.translate(_FULLWIDTH_ALNUM)
        text = _HALFWIDTH_KANA.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return text.strip()


def normalize_texts(texts: pa.Array, fix_mojibake: bool = True,
                    normalize_width: bool = True, json_text: bool = False) -> pa.Array:
    """``normalize_text`` of every string of ``texts`` (nulls stay null), vectorised.

    Most strings only need ``str.strip()``, which Arrow does for all of them. A regex picks
    the strings that need more (run only on those holding a byte its matches start with,
    ``matches_where``): a carriage return or an invisible character (Arrow replaces those),
    or a mojibake hint (when repairing) or a foldable character (when folding); those go
    through ``normalize_text``. A string without hint or foldable
    character is exactly what ``normalize_text`` handles without ftfy and folding. The
    replacements only delete characters or turn CR (and the line and paragraph separators)
    into LF, outside the hint and width
    classes, so testing the raw string, as ``normalize_text`` tests the partly normalised
    one, picks the same strings.
    """
    hints = ([_MOJIBAKE_HINT.pattern] if fix_mojibake else []) + (
        [_WIDTH_HINT.pattern] if normalize_width else [])
    invisible = _INVISIBLE.pattern[:-1] + "\r" + "".join(_SEPARATORS) + "]"  # plus CR, LS, PS
    work = matches_where(texts, "|".join(re2_class_pattern(p) for p in [invisible] + hints),
                         [r for p in [invisible] + hints for r in first_bytes(p)])
    if work.any():
        work = pa.array(work)
        some = texts.filter(work)
        fixed = pc.replace_substring(pc.replace_substring(some, "\r\n", "\n"), "\r", "\n")
        for separator, breaks in _SEPARATORS.items() if not json_text else ():
            fixed = pc.replace_substring(fixed, separator, breaks)
        fixed = pc.replace_substring_regex(fixed, re2_class_pattern(_INVISIBLE.pattern), "")
        if hints:
            slow = pc.fill_null(pc.match_substring_regex(
                some, "|".join(re2_class_pattern(p) for p in hints)), False)
            if pc.any(slow).as_py():
                redone = [normalize_text(t, fix_mojibake, normalize_width, json_text)
                          for t in some.filter(slow).to_pylist()]
                fixed = pc.replace_with_mask(fixed, slow, pa.array(redone, fixed.type))
        texts = pc.replace_with_mask(texts, work, fixed)
    # str.strip(); a no-op on the strings normalize_text redid.
    return pc.utf8_trim(texts, characters=python_whitespace())


@cache
def python_whitespace() -> str:
    """Every character ``str.isspace`` accepts: what ``str.strip()``, ``str.split()`` and
    the ``\\s`` of ``re`` treat as whitespace. Arrow's own whitespace tables (utf8proc)
    differ, so vectorised code trims and matches with this set spelled out.

    Found by ``re``'s ``\\s`` in one string of every code point: CPython defines both by
    ``Py_UNICODE_ISSPACE`` (a test checks every code point); ~10x faster than calling
    ``str.isspace`` a million times (surrogates are no whitespace, and not UTF-32)."""
    codes = np.r_[0:0xD800, 0xE000:sys.maxunicode + 1].astype("<u4")
    return "".join(re.findall(r"\s", codes.tobytes().decode("utf-32-le")))


@cache
def python_whitespace_table() -> np.ndarray:
    """``python_whitespace`` as a lookup table by code point, up to its largest member."""
    codes = [ord(ch) for ch in python_whitespace()]
    table = np.zeros(max(codes) + 1, dtype=bool)
    table[codes] = True
    return table


def first_bytes(pattern: str) -> list[tuple[int, int]]:
    """The first UTF-8 bytes of the characters that ``pattern``, as ``re2_class_pattern``
    takes it, can start a match with (its first character or ``[...]`` class, no ``^``), as
    inclusive ranges, maybe more: among characters of one UTF-8 length the first byte never
    decreases as the code point grows."""
    if pattern[0] != "[":
        return [(pattern.encode("utf-8")[0],) * 2]
    body = pattern[1:pattern.index("]", 2)]
    if body[0] == "^":
        raise ValueError(f"negated class: {pattern!r}")
    out, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi, i = ord(body[i]), ord(body[i + 2]), i + 3
        else:
            lo, hi, i = ord(body[i]), ord(body[i]), i + 1
        for first, last in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, 0x10FFFF)):
            if lo <= last and hi >= first:
                out.append((_first_byte(max(lo, first)), _first_byte(min(hi, last))))
    return out


def _first_byte(code: int) -> int:
    """The first byte of the UTF-8 of code point ``code``."""
    if code < 0x80:
        return code
    if code < 0x800:
        return 0xC0 | code >> 6
    return 0xE0 | code >> 12 if code < 0x10000 else 0xF0 | code >> 18


def has_bytes(texts: pa.Array, ranges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Per string of ``texts``: its UTF-8 holds a byte in one of the inclusive ``ranges``
    (nulls: False). Byte compares in NumPy over the data buffer: a fraction of an RE2 scan.

    A byte below 0x80 or from 0xC0 on only ever starts a character, so with such ranges this
    says whether the string has a character starting with one of those bytes: a necessary
    condition for a regex whose every match starts with one (see ``matches_where``)."""
    out = np.zeros(len(texts), dtype=bool)
    if not len(texts):
        return out
    offsets, data = string_buffers(texts)
    data = data[offsets[0]:offsets[-1]]
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    # Byte-sized scratch from Arrow's pool, which keeps freed memory: fresh NumPy arrays of
    # this size come from the OS each call, and zeroing their pages costs more than the work.
    hit, shifted, flag = (np.frombuffer(pa.allocate_buffer(len(data) + 1), dtype=dtype)
                          for dtype in (np.bool_, np.uint8, np.bool_))
    hit[-1] = False  # past the last string, for reduceat
    for number, (lo, hi) in enumerate(merged):  # data - lo wraps below lo: one compare
        into = hit[:-1] if number == 0 else flag[:-1]
        if lo == hi:
            np.equal(data, lo, out=into)
        else:
            np.less_equal(np.subtract(data, np.uint8(lo), out=shifted[:-1]), hi - lo, out=into)
        if number:
            np.logical_or(hit[:-1], into, out=hit[:-1])
    count = np.count_nonzero(hit)
    if not count:
        return out
    if count < len(data) // 32:  # few: find each one's string
        out[np.searchsorted(offsets, np.flatnonzero(hit) + offsets[0], side="right") - 1] = True
    else:  # many: one pass over all of them (an empty string's segment is its next byte)
        out = np.logical_or.reduceat(hit, offsets[:-1] - offsets[0]) & (offsets[1:] > offsets[:-1])
    if texts.null_count:
        out &= pc.is_valid(texts).to_numpy(zero_copy_only=False)
    return out


def matches_where(texts: pa.Array, pattern: str, starts: Iterable[tuple[int, int]]
                  ) -> np.ndarray:
    """Per string: ``pc.match_substring_regex(texts, pattern)``, nulls False, where every
    match of ``pattern`` starts with a byte of ``starts`` (ranges as ``has_bytes`` takes
    them): RE2 runs only on the strings that hold such a byte."""
    out = has_bytes(texts, starts)
    if out.any():
        out[out] = pc.fill_null(pc.match_substring_regex(texts.filter(pa.array(out)), pattern),
                                False).to_numpy(zero_copy_only=False)
    return out


def re2_literal(text: str) -> str:
    """``text`` as an RE2 pattern (Arrow's regex engine) matching it literally, also inside
    a character class: every character but ASCII letters and digits becomes ``\\x{...}``."""
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):x}}}"
                   for ch in text)


def re2_class_pattern(pattern: str) -> str:
    """A ``re`` pattern made only of literal characters and ``[...]`` classes (ranges with
    ``-``, a leading ``^``), rewritten for RE2: those syntax characters stay and every
    other character is spelled ``\\x{...}``, so both engines match the same code points
    (Arrow runs RE2 in UTF-8 mode on strings)."""
    out, in_class = [], False
    for i, ch in enumerate(pattern):
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
        elif ch == "]" and in_class:
            in_class = False
            out.append(ch)
        elif in_class and (ch == "-" or (ch == "^" and pattern[i - 1] == "[")):
            out.append(ch)
        else:
            out.append(re2_literal(ch))
    return "".join(out)
