"""Tool-call accuracy: every tool-call turn of the data is a probe; replies to it are parsed
from the template's `<tool_call>` blocks and compared with the data's calls (no model
needed)."""

from __future__ import annotations

import json

import pytest

from evaluator.data import call_probes, to_row
from evaluator.toolcalls import expected_calls, parse_calls, summarize

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}}}}}]


def _calling(*calls: tuple[str, dict]):
    """A row that ends with these calls, tool_calls as the data engine writes them (JSON
    text, arguments as JSON text)."""
    listed = [{"id": f"c{i}", "type": "function",
               "function": {"name": name, "arguments": json.dumps(args)}}
              for i, (name, args) in enumerate(calls)]
    return to_row({"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Kyoto and Osaka?"},
        {"role": "assistant", "content": "", "tool_calls": json.dumps(listed)}]}, "x:1")


def _answering(tools=TOOLS):
    return to_row({"tools": tools, "messages": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there"}]}, "x:2")


def _block(name: str, arguments) -> str:
    """A call as the training template renders it."""
    return ('<tool_call>\n{"name": "' + name + '", "arguments": '
            + (arguments if isinstance(arguments, str) else json.dumps(arguments))
            + "}\n</tool_call>")


def _reply(text: str, error: str | None = None) -> dict:
    return {"output": text, "error": error}


def test_a_row_ending_with_calls_names_them_and_others_do_not():
    row = _calling(("get_weather", {"city": "Kyoto", "days": 3}))
    assert row.reference is None
    assert expected_calls(row) == [("get_weather", {"city": "Kyoto", "days": 3})]
    assert expected_calls(_answering()) is None and _answering().calls is None


@pytest.mark.parametrize("text, calls", [
    (_block("get_weather", {"city": "Kyoto"}), [("get_weather", {"city": "Kyoto"})]),
    # text around the blocks, two parallel calls, arguments given as JSON text
    ("Let me check.\n" + _block("a", {}) + "\n" + _block("b", json.dumps('{"x": 1}')),
     [("a", {}), ("b", {"x": 1})]),
    ("It is sunny in Kyoto.", None),
    (_block("get_weather", '{"city": "Kyoto"'), None),   # broken JSON: a parser rejects it
    ('<tool_call>\n{"arguments": {}}\n</tool_call>', None),  # no name
    ('<tool_call>\n["get_weather"]\n</tool_call>', None),
    ("<tool_call>\n{\"name\": \"a\"}", None),            # never closed (cut at max_tokens)
])
def test_calls_are_read_from_the_templates_blocks(text, calls):
    assert parse_calls(text) == calls


def test_every_call_turn_is_a_probe_asked_the_turns_before_it():
    """Data engine rows end with a text reply: their calls sit inside the conversation."""
    first = json.dumps([{"id": "a", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Kyoto"}'}}])
    second = json.dumps([{"id": "b", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Osaka"}'}}])
    row = to_row({"id": "r1", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Kyoto?"},
        {"role": "assistant", "content": "", "tool_calls": first},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "And Osaka?"},
        {"role": "assistant", "content": "", "tool_calls": second},
        {"role": "tool", "tool_call_id": "b", "content": "rain"},
        {"role": "assistant", "content": "Rain."}]}, "x:1")
    probes = call_probes([row, _answering(), _calling(("get_weather", {"city": "Nara"}))])
    assert [p.id for p in probes] == ["r1#call1", "r1#call2", "x:1#call1"]
    assert [m["content"] for m in probes[0].prompt] == ["Kyoto?"]
    assert [m["role"] for m in probes[1].prompt] == ["user", "assistant", "tool", "assistant",
                                                     "user"]
    assert probes[1].prompt[1]["tool_calls"][0]["id"] == "a"  # earlier calls stay as asked
    assert [expected_calls(p) for p in probes] == [[("get_weather", {"city": "Kyoto"})],
                                                   [("get_weather", {"city": "Osaka"})],
                                                   [("get_weather", {"city": "Nara"})]]
    assert all(p.tools == TOOLS and p.reference is None and p.answered for p in probes)
    assert probes[1].question == "And Osaka?"


def test_exact_names_parsed_and_spurious_are_counted_per_reply():
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    osaka = ("get_weather", {"city": "Osaka", "days": 3})
    probes = [_calling(kyoto)] * 6 + [_calling(kyoto, osaka)]
    probe_replies = [
        # same call: key order, spacing and 3 vs 3.0 do not matter
        _reply('<tool_call>\n{"arguments": {"days": 3.0, "city": "Kyoto"}, '
               '"name": "get_weather"}\n</tool_call>'),
        _reply(_block("get_weather", {"city": "Kyoto", "days": 4})),   # wrong argument
        _reply(_block("get_forecast", {"city": "Kyoto", "days": 3})),  # wrong function
        _reply(_block("get_weather", {"city": "Kyoto", "days": True})),  # true is not 1..3
        _reply("The weather in Kyoto is sunny."),                      # answered, no call
        _reply("", error="timeout: no reply"),                          # a failed request
        # parallel calls in the other order
        _reply(_block("get_weather", osaka[1]) + "\n" + _block("get_weather", kyoto[1])),
    ]
    rows = [_answering(), _answering(), _answering(tools=None)]
    replies = [
        _reply(_block("get_weather", {"city": "Kyoto"})),  # called where it should answer
        _reply("Hello there"),
        _reply(_block("x", {})),  # a row offering no tools is not counted either way
    ]
    summary = summarize(probes, probe_replies, rows, replies)
    assert [r["call_exact"] for r in probe_replies] == [True, False, False, False, False, False,
                                                        True]
    assert [r["call_names"] for r in probe_replies] == [True, True, False, True, False, False,
                                                        True]
    assert [r["call_parsed"] for r in probe_replies] == [True, True, True, True, False, False,
                                                         True]
    assert [r["called"] for r in replies] == [True, False, True]
    assert summary == {"rate": 2 / 7, "calls": 7, "parsed": 5, "names": 4, "exact": 2,
                       "answer_rows": 2, "spurious": 1, "format": "hermes"}


def test_llama3_json_calls_are_read_in_their_own_format():
    """Llama 3.1-3.3 write a call as the bare turn {"name", "parameters"}: read as such, a
    JSON answer without "parameters" is no call, and a <tool_call> block is no Llama call."""
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    probes = [_calling(kyoto)] * 4
    probe_replies = [
        _reply('{"name": "get_weather", "parameters": {"days": 3, "city": "Kyoto"}}'),
        _reply('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Kyoto", '
               '"days": 4}}'),
        _reply(_block(*kyoto)),  # hermes: not what this model's template trains
        _reply('{"name": "get_weather", "parameters": {"city": "Kyoto"}} Let me check.'),
    ]
    rows = [_answering(), _answering()]
    replies = [_reply('{"name": "Kyoto", "population": 1460000}'),  # a JSON answer
               _reply('{"name": "get_weather", "parameters": {"city": "Kyoto"}}')]
    summary = summarize(probes, probe_replies, rows, replies, "llama3_json")
    assert [r["call_parsed"] for r in probe_replies] == [True, True, False, False]
    assert [r["call_exact"] for r in probe_replies] == [True, False, False, False]
    assert [r["called"] for r in replies] == [False, True]
    assert (summary["exact"], summary["parsed"], summary["spurious"], summary["format"]) == (
        1, 2, 1, "llama3_json")


def test_qwen35_xml_calls_are_read_in_their_own_format():
    """Qwen3.5 writes a call as `<function=...>` and `<parameter=...>` tags inside its
    <tool_call> block, a string bare and a number as JSON: read as such; a JSON block is no
    call of this format, nor is a block with text outside its tags."""
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})

    def xml(name, **params):
        inner = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
        return f"<tool_call>\n<function={name}>\n{inner}</function>\n</tool_call>"

    probes = [_calling(kyoto)] * 4 + [_calling(kyoto, ("get_weather", {"city": "Osaka"}))]
    probe_replies = [
        _reply(xml("get_weather", days=3, city="Kyoto")),
        _reply("<think>\nAsk the tool.\n</think>\n\n" + xml("get_weather", city="Kyoto", days=4)),
        _reply(_block(*kyoto)),  # hermes JSON: not what this template trains
        _reply(xml("get_weather", city="Kyoto").replace("</function>", "oops</function>")),
        _reply(xml("get_weather", city="Osaka") + "\n" + xml("get_weather", city="Kyoto", days=3)),
    ]
    rows = [_answering(), _answering()]
    replies = [_reply("Hello there"), _reply(xml("get_weather", city="Kyoto"))]
    summary = summarize(probes, probe_replies, rows, replies, "qwen3_xml")
    assert [r["call_parsed"] for r in probe_replies] == [True, True, False, False, True]
    assert [r["call_exact"] for r in probe_replies] == [True, False, False, False, True]
    assert [r["called"] for r in replies] == [False, True]
    assert (summary["exact"], summary["parsed"], summary["spurious"], summary["format"]) == (
        2, 3, 1, "qwen3_xml")


def test_mistral_calls_are_read_with_or_without_their_control_token():
    """Mistral writes `[TOOL_CALLS]` and a JSON list of {"name", "arguments"}; a server that
    drops control tokens leaves the list alone, still a call. A JSON list of anything else
    is an answer."""
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    listed = ('[{"name": "get_weather", "arguments": {"city": "Kyoto", "days": 3}, '
              '"id": "a1b2c3d4e"}]')
    probes = [_calling(kyoto)] * 3
    probe_replies = [_reply("[TOOL_CALLS]" + listed), _reply(listed), _reply(_block(*kyoto))]
    rows = [_answering(), _answering()]
    replies = [_reply('[{"name": "Kyoto", "population": 1460000}]'), _reply(listed)]
    summary = summarize(probes, probe_replies, rows, replies, "mistral")
    assert [r["call_exact"] for r in probe_replies] == [True, True, False]
    assert [r["called"] for r in replies] == [False, True]
    assert (summary["parsed"], summary["spurious"], summary["format"]) == (2, 1, "mistral")


def test_mistral_v11_calls_are_read_with_or_without_their_control_tokens():
    """Ministral 3, Mistral Small 3.2 and Devstral write each call as
    `[TOOL_CALLS]name[ARGS]{...}` (vLLM's `mistral` parser reads both forms); a server that
    drops control tokens leaves `name{...}`. Text after a call, or a bare JSON object, is no
    call."""
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    osaka = ("get_weather", {"city": "Osaka"})
    args = '{"city": "Kyoto", "days": 3}'
    probes = [_calling(kyoto)] * 4 + [_calling(kyoto, osaka)]
    probe_replies = [
        _reply("[TOOL_CALLS]get_weather[ARGS]" + args),
        _reply("get_weather" + args),  # the control tokens dropped
        _reply("get_weather" + args + " Let me know if you need more."),
        _reply(args),
        _reply('[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Osaka"}'
               "[TOOL_CALLS]get_weather[ARGS]" + args),
    ]
    rows = [_answering(), _answering()]
    replies = [_reply("Hello there"), _reply("get_weather" + args)]
    summary = summarize(probes, probe_replies, rows, replies, "mistral")
    assert [r["call_parsed"] for r in probe_replies] == [True, True, False, False, True]
    assert [r["call_exact"] for r in probe_replies] == [True, True, False, False, True]
    assert [r["called"] for r in replies] == [False, True]
    assert (summary["exact"], summary["spurious"]) == (3, 1)


def test_gemma4_calls_are_read_with_or_without_their_control_tokens():
    """Gemma 4 writes `<|tool_call>call:name{key:value}<tool_call|>`, strings between `<|"|>`
    tokens and numbers bare; a server that drops control tokens leaves `call:name{...}` with
    bare strings, read as JSON where they parse. An unclosed string is a broken call, and
    an answer is no call."""
    q = '<|"|>'
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    probes = [_calling(kyoto)] * 5 + [_calling(kyoto, ("get_weather", {"city": "Osaka"}))]
    probe_replies = [
        _reply(f"<|tool_call>call:get_weather{{city:{q}Kyoto{q},days:3}}<tool_call|>"),
        _reply("call:get_weather{city:Kyoto,days:3}"),  # the control tokens dropped
        _reply(f"<|tool_call>call:get_weather{{city:{q}Kyoto{q},days:{q}3{q}}}<tool_call|>"),
        _reply(f"<|tool_call>call:get_weather{{city:{q}Kyoto}}<tool_call|>"),
        _reply("It is sunny in Kyoto."),
        _reply(f"<|tool_call>call:get_weather{{city:{q}Osaka{q}}}<tool_call|>"
               f"<|tool_call>call:get_weather{{days:3,city:{q}Kyoto{q}}}<tool_call|>"),
    ]
    rows = [_answering(), _answering()]
    replies = [_reply("Hello there"), _reply(f"<|tool_call>call:get_weather{{city:{q}")]
    summary = summarize(probes, probe_replies, rows, replies, "gemma4")
    assert [r["call_parsed"] for r in probe_replies] == [True, True, True, False, False, True]
    # a quoted "3" is a string, not the data's integer
    assert [r["call_exact"] for r in probe_replies] == [True, True, False, False, False, True]
    assert [r["called"] for r in replies] == [False, True]  # broken, but a call
    assert (summary["exact"], summary["parsed"], summary["format"]) == (3, 4, "gemma4")


@pytest.mark.parametrize("text", [
    '<|tool_call>call:f{a:{<|"|>k<|"|>:[1,<|"|>x, y<|"|>,true]},b:null}<tool_call|>',
    "call:f{a:{k:[1,x,true]},b:null}"])
def test_gemma4_nested_values_are_read_as_its_template_writes_them(text):
    """Objects (their keys quoted inside values), lists, booleans and null, as Gemma 4's
    `format_argument` writes them; without the quote tokens a string with a comma splits."""
    calls = parse_calls(text, "gemma4")
    assert calls is not None and calls[0][0] == "f"
    expected = "x, y" if "<|" in text else "x"
    assert calls[0][1] == {"a": {"k": [1, expected, True]}, "b": None}


def test_calls_the_server_parsed_out_of_the_text_count_as_made():
    """A server that parses calls into `tool_calls` (transformers' does for Qwen and Gemma 4)
    leaves the text without them: those calls are scored, and called where a row answers.
    A server-parsed call whose arguments are not an object is not a parseable call."""
    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    probes = [_calling(kyoto)] * 3
    served = {"name": "get_weather", "arguments": {"city": "Kyoto", "days": 3}}
    probe_replies = [{**_reply(""), "tool_calls": [served]},
                     {**_reply(""), "tool_calls": [{**served, "arguments": "{broken"}]},
                     {**_reply("Checking."), "tool_calls": None}]
    replies = [{**_reply(""), "tool_calls": [served]}, _reply("Hello there")]
    summary = summarize(probes, probe_replies, [_answering(), _answering()], replies)
    assert [r["call_parsed"] for r in probe_replies] == [True, False, False]
    assert [r["call_exact"] for r in probe_replies] == [True, False, False]
    assert [r["called"] for r in replies] == [True, False]
    assert (summary["exact"], summary["spurious"]) == (1, 1)


def test_qwen35_values_are_typed_by_the_offered_tools_schema():
    """Qwen3.5's template writes every value bare (`"123"` and `123` alike, True as `True`),
    so a call is read back as vLLM's parser reads it, by the tool's schema: a string stays
    text, a boolean and an integer are read as such. The call as the model's own template
    renders it scores exact."""
    from trainer_service.recipe.chat_format import _render

    from tests.trainer_service.test_chat_format import llama_cpp_template, qwen_tokenizer

    tools = [{"type": "function", "function": {
        "name": "lookup", "description": "Look a code up.", "parameters": {
            "type": "object", "properties": {"zip": {"type": "string"},
                                             "exact": {"type": "boolean"},
                                             "limit": {"type": "integer"},
                                             "tags": {"type": "array"}}}}}]
    arguments = {"zip": "123", "exact": True, "limit": 3, "tags": ["a", "b"]}
    tok = qwen_tokenizer(fresh=True)
    tok.chat_template = llama_cpp_template("Qwen3.5-4B.jinja")
    rendered = _render(tok, [{"role": "user", "content": "Find 123"}, {
        "role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "lookup", "arguments": arguments}}]}],
        tok.chat_template, False, tools)
    reply = rendered[rendered.rindex("<tool_call>"):rendered.rindex("</tool_call>") + 12]
    assert "<parameter=exact>\nTrue\n</parameter>" in reply
    assert parse_calls(reply, "qwen3_xml", tools) == [("lookup", arguments)]
    assert parse_calls(reply, "qwen3_xml")[0][1]["zip"] == 123  # no schema: read as JSON
    probe = to_row({"tools": tools, "messages": [
        {"role": "user", "content": "Find 123"},
        {"role": "assistant", "content": "", "tool_calls": json.dumps([
            {"type": "function", "function": {"name": "lookup",
                                              "arguments": json.dumps(arguments)}}])}]}, "x:3")
    summary = summarize([probe], [_reply(reply)], [], [], "qwen3_xml")
    assert summary["exact"] == 1


def test_calls_in_an_unknown_form_are_not_measured_unless_a_server_parsed_them():
    """A template whose calls no parser here reads ("unknown"): without server-parsed calls,
    accuracy and spurious calls are None (not 0, which would read as a model that never
    calls), and the gate skips both, saying why; calls a server parsed are still scored."""
    from evaluator.gate import GateConfig, evaluate_gate

    kyoto = ("get_weather", {"city": "Kyoto", "days": 3})
    written = _reply('<function name="get_weather"><param name="city">Kyoto</param></function>')
    summary = summarize([_calling(kyoto)], [dict(written)], [_answering()], [dict(written)],
                        "unknown")
    assert (summary["rate"], summary["spurious"], summary["format"]) == (None, None, "unknown")
    gate = evaluate_gate({"tool_calls": {"model": summary}},
                         GateConfig(tool_call_exact_min=0.5, tool_call_spurious_max=0.0))
    checks = {c["name"]: c for c in gate["checks"]}
    for name in ("tool_calls", "tool_call_spurious"):
        assert checks[name]["status"] == "skipped"
        assert "format unknown" in checks[name]["reason"]
    served = {**_reply(""), "tool_calls": [{"name": "get_weather",
                                             "arguments": {"city": "Kyoto", "days": 3}}]}
    summary = summarize([_calling(kyoto)], [served], [_answering()], [_reply("Hi")], "unknown")
    assert (summary["rate"], summary["spurious"]) == (1.0, 0)


def test_one_call_more_or_less_is_not_the_same_calls():
    kyoto = ("get_weather", {"city": "Kyoto"})
    probes = [_calling(kyoto), _calling(kyoto, kyoto)]
    replies = [_reply(_block(*kyoto) + _block(*kyoto)), _reply(_block(*kyoto))]
    summarize(probes, replies, [], [])
    assert [(r["call_names"], r["call_exact"]) for r in replies] == [(False, False)] * 2


def test_rows_without_tools_have_no_tool_call_summary():
    rows = [to_row({"messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello"}]}, "x:1")]
    replies = [_reply("Hello")]
    assert call_probes(rows) == []
    assert summarize([], [], rows, replies) is None
    assert replies[0]["called"] is False
