"""Each cleaning filter with cases that must drop and cases that must stay, in ja/zh/en."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from data_engine.config import CleanConfig, LengthConfig, RepetitionConfig, TagListConfig
from data_engine.filters import FILTERS, REASONS
from data_engine.filters.language import detect_language, wrong_language
from data_engine.filters.length import estimate_tokens, length_bounds
from data_engine.filters.repetition import has_char_run, is_degenerate
from data_engine.filters.special_tokens import special_token_literal
from data_engine.filters.structure import (bad_role_order, bad_tool_call, empty_turn,
                                           no_assistant_reply, unmatched_tool_call)
from data_engine.filters.tag_list import is_tag_list

from .helpers import chat, msg, view_of

CALL = json.dumps([{"type": "function", "function": {"name": "get_weather",
                                                     "arguments": "{\"city\": \"Tokyo\"}"}}])


def reasons(check, conversations, config=None):
    return check(view_of(conversations), config or CleanConfig())


def test_reason_codes_are_unique_and_documented_in_order():
    assert len(REASONS) == len(set(REASONS))
    assert REASONS[:2] == ("malformed_json", "unknown_format")
    assert {r for f in FILTERS for r in f.reasons} == set(REASONS[2:])


# empty_turn --------------------------------------------------------------------------------

@pytest.mark.parametrize("conversation", [
    chat("記事のタイトルを考えてください。", "   "),
    chat("", "这是答案。"),
    [msg("system", " \n"), msg("user", "Hello?"), msg("assistant", "Hi there, how can I help?")],
    [],
])
def test_empty_turn_drops(conversation):
    assert reasons(empty_turn, [conversation]) == ["empty_turn"]


def test_empty_turn_keeps_text_and_tool_call_turns():
    with_tools = [msg("user", "東京の天気は？"), msg("assistant", "", tool_calls=CALL),
                  msg("tool", "晴れ、18度"), msg("assistant", "東京は晴れで18度です。")]
    assert reasons(empty_turn, [chat("Hi", "Hello there!"), with_tools]) == [None, None]


# bad_role_order ----------------------------------------------------------------------------

@pytest.mark.parametrize("roles", [
    ["assistant", "user", "assistant"],
    ["user", "user", "assistant"],
    ["user", "assistant", "system", "user", "assistant"],
    ["user", "bot"],
    ["user", "tool", "assistant"],
    ["user", "assistant", "assistant"],
])
def test_bad_role_order_drops(roles):
    conversation = [msg(r, "テキスト") for r in roles]
    assert reasons(bad_role_order, [conversation]) == ["bad_role_order"]


def test_bad_role_order_tool_turns_need_a_call_and_a_reply():
    call_without_tool = [msg("user", "天气？"), msg("assistant", "", CALL), msg("assistant", "晴。")]
    assert reasons(bad_role_order, [call_without_tool]) == ["bad_role_order"]
    valid = [msg("system", "你是助手。"), msg("user", "北京天气？"), msg("assistant", "", CALL),
             msg("tool", "晴"), msg("tool", "18度"), msg("assistant", "北京今天晴，18度。"),
             msg("user", "谢谢"), msg("assistant", "不客气！")]
    assert reasons(bad_role_order, [valid, chat("Hi", "Hello!", system="Be kind.")]) == [None, None]


# unmatched_tool_call -----------------------------------------------------------------------

def _calls(*ids):
    return json.dumps([{"id": i, "type": "function",
                        "function": {"name": "weather", "arguments": "{}"}} for i in ids])


def _result(call_id, text="晴れ"):
    return dict(msg("tool", text), tool_call_id=call_id)


def _tools(call_turn, *results):
    return [msg("user", "東京と大阪の天気は？"), msg("assistant", "", call_turn), *results,
            msg("assistant", "東京は晴れ、大阪は雨です。")]


@pytest.mark.parametrize("conversation", [
    _tools(_calls("a", "b"), _result("a"), _result("c")),  # names no call
    _tools(_calls("a", "b"), _result("a"), _result("a")),  # answers a call twice
    _tools(_calls("a", "b"), _result("a")),  # leaves b unanswered
    _tools(_calls("a"), _result("a")) + [msg("user", "もう一度"), msg("assistant", "", _calls("d")),
                                          _result("a"), msg("assistant", "晴れ")],  # an old call
], ids=["unknown id", "answered twice", "unanswered", "earlier turn's id"])
def test_unmatched_tool_call_drops(conversation):
    assert reasons(unmatched_tool_call, [conversation]) == ["unmatched_tool_call"]


def test_unmatched_tool_call_keeps_matched_and_positional_results():
    keep = [
        _tools(_calls("a", "b"), _result("b"), _result("a")),  # parallel calls, any order
        _tools(_calls("a", "b"), msg("tool", "晴れ"), msg("tool", "雨")),  # results without ids
        _tools(CALL, _result("x"), msg("tool", "雨")),  # calls without ids: nothing to check
        _tools(_calls("a"), _result("a")) + [msg("user", "もう一度"),
                                              msg("assistant", "", _calls("a")), _result("a"),
                                              msg("assistant", "晴れ")],  # an id used again later
        chat("Hi", "Hello!"),
    ]
    assert reasons(unmatched_tool_call, keep) == [None] * len(keep)
    bad = _tools(_calls("a"), _result("z"))
    assert reasons(unmatched_tool_call, [bad, bad]) == ["unmatched_tool_call"] * 2
    assert unmatched_tool_call(view_of([bad, bad]), CleanConfig(), alive=[False, True]) == \
        [None, "unmatched_tool_call"]



# bad_tool_call / unknown_tool --------------------------------------------------------------

WEATHER_TOOLS = json.dumps([{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}])


def _call_row(call_turn: str) -> list[dict]:
    return [msg("user", "東京の天気は？"), msg("assistant", "", call_turn), msg("tool", "晴れ"),
            msg("assistant", "東京は晴れです。")]


def _one(name="get_weather", arguments='{"city": "Tokyo"}') -> str:
    return json.dumps([{"id": "c1", "type": "function",
                        "function": {"name": name, "arguments": arguments}}])


def tool_view(conversations, tools):
    import pyarrow as pa

    from data_engine.filters import MessageView
    from data_engine.schema import MESSAGE_TYPE

    return MessageView(pa.array(conversations, pa.list_(MESSAGE_TYPE)), pa.array(tools,
                                                                                  pa.string()))


@pytest.mark.parametrize("call_turn, reason", [
    (_one(), None),
    (_one(arguments={"city": "Tokyo"}), None),          # arguments given as an object
    (_one(arguments=""), None),                          # a call without arguments
    (json.dumps({"name": "get_weather", "arguments": {"city": "Tokyo"}}), None),  # ShareGPT
    ("get_weather(city='Tokyo')", "bad_tool_call"),      # not JSON
    (_one(arguments="{'city': 'Tokyo'}"), "bad_tool_call"),  # Python repr, not JSON
    (_one(arguments='["Tokyo"]'), "bad_tool_call"),      # arguments not an object
    (_one(name=""), "bad_tool_call"),
    (json.dumps([{"type": "function", "function": {"arguments": "{}"}}]), "bad_tool_call"),
    (json.dumps(["get_weather"]), "bad_tool_call"),
    ("[]", "bad_tool_call"),                             # a call turn that calls nothing
    (_one(name="get_wether"), "unknown_tool"),           # not one of the row's tools
])
def test_bad_tool_call_and_unknown_tool(call_turn, reason):
    assert bad_tool_call(tool_view([_call_row(call_turn)], [WEATHER_TOOLS]),
                         CleanConfig()) == [reason]


def test_tool_names_are_checked_only_against_tools_the_row_defines():
    unknown = _call_row(_one(name="search"))
    flat = json.dumps([{"name": "search", "parameters": {}}])  # glaive/xLAM-style definitions
    view = tool_view([unknown, unknown, unknown, chat("Hi", "Hello!")],
                     [WEATHER_TOOLS, None, flat, WEATHER_TOOLS])
    assert bad_tool_call(view, CleanConfig()) == ["unknown_tool", None, None, None]
    # a broken call outranks an unknown one in the same row; rows outside `alive` are skipped
    both = _call_row(_one(name="search")) + [msg("user", "もう一度"),
                                             msg("assistant", "", "oops"), msg("tool", "x"),
                                             msg("assistant", "晴れ")]
    view = tool_view([both, both], [WEATHER_TOOLS, WEATHER_TOOLS])
    assert bad_tool_call(view, CleanConfig(), alive=[False, True]) == [None, "bad_tool_call"]

# no_assistant_reply ------------------------------------------------------------------------

def test_no_assistant_reply():
    ends_with_user = chat("Q1", "A1 is the answer.") + [msg("user", "そして？")]
    ends_with_call = [msg("user", "天気は？"), msg("assistant", "", CALL)]
    got = reasons(no_assistant_reply, [ends_with_user, ends_with_call, [msg("user", "只有问题")],
                                       chat("问题", "回答在这里。")])
    assert got == ["no_assistant_reply"] * 3 + [None]


# special_token_literal ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "子育てと仕事の両立<|im_end|>", "答案是 8。<|endoftext|>", "The answer is 4.</s>",
    "<|im_start|>assistant\nHello", "[INST] do it [/INST]", "<|eot_id|>",
    "Done.<end_of_turn>\n<start_of_turn>user", "<|end|>",
    "Done.<turn|>", "<|turn>model\nHi", '<|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|>',
    "<tool_response|>", "答えは4です。<｜end▁of▁sentence｜>", "<｜Assistant｜>Hi",
])
def test_special_token_literal_drops(text):
    assert reasons(special_token_literal, [chat("質問", text)]) == ["special_token_literal"]


def test_special_token_literal_checks_reasoning_and_keeps_plain_markup():
    with_reasoning = [msg("user", "Q?"), msg("assistant", "A.", reasoning="think <|im_end|>")]
    plain = chat("Use a pipe: a | b", "Write `x || y` or <b>bold</b>; 1 < 2 > 0 and |x|, "
                 "a <| b, c |> d, <Tab|> in caps, <｜ wide ｜>.")
    assert reasons(special_token_literal, [with_reasoning, plain]) == ["special_token_literal", None]


def test_special_tokens_batch_match_equals_the_pattern():
    """RE2 runs only on strings holding a byte a match starts with; same answers as
    ``_pattern`` (literals starting with a non-ASCII character included), nulls False."""
    import random

    import pyarrow as pa

    from data_engine.filters.special_tokens import _contains, _pattern

    rng = random.Random(5)
    pools = ["<|", "|>", "im_end", " \u3000", "</s>", "[INST]", "｜END｜", "子育て", "ab", "<", "["]
    texts = ["".join(rng.choice(pools) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    texts += [None, ""]
    for literals in (("<s>", "</s>", "[INST]"), ("｜END｜", "", "</s>"), ()):
        expected = [t is not None and _pattern(literals).search(t) is not None for t in texts]
        assert True in expected and False in expected
        assert _contains(pa.array(texts, pa.string()), literals).tolist() == expected


# tag_list ----------------------------------------------------------------------------------

TAGS = TagListConfig()


@pytest.mark.parametrize("text", [
    "自己紹介｜子育て｜ワーママ｜30代",
    "#旅行 #京都 #紅葉 #カフェ",
    "節約・投資・副業・貯金・家計簿",
    "キャンプ | アウトドア | 初心者 | 道具",
    "python, pandas, numpy, matplotlib",
    "数学、加法、减法、应用题",
    "#AI #machinelearning",
    # the shapes Japanese title data writes them in
    "東京、経済、株価",
    "「東京、経済、株価」",
    "経済・株価・円安",
    "東京　経済　株価　日経平均",
    "【東京】【経済】【株価】【円安】",
    "［経済］［株価］［円安］",
    "キーワード: 半導体, AI, 投資, 東京",
    "タグ：東京、経済、株価、円安",
    "#東京\n#経済\n#株価",
    "東京、経済、株価、円安。",
    "Keywords: AI, robotics",
    "ガーデニング・花のある暮らし・多肉植物・家庭菜園",  # a noun phrase with の is a keyword
    "#ニュース",  # one hashtag is a tag list of one
    "「#子育て」",
    "＃AI",
])
def test_tag_list_drops(text):
    assert is_tag_list(text, TAGS)


@pytest.mark.parametrize("text", [
    "京都・大阪・神戸を巡る旅",
    "ワーママ3年目に気づいた、仕事と子育てを両立する5つのコツ",
    "子育て｜私が学んだ10のこと",
    "I bought apples, oranges, and bananas at the market.",
    "小明有 3 个苹果，又买了 5 个，一共有 8 个苹果。",
    "Use #include <stdio.h> to print.",
    "1. 京都\n2. 大阪\n3. 神戸\n4. 奈良",
    "1, 1, 2, 3, 5, 8, 13, 21",  # a number sequence is an answer
    "1/2 + 1/4 = 3/4",  # a slash between digits is no separator
    "2024/12/07",
    "3.5%, 4.1%, 2.0%, -1.2%",
    # headlines: the last segment holds a particle and a predicate
    "東京・大阪・名古屋・福岡で実証実験開始",
    "ソニー、任天堂、トヨタ、ホンダが増益",
    "株価・為替・金利・原油の動きを解説",
    "大谷翔平　50本塁打　達成",  # three spaced parts: a headline's style
    "古池や\n蛙飛び込む\n水の音",
    "「走る・泳ぐ・漕ぐ」トライアスロン入門",
    "#define A 1\n#define B 2",  # preprocessor lines are code
    "#1", "＃２", "#FFF", "#1a2b3c", "#!/bin/sh", "#pragma",  # numbers, colours, code
    "#ニュース 速報です",
    "Red, green, blue",
    # sentences cut by commas or spaces: kana, hangul, one-character and number segments
    "はい、そうです、よろしく",
    "今日は、晴れて、暖かい",
    "네, 알겠습니다, 감사합니다",
    "서울에서 열린 반도체 박람회",
    "0 加 1 等于 1。",
    "床前明月光\n疑是地上霜\n举头望明月\n低头思故乡",  # verse: lines of a few kanji
])
def test_tag_list_keeps_text(text):
    assert not is_tag_list(text, TAGS)


def test_a_list_the_user_asked_for_is_no_tag_list():
    """`Jupiter, Saturn, Uranus, Neptune` answers "Name the four gas giants"; the same
    shape answering "Write a title" is the defect the filter is for."""
    from data_engine.filters.tag_list import tag_list

    rows = [chat("Name the four gas giants.", "Jupiter, Saturn, Uranus, Neptune"),
            chat("この記事にハッシュタグを付けてください。", "#旅行 #京都 #紅葉"),
            chat("次の記事のタイトルを一つ提案してください。", "東京、経済、株価"),
            chat("Write a title for this article.", "Jupiter, Saturn, Uranus, Neptune"),
            # asked in an earlier turn, not in the one this reply answers
            chat("List the gas giants.", "Jupiter, Saturn, Uranus, Neptune")
            + [msg("user", "Now a title for the article?"),
               msg("assistant", "planets, space, NASA, science")]]
    assert tag_list(view_of(rows), CleanConfig()) == [None, None, "tag_list", "tag_list",
                                                      "tag_list"]
    strict = CleanConfig()
    strict.tag_list.allow_when_asked = False
    assert tag_list(view_of(rows), strict) == ["tag_list"] * 5


def test_an_article_that_mentions_a_list_excuses_no_tag_list():
    """The excuse read the whole user turn, article included: `やることリスト`, `例を挙げる`,
    `一覧`, a luggage `タグを付け忘れて` or `a reading list` in the article kept a tag-list
    reply to "write a title". Only a sentence that asks counts."""
    from data_engine.filters.tag_list import asked_for_a_list, tag_list

    ask = "次の記事の冒頭を読んで、タイトルを一つ考えてください。\n\n"
    bodies = ["毎朝やることリストを書くようにしました。", "良さは、例を挙げるときりがありません。",
              "区の公園の一覧を見て、週末ごとに回っています。",
              "旅行かばんに名前のタグを付け忘れて、空港で困りました。",
              "I keep a reading list in a small notebook."]
    rows = [chat(ask + body, "自己紹介｜子育て｜ワーママ｜30代") for body in bodies]
    assert tag_list(view_of(rows), CleanConfig()) == ["tag_list"] * len(bodies)
    for request in ("Can you list the planets?", "Give me five keywords for SEO.",
                    "記事を読んで。キーワードを5つ挙げて", "请列出三个关键词", "列出三个关键词。",
                    "이 글의 키워드를 알려 주세요"):
        assert asked_for_a_list(request), request
    assert not asked_for_a_list("他列出了三个原因。")


def test_tag_list_prefilter_never_hides_a_tag_list():
    from data_engine.filters.tag_list import _may_be_tag_list

    texts = ["東京　経済　株価　日経平均", "東京\n経済\n株価\n円安", "【東京】【経済】【株価】",
             "AI 2 X東京X 3 4", "plain text", "", "  "]
    may = _may_be_tag_list(pa.array(texts), TAGS).tolist()
    assert all(may[i] for i, t in enumerate(texts) if is_tag_list(t, TAGS))
    assert may[4:] == [False, False, False]


# degenerate_repetition ---------------------------------------------------------------------

REP = RepetitionConfig()


@pytest.mark.parametrize("text", [
    "」」」」」」",
    "子育てと仕事の両立」」」」」」」」」」」」",
    "the the the",
    "ですですですです",
    "ありがとうございますありがとうございますありがとうございます",
    "好的好的好的好的",
    "I think so. " * 30,
    "答案是" + "八" * 9,
    "a, a, a, a, a",
    "」」」」",  # the failed model's reply, in full: punctuation and nothing else
    "...",
    "w" * 13,  # a laughter mark past max_expressive_run
    "速報！！！！！！",  # `！` keeps the plain limit
    "タイトルですですです",  # a loop, and lexically the same as emphasis said three times
    "節約のコツまとめまとめまとめ",
])
def test_degenerate_repetition_drops(text):
    assert is_degenerate(text, REP)


@pytest.mark.parametrize("text", [
    "ワーママ3年目に気づいた両立のコツ",
    "Wait…… what happened？！！！",
    "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n| 4 | 5 | 6 |",
    "The answer is 1000000, that is one million.",
    "3 加 5 等于 8，所以小明一共有 8 个苹果。",
    "He said that that was fine.",
    "def f(x):\n    return g(h(x))\n# ------------------------------------",
    "One billion is 1,000,000,000.",  # `,000` three times is a number, not a loop
    "np.zeros(4) returns array([0., 0., 0., 0.]).",
    "Set it to [0, 0, 0, 1].",
    "被告人○○○○○は、罪を認めた。",  # a redacted name
    "評価：★★★★★",
    # writing in Japanese, Chinese and Korean: laughter, emphasis, onomatopoeia
    "wwwww\u3000爆笑必至の動物動画",
    "哈哈哈哈哈，笑死我了",
    "ㅋㅋㅋㅋㅋ 웃긴 영상 모음",
    "〜〜〜〜〜夏休みスペシャル〜〜〜〜〜",
    "♪♪♪♪♪ 今週のヒット曲",
    "はいはい、分かりました",
    "?!",
])
def test_degenerate_repetition_keeps_text(text):
    assert not is_degenerate(text, REP)


def test_char_runs_skip_exempt_characters():
    assert not has_char_run("a----------b", 4)
    assert not has_char_run("ああああ", 4) and has_char_run("あああああ", 4)
    assert has_char_run("」」」」」", 4) and not has_char_run("12222222", 4)


def test_degenerate_flags_equal_is_degenerate_on_random_texts():
    """The batch rules (char runs, phrase candidates from hashed token ids, zlib last) give
    ``is_degenerate``'s answers; repeated words, phrases and runs across case and scripts."""
    import random

    from data_engine.filters.repetition import degenerate_flags

    rng = random.Random(11)
    words = ["the", "The", "THE", "cat", "a1", "ですです", "」", "八", "…", "-", " ", "\n", "。",
             "ab", "Ab", "x" * 30, "12", "はい", "！", "w" * 5, "哈哈哈", "?", "ー" * 4]
    texts = []
    for _ in range(3000):
        phrase = [rng.choice(words) for _ in range(rng.randint(1, 4))]
        text = rng.choice(["", " ", "\n"]).join(phrase * rng.randint(1, 5))
        texts.append(rng.choice(words) + " " + text if rng.random() < 0.5 else text)
    texts += ["", "a" * 300, "ab " * 100, "子育て" * 80]
    expected = [is_degenerate(t, REP) for t in texts]
    assert True in expected and False in expected
    assert degenerate_flags(texts, REP).tolist() == expected


