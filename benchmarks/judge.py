"""Probability-judge benchmark: batched vs one-row-at-a-time throughput, and judge quality.

Run:
    .venv/bin/python benchmarks/judge.py --rows 64 --batch-size 16
    .venv/bin/python benchmarks/judge.py --rows 32 --skip-quality   # throughput only

Both parts use the transformers engine on the embedded default model (SmolLM2-135M-Instruct,
`tunesmith.models.fetch_default`) on CPU, and the judge's real pointwise prompts.

- Throughput: N rows (the labelled answers, cycled) scored with the engine's batched
  `next_token_scores` (`--batch-size` conversations per forward pass, left padded, similar
  lengths together) and one row per call on the same engine, after a warm-up call; the two
  alternate chunk by chunk so that a shared machine's changing load hits both alike.
  Printed: rows/s of each (N / wall seconds), the ratio of wall times and of process CPU
  times, the prompts' mean length and shared prefix in tokens, and the largest difference
  between the two ways' expected scores (left padding must not change a row's score). A
  third way runs alongside: the usual LLM-as-judge, generating the verdict text one row a
  call (the same engine with logprobs off, up to the judge's `max_tokens`) and parsing it.
- Quality, on `benchmarks/judge_labelled.jsonl` (40 question/answer pairs: 20 clearly good,
  20 clearly bad: wrong, off-topic, degenerate, empty-ish): the probability judge (expected
  score from the digits' next-token probabilities) against the text-parsing judge (the same
  engine with logprobs switched off: greedy generation, the number parsed from the reply).
  Accuracy: the score is above the scale's midpoint for a good answer and below it for a bad
  one (an unparseable reply counts as wrong); AUC: the chance that a random good answer
  scores above a random bad one (ties count half; an unparseable reply scores the midpoint).
  Also the mean score per kind of answer and the probability mass on the score tokens.
  Pairwise (probability judge): each good answer against an answer that is bad for any
  question, in both orders: wins, losses, ties (the orders disagreed), the position-
  consistency rate and the share of verdicts that named whichever answer was shown first.

`results.json` in the workdir holds the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # As a script this folder leads sys.path; the project root must, to import the packages.
    sys.path[0] = str(ROOT)

from data_engine.engines.base import WithoutLogprobs  # noqa: E402
from data_engine.synth.judge import SWAP, Judge, JudgeConfig, consistency_rate  # noqa: E402

LABELLED = ROOT / "benchmarks" / "judge_labelled.jsonl"


def load_labelled(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        row["messages"] = [{"role": "user", "content": row["question"]},
                           {"role": "assistant", "content": row["answer"]}]
    return rows


def auc(good: list[float], bad: list[float]) -> float:
    """Mann-Whitney: P(a good answer outscores a bad one), ties half."""
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def throughput(judge: Judge, rows: list[dict[str, Any]], n: int, batch_size: int,
               generating: Judge | None = None) -> dict[str, Any]:
    """Batched probability scoring against one row per call; with ``generating`` (the same
    engine without logprobs), also against the usual LLM-as-judge: generate the verdict
    text one row at a time and parse it."""
    conversations = [rows[i % len(rows)]["messages"] for i in range(n)]
    engine = judge.engine
    engine.batch_size = batch_size
    judge.score(conversations[:batch_size])  # warm-up: allocator, kernels, template cache
    ways = {"batched": lambda chunk: judge.score(chunk),
            "single": lambda chunk: [judge.score([c])[0] for c in chunk]}
    if generating is not None:
        ways["generated"] = lambda chunk: [generating.score([c])[0] for c in chunk]
    # The ways alternate chunk by chunk, so a change in the machine's load (other people's
    # jobs on a shared box) falls on all of them rather than on whichever ran last.
    out: dict[str, list] = {name: [] for name in ways}
    wall = {name: 0.0 for name in ways}
    cpu = {name: 0.0 for name in ways}
    for lo in range(0, n, batch_size):
        chunk = conversations[lo:lo + batch_size]
        for name, run in ways.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            out[name].extend(run(chunk))
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    batched, single = out["batched"], out["single"]
    drift = max(abs(a.score - b.score) for a, b in zip(batched, single))
    # Prompt sizes explain the CPU numbers: each row is a full forward pass over these.
    prompts = [judge.pointwise_prompt(r["question"], r["answer"]) for r in rows]
    ids = [engine.tokenizer.encode(engine.render(p), add_special_tokens=False) for p in prompts]
    shared = next((k for k in range(min(map(len, ids))) if len({t[k] for t in ids}) > 1), 0)
    sides = {name: {"seconds": round(wall[name], 2), "cpu_seconds": round(cpu[name], 2),
                    "rows_per_s": round(n / wall[name], 2)} for name in wall}
    result = {"rows": n, "batch_size": batch_size,
              "prompt_tokens": {"mean": round(mean(map(len, ids)), 1), "shared_prefix": shared},
              **sides, "ratio": round(wall["single"] / wall["batched"], 2),
              "cpu_ratio": round(cpu["single"] / cpu["batched"], 2),
              "max_score_difference": drift}
    if "generated" in out:
        parsed = [r.score for r in out["generated"]]
        result["generated"].update(
            max_tokens=generating.config.max_tokens,
            parsed=sum(score is not None for score in parsed))
        result["generated_ratio"] = round(wall["generated"] / wall["batched"], 2)
    return result


def quality(judge: Judge, parsing: Judge, rows: list[dict[str, Any]]) -> dict[str, Any]:
    mid = (1 + judge.config.scale) / 2
    good = [r["label"] == "good" for r in rows]
    sides: dict[str, Any] = {}
    for name, j in (("probability", judge), ("parsing", parsing)):
        start = time.perf_counter()
        results = j.score([r["messages"] for r in rows])
        seconds = time.perf_counter() - start
        scores = [r.score for r in results]
        filled = [mid if s is None else s for s in scores]
        correct = [s is not None and (s > mid if g else s < mid) for s, g in zip(scores, good)]
        kinds: dict[str, list[float]] = {}
        for row, s in zip(rows, scores):
            if s is not None:
                kinds.setdefault(row["kind"], []).append(s)
        side = {"seconds": round(seconds, 2), "accuracy": round(sum(correct) / len(rows), 3),
                "auc": round(auc([s for s, g in zip(filled, good) if g],
                                 [s for s, g in zip(filled, good) if not g]), 3),
                "scored": sum(s is not None for s in scores),
                "mean_score_by_kind": {k: round(mean(v), 2) for k, v in sorted(kinds.items())},
                "examples": [{"id": row["id"], "score": s, "error": r.error}
                             for row, s, r in list(zip(rows, scores, results))[:3]]}
        masses = [r.mass for r in results if r.mass is not None]
        if masses:
            side["mass"] = {"min": round(min(masses), 3), "median": round(median(masses), 3),
                            "max": round(max(masses), 3),
                            "below_min_mass": sum(m < judge.config.min_mass for m in masses)}
        sides[name] = side
    return {"rows": len(rows), "good": sum(good), "midpoint": mid, "sides": sides}


def pairwise(judge: Judge, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each good answer against a bad answer that is bad for any question (off-topic,
    degenerate, empty-ish), the good one shown first in every other pair; both orders
    are judged either way."""
    bad = [r for r in rows if r["kind"] in ("off_topic", "degenerate", "empty")]
    pairs, good_is = [], []
    for i, row in enumerate(r for r in rows if r["label"] == "good"):
        other = bad[i % len(bad)]["answer"]
        first = i % 2 == 0
        pairs.append((row["question"], *((row["answer"], other) if first
                                         else (other, row["answer"]))))
        good_is.append("A" if first else "B")
    start = time.perf_counter()
    results = judge.compare(pairs)
    seconds = time.perf_counter() - start
    shown_first = sum((r.first == "A") + (SWAP[r.second] == "A") for r in results
                      if r.error is None)
    judged = [r for r in results if r.error is None]
    return {"pairs": len(pairs), "seconds": round(seconds, 2), "method": results[0].method,
            "good_wins": sum(r.winner == g for r, g in zip(results, good_is)),
            "bad_wins": sum(r.winner == SWAP[g] for r, g in zip(results, good_is)),
            "ties": sum(r.winner == "tie" for r in results),
            "errors": len(results) - len(judged),
            "consistency_rate": consistency_rate(results),
            "first_position_rate": round(shown_first / (2 * len(judged)), 3) if judged else None}


