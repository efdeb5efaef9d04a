"""The clean stage: normalise text, then run the filters over each Arrow batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.config import CleanConfig
from data_engine.filters import FILTERS, MessageView
from data_engine.filters.length import row_tokens
from data_engine.normalizers.text import normalize_text
from data_engine.schema import MESSAGE_TYPE, NUM_TOKENS

STAGE = "clean"


def normalize_messages(messages: pa.Array | pa.ChunkedArray, config: CleanConfig) -> pa.ListArray:
    """Returns ``messages`` with content and reasoning normalised (same list shape)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    values = pc.list_flatten(messages)
    lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())

    def norm(column: str) -> pa.Array:
        texts = values.field(column).to_pylist()
        return pa.array([t if t is None else normalize_text(t, config.fix_mojibake,
                                                            config.normalize_width)
                         for t in texts], pa.string())

    struct = pa.StructArray.from_arrays(
        [norm(f.name) if f.name in ("content", "reasoning_content") else values.field(f.name)
         for f in MESSAGE_TYPE], fields=list(MESSAGE_TYPE))
    return pa.ListArray.from_arrays(offsets, struct, type=pa.list_(MESSAGE_TYPE))


def clean_batch(batch: pa.Table, config: CleanConfig) -> pa.Table:
    """Ray Data batch UDF: normalises rows still kept and records the first filter reason.

    Rows rejected at ingest pass through untouched; kept rows get `num_tokens`.
    """
    messages = normalize_messages(batch.column("messages"), config)
    view = MessageView(messages)
    reasons = batch.column("_reason").to_pylist()
    stages = batch.column("_stage").to_pylist()
    for flt in FILTERS:
        if flt.name in config.disable:
            continue
        alive = [i for i, r in enumerate(reasons) if r is None]
        if not alive:
            break
        found = flt.check(view, config)
        for i in alive:
            if found[i] is not None:
                reasons[i], stages[i] = found[i], STAGE
    tokens = row_tokens(view, config.length)
    out = batch.set_column(batch.schema.get_field_index("messages"), "messages", messages)
    out = out.set_column(out.schema.get_field_index("_reason"), "_reason",
                         pa.array(reasons, pa.string()))
    out = out.set_column(out.schema.get_field_index("_stage"), "_stage",
                         pa.array(stages, pa.string()))
    return out.append_column(NUM_TOKENS, pa.array(tokens, pa.int64()))
