"""What every filter shares: a flattened view of a batch's messages and the filter protocol.

A filter is a pure function ``(view, config) -> list[str | None]``: one entry per row, None
to keep it or the reason code to drop it. Filters never see Ray or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.config import CleanConfig

Reasons = list[str | None]


class MessageView:
    """The messages of a batch flattened once: per-message Python lists plus row offsets."""

    def __init__(self, messages: pa.ListArray | pa.ChunkedArray):
        if isinstance(messages, pa.ChunkedArray):
            messages = messages.combine_chunks()
        self.num_rows = len(messages)
        lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy(zero_copy_only=False)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._values = pc.list_flatten(messages)
        self.cache: dict = {}  # derived per-message arrays shared by filters (token counts)

    def _field(self, name: str) -> list:
        return self._values.field(name).to_pylist()

    @cached_property
    def roles(self) -> list[str]:
        return self._field("role")

    @cached_property
    def contents(self) -> list[str]:
        return [c or "" for c in self._field("content")]

    @cached_property
    def reasoning(self) -> list[str | None]:
        return self._field("reasoning_content")

    @cached_property
    def tool_calls(self) -> list[str | None]:
        return self._field("tool_calls")

    def span(self, row: int) -> range:
        """Indices into the per-message lists for ``row``."""
        return range(self.offsets[row], self.offsets[row + 1])

    def replies(self, row: int) -> list[str]:
        """The row's assistant replies (tool-call turns without text excluded)."""
        return [self.contents[i] for i in self.span(row)
                if self.roles[i] == "assistant" and (self.contents[i] or not self.tool_calls[i])]


@dataclass(frozen=True)
class Filter:
    """A named check; ``reasons`` lists every code ``check`` can return."""

    name: str
    reasons: tuple[str, ...]
    check: Callable[[MessageView, CleanConfig], Reasons]


def per_reply(view: MessageView, reason: str, bad: Callable[[str], bool]) -> Reasons:
    """Drops a row with ``reason`` when any of its assistant replies is ``bad``."""
    return [reason if any(bad(text) for text in view.replies(row)) else None
            for row in range(view.num_rows)]
