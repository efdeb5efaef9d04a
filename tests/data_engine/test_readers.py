"""Ingest: every row format, every file layout, malformed lines and line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_engine.config import InputConfig
from data_engine.errors import InputError
from data_engine.readers.formats import (UnknownFormat, detect_format, row_id, row_tools,
                                         to_messages)
from data_engine.readers.ingest import ingest_shards
from data_engine.readers.shards import default_source, plan_shards


def turns(messages):
    return [(m["role"], m["content"]) for m in messages]


def test_openai_messages_with_tools_and_parts():
    row = {"messages": [
        {"role": "System", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Tokyo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "w"}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "The tool said sunny."},
    ]}
    messages = to_messages(row, "auto")
    assert turns(messages) == [("system", "Be brief."), ("user", "Weather in Tokyo?"),
                               ("assistant", ""), ("tool", "sunny"), ("assistant", "Sunny.")]
    assert json.loads(messages[2]["tool_calls"])[0]["function"]["name"] == "w"
    assert messages[4]["reasoning_content"] == "The tool said sunny."



@pytest.mark.parametrize("empty", [[], "[]", " ", "null", None])
def test_an_empty_tool_call_list_is_no_call(empty):
    """SDK dumps write `"tool_calls": []` on every plain reply. Read as a call turn, each
    such row lost its final reply (`no_assistant_reply`) or its role order."""
    from data_engine.config import CleanConfig
    from data_engine.filters import FILTERS

    from .helpers import view_of

    row = {"messages": [{"role": "user", "content": "Hi", "tool_calls": empty},
                        {"role": "assistant", "content": "Hello! How can I help?",
                         "tool_calls": empty},
                        {"role": "user", "content": "Nothing, thanks."},
                        {"role": "assistant", "content": "Have a nice day!", "tool_calls": empty}]}
    messages = to_messages(row, "auto")
    assert [m["tool_calls"] for m in messages] == [None] * 4
    view = view_of([messages])
    assert {f.name: f.check(view, CleanConfig()) for f in FILTERS} == {
        f.name: [None] for f in FILTERS}

def test_a_call_given_alone_or_in_the_legacy_form_becomes_a_list_of_calls():
    """One call given as an object (ShareGPT's `function_call` turn, a `tool_calls` that is
    not a list) is written as a list of one, as training reads calls; OpenAI's legacy
    `function_call` and `function` result turn become a call and a tool turn. Each row then
    passes every filter; written as they came, training could not read the first two, and
    the legacy call was lost."""
    from data_engine.config import CleanConfig
    from data_engine.filters import FILTERS, MessageView
    from data_engine.schema import MESSAGE_TYPE

    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}}}}]
    sharegpt = {"tools": json.dumps(tools), "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": json.dumps(call)},
        {"from": "observation", "value": "{\"temp\": 3}"},
        {"from": "gpt", "value": "It is 3 degrees."}]}
    alone = {"tools": tools, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": {"type": "function",
                                                              "function": call}},
        {"role": "tool", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "It is 3 degrees."}]}
    legacy = {"tools": tools, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
        {"role": "function", "name": "get_weather", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "It is 3 degrees."}]}
    for row in (sharegpt, alone, legacy):
        messages = to_messages(row, "auto")
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
        calls = json.loads(messages[1]["tool_calls"])
        assert isinstance(calls, list) and len(calls) == 1
        function = calls[0].get("function", calls[0])
        assert function["name"] == "get_weather"
        view = MessageView(pa.array([messages], pa.list_(MESSAGE_TYPE)),
                           pa.array([row_tools(row)], pa.string()))
        assert {f.name: f.check(view, CleanConfig())[0] for f in FILTERS} == {
            f.name: None for f in FILTERS}


def test_parallel_tool_calls_keep_their_ids_and_names():
    """Two calls in one turn: only `tool_call_id` says which result answers which."""
    calls = [{"id": "call_a", "type": "function",
              "function": {"name": "weather", "arguments": '{"city": "Kyoto"}'}},
             {"id": "call_b", "type": "function",
              "function": {"name": "weather", "arguments": '{"city": "Osaka"}'}}]
    row = {"messages": [
        {"role": "user", "content": "Kyoto and Osaka?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_b", "name": "weather", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_a", "name": "weather", "content": "sun"},
        {"role": "assistant", "content": "Kyoto sun, Osaka rain."}]}
    messages = to_messages(row, "auto")
    assert [(m.get("tool_call_id"), m.get("name")) for m in messages[2:4]] == \
        [("call_b", "weather"), ("call_a", "weather")]
    assert [c["id"] for c in json.loads(messages[1]["tool_calls"])] == ["call_a", "call_b"]
    assert "tool_call_id" not in messages[0] and "name" not in messages[4]
    # an id is part of the conversation: the same results answering the other calls differ
    swapped = json.loads(json.dumps(row))
    swapped["messages"][2]["tool_call_id"], swapped["messages"][3]["tool_call_id"] = \
        "call_a", "call_b"
    assert row_id({}, messages, None) != row_id({}, to_messages(swapped, "auto"), None)
    with pytest.raises(UnknownFormat, match="tool_call_id: expected text"):
        to_messages({"messages": [{"role": "tool", "content": "x", "tool_call_id": ["a"]}]},
                    "auto")


def test_tool_definitions_are_kept_as_json_text():
    weather = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    assert json.loads(row_tools({"tools": [weather]})) == [weather]
    assert json.loads(row_tools({"tools": json.dumps([weather])})) == [weather]  # ShareGPT
    assert row_tools({}) is None and row_tools({"tools": []}) is None
    assert row_tools({"tools": " "}) is None
    for bad, why in (({"type": "function"}, "expected a list"), ("[oops", "not JSON"),
                     (["weather"], "expected a list")):
        with pytest.raises(UnknownFormat, match=why):
            row_tools({"tools": bad})


def test_hashed_ids_of_rows_without_call_ids_did_not_change():
    """Ids hashed before `tool_call_id` and `name` joined the schema (and so the splits they
    decide) stay the same; the value is the one the earlier schema gave this row."""
    messages = to_messages({"prompt": "Hi", "completion": "Hello!"}, "auto")
    assert row_id({}, messages, None) == "hca0901640bdb91d0"
    with_nulls = [dict(m, tool_call_id=None, name=None) for m in messages]  # as Arrow reads them
    assert row_id({}, with_nulls, None) == "hca0901640bdb91d0"


def test_sharegpt_roles_and_system():
    row = {"system": "你是老师。", "conversations": [
        {"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "等于 2。"},
        {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "等于 4。"}]}
    assert detect_format(row) == "sharegpt"
    assert turns(to_messages(row, "auto")) == [("system", "你是老师。"), ("user", "1+1?"),
                                              ("assistant", "等于 2。"), ("user", "2+2?"),
                                              ("assistant", "等于 4。")]


def test_alpaca_joins_input_and_history():
    row = {"instruction": "記事のタイトルを付けて", "input": "子育ての話。", "output": "子育ての話",
           "history": [["前の質問", "前の答え"]]}
    assert turns(to_messages(row, "auto")) == [("user", "前の質問"), ("assistant", "前の答え"),
                                              ("user", "記事のタイトルを付けて\n\n子育ての話。"),
                                              ("assistant", "子育ての話")]


def test_prompt_completion_strings_and_conversational():
    assert turns(to_messages({"prompt": "Hi", "completion": "Hello!"}, "auto")) == [
        ("user", "Hi"), ("assistant", "Hello!")]
    row = {"prompt": [{"role": "user", "content": "Hi"}],
           "completion": [{"role": "assistant", "content": "Hello!"}]}
    assert turns(to_messages(row, "auto")) == [("user", "Hi"), ("assistant", "Hello!")]


def test_column_mapping():
    columns = {"user": "question", "assistant": "answer", "id": "qid"}
    row = {"qid": 7, "question": "Capital of Japan?", "answer": "Tokyo is the capital."}
    assert detect_format(row, columns) == "columns"
    messages = to_messages(row, "auto", columns)
    assert turns(messages) == [("user", "Capital of Japan?"), ("assistant", "Tokyo is the capital.")]
    assert row_id(row, messages, columns) == "7"
    # A mapping wins over a shape the row also has: an Alpaca row whose fixed instruction
    # the user maps to the system turn (so near dedup leaves it out) is read by the mapping.
    alpaca = {"instruction": "Write a title.", "input": "tokyo, stocks", "output": "Nikkei up"}
    as_system = {"system": "instruction", "user": "input", "assistant": "output"}
    assert detect_format(alpaca, as_system) == "columns"
    assert turns(to_messages(alpaca, "auto", as_system)) == [
        ("system", "Write a title."), ("user", "tokyo, stocks"), ("assistant", "Nikkei up")]
    assert detect_format(alpaca, columns) == "alpaca"  # a mapping the row does not fit


@pytest.mark.parametrize("row", [{"text": "x"}, {"question": "q", "answer": "a"},
                                 {"messages": "not a list"},
                                 {"messages": [{"content": "no role"}]},
                                 {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}])
def test_unknown_shapes(row):
    with pytest.raises(UnknownFormat):
        to_messages(row, "auto")


def test_derived_ids_are_stable_and_content_based():
    a = to_messages({"prompt": "Hi", "completion": "Hello!"}, "auto")
    b = to_messages({"prompt": "Hi", "completion": "Hello!"}, "auto")
    c = to_messages({"prompt": "Hi", "completion": "Hello."}, "auto")
    assert row_id({}, a, None) == row_id({"id": None}, b, None) != row_id({}, c, None)


def _ingest(tmp_path, inputs, shard_rows=2):
    shards, files = plan_shards(inputs, shard_rows)
    table = ingest_shards(pa.Table.from_pylist([s.to_dict() for s in shards]), inputs)
    return table, files


def test_ingest_carries_tools_and_rejects_bad_ones(tmp_path):
    path = tmp_path / "tools.jsonl"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "plain", "messages": chat}, {"id": "tools", "messages": chat, "tools": tools},
        {"id": "bad", "messages": chat, "tools": {"f": 1}}]) + "\n")
    table, _ = _ingest(tmp_path, [InputConfig(path=str(path))], shard_rows=10)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["plain"]["tools"] is None and rows["plain"]["_reason"] is None
    assert json.loads(rows["tools"]["tools"]) == tools
    assert rows["bad"]["_reason"] == "unknown_format" and rows["bad"]["tools"] is None


def test_rows_read_for_synthesis_and_judging_keep_their_tools(tmp_path):
    """`tunesmith judge` writes back the rows it read: their tools must survive."""
    from data_engine.synth.runner import read_rows

    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "t", "messages": chat, "tools": tools}) + "\n"
                    + json.dumps({"id": "p", "messages": chat}) + "\n")
    rows, skipped = read_rows(path)
    assert [r.get("tools") for r in rows] == [tools, None] and not skipped


def test_rows_judged_or_synthesized_are_written_back_with_what_they_held(tmp_path):
    """`tunesmith judge` dropped `group` and the user's own fields, and wrote tool calls as
    JSON text where `data run` writes objects."""
    from data_engine.synth.runner import public_row, read_rows

    calls = [{"id": "c1", "type": "function",
              "function": {"name": "f", "arguments": "{\"x\": 1}"}}]
    row = {"id": "t", "group": "g7", "category": "billing", "judge_score": 2.0,
           "messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "", "tool_calls": calls},
                        {"role": "tool", "content": "r", "tool_call_id": "c1"},
                        {"role": "assistant", "content": "a"}]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [read], _ = read_rows(path)
    written = public_row({**read, "judge_score": 4.5})
    assert written["group"] == "g7" and written["category"] == "billing"
    assert written["judge_score"] == 4.5  # the new verdict, not the old one
    assert written["messages"][1]["tool_calls"] == calls


HERMES_ROW = {"conversations": [  # as NousResearch/hermes-function-calling-v1 writes them
    {"from": "system", "value": "You are a function calling AI model. <tools>\n[{'type': "
     "'function', 'function': {'name': 'get_stock_price'}}]\n</tools>"},
    {"from": "human", "value": "Price of TSLA and AAPL?"},
    {"from": "gpt", "value": "<tool_call>\n{'arguments': {'symbol': 'TSLA'}, 'name': "
     "'get_stock_price'}\n</tool_call>\n<tool_call>\n{\"name\": \"get_stock_price\", "
     "\"arguments\": {\"symbol\": \"AAPL\"}}\n</tool_call>"},
    {"from": "tool", "value": "<tool_response>\n{\"name\": \"get_stock_price\", \"content\": "
     "{\"price\": 250}}\n</tool_response>\n<tool_response>\n{'name': 'get_stock_price', "
     "'content': {'price': 190}}\n</tool_response>"},
    {"from": "gpt", "value": "TSLA is 250 and AAPL is 190."}]}


def test_calls_written_into_the_text_hermes_style_are_read_as_calls(tmp_path):
    """Hermes-format rows write calls as Python dicts in `<tool_call>` text: trained as
    text, a model learns calls no parser reads (vLLM's hermes parser json-loads them). Read
    as calls, every family's template writes them in its own form, as JSON."""
    messages = to_messages(HERMES_ROW, "auto")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool",
                                             "assistant"]
    calls = json.loads(messages[2]["tool_calls"])
    assert messages[2]["content"] == ""
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_stock_price", {"symbol": "TSLA"}), ("get_stock_price", {"symbol": "AAPL"})]
    assert [(m["content"], m["name"]) for m in messages[3:5]] == [
        ('{"price": 250}', "get_stock_price"), ('{"price": 190}', "get_stock_price")]
    # the same in the messages format, through ingest (its Arrow path leaves such shards)
    path = tmp_path / "calls.jsonl"
    chat = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Checking.\n<tool_call>\n{'name': 'weather', "
             "'arguments': {'city': 'Oslo', 'metric': True}}\n</tool_call>"},
            {"role": "tool", "content": "<tool_response>\nrain\n</tool_response>"},
            {"role": "assistant", "content": "Rain."}]
    text_only = [{"role": "user", "content": "How do I mark a call?"},
                 {"role": "assistant", "content": "Wrap it in <tool_call> and </tool_call>."},
                 {"role": "assistant", "content": "<tool_call>{broken</tool_call>"}]
    path.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"messages": text_only})
                    + "\n")
    rows = _ingest(tmp_path, [InputConfig(path=str(path))])[0].to_pylist()
    got = rows[0]["messages"]
    assert got[1]["content"] == "Checking."
    assert json.loads(json.loads(got[1]["tool_calls"])[0]["function"]["arguments"]) == {
        "city": "Oslo", "metric": True}
    assert (got[2]["content"], got[2]["name"]) == ("rain", None)
    # text about the tags, and a block that is no call, stay text for the filters to judge
    assert [m["content"] for m in rows[1]["messages"]] == [m["content"] for m in text_only]
    assert all(m["tool_calls"] is None for m in rows[1]["messages"])


