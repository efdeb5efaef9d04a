"""`tunesmith data run`: ingest -> clean -> [synth -> judge] -> dedup -> mix -> split ->
export, resumable.

Reads like a recipe: plan shards, then run each stage unless its output is already on disk
with the same key (see `stages.py`), then export the output contract, the manifest and the
report. Row data moves as Arrow tables through Ray tasks, one stored part each (one task
per input shard reads, cleans, signs and writes its rows); the stages after dedup decide on
small columns (`_idx`, `id`, `source`, `group`) and the export pass applies every decision
at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from data_engine.config import DataConfig
from data_engine.dedup.stage import REF_BASE, DedupInputs, run_dedup, sign_rows, signature_key
from data_engine.dedup.text import conversation_keys
from data_engine.errors import ConfigError, InputError, LeakError, OutputPlaceError
from data_engine.executor import RaySession, map_tasks, ray_session
from data_engine.filters.length import tokenizer_problem
from data_engine.pipeline.clean import clean_batch
from data_engine.pipeline.mix import REASON as MIX_REASON
from data_engine.pipeline.mix import mix
from data_engine.pipeline.split import assign_splits, leak_check
from data_engine.progress import StageProgress
from data_engine.readers.ingest import check_shapes, ingest_shards
from data_engine.readers.shards import Shard, check_inputs, file_sha256, plan_shards
from data_engine.schema import IDX, JUDGE_FIELDS, SPLITS
from data_engine.stages import StageOutput, StageStore, stage_key, write_table
from data_engine.writers.outputs import (OUTPUT_SCHEMA, REJECTED_FILE, SPLIT_FILES,
                                         DatasetWriter, finalize_batch, partial_name,
                                         render_batch)
from data_engine.writers.report import write_report

STAGES = ("ingest", "clean", "synth", "judge", "dedup", "mix", "split", "export")
_VERSIONED = ("tunesmith", "ray", "pyarrow", "datasets", "ftfy", "py3langid", "transformers",
              "rensa")


@dataclass
class RunResult:
    """Where a run's outputs are and what its manifest says."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / "manifest.json"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"


def run(config: DataConfig, out_dir: Path, console: Console | None = None,
        progress: bool = True) -> RunResult:
    """Runs the data engine over ``config.inputs`` into ``out_dir``, resuming where it can."""
    if not config.inputs:
        raise ConfigError(["inputs: give at least one --input or an `inputs:` entry"])
    console = console or Console(stderr=True)
    out_dir = Path(out_dir).resolve()
    started = time.perf_counter()
    # Planning reads and hashes every input file (~2 s a GB): it runs while Ray starts,
    # unless a finished run is there, which it may show to be up to date (no Ray needed).
    check_inputs(config.inputs)  # fail before Ray starts
    check_inputs(config.dedup.reference.inputs, "dedup.reference.inputs")
    check_shapes(config.inputs)  # a wrong `columns:` would reject every row and go on
    check_shapes(config.dedup.reference.inputs, "dedup.reference.inputs")
    check_out(out_dir, config)
    with _holding(out_dir):
        return _run(config, out_dir, console, progress, started)


def _run(config: DataConfig, out_dir: Path, console: Console, progress: bool,
         started: float) -> RunResult:
    problem = tokenizer_problem(config.clean.length.tokenizer)
    if not problem and config.ray.address is None and (config.judge or config.synth.enabled()):
        problem = config.engine.missing_model()  # the engine runs on this machine's Ray
    if problem:
        raise ConfigError([problem])
    pool = ThreadPoolExecutor(1, thread_name_prefix="plan")
    planned = pool.submit(_plan, config)
    pool.shutdown(wait=False)
    if (out_dir / "manifest.json").exists():
        finished = _finished_manifest(out_dir, planned.result().keys)
        if finished is not None:
            if progress:
                console.print(f"up to date: {out_dir} was written by this config from these "
                              "inputs")
            return RunResult(out_dir, finished)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # written last: marks a finished run
    for name in FINAL_OUTPUTS:  # an earlier run's: a run that fails must not leave them looking
        (out_dir / name).unlink(missing_ok=True)  # finished (training reads train.jsonl)
        (out_dir / partial_name(name)).unlink(missing_ok=True)  # a killed run's
    shutil.rmtree(out_dir / "hf", ignore_errors=True)
    with ray_session(config.ray, out_dir) as session:
        plan = planned.result()
        if not any(shard.rows for shard in plan.shards):
            raise InputError(", ".join(item.path for item in config.inputs),
                             "no rows to read (empty files)")
        tracker = StageProgress(tuple(s for s in STAGES
                                      if s in plan.keys or s in ("ingest", "export")),
                                expected_rows=sum(s.rows for s in plan.shards),
                                console=console, enabled=progress)
        with tracker:
            writer, rows, dedup, mixed, split = _stages(config, out_dir, plan, tracker,
                                                        session)
    try:  # while an embedded Ray shuts down
        with writer.closing():  # `hf/` is saved by a child process while the report is drawn
            manifest = _manifest(config, writer, plan.files, tracker, session.address, dedup,
                                 mixed, split, time.perf_counter() - started, rows)
            manifest["stage_keys"] = plan.keys
            write_report(out_dir / "report.html", manifest, writer.tokens, writer.examples)
        partial = out_dir / partial_name("manifest.json")
        partial.write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        writer.publish()
        partial.replace(out_dir / "manifest.json")
    finally:
        session.wait_stopped()
    if progress:
        console.print(tracker.summary())
    return RunResult(out_dir, manifest)


