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
