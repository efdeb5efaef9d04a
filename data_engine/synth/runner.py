"""`tunesmith synth ...` and `tunesmith judge`: the model-powered stages on their own.

Rows are read with the data engine's readers (any supported format: messages, ShareGPT,
Alpaca, ...), unreadable rows are reported and skipped, and the outputs are JSONL: kept
rows to ``out`` and eliminated rows, each with its reason, to ``rejected`` (default: next
to ``out`` as `<stem>.rejected.jsonl`). Every output row carries `origin`, `parent_id` and
`generator`. The config is the YAML `data run` reads: its `engine:`, `synth:`, `judge:`,
`clean:` and `seed:` apply.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data_engine.config import DataConfig, InputConfig, load_config
from data_engine.config_loader import from_dict, validate
from data_engine.engines.base import Counted
from data_engine.errors import ConfigError
from data_engine.schema import PROVENANCE_FIELDS
from data_engine.synth.rows import shown_row

GENERATORS = ("evol", "craft", "self_instruct")
PROVENANCE = tuple(f.name for f in PROVENANCE_FIELDS)


def load_synth_config(path: Path | None, engine: dict[str, Any] | None = None) -> DataConfig:
    """The same YAML `data run` reads (its `inputs:` unused here), with engine flags over it."""
    config = load_config(path)
    for key, value in (engine or {}).items():
        if value is not None:
            setattr(config.engine, key, value)
    problems = validate(config.engine, "engine.")
    if problems:
        raise ConfigError(problems, str(path or "flags"))
    return config


def block(config: DataConfig, name: str) -> Any:
    """A generator's config block, or its defaults when the YAML leaves it null."""
    from data_engine.synth.craft import CraftConfig
    from data_engine.synth.evol import EvolConfig
    from data_engine.synth.judge import JudgeConfig
    from data_engine.synth.self_instruct import SelfInstructConfig

    if name == "judge":
        return config.judge or JudgeConfig()
    defaults = {"evol": EvolConfig, "craft": CraftConfig, "self_instruct": SelfInstructConfig}
    return getattr(config.synth, name) or defaults[name]()


def read_rows(path: Path, fmt: str = "auto") -> tuple[list[dict[str, Any]], Counter]:
    """Rows of ``path`` as {id, messages, source, tags, tools (when set)}; rows that cannot
    be read are counted by reason (malformed_json, unknown_format) and left out."""
    import pyarrow as pa

    from data_engine.readers.ingest import ingest_shards
    from data_engine.readers.shards import plan_shards

    inputs = [InputConfig(path=str(Path(path).resolve()), format=fmt)]
    shards, _ = plan_shards(inputs, 10_000)
    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for shard in shards:
        table = ingest_shards(pa.Table.from_pylist([shard.to_dict()]), inputs)
        for row in table.to_pylist():
            if row["_reason"]:
                skipped[row["_reason"]] += 1
                continue
            out = {"id": row["id"], "source": row["source"], "tags": row["tags"],
                   "messages": [{k: v for k, v in m.items() if v is not None}
                                for m in row["messages"]]}
            if row["tools"] is not None:
                out["tools"] = json.loads(row["tools"])
            if row.get("group") is not None:
                out["group"] = row["group"]
            out.update(_carried(row["_raw"]))
            rows.append(out)
    return rows, skipped


# Top-level keys a row's shape is read from: rewritten as `messages`, not carried.
_SHAPE_KEYS = {"messages", "conversations", "instruction", "input", "output", "history",
               "system", "prompt", "completion", "id", "source", "tags", "tools", "group"}


def _carried(raw: str | None) -> dict[str, Any]:
    """What a written row keeps of its input line beyond the row schema: `origin`,
    `parent_id`, `generator` (a row a synth command wrote) and the user's own fields
    (`category`, ...), which `tunesmith judge` dropped."""
    try:
        original = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(original, dict):
        return {}
    kept = {k: original[k] for k in PROVENANCE if original.get(k) is not None}
    kept.update({k: v for k, v in original.items()
                 if k not in _SHAPE_KEYS and k not in PROVENANCE and not k.startswith("_")
                 and not k.startswith("judge_")})  # a judge's verdict is written anew
    return kept


