"""Writes the output contract: split JSONL files, `hf/`, `rejected.jsonl`, and the counts.

`finalize_batch` applies the decisions of dedup, mix and split to stored rows on the
workers. Batches then arrive on the driver in output order; kept rows go to their split's
JSONL file and an Arrow stream that `hf/` is saved from (memory-mapped, so no split is held
in memory), rejected rows to `rejected.jsonl` with their file, line, reason and original
text (the row's own JSON text where it can be embedded as it is, see `rejected_line`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import any_per_row, list_offsets, one_array, string_buffers, \
    to_numpy_bool
from data_engine.dedup.stage import REASONS as DEDUP_REASONS
from data_engine.filters import REASONS as CLEAN_REASONS
from data_engine.pipeline.mix import REASON as MIX_REASON
from data_engine.readers.formats import decoded_calls
from data_engine.schema import (JUDGE_FIELDS, NUM_TOKENS, PROVENANCE_FIELDS, ROW_SCHEMA,
                                SPLITS)
from data_engine.synth.craft import CRAFT_REASONS
from data_engine.synth.evol import EVOL_REASONS
from data_engine.synth.judge import LOW_SCORE as JUDGE_REASON
from data_engine.synth.self_instruct import SELF_INSTRUCT_REASONS
from data_engine.writers.hf import HfSave

# Every reason a row can be dropped for, in pipeline order (synthesis, then the judge).
REASONS = tuple(dict.fromkeys(CLEAN_REASONS + EVOL_REASONS + SELF_INSTRUCT_REASONS
                              + CRAFT_REASONS + (JUDGE_REASON,) + DEDUP_REASONS
                              + (MIX_REASON,)))
EXAMPLES_PER_REASON = 3
# The output contract's files (besides manifest.json, report.html and hf/).
SPLIT_FILES = {split: f"{split}.jsonl" for split in SPLITS}
REJECTED_FILE = "rejected.jsonl"


def partial_name(name: str) -> str:
    """Where an output file is written until the run publishes it."""
    return f"{name}.partial"
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
            out["tool_calls"] = decoded_calls(m["tool_calls"])
        for name in ("tool_call_id", "name"):
            if m.get(name) is not None:
                out[name] = m[name]
        messages.append(out)
    out = {"id": row["id"], "messages": messages, "source": row["source"], "tags": row["tags"],
           "num_tokens": row["num_tokens"]}
    if row.get("group") is not None:
        out["group"] = row["group"]
    if row.get("tools") is not None:
        out["tools"] = json.loads(row["tools"])
    if row.get("origin") not in (None, "seed"):  # synthesized: where it came from
        out.update({k: row.get(k) for k in ("origin", "parent_id", "generator")})
    for name in ("judge_score", "judge_mass", "judge_error"):
        if row.get(name) is not None:
            out[name] = row[name]
    return out


def rejected_row(row: dict[str, Any]) -> dict[str, Any]:
    """A rejected row: why, where from, and the original row, parsed (or the raw line): what
    json.loads reads back from its `rejected_line`."""
    out = _rejected_head(row)
    if row["_reason"] == "malformed_json":
        out["raw"] = row["_raw"]
    else:
        out["row"] = json.loads(row["_raw"])
    return out


def rejected_line(row: dict[str, Any]) -> str:
    """A rejected row's line: `rejected_row` as JSON, its `row` the input line's own JSON text
    where that is safe to embed (`_row_text`), so the row reads exactly as the user wrote it
    (for a line json.dumps wrote, the same bytes as re-serialising it)."""
    text = _row_text(row)
    if text is None:
        return json.dumps(rejected_row(row), ensure_ascii=False)
    return json.dumps(_rejected_head(row), ensure_ascii=False)[:-1] + ', "row": ' + text + "}"


def _rejected_head(row: dict[str, Any]) -> dict[str, Any]:
    """A rejected row's fields before its `row` / `raw`."""
    out = {"id": row["id"], "reason": row["_reason"], "stage": row["_stage"],
           "source": {"file": row["_file"], "line": row["_line"]}}
    if row.get("_dup_of"):
        out["duplicate_of"] = row["_dup_of"]
    for name in ("judge_score", "judge_mass"):  # why a low_judge_score row went
        if row.get(name) is not None:
            out[name] = row[name]
    return out


_CONTROL = re.compile(r"[\x00-\x1f]")  # bytes below 0x20


