"""`wrong_language`: assistant replies outside the configured languages (off by default).

Script comes first, because statistical detectors are weak on short text: any kana makes
text Japanese and any Hangul Korean. Otherwise py3langid decides, once the text has at
least `_MIN_LETTERS` letters; shorter replies (numbers, a word or two) are kept. Short
kanji-only text (a title like `京都観光完全攻略`) is Japanese or Chinese alike, so it passes
when either language is expected.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from data_engine.config import CleanConfig
from data_engine.filters.base import MessageView, Reasons

_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_MIN_LETTERS = 12
# py3langid names Chinese varieties apart; short Mandarin with some names reads as Wu or
# Cantonese. Written Chinese is one language for a reply filter.
_ALIASES = {"wuu": "zh", "yue": "zh"}
_SHORT_HAN = 20


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # loads a model: lazy

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)


def known_languages() -> frozenset[str]:
    """The ISO 639-1 codes the detector can return (its classes, aliases folded)."""
    return frozenset(_ALIASES.get(c, c) for c in _identifier().nb_classes)


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text``, or None when there is too little text to tell."""
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    if sum(ch.isalpha() for ch in text) < _MIN_LETTERS and not _is_short_han(text):
        return None
    lang = _identifier().classify(text)[0]
    return _ALIASES.get(lang, lang)


def _is_short_han(text: str) -> bool:
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    letters = sum(ch.isalpha() for ch in text)
    return 0 < han == letters and len(text.strip()) <= _SHORT_HAN


def language_ok(text: str, expected: set[str]) -> bool:
    lang = detect_language(text)
    if lang is None or lang in expected:
        return True
    return lang in ("zh", "ja") and bool(expected & {"zh", "ja"}) and _is_short_han(text)


def wrong_language(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                   ) -> Reasons:
    expected = set(config.languages)
    if not expected:
        return [None] * view.num_rows
    return ["wrong_language" if (alive is None or alive[row])
            and not language_ok("\n".join(view.replies(row)), expected)
            else None for row in range(view.num_rows)]
