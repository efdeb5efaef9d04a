"""Tool-call accuracy: when the data's next turn is a tool call, does the model make it?

Every assistant turn that calls tools is a probe (`data.call_probes`): the model is asked
the turns before it, with the row's tools, and `tool_choice: none`, so a model that learned
to call answers in the text its template trained. That text has the template's call format
(`chat_format.call_format`, read from the model's own template): Hermes-style blocks,
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, as our ChatML template and
Qwen2.5's and Qwen3's render calls (vLLM's `hermes` parser); Qwen3.5's blocks of
`<function=...>` and `<parameter=...>` tags (`qwen3_xml`); Llama 3.1-3.3's bare
`{"name": ..., "parameters": {...}}` (`llama3_json`); Mistral's `[TOOL_CALLS]` and a
JSON list of calls, or `[TOOL_CALLS]name[ARGS]{...}` per call (`mistral`); or Gemma 4's
`<|tool_call>call:name{key:value}<tool_call|>` (`gemma4`). Per reply to a probe:

- `call_parsed`: the reply holds at least one call, and every call has a string `name`
  and arguments in the format's form (a client's parser rejects the whole reply otherwise);
- `call_names`: the same function names as the expected calls, as a multiset (parallel calls
  in any order);
- `call_exact`: the same names with equal arguments (parsed JSON compared as values: key
  order, spacing and 1 vs 1.0 do not matter).

A server that parses calls out of the reply into `message.tool_calls` anyway (transformers'
server does for Qwen and Gemma 4 models, whatever `tool_choice` says, and leaves them out
of `content`) has its parsed calls read instead (`made_calls`).

Rows that end with a text reply but offer tools are the other half: a reply holding a
call there called a tool when it should have answered (`spurious`). Calls are read by
`parse_tool_calls`, beside the template that renders them; the training job's sanity
generation reads its held-out calls the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

from evaluator.data import EvalRow
from trainer_service.recipe.chat_format import call_arguments, holds_call
from trainer_service.recipe.chat_format import parse_tool_calls as parse_calls

Call = tuple[str, Any]  # (function name, arguments as parsed JSON, or their text)


def expected_calls(row: EvalRow) -> list[Call] | None:
    """The calls a probe (or a row that ends with calls) expects; None for any other row."""
    if not row.calls:
        return None
    calls = []
    for call in row.calls:
        function = call.get("function") or call
        calls.append((str(function.get("name", "")), call_arguments(function.get("arguments"))))
    return calls


def _same(a: Any, b: Any) -> bool:
    """JSON values equal as values: `1 == 1.0`, but `true != 1` (Python's bool is an int)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _matched(expected: list[Call], made: list[Call], arguments: bool) -> bool:
    """The two lists hold the same calls in any order (names only, or names and arguments)."""
    if len(expected) != len(made):
        return False
    left = list(made)
    for name, args in expected:
        hit = next((i for i, (n, a) in enumerate(left)
                    if n == name and (not arguments or _same(args, a))), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def made_calls(reply: dict[str, Any], fmt: str = "hermes",
               tools: list[dict[str, Any]] | None = None) -> list[Call] | None:
    """The calls a reply makes: those the server parsed out of it (`tool_calls`: transformers'
    server does for Qwen and Gemma 4 models, whatever `tool_choice` says), else those its
    text holds in the template's format `fmt` (typed by the offered ``tools``' schemas where
    the format writes values as bare text); None when it makes none, or any is malformed
    (a server-parsed call whose arguments are not an object)."""
    if reply["error"] is not None:
        return None
    served = reply.get("tool_calls")
    if served:
        if not all(isinstance(c["name"], str) and isinstance(c["arguments"], dict)
                   for c in served):
            return None
        return [(c["name"], c["arguments"]) for c in served]
    return parse_calls(reply["output"], fmt, tools)


def score_call(probe: EvalRow, reply: dict[str, Any], fmt: str = "hermes") -> None:
    """Writes a call probe's reply's `call_parsed`, `call_names` and `call_exact`, reading
    calls in the template's format `fmt` (`chat_format.call_format`), or as the server
    parsed them (`made_calls`)."""
    made = made_calls(reply, fmt, probe.tools)
    expected = expected_calls(probe) or []
    reply["call_parsed"] = made is not None
    reply["call_names"] = made is not None and _matched(expected, made, arguments=False)
    reply["call_exact"] = made is not None and _matched(expected, made, arguments=True)


def called(reply: dict[str, Any], fmt: str = "hermes") -> bool:
    """The reply calls a tool: the server parsed a call out of it, or its text holds a
    `<tool_call>` block, or a Llama 3.1, Mistral or Gemma 4 call."""
    return reply["error"] is None and (bool(reply.get("tool_calls"))
                                       or holds_call(reply["output"], fmt))


def summarize(probes: Sequence[EvalRow], probe_replies: Sequence[dict[str, Any]],
              rows: Sequence[EvalRow], replies: Sequence[dict[str, Any]],
              fmt: str = "hermes") -> dict[str, Any] | None:
    """Scores the replies to the call probes (`data.call_probes`) and marks the rows'
    replies that call (`called`); the side's summary, or None when the rows hold no call
    and offer no tools. `rate` is the exact-call rate over the probes (a failed request
    counts as a miss); `spurious` counts calls in replies to rows that offer tools but
    answer in text. `fmt` is the model's call format (`chat_format.call_format`); when it
    is "unknown" and no server parsed a call, `rate` and `spurious` are None (not measured)."""
    for probe, reply in zip(probes, probe_replies):
        score_call(probe, reply, fmt)
    for reply in replies:
        reply["called"] = called(reply, fmt)
    answering = [r for row, r in zip(rows, replies)
                 if row.tools and row.reference is not None]
    if not probes and not answering:
        return None
    exact = sum(r["call_exact"] for r in probe_replies)
    # a template that writes calls in a form no parser here reads ("unknown"): only calls a
    # server parsed can be counted, and with none, nothing says whether the model called
    unread = fmt == "unknown" and not any(r.get("tool_calls") for r in [*probe_replies,
                                                                          *replies])
    return {"rate": exact / len(probes) if probes and not unread else None,
            "calls": len(probes), "parsed": sum(r["call_parsed"] for r in probe_replies),
            "names": sum(r["call_names"] for r in probe_replies), "exact": exact,
            "answer_rows": len(answering),
            "spurious": None if unread else sum(r["called"] for r in answering),
            "format": fmt}
