"""Evaluator throughput against a running OpenAI-compatible server.

Run:
    .venv/bin/python benchmarks/eval_throughput.py                 # serves the default model
    .venv/bin/python benchmarks/eval_throughput.py --base-url http://127.0.0.1:8000/v1 \
        --tokenizer /models/merged                                   # an already running server

Without --base-url the embedded default model (SmolLM2-135M-Instruct) is served with
`evaluator.serving.serve_model` (vLLM on a GPU with vLLM, the transformers backend
elsewhere) for the run. Rows: the bundled sample's Japanese title rows (or --data DIR, a
`tunesmith data run` output, --split).

- Perplexity: the same N rows' prompt log-probabilities through `/v1/completions`, batched
  (--batch-rows prompts per request) and one row per request, alternating chunk by chunk so
  a change in the machine's load falls on both. Prints rows/s of each and the ratio, and the
  largest difference between the two ways' per-row NLL (batching must not change a score).
- Generation: N greedy chat completions (--max-tokens each) at concurrency 1, 8 and 32;
  prints requests/s and completion tokens/s of each and the ratio to concurrency 1.

`results.json` in --out holds the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(ROOT)

from data_engine.engines.base import SamplingParams  # noqa: E402
from data_engine.engines.openai_engine import OpenAIEngine  # noqa: E402
from evaluator.data import EvalError, read_rows, to_row  # noqa: E402
from evaluator.perplexity import encode_rows, server_logprobs  # noqa: E402

SAMPLE = ROOT / "data_engine" / "sample" / "data" / "titles_ja.jsonl"
CONCURRENCY = (1, 8, 32)


def sample_rows(n: int):
    """The sample's well-formed rows (it also holds broken ones, for the cleaning stage)."""
    rows = []
    for i, line in enumerate(SAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = to_row(json.loads(line), f"{SAMPLE.name}:{i}")
        except (ValueError, EvalError):
            continue
        if row.reference:
            rows.append(row)
    return [rows[i % len(rows)] for i in range(n)]


def perplexity_throughput(base_url: str, name: str, encoded, batch_rows: int) -> dict[str, Any]:
    server_logprobs(base_url, name, encoded[:batch_rows], batch_rows)  # warm-up
    wall = {"batched": 0.0, "single": 0.0}
    results: dict[str, list] = {"batched": [], "single": []}
    for lo in range(0, len(encoded), batch_rows):
        chunk = encoded[lo:lo + batch_rows]
        for way, size in (("batched", batch_rows), ("single", 1)):
            started = time.perf_counter()
            results[way] += server_logprobs(base_url, name, chunk, size)
            wall[way] += time.perf_counter() - started
    diff = max(abs(sum(v for v in a[1:]) - sum(v for v in b[1:]))
               for a, b in zip(results["batched"], results["single"]))
    n = len(encoded)
    return {"rows": n, "batch_rows": batch_rows,
            "batched_rows_per_s": n / wall["batched"], "single_rows_per_s": n / wall["single"],
            "speedup": wall["single"] / wall["batched"], "max_row_nll_diff": diff}


def generation_throughput(base_url: str, name: str, rows, max_tokens: int) -> dict[str, Any]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    out: dict[str, Any] = {}
    for concurrency in CONCURRENCY:
        engine = OpenAIEngine(name, base_url, max_concurrency=concurrency, timeout_s=600.0)
        try:
            engine.generate([rows[0].prompt], params)  # warm-up
            started = time.perf_counter()
            gens = engine.generate([r.prompt for r in rows], params)
            wall = time.perf_counter() - started
        finally:
            engine.close()
        failed = [g.error for g in gens if g.error]
        out[str(concurrency)] = {"requests_per_s": len(rows) / wall,
                                 "tokens_per_s": sum(g.tokens for g in gens) / wall,
                                 "errors": len(failed), "first_error": failed[0] if failed
                                 else None}
    base = out["1"]["tokens_per_s"]
    for numbers in out.values():
        numbers["tokens_ratio_vs_1"] = numbers["tokens_per_s"] / base if base else None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url")
    parser.add_argument("--served-name")
    parser.add_argument("--tokenizer", help="with --base-url: the served model's folder")
    parser.add_argument("--model", help="folder to serve (default: the embedded model)")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-rows", type=int, default=16)
    parser.add_argument("--gen-rows", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-eval"))
    args = parser.parse_args()
    if args.base_url and not args.tokenizer:
        parser.error("--base-url needs --tokenizer: the served model's folder (it renders "
                     "and counts the rows)")
    for flag in ("rows", "batch_rows", "gen_rows", "max_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")

    from transformers import AutoTokenizer

    rows = read_rows(args.data, args.split, args.rows) if args.data else sample_rows(args.rows)
    with ExitStack() as stack:
        if args.base_url:
            from evaluator.run import served_models

            base_url, folder = args.base_url, args.tokenizer
            name = args.served_name or served_models(base_url)[0]["id"]
            backend = "external"
        else:
            from evaluator.serving import serve_model
            from tunesmith.models import fetch_default

            folder = args.model or str(fetch_default())
            server = stack.enter_context(serve_model(folder))
            base_url, name, backend = server.base_url, server.name, server.backend
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoded = encode_rows(tokenizer, rows)
        print(f"server: {base_url} ({backend}), model {name!r}, {len(rows)} rows, "
              f"{sum(len(e.ids) for e in encoded) / len(encoded):.0f} tokens per row")
        ppl = perplexity_throughput(base_url, name, encoded, args.batch_rows)
        print(f"perplexity: batched {ppl['batched_rows_per_s']:.1f} rows/s, one per request "
              f"{ppl['single_rows_per_s']:.1f} rows/s -> {ppl['speedup']:.2f}x "
              f"(max row NLL difference {ppl['max_row_nll_diff']:.2e})")
        gen = generation_throughput(base_url, name, rows[:args.gen_rows], args.max_tokens)
        for concurrency, numbers in gen.items():
            print(f"generation @ {concurrency:>2}: {numbers['requests_per_s']:.2f} req/s, "
                  f"{numbers['tokens_per_s']:.1f} tokens/s -> "
                  f"{numbers['tokens_ratio_vs_1']:.2f}x vs 1 ({numbers['errors']} errors)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"backend": backend, "perplexity": ppl, "generation": gen}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
