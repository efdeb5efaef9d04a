"""Normalisers: mojibake repair, safe width folding, invisible characters, trimming."""

from __future__ import annotations

import pytest

from data_engine.config import CleanConfig
from data_engine.normalizers.text import normalize_text
from data_engine.pipeline.clean import normalize_messages

from .helpers import chat, msg, work_table


@pytest.mark.parametrize("raw, expected", [
    ("donâ€™t stop", "don’t stop"),
    ("cafÃ©", "café"),
    ("ＡＩで変わる２０２４年の働き方", "AIで変わる2024年の働き方"),
    ("ｶﾞｲﾄﾞﾌﾞｯｸ", "ガイドブック"),
    ("  子育て\r\nの話  ", "子育て\nの話"),
    ("zero\u200bwidth\ufeff", "zerowidth"),
    ("bell\x07 char", "bell char"),
    ("line\u2028break\u2029paragraph", "line\nbreak\n\nparagraph"),  # web pages and PDFs
])
def test_normalize_text_repairs(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("text", [
    "x² + y²", "①②③", "【保存版】子育て！？（完全版）", "naïve café", "tab\tand\nnewline",
    "中文，标点。", "€5 – “quoted”",
])
def test_normalize_text_leaves_meaningful_characters(text):
    assert normalize_text(text) == text


def test_normalize_switches():
    assert normalize_text("cafÃ©", fix_mojibake=False) == "cafÃ©"
    assert normalize_text("ＡＩ", normalize_width=False) == "ＡＩ"


def test_normalize_messages_keeps_shape_and_tool_calls():
    rows = [chat(" ＡＩ ", "cafÃ©"), [msg("user", "q"), msg("assistant", "", tool_calls='[{"a": 1}]'),
                                     msg("tool", " r "), msg("assistant", "done", reasoning=" ｶﾞ ")]]
    table = work_table(rows)
    out = normalize_messages(table.column("messages"), CleanConfig()).to_pylist()
    assert [m["content"] for m in out[0]] == ["AI", "café"]
    assert [m["content"] for m in out[1]] == ["q", "", "r", "done"]
    assert out[1][1]["tool_calls"] == '[{"a": 1}]' and out[1][3]["reasoning_content"] == "ガ"
    sliced = normalize_messages(table.column("messages").slice(1), CleanConfig()).to_pylist()
    assert sliced == out[1:]


def test_a_calls_arguments_are_normalised_as_the_prompt_that_asked_for_them():
    """Full-width letters and digits fold in the tool calls' JSON text too: the user's
    `ＩＤ１２３` became `ID123` while the call kept `ＩＤ１２３`, so the model learned to
    turn one into the other. The JSON's own characters are left as they were."""
    import json

    calls = json.dumps([{"type": "function", "function": {
        "name": "lookup", "arguments": json.dumps({"id": "ＩＤ１２３", "note": "「ｶﾞｲﾄﾞ」"},
                                                  ensure_ascii=False)}}], ensure_ascii=False)
    row = [msg("user", "ＩＤ１２３の天気は？"), msg("assistant", "", tool_calls=calls),
           msg("tool", "ＩＤ１２３：晴れ"), msg("assistant", "晴れです。")]
    out = normalize_messages(work_table([row]).column("messages"), CleanConfig()).to_pylist()[0]
    assert out[0]["content"] == "ID123の天気は？"
    arguments = json.loads(json.loads(out[1]["tool_calls"])[0]["function"]["arguments"])
    assert arguments == {"id": "ID123", "note": "「ガイド」"}


def test_line_separators_become_line_breaks_and_the_calls_json_stays_json():
    """U+2028 kept raw in train.jsonl ended a line for the trainer's `str.splitlines`, so
    training failed on `dataset_row_invalid`, and the suggested fix wrote the same file.
    In text it is a line break; a call's JSON text keeps it (valid JSON at any depth)."""
    import json

    calls = json.dumps([{"type": "function", "function": {
        "name": "note", "arguments": json.dumps({"text": "a\u2028b"}, ensure_ascii=False)}}],
        ensure_ascii=False)
    assert "\u2028" in calls  # json.dumps leaves it raw
    row = [msg("user", "one\u2028two"), msg("assistant", "", tool_calls=calls),
           msg("tool", "ok"), msg("assistant", "x\u2029y")]
    out = normalize_messages(work_table([row]).column("messages"), CleanConfig()).to_pylist()[0]
    assert out[0]["content"] == "one\ntwo" and out[3]["content"] == "x\n\ny"
    arguments = json.loads(json.loads(out[1]["tool_calls"])[0]["function"]["arguments"])
    assert arguments == {"text": "a\u2028b"}


# --- the vectorised paths against their one-string definitions -------------------------------

def _random_strings(seed: int, count: int) -> list[str | None]:
    """ASCII with controls and whitespace, mojibake, full-width and half-width forms,
    invisible characters, CJK, Latin with accents, astral characters; nulls and empties."""
    import random

    rng = random.Random(seed)
    pools = ["abc XYZ 09", " \t\n\r\x0b\x0c\x1c\x85\xa0\u3000", "â€™Ã©Â", "ＡＩ２ｶﾞｲﾄﾞ",
             "\u200b\ufeff\x07\x7f\x9f\u2028\u2029", "子育て東京、。", "éüÅ", "\U0001F600\U00020000", "<|#"]
    out: list[str | None] = []
    for _ in range(count):
        if rng.random() < 0.05:
            out.append(None)
            continue
        chosen = rng.sample(pools, rng.randint(1, 3))
        size = rng.choice([0, 1, 5, 30])
        out.append("".join(rng.choice(rng.choice(chosen)) for _ in range(size)))
    return out


@pytest.mark.parametrize("fix_mojibake, normalize_width", [(True, True), (False, True),
                                                           (True, False), (False, False)])
def test_normalize_texts_equals_normalize_text(fix_mojibake, normalize_width):
    import pyarrow as pa

    from data_engine.normalizers.text import normalize_texts

    texts = _random_strings(1, 3000) + ["", None, "plain ascii", "  trim me \n"]
    values = pa.array(texts, pa.string())
    for array, expected in ((values, texts), (values.slice(17, 900), texts[17:917])):
        got = normalize_texts(array, fix_mojibake, normalize_width).to_pylist()
        assert got == [None if t is None else normalize_text(t, fix_mojibake, normalize_width)
                       for t in expected]


def test_python_whitespace_is_str_isspace_over_every_code_point():
    import sys

    from data_engine.normalizers.text import python_whitespace

    assert python_whitespace() == "".join(
        filter(str.isspace, map(chr, range(sys.maxunicode + 1))))


def test_has_bytes_matches_a_byte_search_per_string():
    import pyarrow as pa

    from data_engine.normalizers.text import has_bytes

    texts = _random_strings(2, 2000) + ["", None, ""]
    for kind in (pa.string(), pa.large_string()):
        values = pa.array(texts, kind)
        # sparse and dense hits (the two ways of finding the strings), sliced arrays
        for ranges in ([(0x1C, 0x1C)], [(ord("<"), ord("<")), (0xF0, 0xF4)],
                       [(0x80, 0xFF)], [(0x00, 0x7F), (0xC0, 0xFF)], [(0x30, 0x39), (0x35, 0x41)]):
            for lo, hi in ((0, len(texts)), (13, 1500), (1999, 2003)):
                got = has_bytes(values.slice(lo, hi - lo), ranges)
                assert got.tolist() == [t is not None and any(
                    a <= b <= z for b in t.encode() for a, z in ranges) for t in texts[lo:hi]]
    assert has_bytes(pa.array([], pa.string()), [(0, 255)]).tolist() == []


def test_first_bytes_cover_every_character_of_the_class():
    import re
    import sys

    from data_engine.normalizers.text import _INVISIBLE, _MOJIBAKE_HINT, _WIDTH_HINT, first_bytes

    everything = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    for pattern in (_INVISIBLE.pattern[:-1] + "\r]", _MOJIBAKE_HINT.pattern, _WIDTH_HINT.pattern,
                    "a-", "<|x"):
        first = pattern[:pattern.index("]") + 1] if pattern[0] == "[" else re.escape(pattern[0])
        ranges = first_bytes(pattern)
        for ch in re.findall(first, everything):
            assert any(lo <= ch.encode()[0] <= hi for lo, hi in ranges), (pattern, ch)
    # ranges split where the UTF-8 length changes: no continuation byte is a first byte
    assert first_bytes("[\x7f-\x9f]") == [(0x7F, 0x7F), (0xC2, 0xC2)]
