"""The synth and judge stages of `tunesmith data run`.

Model work runs in one Ray actor holding the engine (`ModelWorker`): on a cluster it lands
where the resources are (a GPU for the transformers engine when the cluster has one), and
the driver never loads a model. The vllm engine's own Ray Data processor starts its GPU
actors from there; the openai engine's requests go out from there.

synth: the kept rows after cleaning are the seeds; every generator's rows (kept and
eliminated) are stored in the row schema, numbered after the clean stage's rows, with
`origin`, `parent_id` and `generator`. They pass the clean filters (a filter's reason,
stage `clean`) and then the judge and dedup like any input row.

judge: kept rows (seed rows only with `apply_to: all`) get `judge_score`, `judge_mass`,
`judge_method` and `judge_error`; with a threshold, rows below it are dropped as
`low_judge_score` before dedup, so a low-scored row never wins a duplicate cluster.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.config import CleanConfig, DataConfig, EngineConfig
from data_engine.engines.base import Counted
from data_engine.schema import IDX, PROVENANCE_FIELDS
from data_engine.stages import write_table
from data_engine.synth.evol import uses_tools
from data_engine.synth.judge import JUDGE_FIELDS
from data_engine.synth.rows import cleaned_table

# Rows a judge call takes (but vLLM's, below): big enough for an engine's batching, small
# enough that progress moves every minute or so on a CPU.
JUDGE_PART_ROWS = 256
# The worker actor's concurrency group for `progress`, answered while a generator runs.
PROGRESS_GROUP = "progress"


def judges_in_parts(engine: Any) -> bool:
    """Whether the judge takes ``engine``'s rows `JUDGE_PART_ROWS` at a time: not vLLM's,
    whose Ray Data processor starts its actor pool (loading the model) on each call."""
    return engine.kind != "vllm"


class ModelWorker:
    """A Ray actor holding one engine for the synth and judge stages."""

    def __init__(self, config: EngineConfig):
        from data_engine.engines import build_engine

        self.engine = build_engine(config)
        self.counted: Counted | None = None

    def describe(self) -> str:
        return f"{self.engine.kind}:{self.engine.model}"

    def generate(self, name: str, block: Any, clean: CleanConfig, seed: int,
                 seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.counted = engine = Counted(self.engine)
        try:
            return generate(name, engine, block, clean, seed, seeds)
        finally:
            engine.detach()
            self.counted = None

    def progress(self) -> dict[str, int] | None:
        """The running generator's `Counted.counts` (None when none runs): called in
        the actor's `progress` concurrency group, so it answers while `generate` runs."""
        return None if self.counted is None else self.counted.counts()

    def judges_in_parts(self) -> bool:
        return judges_in_parts(self.engine)

    def judge(self, table: pa.Table, config: Any) -> pa.Table:
        from data_engine.synth.judge import Judge, judge_table

        return judge_table(table, Judge(self.engine, config))


