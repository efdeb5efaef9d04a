"""A per-stage progress display (rows done, rows/s) and the per-stage figures of the manifest.

Ingest and clean stream into each other, so every batch reaching the driver says how far
both have got: all its rows passed ingest, those not rejected at ingest passed clean. The
later stages report their totals when they finish (`record`), and a stage whose stored
output is reused reports the figures it recorded then (`reuse`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


@dataclass
class StageStat:
    """Rows through one stage and how fast."""

    name: str
    rows: int = 0
    rejected: int = 0
    seconds: float = 0.0
    reused: bool = False  # read from a completed earlier run instead of computed

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float | int | str]:
        return {"name": self.name, "rows": self.rows, "rejected": self.rejected,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1),
                "reused": self.reused}


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{task.completed:>9,.0f} rows {rate:>9,.0f} rows/s "
                    f"{task.fields.get('rejected', 0):>7,} rejected")


@dataclass
class StageProgress:
    """Counts rows per stage from output batches and shows them live on a terminal."""

    stages: tuple[str, ...]
    expected_rows: int
    console: Console = field(default_factory=lambda: Console(stderr=True))
    enabled: bool = True
    log_every_s: float = 10.0  # without a terminal (CI, cluster job logs): one line this often

    def __post_init__(self) -> None:
        self.stats = {name: StageStat(name) for name in self.stages}
        self._start = time.perf_counter()
        self._progress = Progress(TextColumn("{task.description:<8}"), BarColumn(),
                                  _RateColumn(), TimeElapsedColumn(), console=self.console,
                                  disable=not (self.enabled and self.console.is_terminal))
        self._tasks = {name: self._progress.add_task(name, total=self.expected_rows or None,
                                                     rejected=0) for name in self.stages}
        self._log_lines = self.enabled and not self.console.is_terminal
        self._last_log = 0.0

    def __enter__(self) -> "StageProgress":
        self._start = time.perf_counter()
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, batch: pa.Table, stages: tuple[str, ...] = ("ingest", "clean")) -> None:
        """Accounts one batch to each of the streaming ``stages`` it passed through."""
        now = time.perf_counter() - self._start
        stage_of = batch.column("_stage")
        remaining = batch.num_rows
        for name in stages:
            stat = self.stats[name]
            dropped = pc.sum(pc.equal(stage_of, name)).as_py() or 0
            stat.rows += remaining
            stat.rejected += dropped
            stat.seconds = now
            remaining -= dropped
            self._progress.update(self._tasks[name], completed=stat.rows, rejected=stat.rejected)
        if self._log_lines and now - self._last_log >= self.log_every_s:
            self._last_log = now
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def working(self, generator: str, counts: dict[str, int]) -> None:
        """A generator's replies so far (`Counted.counts`), a line each time the synth stage
        asks (every `log_every_s`): replies are not the stage's rows, so the live row count
        waits for the stage's end."""
        from data_engine.engines.base import progress_line

        self.note(f"progress: synth {generator} {progress_line(counts)}")

    def record(self, name: str, rows: int, rejected: int, seconds: float,
               quiet: bool = False) -> None:
        """A finished non-streaming stage: rows in, rows it dropped, time taken."""
        stat = self.stats[name]
        stat.rows, stat.rejected, stat.seconds = rows, rejected, seconds
        self._progress.update(self._tasks[name], total=max(rows, 1), completed=rows,
                              rejected=rejected)
        if not quiet:
            self.note(f"{name}: {rows:,} rows, {rejected:,} dropped, {seconds:.1f} s")

    def reuse(self, name: str, snapshot: dict[str, dict]) -> None:
        """A stage whose stored output is reused: shows the figures it recorded."""
        for stage, figures in snapshot.items():
            self.record(stage, figures["rows"], figures["rejected"], figures["seconds"], quiet=True)
            self.stats[stage].reused = True
        self.note(f"{name}: up to date, reusing its stored output")

    def snapshot(self, names: tuple[str, ...]) -> dict[str, dict]:
        """The figures of ``names`` (stored with a stage, for `reuse`)."""
        return {n: {"rows": self.stats[n].rows, "rejected": self.stats[n].rejected,
                    "seconds": round(self.stats[n].seconds, 3)} for n in names}

    def rows_after(self, name: str) -> int:
        stat = self.stats[name]
        return stat.rows - stat.rejected

    def note(self, line: str) -> None:
        """A line above the live display (or in the log off a terminal)."""
        if self.enabled:
            self.console.print(line, highlight=False, soft_wrap=True)

    def line(self) -> str:
        """One log line: rows and rows/s of every stage so far."""
        return "progress: " + "; ".join(
            f"{s.name} {s.rows:,} rows {s.rows_per_s:,.0f} rows/s {s.rejected:,} rejected"
            for s in self.stats.values() if s.rows)

    def summary(self) -> Table:
        table = Table(title="stages", title_justify="left")
        for column in ("stage", "rows", "dropped", "seconds", "rows/s"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for stat in self.stats.values():
            table.add_row(stat.name + (" (reused)" if stat.reused else ""), f"{stat.rows:,}",
                          f"{stat.rejected:,}", f"{stat.seconds:.1f}", f"{stat.rows_per_s:,.0f}")
        return table
