"""The promotion gate: thresholds from a YAML file, checked against `metrics.json`.

A fine-tune is promoted only when it is measurably no worse than what it replaces. Each
threshold names one metric; `evaluate_gate` turns it into a check with a status and a reason
that says the numbers, so a failed gate explains itself in `metrics.json` and the report
without anyone opening the samples.

Three outcomes per check:
- pass / fail: the metric was measured and meets, or misses, the threshold. A metric whose
  measurement was attempted but produced nothing (no row evaluated, every judge call failed)
  fails: a gate must not pass on an evaluation that did not happen.
- skipped: the metric needs something this evaluation did not have (no baseline for the PPL
  ratio, no judge for the win rate). Skipped checks do not fail the gate; the reason says what
  was missing so a reader sees the gate was partial.
A threshold set to null drops its check altogether.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from data_engine.config_loader import load_yaml
from data_engine.errors import ConfigError
from data_engine.synth.judge import SCALES

# Failure kinds in the order the run assigns a reply's first failure.
FAILURE_KINDS = ("error", "no_stop", "empty", "degenerate")


class GateError(ConfigError):
    """The gate file is missing, unreadable or invalid; every problem is listed with its key."""

    def __init__(self, problems: list[str], origin: str = "gate file"):
        super().__init__(problems, origin)


@dataclass(frozen=True)
class GateConfig:
    """Thresholds; None turns a check off."""

    usability_min: float | None = 0.95
    """Share of usable replies: stopped with end-of-turn in budget, not empty, not degenerate."""
    ppl_max_ratio: float | None = 1.05
    """Model PPL / baseline PPL must not exceed this (needs a baseline)."""
    win_rate_ci_low_min: float | None = 0.5
    """Lower bound of the win-rate 95% CI against the baseline (needs a judge and a baseline)."""
    json_validity_min: float | None = None
    """Share of valid JSON among the model's replies to rows tagged json."""
    judge_score_min: float | None = None
    """Mean pointwise judge score of the model (needs a judge)."""
    tool_call_exact_min: float | None = None
    """Share of the data's tool-call turns the model makes as the data does, arguments
    included (asked the turns before each)."""
    tool_call_spurious_max: float | None = None
    """Share of the rows that offer tools but answer in text where the model's reply calls
    a tool instead (a call, in the form the model's template writes, where the data answers)."""


_RATES = ("usability_min", "win_rate_ci_low_min", "json_validity_min", "tool_call_exact_min",
          "tool_call_spurious_max")


