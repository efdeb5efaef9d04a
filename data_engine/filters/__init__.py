"""The cleaning filters, in the order they are applied; the first reason found is recorded."""

from __future__ import annotations

# The config module imports the generators, which import filters: it must load whole first,
# or `import data_engine.filters` as a program's first import fails on the cycle.
import data_engine.config  # noqa: F401
from data_engine.filters.base import Filter, MessageView, Reasons
from data_engine.filters.copied import copied_prompt
from data_engine.filters.language import wrong_language
from data_engine.filters.length import length_bounds
from data_engine.filters.repetition import degenerate_repetition
from data_engine.filters.special_tokens import special_token_literal
from data_engine.filters.structure import (bad_role_order, bad_tool_call, empty_turn,
                                           no_assistant_reply, unmatched_tool_call)
from data_engine.filters.tag_list import tag_list

FILTERS: tuple[Filter, ...] = (
    Filter("empty_turn", ("empty_turn",), empty_turn),
    Filter("bad_role_order", ("bad_role_order",), bad_role_order),
    Filter("unmatched_tool_call", ("unmatched_tool_call",), unmatched_tool_call),
    Filter("bad_tool_call", ("bad_tool_call", "unknown_tool"), bad_tool_call),
    Filter("no_assistant_reply", ("no_assistant_reply",), no_assistant_reply),
    Filter("special_token_literal", ("special_token_literal",), special_token_literal),
    Filter("tag_list", ("tag_list",), tag_list),
    Filter("degenerate_repetition", ("degenerate_repetition",), degenerate_repetition),
    Filter("length", ("too_short", "too_long"), length_bounds),
    Filter("language", ("wrong_language",), wrong_language),
    Filter("copied_prompt", ("copied_prompt",), copied_prompt),
)
FILTER_NAMES = tuple(f.name for f in FILTERS)
INGEST_REASONS = ("malformed_json", "unknown_format")
REASONS = INGEST_REASONS + tuple(r for f in FILTERS for r in f.reasons)

__all__ = ["FILTERS", "FILTER_NAMES", "REASONS", "Filter", "MessageView", "Reasons"]
