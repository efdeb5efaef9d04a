"""Writes the output contract: split JSONL files, `hf/`, `rejected.jsonl`, and the counts.

`finalize_batch` applies the decisions of dedup, mix and split to stored rows on the
workers. Batches then arrive on the driver in output order; kept rows go to their split's
JSONL file and an Arrow stream that `hf/` is saved from (memory-mapped, so no split is held
in memory), rejected rows to `rejected.jsonl` with their file, line, reason and original
text.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import any_per_row, list_offsets, to_numpy_bool
from data_engine.dedup.stage import REASONS as DEDUP_REASONS
from data_engine.filters import REASONS as CLEAN_REASONS
from data_engine.pipeline.mix import REASON as MIX_REASON
from data_engine.schema import (JUDGE_FIELDS, NUM_TOKENS, PROVENANCE_FIELDS, ROW_SCHEMA,
                                SPLITS)
from data_engine.synth.craft import CRAFT_REASONS
from data_engine.synth.evol import EVOL_REASONS
from data_engine.synth.judge import LOW_SCORE as JUDGE_REASON
from data_engine.synth.self_instruct import SELF_INSTRUCT_REASONS

# Every reason a row can be dropped for, in pipeline order (synthesis, then the judge).
REASONS = tuple(dict.fromkeys(CLEAN_REASONS + EVOL_REASONS + SELF_INSTRUCT_REASONS
                              + CRAFT_REASONS + (JUDGE_REASON,) + DEDUP_REASONS
                              + (MIX_REASON,)))
EXAMPLES_PER_REASON = 3
OUTPUT_SCHEMA = pa.schema(list(ROW_SCHEMA) + [NUM_TOKENS] + PROVENANCE_FIELDS + JUDGE_FIELDS)
# Rejected rows sort after every kept row when the output follows the mix order.
_REJECTED_ORDER = 1 << 62


def chat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A kept row as users read it: null message fields dropped, tool_calls as JSON objects."""
    messages = []
    for m in row["messages"]:
        out = {"role": m["role"], "content": m["content"]}
        if m.get("reasoning_content") is not None:
            out["reasoning_content"] = m["reasoning_content"]
        if m.get("tool_calls"):
            try:
                out["tool_calls"] = json.loads(m["tool_calls"])
            except ValueError:
                out["tool_calls"] = m["tool_calls"]
        messages.append(out)
    out = {"id": row["id"], "messages": messages, "source": row["source"], "tags": row["tags"],
           "num_tokens": row["num_tokens"]}
    if row.get("group") is not None:
        out["group"] = row["group"]
    if row.get("origin") not in (None, "seed"):  # synthesized: where it came from
        out.update({k: row.get(k) for k in ("origin", "parent_id", "generator")})
    for name in ("judge_score", "judge_mass"):
        if row.get(name) is not None:
            out[name] = row[name]
    return out


def rejected_row(row: dict[str, Any]) -> dict[str, Any]:
    """A rejected row: why, where from, and the original row (or the raw line)."""
    out = {"id": row["id"], "reason": row["_reason"], "stage": row["_stage"],
           "source": {"file": row["_file"], "line": row["_line"]}}
    if row.get("_dup_of"):
        out["duplicate_of"] = row["_dup_of"]
    if row["_reason"] == "malformed_json":
        out["raw"] = row["_raw"]
    else:
        out["row"] = json.loads(row["_raw"])
    return out