def judge_rows(rows: list[dict[str, Any]], config: DataConfig,
               engine_factory: Callable[[], Any], threshold: float | None = None,
               apply_to: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Pointwise judging of ``rows``: each gets `judge_score`, `judge_mass`, `judge_method`
    and `judge_error`; rows under the threshold get `_reason` low_judge_score. Rows are
    judged in parts of `JUDGE_PART_ROWS` (all at once with vLLM, see `run_judge`), and
    ``progress(done, total)`` hears of each."""
    import pyarrow as pa

    from data_engine.synth.judge import UNJUDGED_ORIGINS, Judge, judge_table
    from data_engine.synth.stage import JUDGE_PART_ROWS, judges_in_parts

    overrides = {k: v for k, v in (("threshold", threshold), ("apply_to", apply_to))
                 if v is not None}
    from dataclasses import asdict

    from data_engine.synth.judge import JudgeConfig

    judging = from_dict(JudgeConfig, {**asdict(block(config, "judge")), **overrides}, "judge")
    if judging.apply_to == "synthesized" and rows and all(
            r.get("origin") in UNJUDGED_ORIGINS for r in rows):
        raise ConfigError([f"judge.apply_to: synthesized, and none of the {len(rows)} rows is "
                           "synthesized (no origin other than seed); pass --all to judge them"])
    engine = engine_factory()  # only once there is something to judge (it loads a model)
    try:
        table = pa.table({
            "messages": [r["messages"] for r in rows],
            "origin": [r.get("origin") for r in rows],
            "_reason": pa.nulls(len(rows), pa.string()),
            "_stage": pa.nulls(len(rows), pa.string())})
        judge, whole = Judge(engine, judging), max(table.num_rows, 1)
        size = JUDGE_PART_ROWS if judges_in_parts(engine) else whole
        parts = []
        for start in range(0, whole, size):
            parts.append(judge_table(table.slice(start, size), judge))
            if progress is not None:
                progress(min(start + size, table.num_rows), table.num_rows)
        judged = pa.concat_tables(parts)
    finally:
        engine.close()
    names = [n for n in judged.column_names if n.startswith("judge_") or n == "_reason"]
    extra = zip(*(judged.column(n).to_pylist() for n in names))
    return [{**row, **dict(zip(names, values))} for row, values in zip(rows, extra)]


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as written: working fields dropped; an eliminated row's `reason` and `detail`."""
    out = shown_row(row)
    if row.get("_reason"):
        out["reason"] = row["_reason"]
    return out


@dataclass
class Written:
    out: Path
    rejected: Path
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)


def output_paths(out: Path, rejected: Path | None = None) -> tuple[Path, Path]:
    """The kept and rejected JSONL paths (``rejected`` defaults to `<stem>.rejected.jsonl`
    beside ``out``), checked before any model loads: neither a folder, not one file, and
    under a folder that is one or can be made. Raises OutputPlaceError."""
    from data_engine.errors import OutputPlaceError

    out = Path(out)
    rejected = Path(rejected) if rejected else out.with_name(f"{out.stem}.rejected.jsonl")
    for path, flag in ((out, "--out"), (rejected, "--rejected")):
        if path.is_dir():
            raise OutputPlaceError(str(path), "is a folder; name the JSONL file to write",
                                   flag)
        parent = next((p for p in path.resolve().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OutputPlaceError(str(path), f"{parent} is a file, not a folder", flag)
    if out.resolve() == rejected.resolve():
        raise OutputPlaceError(str(out), "--out and --rejected name the same file", "--rejected")
    return out, rejected


def write_rows(rows: list[dict[str, Any]], out: Path, rejected: Path | None = None) -> Written:
    """Kept rows to ``out``, rows with a reason to ``rejected``; both JSONL, atomically."""
    out, rejected = output_paths(out, rejected)
    out.parent.mkdir(parents=True, exist_ok=True)
    rejected.parent.mkdir(parents=True, exist_ok=True)
    written = Written(out, rejected)
    tmp_out, tmp_rej = out.with_name(out.name + ".partial"), rejected.with_name(
        rejected.name + ".partial")
    with tmp_out.open("w", encoding="utf-8") as keep, tmp_rej.open("w", encoding="utf-8") as rej:
        for row in rows:
            line = json.dumps(public_row(row), ensure_ascii=False) + "\n"
            if row.get("_reason"):
                written.reasons[row["_reason"]] += 1
                rej.write(line)
            else:
                written.kept += 1
                keep.write(line)
    tmp_out.replace(out)
    tmp_rej.replace(rejected)
    return written


def run_generator(name: str, config: DataConfig, engine_factory: Callable[[], Any],
                  seeds: list[dict[str, Any]] | None = None,
                  fewshots: list[dict[str, Any]] | None = None,
                  corpus: list[str] | None = None,
                  progress: Callable[[dict[str, int]], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Runs one generator with the engine ``engine_factory`` builds (after the config
    checked out, so a typo fails before a model loads). ``progress`` hears the replies
    made so far (`Counted.counts`) as they come."""
    from data_engine.synth.stage import generate

    if name not in GENERATORS:
        raise ConfigError([f"generator: {name!r} is not one of {', '.join(GENERATORS)}"])
    settings = block(config, name)
    if name == "craft":  # bad few-shots or a missing corpus fail before the model loads
        from data_engine.synth.craft import precheck

        precheck(fewshots or [], corpus or [], settings, config.clean)
    built = engine_factory()
    engine = Counted(built, progress)
    try:
        return generate(name, engine, settings, config.clean, config.seed, seeds or [],
                        fewshots=fewshots, corpus=corpus)
    finally:
        engine.detach()
        built.close()
