"""The gate file's validation and the gate's verdict, check by check, on metrics dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from evaluator.gate import GateConfig, GateError, evaluate_gate, load_gate


def metrics(**overrides: Any) -> dict[str, Any]:
    """A metrics dict shaped like the run's, with a baseline and a judge; every gate passes."""
    usability = {"rate": 0.975, "rows": 40, "usable": 39, "budget_tokens": 96,
                 "failures": {"no_stop": 1, "empty": 0, "degenerate": 0, "error": 0}}
    ppl = {"ppl": 6.0, "mean_nll": 1.79, "tokens": 812, "rows": 40, "method": "local",
           "by_source": {"titles_ja": {"ppl": 5.2, "tokens": 400, "rows": 20}}}
    base = {
        "model": {"name": "merged", "path": "/runs/r1/merged", "base_url": "http://h:8000/v1"},
        "baseline": {"name": "base", "path": "/models/base", "base_url": "http://h:8001/v1"},
        "data": {"path": "/data/out", "split": "test", "rows": 40},
        "perplexity": {"model": ppl, "baseline": {**ppl, "ppl": 6.5}, "ratio": 6.0 / 6.5},
        "usability": {"model": usability, "baseline": usability},
        "json_validity": {"model": {"rate": 1.0, "rows": 5, "valid": 5}, "baseline": None},
        "reference": None,
        "judge": {
            "engine": "transformers:/models/judge",
            "pointwise": {"model": {"mean": 3.9, "scored": 38, "low_mass": 2, "errors": 0,
                                    "scores": [3.9] * 38}, "baseline": None},
            "pairwise": {"wins": 20, "ties": 12, "losses": 8, "errors": 0, "pairs": 40,
                         "consistency": 0.7, "win_rate": 0.65, "ci95": [0.55, 0.74]},
        },
        "gate": None,
    }
    base.update(overrides)
    return base


def check(result: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in result["checks"] if c["name"] == name]
    return found


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the gate file ---------------------------------------------------------------------------

def test_no_file_gives_the_defaults():
    assert load_gate(None) == GateConfig(usability_min=0.95, ppl_max_ratio=1.05,
                                         win_rate_ci_low_min=0.5, json_validity_min=None,
                                         judge_score_min=None)


def test_a_file_overrides_only_what_it_names(tmp_path):
    path = write(tmp_path, "usability_min: 0.9\njson_validity_min: 1\nwin_rate_ci_low_min: null\n")
    config = load_gate(path)
    assert config == GateConfig(usability_min=0.9, ppl_max_ratio=1.05, win_rate_ci_low_min=None,
                                json_validity_min=1.0, judge_score_min=None)
    assert isinstance(config.json_validity_min, float)


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load_gate(write(tmp_path, "# nothing set\n")) == GateConfig()


def test_every_problem_is_reported_with_its_key(tmp_path):
    path = write(tmp_path, "\n".join([
        "usability_min: 1.5",
        "ppl_max_ratio: 0",
        "win_rate_ci_low_min: 'high'",
        "json_validity_min: true",
        "judge_score_min: .nan",
        "usabilty_min: 0.9",
    ]))
    with pytest.raises(GateError) as raised:
        load_gate(path)
    problems = raised.value.problems
    assert len(problems) == 6
    assert "usability_min: must be within [0, 1], got 1.5" in problems
    assert "ppl_max_ratio: must be > 0, got 0" in problems
    assert "win_rate_ci_low_min: must be a number or null, got 'high'" in problems
    assert "json_validity_min: must be a number or null, got True" in problems
    assert "judge_score_min: must be finite, got nan" in problems
    assert any(p.startswith("usabilty_min: unknown key") for p in problems)
    assert str(path) in str(raised.value)


def test_out_of_range_judge_score_and_negative_rate(tmp_path):
    with pytest.raises(GateError) as raised:
        load_gate(write(tmp_path, "judge_score_min: 0.5\njson_validity_min: -0.1\n"))
    assert raised.value.problems == [
        "json_validity_min: must be within [0, 1], got -0.1",
        "judge_score_min: must be within [1, 10] (judge scores run 1..scale), got 0.5",
    ]


@pytest.mark.parametrize("text, problem", [
    ("- usability_min: 0.9\n", "must be a mapping of threshold: value, got list"),
    ("usability_min: [0.9\n", "not valid YAML"),
])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, text, problem):
    with pytest.raises(GateError) as raised:
        load_gate(write(tmp_path, text))
    assert raised.value.problems[0].startswith(problem)


def test_a_missing_file_is_a_gate_error(tmp_path):
    with pytest.raises(GateError) as raised:
        load_gate(tmp_path / "absent.yaml")
    assert raised.value.problems == ["cannot read: No such file or directory"]
    assert "absent.yaml" in str(raised.value)


# --- the verdict ------------------------------------------------------------------------------

def test_everything_measured_and_good_passes():
    result = evaluate_gate(metrics(), GateConfig())
    assert result["passed"] is True
    assert [c["name"] for c in result["checks"]] == ["usability", "perplexity", "win_rate"]
    assert all(c["status"] == "pass" for c in result["checks"])