def _problem(key: str, value: Any) -> str | None:
    """What is wrong with one threshold value, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}: must be a number or null, got {value!r}"
    if not math.isfinite(value):
        return f"{key}: must be finite, got {value!r}"
    if key in _RATES and not 0.0 <= value <= 1.0:
        return f"{key}: must be within [0, 1], got {value!r}"
    if key == "ppl_max_ratio" and value <= 0:
        return f"{key}: must be > 0, got {value!r}"
    if key == "judge_score_min" and not 1.0 <= value <= max(SCALES):
        return (f"{key}: must be within [1, {max(SCALES)}] (judge scores run 1..scale), "
                f"got {value!r}")
    return None


def load_gate(path: Path | None) -> GateConfig:
    """The gate from a YAML file, or the defaults for None.

    Raises GateError listing every problem: an unreadable file, invalid YAML, a document that
    is not a mapping, unknown keys, wrong types and out-of-range values. An empty file is the
    defaults.
    """
    if path is None:
        return GateConfig()
    origin = f"gate file {path}"
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise GateError([f"cannot read: {e.strerror or e}"], origin) from e
    except yaml.YAMLError as e:
        raise GateError([f"not valid YAML: {e}"], origin) from e
    return gate_from(data, origin)


def gate_from(data: Any, origin: str = "gate") -> GateConfig:
    """The gate from thresholds already read (a gate file's document, or a pipeline's
    inline `eval.gate`); None is the defaults. GateError lists every problem."""
    if data is None:
        return GateConfig()
    if not isinstance(data, dict):
        raise GateError([f"must be a mapping of threshold: value, got {type(data).__name__}"],
                        origin)
    known = [f.name for f in fields(GateConfig)]
    problems = [f"{key}: unknown key (known: {', '.join(known)})"
                for key in data if key not in known]
    problems += [p for key in known if key in data
                 for p in [_problem(key, data[key])] if p is not None]
    if problems:
        raise GateError(problems, origin)
    return GateConfig(**{key: (None if data[key] is None else float(data[key]))
                         for key in known if key in data})


def _get(metrics: dict[str, Any], *keys: str) -> Any:
    """metrics[k1][k2]..., or None where any level is missing or null."""
    node: Any = metrics
    for key in keys:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


def _check(name: str, metric: str, op: str, threshold: float, value: float | None,
           status: str, reason: str) -> dict[str, Any]:
    return {"name": name, "metric": metric, "op": op, "threshold": threshold, "value": value,
            "status": status, "reason": reason}


def _verdict(value: float, op: str, threshold: float) -> tuple[str, str]:
    """The status and the relation that holds, for the reason ("0.810 < 0.95")."""
    if value >= threshold if op == ">=" else value <= threshold:
        return "pass", op
    return "fail", "<" if op == ">=" else ">"


def _num(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"


def _failure_counts(failures: dict[str, int]) -> str:
    order = [k for k in FAILURE_KINDS if k in failures] + [k for k in failures
                                                           if k not in FAILURE_KINDS]
    return ", ".join(f"{k} {failures[k]}" for k in order if failures[k])


def _usability(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "usability", "usability.model.rate", ">="
    model = _get(metrics, "usability", "model")
    if model is None:
        return _check(name, metric, op, threshold, None, "skipped", "usability not measured")
    rate, rows = model.get("rate"), model.get("rows", 0)
    if rate is None:
        return _check(name, metric, op, threshold, None, "fail",
                      f"usability unknown: no reply evaluated ({rows} rows)")
    status, rel = _verdict(rate, op, threshold)
    unusable = rows - model.get("usable", 0)
    counts = _failure_counts(model.get("failures") or {})
    reason = (f"usability {rate:.3f} {rel} {threshold:g}: {unusable} of {rows} replies unusable"
              + (f" ({counts})" if counts else ""))
    return _check(name, metric, op, threshold, rate, status, reason)


def _perplexity(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "perplexity", "perplexity.ratio", "<="
    ppl = metrics.get("perplexity")
    if ppl is None:
        return _check(name, metric, op, threshold, None, "skipped", "perplexity not measured")
    if ppl.get("baseline") is None:
        return _check(name, metric, op, threshold, None, "skipped",
                      "no baseline: PPL ratio not measured")
    ratio = ppl.get("ratio")
    model_ppl, base_ppl = _get(ppl, "model", "ppl"), _get(ppl, "baseline", "ppl")
    if ratio is None:
        return _check(name, metric, op, threshold, None, "fail",
                      f"PPL ratio unknown: model PPL {_num(model_ppl)}, "
                      f"baseline PPL {_num(base_ppl)}")
    status, rel = _verdict(ratio, op, threshold)
    reason = (f"PPL ratio {ratio:.3f} {rel} {threshold:g}: model PPL {_num(model_ppl)} vs "
              f"baseline {_num(base_ppl)} ({ratio - 1.0:+.1%}; at most {threshold - 1.0:+.1%} "
              f"allowed)")
    return _check(name, metric, op, threshold, ratio, status, reason)


def _json_validity(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "json_validity", "json_validity.model.rate", ">="
    model = _get(metrics, "json_validity", "model")
    if model is None:
        return _check(name, metric, op, threshold, None, "skipped",
                      "no rows tagged json: JSON validity not measured")
    rate, rows = model.get("rate"), model.get("rows", 0)
    if rate is None:
        return _check(name, metric, op, threshold, None, "fail",
                      f"JSON validity unknown: no json-tagged reply evaluated ({rows} rows)")
    status, rel = _verdict(rate, op, threshold)
    invalid = rows - model.get("valid", 0)
    reason = (f"JSON validity {rate:.3f} {rel} {threshold:g}: {invalid} of {rows} replies "
              f"to json-tagged rows are not valid JSON")
    return _check(name, metric, op, threshold, rate, status, reason)


UNREAD_CALLS = ("the model's template writes tool calls in a form tunesmith does not read "
                "(format unknown) and the server parsed none: not measured; serve it with "
                "vLLM's tool-call parser for its format (--tool-call-parser) to measure it")


def _tool_calls(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "tool_calls", "tool_calls.model.rate", ">="
    model = _get(metrics, "tool_calls", "model")
    if model is None or not model.get("calls"):
        return _check(name, metric, op, threshold, None, "skipped",
                      "no tool-call turn in the data: tool-call accuracy not measured")
    if model["rate"] is None:
        return _check(name, metric, op, threshold, None, "skipped", UNREAD_CALLS)
    rate, calls = model["rate"], model["calls"]
    status, rel = _verdict(rate, op, threshold)
    reason = (f"tool-call accuracy {rate:.3f} {rel} {threshold:g}: {model['exact']} of {calls} "
              f"tool-call turns made as the data makes them ({model['names']} with the right "
              f"names, {model['parsed']} parseable)")
    return _check(name, metric, op, threshold, rate, status, reason)


def _spurious_calls(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "tool_call_spurious", "tool_calls.model.spurious / answer_rows", "<="
    model = _get(metrics, "tool_calls", "model")
    if model is None or not model.get("answer_rows"):
        return _check(name, metric, op, threshold, None, "skipped",
                      "no row offers tools and answers in text: spurious calls not measured")
    if model["spurious"] is None:
        return _check(name, metric, op, threshold, None, "skipped", UNREAD_CALLS)
    rows, spurious = model["answer_rows"], model["spurious"]
    rate = spurious / rows
    status, rel = _verdict(rate, op, threshold)
    reason = (f"spurious tool calls {rate:.3f} {rel} {threshold:g}: {spurious} of {rows} "
              f"replies to rows that offer tools but answer in text call a tool instead")
    return _check(name, metric, op, threshold, rate, status, reason)


def _not_judged(block: dict[str, Any]) -> str:
    calls = block.get("tool_call_rows") or 0
    return f"; {calls} rows ending with a tool call are not judged" if calls else ""


# Below these the win-rate check fails whatever the interval says. A judge that agrees with
# itself across the two orders on under half the pairs answers by position (a 135M judge
# named the first answer every time: consistency 0.0, 9 ties, interval [0.5, 0.5]); and a
# percentile bootstrap of a handful of pairs is far narrower than the truth.
MIN_JUDGE_CONSISTENCY = 0.5
MIN_JUDGED_PAIRS = 20


def _win_rate(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "win_rate", "judge.pairwise.ci95[0]", ">="
    judge = metrics.get("judge")
    if judge is None:
        return _check(name, metric, op, threshold, None, "skipped",
                      "no judge: win rate not measured")
    pairwise = judge.get("pairwise")
    if pairwise is None:
        return _check(name, metric, op, threshold, None, "skipped",
                      "no baseline: pairwise win rate not measured")
    ci = pairwise.get("ci95")
    if ci is None:
        return _check(name, metric, op, threshold, None, "fail",
                      f"win rate unknown: no pair judged ({pairwise.get('errors', 0)} judge "
                      f"errors{_not_judged(pairwise)})")
    low, high = ci
    wins, ties, losses = (pairwise.get(k, 0) for k in ("wins", "ties", "losses"))
    pairs, consistency = wins + ties + losses, pairwise.get("consistency")
    if consistency is not None and consistency < MIN_JUDGE_CONSISTENCY:
        return _check(name, metric, op, threshold, low, "fail",
                      f"the judge gave no evidence: its two orders agreed on "
                      f"{consistency:.2f} of {pairs} pairs (< {MIN_JUDGE_CONSISTENCY:g}), so "
                      f"its verdicts follow the answers' positions and its {ties} ties are "
                      "no verdict; judge with a stronger model")
    if pairs < MIN_JUDGED_PAIRS:
        return _check(name, metric, op, threshold, low, "fail",
                      f"{pairs} judged pairs are too few to bound the win rate (at least "
                      f"{MIN_JUDGED_PAIRS}: the bootstrap interval of fewer is too narrow, "
                      "[1.0, 1.0] for one win); evaluate more rows")
    status, rel = _verdict(low, op, threshold)
    reason = (f"win-rate 95% CI lower bound {low:.3f} {rel} {threshold:g}: win rate "
              f"{_num(pairwise.get('win_rate'))} [{low:.3f}, {high:.3f}] over "
              f"{wins + ties + losses} pairs (wins {wins}, ties {ties}, losses {losses})"
              + (f"; {pairwise['errors']} pairs not judged" if pairwise.get("errors") else ""))
    return _check(name, metric, op, threshold, low, status, reason)


def _judge_score(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    name, metric, op = "judge_score", "judge.pointwise.model.mean", ">="
    if metrics.get("judge") is None:
        return _check(name, metric, op, threshold, None, "skipped",
                      "no judge: judge score not measured")
    model = _get(metrics, "judge", "pointwise", "model") or {}
    mean = model.get("mean")
    if mean is None:
        return _check(name, metric, op, threshold, None, "fail",
                      f"judge score unknown: no reply scored ({model.get('errors', 0)} errors"
                      f"{_not_judged(model)})")
    status, rel = _verdict(mean, op, threshold)
    reason = (f"mean judge score {mean:.3f} {rel} {threshold:g} over {model.get('scored', 0)} "
              f"scored replies ({model.get('low_mass', 0)} low-mass, "
              f"{model.get('errors', 0)} errors)")
    return _check(name, metric, op, threshold, mean, status, reason)


_CHECKS: dict[str, Callable[[dict[str, Any], float], dict[str, Any]]] = {
    "usability_min": _usability,
    "ppl_max_ratio": _perplexity,
    "json_validity_min": _json_validity,
    "win_rate_ci_low_min": _win_rate,
    "judge_score_min": _judge_score,
    "tool_call_exact_min": _tool_calls,
    "tool_call_spurious_max": _spurious_calls,
}


def evaluate_gate(metrics: dict[str, Any], config: GateConfig) -> dict[str, Any]:
    """`{"passed": bool, "checks": [...]}`: one check per non-null threshold.

    Each check has name, metric (its path in `metrics.json`), op, threshold, value, status
    ("pass", "fail" or "skipped") and a reason with the numbers. The gate passes when no
    check failed.
    """
    thresholds = asdict(config)
    checks = [check(metrics, thresholds[key]) for key, check in _CHECKS.items()
              if thresholds[key] is not None]
    return {"passed": not any(c["status"] == "fail" for c in checks), "checks": checks}