# The files of a finished run beside manifest.json and `hf/`.
FINAL_OUTPUTS = (*SPLIT_FILES.values(), REJECTED_FILE, "report.html")
LOCK_FILE = ".lock"


@contextmanager
def _holding(out_dir: Path) -> Iterator[None]:
    """Holds ``out_dir``'s lock while the block runs, or raises OutputPlaceError when
    another run holds it: two runs into one folder clear each other's stage parts, and the
    one that finishes would publish a dataset missing rows."""
    fh = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise OutputPlaceError(str(out_dir), f"another run is writing into it (pid "
                                   f"{holder}): wait for it to end, or choose another "
                                   "--out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def check_out(out_dir: Path, config: DataConfig) -> None:
    """Makes ``out_dir``, or raises OutputPlaceError (exit 2) when it cannot hold the outputs: a
    file, unwritable, or where the run's inputs are (an input named like an output would be
    replaced, and a folder input that is ``out_dir`` would read the outputs back)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPlaceError(str(out_dir), "exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPlaceError(str(out_dir), f"cannot be made: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputPlaceError(str(out_dir), "is not writable")
    written = FINAL_OUTPUTS + ("manifest.json", "hf")
    for item in config.inputs + config.dedup.reference.inputs:
        source = Path(item.path).resolve()
        if source == out_dir or (source.parent == out_dir and source.name in written):
            raise OutputPlaceError(str(out_dir), f"overlaps the input {item.path}: the run would "
                                   "overwrite it or read its own outputs back; choose another "
                                   "--out")
    for name in FINAL_OUTPUTS + (".stages", ".work"):
        kind = "folder" if name.startswith(".") else "file"
        path = out_dir / name
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise OutputPlaceError(str(path), f"is in the way (the run writes a {kind} there)")


@dataclass
class _Plan:
    """The input shards and files (with their digests), and each stage's key."""

    shards: list[Shard]
    files: list
    ref_shards: list[Shard]
    keys: dict[str, str]


def _plan(config: DataConfig) -> _Plan:
    shards, files = plan_shards(config.inputs, config.ray.shard_rows)
    ref_shards, ref_files = plan_shards(config.dedup.reference.inputs, config.ray.shard_rows)
    return _Plan(shards, files, ref_shards, _stage_keys(config, files, ref_files))


def _stages(config: DataConfig, out_dir: Path, plan: _Plan, tracker: StageProgress,
            session: RaySession) -> tuple:
    """Runs (or reuses) every stage and exports the outputs into an open DatasetWriter."""
    by_prompt = bool(plan.ref_shards) and config.dedup.reference.match == "prompt"
    context = _Context(config, StageStore(out_dir), plan.keys, tracker, session.read_args,
                       session.cpus, with_prompt=by_prompt)
    clean = context.stage("clean", lambda folder: _clean(context, plan.shards, folder))
    if not sum(pq.ParquetFile(f).metadata.num_rows for f in clean.files("rows")):
        raise InputError(", ".join(item.path for item in config.inputs),
                         "no rows to read (blank lines only)")
    rows = _Rows([clean])
    if "synth" in plan.keys:
        rows.parts.append(context.stage("synth", lambda folder: _synth(context, clean, folder)))
    if "judge" in plan.keys:
        rows.judge = context.stage("judge", lambda folder: _judge(context, rows, folder))
    context.close_worker()
    dedup = context.stage("dedup", lambda folder: _dedup(context, rows, plan.ref_shards,
                                                           folder))
    mixed = context.stage("mix", lambda folder: _mix(context, rows, dedup, folder))
    split = context.stage("split", lambda folder: _split(context, rows, dedup, mixed, folder))
    writer = DatasetWriter(out_dir)  # only once Ray is up: a failed connect writes nothing
    _export(context, rows, dedup, mixed, split, writer)
    return writer, rows, dedup, mixed, split


def _stage_keys(config: DataConfig, files: list, ref_files: list) -> dict[str, str]:
    """Each stage's key: its own config and its input's key (the clean stage: the files)."""
    c = config.to_dict()
    keys = {"clean": stage_key("clean", {
        "inputs": c["inputs"], "files": [(f.path, f.sha256) for f in files],
        "clean": c["clean"], "shard_rows": config.ray.shard_rows,
        "group_column": config.split.group_column}, None)}
    upstream = keys["clean"]
    if config.synth.enabled():
        craft = config.synth.craft
        paths = [craft.fewshots, *craft.corpus] if craft else []
        digests = [(p, file_sha256(p)) for p in paths if Path(p).is_file()]
        keys["synth"] = upstream = stage_key("synth", {
            "engine": c["engine"], "synth": c["synth"], "seed": config.seed,
            "clean": c["clean"], "files": digests}, upstream)
    if config.judge is not None:
        keys["judge"] = upstream = stage_key("judge", {"engine": c["engine"],
                                                       "judge": c["judge"]}, upstream)
    keys["dedup"] = stage_key("dedup", {"dedup": c["dedup"], "reference_files": [
        (f.path, f.sha256) for f in ref_files]}, upstream)
    keys["mix"] = stage_key("mix", {"mix": c["mix"], "seed": config.seed}, keys["dedup"])
    keys["split"] = stage_key("split", {"split": c["split"], "seed": config.seed}, keys["mix"])
    return keys


def _finished_manifest(out_dir: Path, keys: dict[str, str]) -> dict[str, Any] | None:
    """The manifest of a finished run of the same stages over the same inputs, if any."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if manifest.get("stage_keys") != keys:
        return None
    outputs = [out_dir / name for name in manifest.get("outputs", {}).values()]
    return manifest if all(p.exists() for p in outputs) else None


@dataclass
class _Context:
    config: DataConfig
    store: StageStore
    keys: dict[str, str]
    tracker: StageProgress
    read_args: dict[str, Any]
    cpus: int
    with_prompt: bool  # dedup also signs the user turns (to match a reference set by prompt)

    def stage(self, name: str, body: Any) -> StageOutput:
        """The stage's stored output when its key matches, else runs ``body`` and stores it."""
        done = self.store.completed(name, self.keys[name])
        if done is not None:
            self.tracker.reuse(name, done.meta.get("progress", {}))
            return done
        folder = self.store.begin(name)
        meta = body(folder)
        return self.store.commit(name, self.keys[name], meta)

    def log(self, line: str) -> None:
        self.tracker.note(line)

    def worker(self) -> Any:
        """The Ray actor holding the engine, started on first use."""
        if getattr(self, "_worker", None) is None:
            from data_engine.synth.stage import start_worker

            self._worker = start_worker(self.config.engine)
        return self._worker

    def close_worker(self) -> None:
        """Frees the model (and its GPU) once the model stages are done."""
        worker = getattr(self, "_worker", None)
        if worker is not None:
            import ray

            ray.kill(worker)
            self._worker = None


@dataclass
class _Rows:
    """Where the stored rows are: the clean stage's parts, then the synth stage's, and the
    judge's scores (rows it dropped are out of dedup and everything after)."""

    parts: list[StageOutput]
    judge: StageOutput | None = None
    # `kept`'s table per dedup output: the mix and split stages both need it.
    _kept: dict[int, pa.Table] = field(default_factory=dict, repr=False)

    def files(self) -> list[str]:
        return [f for part in self.parts for f in part.files("rows")]

    def read(self, columns: list[str]) -> pa.Table:
        """``columns`` of every stored row; a column only synthesized rows have (`origin`)
        is null for the others."""
        tables = []
        for f in self.files():
            part = pq.ParquetFile(f)  # one open for the schema and the read
            present = [c for c in columns if c in part.schema_arrow.names]
            tables.append(part.read(columns=present))
        if not tables:
            return self.parts[0].read("rows", columns)
        return pa.concat_tables(tables, promote_options="default").select(columns)

    def kept(self, dedup: StageOutput) -> pa.Table:
        """`_idx`, `id`, `source`, `group` of the rows that passed clean, the judge and
        dedup, by `_idx`."""
        if id(dedup) not in self._kept:
            rows = self.read(["_idx", "id", "source", "group", "_reason"])
            rows = rows.filter(pc.is_null(rows.column("_reason")))
            decisions = dedup.read("decisions", ["_idx", "_reason"])
            dropped = decisions.filter(pc.is_valid(decisions.column("_reason"))).column("_idx")
            dropped = pa.concat_arrays([dropped.combine_chunks().cast(pa.int64()),
                                        pa.array(self.judged_out(), pa.int64())])
            self._kept[id(dedup)] = rows.filter(
                pc.invert(pc.is_in(rows.column("_idx"), dropped))).drop(["_reason"])
        return self._kept[id(dedup)]

    def judged_out(self) -> np.ndarray:
        """`_idx` of the rows the judge dropped, sorted."""
        if self.judge is None:
            return np.zeros(0, np.int64)
        scores = self.judge.read("scores", ["_idx", "_reason"])
        return np.sort(scores.filter(pc.is_valid(scores.column("_reason")))
                       .column("_idx").to_numpy())


def _clean(ctx: _Context, shards: list[Shard], folder: Path) -> dict[str, Any]:
    """Ingest + clean, a Ray task per shard; every row (kept or not) is stored with its
    `_idx`, and the kept rows' dedup signatures are stored beside them."""
    signing = (ctx.config.dedup, ctx.with_prompt)
    rows = [str(folder / f"rows-{number:05d}.parquet") for number in range(len(shards))]
    calls = [(shard.to_dict(), ctx.config.inputs, ctx.config.split.group_column,
              ctx.config.clean, path, _signatures_of(path), signing)
             for shard, path in zip(shards, rows)]
    for stages in map_tasks(clean_part, calls, ctx.read_args):
        ctx.tracker.update(stages)
    return {"next_idx": shards[-1].base + shards[-1].rows if shards else 0,
            "signatures": signature_key(*signing),
            "progress": ctx.tracker.snapshot(("ingest", "clean"))}


def _signatures_of(rows_path: str) -> str:
    """Where the clean stage stores the signatures of a rows part: beside it."""
    path = Path(rows_path)
    return str(path.with_name(path.name.replace("rows-", "signatures-", 1)))


# Dictionary-encoded in stored rows parts: Parquet tries a dictionary for every column until
# it outgrows a page, which for unique texts (`_raw`, messages) is wasted work (write
# 16 -> 10 us a row, same size).
_FEW_VALUES = ["source", "tags", "group", "_file", "_reason", "_stage"]


def clean_part(shard: dict[str, Any], inputs: list, group_column: str, config: Any,
               rows_path: str, sig_path: str, signing: tuple) -> pa.Table:
    """Ray task: one shard read, cleaned and stored with its signatures; returns the rows'
    `_stage` column (what the progress display counts)."""
    table = ingest_shards(pa.Table.from_pylist([shard]), inputs, group_column)
    table = clean_batch(table, config)
    idx = shard["base"] + (table.column("_line").to_numpy() - shard["first_line"])
    table = table.append_column(IDX, pa.array(idx, pa.int64()))
    if table.num_rows:
        pq.write_table(table, rows_path, compression="lz4", use_dictionary=_FEW_VALUES)
        sign_rows(table, Path(sig_path), *signing)
    return table.select(["_stage"])


def _synth(ctx: _Context, clean: StageOutput, folder: Path) -> dict[str, Any]:
    from data_engine.synth.stage import run_synth, seed_rows

    started = time.perf_counter()
    seeds = seed_rows(clean.read("rows", ["id", "messages", "source", "tags", "tools",
                                          "_reason"]))
    facts = run_synth(ctx.worker(), ctx.config, seeds, clean.meta["next_idx"], folder, ctx.log,
                      on_progress=ctx.tracker.working, poll_s=ctx.tracker.log_every_s)
    dropped = sum(sum(g["eliminated"].values()) for g in facts["generators"].values())
    ctx.tracker.record("synth", facts["rows"], dropped, time.perf_counter() - started)
    return {**facts, "progress": ctx.tracker.snapshot(("synth",))}


def _judge(ctx: _Context, rows: _Rows, folder: Path) -> dict[str, Any]:
    from data_engine.synth.stage import run_judge

    started = time.perf_counter()
    table = rows.read(["_idx", "messages", "origin", "_reason"]) if len(rows.parts) > 1 else \
        rows.read(["_idx", "messages", "_reason"])
    table = table.filter(pc.is_null(table.column("_reason"))).drop(["_reason"])
    if "origin" not in table.column_names:
        table = table.append_column("origin", pa.nulls(table.num_rows, pa.string()))
    facts = run_judge(ctx.worker(), table, ctx.config.judge, folder,
                      on_part=lambda part: ctx.tracker.update(part, ("judge",)))
    ctx.tracker.record("judge", facts["judged"], facts["dropped"],
                       time.perf_counter() - started)
    ctx.log(f"judge: {facts['scored']} of {facts['judged']} rows scored, mean "
            f"{facts['mean_score']}, {facts['flagged']} flagged, {facts['dropped']} dropped")
    return {**facts, "progress": ctx.tracker.snapshot(("judge",))}


def _dedup(ctx: _Context, rows: _Rows, ref_shards: list, folder: Path) -> dict[str, Any]:
    reference = _reference_rows(ctx, ref_shards) if ref_shards else None
    started = time.perf_counter()
    excluded = rows.judged_out()
    kept = (ctx.tracker.rows_after("clean") - len(excluded)
            + (ctx.tracker.rows_after("synth") if len(rows.parts) > 1 else 0))
    clean = rows.parts[0]
    signed = {}
    if clean.meta.get("signatures") == signature_key(ctx.config.dedup, ctx.with_prompt):
        signed = {f: _signatures_of(f) for f in clean.files("rows")}
    facts = run_dedup(DedupInputs(rows.files(), reference, ctx.read_args, excluded, signed),
                      ctx.config.dedup, ctx.config.clean, folder, ctx.cpus, ctx.log)
    removed = sum(facts["removed"].values())
    ctx.tracker.record("dedup", kept, removed, time.perf_counter() - started)
    return {**facts, "progress": ctx.tracker.snapshot(("dedup",))}


def _reference_rows(ctx: _Context, ref_shards: list) -> list[pa.Table]:
    """Reference sets are small (eval sets): read on the driver, numbered from REF_BASE."""
    tables, count = [], 0
    inputs = ctx.config.dedup.reference.inputs
    for shard in ref_shards:
        table = ingest_shards(pa.Table.from_pylist([shard.to_dict()]), inputs)
        tables.append(table.append_column(IDX, pa.array(
            np.arange(REF_BASE + count, REF_BASE + count + table.num_rows), pa.int64())))
        count += table.num_rows
    return tables


def _mix(ctx: _Context, stored: _Rows, dedup: StageOutput, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    rows = stored.kept(dedup)
    result = mix(rows.column("source").to_pylist(), ctx.config.mix, ctx.config.seed)
    idx = rows.column("_idx").to_numpy()
    write_table(folder, "emissions", pa.table({
        "_idx": idx[result.rows], "copy": result.copy,
        "_order": np.arange(len(result.rows), dtype=np.int64)}))
    write_table(folder, "surplus", pa.table({"_idx": idx[result.surplus]}))
    ctx.tracker.record("mix", rows.num_rows, len(result.surplus), time.perf_counter() - started)
    return {**result.facts, "progress": ctx.tracker.snapshot(("mix",))}


def _split(ctx: _Context, stored: _Rows, dedup: StageOutput, mixed: StageOutput,
           folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    emissions = mixed.read("emissions", ["_idx"]).column("_idx").to_numpy()
    idx, weight = np.unique(emissions, return_counts=True)
    rows = stored.kept(dedup)
    rows = rows.take(np.searchsorted(rows.column("_idx").to_numpy(), idx))
    links = [_same_value_links(rows.column("group").to_numpy(zero_copy_only=False))]
    decisions = dedup.read("decisions", ["_idx", "dup_cluster", "_reason"])
    members = decisions.filter(pc.and_(pc.is_null(decisions.column("_reason")),
                                       pc.greater_equal(decisions.column("dup_cluster"), 0)))
    cluster = np.full(len(idx), -1, dtype=np.int64)
    where, found = _positions(idx, members.column("_idx").to_numpy())
    cluster[where[found]] = members.column("dup_cluster").to_numpy()[found]
    links.append(_same_value_links(np.where(cluster >= 0, cluster, None)))
    ids = rows.column("id").to_pylist()
    links.append(_same_value_links(np.array(ids, dtype=object)))
    links.append(_lineage_links(ctx, stored, idx, ids))
    result = assign_splits(ids, rows.column("source").to_pylist(), weight.astype(np.int64),
                           np.concatenate(links), ctx.config.split, ctx.config.seed)
    pairs = dedup.read("pairs")
    leaks = leak_check(pairs.column("a").to_numpy(), pairs.column("b").to_numpy(),
                       pairs.column("jaccard").to_numpy(), ctx.config.dedup.threshold, idx,
                       result.split, ids)
    if leaks["leaks"]:
        raise LeakError(leaks["leaks"], leaks["examples"])
    warnings = result.warnings + _shared_ids(rows.column("id"))
    write_table(folder, "splits", pa.table({
        "_idx": idx, "split": pa.array([SPLITS[k] for k in result.split.tolist()], pa.string())}))
    ctx.tracker.record("split", int(weight.sum()), 0, time.perf_counter() - started)
    ctx.log(f"split: {result.facts['sizes']}; leak check: {leaks['pairs_in_output']:,} pairs "
            f"in the output, {leaks['leaks']} across splits")
    return {**result.facts, "warnings": warnings, "leak_check": leaks,
            "progress": ctx.tracker.snapshot(("split",))}


def _lineage_links(ctx: _Context, stored: _Rows, idx: np.ndarray, ids: list[str]
                   ) -> np.ndarray:
    """Pairs of positions (in ``idx``) of rows that must share a split beyond their group
    and duplicate cluster: a conversation and the same conversation cut short (a whole row
    that is a prefix of another, as ShareGPT dumps store one chat at several lengths, ~0.35
    apart in Jaccard, so no duplicate pair); a synthesized row and its parent (an
    evolution of a test prompt in train is the test prompt learnt); rows of one parent."""
    parts = list(map_tasks(lineage_part, [(f,) for f in stored.files()], ctx.read_args))
    return lineage_pairs(idx, ids, pa.concat_tables(parts) if parts else pa.table({}))


def lineage_pairs(idx: np.ndarray, ids: list[str], table: pa.Table) -> np.ndarray:
    """`_lineage_links` from the rows' `lineage_part` facts (``idx``: the split's rows, sorted;
    ``ids``: theirs)."""
    if not table.num_rows:
        return np.zeros((0, 2), np.int64)
    where, found = _positions(idx, table.column("_idx").to_numpy())
    table, where = table.filter(pa.array(found)), where[found]
    position = {key: pos for key, pos in zip(table.column("key").to_pylist(), where.tolist())}
    position_of_id = {row_id: pos for pos, row_id in enumerate(ids)}
    pairs = []
    for pos, prefixes, parent in zip(where.tolist(), table.column("prefixes").to_pylist(),
                                     table.column("parent_id").to_pylist()):
        pairs += [(pos, position[key]) for key in prefixes if key in position]
        if parent is not None and parent in position_of_id:
            pairs.append((pos, position_of_id[parent]))
    parents = np.full(len(idx), None, dtype=object)
    parents[where] = np.array(table.column("parent_id").to_pylist(), dtype=object)
    siblings = _same_value_links(parents)
    return np.concatenate([np.array(pairs, np.int64).reshape(-1, 2), siblings])


def lineage_part(path: str) -> pa.Table:
    """Ray task: the kept rows of one stored part with their exact key, their prefixes'
    keys (`conversation_keys`) and their `parent_id` (synthesized rows)."""
    file = pq.ParquetFile(path)
    columns = [c for c in ("_idx", "messages", "_reason", "parent_id")
               if c in file.schema_arrow.names]
    table = file.read(columns=columns)
    table = table.filter(pc.is_null(table.column("_reason")))
    keys, prefixes = conversation_keys(table.column("messages"))
    parent = (table.column("parent_id") if "parent_id" in table.column_names
              else pa.nulls(table.num_rows, pa.string()))
    return pa.table({"_idx": table.column("_idx"), "key": pa.array(keys, pa.int64()),
                     "prefixes": pa.array(prefixes, pa.list_(pa.int64())),
                     "parent_id": parent})


def _shared_ids(ids: pa.ChunkedArray) -> list[str]:
    """A warning when different kept rows share an id (identical rows were dropped as
    exact duplicates before this): ids name rows in `duplicate_of`, `parent_id` and the
    trainer's and evaluator's reports."""
    counts = pc.value_counts(ids.combine_chunks())
    shared = counts.filter(pc.greater(counts.field("counts"), 1))
    if not len(shared):
        return []
    examples = ", ".join(repr(v) for v in shared.field("values")[:3].to_pylist())
    rows = sum(shared.field("counts").to_pylist())
    return [f"{rows} kept rows share {len(shared)} id{'s' * (len(shared) != 1)} with another, "
            f"different row (e.g. {examples}): each id should name one row (reports, "
            "`duplicate_of` and `parent_id` name rows by id); rows sharing an id land in one "
            "split. Give the rows unique ids, or drop the `id` field to have them hashed"]


def _positions(sorted_keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``query`` sits in ``sorted_keys``, and whether it is there at all."""
    where = np.minimum(np.searchsorted(sorted_keys, query), max(len(sorted_keys) - 1, 0))
    found = sorted_keys[where] == query if len(sorted_keys) else np.zeros(len(query), bool)
    return where, found


def _same_value_links(values: np.ndarray) -> np.ndarray:
    """Pairs of positions holding the same non-null value (consecutive, so O(n))."""
    present = np.flatnonzero(np.array([v is not None for v in values], dtype=bool))
    if len(present) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = np.array([str(values[i]) for i in present.tolist()], dtype=object)
    order = np.argsort(keys, kind="stable")
    k, pos = keys[order], present[order]
    same = k[1:] == k[:-1]
    return np.stack([pos[:-1][same], pos[1:][same]], axis=1).astype(np.int64)


def _export(ctx: _Context, stored: _Rows, dedup: StageOutput, mixed: StageOutput,
            split: StageOutput, writer: DatasetWriter) -> None:
    """One pass over the stored rows applying every decision, streamed into the writers."""
    import ray

    started = time.perf_counter()
    decisions = dedup.read("decisions", ["_idx", "_reason", "duplicate_of"])
    decisions = decisions.filter(pc.is_valid(decisions.column("_reason")))
    surplus = mixed.read("surplus").column("_idx").to_numpy()
    emissions = mixed.read("emissions")
    splits = split.read("splits")
    by_idx = np.argsort(emissions.column("_idx").to_numpy(), kind="stable")
    emit_idx = emissions.column("_idx").to_numpy()[by_idx]
    split_code = np.searchsorted(splits.column("_idx").to_numpy(), emit_idx)
    split_of = pc.index_in(splits.column("split"), value_set=pa.array(SPLITS)).to_numpy(
        zero_copy_only=False).astype(np.int8)
    judged_out = stored.judged_out()
    removed_idx = np.concatenate([decisions.column("_idx").to_numpy(), surplus, judged_out])
    order = pa.array(np.argsort(removed_idx, kind="stable"))

    def text(values: list[str | None], dictionary: bool = True) -> pa.Array:
        """Arrow, not NumPy object arrays: every export task unpickles the plan."""
        array = pa.array(values, pa.string()).take(order)
        return array.dictionary_encode() if dictionary else array

    plan = {
        "removed_idx": removed_idx[order.to_numpy()],
        "removed_reason": text(decisions.column("_reason").to_pylist() + [MIX_REASON]
                               * len(surplus) + ["low_judge_score"] * len(judged_out)),
        "removed_stage": text(["dedup"] * decisions.num_rows + ["mix"] * len(surplus)
                              + ["judge"] * len(judged_out)),
        "duplicate_of": text(decisions.column("duplicate_of").to_pylist()
                             + [None] * (len(surplus) + len(judged_out)), dictionary=False),
        "emit_idx": emit_idx,
        "emit_copy": emissions.column("copy").to_numpy()[by_idx],
        "emit_order": emissions.column("_order").to_numpy()[by_idx],
        "emit_split": pa.DictionaryArray.from_arrays(
            pa.array(split_of[split_code] if len(split_of) else split_of, pa.int8()),
            pa.array(SPLITS)),
    }
    if stored.judge is not None:
        names = [f.name for f in JUDGE_FIELDS]
        scores = stored.judge.read("scores", ["_idx", *names])
        by = np.argsort(scores.column("_idx").to_numpy(), kind="stable")
        plan["judged_idx"] = scores.column("_idx").to_numpy()[by]
        for name in names:
            plan[name] = scores.column(name).to_numpy(zero_copy_only=False)[by]
    plan_ref = ray.put(plan)
    if ctx.config.mix.strategy == "none":  # input order: each part's rows, part after part
        batches = map_tasks(export_part, [(f, plan_ref) for f in stored.files()],
                            ctx.read_args, window=2 * ctx.cpus)
    else:  # mix order: a distributed sort by each row's position in it
        batches = _in_mix_order(ctx, stored.files(), plan_ref, writer.work_dir / "ordered")
    for batch in batches:
        writer.write(batch)
    ctx.tracker.record("export", writer.input, 0, time.perf_counter() - started)


# Output rows one merge task of the mixed export puts in order (and the driver receives at
# once): ~50 MB of 2 KB rows.
MERGE_ROWS = 20_000
# What `DatasetWriter.write` reads of an exported row.
_WRITTEN = list(dict.fromkeys(["split", "_copy", "_reason", "_stage", "_jsonl", "_order",
                               *OUTPUT_SCHEMA.names]))


def _in_mix_order(ctx: _Context, files: list[str], plan_ref: Any, folder: Path
                  ) -> Iterator[pa.Table]:
    """The exported rows in the mix order (`_order`), as a sort by ranges: each part's rows
    are finalized, rendered and stored in that order (`export_ordered_part`), then each range
    of MERGE_ROWS positions is merged from the parts' slices of it (`export_range`), ranges
    in order. 200k rows resampled: 2.7 s, where Ray Data's sort took 18.8 s."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"ordered-{number:05d}.arrow") for number in range(len(files))]
    orders = list(map_tasks(export_ordered_part, list(zip(files, [plan_ref] * len(files),
                                                           paths)), ctx.read_args))
    if not orders:
        return iter(())
    starts = np.sort(np.concatenate(orders))[::MERGE_ROWS]  # each range's first position
    bounds = [np.append(np.searchsorted(order, starts), len(order)) for order in orders]
    calls = [([(path, int(b[k]), int(b[k + 1])) for path, b in zip(paths, bounds)
               if b[k + 1] > b[k]],) for k in range(len(starts))]
    return map_tasks(export_range, calls, ctx.read_args, window=2 * ctx.cpus)


def export_part(path: str, plan: dict[str, Any]) -> pa.Table:
    """Ray task: one stored part with every decision applied and each row's output line,
    only the columns the writer reads (the raw input text, as large as the rows, stays)."""
    batch = render_batch(finalize_batch(pq.read_table(path), plan))
    return batch.select([c for c in _WRITTEN if c in batch.column_names])


def export_ordered_part(path: str, plan: dict[str, Any], out_path: str) -> np.ndarray:
    """Ray task: `export_part`'s rows, only what the writer reads, stored at ``out_path``
    (Arrow IPC, memory-mapped by `export_range`) in output order; returns their `_order`."""
    batch = export_part(path, plan)
    order = batch.column("_order").to_numpy()
    by = np.argsort(order, kind="stable")
    batch = batch.take(pa.array(by, pa.int64()))
    with pa.ipc.new_file(out_path, batch.schema) as sink:
        sink.write_table(batch)
    return order[by]


def export_range(slices: list[tuple[str, int, int]]) -> pa.Table:
    """Ray task: one range of the output order, merged from each part's rows in it
    (``slices``: the part's path, its first row in the range, the row after its last)."""
    table = pa.concat_tables(pa.ipc.open_file(pa.memory_map(path)).read_all().slice(lo, hi - lo)
                             for path, lo, hi in slices)
    return table.take(pa.array(np.argsort(table.column("_order").to_numpy(), kind="stable"),
                               pa.int64()))


def _manifest(config: DataConfig, writer: DatasetWriter, files: list, tracker: StageProgress,
              ray_address: str, dedup: StageOutput, mixed: StageOutput, split: StageOutput,
              seconds: float, stored: _Rows) -> dict[str, Any]:
    counts = {"input": writer.input, "kept": writer.kept, "repeats": writer.repeats,
              "rejected": dict(writer.rejected), "splits": dict(writer.splits),
              "tool_rows": dict(writer.tool_rows)}
    if counts["input"] != counts["kept"] - counts["repeats"] + sum(counts["rejected"].values()):
        raise AssertionError(f"row counts not conserved: {counts}")  # a bug, never user error
    strip = ("progress",)
    model_stages = {part.name: part for part in [*stored.parts[1:], stored.judge] if part}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": counts,
        "sources": writer.source_flow(),
        "inputs": [{"path": f.path, "kind": f.kind, "sha256": f.sha256,
                    "format": config.inputs[f.input_index].format} for f in files],
        "seed": config.seed,
        "config": config.to_dict(),
        "stages": [s.to_dict() for s in tracker.stats.values()],
        "dedup": {k: v for k, v in dedup.meta.items() if k not in strip},
        "mix": {k: v for k, v in mixed.meta.items() if k not in strip},
        "split": {k: v for k, v in split.meta.items() if k not in strip and k != "leak_check"},
        "leak_check": split.meta["leak_check"],
        **{name: {k: v for k, v in part.meta.items() if k not in strip}
           for name, part in model_stages.items()},
        "warnings": list(mixed.meta.get("warnings", [])) + list(split.meta.get("warnings", [])),
        "seconds": round(seconds, 3),
        "ray": {"address": ray_address},
        "outputs": {"train": "train.jsonl", "validation": "validation.jsonl",
                    "test": "test.jsonl", "hf": "hf", "rejected": "rejected.jsonl",
                    "report": "report.html", "stages": ".stages"},
        "versions": {"python": platform.python_version(),
                     **{name: _version(name) for name in _VERSIONED}},
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"