def finalize_batch(batch: pa.Table, plan: Any) -> pa.Table:
    """Arrow batch function: stored rows -> output rows, every later stage's decision applied.

    ``plan`` (an object ref to a dict of arrays, see `run._export`): rows removed by dedup
    or mix with their reason, and the emissions of the kept rows (split, position in the
    output order, repeat number). A repeated row is emitted once per repeat, its id
    suffixed `#2`, `#3`, ...
    """
    import ray

    if isinstance(plan, ray.ObjectRef):
        plan = ray.get(plan)
    batch = _with_model_columns(batch, plan)
    idx = batch.column("_idx").to_numpy()
    removed = plan["removed_idx"]
    where = np.minimum(np.searchsorted(removed, idx), max(len(removed) - 1, 0))
    hit = np.zeros(len(idx), bool) if not len(removed) else \
        (removed[where] == idx) & to_numpy_bool(pc.is_null(batch.column("_reason")))
    rows_hit, mask = pa.array(where[hit], pa.int64()), pa.array(hit)

    def decided(values: Any, plan_values: pa.Array) -> pa.Array:
        """``values`` where no later stage removed the row, else that stage's value."""
        if isinstance(plan_values.type, pa.DictionaryType):
            plan_values = plan_values.dictionary_decode()
        return pc.replace_with_mask(values, mask, plan_values.take(rows_hit))

    reason = decided(batch.column("_reason").combine_chunks(), plan["removed_reason"])
    batch = batch.set_column(batch.schema.get_field_index("_reason"), "_reason", reason)
    batch = batch.set_column(batch.schema.get_field_index("_stage"), "_stage",
                             decided(batch.column("_stage").combine_chunks(),
                                     plan["removed_stage"]))
    batch = batch.append_column("_dup_of", decided(pa.nulls(len(idx), pa.string()),
                                                   plan["duplicate_of"]))
    kept = to_numpy_bool(pc.is_null(reason))
    first = np.searchsorted(plan["emit_idx"], idx, side="left")
    count = np.where(kept, np.searchsorted(plan["emit_idx"], idx, side="right") - first, 0)
    rows = np.repeat(np.arange(batch.num_rows), count)
    emits = np.repeat(first, count) + (np.arange(len(rows)) - np.repeat(np.cumsum(count) - count,
                                                                        count))
    out = batch.take(pa.array(rows, pa.int64()))
    copies = plan["emit_copy"][emits]
    if copies.any():
        ids, repeat = out.column("id").combine_chunks(), pa.array(copies > 0)
        numbered = pc.binary_join_element_wise(ids.filter(repeat), "#", pa.array(
            (copies[copies > 0] + 1).astype(str)), "")
        out = out.set_column(out.schema.get_field_index("id"), "id",
                             pc.replace_with_mask(ids, repeat, numbered))
    out = out.append_column("split", plan["emit_split"].take(pa.array(emits, pa.int64()))
                            .dictionary_decode())
    out = out.append_column("_order", pa.array(plan["emit_order"][emits], pa.int64()))
    out = out.append_column("_copy", pa.array(copies, pa.int64()))
    dropped = batch.filter(pa.array(~kept))
    dropped = dropped.append_column("split", pa.nulls(dropped.num_rows, pa.string()))
    dropped = dropped.append_column("_order", pa.array(_REJECTED_ORDER + dropped.column(
        "_idx").to_numpy(), pa.int64()))
    dropped = dropped.append_column("_copy", pa.array(np.zeros(dropped.num_rows, np.int64)))
    return pa.concat_tables([out, dropped])


def _with_model_columns(batch: pa.Table, plan: dict[str, Any]) -> pa.Table:
    """Every stored batch gets the provenance columns (input rows: origin "seed") and the
    judge's columns (its scores by `_idx`; null where it did not score)."""
    batch = _with_defaults(batch, PROVENANCE_FIELDS)
    judged = plan.get("judged_idx")
    idx = batch.column("_idx").to_numpy()
    for f in JUDGE_FIELDS:
        values = np.full(batch.num_rows, np.nan)
        if judged is not None and len(judged):
            where = np.minimum(np.searchsorted(judged, idx), len(judged) - 1)
            hit = judged[where] == idx
            values[hit] = plan[f.name][where[hit]]
        batch = batch.append_column(f, pa.array(values, f.type, mask=np.isnan(values)))
    return batch


def render_batch(batch: pa.Table) -> pa.Table:
    """Arrow batch function: adds `_jsonl`, each row's output line with its newline, so workers
    do the encoding and the driver only appends bytes.

    Kept rows of the common shape (text-only turns, no group, judge score or provenance)
    are encoded with Arrow string kernels, byte for byte what `json.dumps(chat_row(row),
    ensure_ascii=False)` writes; the others go through `chat_row` / `rejected_row`.
    """
    fast, lines = _plain_lines(batch)
    slow = np.flatnonzero(~fast)
    if len(slow):
        rows = batch.take(pa.array(slow, pa.int64())).to_pylist()
        encoded = pa.array([json.dumps(rejected_row(row) if row["_reason"] else chat_row(row),
                                       ensure_ascii=False) + "\n" for row in rows], pa.string())
        lines = pc.replace_with_mask(lines, pa.array(~fast), encoded)
    return batch.append_column("_jsonl", lines)