def _row_text(row: dict[str, Any]) -> str | None:
    """The raw line to embed as the rejected row's `row`, or None: it is re-serialised.

    Only a line that parsed at ingest (every reason but `malformed_json`) qualifies, and only
    if without the spaces and tabs around it, it is an object with no byte below 0x20: no
    control character left raw in a string (json.loads refuses those) and no tab, CR or
    other control byte between tokens, so the rejected line is one line json.loads reads.
    """
    if row["_reason"] == "malformed_json":
        return None
    text = row["_raw"].strip(" \t")
    if text.startswith("{") and text.endswith("}") and not _CONTROL.search(text):
        return text
    return None


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
        text = pa.types.is_string(f.type)  # null: None (text) or NaN (numbers)
        values = np.full(batch.num_rows, None, object) if text else np.full(batch.num_rows,
                                                                            np.nan)
        if judged is not None and len(judged):
            where = np.minimum(np.searchsorted(judged, idx), len(judged) - 1)
            hit = judged[where] == idx
            values[hit] = plan[f.name][where[hit]]
        batch = batch.append_column(f, pa.array(values, f.type) if text else
                                    pa.array(values, f.type, mask=np.isnan(values)))
    return batch


def render_batch(batch: pa.Table) -> pa.Table:
    """Arrow batch function: adds `_jsonl`, each row's output line with its newline, so workers
    do the encoding and the driver only appends bytes.

    Lines are built with Arrow string kernels and NumPy, byte for byte what the per-row
    definitions write: kept rows of the common shape (text-only turns, no group, judge score
    or provenance) as `json.dumps(chat_row(row), ensure_ascii=False)`, rejected rows whose
    raw line is embedded as it is (`_row_text`) as `rejected_line(row)`. The other rows go
    through those definitions in Python.
    """
    kept = to_numpy_bool(pc.is_null(batch.column("_reason")))
    order = np.concatenate([np.flatnonzero(kept), np.flatnonzero(~kept)])
    split = int(kept.sum())
    lines = pa.chunked_array([
        _encoded(_rows(batch, order[:split]), _plain_lines,
                 lambda row: json.dumps(chat_row(row), ensure_ascii=False)),
        _encoded(_rows(batch, order[split:]), _rejected_lines, rejected_line)], pa.string())
    if not kept[:split].all():  # kept and rejected rows interleave
        lines = lines.take(pa.array(np.argsort(order), pa.int64()))
    return batch.append_column("_jsonl", lines)


def _rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table``'s ``rows`` (ascending): a slice, no copy, when they are consecutive (in an
    export batch the kept rows come first)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return table.slice(rows[0], len(rows))
    return table.take(pa.array(rows, pa.int64()))


def _encoded(rows: pa.Table, arrow_lines: Callable[[pa.Table], tuple[np.ndarray, pa.Array]],
             line: Callable[[dict[str, Any]], str]) -> pa.Array:
    """The lines of ``rows``: ``arrow_lines`` gives (which rows it encodes, every row's line
    as if it did), ``line`` (a row as a dict -> its line) the others."""
    if not rows.num_rows:
        return pa.array([], pa.string())
    fast, lines = arrow_lines(rows)
    slow = np.flatnonzero(~fast)
    if len(slow):
        encoded = pa.array([line(row) + "\n" for row in
                            rows.take(pa.array(slow, pa.int64())).to_pylist()], pa.string())
        lines = pc.replace_with_mask(lines, pa.array(~fast), encoded)
    return lines


