"""The probability judge on the real embedded model (SmolLM2-135M-Instruct on CPU)."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from data_engine.engines.base import SamplingParams, WithoutLogprobs
from data_engine.engines.hf import label_token_ids
from data_engine.errors import ConfigError
from data_engine.schema import WORK_SCHEMA
from data_engine.synth.judge import (LOW_MASS, LOW_SCORE, SWAP, Judge, JudgeConfig,
                                     PairResult, combine_orders, consistency_rate,
                                     expected_score, judge_table, parse_score, parse_verdict,
                                     split_exchange, turn_text)

GOOD = [{"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."}]
BAD = [{"role": "user", "content": "What is the capital of France?"},
       {"role": "assistant", "content": "the the the the the the"}]


@pytest.fixture(scope="module")
def judge(smollm2_engine):
    return Judge(smollm2_engine, JudgeConfig())


# ---- score tokens and the expected score on the real model ----

def test_expected_score_from_real_next_token_probabilities(judge, smollm2_engine):
    import torch

    results = judge.score([GOOD, BAD])
    tokenizer, lm = smollm2_engine.tokenizer, smollm2_engine.lm
    for messages, result in zip([GOOD, BAD], results):
        assert result.method == "logprobs" and result.error is None
        assert set(result.probs) == {1, 2, 3, 4, 5}
        assert math.isclose(sum(result.probs.values()), 1.0, abs_tol=1e-9)
        assert 1.0 <= result.score <= 5.0
        assert math.isclose(result.score, sum(i * p for i, p in result.probs.items()))
        assert 0.0 < result.mass <= 1.0
        # Independently: one unpadded forward pass, full-vocabulary softmax at the last
        # position, probabilities of every single-token spelling of each digit.
        prompt = judge.pointwise_prompt(messages[0]["content"], messages[1]["content"])
        ids = tokenizer(smollm2_engine.render(prompt), return_tensors="pt",
                        add_special_tokens=False)
        with torch.inference_mode():
            probs = torch.softmax(lm(**ids).logits[0, -1].float(), dim=-1)
        raw = {i: float(probs[label_token_ids(tokenizer, str(i))].sum()) for i in range(1, 6)}
        assert math.isclose(result.mass, sum(raw.values()), rel_tol=1e-3)
        for i, p in raw.items():
            assert math.isclose(result.probs[i], p / sum(raw.values()), abs_tol=1e-4)


def test_label_token_ids_include_leading_space_variants(smollm2_engine):
    tokenizer = smollm2_engine.tokenizer
    variants = {}
    for label in ("A", "B", "tie", "1", "5"):
        ids = label_token_ids(tokenizer, label)
        expected = [tokenizer.encode(v, add_special_tokens=False)[0] for v in (label, " " + label)
                    if len(tokenizer.encode(v, add_special_tokens=False)) == 1]
        assert ids == expected and ids, label
        assert all(tokenizer.decode([i]).strip() == label for i in ids)
        variants[label] = len(ids)
    # SmolLM2 has " A" and " tie" as tokens but spells " 5" as a space then "5".
    assert variants["A"] == 2 and variants["tie"] == 2
    assert len(tokenizer.encode(" 5", add_special_tokens=False)) == 2 and variants["5"] == 1


def test_scale_10_refused_where_10_is_not_one_token(smollm2_engine):
    assert len(smollm2_engine.tokenizer.encode("10", add_special_tokens=False)) > 1
    with pytest.raises(ConfigError) as info:
        Judge(smollm2_engine, JudgeConfig(scale=10))
    assert "scale" in str(info.value) and "'10'" in str(info.value)
    # Parsing reads "10" as text, so without logprobs the scale is usable.
    assert Judge(WithoutLogprobs(smollm2_engine), JudgeConfig(scale=10)).labels[-1] == "10"


def test_expected_score_softmax_over_candidates_only():
    dist = expected_score({"1": math.log(0.1), "5": math.log(0.3), "x": math.log(0.5)}, 5)
    assert math.isclose(dist.probs[1], 0.25) and math.isclose(dist.probs[5], 0.75)
    assert dist.probs[2] == dist.probs[3] == dist.probs[4] == 0.0
    assert math.isclose(dist.score, 1 * 0.25 + 5 * 0.75)
    assert math.isclose(dist.mass, 0.4)
    assert expected_score({"x": -0.1}, 5) is None


# ---- pairwise ----

def test_combine_orders_counts_a_win_only_when_both_orders_agree():
    assert combine_orders("A", "B") == ("A", True)  # swapped prompt's B is the pair's A
    assert combine_orders("B", "A") == ("B", True)
    assert combine_orders("tie", "tie") == ("tie", True)
    assert combine_orders("A", "A") == ("tie", False)  # always the first position: bias
    assert combine_orders("B", "tie") == ("tie", False)
    results = [PairResult(w, c, None, None, None, "logprobs")
               for w, c in (("A", True), ("tie", False), ("B", True), ("tie", True))]
    results.append(PairResult(None, None, None, None, None, "parsed", "boom"))
    assert consistency_rate(results) == 3 / 4
    assert consistency_rate([]) is None


def test_pairwise_on_the_real_model_judges_both_orders(judge):
    pair = ("What is the capital of France?", "Paris.", "the the the the")
    (result,) = judge.compare([pair])
    assert result.method == "logprobs" and result.error is None
    assert result.first in ("A", "B", "tie") and result.second in ("A", "B", "tie")
    assert (result.winner, result.consistent) == combine_orders(result.first,
                                                                SWAP[result.second])
    assert 0.0 <= result.p_a <= 1.0
    # The same pair given the other way round is the same two prompts, swapped.
    (flipped,) = judge.compare([(pair[0], pair[2], pair[1])])
    assert (flipped.first, flipped.second) == (SWAP[result.second], SWAP[result.first])
    assert flipped.winner == SWAP[result.winner]
    assert consistency_rate([result, flipped]) == float(result.consistent)
    # P(A wins) + P(B wins) + P(tie) = 1 in each prompt, so the two views sum to 1 - P(tie).
    assert 0.0 < flipped.p_a + result.p_a <= 1.0 + 1e-6


# ---- the text-parsing fallback ----

def test_parse_score_and_verdict_read_the_verdict_not_the_answer():
    assert parse_score("4", 5) == 4 and parse_score("**3**", 5) == 3
    assert parse_score("Score: 2", 5) == 2 and parse_score("I rate it 4 out of 5", 5) == 4
    assert parse_score("On a scale of 1 to 5 I give it a 4", 5) == 4
    assert parse_score("2+2 is 4.", 5) is None  # answered the question instead
    assert parse_score("7", 5) is None and parse_score("10", 10) == 10
    assert parse_verdict("B") == "B" and parse_verdict("Answer A is better") == "A"
    assert parse_verdict("It's a tie.") == "tie" and parse_verdict("a cat") is None
    # The digits after a decimal point are not the score ("1.5/5" was read as 5, a kept row).
    assert parse_score("1.5/5", 5) == 1.5 and parse_score("I rate it 1.5 / 5", 5) == 1.5
    assert parse_score("Score: 3.5 out of 5", 5) == 3.5 and parse_score("Score: 3.5", 5) == 3.5
    assert parse_score("3.5", 5) == 3.5 and parse_score("Score: 4.", 5) == 4
    assert parse_score("5.5/5", 5) is None
    # A letter named better wins over a tie word before it.
    assert parse_verdict("Both answers are correct, but B is more complete.") == "B"
    assert parse_verdict("Neither is perfect; A is better.") == "A"
    assert parse_verdict("Verdict: B") == "B" and parse_verdict("I prefer answer A.") == "A"
    assert parse_verdict("Both are equally good.") == "tie"


def test_parsed_fallback_without_logprobs(smollm2_engine):
    engine = WithoutLogprobs(smollm2_engine)
    judge = Judge(engine, JudgeConfig(max_tokens=8))
    results = judge.score([GOOD, BAD])
    prompts = [judge.pointwise_prompt(m[0]["content"], m[1]["content"]) for m in (GOOD, BAD)]
    texts = [g.text for g in smollm2_engine.generate(prompts, SamplingParams(
        temperature=0.0, max_tokens=8))]
    for result, text in zip(results, texts):
        assert result.method == "parsed" and result.mass is None and result.probs is None
        expected = parse_score(text, 5)
        if expected is None:
            assert result.score is None and result.error.startswith("unparseable_verdict")
        else:
            assert result.score == expected and result.error is None
    (pair,) = judge.compare([("What is 2+2?", "4", "Bananas are yellow.")])
    assert pair.method == "parsed" and pair.p_a is None
    assert pair.error is not None or pair.winner in ("A", "B", "tie")


class OneRowFails:
    """The real engine, except that scoring the second conversation reports a per-row
    failure, as the openai engine does when a request fails after its retries."""

    supports_logprobs = True

    def __init__(self, engine):
        self.engine = engine
        self.kind, self.model, self.tokenizer = engine.kind, engine.model, engine.tokenizer

    def generate(self, conversations, params):
        return self.engine.generate(conversations, params)

    def next_token_scores(self, conversations, labels):
        scores = self.engine.next_token_scores(conversations, labels)
        scores[1].error, scores[1].logprobs = "timeout: no reply after 3 retries", {}
        return scores


def test_failed_row_is_judged_by_parsing(smollm2_engine):
    results = Judge(OneRowFails(smollm2_engine), JudgeConfig(max_tokens=8)).score([GOOD, BAD])
    assert results[0].method == "logprobs" and results[0].mass > 0
    assert results[1].method == "parsed" and results[1].mass is None
    assert results[1].score is not None or results[1].error.startswith("unparseable_verdict")


# ---- the table function ----

SCHEMA = WORK_SCHEMA.append(pa.field("origin", pa.string()))


def _table(rows):
    base = {f.name: None for f in SCHEMA}
    return pa.Table.from_pylist([{**base, "source": "t", "tags": [], **row} for row in rows],
                                schema=SCHEMA)


def _messages(answer):
    return [{"role": "user", "content": "What is the capital of France?",
             "reasoning_content": None, "tool_calls": None},
            {"role": "assistant", "content": answer, "reasoning_content": None,
             "tool_calls": None}]


ROWS = [
    {"id": "seed", "origin": "seed", "messages": _messages("Paris.")},
    {"id": "no-origin", "origin": None, "messages": _messages("Paris is the capital.")},
    {"id": "good", "origin": "evol", "messages": _messages("The capital of France is Paris.")},
    {"id": "bad", "origin": "craft", "messages": _messages("the the the the the")},
    {"id": "odd", "origin": "self_instruct", "messages": _messages("Bananas are yellow.")},
    {"id": "gone", "origin": "evol", "messages": _messages("Paris."), "_reason": "empty_turn",
     "_stage": "clean"},
    {"id": "no-reply", "origin": "evol", "messages": _messages("x")[:1]},
]


def test_judge_table_threshold_and_apply_to(smollm2_engine):
    table = _table(ROWS)
    scored = judge_table(table, Judge(smollm2_engine, JudgeConfig(min_mass=0.0))).to_pylist()
    by_id = {r["id"]: r for r in scored}
    assert [r["id"] for r in scored] == [r["id"] for r in ROWS]
    for rid in ("seed", "no-origin", "gone"):  # not synthesized, or already dropped
        assert by_id[rid]["judge_score"] is None and by_id[rid]["judge_method"] is None
    assert by_id["gone"]["_reason"] == "empty_turn" and by_id["gone"]["_stage"] == "clean"
    assert by_id["no-reply"]["judge_error"].startswith("no_assistant_reply")
    assert by_id["no-reply"]["_reason"] is None  # an error is recorded, the row is not dropped
    judged = {rid: by_id[rid]["judge_score"] for rid in ("good", "bad", "odd")}
    assert all(1.0 <= s <= 5.0 for s in judged.values())
    assert all(by_id[rid]["judge_method"] == "logprobs" for rid in judged)
    assert all(r["_reason"] is None for r in scored if r["id"] != "gone")  # no threshold

    low, middle, _ = sorted(judged.values())
    threshold = (low + middle) / 2  # exactly one row falls below it
    config = JudgeConfig(min_mass=0.0, threshold=threshold)
    again = {r["id"]: r for r in judge_table(table, Judge(smollm2_engine, config)).to_pylist()}
    for rid, score in judged.items():
        assert math.isclose(again[rid]["judge_score"], score, rel_tol=1e-5)
        dropped = (again[rid]["_reason"], again[rid]["_stage"]) == (LOW_SCORE, "judge")
        assert dropped == (score < threshold), rid
    assert sum(r["_reason"] == LOW_SCORE for r in again.values()) == 1

    everything = judge_table(table, Judge(smollm2_engine, JudgeConfig(apply_to="all")))
    rows = {r["id"]: r for r in everything.to_pylist()}
    assert rows["seed"]["judge_score"] is not None and rows["no-origin"]["judge_score"] is not None
    assert rows["gone"]["judge_score"] is None
    assert everything.schema.field("judge_score").type == pa.float64()
    assert everything.schema.field("judge_method").type == pa.string()


def test_low_mass_rows_are_flagged_not_dropped(smollm2_engine):
    table = _table(ROWS[2:4])
    # Any real judge leaves some probability off the digits, so min_mass 1 flags every row;
    # threshold 5 would drop every trusted score below 5.
    out = judge_table(table, Judge(smollm2_engine, JudgeConfig(min_mass=1.0, threshold=5.0)))
    for row in out.to_pylist():
        assert row["judge_mass"] < 1.0 and row["judge_error"].startswith(LOW_MASS)
        assert row["_reason"] is None and row["judge_score"] is not None


def test_config_check_names_every_bad_field(tmp_path, smollm2_engine):
    problems = JudgeConfig(scale=7, rubric=str(tmp_path / "missing.txt"), threshold=9.0,
                           min_mass=1.5, apply_to="some", max_tokens=0).check()
    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == ["apply_to", "max_tokens", "min_mass", "rubric", "scale", "threshold"]
    assert JudgeConfig().check() == []
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Titles must be under 30 characters.", encoding="utf-8")
    judge = Judge(WithoutLogprobs(smollm2_engine), JudgeConfig(rubric=str(rubric)))
    prompt = judge.pointwise_prompt("Write a title about {cats} $5", "Cats")
    assert "Titles must be under 30 characters." in prompt[-1]["content"]
    assert "{cats} $5" in prompt[-1]["content"]  # contents inserted verbatim
    with pytest.raises(ConfigError, match="apply_to"):
        Judge(smollm2_engine, JudgeConfig(apply_to="seed"))


def test_tool_call_replies_are_not_scored_and_earlier_calls_are_shown(smollm2_engine):
    """A row ending with a tool call has no text reply: it was judged as an empty answer,
    scored low, and dropped by a threshold. It is kept now, with the why in judge_error;
    a row answering after a call shows the call in the judge's context."""
    import json

    calls = json.dumps([{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    user = {"role": "user", "content": "Weather in Paris?", "reasoning_content": None,
            "tool_calls": None}
    call = {"role": "assistant", "content": "", "reasoning_content": None, "tool_calls": calls}
    result = {"role": "tool", "content": '{"temp_c": 21}', "reasoning_content": None,
              "tool_calls": None, "tool_call_id": "c1"}
    reply = {"role": "assistant", "content": "It is 21 degrees in Paris.",
             "reasoning_content": None, "tool_calls": None}
    assert split_exchange([user, call, result, reply])[0] == (
        'User: Weather in Paris?\n\nAssistant: [tool call] get_weather({"city": "Paris"})'
        '\n\nTool: {"temp_c": 21}')
    assert turn_text({"tool_calls": '{"name": "f", "arguments": {"a": 1}}'}) == \
        '[tool call] f({"a": 1})'
    table = _table([{"id": "calls", "origin": "evol", "messages": [user, call]},
                    {"id": "answers", "origin": "evol", "messages": [user, call, result, reply]}])
    out = {r["id"]: r for r in judge_table(table, Judge(smollm2_engine, JudgeConfig(
        min_mass=0.0, threshold=5.0))).to_pylist()}
    assert out["calls"]["judge_error"].startswith("tool_call_reply: ")
    assert out["calls"]["judge_score"] is None and out["calls"]["_reason"] is None
    assert 1.0 <= out["answers"]["judge_score"] < 5.0
    assert out["answers"]["_reason"] == LOW_SCORE  # threshold 5: a scored row below it goes
