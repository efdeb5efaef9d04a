"""The per-stage progress display: streamed and recorded stages, reuse, log lines off a TTY."""

from __future__ import annotations

import io

import pyarrow as pa
from rich.console import Console

from data_engine.progress import StageProgress


def test_stage_counts_and_log_lines_without_a_terminal():
    out = io.StringIO()
    progress = StageProgress(("ingest", "clean", "dedup"), expected_rows=6,
                             console=Console(file=out, force_terminal=False), log_every_s=0.0)
    batch = pa.table({"_stage": ["ingest", None, "clean", None, None, "clean"]})
    with progress:
        progress.update(batch)
        progress.record("dedup", progress.rows_after("clean"), 1, 0.5)
    rows = {s.name: (s.rows, s.rejected) for s in progress.stats.values()}
    assert rows == {"ingest": (6, 1), "clean": (5, 2), "dedup": (3, 1)}
    assert "progress: ingest 6 rows" in out.getvalue()
    assert "dedup: 3 rows, 1 dropped" in out.getvalue()
    assert progress.stats["ingest"].to_dict()["rows"] == 6


def test_a_reused_stage_shows_the_figures_it_stored():
    first = StageProgress(("ingest", "clean"), expected_rows=2, enabled=False)
    first.update(pa.table({"_stage": ["clean", None]}))
    stored = first.snapshot(("ingest", "clean"))
    out = io.StringIO()
    again = StageProgress(("ingest", "clean"), expected_rows=2,
                          console=Console(file=out, force_terminal=False))
    again.reuse("clean", stored)
    assert again.stats["clean"].rejected == 1 and again.stats["clean"].reused
    assert "clean: up to date" in out.getvalue()


def test_the_final_progress_line_is_not_repeated(capsys):
    from tunesmith.cli import _progress_lines

    say = _progress_lines(every_s=0.0)  # every line is due
    say("self-instruct 4/4 replies (call 1)")
    say("self-instruct 4/4 replies (call 1)", final=True)  # already shown
    say("self-instruct 6/6 replies (call 2)", final=True)  # new counts: shown
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("progress:")]
    assert lines == ["progress: self-instruct 4/4 replies (call 1)",
                     "progress: self-instruct 6/6 replies (call 2)"]
