"""The ingest stage: reads shards into row-schema Arrow tables, quarantining bad rows.

A malformed line or a row of no known shape is not an exception: it becomes a row with
`_reason` set (`malformed_json` / `unknown_format`) and its raw text kept, so counts are
conserved and the rejected file can show it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_engine.config import InputConfig
from data_engine.errors import InputError
from data_engine.readers.formats import UnknownFormat, row_id, row_tags, row_tools, to_messages
from data_engine.readers.arrow_jsonl import read_shard
from data_engine.readers.shards import Shard, default_source, first_rows, iter_shard, read_bytes
from data_engine.schema import WORK_SCHEMA

STAGE = "ingest"
# Lines (or rows) of an input's first file that `check_shapes` reads.
SHAPE_PROBE_LINES = 100


def ingest_shards(shards: pa.Table, inputs: list[InputConfig], group_column: str = "group"
                  ) -> pa.Table:
    """Arrow batch function: a table of shard descriptors in, the rows they hold out.

    ``group_column`` names the input column whose value becomes the row's `group`. A JSONL
    shard of plain `messages` rows is read by Arrow (`arrow_jsonl`); any other, and any
    shard with one odd row, row by row.
    """
    tables = []
    for desc in shards.to_pylist():
        shard = Shard(**desc)
        item = inputs[shard.input_index]
        source = item.source or default_source(item.path)
        if shard.kind == "jsonl" and item.format in ("auto", "messages") and not item.columns:
            table = read_shard(read_bytes(shard), shard.first_line, shard.path, source,
                               group_column)
            if table is not None:
                tables.append(table)
                continue
        columns: dict[str, list[Any]] = {f.name: [] for f in WORK_SCHEMA}
        for line, row, raw in iter_shard(shard):
            _append(columns, row, raw, line, shard.path, source, item, group_column)
        tables.append(pa.table(columns, schema=WORK_SCHEMA))
    return pa.concat_tables(tables) if tables else WORK_SCHEMA.empty_table()


def _append(columns: dict[str, list[Any]], row: dict[str, Any] | None, raw: str, line: int,
            path: str, source: str, item: InputConfig, group_column: str) -> None:
    reason = None
    messages, tags, rid, tools = [], [], None, None
    if row is None:
        reason = "malformed_json"
    else:
        try:
            messages = to_messages(row, item.format, item.columns)
            tags = row_tags(row)
            tools = row_tools(row)
            rid = row_id(row, messages, item.columns)
        except UnknownFormat:
            reason, messages, tags, tools = "unknown_format", [], [], None
            rid = _keep_id(row)
    row_source = row.get("source") if row is not None else None
    columns["id"].append(rid)
    columns["messages"].append(messages)
    columns["source"].append(row_source if isinstance(row_source, str) and row_source else source)
    columns["tags"].append(tags)
    group = row.get(group_column) if row is not None else None
    columns["group"].append(None if group is None or isinstance(group, (dict, list))
                            else str(group))
    columns["tools"].append(tools)
    columns["_file"].append(path)
    columns["_line"].append(line)
    columns["_raw"].append(raw)
    columns["_reason"].append(reason)
    columns["_stage"].append(STAGE if reason else None)


def _keep_id(row: dict[str, Any]) -> str | None:
    value = row.get("id")
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def check_shapes(inputs: list[InputConfig], field: str = "inputs") -> None:
    """Raises InputError when none of the rows among an input's first lines has the input's
    format: a `columns:` mapping that names absent columns, a wrong `format:`, or a file of
    no chat shape would otherwise reject every row as unknown_format and run on without it.
    The message is the first row's problem and the keys the rows have."""
    for index, item in enumerate(inputs):
        path, rows = first_rows(item, SHAPE_PROBE_LINES)
        problems = []
        for row in rows:
            try:
                to_messages(row, item.format, item.columns)
                row_tools(row)
            except UnknownFormat as exc:
                problems.append(str(exc))
                continue
            break
        else:
            if not rows:
                continue  # nothing parsed: malformed lines, or no rows (reported elsewhere)
            keys = sorted({str(k) for row in rows for k in row})
            where = ("columns" if item.columns else "format" if item.format != "auto"
                     else "path")
            fix = ("; map them with `columns: {user: ..., assistant: ...}`"
                   if where == "path" else "")
            raise InputError(path, f"none of its first {len(rows)} rows can be read as "
                             f"{_shape(item)}: {problems[0]} (the rows' keys: "
                             f"{', '.join(keys[:12])}{', ...' if len(keys) > 12 else ''}){fix}",
                             f"{field}[{index}].{where}")


def _shape(item: InputConfig) -> str:
    if item.columns:
        return "columns " + ", ".join(f"{k}={v}" for k, v in item.columns.items())
    return "a chat row" if item.format == "auto" else f"format {item.format!r}"
