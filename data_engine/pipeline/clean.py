"""The clean stage: normalise text, then run the filters over each Arrow batch."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import list_offsets
from data_engine.config import CleanConfig
from data_engine.filters import FILTERS, MessageView
from data_engine.filters.length import row_tokens
from data_engine.normalizers.text import normalize_texts
from data_engine.schema import MESSAGE_TYPE, NUM_TOKENS

STAGE = "clean"


NORMALISED = ("content", "reasoning_content", "tool_calls")


def normalize_messages(messages: pa.Array | pa.ChunkedArray, config: CleanConfig) -> pa.ListArray:
    """Returns ``messages`` with content, reasoning and the tool calls' JSON text normalised
    (same list shape): a call's arguments then read as the prompt that asked for them does
    (`ＩＤ１２３` in both, or `ID123` in both). The normalisers change letters, digits and
    invisible characters only, never JSON's quotes, brackets or escapes."""
    values, offsets = list_offsets(messages)

    def norm(column: str) -> pa.Array:
        return normalize_texts(values.field(column), config.fix_mojibake, config.normalize_width,
                               json_text=column == "tool_calls")

    struct = pa.StructArray.from_arrays(
        [norm(f.name) if f.name in NORMALISED else values.field(f.name)
         for f in MESSAGE_TYPE], fields=list(MESSAGE_TYPE))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct,
                                    type=pa.list_(MESSAGE_TYPE))


def clean_batch(batch: pa.Table, config: CleanConfig) -> pa.Table:
    """Arrow batch function: normalises rows still kept and records the first filter reason.

    Rows rejected at ingest pass through untouched; kept rows get `num_tokens`. Each filter
    checks only the rows no earlier one dropped (``alive``).
    """
    messages = normalize_messages(batch.column("messages"), config)
    view = MessageView(messages, batch.column("tools") if "tools" in batch.column_names
                       else None)
    reasons = batch.column("_reason").combine_chunks().cast(pa.string())
    stages = batch.column("_stage").combine_chunks().cast(pa.string())
    for flt in FILTERS:
        if flt.name in config.disable:
            continue
        alive = pc.is_null(reasons)
        alive_np = alive.to_numpy(zero_copy_only=False)
        if not alive_np.any():
            break
        found = pa.array(flt.check(view, config, alive_np), pa.string())
        hit = pc.and_(alive, pc.is_valid(found))
        reasons = pc.if_else(hit, found, reasons)
        stages = pc.if_else(hit, pa.scalar(STAGE, pa.string()), stages)
    tokens = row_tokens(view, config.length)
    out = batch.set_column(batch.schema.get_field_index("messages"), "messages", messages)
    out = out.set_column(out.schema.get_field_index("_reason"), "_reason", reasons)
    out = out.set_column(out.schema.get_field_index("_stage"), "_stage", stages)
    return out.append_column(NUM_TOKENS, pa.array(tokens, pa.int64()))
