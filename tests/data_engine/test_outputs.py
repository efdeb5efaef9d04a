"""Output lines: the Arrow-kernel encoding equals the per-row definitions (json.dumps of
`chat_row` for kept rows, `rejected_line` for rejected ones)."""

from __future__ import annotations

import json
from itertools import zip_longest

import pyarrow as pa
import pytest

from data_engine.schema import JUDGE_FIELDS, MESSAGE_TYPE, NUM_TOKENS, PROVENANCE_FIELDS, \
    WORK_SCHEMA
from data_engine.writers import outputs
from data_engine.writers.outputs import _json_strings, _plain_lines, _rejected_lines, \
    chat_row, rejected_line, rejected_row, render_batch


def _turn(role: str | None, content: str | None, reasoning: str | None = None,
          tool_calls: str | None = None) -> dict:
    return {"role": role, "content": content, "reasoning_content": reasoning,
            "tool_calls": tool_calls}


# Every character json.dumps escapes with a short form, and some it writes as they are.
ESCAPED = 'quote " backslash \\ newline\n cr\r tab\t bs\b ff\f del\x7f nbsp\u00a0 \u2028 ' \
          '\U0001f600 𠀋 「」'
CONTROL = "bell\x07 nul\x00 us\x1f"  # written as \u00XX
ORIGINAL = {"id": "orig", "messages": [{"role": "user", "content": ESCAPED + CONTROL + "あ"}],
            "score": 1.5, "tags": ["x"]}
CANONICAL = json.dumps(ORIGINAL, ensure_ascii=False)  # what the benchmark writes
COMPACT = json.dumps(ORIGINAL, ensure_ascii=False, separators=(",", ":"))


def _rejected(rid: str | None, raw: str, reason: str = "tag_list", stage: str = "clean",
              dup_of: str | None = None) -> dict:
    return {"id": rid, "messages": [_turn("assistant", "d")], "_reason": reason,
            "_stage": stage, "_raw": raw, "_dup_of": dup_of}


ROWS = [
    # the common shape
    {"id": "plain", "messages": [_turn("user", "Hi"), _turn("assistant", "Hello.")]},
    {"id": "escapes", "messages": [_turn("system", ESCAPED), _turn("user", 'a "b" \\c'),
                                   _turn("assistant", "x\ny\tz\r\b\f")]},
    {"id": "control in content", "messages": [_turn("assistant", ESCAPED + CONTROL)]},
    {"id": 'id "q" \\', "messages": [_turn("assistant", "")], "tags": ["t\n1", 'q"', "\\"]},
    {"id": "control in id \x01", "messages": [_turn("assistant", "ok")]},
    {"id": "control in tag", "messages": [_turn("assistant", "ok")], "tags": ["a\x02", None]},
    {"id": None, "messages": [_turn("assistant", None)], "num_tokens": None},
    {"id": "null role", "messages": [_turn(None, "q"), _turn("assistant", '"a"')]},
    {"id": "no turns", "messages": []},
    # shapes chat_row writes differently: reasoning, tool calls, group, provenance, judge
    {"id": "reasoning", "messages": [_turn("user", "q"), _turn("assistant", "a", "think")]},
    {"id": "tools", "messages": [_turn("assistant", None, tool_calls='[{"id": "c1"}]'),
                                 dict(_turn("tool", "42"), tool_call_id="c1", name="f"),
                                 _turn("assistant", "done", None, "")]},
    {"id": "named", "messages": [dict(_turn("user", "q"), name="ann"), _turn("assistant", "a")]},
    {"id": "bad tools", "messages": [_turn("assistant", "x", tool_calls="not json")]},
    {"id": "grouped", "messages": [_turn("assistant", "g")], "group": "g1"},
    {"id": "offers tools", "messages": [_turn("assistant", "t")], "tools": '[{"type": "f"}]'},
    {"id": "made", "messages": [_turn("assistant", "m")], "origin": "evol",
     "parent_id": "plain", "generator": "transformers:m"},
    {"id": "judged", "messages": [_turn("assistant", "j")], "judge_score": 3.25,
     "judge_mass": 0.5},
    {"id": "flagged", "messages": [_turn("assistant", "f")], "judge_score": 2.0,
     "judge_mass": 0.1, "judge_error": "judge_low_mass: mass 0.100 < min_mass 0.5"},
    # rejected rows: the raw line embedded as it is where it is one object on its own
    _rejected("canonical", CANONICAL),
    _rejected("ascii escapes", json.dumps(ORIGINAL)),  # \u3042, \ud83d\ude00 ...
    _rejected("compact", COMPACT),
    _rejected("padded", " \t " + COMPACT + "  \t"),
    _rejected("control in id \x07", CANONICAL),
    _rejected(None, "{}", reason="unknown_format", stage="ingest"),
    _rejected("duplicate", CANONICAL, reason="near_duplicate", stage="dedup", dup_of="r\n0"),
    _rejected("empty dup_of", CANONICAL, reason="exact_duplicate", stage="dedup",
              dup_of=""),
    # ... and re-serialised where not: a byte below 0x20 in it, or a line that is not JSON
    _rejected("tab between tokens", '{"id":\t"t", "n": 1}'),
    _rejected("carriage return", CANONICAL + "\r"),
    _rejected(None, "{not json", reason="malformed_json", stage="ingest"),
    _rejected(None, "{not json}", reason="malformed_json", stage="ingest"),
]
KEPT_ARROW = {"plain", "escapes", "control in content", 'id "q" \\', "control in id \x01",
              "control in tag", None, "null role", "no turns"}
REJECTED_ARROW = {"canonical", "ascii escapes", "compact", "padded", "control in id \x07",
                  None, "duplicate", "empty dup_of"}