def test_token_ids_are_the_polynomial_hash_of_each_token():
    import re

    from data_engine.filters.repetition import (TOKEN, _ALNUM_TAG, _HASH_BASE, _SEPARATOR_TAG,
                                                _codes, _token_ids)

    texts = ["the cat sat", "", "ab12 , ですA", "x" * 5000 + " y", "  ", "42"]
    codes, starts = _codes(texts)
    expected = []
    for number, text in enumerate(texts):
        for token in TOKEN.findall(text):
            if re.fullmatch("[A-Za-z0-9]+", token):
                expected.append(sum(ord(c) * pow(int(_HASH_BASE), k, 1 << 64)
                                    for k, c in enumerate(token)) % (1 << 64) | int(_ALNUM_TAG))
            else:
                expected.append(ord(token))
        if number < len(texts) - 1:
            expected.append(int(_SEPARATOR_TAG) + number)
    assert _token_ids(codes, starts[1:] - 1).tolist() == expected


# too_short / too_long ----------------------------------------------------------------------

def test_estimate_tokens_counts_cjk_per_character():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("子育て") == 3
    assert estimate_tokens("３加５") == 3  # full-width forms are CJK-width characters
    assert estimate_tokens("AI时代") == 3


def test_estimate_tokens_array_equals_estimate_tokens():
    """The (bytes - characters) / 2 shortcut and the regex count agree with the per-string
    estimate: CJK at every range's ends, other non-ASCII of 2, 3 and 4 bytes, nulls."""
    import random

    import pyarrow as pa

    from data_engine.filters.length import _CJK_RANGES, estimate_tokens_array

    rng = random.Random(9)
    edges = [chr(c) for lo, hi in _CJK_RANGES for c in (lo - 1, lo, hi, hi + 1)]
    pools = ["abc 12", "子育て。", "éü", "…—※", "\U0001F600", "한국어", "ＡＩ！", "".join(edges)]
    parts = [[None if rng.random() < 0.1 else
              "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 12)))
              for _ in range(2000)] for _ in range(3)]
    got = estimate_tokens_array(*(pa.array(p, pa.string()) for p in parts))
    assert got.tolist() == [estimate_tokens("".join(t or "" for t in texts))
                            for texts in zip(*parts)]