def _plain_lines(rows: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """(which kept rows have the common shape, every row's line as if it had): see
    render_batch."""
    messages, m_offsets = list_offsets(rows.column("messages"))
    tags, t_offsets = list_offsets(rows.column("tags"))
    odd_turn = to_numpy_bool(pc.not_equal(messages.field("tool_calls"), ""))
    for name in ("reasoning_content", "tool_call_id", "name"):
        odd_turn = odd_turn | to_numpy_bool(pc.is_valid(messages.field(name)))
    fast = ~any_per_row(odd_turn, m_offsets)
    for name in ("group", "tools", "judge_score", "judge_mass", "judge_error"):
        if name in rows.column_names:
            fast &= to_numpy_bool(pc.is_null(rows.column(name)))
    if "origin" in rows.column_names:
        fast &= ~to_numpy_bool(pc.not_equal(rows.column("origin"), "seed"))  # null: seed
    # each turn with the separator before it, so a row's turns lie one after the other
    separator = _separators(m_offsets)
    role, content = _escaped(messages.field("role")), _escaped(messages.field("content"))
    turns = pc.binary_join_element_wise(separator, '{"role": "', role, '", "content": "',
                                        content, '"}', "")
    if role.null_count or content.null_count:  # null: written without quotes
        turns = pc.if_else(pc.is_null(turns), pc.binary_join_element_wise(
            separator, '{"role": ', _quoted(role), ', "content": ', _quoted(content), "}", ""),
            turns)
    tags = pc.binary_join_element_wise(_separators(t_offsets), _json_strings(tags), "")
    tokens = pc.fill_null(pc.cast(rows.column(NUM_TOKENS.name), pa.string()), "null")
    lines = pc.binary_join_element_wise(
        '{"id": ', _json_strings(rows.column("id")),
        ', "messages": [', _spans(turns, m_offsets),
        '], "source": ', _json_strings(rows.column("source")),
        ', "tags": [', _spans(tags, t_offsets),
        '], "num_tokens": ', tokens, "}\n", "")
    return fast, one_array(lines)


def _rejected_lines(rows: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """(which rejected rows have their raw line embedded, every row's line as if it had): the
    lines `rejected_line` writes (`_row_text` says which)."""
    raw = one_array(pc.utf8_trim(rows.column("_raw"), " \t"))
    offsets, data = string_buffers(raw)
    below = np.flatnonzero(data[offsets[0]:offsets[-1]] < 0x20) + offsets[0]
    control = np.zeros(len(raw), bool)
    control[np.searchsorted(offsets, below, side="right") - 1] = True
    fast = (~to_numpy_bool(pc.equal(rows.column("_reason"), "malformed_json"))
            & to_numpy_bool(pc.starts_with(raw, "{")) & to_numpy_bool(pc.ends_with(raw, "}"))
            & ~control)
    if "judge_score" in rows.column_names:  # scored rows say their score: `rejected_line`
        fast &= to_numpy_bool(pc.is_null(rows.column("judge_score")))
    duplicate = ""  # no `_dup_of` column (rows no later stage saw): none
    if "_dup_of" in rows.column_names:
        duplicate = pc.if_else(
            pc.fill_null(pc.greater(pc.binary_length(rows.column("_dup_of")), 0), False),
            pc.binary_join_element_wise(', "duplicate_of": ',
                                        _json_strings(rows.column("_dup_of")), ""), "")
    line = pc.fill_null(pc.cast(rows.column("_line"), pa.string()), "null")
    lines = pc.binary_join_element_wise(
        '{"id": ', _json_strings(rows.column("id")),
        ', "reason": ', _json_strings(rows.column("_reason")),
        ', "stage": ', _json_strings(rows.column("_stage")),
        ', "source": {"file": ', _json_strings(rows.column("_file")), ', "line": ', line, "}",
        duplicate, ', "row": ', raw, "}\n", "")
    return fast, one_array(lines)


# How json.dumps(ensure_ascii=False) writes each ASCII character inside a string: `"`, the
# backslash and the control characters escaped, the others as they are.
_ESCAPED = pa.array([json.dumps(chr(c), ensure_ascii=False)[1:-1] for c in range(128)])
# Bytes looked at a block at a time: temporaries the size of a batch's text are given back
# to the OS when freed, and page faults on every call cost more than the compares.
_BLOCK = 1 << 18
_SEPARATORS = pa.array([", ", ""])


def _json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each string as a JSON string literal, byte for byte what json.dumps(ensure_ascii=False)
    writes (null: `null`)."""
    return _quoted(_escaped(values))


def _quoted(escaped: pa.Array) -> pa.Array:
    """`_escaped` strings in quotes (null: `null`)."""
    return pc.fill_null(pc.binary_join_element_wise('"', escaped, '"', ""), "null")


def _escaped(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each string as it is written between the quotes of its JSON string literal (null
    stays null).

    The bytes to escape (a few in a thousand in chat text) are found with NumPy. The text is
    cut into pieces at them and each such byte's piece is swapped for its escape: the new
    pieces lie one after the other, so they are the strings again. One copy of the text
    however many escapes it holds (`replace_substring` copies it once per kind of escape).
    """
    values = one_array(values)
    if not len(values):
        return values
    offsets, data = string_buffers(values)
    at = []
    for start in range(offsets[0], offsets[-1], _BLOCK):
        block = data[start:min(start + _BLOCK, offsets[-1])]
        escape = block < 0x20
        escape |= block == ord('"')
        escape |= block == ord("\\")
        at.append(np.flatnonzero(escape) + start)
    at = np.concatenate(at) if at else np.zeros(0, np.int64)
    if not len(at):
        return values
    # piece bounds: the strings', and each escaped byte's; a byte's own bound goes last among
    # equal ones, so that its piece is the byte (the stable sort merges the sorted runs)
    bounds = np.sort(np.concatenate([offsets, at + 1, at]), kind="stable")
    pieces = pa.Array.from_buffers(values.type, len(bounds) - 1, [
        None, pa.py_buffer(bounds.astype(offsets.dtype)), values.buffers()[2]])
    swap = np.zeros(len(pieces), bool)
    swap[np.searchsorted(bounds, at, side="right") - 1] = True
    pieces = pc.replace_with_mask(pieces, pa.array(swap), _ESCAPED.take(pa.array(data[at])))
    valid = pc.is_valid(values).buffers()[1] if values.null_count else None
    return _spans(pieces, np.searchsorted(bounds, offsets), valid, values.null_count)


def _separators(offsets: np.ndarray) -> pa.Array:
    """`, ` for each item (row i: items offsets[i]:offsets[i + 1]) but the first of its row."""
    first = np.zeros(offsets[-1], np.int8)
    first[offsets[:-1][offsets[:-1] < offsets[1:]]] = 1
    return _SEPARATORS.take(pa.array(first))


def _spans(values: pa.Array, offsets: np.ndarray, valid: pa.Buffer | None = None,
           null_count: int = 0) -> pa.Array:
    """Row i: the strings values[offsets[i]:offsets[i + 1]] one after the other, without a
    copy (that is how they lie in ``values``' data)."""
    starts = string_buffers(values)[0][offsets]
    return pa.Array.from_buffers(values.type, len(offsets) - 1, [
        valid, pa.py_buffer(starts), values.buffers()[2]], null_count)


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
        # kept rows that offer tool definitions, and that hold a tool call
        self.tool_rows: Counter[str] = Counter({"offer_tools": 0, "call_tools": 0})
        self.sources: dict[str, Counter[str]] = defaultdict(Counter)
        self._tokens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # binary: lines are written straight from Arrow's UTF-8 buffers, under `.partial`
        # names until `publish` (a run killed while exporting leaves no `train.jsonl` that
        # a trainer would read as the whole split)
        self._split_files = {s: open(out_dir / partial_name(SPLIT_FILES[s]), "wb")
                             for s in SPLITS}
        self._rejected = open(out_dir / partial_name(REJECTED_FILE), "wb")
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
            reasons = dropped.column("_reason")
            for reason in pc.unique(reasons).to_pylist():  # in order of first appearance
                wanted = EXAMPLES_PER_REASON - len(self.examples[reason])
                rows = np.flatnonzero(to_numpy_bool(pc.equal(reasons, reason)))[:wanted]
                self.examples[reason] += [json.loads(lines[i].as_py()) for i in rows.tolist()]
            self._write_lines(self._rejected, lines)
        for name, n in _counts(source.filter(kept_mask)).items():
            self.sources[name]["kept"] += n
        self._count_tool_rows(batch, to_numpy_bool(kept_mask))
        output = batch.select([c for c in OUTPUT_SCHEMA.names if c in batch.column_names])
        for split in SPLITS:
            mask = pc.fill_null(pc.equal(batch.column("split"), split), False)
            part = output.filter(mask)
            if not part.num_rows:
                continue
            self._arrow[split].write_table(_conform(part))
            self.splits[split] += part.num_rows
            self._tokens[split].append(part.column("num_tokens").to_numpy())
            self._write_lines(self._split_files[split], batch.column("_jsonl").filter(mask))

    def _count_tool_rows(self, batch: pa.Table, kept: np.ndarray) -> None:
        if "tools" in batch.column_names:
            self.tool_rows["offer_tools"] += int(
                (to_numpy_bool(pc.is_valid(batch.column("tools"))) & kept).sum())
        turns, offsets = list_offsets(batch.column("messages"))
        calls = to_numpy_bool(pc.is_valid(turns.field("tool_calls")))
        if calls.any():
            self.tool_rows["call_tools"] += int((any_per_row(calls, offsets) & kept).sum())

    @staticmethod
    def _write_lines(fh, lines: pa.ChunkedArray | pa.Array) -> None:
        """The lines (each ends with its newline), copied from the column's data buffers."""
        for chunk in lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]:
            if not len(chunk):
                continue
            offsets, data = string_buffers(chunk)
            fh.write(memoryview(data)[offsets[0]:offsets[-1]])

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
    def tokens(self) -> dict[str, np.ndarray]:
        """Each split's `num_tokens`, in output order."""
        return {split: np.concatenate(parts) if parts else np.zeros(0, np.int64)
                for split, parts in self._tokens.items()}

    @property
    def kept(self) -> int:
        return sum(self.splits.values())

    def close(self) -> None:
        """Closes the JSONL outputs and the work files `closing` saves `hf/` from."""
        for fh in [*self._split_files.values(), self._rejected]:
            fh.close()
        for writer in self._arrow.values():
            writer.close()

    def publish(self) -> None:
        """Moves the closed JSONL outputs to their names (the run's last step but the
        manifest)."""
        for name in [*SPLIT_FILES.values(), REJECTED_FILE]:
            os.replace(self.out_dir / partial_name(name), self.out_dir / name)

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Closes the files and saves `hf/` from them in a child process (`writers.hf`) while
        the block runs; waits for it after the block (the child is stopped if the block
        fails), then removes the work files."""
        self.close()
        saving = HfSave({split: self.work_dir / f"{split}.arrow" for split in SPLITS},
                        self.out_dir / "hf")
        try:
            yield
        except BaseException:
            saving.cancel()
            raise
        saving.wait()
        shutil.rmtree(self.work_dir, ignore_errors=True)
