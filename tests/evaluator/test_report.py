"""report.html: built from hand-made metrics and samples, then opened in headless Chromium.

The browser checks are what a reader would see: every plot decodes, the failing check's
reason is on the page, model text shows as text (an injected script never runs) and the page
loads nothing but itself.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from evaluator.gate import GateConfig, evaluate_gate
from evaluator.report import write_report
from evaluator.stats import win_rate_summary

CHROMIUM = "/usr/bin/chromium"
SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src="x.png" onerror="window.__xss=2">'
JAPANESE = "この記事のタイトルを考えてください"


def reply(output: str, finish: str = "stop", failure: str | None = None,
          score: float | None = 3.5, error: str | None = None) -> dict[str, Any]:
    return {"output": output, "finish_reason": finish, "tokens": len(output.split()) + 1,
            "stopped": finish == "stop", "empty": failure == "empty",
            "degenerate": failure == "degenerate", "usable": failure is None,
            "failure": failure, "error": error, "json_valid": None, "chrf": 40.0,
            "rouge_l": 0.4, "judge_score": score, "judge_mass": 0.8}


def sample_rows() -> list[dict[str, Any]]:
    """Twelve rows over two sources: model failures of every kind, markup and Japanese.

    The markup sits in rows the report shows (failures, prompts of failed rows, the model's
    name, an error message)."""
    model = [
        reply("夏の京都で食べたい和菓子ベスト10"),
        reply("京都の和菓子" * 100, finish="length", failure="no_stop", score=1.5),
        reply("」」」」" * 200, finish="length", failure="no_stop", score=1.0),
        reply("", failure="empty", score=None),
        reply("the the the the the the the the", failure="degenerate", score=1.2),
        reply("", finish="error", failure="error", score=None,
              error="500: upstream <b>exploded</b>"),
        reply("Paris.", score=4.2),
        reply("Paris is the capital of France.", score=4.8),
        reply("Use `pip install` to install it.", score=4.0),
        reply("It returns None.", score=3.8),
        reply("The loop runs 3 times.", score=4.4),
        reply(f"Sure! {SCRIPT} Here is", finish="length", failure="degenerate", score=2.0),
    ]
    winners = ["model", "baseline", "baseline", "baseline", "baseline", "tie", "model",
               "model", "model", "tie", "model", "baseline"]
    rows = []
    for i, (m, winner) in enumerate(zip(model, winners)):
        source = "titles_ja" if i < 6 else "faq_en"
        rows.append({
            "id": f"{source}-{i:05d}", "source": source, "tags": [],
            "prompt": (f"{JAPANESE} {IMG}" if source == "titles_ja"
                       else f"Question {i}: what does the code do?"),
            "reference": "reference answer",
            "model": m,
            "baseline": reply(f"baseline answer {i}", score=3.0 + (i % 3) / 2),
            "pair": {"winner": winner, "consistent": winner != "tie", "p_model": 0.6,
                     "error": None},
        })
    return rows


def full_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Every metric measured; usability fails the gate."""
    def usability(side: str) -> dict[str, Any]:
        replies = [s[side] for s in samples]
        failures = {kind: sum(r["failure"] == kind for r in replies)
                    for kind in ("error", "no_stop", "empty", "degenerate")}
        usable = sum(r["usable"] for r in replies)
        return {"rate": usable / len(replies), "rows": len(replies), "usable": usable,
                "budget_tokens": 96, "failures": failures}

    def pointwise(side: str) -> dict[str, Any]:
        scores = [s[side]["judge_score"] for s in samples if s[side]["judge_score"] is not None]
        return {"mean": sum(scores) / len(scores), "scored": len(scores), "low_mass": 0,
                "errors": len(samples) - len(scores), "scores": scores}

    outcomes = [{"model": 1.0, "tie": 0.5, "baseline": 0.0}[s["pair"]["winner"]]
                for s in samples]
    pairwise = {**win_rate_summary(outcomes), "errors": 0,
                "consistency": sum(s["pair"]["consistent"] for s in samples) / len(samples)}
    ppl_model = {"ppl": 6.1, "mean_nll": 1.81, "tokens": 812, "rows": 12, "method": "local",
                 "by_source": {"titles_ja": {"ppl": 7.2, "tokens": 400, "rows": 6},
                               "faq_en": {"ppl": 5.1, "tokens": 412, "rows": 6}}}
    ppl_base = {"ppl": 5.9, "mean_nll": 1.77, "tokens": 812, "rows": 12, "method": "local",
                "by_source": {"titles_ja": {"ppl": 6.9, "tokens": 400, "rows": 6},
                              "faq_en": {"ppl": 5.0, "tokens": 412, "rows": 6}}}
    metrics = {
        "model": {"name": "merged <b>v2</b>", "path": "/runs/r1/merged",
                  "base_url": "http://127.0.0.1:8000/v1"},
        "baseline": {"name": "base", "path": "/models/base",
                     "base_url": "http://127.0.0.1:8001/v1"},
        "data": {"path": "/data/out", "split": "test", "rows": len(samples)},
        "perplexity": {"model": ppl_model, "baseline": ppl_base, "ratio": 6.1 / 5.9},
        "usability": {"model": usability("model"), "baseline": usability("baseline")},
        "json_validity": None,
        "reference": {"model": {"chrf": 41.2, "rouge_l": 0.37, "rows": 12},
                      "baseline": {"chrf": 38.0, "rouge_l": 0.33, "rows": 12}},
        "judge": {"engine": "transformers:/models/judge",
                  "pointwise": {"model": pointwise("model"), "baseline": pointwise("baseline")},
                  "pairwise": pairwise},
        "gate": None,
    }
    metrics["gate"] = evaluate_gate(metrics, GateConfig())
    return metrics


