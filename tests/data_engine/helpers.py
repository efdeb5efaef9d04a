"""Builders for tiny Arrow batches of chat rows."""

from __future__ import annotations

import pyarrow as pa

from data_engine.filters import MessageView
from data_engine.schema import MESSAGE_TYPE, WORK_SCHEMA


def msg(role: str, content: str, tool_calls: str | None = None,
        reasoning: str | None = None) -> dict:
    return {"role": role, "content": content, "reasoning_content": reasoning,
            "tool_calls": tool_calls}


def chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    turns = [msg("system", system)] if system else []
    return turns + [msg("user", user), msg("assistant", assistant)]


def view_of(conversations: list[list[dict]]) -> MessageView:
    return MessageView(pa.array(conversations, pa.list_(MESSAGE_TYPE)))


def work_table(conversations: list[list[dict]], source: str = "s") -> pa.Table:
    n = len(conversations)
    return pa.table({
        "id": [str(i) for i in range(n)], "messages": conversations, "source": [source] * n,
        "tags": [[] for _ in range(n)], "group": [None] * n, "tools": [None] * n,
        "_file": ["f.jsonl"] * n, "_line": list(range(1, n + 1)),
        "_raw": ["{}"] * n, "_reason": [None] * n, "_stage": [None] * n,
    }, schema=WORK_SCHEMA)