def test_jsonl_malformed_unknown_blank_and_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"id": "a", "prompt": "p", "completion": "c"}), "{broken", "",
             json.dumps({"text": "no shape"}), '"a bare string"',
             json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})]
    path.write_text("\n".join(lines), encoding="utf-8")  # no trailing newline
    table, files = _ingest(tmp_path, [InputConfig(path=str(path))])
    rows = table.to_pylist()
    assert [(r["_line"], r["_reason"]) for r in rows] == [
        (1, None), (2, "malformed_json"), (4, "unknown_format"), (5, "malformed_json"), (6, None)]
    assert rows[0]["id"] == "a" and rows[0]["source"] == "mixed"
    assert rows[1]["_raw"] == "{broken" and rows[1]["id"] is None
    assert files[0].kind == "jsonl" and len(files[0].sha256) == 64


def test_a_line_that_is_not_utf8_is_malformed_not_silently_replaced(tmp_path):
    """A Latin-1 line used to become "Caf\ufffd" in train.jsonl with no reason on record."""
    path = tmp_path / "latin1.jsonl"
    good = {"messages": [{"role": "user", "content": "Café?"},
                         {"role": "assistant", "content": "Oui."}]}
    path.write_bytes(json.dumps(good, ensure_ascii=False).encode("utf-8") + b"\n"
                     + json.dumps(good, ensure_ascii=False).encode("latin-1") + b"\n")
    rows = _ingest(tmp_path, [InputConfig(path=str(path))])[0].to_pylist()
    assert [(r["_line"], r["_reason"]) for r in rows] == [(1, None), (2, "malformed_json")]
    assert rows[0]["messages"][0]["content"] == "Café?"
    assert "Caf\ufffd?" in rows[1]["_raw"]  # the raw line, kept for rejected.jsonl


