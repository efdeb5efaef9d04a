"""Arrow schemas of the rows that flow between stages (see DESIGN.md: row schema)."""

from __future__ import annotations

import pyarrow as pa

MESSAGE_TYPE = pa.struct([
    pa.field("role", pa.string()),
    pa.field("content", pa.string()),
    pa.field("reasoning_content", pa.string()),  # null when the turn has none
    pa.field("tool_calls", pa.string()),  # JSON text of the OpenAI tool_calls list, or null
    pa.field("tool_call_id", pa.string()),  # on a tool turn: the call it answers, or null
    pa.field("name", pa.string()),  # OpenAI's optional `name` (a tool turn's function), or null
])
# The message fields that are null on a plain turn (every field but role and content).
OPTIONAL_MESSAGE_FIELDS = tuple(f.name for f in MESSAGE_TYPE if f.name not in ("role", "content"))

ROW_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("messages", pa.list_(MESSAGE_TYPE)),
    pa.field("source", pa.string()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("group", pa.string()),  # rows sharing a group land in one split; null when none
    pa.field("tools", pa.string()),  # JSON text of the OpenAI tools list the row offers; or null
]

# Columns that travel with each row until the writers split kept from rejected rows.
WORK_FIELDS = [
    pa.field("_file", pa.string()),  # the input file the row came from
    pa.field("_line", pa.int64()),  # 1-based line (JSONL) or row number (Parquet/Arrow)
    pa.field("_raw", pa.string()),  # the original row as JSON, or the raw line if unparseable
    pa.field("_reason", pa.string()),  # null while kept; else the reason code
    pa.field("_stage", pa.string()),  # the stage that set _reason
]

ROW_SCHEMA = pa.schema(ROW_FIELDS)
WORK_SCHEMA = pa.schema(ROW_FIELDS + WORK_FIELDS)

# Added by the clean stage: token count of the whole conversation (estimate or tokenizer).
NUM_TOKENS = pa.field("num_tokens", pa.int64())
SPLIT = pa.field("split", pa.string())
# Global position of a row in the input (shard order, then line order): the key later stages
# use to refer to a row, and the order "first" means.
IDX = pa.field("_idx", pa.int64())

SPLITS = ("train", "validation", "test")

# Where a row came from: "seed" (an input row) or the generator that made it, the row or
# document it was made from, and `kind:model` of the engine. Judge columns: the expected
# score and the probability mass the score tokens got (null when not judged), and why a
# judged row was not scored or its score is not trusted (kept, never dropped on it).
PROVENANCE_FIELDS = [pa.field("origin", pa.string()), pa.field("parent_id", pa.string()),
                     pa.field("generator", pa.string())]
JUDGE_FIELDS = [pa.field("judge_score", pa.float64()), pa.field("judge_mass", pa.float64()),
                pa.field("judge_error", pa.string())]  # why a judged row has no trusted score
