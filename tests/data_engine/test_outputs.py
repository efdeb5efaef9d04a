"""Output lines: the Arrow-kernel encoding of kept rows equals json.dumps of `chat_row`."""

from __future__ import annotations

import json

import pyarrow as pa

from data_engine.schema import JUDGE_FIELDS, MESSAGE_TYPE, NUM_TOKENS, PROVENANCE_FIELDS, \
    WORK_SCHEMA
from data_engine.writers.outputs import _plain_lines, chat_row, rejected_row, render_batch


def _turn(role: str, content: str | None, reasoning: str | None = None,
          tool_calls: str | None = None) -> dict:
    return {"role": role, "content": content, "reasoning_content": reasoning,
            "tool_calls": tool_calls}


# Every character json.dumps escapes with a short form, and some it writes as they are.
ESCAPED = 'quote " backslash \\ newline\n cr\r tab\t bs\b ff\f del\x7f nbsp\u00a0 \u2028 ' \
          '\U0001f600 𠀋 「」'
CONTROL = "bell\x07 nul\x00 us\x1f"  # written as \u00XX: left to json.dumps

ROWS = [
    # the common shape
    {"id": "plain", "messages": [_turn("user", "Hi"), _turn("assistant", "Hello.")]},
    {"id": "escapes", "messages": [_turn("system", ESCAPED), _turn("user", 'a "b" \\c'),
                                   _turn("assistant", "x\ny\tz\r\b\f")]},
    {"id": "control in content", "messages": [_turn("assistant", ESCAPED + CONTROL)]},
    {"id": 'id "q" \\', "messages": [_turn("assistant", "")], "tags": ["t\n1", 'q"', "\\"]},
    {"id": "control in id \x01", "messages": [_turn("assistant", "ok")]},
    {"id": "control in tag", "messages": [_turn("assistant", "ok")], "tags": ["a\x02"]},
    {"id": None, "messages": [_turn("assistant", None)], "num_tokens": None},
    {"id": "no turns", "messages": []},
    # shapes chat_row writes differently: reasoning, tool calls, group, provenance, judge
    {"id": "reasoning", "messages": [_turn("user", "q"), _turn("assistant", "a", "think")]},
    {"id": "tools", "messages": [_turn("assistant", None, tool_calls='[{"id": "c1"}]'),
                                 _turn("tool", "42"), _turn("assistant", "done", None, "")]},
    {"id": "bad tools", "messages": [_turn("assistant", "x", tool_calls="not json")]},
    {"id": "grouped", "messages": [_turn("assistant", "g")], "group": "g1"},
    {"id": "made", "messages": [_turn("assistant", "m")], "origin": "evol",
     "parent_id": "plain", "generator": "transformers:m"},
    {"id": "judged", "messages": [_turn("assistant", "j")], "judge_score": 3.25,
     "judge_mass": 0.5},
    # rejected rows always take the Python path
    {"id": "dropped", "messages": [_turn("assistant", "d")], "_reason": "tag_list",
     "_stage": "clean", "_raw": json.dumps({"id": "dropped", "text": ESCAPED + CONTROL})},
    {"id": None, "messages": [], "_reason": "malformed_json", "_stage": "ingest",
     "_raw": "{not json"},
]


def _batch() -> pa.Table:
    fields = list(WORK_SCHEMA) + [NUM_TOKENS] + PROVENANCE_FIELDS + JUDGE_FIELDS + [
        pa.field("_dup_of", pa.string())]
    defaults = {"source": "s", "tags": [], "_file": "in.jsonl", "_line": 1, "num_tokens": 7,
                "origin": "seed", "_raw": "{}"}
    rows = [{f.name: row.get(f.name, defaults.get(f.name)) for f in fields} for row in ROWS]
    assert pa.schema(fields).field("messages").type == pa.list_(MESSAGE_TYPE)
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def test_render_batch_writes_what_json_dumps_writes():
    batch = _batch()
    lines = render_batch(batch).column("_jsonl").to_pylist()
    for row, line in zip(batch.to_pylist(), lines):
        expected = rejected_row(row) if row["_reason"] else chat_row(row)
        assert line == json.dumps(expected, ensure_ascii=False) + "\n", row["id"]
        assert json.loads(line) == expected


def test_only_the_common_shape_takes_the_arrow_path():
    fast, _ = _plain_lines(_batch())
    taken = {row["id"] for row, f in zip(ROWS, fast.tolist()) if f}
    assert taken == {"plain", "escapes", 'id "q" \\', None, "no turns"}
