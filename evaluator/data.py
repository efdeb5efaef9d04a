"""The rows an evaluation runs on: one split of a data engine output folder.

Each row is split where the model takes over: `prompt` is every turn before the last
assistant reply (what the model is asked), `reference` is that reply (what the data says a
good answer is). Perplexity scores the whole conversation's assistant tokens; generation
answers the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_engine.readers.formats import tool_definitions

SPLITS = ("train", "validation", "test")
# Codes of a server that failed a valid request; every other code means "fix the input".
SERVER_FAILURES = frozenset({"server_logprobs_failed", "server_died"})


class EvalError(Exception):
    """An evaluation that cannot run: `code`, `message` and the offending `field`."""

    def __init__(self, code: str, message: str, field: str):
        self.code, self.message, self.field = code, message, field
        super().__init__(f"{field}: {code}: {message}")

    @property
    def bad_input(self) -> bool:
        return self.code not in SERVER_FAILURES


@dataclass
class EvalRow:
    id: str
    source: str
    tags: list[str]
    # the whole conversation as training read it (null fields dropped; reasoning, tool calls
    # and call ids kept): what perplexity renders
    messages: list[dict[str, Any]]
    # the turns before the last reply as an OpenAI chat request takes them (tool calls with
    # their ids, no reasoning): what the model is asked
    prompt: list[dict[str, Any]] = field(default_factory=list)
    # the last assistant reply's text; None when the row ends otherwise, or with a tool call
    # (the expected output is the call, which a text metric against "" would score as wrong)
    reference: str | None = None
    tools: list[dict[str, Any]] | None = None  # the tools the row offers
    # the last assistant turn's tool calls when the row ends with them (request form:
    # arguments as JSON text): the expected output of a tool-calling row
    calls: list[dict[str, Any]] | None = None

    @property
    def answered(self) -> bool:
        """Whether the row ends with an assistant turn (a reply or a tool call): what the
        model is asked to generate, and scored on."""
        return self.messages[-1]["role"] == "assistant"

    @property
    def question(self) -> str:
        """The last user turn's text: what reports show as the prompt."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""


def _whole(message: dict[str, Any]) -> dict[str, Any]:
    """A turn as training read it: null fields dropped, content never null."""
    return {**{k: v for k, v in message.items() if v is not None},
            "content": message.get("content") or ""}


def _request(message: dict[str, Any]) -> dict[str, Any]:
    """A turn as an OpenAI chat request takes it: role and content, and a tool call's id and
    a result's `tool_call_id` and `name` where the data has them; arguments as JSON text."""
    out: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
    calls = message.get("tool_calls")
    if isinstance(calls, str):
        calls = json.loads(calls) if calls.strip() else None
    if calls:
        out["tool_calls"] = []
        for call in calls:
            call = dict(call)
            fn = dict(call.get("function") or {})
            if not isinstance(fn.get("arguments", ""), str):
                fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
            out["tool_calls"].append({**call, "type": call.get("type", "function"),
                                      "function": fn})
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def to_row(raw: dict[str, Any], where: str) -> EvalRow:
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and "role" in m for m in messages)):
        raise EvalError("bad_row", f"{where}: row has no `messages` list of turns with a "
                        "role", "data")
    try:
        tools = tool_definitions(raw.get("tools"))
    except ValueError as exc:
        raise EvalError("bad_row", f"{where}: {exc}", "data") from None
    try:
        requests = [_request(m) for m in messages]
    except (ValueError, AttributeError, TypeError) as exc:
        raise EvalError("bad_row", f"{where}: tool_calls are not a list of calls ({exc})",
                        "data") from None
    ends_with_reply = requests[-1]["role"] == "assistant"
    text_reply = ends_with_reply and not requests[-1].get("tool_calls")
    return EvalRow(id=str(raw.get("id") or where), source=raw.get("source") or "unknown",
                   tags=list(raw.get("tags") or []), messages=[_whole(m) for m in messages],
                   prompt=requests[:-1] if ends_with_reply else requests,
                   reference=requests[-1]["content"] if text_reply else None,
                   tools=tools,
                   calls=requests[-1]["tool_calls"] if ends_with_reply and not text_reply
                   else None)


def call_probes(rows: list[EvalRow]) -> list[EvalRow]:
    """One row per assistant turn that calls tools: the turns before it as the prompt (with
    the row's tools), its calls as the expected output. Data engine rows end with a text
    reply (`no_assistant_reply`), so their calls sit inside the conversation; these rows
    ask for each of them, as a client would when the model is to call."""
    probes = []
    for row in rows:
        turns = row.prompt + ([{"role": "assistant", "tool_calls": row.calls}] if row.calls
                              else [])
        k = 0
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant" or not turn.get("tool_calls"):
                continue
            k += 1
            probes.append(EvalRow(id=f"{row.id}#call{k}", source=row.source, tags=row.tags,
                                  messages=row.messages[:i + 1], prompt=turns[:i],
                                  tools=row.tools, calls=turn["tool_calls"]))
    return probes


def read_rows(data_dir: str | Path, split: str = "test", limit: int | None = None
              ) -> list[EvalRow]:
    """The rows of DATA_DIR/<split>.jsonl, in file order (the first ``limit`` if given)."""
    if split not in SPLITS:
        raise EvalError("bad_split", f"{split!r} is not one of {', '.join(SPLITS)}", "split")
    if limit is not None and limit < 1:
        raise EvalError("bad_option", f"{limit} is below 1", "limit")
    path = Path(data_dir) / f"{split}.jsonl"
    if not Path(data_dir).is_dir():
        raise EvalError("data_not_found", f"{data_dir} is not a folder (expected the output "
                        "of `tunesmith data run`)", "data")
    if not path.is_file():
        raise EvalError("split_not_found", f"{path} does not exist: the data has no "
                        f"{split} split", "split")
    rows = []
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise EvalError("bad_row", f"{path}:{n}: not JSON ({exc})", "data") from None
            rows.append(to_row(raw, f"{path.name}:{n}"))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise EvalError("empty_split", f"{path} has no rows", "split")
    return rows