def test_a_lone_surrogate_is_malformed_and_a_bom_is_not_text(tmp_path):
    """An emoji cut in half (`"\\ud83d"`, which json reads) aborted the whole run with a
    UnicodeEncodeError traceback; a byte-order mark lost line 1 as malformed_json, but
    only for shapes the Arrow reader leaves to the per-row path (alpaca here)."""
    def alpaca(i: int, out: str) -> str:
        return '{"instruction": "How long is river %d?", "output": "%s"}' % (i, out)

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([
        alpaca(0, "10 km."), alpaca(1, "cut \\ud83d here."), alpaca(2, "whole \\ud83d\\ude00 one."),
        alpaca(3, "low \\uDE00 half.")]).encode("utf-8") + b"\n")
    rows = _ingest(tmp_path, [InputConfig(path=str(path))])[0].to_pylist()
    assert [(r["_line"], r["_reason"]) for r in rows] == [
        (1, None), (2, "malformed_json"), (3, None), (4, "malformed_json")]
    assert rows[0]["messages"][0]["content"] == "How long is river 0?"
    assert rows[2]["messages"][1]["content"] == "whole \U0001F600 one."
    assert "\\ud83d" in rows[1]["_raw"]


def test_a_json_array_file_is_read_as_rows(tmp_path):
    """Alpaca's `alpaca_data.json` is one pretty-printed JSON array: each of its lines
    became a malformed_json "row" and the run ended "train is empty"."""
    from data_engine.readers.ingest import check_shapes

    rows = [{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"}
            for i in range(5)] + ["a bare string", {"instruction": "\ud83d", "output": "x"}]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    check_shapes([InputConfig(path=str(path))])  # the first rows have a shape
    table, files = _ingest(tmp_path, [InputConfig(path=str(path))], shard_rows=3)
    got = table.to_pylist()
    assert files[0].kind == "json" and len(got) == 7
    assert [(r["_line"], r["_reason"]) for r in got] == [
        (1, None), (2, None), (3, None), (4, None), (5, None), (6, "malformed_json"),
        (7, "malformed_json")]
    assert turns(got[4]["messages"]) == [("user", "Add 4 and 1."), ("assistant", "5")]
    assert got[0]["source"] == "alpaca_data" and got[5]["_raw"] == '"a bare string"'
    (tmp_path / "broken.json").write_text('[{"instruction": "x", "output": "y"},')
    with pytest.raises(InputError, match="starts like a JSON array but is not one"):
        plan_shards([InputConfig(path=str(tmp_path / "broken.json"))], 10)


def test_a_folder_holding_files_of_a_type_not_read_is_refused(tmp_path):
    """A folder of shards read only its .jsonl files: 5 of 15 rows, no warning, while the
    .jsonl.gz was skipped and the .arrow (read when given alone) too."""
    import gzip

    folder = tmp_path / "data"
    folder.mkdir()
    line = json.dumps({"messages": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}]}) + "\n"
    (folder / "part-000.jsonl").write_text(line * 2)
    with pa.OSFile(str(folder / "part-001.arrow"), "wb") as sink:
        table = pa.Table.from_pylist([json.loads(line)] * 3)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "README.md").write_text("# not data")
    shards, files = plan_shards([InputConfig(path=str(folder))], 10)
    assert [(Path(f.path).name, f.kind) for f in files] == [("part-000.jsonl", "jsonl"),
                                                            ("part-001.arrow", "arrow")]
    assert sum(s.rows for s in shards) == 5
    with gzip.open(folder / "part-002.jsonl.gz", "wt") as fh:
        fh.write(line)
    with pytest.raises(InputError) as err:
        plan_shards([InputConfig(path=str(folder))], 10)
    assert "data files of a type not read: part-002.jsonl.gz" in str(err.value)
    assert "gunzip" in str(err.value)


