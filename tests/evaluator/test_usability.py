"""Reply classification, JSON validity and reference metrics (no model needed; the budget
uses SmolLM2's tokenizer)."""

from __future__ import annotations

import json

import pytest

from data_engine.config import CleanConfig
from data_engine.engines.base import Generation
from evaluator.data import EvalError, read_rows, to_row
from evaluator.usability import (add_reference_scores, json_valid, judge_reply, summarize,
                                 summarize_json)

REPETITION = CleanConfig().repetition


def _row(reply: str | None = "東京の桜が満開に", tags=()):
    messages = [{"role": "user", "content": "タイトルを付けてください"}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return to_row({"id": "r", "messages": messages, "source": "s", "tags": list(tags)}, "x:1")


@pytest.mark.parametrize("gen, failure", [
    (Generation("東京の桜、満開", "stop", 5), None),
    (Generation("東京の桜、満開が続く", "length", 64), "no_stop"),
    (Generation("   ", "stop", 1), "empty"),
    (Generation("」" * 40, "stop", 40), "degenerate"),
    (Generation("", "error", 0, "timeout: no reply"), "error"),
    # a reply that both loops and runs out of budget is named by its first failure
    (Generation("」" * 64, "length", 64), "no_stop"),
    # a call the server parsed out of the text (transformers serve does): an answer, not empty
    (Generation("", "stop", 9, tool_calls=[("get_time", '{"city": "Oslo"}')]), None),
])
def test_reply_failures_are_named_in_order(gen, failure):
    reply = judge_reply(_row(), gen, REPETITION)
    assert reply["failure"] == failure
    assert reply["usable"] is (failure is None)
    assert reply["stopped"] is (gen.error is None and gen.finish_reason == "stop")


def test_degenerate_is_counted_even_when_another_failure_names_the_reply():
    replies = [judge_reply(_row(), Generation("」" * 64, "length", 64), REPETITION),
               judge_reply(_row(), Generation("短い題", "stop", 3), REPETITION)]
    summary = summarize(replies, budget=64)
    assert summary["rate"] == 0.5 and summary["usable"] == 1
    assert summary["failures"] == {"error": 0, "no_stop": 1, "empty": 0, "degenerate": 0}
    assert summary["degenerate"] == 1


@pytest.mark.parametrize("text, valid", [
    ('{"title": "桜"}', True), ('```json\n{"a": [1, 2]}\n```', True), ("[1, 2", False),
    ("Sure! {\"a\": 1}", False), ("", False)])
def test_json_validity_only_for_rows_tagged_json(text, valid):
    assert json_valid(text) is valid
    tagged = judge_reply(_row(tags=["json"]), Generation(text, "stop", 3), REPETITION)
    untagged = judge_reply(_row(), Generation(text, "stop", 3), REPETITION)
    assert tagged["json_valid"] is valid and untagged["json_valid"] is None
    assert summarize_json([untagged]) is None
    assert summarize_json([tagged])["rate"] == float(valid)


def test_reference_metrics_score_japanese_and_rank_closer_answers_higher():
    rows = [_row("東京の桜が満開に"), _row("東京の桜が満開に"), _row(None)]
    replies = [judge_reply(r, Generation(text, "stop", 5), REPETITION) for r, text in
               zip(rows, ["東京の桜が満開に", "大阪で雨が降る", "anything"])]
    summary = add_reference_scores(rows, replies)
    assert summary["rows"] == 2  # the row without a reference is not scored
    exact, other = replies[0], replies[1]
    assert exact["chrf"] == pytest.approx(100.0) and exact["rouge_l"] == pytest.approx(1.0)
    assert 0.0 <= other["rouge_l"] < 0.3 and other["chrf"] < 30.0
    assert replies[2]["chrf"] is None


def test_a_row_ending_with_a_tool_call_has_no_text_reference(chat_tokenizer):
    """Its expected output is the call: chrF against its empty text scored every reply 0. It
    is still asked, and its call counts toward the budget (the model generates it)."""
    from evaluator.usability import budget_for

    arguments = json.dumps({"city": "Kyoto", "days": list(range(60))})
    call = [{"id": "c1", "type": "function",
             "function": {"name": "get_forecast", "arguments": arguments}}]
    calling = to_row({"messages": [{"role": "user", "content": "Forecast for Kyoto?"},
                                   {"role": "assistant", "content": "", "tool_calls": call}]},
                     "x:1")
    replying = to_row({"messages": [{"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello!"}]}, "x:2")
    assert calling.reference is None and calling.answered
    assert calling.prompt == [{"role": "user", "content": "Forecast for Kyoto?"}]
    assert replying.reference == "Hello!" and replying.answered
    replies = [judge_reply(r, Generation("<tool_call>...", "stop", 5), REPETITION)
               for r in (calling, replying)]
    assert add_reference_scores([calling, replying], replies)["rows"] == 1
    assert replies[0]["chrf"] is None
    # The call is longer than 64 tokens: the budget grows past its floor for it.
    assert budget_for(chat_tokenizer, [replying]) == 64 < budget_for(chat_tokenizer,
                                                                     [calling, replying])


def test_read_rows_splits_prompt_from_reference_and_reports_bad_input(tmp_path):
    (tmp_path / "test.jsonl").write_text(
        '{"id": "a", "messages": [{"role": "system", "content": "S"}, {"role": "user", '
        '"content": "Q"}, {"role": "assistant", "content": "A"}], "source": "x", "tags": []}\n'
        '\n{"id": "b", "messages": [{"role": "user", "content": "Q2"}]}\n')
    rows = read_rows(tmp_path, "test")
    assert [r.id for r in rows] == ["a", "b"]
    assert rows[0].prompt[-1] == {"role": "user", "content": "Q"}
    assert rows[0].reference == "A" and rows[0].question == "Q"
    assert rows[1].reference is None and rows[1].source == "unknown"
    with pytest.raises(EvalError) as missing:
        read_rows(tmp_path, "validation")
    assert (missing.value.code, missing.value.field) == ("split_not_found", "split")
    (tmp_path / "train.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(EvalError) as bad:
        read_rows(tmp_path, "train")
    assert bad.value.code == "bad_row" and "train.jsonl:1" in bad.value.message
    with pytest.raises(EvalError) as nowhere:
        read_rows(tmp_path / "nope", "test")
    assert nowhere.value.field == "data"
