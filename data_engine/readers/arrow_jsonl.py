"""Ingest of a JSONL shard through Arrow's JSON reader, for the common shape only.

Most chat data is OpenAI `messages` rows whose turns hold a role and text content and
nothing else. For a shard of only such rows, `read_shard` builds the ingest table with
Arrow's C++ JSON reader and compute kernels (about 3 µs a row against 15 µs for
`json.loads` and the per-row mapping of `formats.py`), equal to what the per-row path
makes. Anything else in the shard (a malformed line, another shape, a turn with tool calls,
reasoning or non-text content, an unusual role, id or tag value) returns None and the
caller takes the per-row path for the whole shard, so every odd row keeps its exact
handling and reason.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from data_engine.readers.formats import row_id
from data_engine.schema import MESSAGE_TYPE, OPTIONAL_MESSAGE_FIELDS, WORK_SCHEMA

# Roles the per-row path keeps as they are (it strips and lower-cases the role).
ROLES = ("system", "user", "assistant", "tool")
# The bytes `bytes.strip()` removes: a line of only these is blank, not a row.
_BLANK = np.zeros(256, dtype=bool)
_BLANK[list(b" \t\n\r\x0b\x0c")] = True


def read_shard(data: bytes, first_line: int, path: str, source: str, group_column: str
               ) -> pa.Table | None:
    """The ingest table of a JSONL shard's bytes, or None when the shard needs the per-row
    path (see the module docstring)."""
    starts, ends, lines = _lines(data, first_line)
    if not len(starts) or b"<tool_call>" in data or b"<tool_response>" in data:
        return None  # calls written into the text: the per-row path reads them as calls
    try:
        raw = _slices(data, starts, ends)  # invalid UTF-8 fails here (the per-row path
        #                                     would replace it)
        table = pj.read_json(io.BytesIO(data), read_options=pj.ReadOptions(
            use_threads=False, block_size=max(len(data), 1)))
    except pa.ArrowInvalid:  # a malformed line or values of changing types
        return None
    if table.num_rows != len(starts):  # two objects on one line
        return None
    messages = _messages(table)
    if messages is None or _has_values(table, "tools"):
        return None  # tool definitions: checked and written as JSON text by the per-row path
    columns = {name: table.column(name).combine_chunks() if name in table.column_names
               else None for name in ("id", "source", "tags", group_column)}
    tags = _tags(columns["tags"], len(starts))
    group = _text_or_int(columns[group_column], len(starts))
    ids = _text_or_int(columns["id"], len(starts))
    if tags is None or group is None or ids is None:
        return None
    ids = _fill_ids(ids, messages)
    rows = len(starts)
    return pa.table({
        "id": ids, "messages": messages, "source": _sources(columns["source"], source, rows),
        "tags": tags, "group": group, "tools": pa.nulls(rows, pa.string()),
        "_file": pa.array([path] * rows, pa.string()),
        "_line": pa.array(lines, pa.int64()), "_raw": raw,
        "_reason": pa.nulls(rows, pa.string()), "_stage": pa.nulls(rows, pa.string()),
    }, schema=WORK_SCHEMA)


def _has_values(table: pa.Table, name: str) -> bool:
    """The table has column ``name`` with a value other than null in some row."""
    if name not in table.column_names:
        return False
    column = table.column(name)
    return column.type != pa.null() and column.null_count < len(column)


def _lines(data: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte ranges and line numbers of the non-blank lines, without their line ending
    (trailing carriage returns dropped, as the per-row path's `rstrip("\\r")` does)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not len(ends) or ends[-1] != len(buf) - 1:
        ends = np.append(ends, len(buf))  # a last line without a newline
    starts = np.concatenate([[0], ends[:-1] + 1])
    # A line starting with a non-blank byte is a row; only the others are looked at whole.
    maybe = np.flatnonzero((starts == ends) | _BLANK[buf[np.minimum(starts, len(buf) - 1)]])
    blank = [i for i in maybe.tolist() if not data[starts[i]:ends[i]].strip()]
    kept = np.delete(np.arange(len(starts)), blank)
    starts, ends = starts[kept], ends[kept].copy()
    while True:
        cr = ends > starts
        cr[cr] = buf[ends[cr] - 1] == 13
        if not cr.any():
            break
        ends[cr] -= 1
    return starts, ends, first_line + kept


def _slices(data: bytes, starts: np.ndarray, ends: np.ndarray) -> pa.StringArray:
    """data[starts[i]:ends[i]] for each i, one copy: the offsets alternate starts and ends,
    so values alternate lines and the gaps between them, and every other value is taken."""
    bounds = np.empty(2 * len(starts), dtype=np.int32)
    bounds[0::2], bounds[1::2] = starts, ends
    both = pa.Array.from_buffers(pa.binary(), len(bounds) - 1,
                                 [None, pa.py_buffer(bounds), pa.py_buffer(data)])
    return both.take(pa.array(np.arange(0, len(bounds), 2))).cast(pa.string())


def _messages(table: pa.Table) -> pa.ListArray | None:
    """The `messages` column in the row schema, when every turn is a known role with text."""
    if "messages" not in table.column_names:
        return None
    column = table.column("messages").combine_chunks()
    if not pa.types.is_list(column.type) or column.null_count:
        return None
    turns = column.type.value_type
    if not pa.types.is_struct(turns) or turns.get_field_index("role") < 0:
        return None
    known = {"role": pa.string(), "content": pa.string()}
    if any(f.name not in known or f.type not in (known[f.name], pa.null()) for f in turns):
        return None  # reasoning, tool calls, names, non-text content: the per-row path
    values = pc.list_flatten(column)
    role = values.field("role")
    if role.type != pa.string() or not pc.all(pc.is_in(role, pa.array(ROLES))).as_py():
        return None
    content = values.field("content") if turns.get_field_index("content") >= 0 else \
        pa.nulls(len(values))
    content = pc.fill_null(content.cast(pa.string()), "")
    struct = pa.StructArray.from_arrays(
        [role, content] + [pa.nulls(len(values), pa.string()) for _ in OPTIONAL_MESSAGE_FIELDS],
        fields=list(MESSAGE_TYPE))
    offsets = pc.subtract(column.offsets, column.offsets[0])
    return pa.ListArray.from_arrays(offsets, struct, type=pa.list_(MESSAGE_TYPE))


def _tags(column: pa.Array | None, rows: int) -> pa.ListArray | None:
    """`tags`: a list of strings as it is, one string as a list of it, null as []."""
    if column is None or column.type == pa.null():
        return pa.ListArray.from_arrays(pa.array(np.zeros(rows + 1, np.int32)),
                                        pa.array([], pa.string()))
    if column.type == pa.string():
        present = pc.is_valid(column).to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(present)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), column.filter(pa.array(present)))
    if column.type != pa.list_(pa.string()):
        return None
    if pc.list_flatten(column).null_count:
        return None  # null tags inside a list: the per-row path drops them
    return column.fill_null(pa.scalar([], column.type))


def _text_or_int(column: pa.Array | None, rows: int) -> pa.Array | None:
    """A string column from strings or integers (as `str` writes them), null where absent;
    None for other types."""
    if column is None or column.type == pa.null():
        return pa.nulls(rows, pa.string())
    if column.type == pa.string():
        return column
    if pa.types.is_integer(column.type):
        return column.cast(pa.string())
    return None


def _fill_ids(ids: pa.Array, messages: pa.ListArray) -> pa.Array:
    """Rows without an id (null or "") get the hash `formats.row_id` gives them."""
    missing = pc.fill_null(pc.equal(ids, ""), True)
    where = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
    if not len(where):
        return ids
    hashed = [row_id({}, turns, None) for turns in messages.take(pa.array(where)).to_pylist()]
    return pc.replace_with_mask(ids, missing, pa.array(hashed, pa.string()))


def _sources(column: pa.Array | None, default: str, rows: int) -> pa.Array:
    """The row's own `source` when it is a non-empty string, else the input's."""
    if column is None or column.type != pa.string():
        return pa.array([default] * rows, pa.string())
    own = pc.fill_null(pc.not_equal(column, ""), False)
    return pc.if_else(own, column, pa.scalar(default, pa.string()))