def test_length_bounds_short_long_and_fine():
    config = CleanConfig(length=LengthConfig(max_tokens=100, min_reply_tokens=2))
    rows = [chat("Yes or no?", "OK"), chat("记事", "八"), chat("長" * 120, "はい、そうです。"),
            chat("Title please", "A fine title here")]
    assert reasons(length_bounds, rows, config) == ["too_short", "too_short", "too_long", None]


def test_tool_definitions_count_toward_the_length():
    """The template renders a row's tools into its prompt: 300 tokens of definitions, and
    the template's instructions around them, push a short conversation over max_tokens 100,
    and into its token count."""
    import pyarrow as pa

    from data_engine.filters.base import MessageView
    from data_engine.filters.length import row_tokens
    from data_engine.schema import MESSAGE_TYPE

    config = CleanConfig(length=LengthConfig(max_tokens=100, min_reply_tokens=2))
    rows = [chat("Title please", "A fine title here")] * 3
    tools = json.dumps([{"type": "function",
                         "function": {"name": "f", "description": "x" * 1200}}])
    view = MessageView(pa.array(rows, pa.list_(MESSAGE_TYPE)),
                       pa.chunked_array([pa.array([None, tools, "[]"], pa.string())]))
    assert length_bounds(view, config) == [None, "too_long", None]
    plain, offered, empty = row_tokens(view, config.length).tolist()
    overhead = config.length.tools_overhead_tokens
    assert offered - plain == (len(tools) + 3) // 4 + overhead  # ASCII: 4 characters a token
    assert empty - plain == 1  # "[]" offers none: the template renders no tools block
    # One tool of 200 characters: the conversation alone fits, the instructions do not.
    small = json.dumps([{"type": "function", "function": {"name": "f", "description": "x" * 150}}])
    view = MessageView(pa.array(rows[:1], pa.list_(MESSAGE_TYPE)), pa.array([small]))
    assert length_bounds(view, config) == ["too_long"]
    config.length.tools_overhead_tokens = 0
    assert length_bounds(view, config) == [None]