def usability_only_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """No baseline, no judge, no perplexity: only usability was measured."""
    metrics = full_metrics(samples)
    metrics.update(baseline=None, perplexity=None, reference=None, judge=None)
    metrics["usability"]["baseline"] = None
    metrics["gate"] = evaluate_gate(metrics, GateConfig())
    return metrics


def parsed_tags(page: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag of the page with its attributes, as a browser's tokenizer sees them."""
    tags = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append((tag, attrs))

    Collector().feed(page)
    return tags


def test_model_text_is_escaped_and_the_page_is_self_contained(tmp_path):
    samples = sample_rows()
    page = write_report(tmp_path, full_metrics(samples), samples).read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    assert 'onerror="' not in page
    assert "merged &lt;b&gt;v2&lt;/b&gt;" in page
    assert JAPANESE in page
    tags = parsed_tags(page)
    assert {tag for tag, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1",
                                        "h2", "h3", "p", "table", "tr", "th", "td", "pre", "br",
                                        "img"}
    links = [value for _, attrs in tags for name, value in attrs if name in ("src", "href")]
    assert len(links) == 4 and all(v.startswith("data:image/png;base64,") for v in links)
    # Outputs are cut to ~300 characters, saying how much was left out.
    assert "more chars]" in page
    assert "京都の和菓子" * 100 not in page


def test_sections_without_data_say_not_measured(tmp_path):
    samples = sample_rows()
    page = write_report(tmp_path, usability_only_metrics(samples), samples).read_text(
        encoding="utf-8")
    assert page.count("not measured") == 9  # 3 plots, 4 summary rows, 2 skipped gate reasons
    assert page.count("<img ") == 1


def test_degenerate_inputs_are_said_not_plotted(tmp_path):
    samples = [s for s in sample_rows() if s["model"]["usable"]]
    metrics = full_metrics(samples)
    metrics["gate"] = None
    metrics["judge"]["pairwise"] = {"wins": 0, "ties": 0, "losses": 0, "errors": 6, "pairs": 0,
                                    "consistency": None, "win_rate": None, "ci95": None}
    metrics["perplexity"].update(baseline=None, ratio=None)
    page = write_report(tmp_path, metrics, samples).read_text(encoding="utf-8")
    assert "gate not evaluated" in page
    assert "Every reply was usable." in page
    assert "No pair was judged (6 errors)." in page
    assert "Examples (up to" not in page
    assert page.count("<img ") == 2  # judge scores and PPL (model only)


def test_tool_call_accuracy_shows_for_both_sides_when_measured(tmp_path):
    samples = sample_rows()
    metrics = full_metrics(samples)
    assert "tool calls" not in write_report(tmp_path, metrics, samples).read_text()
    metrics["tool_calls"] = {
        "model": {"rate": 0.75, "calls": 4, "parsed": 4, "names": 4, "exact": 3,
                  "answer_rows": 8, "spurious": 1},
        "baseline": {"rate": 0.0, "calls": 4, "parsed": 1, "names": 0, "exact": 0,
                     "answer_rows": 8, "spurious": 0}}
    metrics["judge"]["pointwise"]["model"]["tool_call_rows"] = 4
    page = write_report(tmp_path, metrics, samples).read_text(encoding="utf-8")
    assert ("<td>tool-call turns of the data</td><td>0.750 (3 of 4 exact; 4 right "
            "names, 4 parseable)</td><td>0.000 (0 of 4 exact; 0 right names, 1 parseable)</td>"
            in page)
    assert "<td>calls where the row answers in text</td><td>1 of 8</td><td>0 of 8</td>" in page
    assert "4 tool-call rows not judged)" in page


# --- in the browser --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("TUNESMITH_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing and TUNESMITH_REQUIRE_BROWSER is set: install "
                        "Debian's chromium (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium to run this test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def path_uri(eval_dir: Path) -> str:
    return (eval_dir / "report.html").as_uri()


def open_report(browser, path: Path) -> tuple[Any, list[str]]:
    """The loaded page and every URL it requested."""
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    return page, requests


@pytest.mark.slow
def test_report_renders_in_chromium(browser, tmp_path):
    samples = sample_rows()
    metrics = full_metrics(samples)
    page, requests = open_report(browser, write_report(tmp_path, metrics, samples))
    try:
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        # judge scores, win/tie/loss, PPL by source, usability failures
        assert len(images) == 4
        assert all(complete and width > 0 for complete, width in images), images
        failing_rows = page.locator("tr.fail").all_inner_texts()
        failed = [c for c in metrics["gate"]["checks"] if c["status"] == "fail"]
        assert [c["name"] for c in failed] == ["usability", "win_rate"]
        assert len(failing_rows) == 2
        for check, row in zip(failed, failing_rows):
            assert check["reason"] in row
        assert "6 of 12 replies unusable" in failing_rows[0]
        assert "Gate FAILED" in page.inner_text("body")
        assert page.evaluate("window.__xss === undefined")
        text = page.inner_text("body")
        assert SCRIPT in text and IMG in text and JAPANESE in text
        assert requests == [path_uri(tmp_path)]
    finally:
        page.close()


@pytest.mark.slow
def test_usability_only_report_renders_in_chromium(browser, tmp_path):
    samples = sample_rows()
    page, requests = open_report(browser, write_report(
        tmp_path, usability_only_metrics(samples), samples))
    try:
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == 1 and images[0][0] and images[0][1] > 0
        text = page.inner_text("body")
        for heading in ("Judge score distributions", "Win / tie / loss against the baseline",
                        "Perplexity by source"):
            section = page.locator(f"h2:text-is('{heading}') + p").inner_text()
            assert section == "not measured"
        assert "no judge: win rate not measured" in text
        assert requests == [path_uri(tmp_path)]
    finally:
        page.close()
