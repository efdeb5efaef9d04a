"""Conversation-shape filters: empty turns, role order, and a final assistant reply."""

from __future__ import annotations

from data_engine.config import CleanConfig
from data_engine.filters.base import MessageView, Reasons

ROLES = frozenset({"system", "user", "assistant", "tool"})


def empty_turn(view: MessageView, config: CleanConfig) -> Reasons:
    """`empty_turn`: a turn with no text, except an assistant turn that only calls tools."""
    out: Reasons = []
    for row in range(view.num_rows):
        span = view.span(row)
        bad = not span or any(
            not view.contents[i].strip()
            and not (view.roles[i] == "assistant" and view.tool_calls[i])
            for i in span)
        out.append("empty_turn" if bad else None)
    return out


def role_order_ok(roles: list[str], calls: list[bool]) -> bool:
    """True when roles go [system] user assistant user ... with tool turns only after a call.

    ``calls[i]`` says whether turn i is an assistant turn carrying tool_calls. A trailing user
    turn is allowed here; `no_assistant_reply` reports it.
    """
    expect = "user"
    for i, role in enumerate(roles):
        if role not in ROLES:
            return False
        if role == "system":
            if i != 0:
                return False
            continue
        if expect == "tool_or_assistant":
            if role == "tool":
                continue
            if role != "assistant":
                return False
        elif expect == "tool":
            if role != "tool":
                return False
        elif role != expect:
            return False
        if role == "assistant":
            expect = "tool" if calls[i] else "user"
        elif role == "tool":
            expect = "tool_or_assistant"
        else:
            expect = "assistant"
    return True


def bad_role_order(view: MessageView, config: CleanConfig) -> Reasons:
    """`bad_role_order`: see ``role_order_ok``."""
    out: Reasons = []
    for row in range(view.num_rows):
        span = view.span(row)
        roles = [view.roles[i] for i in span]
        calls = [bool(view.tool_calls[i]) and view.roles[i] == "assistant" for i in span]
        out.append(None if role_order_ok(roles, calls) else "bad_role_order")
    return out


def no_assistant_reply(view: MessageView, config: CleanConfig) -> Reasons:
    """`no_assistant_reply`: the last turn is not an assistant reply (a tool call is not one)."""
    out: Reasons = []
    for row in range(view.num_rows):
        span = view.span(row)
        last = span[-1] if span else None
        ok = last is not None and view.roles[last] == "assistant" and not view.tool_calls[last]
        out.append(None if ok else "no_assistant_reply")
    return out
