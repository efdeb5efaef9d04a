"""Maps one input row of a known shape onto the row schema's `messages` list.

Pure functions over plain Python values (one parsed JSON object or Parquet row); the ingest
stage calls them per row and turns `UnknownFormat` into a rejected row.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from typing import Any

Message = dict[str, str | None]

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}


_REQUIRED = {"messages": ("messages",), "sharegpt": ("conversations",),
             "alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion")}


# Message fields that enter a hashed id only when set: they joined the schema after ids were
# first hashed, and leaving them out when null keeps every earlier id (and split) the same.
_HASHED_WHEN_SET = ("tool_call_id", "name")


class UnknownFormat(ValueError):
    """The row matches no known shape (or a shape with values of the wrong type)."""


def detect_format(row: dict[str, Any], columns: dict[str, str] | None = None) -> str:
    """Names the shape of ``row``: messages, sharegpt, alpaca, prompt_completion or columns.
    A ``columns`` mapping whose user and assistant columns the row has comes first: it is
    the user's word on the shape (an Alpaca row mapped `system: instruction` was read as
    Alpaca, the mapping ignored)."""
    if columns and all(columns.get(k) in row for k in ("user", "assistant")):
        return "columns"
    if isinstance(row.get("messages"), list):
        return "messages"
    if isinstance(row.get("conversations"), list):
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if columns:
        missing = [f"{k}={columns[k]}" for k in ("user", "assistant") if columns[k] not in row]
        if not missing:
            return "columns"
        raise UnknownFormat(f"the `columns` mapping's {', '.join(missing)} "
                            f"{'is not a column' if len(missing) == 1 else 'are not columns'}"
                            " of the row, and it has no other known shape")
    raise UnknownFormat("no known shape (messages, conversations, instruction+output, "
                        "prompt+completion)")


def to_messages(row: dict[str, Any], fmt: str, columns: dict[str, str] | None = None
                ) -> list[Message]:
    """Returns the conversation in ``row`` as role/content messages for format ``fmt``."""
    if fmt == "auto":
        fmt = detect_format(row, columns)
    missing = [key for key in _REQUIRED.get(fmt, ()) if key not in row]
    if missing:
        raise UnknownFormat(f"format {fmt!r} needs {', '.join(missing)}")
    if fmt == "messages":
        return _read_text_calls([_openai_message(m)
                                 for m in _as_list(row.get("messages"), "messages")])
    if fmt == "sharegpt":
        return _read_text_calls(_sharegpt(row))
    if fmt == "alpaca":
        return _alpaca(row)
    if fmt == "prompt_completion":
        return _side(row.get("prompt"), "user") + _side(row.get("completion"), "assistant")
    if fmt == "columns":
        if not columns:
            raise UnknownFormat("format 'columns' needs a column mapping")
        return _columns(row, columns)
    raise UnknownFormat(f"unsupported format {fmt!r}")


def row_id(row: dict[str, Any], messages: list[Message], columns: dict[str, str] | None) -> str:
    """Keeps the row's own id; otherwise a stable id hashed from the conversation.

    Identical conversations get the same id wherever they come from, so the split (which
    hashes ids) puts them on the same side.
    """
    key = (columns or {}).get("id", "id")
    value = row.get(key)
    if value is not None and not isinstance(value, (dict, list)) and str(value) != "":
        return str(value)
    turns = [{k: v for k, v in m.items() if v is not None or k not in _HASHED_WHEN_SET}
             for m in messages]
    canonical = json.dumps(turns, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "h" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def tool_definitions(value: Any) -> list[dict[str, Any]] | None:
    """A row's `tools`: OpenAI's list of definitions, or its JSON text as ShareGPT exports
    write it; None when empty. UnknownFormat (a ValueError) says what is wrong."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError:
            raise UnknownFormat("tools: text that is not JSON") from None
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UnknownFormat("tools: expected a list of tool definitions (objects)")
    return value