def test_parquet_file_and_folder(tmp_path):
    rows = [{"instruction": f"{i}+1?", "input": "", "output": f"等于 {i + 1}。"} for i in range(5)]
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet", row_group_size=2)
    table, _ = _ingest(tmp_path, [InputConfig(path=str(folder / "part-0.parquet"), source="math")])
    assert table.column("_line").to_pylist() == [1, 2, 3, 4, 5]
    assert set(table.column("source").to_pylist()) == {"math"}
    assert table.column("_reason").null_count == 5
    table, _ = _ingest(tmp_path, [InputConfig(path=str(folder))])
    assert table.num_rows == 5 and set(table.column("source").to_pylist()) == {"pq"}


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list([{"messages": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": f"Hello {i}!"}]}
                            for i in range(3)])
    ds.save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    table, files = _ingest(tmp_path, [InputConfig(path=str(tmp_path / "one"))])
    assert table.num_rows == 3 and files[0].kind == "arrow"
    assert table.column("source").to_pylist() == ["one"] * 3
    table, files = _ingest(tmp_path, [InputConfig(path=str(tmp_path / "dict"))])
    assert table.num_rows == 4 and len(files) == 2


def test_format_override_rejects_other_shapes(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" +
                    json.dumps({"messages": [{"role": "user", "content": "u"}]}) + "\n")
    table, _ = _ingest(tmp_path, [InputConfig(path=str(path), format="prompt_completion")])
    assert table.column("_reason").to_pylist() == [None, "unknown_format"]


def test_bad_inputs_raise_naming_the_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        plan_shards([InputConfig(path=str(tmp_path / "missing.jsonl"))], 10)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unsupported file type"):
        plan_shards([InputConfig(path=str(tmp_path / "data.csv"))], 10)
    assert default_source(str(tmp_path / "titles_ja.jsonl")) == "titles_ja"


def _both_paths(path, group_column="group"):
    """(Arrow path's table or None, per-row path's table) of a one-shard JSONL file."""
    from data_engine.readers.arrow_jsonl import read_shard
    from data_engine.readers.ingest import _append
    from data_engine.readers.shards import iter_shard, read_bytes
    from data_engine.schema import WORK_SCHEMA

    item = InputConfig(path=str(path))
    (shard,), _ = plan_shards([item], 1000)
    fast = read_shard(read_bytes(shard), shard.first_line, shard.path, "src", group_column)
    columns = {f.name: [] for f in WORK_SCHEMA}
    for line, row, raw in iter_shard(shard):
        _append(columns, row, raw, line, shard.path, "src", item, group_column)
    return fast, pa.table(columns, schema=WORK_SCHEMA)


PLAIN = [
    {"id": "a", "messages": [
        {"role": "system", "content": "Sé breve.\r\nok"},
        {"role": "user", "content": "東京タワーの高さは？ \"quoted\" \\ "},
        {"role": "assistant", "content": "333 m です。"}], "tags": ["x", "y"]},
    {"messages": [{"role": "user", "content": None}, {"role": "assistant"}], "source": "",
     "tags": []},  # no id: hashed; null and missing content: ""
    {"id": "", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "t"}],
     "source": "own", "group": "g1", "extra": {"nested": [1, 2]}},
    {"id": "d", "messages": [], "tags": None, "group": None},
]