def test_low_usability_fails_with_the_numbers():
    low = {"rate": 0.81, "rows": 100, "usable": 81, "budget_tokens": 96,
           "failures": {"error": 0, "no_stop": 15, "empty": 2, "degenerate": 2}}
    result = evaluate_gate(metrics(usability={"model": low, "baseline": None}), GateConfig())
    assert result["passed"] is False
    usability = check(result, "usability")
    assert usability == {
        "name": "usability", "metric": "usability.model.rate", "op": ">=", "threshold": 0.95,
        "value": 0.81, "status": "fail",
        "reason": "usability 0.810 < 0.95: 19 of 100 replies unusable "
                  "(no_stop 15, empty 2, degenerate 2)"}
    assert check(result, "perplexity")["status"] == "pass"


def test_usability_exactly_at_the_threshold_passes():
    exact = {"rate": 0.95, "rows": 20, "usable": 19, "failures": {"empty": 1}}
    result = evaluate_gate(metrics(usability={"model": exact, "baseline": None}), GateConfig())
    assert check(result, "usability")["status"] == "pass"
    assert check(result, "usability")["reason"] == (
        "usability 0.950 >= 0.95: 1 of 20 replies unusable (empty 1)")


@pytest.mark.parametrize("ratio, status", [(1.10, "fail"), (0.9, "pass"), (1.05, "pass")])
def test_ppl_ratio_against_the_limit(ratio, status):
    data = metrics()
    data["perplexity"]["model"]["ppl"] = 6.0 * ratio
    data["perplexity"]["baseline"]["ppl"] = 6.0
    data["perplexity"]["ratio"] = ratio
    result = evaluate_gate(data, GateConfig())
    ppl = check(result, "perplexity")
    assert ppl["status"] == status
    assert ppl["value"] == ratio
    assert result["passed"] is (status == "pass")
    if status == "fail":
        assert ppl["reason"] == ("PPL ratio 1.100 > 1.05: model PPL 6.600 vs baseline 6.000 "
                                 "(+10.0%; at most +5.0% allowed)")


def test_no_baseline_skips_the_relative_checks_without_failing():
    data = metrics(baseline=None)
    data["perplexity"].update(baseline=None, ratio=None)
    data["judge"]["pairwise"] = None
    result = evaluate_gate(data, GateConfig())
    assert result["passed"] is True
    assert check(result, "perplexity") == {
        "name": "perplexity", "metric": "perplexity.ratio", "op": "<=", "threshold": 1.05,
        "value": None, "status": "skipped", "reason": "no baseline: PPL ratio not measured"}
    assert check(result, "win_rate")["status"] == "skipped"
    assert check(result, "win_rate")["reason"].startswith("no baseline")


def test_win_rate_lower_bound_below_the_minimum_fails_when_judged():
    data = metrics()
    data["judge"]["pairwise"].update(wins=16, ties=10, losses=14, win_rate=0.525,
                                     ci95=[0.45, 0.6])
    result = evaluate_gate(data, GateConfig())
    assert result["passed"] is False
    win = check(result, "win_rate")
    assert (win["status"], win["value"], win["metric"]) == ("fail", 0.45, "judge.pairwise.ci95[0]")
    assert win["reason"] == ("win-rate 95% CI lower bound 0.450 < 0.5: win rate 0.525 "
                             "[0.450, 0.600] over 40 pairs (wins 16, ties 10, losses 14)")


@pytest.mark.parametrize("update, said", [
    # a 135M judge named the first answer every time: 9 ties, interval [0.5, 0.5], passed
    (dict(wins=0, ties=9, losses=0, pairs=9, consistency=0.0, win_rate=0.5, ci95=[0.5, 0.5]),
     "the judge gave no evidence: its two orders agreed on 0.00 of 9 pairs (< 0.5)"),
    # one win: interval [1.0, 1.0], passed
    (dict(wins=1, ties=0, losses=0, pairs=1, consistency=1.0, win_rate=1.0, ci95=[1.0, 1.0]),
     "1 judged pairs are too few to bound the win rate (at least 20"),
])
def test_a_win_rate_without_evidence_fails(update, said):
    data = metrics()
    data["judge"]["pairwise"].update(update)
    win = check(evaluate_gate(data, GateConfig()), "win_rate")
    assert win["status"] == "fail" and win["reason"].startswith(said), win["reason"]


def test_without_a_judge_the_judged_checks_are_skipped():
    result = evaluate_gate(metrics(judge=None), GateConfig(judge_score_min=3.0))
    assert result["passed"] is True
    assert check(result, "win_rate")["reason"] == "no judge: win rate not measured"
    assert check(result, "judge_score")["status"] == "skipped"


def test_a_judge_that_judged_nothing_fails_the_win_rate():
    data = metrics()
    data["judge"]["pairwise"].update(wins=0, ties=0, losses=0, pairs=0, errors=40,
                                     win_rate=None, ci95=None, consistency=None)
    win = check(evaluate_gate(data, GateConfig()), "win_rate")
    assert win["status"] == "fail"
    assert win["reason"] == "win rate unknown: no pair judged (40 judge errors)"


