"""Conversation-shape filters: empty turns, role order, tool results that answer no call, tool
calls that are broken or call a tool the row does not define, and a final assistant reply.

Each is vectorised over the batch; ``role_order_ok`` is the one-row definition that the
role-order pattern below encodes.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.config import CleanConfig
from data_engine.filters.base import MessageView, Reasons, reasons_of, to_numpy_bool
from data_engine.normalizers.text import python_whitespace

ROLES = frozenset({"system", "user", "assistant", "tool"})
# One letter per turn: system, user, assistant, assistant with tool calls, tool, other.
_ROLE_LETTERS = {"system": "s", "user": "u", "assistant": "a", "tool": "t"}
# role_order_ok as a pattern over those letters: its states are "user" (U), "assistant" (A),
# "tool" (T) and "tool_or_assistant" (TA); a leading system turn is skipped; from A, `c`
# (a call) then tools and any more call+tools lead to TA, and `a` returns to U; any state may
# end the row. So: s? (u (c t+)* a)* then optionally a last unfinished exchange.
_ROLE_ORDER = "^s?(?:u(?:ct+)*a)*(?:u(?:ct+)*c?)?$"


def empty_turn(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
               ) -> Reasons:
    """`empty_turn`: a turn with no text, except an assistant turn that only calls tools."""
    blank = pc.equal(pc.utf8_length(pc.utf8_trim(view.content_array, python_whitespace())), 0)
    bad = to_numpy_bool(blank) & ~(view.is_assistant & view.has_calls)
    return reasons_of(view.any_per_row(bad) | (np.diff(view.offsets) == 0), "empty_turn")


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


def _role_letters(view: MessageView) -> pa.StringArray:
    """Per row, one letter per turn (see ``_ROLE_LETTERS``; `c` for an assistant turn with
    tool calls, `x` for an unknown or missing role)."""
    names = list(_ROLE_LETTERS)
    index = pc.fill_null(pc.index_in(view.column("role"), pa.array(names)), len(names))
    letters = np.frombuffer(("".join(_ROLE_LETTERS.values()) + "x").encode(), np.uint8)
    codes = letters[index.to_numpy(zero_copy_only=False)]
    codes[view.is_assistant & view.has_calls] = ord("c")
    offsets = pa.py_buffer(view.offsets.astype(np.int32))
    return pa.StringArray.from_buffers(view.num_rows, offsets, pa.py_buffer(codes.tobytes()))


def bad_role_order(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                   ) -> Reasons:
    """`bad_role_order`: see ``role_order_ok``."""
    ok = to_numpy_bool(pc.match_substring_regex(_role_letters(view), _ROLE_ORDER))
    return reasons_of(~ok, "bad_role_order")


def _call_ids(tool_calls: str | None) -> set[str]:
    """The ids of a turn's tool calls (JSON text of the OpenAI list); calls without one are
    left out."""
    try:
        calls = json.loads(tool_calls or "[]")
    except ValueError:
        return set()
    if not isinstance(calls, list):
        return set()
    return {str(c["id"]) for c in calls if isinstance(c, dict) and c.get("id") is not None}


def unmatched_tool_call(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                        ) -> Reasons:
    """`unmatched_tool_call`: a tool turn's `tool_call_id` names no call of the assistant turn
    before it, or a call another result already answered; or results that carry ids leave one
    of the calls unanswered. Only ids are checked: results without `tool_call_id`, or calls
    without ids, are matched by position (as templates without ids read them)."""
    has_id = to_numpy_bool(pc.is_valid(view.column("tool_call_id")))
    rows = view.any_per_row(has_id)
    if alive is not None:
        rows &= np.asarray(alive, dtype=bool)
    hit = np.zeros(len(view.offsets) - 1, dtype=bool)
    if not rows.any():  # the common case: no Python lists made
        return reasons_of(hit, "unmatched_tool_call")
    roles, ids = view.roles, view.tool_call_ids
    for row in np.flatnonzero(rows):
        unanswered: set[str] = set()  # the last call turn's call ids with no result yet
        by_id = False  # a result of that call turn named its call
        for i in view.span(row):
            if roles[i] != "tool":
                if by_id and unanswered:
                    break
                unanswered = _call_ids(view.tool_calls[i]) if view.has_calls[i] else set()
                by_id = False
            elif ids[i] is not None and (unanswered or by_id):
                if ids[i] not in unanswered:
                    break
                unanswered.discard(ids[i])
                by_id = True
        else:
            hit[row] = by_id and bool(unanswered)
            continue
        hit[row] = True
    return reasons_of(hit, "unmatched_tool_call")


def tool_names(tools: str | None) -> set[str] | None:
    """The function names a row's tool definitions (JSON text) offer; None when it offers
    none, or its definitions name none (then no call can be checked against them)."""
    try:
        value = json.loads(tools) if tools else None
    except ValueError:
        return None
    names = set()
    for tool in value if isinstance(value, list) else []:
        if isinstance(tool, dict):
            function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            if isinstance(function.get("name"), str):
                names.add(function["name"])
    return names or None


def call_problem(tool_calls: str, offered: set[str] | None) -> str | None:
    """`bad_tool_call`, `unknown_tool` or None for one assistant turn's tool calls (JSON
    text: OpenAI's list, or one ShareGPT call)."""
    try:
        value = json.loads(tool_calls)
    except ValueError:
        return "bad_tool_call"
    calls = value if isinstance(value, list) else [value]
    if not calls:
        return "bad_tool_call"  # a call turn that calls nothing
    unknown = False
    for call in calls:
        if not isinstance(call, dict):
            return "bad_tool_call"
        function = call.get("function") if "function" in call else call
        if not isinstance(function, dict):
            return "bad_tool_call"
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not name.strip():
            return "bad_tool_call"
        if isinstance(arguments, str) and arguments.strip():
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return "bad_tool_call"
        elif arguments in (None, ""):
            arguments = {}
        if not isinstance(arguments, dict):
            return "bad_tool_call"
        unknown |= offered is not None and name not in offered
    return "unknown_tool" if unknown else None


def bad_tool_call(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                  ) -> Reasons:
    """`bad_tool_call`: an assistant tool call that is not JSON, has no function name, or
    whose arguments are not a JSON object (training would render the broken text verbatim,
    and a client's parser rejects it); `unknown_tool`: a call to a function the row's `tools`
    do not define (it teaches the model to call tools that do not exist). A row offering no
    tools has nothing to check names against."""
    calling = view.is_assistant & view.has_calls & view.message_mask(alive)
    reasons: Reasons = [None] * view.num_rows
    if not calling.any():
        return reasons
    rows = np.searchsorted(view.offsets, np.flatnonzero(calling), side="right") - 1
    tools = view.tools.to_pylist() if view.tools is not None else [None] * view.num_rows
    offered: dict[int, set[str] | None] = {}
    for message, row in zip(np.flatnonzero(calling), rows):
        if reasons[row] == "bad_tool_call":
            continue
        if row not in offered:
            offered[row] = tool_names(tools[row])
        problem = call_problem(view.tool_calls[message], offered[row])
        if problem is not None:
            reasons[row] = problem
    return reasons


def no_assistant_reply(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                       ) -> Reasons:
    """`no_assistant_reply`: the last turn is not an assistant reply (a tool call is not one)."""
    reply = view.is_assistant & ~view.has_calls
    has_turns = np.diff(view.offsets) > 0
    last = np.maximum(view.offsets[1:] - 1, 0)
    ok = has_turns & (reply[last] if len(reply) else False)
    return reasons_of(~ok, "no_assistant_reply")
