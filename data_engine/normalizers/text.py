"""Text normalisers that run before the filters: mojibake, safe width folding, whitespace.

"Safe" NFKC: only full-width letters/digits (`ＡＩ２０２４` -> `AI2024`) and half-width
katakana (`ｶﾞｲﾄﾞ` -> `ガイド`) are folded. Full NFKC would also turn `x²` into `x2`, `①` into
`1` and Japanese full-width punctuation (`！？（）`) into ASCII, changing meaning or style.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

# Characters that UTF-8 mis-decoded as Latin-1/cp1252 produces; text without any of them
# cannot hold that mojibake, so ftfy (slow) runs only when one is present.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f0][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178"
                            "\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-"
                            "\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]")
# C0/C1 controls except tab and newline, zero-width spaces/joiners and the BOM.
_INVISIBLE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
                        "\u200b-\u200d\u2060\ufeff]")
_HALFWIDTH_KANA = re.compile("[\uff61-\uff9f]+")
_FULLWIDTH_ALNUM = {cp: cp - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
                    for cp in range(r[0], r[1] + 1)}


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