# What json.dumps(ensure_ascii=False) escapes in a string, the backslash first; it writes
# every other control character as \u00XX, which `_plain_lines` leaves to json.dumps.
_JSON_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"),
                 ("\t", "\\t"), ("\b", "\\b"), ("\f", "\\f"))
_OTHER_CONTROL = "[\\x00-\\x07\\x0b\\x0e-\\x1f]"


def _json_string(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (null: `null`)."""
    for old, new in _JSON_ESCAPES:
        values = pc.replace_substring(values, old, new)
    return pc.fill_null(pc.binary_join_element_wise('"', values, '"', ""), "null")


def _json_lists(items: pa.Array, offsets: np.ndarray) -> pa.Array:
    """Rows of JSON items (row i: items[offsets[i]:offsets[i + 1]]) as JSON arrays."""
    rows = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items)
    return pc.binary_join_element_wise("[", pc.binary_join(rows, ", "), "]", "")


def _plain_lines(batch: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """(which rows have the common shape, every row's line as if it had): see render_batch."""
    n = batch.num_rows
    messages, m_offsets = list_offsets(batch.column("messages"))
    tags, t_offsets = list_offsets(batch.column("tags"))
    role, content = messages.field("role"), messages.field("content")

    def control(values: Any) -> np.ndarray:
        return to_numpy_bool(pc.match_substring_regex(values, _OTHER_CONTROL))

    odd_turn = (to_numpy_bool(pc.is_valid(messages.field("reasoning_content")))
                | to_numpy_bool(pc.not_equal(messages.field("tool_calls"), ""))
                | control(role) | control(content))
    fast = (to_numpy_bool(pc.is_null(batch.column("_reason")))
            & ~any_per_row(odd_turn, m_offsets) & ~any_per_row(control(tags), t_offsets)
            & ~control(batch.column("id")) & ~control(batch.column("source")))
    for name in ("group", "judge_score", "judge_mass"):
        if name in batch.column_names:
            fast &= to_numpy_bool(pc.is_null(batch.column(name)))
    if "origin" in batch.column_names:
        fast &= ~to_numpy_bool(pc.not_equal(batch.column("origin"), "seed"))  # null: seed
    turns = pc.binary_join_element_wise('{"role": ', _json_string(role), ', "content": ',
                                        _json_string(content), "}", "")
    tokens = pc.fill_null(pc.cast(batch.column(NUM_TOKENS.name), pa.string()), "null")
    lines = pc.binary_join_element_wise(
        '{"id": ', _json_string(batch.column("id")),
        ', "messages": ', _json_lists(turns, m_offsets),
        ', "source": ', _json_string(batch.column("source")),
        ', "tags": ', _json_lists(_json_string(tags), t_offsets),
        ', "num_tokens": ', tokens, "}\n", "")
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks() if lines.num_chunks else pa.array([], pa.string())
    return fast if n else np.zeros(0, bool), lines


def _with_defaults(table: pa.Table, fields: Any) -> pa.Table:
    """``table`` with each of ``fields`` it lacks added: null, or "seed" for `origin`
    (rows no generator made are input rows)."""
    for f in fields:
        if f.name not in table.column_names:
            value = "seed" if f.name == "origin" else None
            table = table.append_column(f, pa.array([value] * table.num_rows, f.type))
    return table


def _counts(values: pa.Array | pa.ChunkedArray) -> dict[Any, int]:
    """How many times each value occurs."""
    found = pc.value_counts(values)
    return dict(zip(found.field("values").to_pylist(), found.field("counts").to_pylist()))


def _conform(table: pa.Table) -> pa.Table:
    """``table`` in OUTPUT_SCHEMA; columns no stage made (no synthesis, no judge) defaulted."""
    return _with_defaults(table, OUTPUT_SCHEMA).select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)


class DatasetWriter:
    """Streams batches into the output folder and keeps the counts the manifest needs."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.work_dir = out_dir / ".work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.input = 0
        self.repeats = 0
        self.rejected: Counter[str] = Counter({r: 0 for r in REASONS})
        self.splits: Counter[str] = Counter({s: 0 for s in SPLITS})
        self.sources: dict[str, Counter[str]] = defaultdict(Counter)
        self.tokens: dict[str, list[int]] = {s: [] for s in SPLITS}
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # binary: lines are written straight from Arrow's UTF-8 buffers
        self._split_files = {s: open(out_dir / f"{s}.jsonl", "wb") for s in SPLITS}
        self._rejected = open(out_dir / "rejected.jsonl", "wb")
        self._arrow = {s: pa.ipc.new_stream(str(self.work_dir / f"{s}.arrow"), OUTPUT_SCHEMA)
                       for s in SPLITS}

    def write(self, batch: pa.Table) -> None:
        """Appends a batch of finalized rows (`finalize_batch`) to the outputs and counts.

        Only the lines and, per split, the output columns are copied (a whole-batch filter
        would copy the raw text and messages of every row several times).
        """
        if "_jsonl" not in batch.column_names:
            batch = render_batch(batch)
        source = batch.column("source")
        if "_copy" in batch.column_names:  # resampled repeats are output rows, not input rows
            repeat = pc.greater(batch.column("_copy"), 0)
            for name, n in _counts(source.filter(repeat)).items():
                self.sources[name]["repeats"] += n
                self.repeats += n
            source_in = source.filter(pc.invert(repeat))
        else:
            source_in = source
        for name, n in _counts(source_in).items():
            self.sources[name]["input"] += n
            self.input += n
        kept_mask = pc.is_null(batch.column("_reason"))
        dropped_mask = pc.invert(kept_mask)
        dropped = batch.select(["source", "_stage", "_reason"]).filter(dropped_mask)
        if dropped.num_rows:
            lines = batch.column("_jsonl").filter(dropped_mask)
            self.rejected.update(_counts(dropped.column("_reason")))
            for row in dropped.group_by(["source", "_stage"]).aggregate(
                    [([], "count_all")]).to_pylist():
                self.sources[row["source"]][f"dropped_{row['_stage']}"] += row["count_all"]
            for i, reason in enumerate(dropped.column("_reason").to_pylist()):
                if len(self.examples[reason]) < EXAMPLES_PER_REASON:
                    self.examples[reason].append(json.loads(lines[i].as_py()))
            self._write_lines(self._rejected, lines)
        for name, n in _counts(source.filter(kept_mask)).items():
            self.sources[name]["kept"] += n
        output = batch.select([c for c in OUTPUT_SCHEMA.names if c in batch.column_names])
        for split in SPLITS:
            mask = pc.fill_null(pc.equal(batch.column("split"), split), False)
            part = output.filter(mask)
            if not part.num_rows:
                continue
            self._arrow[split].write_table(_conform(part))
            self.splits[split] += part.num_rows
            self.tokens[split] += part.column("num_tokens").to_pylist()
            self._write_lines(self._split_files[split], batch.column("_jsonl").filter(mask))

    @staticmethod
    def _write_lines(fh, lines: pa.ChunkedArray | pa.Array) -> None:
        """The lines (each ends with its newline), copied from the column's data buffers."""
        for chunk in lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]:
            if not len(chunk):
                continue
            wide = pa.types.is_large_string(chunk.type)
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64 if wide else np.int32)
            data = memoryview(chunk.buffers()[2])
            fh.write(data[offsets[chunk.offset]:offsets[chunk.offset + len(chunk)]])

    def source_flow(self) -> dict[str, dict[str, int]]:
        """Rows of each source through the stages: input, after clean, after dedup, kept
        (after mixing, repeats included)."""
        flow = {}
        for name, c in sorted(self.sources.items()):
            after_clean = (c["input"] - c["dropped_ingest"] - c["dropped_clean"]
                           - c["dropped_synth"])
            flow[name] = {"input": c["input"], "after_clean": after_clean,
                          "after_dedup": after_clean - c["dropped_judge"] - c["dropped_dedup"],
                          "repeats": c["repeats"], "kept": c["kept"]}
        return flow

    @property
    def kept(self) -> int:
        return sum(self.splits.values())

    def close(self) -> None:
        """Closes the files and saves `hf/` as a datasets DatasetDict."""
        for fh in [*self._split_files.values(), self._rejected]:
            fh.close()
        for writer in self._arrow.values():
            writer.close()
        import datasets  # import costs ~1 s: only at the end

        datasets.disable_progress_bars()
        dataset = datasets.DatasetDict({
            split: datasets.Dataset.from_file(str(self.work_dir / f"{split}.arrow"))
            for split in SPLITS})
        hf_dir = self.out_dir / "hf"
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        dataset.save_to_disk(str(hf_dir))
        del dataset  # release the memory maps before removing their files
        shutil.rmtree(self.work_dir, ignore_errors=True)
