"""What every filter shares: a flattened view of a batch's messages and the filter protocol.

A filter is a pure function ``(view, config, alive=None) -> list[str | None]``: one entry per
row, None to keep it or the reason code to drop it. ``alive`` (one bool per row) names the
rows still kept: the clean stage passes it, and ignores the other rows' entries, so a filter
may skip its per-row Python work for rows an earlier filter dropped (those entries are then
None). Filters never see Ray or files.

Filters work per message on the whole batch at once (Arrow compute and NumPy over the
flattened messages), then fold to rows with ``any_per_row``; Python loops run only over
the messages a vectorised test cannot settle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import any_per_row, list_offsets, to_numpy_bool
from data_engine.config import CleanConfig

Reasons = list[str | None]


class MessageView:
    """The messages of a batch flattened once: per-message Python lists plus row offsets.

    The Python lists (``roles``, ``contents``, ...) are built on first use; vectorised
    filters read the Arrow columns (``column``) and the NumPy masks instead, and take the
    Python strings of only the messages they check (``texts``).
    """

    def __init__(self, messages: pa.ListArray | pa.ChunkedArray,
                 tools: pa.Array | pa.ChunkedArray | None = None):
        self.num_rows = len(messages)
        self._values, self.offsets = list_offsets(messages)
        # per row: the JSON text of the tool definitions it offers (null: none); None when
        # the batch has no such column
        self.tools = tools.combine_chunks() if isinstance(tools, pa.ChunkedArray) else tools
        self.cache: dict = {}  # derived per-message arrays shared by filters (token counts)

    def _field(self, name: str) -> list:
        return self._values.field(name).to_pylist()

    def column(self, name: str) -> pa.Array:
        """One message field as an Arrow array, one entry per message."""
        return self._values.field(name)

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

    @cached_property
    def tool_call_ids(self) -> list[str | None]:
        return self._field("tool_call_id")

    def texts(self, where: np.ndarray) -> list[str]:
        """``contents`` of the messages at ``where`` (indices), made only for those."""
        return self.content_array.take(where).to_pylist()

    @cached_property
    def content_array(self) -> pa.Array:
        """``contents`` as Arrow: null content reads as ""."""
        return pc.fill_null(self.column("content"), "")

    @cached_property
    def is_assistant(self) -> np.ndarray:
        return to_numpy_bool(pc.equal(self.column("role"), "assistant"))

    @cached_property
    def has_calls(self) -> np.ndarray:
        """Per message: tool_calls is truthy (not null, not "")."""
        return to_numpy_bool(pc.not_equal(self.column("tool_calls"), ""))

    @cached_property
    def reply_mask(self) -> np.ndarray:
        """Per message: the turns ``replies`` returns."""
        has_text = to_numpy_bool(pc.not_equal(self.content_array, ""))
        return self.is_assistant & (has_text | ~self.has_calls)

    def message_mask(self, alive: np.ndarray | None) -> np.ndarray:
        """Per message: its row is in ``alive`` (every message when ``alive`` is None)."""
        if alive is None:
            return np.ones(int(self.offsets[-1]), dtype=bool)
        return np.repeat(np.asarray(alive, dtype=bool), np.diff(self.offsets))

    def any_per_row(self, flags: np.ndarray) -> np.ndarray:
        """Per row: any of its messages' ``flags`` is set."""
        return any_per_row(flags, self.offsets)

    def span(self, row: int) -> range:
        """Indices into the per-message lists for ``row``."""
        return range(self.offsets[row], self.offsets[row + 1])

    def user_turn_before(self, where: np.ndarray) -> list[str | None]:
        """Per message index in ``where``: the text of the turn right before it in its row
        when that is a user turn, else None."""
        where = np.asarray(where, dtype=np.int64)
        starts = self.offsets[np.searchsorted(self.offsets, where, side="right") - 1]
        before = np.maximum(where - 1, 0)
        roles = self.column("role").take(pa.array(before)).to_pylist()
        texts = self.content_array.take(pa.array(before)).to_pylist()
        return [text if i > start and role == "user" else None
                for i, start, role, text in zip(where.tolist(), starts.tolist(), roles, texts)]

    def replies(self, row: int) -> list[str]:
        """The row's assistant replies (tool-call turns without text excluded)."""
        return [self.contents[i] for i in self.span(row)
                if self.roles[i] == "assistant" and (self.contents[i] or not self.tool_calls[i])]


class Check(Protocol):
    """A filter's signature (see the module docstring)."""

    def __call__(self, view: MessageView, config: CleanConfig,
                 alive: np.ndarray | None = None) -> Reasons: ...


@dataclass(frozen=True)
class Filter:
    """A named check; ``reasons`` lists every code ``check`` can return."""

    name: str
    reasons: tuple[str, ...]
    check: Check


def reasons_of(hit: np.ndarray, reason: str) -> Reasons:
    """``reason`` where ``hit`` (one bool per row) is set, else None."""
    return np.where(hit, reason, None).tolist()


def per_reply(view: MessageView, reason: str, bad: Callable[[str], bool],
              prefilter: Callable[[pa.Array], np.ndarray] | None = None,
              alive: np.ndarray | None = None,
              excused: Callable[[np.ndarray], np.ndarray] | None = None) -> Reasons:
    """Drops a row with ``reason`` when any of its assistant replies is ``bad``.

    ``prefilter`` maps the replies (Arrow strings) to a mask of those ``bad`` may call bad;
    it must hold for every bad reply (a necessary condition). ``excused`` maps the bad
    replies' message indices to a mask of those their conversation asked for (a list asked
    for is no tag-list defect). Rows outside ``alive`` are not checked.
    """
    checked = np.flatnonzero(view.reply_mask & view.message_mask(alive))
    if prefilter is not None and len(checked):
        checked = checked[prefilter(view.content_array.take(checked))]
    flags = np.zeros(len(view.reply_mask), dtype=bool)
    flags[checked] = [bad(text) for text in view.texts(checked)]
    if excused is not None and flags.any():
        bad_at = np.flatnonzero(flags)
        flags[bad_at[excused(bad_at)]] = False
    return reasons_of(view.any_per_row(flags), reason)
