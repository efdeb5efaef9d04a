"""`report.html`: counts, reasons, sources through the stages, synthesis and the judge's
scores, duplicates, mixing, splits with token-length histograms and the leak check, on one
self-contained page.

Plots are matplotlib PNGs embedded as base64, so the file can be mailed or attached to a run.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px;max-height:8em;overflow:auto}
.bad{color:#b00020;font-weight:bold}
"""


def figure(**kwargs: Any) -> Any:
    """A matplotlib Figure outside pyplot: no GUI backend or global registry of figures to
    close, and its import is ~0.25 s lighter than pyplot's."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def png_img(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _reasons_plot(rejected: dict[str, int]) -> str:
    items = sorted(((r, n) for r, n in rejected.items() if n), key=lambda x: x[1])
    if not items:
        return "<p>No rows were rejected.</p>"
    fig = figure(figsize=(7, 0.35 * len(items) + 1))
    ax = fig.subplots()
    ax.barh([r for r, _ in items], [n for _, n in items], color="#c0504d")
    for y, (_, n) in enumerate(items):
        ax.text(n, y, f" {n}", va="center")
    ax.set_xlabel("rows rejected")
    return png_img(fig)


def _length_plot(tokens: dict[str, np.ndarray], max_tokens: int) -> str:
    present = {s: np.asarray(v) for s, v in tokens.items() if len(v)}
    if not present:
        return "<p>No kept rows.</p>"
    longest = max(int(v.max()) for v in present.values())
    fig = figure(figsize=(4 * len(present), 3))
    axes = fig.subplots(1, len(present), squeeze=False, sharex=True)
    for ax, (split, values) in zip(axes[0], present.items()):
        ax.hist(values, bins=min(40, max(5, len(np.unique(values)))), color="#4f81bd")
        if longest >= max_tokens / 2:  # the limit only helps where rows come near it
            ax.axvline(max_tokens, color="#c0504d", linestyle="--", label=f"max_tokens {max_tokens}")
            ax.legend(fontsize=8)
        ax.set_title(f"{split}: {len(values)} rows, median "
                     f"{np.partition(values, len(values) // 2)[len(values) // 2]}")
        ax.set_xlabel("tokens per conversation")
    return png_img(fig)


def _cluster_plot(sizes: dict[str, int]) -> str:
    if not sizes:
        return "<p>No duplicate clusters.</p>"
    items = sorted((int(k), v) for k, v in sizes.items())
    fig = figure(figsize=(6, 2.5))
    ax = fig.subplots()
    ax.bar([str(k) for k, _ in items], [v for _, v in items], color="#9bbb59")
    ax.set_xlabel("rows per cluster")
    ax.set_ylabel("clusters")
    return png_img(fig)


def _dedup_section(dedup: dict[str, Any]) -> list[str]:
    removed = dedup.get("removed", {})
    return [
        "<h2>Duplicates</h2>",
        html_table([("rows compared", dedup.get("rows", 0)),
                ("LSH candidate pairs", dedup.get("candidate_pairs", 0)),
                ("confirmed near pairs (exact Jaccard)", dedup.get("confirmed_near_pairs", 0)),
                ("exact pairs", dedup.get("exact_pairs", 0)),
                ("clusters", dedup.get("clusters", 0))]
               + [(f"dropped: {r}", n) for r, n in removed.items()]
               + ([("reference rows", dedup["reference_rows"])] if dedup.get("reference_rows")
                  else []), ("", "")),
        _cluster_plot(dedup.get("cluster_sizes", {})),
    ]


def _score_plot(histogram: dict[str, int]) -> str:
    if not histogram:
        return ""
    fig = figure(figsize=(6, 2.5))
    ax = fig.subplots()
    ax.bar(list(histogram), list(histogram.values()), color="#8064a2")
    ax.set_xlabel("expected judge score (half-point buckets)")
    ax.set_ylabel("rows")
    return png_img(fig)


def _synth_section(synth: dict[str, Any] | None, judge: dict[str, Any] | None) -> list[str]:
    """Rows each generator made and kept, eliminations by reason, and the judge's scores."""
    parts: list[str] = []
    if synth:
        rows = [(name, g["made"], g["kept"],
                 ", ".join(f"{r} {n}" for r, n in g["eliminated"].items()) or "-")
                for name, g in synth.get("generators", {}).items()]
        parts += [f"<h2>Synthesis (seeds drawn from {synth.get('seeds', 0)} kept rows)</h2>",
                  html_table(rows, ("generator", "made", "kept", "eliminated"))]
        if synth.get("seeds_with_tools"):
            parts.append(f"<p>{synth['seeds_with_tools']} of those rows offer tools or hold "
                         "tool calls: Evol-Instruct and Self-Instruct leave them out (they "
                         "write text replies, without calling tools).</p>")
    if judge:
        mass = judge.get("mean_mass")
        parts += ["<h2>Judge</h2>", html_table(
            [("rows judged", judge.get("judged", 0)), ("scored", judge.get("scored", 0)),
             ("mean expected score", judge.get("mean_score")),
             ("mean probability on the score tokens", "-" if mass is None else mass),
             ("flagged (judge_error, e.g. low mass)", judge.get("flagged", 0)),
             ("dropped (low_judge_score)", judge.get("dropped", 0))]
            + [(f"method: {m}", n) for m, n in judge.get("methods", {}).items()], ("", "")),
            _score_plot(judge.get("score_histogram", {}))]
        if judge.get("judged") and judge.get("flagged") == judge.get("judged"):
            parts.append("<p class='bad'>Every judged row is flagged: the judge put little "
                         "probability on the score tokens, so its scores say little. Use a "
                         "stronger judge model.</p>")
    return parts