def test_length_bounds_with_a_real_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["a", "b", "c", "d", "e"])}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    config = CleanConfig(length=LengthConfig(tokenizer=str(tmp_path), max_tokens=20,
                                             min_reply_tokens=2, turn_overhead_tokens=0))
    # "abcde" is 2 estimated tokens but 1 token for this word-level tokenizer.
    rows = [chat("a b", "abcde"), chat("a b", "a b c"), chat("a " * 15, "a b c d e f")]
    assert reasons(length_bounds, rows, config) == ["too_short", None, "too_long"]


# wrong_language ----------------------------------------------------------------------------

def test_wrong_language_off_without_languages():
    assert reasons(wrong_language, [chat("Q", "Das ist eine Antwort auf Deutsch.")]) == [None]


def test_wrong_language_with_expected_languages():
    config = CleanConfig(languages=["ja", "en", "zh"])
    rows = [
        chat("Q", "Das ist eine längere Antwort auf Deutsch, und sie ist ganz falsch hier."),
        chat("Q", "이것은 한국어로 된 답변입니다. 여기서는 맞지 않습니다."),
        chat("Q", "ワーママ3年目に気づいた両立のコツ"),
        chat("Q", "京都観光完全攻略"),
        chat("Q", "3 加 5 等于 8，所以小明一共有 8 个苹果。"),
        chat("Q", "Ray is a framework for distributed Python programs."),
        chat("Q", "42"),
    ]
    assert reasons(wrong_language, rows, config) == ["wrong_language"] * 2 + [None] * 5


