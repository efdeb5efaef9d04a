"""`tag_list`: an assistant reply that is a list of keywords or hashtags instead of text.

28% of a real title-generation dataset were rows like `自己紹介｜子育て｜ワーママ｜30代`;
the model learned to emit separators and never a title. A reply is a tag list when it is
one short line and either
- two or more hashtags make up most of it (`#旅行 #京都 #紅葉`), or
- strong separators (`｜`, `|`) cut it into `min_strong_segments`+ short segments, or
- weak separators (`、 ・ / , ，`) cut it into `min_weak_segments`+ short segments,
where every segment is a keyword: at most `max_segment_chars` long and without sentence
punctuation. `京都・大阪・神戸を巡る旅` has three segments and stays a title; a list of
numbers (`1, 1, 2, 3, 5, 8, 13`) is an answer, and a slash between digits (`1/2 + 1/4`) is
no separator. A correct answer that is a list of names (`Jupiter, Saturn, Uranus,
Neptune` to "Name the gas giants") reads as a tag list too: where a source's task asks for
lists, disable the filter (`clean.disable: [tag_list]`).

``is_tag_list`` runs only on replies that pass its cheap necessary conditions, tested over
the batch with Arrow (see ``_may_be_tag_list``).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.config import CleanConfig, TagListConfig
from data_engine.filters.base import MessageView, Reasons, per_reply, to_numpy_bool
from data_engine.normalizers.text import python_whitespace, re2_literal

_HASHTAG = re.compile(r"[#＃][^\s#＃]+")
_STRONG = re.compile(r"\s*[｜|]\s*")
# A slash between digits is a fraction or a date (`1/2`, `12/24`), not a separator.
_WEAK = re.compile(r"\s*(?:[、・／,，]|(?<!\d)/|/(?!\d))\s*")
# A segment of digits and the signs around numbers: a list of only such segments is a
# number sequence (`1, 1, 2, 3, 5, 8`), an answer, never a tag list.
_NUMERIC = re.compile(r"[\d\s.,:%+\-−=×*/()]+")
_SENTENCE = re.compile(r"[。．！？!?]|[.:;]\s|[.]$")
# Every character a hashtag or a separator of _STRONG/_WEAK starts with.
_MARKS = "#＃｜|、・/／,，"


def is_tag_list(text: str, config: TagListConfig) -> bool:
    """True when ``text`` reads as a keyword list (see the module docstring)."""
    text = text.strip()
    if not text or "\n" in text or len(text) > config.max_chars:
        return False
    tags = _HASHTAG.findall(text)
    if len(tags) >= 2 and sum(map(len, tags)) >= 0.6 * len(text.replace(" ", "")):
        return True
    for pattern, needed in ((_STRONG, config.min_strong_segments),
                            (_WEAK, config.min_weak_segments)):
        segments = [s for s in pattern.split(text) if s]
        if len(segments) >= needed and all(_is_keyword(s, config) for s in segments) \
                and not all(_NUMERIC.fullmatch(s) for s in segments):
            return True
    return False


def _is_keyword(segment: str, config: TagListConfig) -> bool:
    return len(segment) <= config.max_segment_chars and not _SENTENCE.search(segment)


def _may_be_tag_list(texts: pa.Array, config: TagListConfig) -> np.ndarray:
    """Per text: ``is_tag_list`` may be true. Necessary conditions: the stripped text is
    non-empty, one line and at most `max_chars` long; and, unless a single segment can be
    enough, it holds a hashtag mark or a separator (without one, ``pattern.split`` leaves one
    segment and ``_HASHTAG`` finds nothing)."""
    text = pc.utf8_trim(texts, python_whitespace())  # str.strip()
    length = pc.utf8_length(text)
    ok = to_numpy_bool(pc.and_(pc.greater(length, 0), pc.less_equal(length, config.max_chars)))
    ok &= ~to_numpy_bool(pc.match_substring_regex(text, "\\n"))
    if min(config.min_strong_segments, config.min_weak_segments) >= 2:
        ok &= to_numpy_bool(pc.match_substring_regex(text, f"[{re2_literal(_MARKS)}]"))
    return ok


def tag_list(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None) -> Reasons:
    return per_reply(view, "tag_list", lambda text: is_tag_list(text, config.tag_list),
                     prefilter=lambda texts: _may_be_tag_list(texts, config.tag_list),
                     alive=alive)
