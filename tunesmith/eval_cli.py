"""`tunesmith eval run` and `tunesmith eval compare`: flags -> evaluator, verdict -> terminal.

Exit codes: 0 when the evaluation ran (and, with --gate, passed); 1 when the gate failed
(--gate) or the evaluation broke while running; 2 for bad input (a flag, the data, the gate
file, a model folder), printed as `error: <field>: <code>: <message>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli import app, console

eval_app = typer.Typer(help="Evaluate a fine-tune: perplexity, usability, judged win rate, "
                       "gate.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
EXIT_GATE_FAILED, EXIT_BAD_INPUT = 1, 2


def _bad_input(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg="red")
    return typer.Exit(EXIT_BAD_INPUT)


@eval_app.command("run")
def eval_run(
    data: Annotated[Path, typer.Option("--data", help="A `tunesmith data run` output folder.")],
    out: Annotated[Path, typer.Option("--out", help="EVAL_DIR: metrics.json, samples.jsonl, "
                                      "report.html.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", help="A merged model folder, or a run folder (its merged/); served here "
        "for the evaluation.")] = None,
    base_url: Annotated[Optional[str], typer.Option(
        "--base-url", help="Instead of --model: a running OpenAI-compatible server's /v1 URL.")
    ] = None,
    split: Annotated[str, typer.Option("--split")] = "test",
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="A model folder or /v1 URL to compare against; default: the run's "
        "base model (RUN_DIR/run.json); `none` for no baseline.")] = None,
    judge: Annotated[Optional[str], typer.Option(
        "--judge", help="Judge engine KIND:MODEL\\[@BASE_URL], e.g. transformers:default or "
        "openai:judge@http://127.0.0.1:8001/v1.")] = None,
    gate: Annotated[Optional[Path], typer.Option(
        "--gate", help="Gate thresholds (YAML); the exit code follows the verdict.")] = None,
    served_name: Annotated[Optional[str], typer.Option(
        "--served-name", help="The model's name on the server (default: the folder's name, "
        "or the first model a --base-url lists).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="Tokenizer folder for a --base-url whose /v1/models names no "
        "local folder.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", help="Generation budget; default 1.5x the p95 reference length "
        "(64..1024).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N rows.")
                     ] = None,
    backend: Annotated[str, typer.Option(
        "--backend", help="auto | vllm | transformers | llama_cpp (auto: llama_cpp for a "
        ".gguf MODEL, vllm where installed with a CUDA device, else transformers).")] = "auto",
    ppl: Annotated[str, typer.Option(
        "--ppl", help="server: prompt log-probabilities through the server; local: a forward "
        "pass here.")] = "server",
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight.")] = 8,
) -> None:
    """Perplexity, usability and judged quality of a model vs its baseline -> EVAL_DIR."""
    from evaluator.data import EvalError
    from evaluator.gate import GateError
    from evaluator.run import EvalOptions, run_eval
    from evaluator.serving import ServeError

    if bool(model) == bool(base_url):
        raise _bad_input(ValueError("model: pass exactly one of --model and --base-url"))
    options = EvalOptions(data=data, out=out, model=model or base_url, served_name=served_name,
                          split=split, baseline=baseline, judge=judge, gate=gate,
                          tokenizer=tokenizer, max_tokens=max_tokens, limit=limit,
                          backend=backend, ppl_via=ppl, concurrency=concurrency)
    try:
        metrics = run_eval(options, log=lambda line: console.print(line, highlight=False,
                                                                   markup=False))
    except GateError as exc:
        raise _bad_input(exc) from None
    except (EvalError, ServeError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT if exc.bad_input else 1) from None
    _print_summary(metrics)
    typer.echo(f"report: {out / 'report.html'}")
    if gate is not None and not metrics["gate"]["passed"]:
        raise typer.Exit(EXIT_GATE_FAILED)


def _print_summary(metrics: dict) -> None:
    ppl, use = metrics["perplexity"], metrics["usability"]
    line = f"perplexity {ppl['model']['ppl']:.3f}"
    if ppl["ratio"] is not None:
        line += f" (baseline {ppl['baseline']['ppl']:.3f}, ratio {ppl['ratio']:.3f})"
    typer.echo(line)
    typer.echo(f"usability {use['model']['rate']:.3f} ({use['model']['usable']}/"
               f"{use['model']['rows']}; failures {use['model']['failures']})")
    calls = (metrics.get("tool_calls") or {}).get("model")
    if calls and calls["calls"] and calls["rate"] is None:
        typer.echo("tool calls not measured: the template writes them in a form tunesmith "
                   "does not read, and the server parsed none")
    elif calls and calls["calls"]:
        baseline = metrics["tool_calls"]["baseline"]
        typer.echo(f"tool calls {calls['rate']:.3f} ({calls['exact']}/{calls['calls']} exact, "
                   f"{calls['names']} right names, {calls['parsed']} parseable)"
                   + (f"; baseline {baseline['rate']:.3f}" if baseline and baseline["rate"]
                      is not None else ""))
    judge = metrics["judge"]
    if judge and judge["pairwise"]:
        pair = judge["pairwise"]
        typer.echo(f"win rate {pair['win_rate']:.3f}, 95% CI {pair['ci95']} "
                   f"({pair['wins']} wins, {pair['ties']} ties, {pair['losses']} losses)")
    verdict = metrics["gate"]
    for check in verdict["checks"]:
        colour = {"pass": "green", "fail": "red"}.get(check["status"], "yellow")
        typer.secho(f"gate {check['name']}: {check['status']} - {check['reason']}", fg=colour)
    typer.secho(f"gate: {'passed' if verdict['passed'] else 'FAILED'}",
                fg="green" if verdict["passed"] else "red")


@eval_app.command("compare")
def eval_compare(
    a: Annotated[str, typer.Argument(help="Form A: model folder, adapter folder or .gguf.")],
    b: Annotated[str, typer.Argument(help="Form B, compared against A.")],
    data: Annotated[Path, typer.Option("--data", help="A `tunesmith data run` output folder.")],
    split: Annotated[str, typer.Option("--split")] = "test",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N rows.")
                     ] = 32,
    base: Annotated[Optional[str], typer.Option(
        "--base", help="Base model for adapter forms (default: the adapter's config).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the result as JSON.")
                   ] = None,
) -> None:
    """Scores two forms of a model on the same rows: PPL ratio, mean KL, same-top-token rate."""
    from evaluator.compare import compare_forms
    from evaluator.data import EvalError, read_rows

    if out is not None and out.is_dir():  # checked before minutes of scoring, not after
        typer.secho(f"error: --out: {out} is a folder; name the JSON file to write", err=True,
                    fg="red")
        raise typer.Exit(2)
    try:
        result = compare_forms(a, b, read_rows(data, split, limit), base)
    except EvalError as exc:
        raise _bad_input(exc) from None
    text = json.dumps(result, indent=2)
    typer.echo(text)  # on screen even if the file cannot be written
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
