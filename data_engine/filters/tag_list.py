"""`tag_list`: an assistant reply that is a list of keywords or hashtags instead of text.

28% of a real title-generation dataset were rows like `自己紹介｜子育て｜ワーママ｜30代`;
the model learned to emit separators and never a title. A reply is a tag list when it is
short (`max_chars`) and
- two or more hashtags make up most of it (`#旅行 #京都 #紅葉`, on one line or several;
  only hashtags are read across lines: Chinese verse is lines of a few kanji), or it is
  one hashtag and nothing else (`#ニュース`; not a number, `#1`, nor a colour, `#FFF`), or
- strong separators (`｜`, `|`) cut it into `min_strong_segments`+ keywords, or
- weak separators (`、 ・ / , ，`) cut it into `min_weak_segments`+ keywords, or
- `、 ・ , ，` cut it into `min_cjk_segments`+ keywords written in kanji and katakana
  (`東京、経済、株価`), or spaces into `min_weak_segments`+ such keywords of two or more
  characters (`東京　経済　株価　日経平均`). Kana in a segment (`はい、そうです、よろしく`,
  `古池や`) or hangul (Korean puts spaces and commas between words of a sentence) leave it
  to the other rules, and so do one-character or number segments (`0 加 1 等于 1`), or
- it is `min_strong_segments`+ bracketed keywords (`【東京】【経済】【株価】`), or
- a label says so (`タグ：`, `Keywords:`) and two or more keywords follow it.
A pair of quotes around the whole reply (`「東京、経済、株価」`) and one closing `。` are
looked through. A keyword is at most `max_segment_chars` long, without sentence punctuation,
and without a particle that starts a predicate (`福岡で実証実験開始`, `ホンダが増益`,
`神戸を巡る旅`; a noun phrase with `の`, `花のある暮らし`, is a keyword):
`東京・大阪・名古屋・福岡で実証実験開始` and `京都・大阪・神戸を巡る旅` stay titles. A list
of numbers (`1, 1, 2, 3, 5, 8, 13`) is an answer, a slash between digits (`1/2 + 1/4`) is no
separator, and a numbered list (`1. 京都` a line) is no keyword list. A correct answer that
is a list of names (`Jupiter, Saturn, Uranus, Neptune`) reads as a tag list too, unless a
sentence of the user turn before it asks for a list, tags or keywords (`Name the four gas
giants`, `List ...`, `Suggest hashtags`, `タグを付けて`, `キーワードを挙げて`, `列出`,
`키워드 ... 주세요`): a reply that does what was asked is no defect (`allow_when_asked`); an
article in the turn that only mentions a list (`やることリスト`) asks for nothing. Where a source's task asks for
lists in other words, disable the filter (`clean.disable: [tag_list]`).

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
from data_engine.normalizers.text import python_whitespace, re2_class_pattern, re2_literal

_HASHTAG = re.compile(r"[#＃][^\s#＃]+")
# A hashtag standing alone: word characters with a letter among them (not a number, `#1`,
# nor a shebang, `#!/bin/sh`), and no hex colour (`#FFF`, `#1a2b3c`).
_LONE_HASHTAG = re.compile(r"[#＃](?=\w*[^\W\d_])\w+")
_HEX_COLOUR = re.compile(r"#(?:[0-9A-Fa-f]{3,4}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})")
_STRONG = re.compile(r"\s*[｜|]\s*")
# A slash between digits is a fraction or a date (`1/2`, `12/24`), not a separator.
_WEAK = re.compile(r"\s*(?:[、・／,，]|(?<!\d)/|/(?!\d))\s*")
_CJK_WEAK = re.compile(r"\s*[、・,，]\s*")
_SPACES = re.compile(r"\s+")
# A segment of digits and the signs around numbers: a list of only such segments is a
# number sequence (`1, 1, 2, 3, 5, 8`), an answer, never a tag list.
_NUMERIC = re.compile(r"[\d\s.,:%+\-−=×*/()]+")
_SENTENCE = re.compile(r"[。．！？!?]|[.:;]\s|[.]$")
# Kana, kanji and hangul (with the long-vowel and repeat marks): what a CJK keyword is
# written in, besides Latin letters and digits (`AI`, `30代`).
_CJK = "\u3041-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af々〆"
# Kanji and katakana: what the CJK rules' keywords are written in (kana inflects, so a
# segment with hiragana may be a clause; hangul is written in spaced words).
_KANJI_KATAKANA = "\u30a1-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆"
_NOUN = re.compile(f"[{_KANJI_KATAKANA}A-Za-z0-9]*[{_KANJI_KATAKANA}][{_KANJI_KATAKANA}A-Za-z0-9]*")
# A particle between a word and more words (`福岡で実証`, `ホンダが増益`, `動きを解説`): a
# phrase with a predicate, not a keyword. The word before it is kanji, katakana or Latin, so
# kana inside a word (`ひとり暮らし`, `ながら`) is no particle; `を` is a particle wherever it
# stands. `の` joins nouns into a noun phrase, which tags are (`花のある暮らし`).
_PARTICLE = re.compile(f"[\u30a1-\u30ff\u3400-\u4dbf\u4e00-\u9fff々ーA-Za-z0-9]"
                       f"[がにではへもと][{_CJK}]|.を[{_CJK}]")
# Every keyword bracketed: `【東京】【経済】【株価】`, `[経済][株価][円安]`.
_BRACKETED = re.compile(r"\s*[【\[［〔〈《]([^】\]］〕〉》]+)[】\]］〕〉》]")
_LABEL = re.compile(r"^(?:キーワード|タグ|ハッシュタグ|key ?words?|tags?|hashtags?)\s*[:：]\s*",
                    re.IGNORECASE)
# C preprocessor lines are code, not hashtags (`#define A 1`).
_DIRECTIVES = {"include", "define", "undef", "if", "ifdef", "ifndef", "else", "elif", "endif",
               "pragma", "error"}
# A user turn that asks for a list, tags or keywords: the reply it gets may be one. Read a
# sentence at a time, and only a request: an English sentence that opens with a verb asking
# for one (`Name the four gas giants`, `List ...`, `Suggest hashtags ...`), or a CJK one that
# names a list, tags or keywords and asks (`タグを付けてください`, `请列出`, `키워드를 ... 주세요`).
# A user turn that holds an article is mostly statements: `やることリストを書く`, `例を挙げる
# と`, `a reading list` in it excused a tag-list reply to "write a title".
_REQUEST_EN = re.compile(
    r"^\W*(?:please\s+|now\s+|can you\s+|could you\s+)?"
    r"(?:list|enumerate|name (?:the|all|some|a few|\d+|two|three|four|five|six|seven|eight|"
    r"nine|ten)|(?:give|suggest|provide|write|generate|create|add|extract|pick|choose|"
    r"recommend)\b.{0,40}\b(?:list|tags?|hashtags?|key ?words?|key ?phrases?)|"
    r"what are (?:the|some)\b.{0,40}\b(?:tags?|hashtags?|key ?words?))\b", re.IGNORECASE)
_LIST_WORD_CJK = re.compile(r"タグ|ハッシュタグ|キーワード|リスト|一覧|列挙|挙げ|箇条書き"
                            r"|列出|列举|关键词|关键字|标签|나열|키워드|태그|목록")
_ASK_CJK = re.compile(r"ください|下さい|なさい|せよ|してほしい|して欲しい|教えて|挙げて|付けて|"
                      r"つけて|出して|書いて|にして|请|請|吧|주세요|줘|하세요|하시오|해라")
_LIST_VERB_ZH = re.compile(r"(?:列出|列举)(?!了)")  # Chinese asks without a 请: `列出三个关键词`
_SENTENCES = re.compile(r"(?<=[。．！？!?\n])|(?<=\.)\s")
_QUOTES = {"「": "」", "『": "』", '"': '"', "“": "”", "'": "'"}
# Every character a hashtag or a separator of _STRONG/_WEAK/_BRACKETED starts with.
_MARKS = "#＃｜|、・/／,，【[［〔〈《"


def _unwrapped(text: str) -> tuple[str, bool]:
    """``text`` without a tag label (and whether it had one), quotes around the whole of
    it, and one closing `。`."""
    label = _LABEL.match(text)
    if label:
        text = text[label.end():].strip()
    if len(text) > 2 and _QUOTES.get(text[0]) == text[-1] and text[-1] not in text[1:-1]:
        text = text[1:-1].strip()
    if text.endswith("。"):
        text = text[:-1].rstrip()
    return text, label is not None


def is_tag_list(text: str, config: TagListConfig) -> bool:
    """True when ``text`` reads as a keyword list (see the module docstring)."""
    text = text.strip()
    if not text or len(text) > config.max_chars:
        return False
    text, labelled = _unwrapped(text)
    tags = [t for t in _HASHTAG.findall(text) if t[1:].lower() not in _DIRECTIVES]
    if len(tags) >= 2 and sum(map(len, tags)) >= 0.6 * len(_SPACES.sub("", text)):
        return True
    if tags == [text] and _LONE_HASHTAG.fullmatch(text) and not _HEX_COLOUR.fullmatch(text):
        return True
    if "\n" in text:
        return False
    brackets = _BRACKETED.findall(text)
    if len(brackets) >= config.min_strong_segments \
            and not _BRACKETED.sub("", text).strip() \
            and all(_is_keyword(s.strip(), config) for s in brackets):
        return True
    # (separator, segments needed, for the CJK rules the shortest keyword; 0: any script)
    for pattern, needed, cjk in ((_STRONG, config.min_strong_segments, 0),
                                 (_WEAK, config.min_weak_segments, 0),
                                 (_CJK_WEAK, config.min_cjk_segments, 1),
                                 (_SPACES, config.min_weak_segments, 2)):
        segments = [s for s in pattern.split(text) if s]
        if labelled:
            needed = min(needed, 2)
        if len(segments) >= needed and all(_is_keyword(s, config) for s in segments) \
                and not all(_NUMERIC.fullmatch(s) for s in segments) \
                and (not cjk or all(len(s) >= cjk and _NOUN.fullmatch(s) for s in segments)):
            return True
    return False


def _is_keyword(segment: str, config: TagListConfig) -> bool:
    return len(segment) <= config.max_segment_chars and not _SENTENCE.search(segment) \
        and not _PARTICLE.search(segment)


def _may_be_tag_list(texts: pa.Array, config: TagListConfig) -> np.ndarray:
    """Per text: ``is_tag_list`` may be true. Necessary conditions: the stripped text is
    non-empty and at most `max_chars` long; and, unless a single segment can be enough, it
    holds a hashtag mark, a separator or bracket, a line break, or whitespace and a CJK
    character (without any, every split leaves one segment and ``_HASHTAG`` finds
    nothing)."""
    text = pc.utf8_trim(texts, python_whitespace())  # str.strip()
    length = pc.utf8_length(text)
    ok = to_numpy_bool(pc.and_(pc.greater(length, 0), pc.less_equal(length, config.max_chars)))
    if min(config.min_strong_segments, config.min_weak_segments,
           config.min_cjk_segments) >= 2:
        marks = to_numpy_bool(pc.match_substring_regex(text, f"[{re2_literal(_MARKS)}\\n]"))
        space = f"[{re2_literal(python_whitespace())}]"  # RE2's \s is ASCII only
        spaced = to_numpy_bool(pc.match_substring_regex(text, space)) & to_numpy_bool(
            pc.match_substring_regex(text, re2_class_pattern(f"[{_CJK}]")))
        ok &= marks | spaced
    return ok


def asked_for_a_list(prompt: str | None) -> bool:
    """True when a sentence of a user turn asks for a list, tags or keywords (see
    ``_REQUEST_EN``); an article that only mentions one does not."""
    if not prompt:
        return False
    for sentence in _SENTENCES.split(prompt):
        sentence = sentence.strip()
        if _REQUEST_EN.search(sentence) or _LIST_VERB_ZH.search(sentence) \
                or (_LIST_WORD_CJK.search(sentence) and _ASK_CJK.search(sentence)):
            return True
    return False


def tag_list(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None) -> Reasons:
    def excused(where: np.ndarray) -> np.ndarray:
        return np.array([asked_for_a_list(p) for p in view.user_turn_before(where)],
                        dtype=bool)

    return per_reply(view, "tag_list", lambda text: is_tag_list(text, config.tag_list),
                     prefilter=lambda texts: _may_be_tag_list(texts, config.tag_list),
                     alive=alive, excused=excused if config.tag_list.allow_when_asked else None)