def test_wrong_language_only_japanese():
    config = CleanConfig(languages=["ja"])
    rows = [chat("Q", "这是一个很长的中文回答，用来说明语言过滤器会把它过滤掉。"),
            chat("Q", "京都観光完全攻略"), chat("Q", "Plain English sentences do not belong here.")]
    assert reasons(wrong_language, rows, config) == ["wrong_language", None, "wrong_language"]
    assert detect_language("ひらがな") == "ja"


def test_chinese_varieties_count_as_chinese():
    config = CleanConfig(languages=["zh"])
    rows = [chat("Q", "侬好，阿拉今朝去白相，侬要一道去伐？"), chat("Q", "你食咗飯未呀？我哋一齊去飲茶啦。")]
    assert reasons(wrong_language, rows, config) == [None, None]


# copied_prompt ------------------------------------------------------------------------------

ARTICLE = ("Suggest a title for this article:\n\nI started running three mornings a week last "
           "spring. At first I could barely finish a mile without stopping.")
JA_ARTICLE = ("次の記事の冒頭を読んで、タイトルを一つ考えてください。\n\n高齢になった猫の食事を、"
              "やわらかいフードに切り替えました。かかりつけの獣医さんと相談しながら調整しています。")


@pytest.mark.parametrize("conversation", [
    chat(ARTICLE, "I started running three mornings a week last spring."),  # the opening
    chat(ARTICLE, "i started  running three mornings a week LAST spring"),  # case, spaces
    chat(JA_ARTICLE, "高齢になった猫の食事を、やわらかいフードに切り替えました。"),  # no word boundaries
    chat("What is the best way to store fresh basil at home?",
         "What is the best way to store fresh basil at home?"),  # the question echoed
    [msg("system", "Always answer: Please consult the user manual for details."),
     msg("user", "How do I reset it?"),
     msg("assistant", "Please consult the user manual for details.")],  # copied from system
])
def test_copied_prompt_drops(conversation):
    from data_engine.filters.copied import copied_prompt

    assert reasons(copied_prompt, [conversation]) == ["copied_prompt"]