def _mix_section(mix: dict[str, Any]) -> list[str]:
    rows = [(name, c["before"], c["after"], c["repeats"], f"{c['share']:.1%}")
            for name, c in mix.get("sources", {}).items()]
    return [f"<h2>Mixing: {html.escape(mix.get('strategy', 'none'))}</h2>",
            html_table(rows, ("source", "before", "after", "repeats", "share"))]


def _split_section(split: dict[str, Any], leak: dict[str, Any], warnings: list[str]) -> list[str]:
    sizes = split.get("sizes", {})
    by_source = split.get("by_source", {})
    rows = [(name, *(c.get(s, 0) for s in sizes)) for name, c in by_source.items()]
    rows.append(("all", *sizes.values()))
    verdict = ("<p>Leak check: passed. Of the {examined} candidate and exact pairs the dedup "
               "stage examined, {present} have both rows in the output ({near} of them at or "
               "above the Jaccard threshold, kept together by dedup settings); none spans two "
               "splits.</p>".format(examined=leak.get("pairs_examined", 0),
                                    present=leak.get("pairs_in_output", 0),
                                    near=leak.get("near_pairs_in_output", 0))
               if not leak.get("leaks") else
               f"<p class='bad'>Leak check: {leak['leaks']} pairs span splits.</p>")
    return (["<h2>Splits</h2>", html_table(rows, ("source", *sizes)), verdict]
            + [f"<p class='bad'>{html.escape(w)}</p>" for w in warnings])


def html_table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(path: Path, manifest: dict[str, Any], tokens: dict[str, np.ndarray],
                 examples: dict[str, list[dict[str, Any]]]) -> None:
    """Writes the HTML report for one run."""
    counts = manifest["counts"]
    rejected_total = sum(counts["rejected"].values())
    share = rejected_total / counts["input"] if counts["input"] else 0.0
    conserved = counts["input"] == counts["kept"] - counts.get("repeats", 0) + rejected_total
    tool_rows = counts.get("tool_rows") or {}
    tool_lines = [("kept rows offering tools", tool_rows.get("offer_tools", 0)),
                  ("kept rows with tool calls", tool_rows.get("call_tools", 0))
                  ] if any(tool_rows.values()) else []
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tunesmith data run</title>"
        f"<style>{STYLE}</style></head><body>",
        "<h1>tunesmith data run</h1>",
        f"<p>{html.escape(manifest['created'])} &middot; seed {manifest['seed']} &middot; "
        f"tunesmith {html.escape(manifest['versions']['tunesmith'])}</p>",
        "<h2>Counts</h2>",
        html_table([("input rows", counts["input"]), ("kept", counts["kept"]),
                ("of which resampled repeats", counts.get("repeats", 0)),
                ("rejected", f"{rejected_total} ({share:.1%})")]
               + [(f"split: {s}", n) for s, n in counts["splits"].items()] + tool_lines,
               ("", "rows")),
        "" if conserved else "<p class='bad'>Counts are not conserved: input != kept - repeats + rejected.</p>",
        "<h2>Rejection reasons</h2>", _reasons_plot(counts["rejected"]),
        "<h2>Sources through the stages</h2>",
        html_table([(s, c["input"], c["after_clean"], c["after_dedup"], c["repeats"], c["kept"])
                for s, c in manifest["sources"].items()],
               ("source", "input", "after clean", "after dedup", "repeats", "kept")),
        *_synth_section(manifest.get("synth"), manifest.get("judge")),
        *_dedup_section(manifest.get("dedup", {})),
        *_mix_section(manifest.get("mix", {})),
        *_split_section(manifest.get("split", {}), manifest.get("leak_check", {}),
                        manifest.get("warnings", [])),
        "<h2>Token lengths per split</h2>",
        _length_plot(tokens, manifest["config"]["clean"]["length"]["max_tokens"]),
        "<h2>Stages</h2>",
        html_table([(s["name"] + (" (reused)" if s.get("reused") else ""), s["rows"], s["rejected"],
                 s["seconds"], s["rows_per_s"]) for s in manifest["stages"]],
               ("stage", "rows", "dropped", "seconds", "rows/s")),
        "<h2>Examples of rejected rows</h2>",
    ]
    for reason, records in sorted(examples.items()):
        parts.append(f"<h3>{html.escape(reason)} ({counts['rejected'].get(reason, 0)})</h3>")
        for record in records:
            where = f"{record['source']['file']}:{record['source']['line']}"
            text = record.get("raw") or json.dumps(record.get("row"), ensure_ascii=False)
            parts.append(f"<p>{html.escape(where)}</p><pre>{html.escape(text[:1500])}</pre>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