def test_arrow_jsonl_path_equals_the_per_row_path(tmp_path):
    path = tmp_path / "plain.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in PLAIN]
    # blank and whitespace-only lines, CRLF endings and no final newline
    path.write_bytes(("\n \n".join(lines[:2]) + "\r\n\t\n" + "\r\n".join(lines[2:])).encode())
    fast, slow = _both_paths(path)
    assert fast is not None and fast.equals(slow), (fast.to_pylist(), slow.to_pylist())
    assert fast.column("_line").to_pylist() == [1, 3, 5, 6]
    # integer ids and group values read as their text; a tag given as one string
    path.write_text(json.dumps({"id": 7, "group": 3, "tags": "one", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    fast, slow = _both_paths(path)
    assert fast is not None and fast.equals(slow)
    assert fast.column("tags").to_pylist() == [["one"]]


@pytest.mark.parametrize("odd", [
    "{not json",
    '{"id": "x", "messages": [{"role": "user", "content": "a"}]} {"id": "y"}',
    '{"id": "x", "conversations": [{"from": "human", "value": "a"}]}',
    '{"id": "x", "messages": [{"role": "User", "content": "a"}]}',
    '{"id": "x", "messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}',
    '{"id": "x", "messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}]}',
    '{"id": "x", "messages": [{"role": "assistant", "content": "", "tool_calls": []}]}',
    '{"id": "x", "messages": [{"role": "tool", "content": "a", "tool_call_id": "c1"}]}',
    '{"id": "x", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "f"}]}',
    '{"id": 1.5, "messages": [{"role": "user", "content": "a"}]}',
    '{"id": "x", "messages": [{"role": "user", "content": "a"}], "tags": ["t", null]}',
    '{"id": "x", "messages": null}',
])
def test_arrow_jsonl_path_leaves_odd_shards_to_the_per_row_path(tmp_path, odd):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(PLAIN[0], ensure_ascii=False) + "\n" + odd + "\n",
                    encoding="utf-8")
    fast, slow = _both_paths(path)
    assert fast is None
    assert slow.num_rows >= 2
    path.write_bytes(json.dumps(PLAIN[0]).encode() + b"\n" + b'{"id": "\xff"}\n')  # bad UTF-8
    assert _both_paths(path)[0] is None