def _batch(rows: list[dict] = ROWS) -> pa.Table:
    fields = list(WORK_SCHEMA) + [NUM_TOKENS] + PROVENANCE_FIELDS + JUDGE_FIELDS + [
        pa.field("_dup_of", pa.string())]
    defaults = {"source": "s", "tags": [], "_file": "in.jsonl", "_line": 1, "num_tokens": 7,
                "origin": "seed", "_raw": "{}"}
    table = [{f.name: row.get(f.name, defaults.get(f.name)) for f in fields} for row in rows]
    assert pa.schema(fields).field("messages").type == pa.list_(MESSAGE_TYPE)
    return pa.Table.from_pylist(table, schema=pa.schema(fields))


def _line(row: dict) -> str:
    """The per-row definition of a row's line."""
    if row["_reason"]:
        return rejected_line(row) + "\n"
    return json.dumps(chat_row(row), ensure_ascii=False) + "\n"


def test_render_batch_writes_the_per_row_definitions():
    batch = _batch()
    lines = render_batch(batch).column("_jsonl").to_pylist()
    assert len(lines) == len(ROWS)
    for row, line in zip(batch.to_pylist(), lines):
        assert line == _line(row), row["id"]
        assert json.loads(line) == (rejected_row(row) if row["_reason"] else chat_row(row))
    written = {json.loads(line)["id"]: json.loads(line) for line in lines}
    assert written["tools"]["messages"][1] == {"role": "tool", "content": "42",
                                               "tool_call_id": "c1", "name": "f"}
    assert written["named"]["messages"][0] == {"role": "user", "content": "q", "name": "ann"}
    assert written["plain"]["messages"][0] == {"role": "user", "content": "Hi"}
    assert written["offers tools"]["tools"] == [{"type": "f"}] and "tools" not in written["plain"]
    assert written["flagged"]["judge_error"].startswith("judge_low_mass") and \
        "judge_error" not in written["judged"]


def test_render_batch_keeps_the_row_order():
    """Kept and rejected rows interleaved, over several chunks: each line is its row's."""
    kept = [row for row in ROWS if not row.get("_reason")]
    rejected = [row for row in ROWS if row.get("_reason")]
    batch = _batch([row for pair in zip_longest(rejected, kept) for row in pair if row])
    chunked = pa.concat_tables([batch.slice(0, 3), batch.slice(3, 9), batch.slice(12)])
    lines = render_batch(chunked).column("_jsonl").to_pylist()
    assert lines == [_line(row) for row in batch.to_pylist()]


def test_rows_no_later_stage_saw_have_no_duplicate_of():
    """Rows straight from the clean stage have no `_dup_of` column: lines as if it were null."""
    batch = _batch()
    plain = batch.drop(["_dup_of"])
    expected = [_line({**row, "_dup_of": None}) for row in batch.to_pylist()]
    assert render_batch(plain).column("_jsonl").to_pylist() == expected


def test_only_safe_rows_take_the_arrow_path():
    batch = _batch()
    kept = [not row.get("_reason") for row in ROWS]
    split = kept.index(False)
    assert all(kept[:split]) and not any(kept[split:])
    fast, _ = _plain_lines(batch.slice(0, split))
    assert {row["id"] for row, f in zip(ROWS, fast.tolist()) if f} == KEPT_ARROW
    fast, _ = _rejected_lines(batch.slice(split))
    assert {row["id"] for row, f in zip(ROWS[split:], fast.tolist()) if f} == REJECTED_ARROW


def test_rejected_line_embeds_the_raw_row_as_written():
    by_id = {row["id"]: row for row in _batch().to_pylist()}
    # a line json.dumps wrote: the same bytes as re-serialising it
    canonical = by_id["canonical"]
    assert rejected_line(canonical) == json.dumps(rejected_row(canonical), ensure_ascii=False)
    # others: as the user wrote them (not as json.dumps would), spaces and tabs around dropped
    for rid in ("ascii escapes", "compact", "padded"):
        line = rejected_line(by_id[rid])
        assert line.endswith(', "row": ' + by_id[rid]["_raw"].strip(" \t") + "}")
        assert line != json.dumps(rejected_row(by_id[rid]), ensure_ascii=False)
    assert '"duplicate_of": "r\\n0"' in rejected_line(by_id["duplicate"])
    assert "duplicate_of" not in json.loads(rejected_line(by_id["empty dup_of"]))
    # a control byte in the line, or no JSON: re-serialised, or the raw text as a string
    for rid in ("tab between tokens", "carriage return"):
        assert rejected_line(by_id[rid]) == json.dumps(rejected_row(by_id[rid]),
                                                       ensure_ascii=False)
    malformed = [row for row in by_id.values() if row["_reason"] == "malformed_json"]
    assert [json.loads(rejected_line(row))["raw"] for row in malformed] == ["{not json}"]


@pytest.mark.parametrize("block", [outputs._BLOCK, 3])
def test_json_strings_write_what_json_dumps_writes(monkeypatch, block):
    """Every ASCII character, escapes next to each other and at the ends of strings, empty
    strings, nulls, a sliced array; with tiny blocks, escapes across block bounds."""
    monkeypatch.setattr(outputs, "_BLOCK", block)
    ascii_chars = [chr(c) for c in range(128)]
    values = ["skipped\n", *ascii_chars, "".join(ascii_chars), '""\\\\\n\n', "\x00",
              "a\nb", "", None, "日本\t語\x1f", ESCAPED + CONTROL, None, "", "\\"]
    array = pa.array(values, pa.string()).slice(1)
    expected = ["null" if v is None else json.dumps(v, ensure_ascii=False) for v in values[1:]]
    assert _json_strings(array).to_pylist() == expected
    assert _json_strings(pa.chunked_array([array.slice(0, 5), array.slice(5)])).to_pylist() \
        == expected
