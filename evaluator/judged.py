"""Judged quality with the data engine's probability judge: the pointwise expected score of
each reply, and pairwise verdicts of model vs baseline in both orders (a win counts only
when both orders agree), summarised as a win rate with a bootstrap 95% interval.

A judge is named by an engine spec, `KIND:MODEL[@BASE_URL]`:
`transformers:default` (the embedded SmolLM2, CPU), `transformers:/models/Qwen2.5-7B`,
`openai:judge@http://127.0.0.1:8001/v1`, `vllm:/models/Qwen2.5-7B-Instruct`.
"""

from __future__ import annotations

from typing import Any, Sequence

from data_engine.synth.judge import Judge, JudgeConfig
from evaluator.data import EvalError, EvalRow
from evaluator.stats import win_rate_summary

# Pairwise outcome of the model vs the baseline: the judge's A is always the model's reply.
OUTCOME = {"A": 1.0, "tie": 0.5, "B": 0.0}
WINNER = {"A": "model", "tie": "tie", "B": "baseline"}


def parse_engine_spec(spec: str):
    """An EngineConfig from `KIND:MODEL[@BASE_URL]`."""
    from data_engine.config import ENGINE_KINDS, EngineConfig

    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ENGINE_KINDS or not rest:
        raise EvalError("bad_engine_spec", f"{spec!r} is not KIND:MODEL[@BASE_URL] with KIND "
                        f"one of {', '.join(ENGINE_KINDS)}", "judge")
    model, at, base_url = rest.partition("@") if kind == "openai" else (rest, "", "")
    config = EngineConfig(kind=kind, model=model, base_url=base_url or None)
    problems = config.check()
    if problems:
        raise EvalError("bad_engine_spec", "; ".join(problems), "judge")
    return config


def build_judge(spec: str, config: JudgeConfig | None = None) -> Judge:
    """The judge of a `--judge` spec; an engine that cannot be built (a model that does not
    load, a server that is down) is an `EvalError` of the field `judge`."""
    from data_engine.engines import build_engine
    from data_engine.engines.base import EngineError

    try:
        engine = build_engine(parse_engine_spec(spec))
    except EngineError as exc:
        raise EvalError(exc.code, exc.message, "judge") from None
    return Judge(engine, config or JudgeConfig())


def _calling(rows: Sequence[EvalRow]) -> int:
    return sum(bool(row.calls) for row in rows)


def score_replies(judge: Judge, rows: Sequence[EvalRow], replies: Sequence[dict[str, Any]]
                  ) -> dict[str, Any]:
    """Pointwise scores written into the replies; the side's summary returned. Failed
    generations are not judged (they count under usability), nor replies to rows that end
    with a tool call (a call is scored by tool-call accuracy; a judge reads prose)."""
    chosen = [i for i, r in enumerate(replies) if r["error"] is None and not rows[i].calls]
    conversations = [rows[i].prompt + [{"role": "assistant", "content": replies[i]["output"]}]
                     for i in chosen]
    min_mass = judge.config.min_mass
    scores, low_mass, errors = [], 0, 0
    for i, result in zip(chosen, judge.score(conversations)):
        replies[i]["judge_score"], replies[i]["judge_mass"] = result.score, result.mass
        if result.score is None:
            errors += 1
            continue
        scores.append(result.score)
        low_mass += result.mass is not None and result.mass < min_mass
    return {"mean": sum(scores) / len(scores) if scores else None, "scored": len(scores),
            "low_mass": low_mass, "errors": errors, "tool_call_rows": _calling(rows),
            "scores": scores}


def compare_replies(judge: Judge, rows: Sequence[EvalRow], model: Sequence[dict[str, Any]],
                    baseline: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict]]:
    """(summary, one pair verdict per row) for model vs baseline replies to the same rows;
    rows that end with a tool call are not compared (see `score_replies`)."""
    from data_engine.synth.judge import split_exchange

    chosen = [i for i in range(len(rows)) if model[i]["error"] is None
              and baseline[i]["error"] is None and not rows[i].calls]
    triples = []
    for i in chosen:
        question, _ = split_exchange(rows[i].prompt + [{"role": "assistant", "content": ""}])
        triples.append((question, model[i]["output"], baseline[i]["output"]))
    pairs: list[dict | None] = [None] * len(rows)
    outcomes, errors, consistent = [], 0, []
    for i, result in zip(chosen, judge.compare(triples)):
        if result.winner is None:
            errors += 1
            pairs[i] = {"winner": None, "consistent": None, "p_model": None,
                        "error": result.error}
            continue
        outcomes.append(OUTCOME[result.winner])
        consistent.append(bool(result.consistent))
        pairs[i] = {"winner": WINNER[result.winner], "consistent": result.consistent,
                    "p_model": result.p_a, "error": None}
    summary = win_rate_summary(outcomes)
    summary.update(errors=errors,
                   consistency=sum(consistent) / len(consistent) if consistent else None,
                   tool_call_rows=_calling(rows))
    return summary, pairs
