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

import ftfy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Characters that UTF-8 mis-decoded as Latin-1/cp1252 produces; text without any of them
# cannot hold that mojibake, so ftfy (slow) runs only when one is present.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f0][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178"
                            "\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-"
                            "\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
# C0/C1 controls except tab and newline, zero-width spaces/joiners and the BOM.
_INVISIBLE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
                        "\u200b-\u200d\u2060\ufeff]")
_HALFWIDTH_KANA = re.compile("[\uff61-\uff9f]+")
_FULLWIDTH_RANGES = ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
_FULLWIDTH_ALNUM = {cp: cp - 0xFEE0 for r in _FULLWIDTH_RANGES for cp in range(r[0], r[1] + 1)}
# Any character that width folding changes: the keys of _FULLWIDTH_ALNUM and _HALFWIDTH_KANA.
_WIDTH_HINT = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff61-\uff9f]")


def normalize_text(text: str, fix_mojibake: bool = True, normalize_width: bool = True) -> str:
    """Returns ``text`` repaired, width-folded where safe, and trimmed."""
    if not text:
        return text
    if fix_mojibake and _MOJIBAKE_HINT.search(text):
        text = ftfy.fix_encoding(text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    if normalize_width and not text.isascii():
        text = text.translate(_FULLWIDTH_ALNUM)
        text = _HALFWIDTH_KANA.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return text.strip()


def normalize_texts(texts: pa.Array, fix_mojibake: bool = True,
                    normalize_width: bool = True) -> pa.Array:
    """``normalize_text`` of every string of ``texts`` (nulls stay null), vectorised.

    Most strings only need ``str.strip()``, which Arrow does for all of them. One regex
    pass picks the strings that need more: a carriage return or an invisible character
    (Arrow replaces those), or a mojibake hint (when repairing) or a foldable character
    (when folding); those go through ``normalize_text``. A string without hint or foldable
    character is exactly what ``normalize_text`` handles without ftfy and folding. The
    replacements only delete characters or turn CR into LF, outside the hint and width
    classes, so testing the raw string, as ``normalize_text`` tests the partly normalised
    one, picks the same strings.
    """
    hints = ([_MOJIBAKE_HINT.pattern] if fix_mojibake else []) + (
        [_WIDTH_HINT.pattern] if normalize_width else [])
    invisible = _INVISIBLE.pattern[:-1] + "\r]"  # the class, plus CR
    work = pc.fill_null(pc.match_substring_regex(
        texts, "|".join(re2_class_pattern(p) for p in [invisible] + hints)), False)
    if pc.any(work).as_py():
        some = texts.filter(work)
        fixed = pc.replace_substring(pc.replace_substring(some, "\r\n", "\n"), "\r", "\n")
        fixed = pc.replace_substring_regex(fixed, re2_class_pattern(_INVISIBLE.pattern), "")
        if hints:
            slow = pc.fill_null(pc.match_substring_regex(
                some, "|".join(re2_class_pattern(p) for p in hints)), False)
            if pc.any(slow).as_py():
                redone = [normalize_text(t, fix_mojibake, normalize_width)
                          for t in some.filter(slow).to_pylist()]
                fixed = pc.replace_with_mask(fixed, slow, pa.array(redone, fixed.type))
        texts = pc.replace_with_mask(texts, work, fixed)
    # str.strip(); a no-op on the strings normalize_text redid.
    return pc.utf8_trim(texts, characters=python_whitespace())


@cache
def python_whitespace() -> str:
    """Every character ``str.isspace`` accepts: what ``str.strip()``, ``str.split()`` and
    the ``\\s`` of ``re`` treat as whitespace. Arrow's own whitespace tables (utf8proc)
    differ, so vectorised code trims and matches with this set spelled out."""
    return "".join(filter(str.isspace, map(chr, range(sys.maxunicode + 1))))


@cache
def python_whitespace_table() -> np.ndarray:
    """``python_whitespace`` as a lookup table by code point, up to its largest member."""
    codes = [ord(ch) for ch in python_whitespace()]
    table = np.zeros(max(codes) + 1, dtype=bool)
    table[codes] = True
    return table


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