def row_tools(row: dict[str, Any]) -> str | None:
    """The row's tool definitions as JSON text (the row schema's `tools`); None when none."""
    tools = tool_definitions(row.get("tools"))
    return None if tools is None else json.dumps(tools, ensure_ascii=False)


def row_tags(row: dict[str, Any]) -> list[str]:
    tags = row.get("tags")
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    if isinstance(tags, list):
        return [str(t) for t in tags if t is not None]
    raise UnknownFormat("tags: expected a list of strings")


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise UnknownFormat(f"{name}: expected a list")
    return value


def _text(value: Any, where: str) -> str:
    """Content as text: strings as they are, OpenAI content parts joined, null as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise UnknownFormat(f"{where}: only text content parts are supported")
        return "".join(parts)
    raise UnknownFormat(f"{where}: expected text, got {type(value).__name__}")


def _calls_text(value: Any) -> str | None:
    """A turn's tool calls as the JSON text of a list: a list as it is, one call given alone
    (an object, or its JSON text, as ShareGPT's `function_call` turns hold it) wrapped in one;
    None for no call (`[]`, as SDK dumps write it on every plain reply). Text that is not
    JSON is kept as it is, for the `bad_tool_call` filter to drop with its reason."""
    if isinstance(value, str):
        if value.strip() in ("", "[]", "null"):
            return None
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if not isinstance(parsed, dict):
            return value
        value = parsed
    if isinstance(value, dict):
        value = [value]
    return json.dumps(value, ensure_ascii=False) if value else None


# Calls and tool results written into the text as Hermes's function-calling format writes
# them (NousResearch/hermes-function-calling-v1, glaive conversions): `<tool_call>` blocks
# holding {"name", "arguments"}, often as a Python dict (`{'arguments': {...}, 'name': 'f'}`),
# and `<tool_response>` blocks. Trained as text, the Python form teaches calls that no
# parser (vLLM's hermes one, the evaluator's) reads; read as calls, the chat template writes
# them in the model's own form.
_TEXT_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_TEXT_RESULT = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)


def _literal(text: str) -> Any:
    """JSON text, or a Python literal (single quotes, True/None); None for neither."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def text_calls(content: str) -> tuple[str, str | None]:
    """An assistant turn's text with its `<tool_call>` blocks read as calls: (the text left,
    the calls' JSON text); the text unchanged and None when it has none, or when any block
    is not a call (a name and arguments), which stays text for the filters to judge."""
    if "<tool_call>" not in content:
        return content, None
    calls = []
    for block in _TEXT_CALL.findall(content):
        value = _literal(block)
        if not (isinstance(value, dict) and isinstance(value.get("name"), str)):
            return content, None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _literal(arguments) if arguments.strip() else {}
        if not isinstance(arguments, dict):
            return content, None
        calls.append({"type": "function", "function": {
            "name": value["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}})
    if not calls:
        return content, None
    rest = _TEXT_CALL.sub("", content).strip()
    if "<tool_call>" in rest or "</tool_call>" in rest:  # an unclosed block: leave it all
        return content, None
    return rest, json.dumps(calls, ensure_ascii=False)


def text_results(content: str) -> list[tuple[str, str | None]] | None:
    """A tool turn's `<tool_response>` blocks as (content, function name) each, the name
    where the block is {"name", "content"}; None when the turn holds no such block."""
    blocks = _TEXT_RESULT.findall(content)
    if not blocks or _TEXT_RESULT.sub("", content).strip():
        return None
    out = []
    for block in blocks:
        value = _literal(block)
        if isinstance(value, dict) and isinstance(value.get("name"), str) and "content" in value:
            inner = value["content"]
            out.append((inner if isinstance(inner, str)
                        else json.dumps(inner, ensure_ascii=False), value["name"]))
        else:
            out.append((block, None))
    return out


def _read_text_calls(messages: list[Message]) -> list[Message]:
    """Hermes-style calls and results in the text read as calls and tool turns."""
    out: list[Message] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls") is None and m.get("content"):
            content, calls = text_calls(m["content"])
            if calls is not None:
                m = {**m, "content": content, "tool_calls": calls}
        elif m["role"] == "tool" and m.get("content") and m.get("name") is None:
            results = text_results(m["content"])
            if results is not None:
                out += [{**m, "content": text, **({"name": name} if name else {})}
                        for text, name in results]
                continue
        out.append(m)
    return out


def decoded_calls(text: str) -> Any:
    """A turn's tool calls as written out (`_calls_text`'s inverse): JSON objects, or the
    text as it is when it is not JSON (a call a filter will name)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _openai_message(m: Any) -> Message:
    if not isinstance(m, dict) or "role" not in m:
        raise UnknownFormat("messages: each turn needs a role")
    tool_calls = m.get("tool_calls")
    if tool_calls is None and m.get("function_call") is not None:
        # OpenAI's legacy form: one call, `function_call: {name, arguments}`
        tool_calls = [{"type": "function", "function": m["function_call"]}]
    role = str(m["role"]).strip().lower()
    reasoning = m.get("reasoning_content", m.get("reasoning"))
    message = {
        "role": "tool" if role == "function" else role,  # the legacy form's result turn
        "content": _text(m.get("content"), "content"),
        "reasoning_content": None if reasoning is None else _text(reasoning, "reasoning_content"),
        "tool_calls": _calls_text(tool_calls),
    }
    for key in _HASHED_WHEN_SET:  # a tool turn's call id and function name, kept as given
        value = m.get(key)
        if value is not None and value != "":
            if isinstance(value, (dict, list, bool)):
                raise UnknownFormat(f"{key}: expected text, got {type(value).__name__}")
            message[key] = str(value)
    return message


def _message(role: str, content: Any, where: str) -> Message:
    return {"role": role, "content": _text(content, where), "reasoning_content": None,
            "tool_calls": None}


def _system(row: dict[str, Any], key: str = "system") -> list[Message]:
    value = row.get(key)
    return [_message("system", value, key)] if value not in (None, "") else []


def _sharegpt(row: dict[str, Any]) -> list[Message]:
    messages = _system(row)
    for turn in _as_list(row.get("conversations"), "conversations"):
        if not isinstance(turn, dict):
            raise UnknownFormat("conversations: each turn must be an object")
        if "from" in turn:
            who = str(turn["from"]).strip().lower()
            if who == "function_call":
                messages.append({"role": "assistant", "content": "", "reasoning_content": None,
                                 "tool_calls": _calls_text(_text(turn.get("value"), "value"))})
                continue
            messages.append(_message(SHAREGPT_ROLES.get(who, who), turn.get("value"), "value"))
        elif "role" in turn:
            messages.append(_openai_message(turn))
        else:
            raise UnknownFormat("conversations: each turn needs `from` or `role`")
    return messages


def _alpaca(row: dict[str, Any]) -> list[Message]:
    messages = _system(row)
    for pair in row.get("history") or []:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise UnknownFormat("history: expected [instruction, response] pairs")
        messages += [_message("user", pair[0], "history"), _message("assistant", pair[1], "history")]
    prompt = _text(row.get("instruction"), "instruction")
    extra = _text(row.get("input"), "input")
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}" if prompt.strip() else extra
    return messages + [_message("user", prompt, "instruction"),
                       _message("assistant", row.get("output"), "output")]


def _side(value: Any, role: str) -> list[Message]:
    """A prompt or completion: a string, or a list of messages (TRL conversational style)."""
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return [_openai_message(m) for m in value]
    return [_message(role, value, "prompt" if role == "user" else "completion")]


def _columns(row: dict[str, Any], columns: dict[str, str]) -> list[Message]:
    messages = _system(row, columns["system"]) if "system" in columns else []
    for role in ("user", "assistant"):
        if columns[role] not in row:
            raise UnknownFormat(f"columns.{role}: the row has no column {columns[role]!r}")
        messages.append(_message(role, row[columns[role]], columns[role]))
    return messages
