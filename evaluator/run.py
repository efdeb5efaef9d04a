"""`tunesmith eval run`: one split, one model (and a baseline) -> EVAL_DIR with
`metrics.json`, `samples.jsonl` and `report.html`, and a gate verdict.

Each model is a local folder, served for the evaluation by `serve_model` (vLLM on a GPU,
the transformers backend elsewhere) and stopped afterwards, or the URL of a server that
is already running. Everything the model says is generated through that server, as users
will call it. The baseline defaults to the base model of the run the model came from
(RUN_DIR/run.json), so "better than before fine-tuning" is measured by default.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from evaluator.data import EvalError, EvalRow, call_probes, read_rows

PPL_VIA = ("server", "local")
NO_BASELINE = "none"


@dataclass
class Target:
    """A model to evaluate: a local folder (served here) or a running server's URL."""

    label: str  # "model" | "baseline"
    path: Path | None = None
    base_url: str | None = None
    served_name: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.served_name or (self.path.name if self.path else None),
                "path": str(self.path) if self.path else None, "base_url": self.base_url}


@dataclass
class EvalOptions:
    data: Path
    out: Path
    model: str | None = None  # a model folder, a run folder (its merged/) or a URL
    served_name: str | None = None
    split: str = "test"
    baseline: str | None = None  # None: the run's base model if known; "none"; folder | URL
    judge: str | None = None  # engine spec, KIND:MODEL[@BASE_URL]
    gate: Path | None = None
    tokenizer: Path | None = None  # for URL targets whose server does not name a folder
    max_tokens: int | None = None  # None: the recipe's sanity budget over the rows' replies
    limit: int | None = None
    backend: str = "auto"
    ppl_via: str = "server"
    concurrency: int = 8
    # set by run_eval: the fewest positions of the local models, so both sides score the
    # same tokens of rows cut to fit (None: not known, rows are sent whole)
    context: int | None = None


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def model_target(value: str, label: str, served_name: str | None = None
                 ) -> tuple[Target, str | None]:
    """(target, the base model of the run it came from, if any). A run folder stands for its
    merged/ model."""
    if is_url(value):
        return Target(label, base_url=value.rstrip("/"), served_name=served_name), None
    path = Path(value).expanduser().resolve()
    if (path / "merged" / "config.json").is_file():
        path = path / "merged"
    from trainer_service.recipe.spec import HUB_ID  # here: the module costs 0.3 s to import

    if not (path / "config.json").is_file() and not path.exists() and HUB_ID.match(value):
        path = _cached_snapshot(value, label)  # a run trained on a hub id names its base so
    if not (path / "config.json").is_file():
        raise EvalError("model_not_found", f"{value} is neither a model folder (config.json), "
                        "a run folder (merged/) nor an http(s) URL", label)
    base = None
    run_json = path.parent / "run.json"
    if run_json.is_file():
        base = (json.loads(run_json.read_text(encoding="utf-8")).get("spec") or {}).get(
            "base_model")
    return Target(label, path=path, served_name=served_name), base


def _cached_snapshot(repo_id: str, label: str) -> Path:
    """The local folder of a hub model in this machine's Hugging Face cache (training
    downloaded it there); EvalError when it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or the cache cannot be read
        raise EvalError("model_not_found", f"{repo_id} is a hub id that is not in this "
                        "machine's Hugging Face cache ($HF_HOME); download it (`hf download "
                        f"{repo_id}`), or pass --{label} FOLDER (or --baseline none)",
                        label) from None


def served_models(base_url: str) -> list[dict[str, Any]]:
    from urllib.error import URLError
    from urllib.request import urlopen

    try:
        with urlopen(f"{base_url}/models", timeout=30.0) as reply:
            return json.loads(reply.read()).get("data") or []
    except (URLError, OSError, ValueError) as exc:
        raise EvalError("server_unreachable", f"{base_url}/models: {exc}", "base_url") from None


@contextmanager
def served(target: Target, options: EvalOptions, log: Callable[[str], None]
           ) -> Iterator[tuple[str, str, Path | None]]:
    """(base URL, served name, local folder for the tokenizer) while the target is up."""
    if target.base_url:
        listed = served_models(target.base_url)
        names = [m.get("id") for m in listed]
        name = target.served_name or (names[0] if names else None)
        if name is None or name not in names:
            raise EvalError("model_not_served", f"{target.base_url} serves {names}, not "
                            f"{name!r}", "served_name")
        root = next((m.get("root") for m in listed if m.get("id") == name), None)
        folder = options.tokenizer or (Path(root) if root and Path(root).is_dir() else None)
        yield target.base_url, name, folder
        return
    from evaluator.serving import serve_model

    started = time.monotonic()
    with serve_model(target.path, backend=options.backend,
                     served_name=target.served_name) as server:
        log(f"{target.label}: serving {target.path} as {server.name!r} at {server.base_url} "
            f"({server.backend}, ready in {time.monotonic() - started:.0f} s)")
        yield server.base_url, server.name, target.path


def _check_server_answered(target: Target, base_url: str, gens: list[Any]) -> None:
    """EvalError `server_died` when no reply reached the server: a server killed midway
    (an OOM kill) scored usability 0 and, in a pipeline, failed the gate with "train
    longer", blaming the model."""
    errors = [g.error or "" for g in gens]
    if errors and all(e.startswith("connection_error") for e in errors):
        raise EvalError("server_died", f"{base_url} stopped answering: all {len(errors)} "
                        f"generations failed to connect ({errors[0][:160]})",
                        "base_url" if target.base_url else "model")