def print_report(results: dict[str, Any]) -> None:
    print(f"\nmodel: {results['model']}  device: cpu, torch threads {results['threads']}, "
          f"load average at start {results['load_before']:.1f} (cores: {os.cpu_count()})")
    if t := results.get("throughput"):
        print(f"throughput on {t['rows']} rows (pointwise, 1..5; prompts of "
              f"{t['prompt_tokens']['mean']:.0f} tokens on average, the first "
              f"{t['prompt_tokens']['shared_prefix']} shared by every row):")
        for name, label in (("batched", f"batched (batch {t['batch_size']})"),
                            ("single", "one row per call"),
                            ("generated", "generated verdict")):
            if name in t:
                print(f"  {label:<20} {t[name]['rows_per_s']:.2f} rows/s ({t[name]['seconds']:.1f}"
                      f" s wall, {t[name]['cpu_seconds']:.1f} s CPU)")
        print(f"  ratio batched / single: {t['ratio']:.2f}x wall, {t['cpu_ratio']:.2f}x CPU time; "
              f"largest score difference between the two: {t['max_score_difference']:.2e}")
        if "generated" in t:
            g = t["generated"]
            print(f"  ratio batched / generated verdict (one row a call, up to {g['max_tokens']} "
                  f"tokens, parsed {g['parsed']}/{t['rows']}): {t['generated_ratio']:.2f}x wall")
    if q := results.get("quality"):
        print(f"quality on {q['rows']} labelled answers ({q['good']} good), midpoint "
              f"{q['midpoint']:g}:")
        for name, side in q["sides"].items():
            mass = side.get("mass")
            extra = (f", mass min/median/max {mass['min']}/{mass['median']}/{mass['max']} "
                     f"({mass['below_min_mass']} below min_mass)") if mass else ""
            print(f"  {name:<11} accuracy {side['accuracy']:.3f}  AUC {side['auc']:.3f}  "
                  f"scored {side['scored']}/{q['rows']}  {side['seconds']:.1f} s{extra}")
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in side["mean_score_by_kind"].items())
            print(f"    mean score by kind: {kinds}")
    if pw := results.get("pairwise"):
        print(f"pairwise, {pw['pairs']} good answers vs bad ones, both orders ({pw['method']}, "
              f"{pw['seconds']:.1f} s): good wins {pw['good_wins']}, bad wins {pw['bad_wins']}, "
              f"ties {pw['ties']}, errors {pw['errors']}; position consistency "
              f"{pw['consistency_rate']:.3f}, verdicts naming the first-shown answer "
              f"{pw['first_position_rate']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows for the throughput part")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--labelled", type=Path, default=LABELLED)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--workdir", type=Path, help="where results.json goes (default: temp)")
    args = parser.parse_args()

    import torch

    from data_engine.engines.hf import TransformersEngine
    from tunesmith.models import fetch_default

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = TransformersEngine(str(fetch_default()), device="cpu", batch_size=args.batch_size)
    judge = Judge(engine, JudgeConfig())
    rows = load_labelled(args.labelled)
    results: dict[str, Any] = {"model": "SmolLM2-135M-Instruct (embedded default)",
                               "threads": torch.get_num_threads(),
                               "load_before": os.getloadavg()[0]}
    if not args.skip_throughput:
        results["throughput"] = throughput(judge, rows, args.rows, args.batch_size,
                                           Judge(WithoutLogprobs(engine), JudgeConfig()))
        print(f"throughput done: {results['throughput']['ratio']}x", flush=True)
    if not args.skip_quality:
        engine.batch_size = args.batch_size
        results["quality"] = quality(judge, Judge(WithoutLogprobs(engine), JudgeConfig()), rows)
        results["pairwise"] = pairwise(judge, rows)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ts-judge-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print_report(results)
    print(f"results: {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