@pytest.mark.parametrize("conversation", [
    chat(ARTICLE, "From Barely a Mile to Three Runs a Week"),  # a title reusing some words
    chat(JA_ARTICLE, "高齢猫のごはん、やわらかいフードへの切り替え記録"),
    chat("What is the capital of France? Paris or Lyon?", "Paris"),  # short: never a copy
    chat("Fix the grammar: She go to the market every Sunday morning with her brothers.",
         "She goes to the market every Sunday morning with her brothers."),  # an edit
    # a reply repeating an earlier reply copies no prompt
    [msg("user", "Say something nice about autumn."),
     msg("assistant", "Autumn leaves turn the whole street into a warm painting."),
     msg("user", "Again?"),
     msg("assistant", "Autumn leaves turn the whole street into a warm painting.")],
])
def test_copied_prompt_keeps(conversation):
    from data_engine.filters.copied import copied_prompt

    assert reasons(copied_prompt, [conversation]) == [None]


@pytest.mark.parametrize("prompt, reply", [
    ("Fix the grammar: She go to the market every Sunday morning with her two younger "
     "brothers.", "She goes to the market every Sunday morning with her two younger brothers."),
    ("Correct the spelling: I recieved the package yesterday and it was in perfect condition.",
     "I received the package yesterday and it was in perfect condition."),
    ("Make this formal: Hey, can you send me the report by Friday, thanks a lot.",
     "Hello, can you send me the report by Friday, thanks a lot."),
])
def test_one_word_edits_stay_under_the_default_fraction(prompt, reply):
    """The evidence behind min_fraction 0.95: a one-word edit keeps 0.85-0.90 of the reply's
    8-grams in its prompt, so editing tasks are kept."""
    from data_engine.filters.copied import _normal, copied_fraction, is_copied

    fraction = copied_fraction(_normal(reply), _normal(prompt), 8)
    assert 0.8 <= fraction < CleanConfig().copied_prompt.min_fraction, fraction
    assert not is_copied(reply, prompt, CleanConfig().copied_prompt)