def evaluate_side(target: Target, rows: list[EvalRow], options: EvalOptions,
                  log: Callable[[str], None], probes: list[EvalRow] | None = None
                  ) -> dict[str, Any]:
    """Perplexity and replies for one model, and its replies to the call probes."""
    from transformers import AutoTokenizer

    from data_engine.config import CleanConfig
    from evaluator import perplexity, toolcalls, usability
    from trainer_service.recipe.chat_format import call_format

    with served(target, options, log) as (base_url, name, folder):
        target.served_name = name
        if folder is None:
            raise EvalError("tokenizer_unknown", f"{base_url} does not name a local model "
                            "folder; pass --tokenizer", "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        warnings = _template_warnings(target, tokenizer, rows)
        for warning in warnings:
            log(f"warning: {warning}")
        # one position is the token the server generates after the echoed prompt
        encoded, cut = perplexity.cut_to(perplexity.encode_rows(tokenizer, rows),
                                         options.context - 1 if options.context else None)
        if cut:
            log(f"{target.label}: {cut} row(s) longer than the model's {options.context} "
                "positions, scored on their first ones")
        started = time.monotonic()
        if options.ppl_via == "local":
            logprobs = perplexity.local_logprobs(perplexity.load_local(folder), encoded)
        else:
            logprobs = perplexity.server_logprobs(base_url, name, encoded)
        ppl = {**perplexity.summarize(encoded, logprobs, options.ppl_via), "cut_rows": cut}
        log(f"{target.label}: perplexity {ppl['ppl']:.3f} over {ppl['tokens']} assistant "
            f"tokens ({options.ppl_via}, {time.monotonic() - started:.1f} s)")
        budget = options.max_tokens or usability.budget_for(tokenizer, rows)
        started = time.monotonic()
        gens = usability.generate(base_url, name, rows, budget, options.concurrency)
        _check_server_answered(target, base_url, gens)
        repetition = CleanConfig().repetition
        replies = [usability.judge_reply(row, gen, repetition, budget)
                   for row, gen in zip(rows, gens)]
        summary = usability.summarize(replies, budget)
        log(f"{target.label}: {summary['usable']}/{summary['rows']} replies usable "
            f"(budget {budget} tokens, {time.monotonic() - started:.1f} s)")
        probes, call_replies = probes or [], []
        if probes:
            started = time.monotonic()
            gens = usability.generate(base_url, name, probes, budget, options.concurrency)
            call_replies = [usability.judge_reply(probe, gen, repetition, budget)
                            for probe, gen in zip(probes, gens)]
        calls = toolcalls.summarize(probes, call_replies, rows, replies,
                                    call_format(tokenizer, tokenizer.chat_template))
        if probes and calls["rate"] is None:
            log(f"{target.label}: tool calls not read: its template writes them in a form "
                "tunesmith does not parse, and the server parsed none")
        elif probes:
            log(f"{target.label}: {calls['exact']}/{calls['calls']} tool calls made as the data "
                f"makes them ({time.monotonic() - started:.1f} s)")
    return {"ppl": ppl, "replies": replies, "usability": summary, "warnings": warnings,
            "json": usability.summarize_json(replies),
            "tool_calls": calls, "call_replies": call_replies,
            "reference": usability.add_reference_scores(rows, replies)}


def _template_warnings(target: Target, tokenizer, rows: list[EvalRow]) -> list[str]:
    """Where the served model's own chat template drops the rows' `tools`: its replies and
    call probes answer without them, while perplexity scores the rows in the training
    template, with them (a base model's template, e.g. SmolLM2's, ignores `tools`)."""
    tooled = [r for r in rows if r.tools]
    if not tooled or not getattr(tokenizer, "chat_template", None):
        return []
    row = tooled[0]
    try:
        with_tools = tokenizer.apply_chat_template(row.prompt, tools=row.tools, tokenize=False,
                                                   add_generation_prompt=True)
        without = tokenizer.apply_chat_template(row.prompt, tokenize=False,
                                                add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render them says so by failing
        return []
    if with_tools != without:
        return []
    return [f"{target.label}: its chat template ignores `tools`, so its replies to the "
            f"{len(tooled)} row(s) that offer tools, and its tool-call probes, were asked "
            "without them (its perplexity scores them with them, in the training template): "
            "compare its tool numbers with the other side's with care"]


def _pair(model: Any, baseline: Any) -> dict[str, Any] | None:
    if model is None and baseline is None:
        return None
    return {"model": model, "baseline": baseline}


def run_eval(options: EvalOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates, writes EVAL_DIR, returns metrics (with the gate's verdict)."""
    from evaluator.gate import evaluate_gate, load_gate
    from evaluator.report import write_report

    if options.ppl_via not in PPL_VIA:
        raise EvalError("bad_option", f"{options.ppl_via!r} is not one of "
                        f"{', '.join(PPL_VIA)}", "ppl")
    if not options.model:
        raise EvalError("no_model", "pass --model MODEL_DIR or --base-url URL", "model")
    for name in ("max_tokens", "concurrency"):  # limit: read_rows
        value = getattr(options, name)
        if value is not None and value < 1:
            raise EvalError("bad_option", f"{value} is below 1", name)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise EvalError("out_not_a_folder", f"{out} exists and is not a folder (EVAL_DIR gets "
                        "metrics.json, samples.jsonl and report.html)", "out")
    gate = load_gate(options.gate)
    rows = read_rows(options.data, options.split, options.limit)
    model, run_base = model_target(options.model, "model", options.served_name)
    baseline_spec = options.baseline if options.baseline is not None else run_base
    baseline = None
    if baseline_spec and baseline_spec != NO_BASELINE:
        baseline, _ = model_target(baseline_spec, "baseline")
    judge = None
    if options.judge:
        from evaluator.judged import build_judge

        judge = build_judge(options.judge)  # fail on a bad spec before serving anything
        if gate.judge_score_min is not None and gate.judge_score_min > judge.config.scale:
            raise EvalError("gate_unreachable", f"judge_score_min {gate.judge_score_min:g} is "
                            f"above the judge's scale (scores run 1..{judge.config.scale})",
                            "gate")
    log(f"eval: {len(rows)} {options.split} rows from {options.data}; baseline "
        f"{baseline_spec if baseline else 'none'}")

    from evaluator.perplexity import context_length

    known = [n for n in (context_length(t.path) for t in (model, baseline) if t and t.path) if n]
    options.context = min(known) if known else None
    probes = call_probes(rows)
    sides = {"model": evaluate_side(model, rows, options, log, probes)}
    if baseline:
        sides["baseline"] = evaluate_side(baseline, rows, options, log, probes)
    ours, theirs = sides["model"], sides.get("baseline")

    judged = None
    pairs: list[dict | None] = [None] * len(rows)
    if judge:
        from evaluator.judged import compare_replies, score_replies

        started = time.monotonic()
        pointwise = {"model": score_replies(judge, rows, ours["replies"]), "baseline": None}
        pairwise = None
        if theirs:
            pointwise["baseline"] = score_replies(judge, rows, theirs["replies"])
            pairwise, pairs = compare_replies(judge, rows, ours["replies"], theirs["replies"])
        judged = {"engine": options.judge, "pointwise": pointwise, "pairwise": pairwise}
        judge.engine.close()
        log(f"judge: {time.monotonic() - started:.1f} s"
            + (f", win rate {pairwise['win_rate']}" if pairwise else ""))

    metrics: dict[str, Any] = {
        "model": model.describe(),
        "baseline": baseline.describe() if baseline else None,
        "data": {"path": str(options.data), "split": options.split, "rows": len(rows)},
        "perplexity": {"model": ours["ppl"], "baseline": theirs["ppl"] if theirs else None,
                       "ratio": ours["ppl"]["ppl"] / theirs["ppl"]["ppl"] if theirs else None},
        "usability": {"model": ours["usability"],
                      "baseline": theirs["usability"] if theirs else None},
        "json_validity": _pair(ours["json"], theirs["json"] if theirs else None),
        "tool_calls": _pair(ours["tool_calls"], theirs["tool_calls"] if theirs else None),
        "reference": _pair(ours["reference"], theirs["reference"] if theirs else None),
        "judge": judged,
        "gate": None,
        "warnings": ours["warnings"] + (theirs["warnings"] if theirs else []),
    }
    metrics["gate"] = evaluate_gate(metrics, gate)
    samples = [_sample(row, ours["replies"][i], theirs["replies"][i] if theirs else None,
                       pairs[i]) for i, row in enumerate(rows)]
    calls = [_call_sample(probe, ours["call_replies"][i],
                          theirs["call_replies"][i] if theirs else None)
             for i, probe in enumerate(probes)]
    write_outputs(options.out, metrics, samples, calls or None)
    write_report(options.out, metrics, samples)
    return metrics


def _sample(row: EvalRow, model: dict, baseline: dict | None, pair: dict | None
            ) -> dict[str, Any]:
    return {"id": row.id, "source": row.source, "tags": row.tags, "prompt": row.question,
            "reference": row.reference, "reference_calls": row.calls, "model": model,
            "baseline": baseline, "pair": pair}


def _call_sample(probe: EvalRow, model: dict, baseline: dict | None) -> dict[str, Any]:
    return {"id": probe.id, "source": probe.source, "prompt": probe.question,
            "reference_calls": probe.calls, "model": model, "baseline": baseline}


def write_outputs(out: Path, metrics: dict[str, Any], samples: list[dict[str, Any]],
                  calls: list[dict[str, Any]] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    for name, records in (("samples.jsonl", samples), ("calls.jsonl", calls)):
        if records is None:  # none this time: an earlier run's file would read as this one's
            (out / name).unlink(missing_ok=True)
            continue
        with (out / name).open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