def generate(name: str, engine: Any, block: Any, clean: CleanConfig, seed: int,
             seeds: list[dict[str, Any]], fewshots: list[dict[str, Any]] | None = None,
             corpus: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row generator ``name`` makes with ``engine``, kept and eliminated; CRAFT's
    few-shot rows and corpus files are the block's unless given."""
    if name == "evol":
        from data_engine.synth.evol import evolve

        return evolve(seeds, engine, block, clean, seed)
    if name == "self_instruct":
        from data_engine.synth.self_instruct import self_instruct

        return self_instruct(seeds, engine, block, clean, seed)
    from data_engine.synth.craft import craft, load_fewshots

    return craft(load_fewshots(block.fewshots) if fewshots is None else fewshots,
                 block.corpus if corpus is None else corpus, engine, block, clean, seed)


def start_worker(config: EngineConfig) -> Any:
    """The actor, asking for a GPU when the transformers engine may use one and the cluster
    has one (vLLM's processor requests its own). Its methods run one at a time, but for
    `progress`, which has a thread of its own."""
    import ray

    options: dict[str, Any] = {"num_cpus": 1}
    if (config.kind == "transformers" and config.device != "cpu"
            and ray.cluster_resources().get("GPU", 0) >= 1):
        options["num_gpus"] = 1
    actor = ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(ModelWorker)
    return actor.options(**options).remote(config)


def seed_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Kept rows as generator seeds: id, messages (null fields dropped), source, tags and
    tools (JSON text, or null)."""
    kept = table.filter(pc.is_null(table.column("_reason")))
    return [{"id": r["id"], "source": r["source"], "tags": r["tags"] or [], "tools": r["tools"],
             "messages": [{k: v for k, v in m.items() if v is not None} for m in r["messages"]]}
            for r in kept.select(["id", "messages", "source", "tags", "tools"]).to_pylist()]


def synth_table(rows: list[dict[str, Any]], name: str, first_idx: int, clean: CleanConfig
                ) -> pa.Table:
    """Generator rows as stored rows: the work schema after the clean filters (with token
    counts), `_idx` from ``first_idx``, then the provenance columns."""
    table = cleaned_table(rows, clean, f"synth:{name}")
    table = table.append_column(IDX, pa.array(np.arange(first_idx, first_idx + len(rows)),
                                              pa.int64()))
    for f in PROVENANCE_FIELDS:
        table = table.append_column(f, pa.array([r.get(f.name) for r in rows], f.type))
    return table


def run_synth(worker: Any, config: DataConfig, seeds: list[dict[str, Any]], first_idx: int,
              folder: Path, log: Any,
              on_progress: Callable[[str, dict[str, int]], None] | None = None,
              poll_s: float = 10.0) -> dict[str, Any]:
    """Runs each enabled generator through ``worker``; stores their rows as one part each.
    While one runs, ``on_progress(name, counts)`` hears its `Counted.counts` every
    ``poll_s``."""
    import ray

    with_tools = sum(map(uses_tools, seeds))
    facts: dict[str, Any] = {"seeds": len(seeds), "seeds_with_tools": with_tools,
                             "generators": {}}
    if with_tools and set(config.synth.enabled()) & {"evol", "self_instruct"}:
        log(f"synth: {with_tools} of {len(seeds)} seed rows offer tools or hold tool calls; "
            "evol and self_instruct leave them out (they write text replies)")
    made = 0
    for number, name in enumerate(config.synth.enabled()):
        block = getattr(config.synth, name)
        ref = worker.generate.remote(name, block, config.clean, config.seed, seeds)
        while on_progress is not None and not ray.wait([ref], timeout=poll_s)[0]:
            counts = ray.get(worker.progress.options(concurrency_group=PROGRESS_GROUP).remote())
            if counts is not None:
                on_progress(name, counts)
        rows = ray.get(ref)
        table = synth_table(rows, name, first_idx + made, config.clean)
        made += table.num_rows
        reasons = Counter(r for r in table.column("_reason").to_pylist() if r)
        facts["generators"][name] = {"made": table.num_rows,
                                     "kept": table.num_rows - sum(reasons.values()),
                                     "eliminated": dict(reasons.most_common())}
        if table.num_rows:
            write_table(folder, f"rows-{number:05d}", table)
        log(f"synth: {name} made {table.num_rows} rows, "
            f"{facts['generators'][name]['kept']} kept")
    facts["rows"] = made
    return facts


def run_judge(worker: Any, rows: pa.Table, config: Any, folder: Path,
              on_part: Callable[[pa.Table], None] | None = None) -> dict[str, Any]:
    """Judges ``rows`` (`_idx`, `messages`, `origin` of the kept rows); stores the scores
    of every judged row in `scores.parquet`, with `_reason` set for low scores. The rows go
    to the worker in parts of `JUDGE_PART_ROWS` (but for vLLM), all queued at once (the actor
    takes them one after another, never idle), and ``on_part`` sees each part as it comes
    back."""
    import ray

    table = rows.append_column("_reason", pa.nulls(rows.num_rows, pa.string()))
    table = table.append_column("_stage", pa.nulls(rows.num_rows, pa.string()))
    whole = max(table.num_rows, 1)
    size = JUDGE_PART_ROWS if ray.get(worker.judges_in_parts.remote()) else whole
    refs = [worker.judge.remote(table.slice(start, size), config)
            for start in range(0, whole, size)]
    parts = []
    for ref in refs:
        parts.append(ray.get(ref))
        if on_part is not None:
            on_part(parts[-1])
    judged = pa.concat_tables(parts)
    # Rows the judge scored or said why not (a tool-call reply); not those it did not take.
    judged = judged.filter(pc.or_(pc.is_valid(judged.column("judge_method")),
                                  pc.is_valid(judged.column("judge_error"))))
    write_table(folder, "scores", judged.select(
        [IDX.name] + list(JUDGE_FIELDS) + ["_reason"]))
    scores = [s for s in judged.column("judge_score").to_pylist() if s is not None]
    masses = [m for m in judged.column("judge_mass").to_pylist() if m is not None]
    return {"judged": judged.num_rows, "scored": len(scores),
            "mean_score": round(float(np.mean(scores)), 4) if scores else None,
            "score_histogram": score_histogram(scores),
            "mean_mass": round(float(np.mean(masses)), 4) if masses else None,
            "methods": dict(Counter(m for m in judged.column("judge_method").to_pylist()
                                    if m is not None)),
            "flagged": int(pc.sum(pc.is_valid(judged.column("judge_error"))).as_py() or 0),
            "dropped": int(pc.sum(pc.is_valid(judged.column("_reason"))).as_py() or 0)}


def score_histogram(scores: list[float]) -> dict[str, int]:
    """Expected scores counted in half-point buckets ("1.0" holds [1.0, 1.5)), for the
    report: a judge that cannot tell rows apart puts them all in one or two buckets."""
    counts = Counter(f"{np.floor(score * 2) / 2:.1f}" for score in scores)
    return dict(sorted(counts.items(), key=lambda item: float(item[0])))
