"""The per-stage progress display: rows per stage from output batches, log lines off a TTY."""

from __future__ import annotations

import io

import pyarrow as pa
from rich.console import Console

from data_engine.progress import StageProgress


def test_stage_counts_and_log_lines_without_a_terminal():
    out = io.StringIO()
    progress = StageProgress(("ingest", "clean", "split"), expected_rows=6,
                             console=Console(file=out, force_terminal=False), log_every_s=0.0)
    batch = pa.table({"_stage": ["ingest", None, "clean", None, None, "clean"]})
    with progress:
        progress.update(batch)
    rows = {s.name: (s.rows, s.rejected) for s in progress.stats.values()}
    assert rows == {"ingest": (6, 1), "clean": (5, 2), "split": (3, 0)}
    assert "progress: ingest 6 rows" in out.getvalue()
    assert progress.stats["ingest"].to_dict()["rows"] == 6
