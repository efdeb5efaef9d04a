"""`EVAL_DIR/report.html`: the gate verdict, the metrics and their plots on one page.

The page is what a reviewer opens before promoting a model, so it leads with the verdict and
each check's reason, then shows where the numbers come from: judge score distributions,
win/tie/loss against the baseline, perplexity per source and the kinds of unusable replies
with examples. It is one self-contained file (plots are inline base64 PNGs, no scripts, no
external resources), so it can be attached to a run or mailed, and every piece of text in it,
model output above all, is HTML-escaped: a reply is arbitrary text and may contain markup.
A section whose metric was not measured says so instead of showing an empty plot.

Plots and tables use the data engine report's helpers and style, so both reports look alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from data_engine.writers.report import STYLE, figure, html_table, png_img
from evaluator.gate import FAILURE_KINDS

REPORT_FILE = "report.html"
EXAMPLES_PER_KIND = 3
EXAMPLE_CHARS = 300
NOT_MEASURED = "<p class='none'>not measured</p>"
SIDES = ("model", "baseline")
COLORS = {"model": "#4f81bd", "baseline": "#9e9e9e"}

_EXTRA_STYLE = """
td.text,th.text{text-align:left;max-width:40em}
pre{overflow-wrap:anywhere}
tr.pass td{background:#e6f4ea} tr.fail td{background:#fce8e6} tr.skipped td{color:#666}
.verdict-pass{color:#1e7e34;font-weight:bold} .verdict-fail{color:#b00020;font-weight:bold}
.none{color:#666;font-style:italic}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _truncate(text: str, limit: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def _pre(text: str | None) -> str:
    """Model or user text, escaped and cut to EXAMPLE_CHARS; "(empty)" for nothing."""
    if not text:
        return "<p class='none'>(empty)</p>"
    return f"<pre>{_esc(_truncate(text))}</pre>"


def _who(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "none"
    return f"{entry.get('name')} ({entry.get('path') or entry.get('base_url')})"


def _header(metrics: dict[str, Any], samples: list[dict[str, Any]]) -> list[str]:
    data = metrics.get("data") or {}
    judge = metrics.get("judge")
    rows = [("model", _who(metrics.get("model"))), ("baseline", _who(metrics.get("baseline"))),
            ("data", f"{data.get('path')} (split {data.get('split')})"),
            ("rows", data.get("rows", len(samples))),
            ("judge", judge.get("engine") if judge else "none")]
    name = (metrics.get("model") or {}).get("name", "model")
    body = "".join(f"<tr><th>{_esc(k)}</th><td class='text'>{_esc(v)}</td></tr>" for k, v in rows)
    return [f"<h1>tunesmith evaluation: {_esc(name)}</h1>", f"<table>{body}</table>"]


def _gate_section(gate: dict[str, Any] | None) -> list[str]:
    parts = ["<h2>Promotion gate</h2>"]
    if gate is None:
        return parts + ["<p class='none'>gate not evaluated</p>"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    parts.append(f"<p class='verdict-{'pass' if gate['passed'] else 'fail'}'>Gate {verdict}</p>")
    if not gate["checks"]:
        return parts + ["<p class='none'>no thresholds set</p>"]
    head = ("<th>check</th><th>status</th><th class='text'>metric</th><th>threshold</th>"
            "<th>value</th><th class='text'>reason</th>")
    body = "".join(
        f"<tr class='{_esc(c['status'])}'><td>{_esc(c['name'])}</td><td>{_esc(c['status'])}</td>"
        f"<td class='text'>{_esc(c['metric'])}</td><td>{_esc(c['op'])} {_esc(c['threshold'])}</td>"
        f"<td>{_fmt(c['value'])}</td><td class='text'>{_esc(c['reason'])}</td></tr>"
        for c in gate["checks"])
    return parts + [f"<table><tr>{head}</tr>{body}</table>"]


def _sides(block: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> list[str]:
    """The model's and the baseline's cell for one metric; "—" for a side not measured."""
    return [describe(block[side]) if block.get(side) else "—" for side in SIDES]


def _summary_rows(metrics: dict[str, Any]) -> list[tuple[str, ...]]:
    """(metric, model, baseline) rows; a metric that was not measured says so."""
    rows: list[tuple[str, ...]] = []
    ppl, usability = metrics.get("perplexity"), metrics.get("usability")
    json_validity, reference = metrics.get("json_validity"), metrics.get("reference")
    if ppl is None:
        rows.append(("perplexity", "not measured", ""))
    else:
        rows.append(("perplexity", *_sides(
            ppl, lambda m: f"{_fmt(m['ppl'])} ({m['tokens']} tokens, {m['method']})")))
        rows.append(("PPL ratio (model / baseline)", _fmt(ppl.get("ratio")), ""))
    if usability is None:
        rows.append(("usability", "not measured", ""))
    else:
        rows.append(("usability", *_sides(
            usability, lambda m: f"{_fmt(m['rate'])} ({m['usable']} of {m['rows']} usable)")))
    if json_validity is None:
        rows.append(("JSON validity", "not measured", ""))
    else:
        rows.append(("JSON validity (rows tagged json)", *_sides(
            json_validity, lambda m: f"{_fmt(m['rate'])} ({m['valid']} of {m['rows']} valid)")))
    calls = metrics.get("tool_calls")
    if calls is not None:
        rows += _tool_call_rows(calls)
    if reference is None:
        rows.append(("reference overlap", "not measured", ""))
    else:
        rows.append(("chrF vs reference", *_sides(reference, lambda m: _fmt(m["chrf"], ".1f"))))
        rows.append(("ROUGE-L vs reference", *_sides(reference, lambda m: _fmt(m["rouge_l"]))))
    judge = metrics.get("judge")
    if judge is None:
        return rows + [("judge", "not measured", "")]
    rows.append(("judge score (mean)", *_sides(
        judge.get("pointwise") or {},
        lambda m: (f"{_fmt(m['mean'], '.2f')} ({m['scored']} scored, {m['low_mass']} "
                   f"low-mass, {m['errors']} errors"
                   + (f", {m['tool_call_rows']} tool-call rows not judged"
                      if m.get("tool_call_rows") else "") + ")"))))
    pair = judge.get("pairwise")
    if pair is None:
        return rows + [("win rate vs baseline", "not measured", "")]
    low, high = pair.get("ci95") or (None, None)
    return rows + [
        ("win rate vs baseline (95% CI)",
         f"{_fmt(pair['win_rate'])} [{_fmt(low)}, {_fmt(high)}]: wins {pair['wins']}, "
         f"ties {pair['ties']}, losses {pair['losses']}", ""),
        ("judge consistency (both orders agree)",
         f"{_fmt(pair.get('consistency'))} of {pair['pairs']} pairs, "
         f"{pair.get('errors', 0)} not judged", ""),
    ]


def _tool_call_rows(calls: dict[str, Any]) -> list[tuple[str, ...]]:
    """Tool-call accuracy over the data's tool-call turns, and calls made where the row
    answers in text."""
    rows: list[tuple[str, ...]] = []
    if any((calls.get(side) or {}).get("calls") for side in SIDES):
        rows.append(("tool-call turns of the data", *_sides(
            calls, lambda m: (f"{_fmt(m['rate'])} ({m['exact']} of {m['calls']} exact; "
                              f"{m['names']} right names, {m['parsed']} parseable)")
            if m["calls"] else "—")))
    if any((calls.get(side) or {}).get("answer_rows") for side in SIDES):
        rows.append(("calls where the row answers in text", *_sides(
            calls, lambda m: "—" if m["spurious"] is None
            else f"{m['spurious']} of {m['answer_rows']}")))
    return rows


def _score_plot(judge: dict[str, Any] | None) -> str:
    pointwise = (judge or {}).get("pointwise") or {}
    scores = {side: pointwise[side]["scores"] for side in SIDES
              if pointwise.get(side) and pointwise[side].get("scores")}
    if not scores:
        return NOT_MEASURED
    everything = [s for values in scores.values() for s in values]
    low, high = math.floor(min(everything)), math.ceil(max(everything))
    bins = np.linspace(low, max(high, low + 1), 4 * max(high - low, 1) + 1)
    fig = figure(figsize=(7, 3))
    ax = fig.subplots()
    for side, values in scores.items():
        ax.hist(values, bins=bins, alpha=0.6, color=COLORS[side],
                label=f"{side}: {len(values)} scored, mean {np.mean(values):.2f}")
    ax.set_xlabel("expected judge score")
    ax.set_ylabel("replies")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return png_img(fig)


def _pair_plot(judge: dict[str, Any] | None) -> str:
    pair = (judge or {}).get("pairwise")
    if pair is None:
        return NOT_MEASURED
    labels = ["wins", "ties", "losses"]
    counts = [pair[label] for label in labels]
    if not any(counts):
        return f"<p class='bad'>No pair was judged ({pair.get('errors', 0)} errors).</p>"
    fig = figure(figsize=(7, 2.2))
    ax = fig.subplots()
    ax.barh(labels, counts, color=["#4caf50", "#9e9e9e", "#c0504d"])
    for y, n in enumerate(counts):
        ax.text(n, y, f" {n}", va="center")
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"pairs (model vs baseline, {pair['pairs']} judged in both orders)")
    low, high = pair.get("ci95") or (None, None)
    ax.set_title(f"win rate {_fmt(pair['win_rate'])} [{_fmt(low)}, {_fmt(high)}], "
                 f"consistency {_fmt(pair.get('consistency'), '.2f')}", fontsize=10)
    return png_img(fig)


def _ppl_plot(perplexity: dict[str, Any] | None) -> str:
    measured = [side for side in SIDES if (perplexity or {}).get(side)]
    if not measured:
        return NOT_MEASURED
    sources = sorted({source for side in measured
                      for source in perplexity[side].get("by_source") or {}})

    def value(side: str, source: str) -> float:
        entry = (perplexity[side].get("by_source") or {}).get(source) or {}
        return math.nan if entry.get("ppl") is None else entry["ppl"]

    groups = sources + ["all"]
    x = np.arange(len(groups))
    width = 0.8 / len(measured)
    fig = figure(figsize=(max(5, 1.4 * len(groups) + 2), 3))
    ax = fig.subplots()
    for i, side in enumerate(measured):
        overall = perplexity[side].get("ppl")
        heights = [value(side, s) for s in sources] + [math.nan if overall is None else overall]
        bars = ax.bar(x + (i - (len(measured) - 1) / 2) * width, heights, width,
                      color=COLORS[side], label=side)
        ax.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.2f}" for h in heights],
                     fontsize=7)
    ax.set_xticks(x, groups)
    ax.set_ylabel("perplexity (lower is better)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return png_img(fig)


def _failure_plot(usability: dict[str, Any] | None) -> str:
    measured = [side for side in SIDES if (usability or {}).get(side)]
    if not measured:
        return NOT_MEASURED
    if not any(usability[side]["usable"] < usability[side]["rows"] for side in measured):
        return "<p>Every reply was usable.</p>"
    x = np.arange(len(FAILURE_KINDS))
    width = 0.8 / len(measured)
    fig = figure(figsize=(7, 3))
    ax = fig.subplots()
    for i, side in enumerate(measured):
        failures = usability[side].get("failures") or {}
        bars = ax.bar(x + (i - (len(measured) - 1) / 2) * width,
                      [failures.get(kind, 0) for kind in FAILURE_KINDS], width,
                      color=COLORS[side],
                      label=f"{side}: {usability[side]['usable']} of {usability[side]['rows']} "
                            f"usable")
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, FAILURE_KINDS)
    ax.set_ylabel("unusable replies (first failure)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return png_img(fig)


def _failure_examples(samples: list[dict[str, Any]]) -> str:
    """Up to EXAMPLES_PER_KIND of the model's unusable replies per failure kind."""
    picked: list[dict[str, Any]] = []
    for kind in FAILURE_KINDS:
        picked += [s for s in samples
                   if (s.get("model") or {}).get("failure") == kind][:EXAMPLES_PER_KIND]
    if not picked:
        return ""
    head = ("<th>failure</th><th class='text'>row</th><th class='text'>prompt</th>"
            "<th class='text'>output</th><th>finish reason</th>")
    body = "".join(
        f"<tr><td>{_esc(s['model']['failure'])}</td>"
        f"<td class='text'>{_esc(s.get('id'))}<br>{_esc(s.get('source'))}</td>"
        f"<td class='text'>{_pre(s.get('prompt'))}</td>"
        f"<td class='text'>{_pre(s['model'].get('output'))}"
        + (f"<p>{_esc(s['model']['error'])}</p>" if s["model"].get("error") else "")
        + f"</td><td>{_esc(s['model'].get('finish_reason'))}</td></tr>"
        for s in picked)
    return (f"<h3>Examples (up to {EXAMPLES_PER_KIND} per kind)</h3>"
            f"<table><tr>{head}</tr>{body}</table>")


def write_report(eval_dir: Path, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> Path:
    """Writes EVAL_DIR/report.html and returns its path."""
    eval_dir = Path(eval_dir)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>tunesmith evaluation</title><style>{STYLE}{_EXTRA_STYLE}</style></head><body>",
        *_header(metrics, samples),
        *_gate_section(metrics.get("gate")),
        "<h2>Metrics</h2>", html_table(_summary_rows(metrics), ("metric", "model", "baseline")),
        "<h2>Judge score distributions</h2>", _score_plot(metrics.get("judge")),
        "<h2>Win / tie / loss against the baseline</h2>", _pair_plot(metrics.get("judge")),
        "<h2>Perplexity by source</h2>", _ppl_plot(metrics.get("perplexity")),
        "<h2>Usability failures</h2>", _failure_plot(metrics.get("usability")),
        _failure_examples(samples),
        "</body></html>",
    ]
    path = eval_dir / REPORT_FILE
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