def test_null_thresholds_omit_their_checks():
    config = GateConfig(usability_min=None, ppl_max_ratio=None, win_rate_ci_low_min=None)
    assert evaluate_gate(metrics(), config) == {"passed": True, "checks": []}


def test_optional_checks_when_set():
    data = metrics()
    data["json_validity"]["model"] = {"rate": 0.6, "rows": 5, "valid": 3}
    result = evaluate_gate(data, GateConfig(json_validity_min=0.9, judge_score_min=4.0))
    assert result["passed"] is False
    assert check(result, "json_validity")["reason"] == (
        "JSON validity 0.600 < 0.9: 2 of 5 replies to json-tagged rows are not valid JSON")
    assert check(result, "judge_score")["reason"] == (
        "mean judge score 3.900 < 4 over 38 scored replies (2 low-mass, 0 errors)")
    untagged = evaluate_gate(metrics(json_validity=None), GateConfig(json_validity_min=0.9))
    assert check(untagged, "json_validity")["status"] == "skipped"


def test_tool_call_accuracy_when_the_data_has_call_turns():
    calls = {"rate": 0.75, "calls": 8, "parsed": 8, "names": 7, "exact": 6, "answer_rows": 4,
             "spurious": 1}
    gate = GateConfig(tool_call_exact_min=0.9)
    failed = check(evaluate_gate(metrics(tool_calls={"model": calls, "baseline": None}), gate),
                   "tool_calls")
    assert (failed["status"], failed["value"], failed["metric"]) == (
        "fail", 0.75, "tool_calls.model.rate")
    assert failed["reason"] == ("tool-call accuracy 0.750 < 0.9: 6 of 8 tool-call turns made "
                                "as the data makes them (7 with the right names, 8 parseable)")
    passed = evaluate_gate(metrics(tool_calls={"model": calls, "baseline": None}),
                           GateConfig(tool_call_exact_min=0.75))
    assert check(passed, "tool_calls")["status"] == "pass"
    # tools offered but no call turn in the data; no tools at all: nothing to measure
    answering = {**calls, "rate": None, "calls": 0, "parsed": 0, "names": 0, "exact": 0}
    for value in ({"model": answering, "baseline": None}, None):
        skipped = check(evaluate_gate(metrics(tool_calls=value), gate), "tool_calls")
        assert skipped["status"] == "skipped" and "no tool-call turn in the data" in \
            skipped["reason"]
    assert "tool_calls" not in [c["name"] for c in evaluate_gate(metrics(), GateConfig())[
        "checks"]]


def test_spurious_tool_calls_where_the_data_answers_in_text():
    calls = {"rate": 1.0, "calls": 2, "parsed": 2, "names": 2, "exact": 2, "answer_rows": 8,
             "spurious": 2}
    data = metrics(tool_calls={"model": calls, "baseline": None})
    failed = check(evaluate_gate(data, GateConfig(tool_call_spurious_max=0.2)),
                   "tool_call_spurious")
    assert (failed["status"], failed["value"], failed["op"]) == ("fail", 0.25, "<=")
    assert failed["reason"] == ("spurious tool calls 0.250 > 0.2: 2 of 8 replies to rows that "
                                "offer tools but answer in text call a tool instead")
    assert check(evaluate_gate(data, GateConfig(tool_call_spurious_max=0.25)),
                 "tool_call_spurious")["status"] == "pass"
    # only call turns, or no tools at all: nothing to measure
    calling = {**calls, "answer_rows": 0, "spurious": 0}
    for value in ({"model": calling, "baseline": None}, None):
        skipped = check(evaluate_gate(metrics(tool_calls=value),
                                      GateConfig(tool_call_spurious_max=0.0)),
                        "tool_call_spurious")
        assert skipped["status"] == "skipped" and "spurious calls not measured" in \
            skipped["reason"]
    assert "tool_call_spurious" not in [c["name"] for c in evaluate_gate(
        data, GateConfig())["checks"]]


def test_a_judge_that_judged_nothing_says_which_rows_it_left_to_tool_call_accuracy():
    data = metrics()
    data["judge"]["pointwise"]["model"].update(mean=None, scored=0, low_mass=0,
                                               tool_call_rows=40, scores=[])
    score = check(evaluate_gate(data, GateConfig(judge_score_min=3.0)), "judge_score")
    assert score["status"] == "fail"
    assert score["reason"] == ("judge score unknown: no reply scored (0 errors; 40 rows "
                               "ending with a tool call are not judged)")


def test_nothing_measured_but_usability():
    data = metrics(baseline=None, perplexity=None, judge=None, json_validity=None)
    result = evaluate_gate(data, GateConfig())
    assert result["passed"] is True
    assert [(c["name"], c["status"]) for c in result["checks"]] == [
        ("usability", "pass"), ("perplexity", "skipped"), ("win_rate", "skipped")]
    assert check(result, "perplexity")["reason"] == "perplexity not measured"


def test_the_verdict_does_not_change_the_metrics():
    data = metrics()
    before = copy.deepcopy(data)
    evaluate_gate(data, GateConfig())
    assert data == before
