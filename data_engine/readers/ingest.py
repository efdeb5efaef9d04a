"""The ingest stage: reads shards into row-schema Arrow tables, quarantining bad rows.

A malformed line or a row of no known shape is not an exception: it becomes a row with
`_reason` set (`malformed_json` / `unknown_format`) and its raw text kept, so counts are
conserved and the rejected file can show it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_engine.config import InputConfig
from data_engine.readers.formats import UnknownFormat, row_id, row_tags, row_tools, to_messages
from data_engine.readers.arrow_jsonl import read_shard
from data_engine.readers.shards import Shard, default_source, iter_shard, read_bytes
from data_engine.schema import WORK_SCHEMA

STAGE = "ingest"


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