def test_copied_prompt_threshold_is_configurable_and_checked():
    from data_engine.config import CopiedPromptConfig
    from data_engine.filters.copied import copied_prompt

    edit = chat("Fix the grammar: She go to the market every Sunday morning with her brothers.",
                "She goes to the market every Sunday morning with her brothers.")
    strict = CleanConfig(copied_prompt=CopiedPromptConfig(min_fraction=0.8))
    assert reasons(copied_prompt, [edit], strict) == ["copied_prompt"]
    assert CopiedPromptConfig(min_fraction=0.0, ngram=1, min_chars=0).check() == [
        "min_chars: must be >= 1", "ngram: must be >= 2", "min_fraction: must be in (0, 1]"]


@pytest.mark.parametrize("module", ["data_engine.filters", "data_engine.filters.copied",
                                    "data_engine.filters.repetition", "data_engine.filters.base"])
def test_each_filter_module_imports_first_in_a_fresh_interpreter(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _plain_copied_prompt(conversation, config):
    """The rule row by row, without the batch filter's shortcuts."""
    from data_engine.filters.copied import PROMPT_ROLES, is_copied

    prompt = []
    for turn in conversation:
        if turn["role"] in PROMPT_ROLES:
            prompt.append(turn["content"] or "")
        elif turn["role"] == "assistant" and turn["content"] and is_copied(
                turn["content"], "\n".join(prompt), config.copied_prompt):
            return "copied_prompt"
    return None


def _random_conversation(rng):
    pieces = ["ab", "ba", "aab", " ", "  ", "\n", "\t", "\u3000", "\xa0", "İ", "Σ", "ς", "A",
              "猫の", "食事", "。", "the cat", "THE CAT", "x"]
    conversation = []
    for _ in range(rng.randint(1, 5)):
        role = rng.choice(["system", "user", "user", "assistant", "assistant"])
        source = [t["content"] for t in conversation if t["role"] != "assistant"]
        if role == "assistant" and source and rng.random() < 0.6:
            text = rng.choice(source)
            start = rng.randrange(len(text) + 1)
            text = text[start:start + rng.randint(0, 40)]
            for _ in range(rng.randint(0, 2)):
                at = rng.randrange(len(text) + 1)
                text = text[:at] + rng.choice(pieces) + text[at:]
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        conversation.append(msg(role, text))
    return conversation


@pytest.mark.parametrize("copied", [{}, {"ngram": 4, "min_fraction": 0.8}, {"min_chars": 1},
                                    {"ngram": 2, "min_fraction": 1.0, "min_chars": 3},
                                    {"ngram": 3, "min_fraction": 0.5, "min_chars": 5}])
def test_copied_prompt_matches_the_plain_rule_on_random_rows(copied):
    """The batch filter's shortcuts (length bound, prompts only for long replies, pieces
    ruling out n-grams) never change an answer, with or without ``alive``."""
    import random

    import numpy as np

    from data_engine.config import CopiedPromptConfig
    from data_engine.filters.copied import copied_prompt

    rng = random.Random(7)
    config = CleanConfig(copied_prompt=CopiedPromptConfig(**copied))
    rows = [_random_conversation(rng) for _ in range(3000)]
    expected = [_plain_copied_prompt(row, config) for row in rows]
    assert "copied_prompt" in expected and None in expected
    assert copied_prompt(view_of(rows), config) == expected
    alive = np.array([rng.random() < 0.7 for _ in rows])
    assert copied_prompt(view_of(rows), config, alive) == [
        reason if keep else None for reason, keep in zip(expected, alive)]


def test_copied_prompt_counts_a_reply_at_its_lower_cased_length():
    """"İ" lower-cases to two characters: 8 of them make a 16-character reply."""
    from data_engine.filters.copied import copied_prompt

    assert reasons(copied_prompt, [chat("Say İİİİİİİİ twice", "İİİİİİİİ")]) == ["copied_prompt"]


def test_many_missing_never_exceeds_the_missing_count():
    import random

    from data_engine.filters.copied import _many_missing, _missing

    rng = random.Random(3)
    for _ in range(20000):
        prompt = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 30)))
        reply = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 30)))
        ngram, allowed = rng.randint(2, 9), rng.randint(-1, 6)
        if _many_missing(reply, prompt, ngram, allowed):
            assert _missing(reply, prompt, ngram) > allowed
