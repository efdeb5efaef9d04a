"""The text a conversation is compared by, for exact and near-duplicate detection.

Exact: roles and contents (and tool calls) after NFKC and whitespace collapsing, so
`Ｔｏｋｙｏ  tower` and `Tokyo tower` are one conversation. Near: the contents only,
lower-cased, one line per turn; MinHash runs over its character n-grams, which works for
Japanese and Chinese without word boundaries. Prompt: the user turns of the near text, what
decontamination against an eval set compares by default.

Computed with Arrow kernels over a whole batch's messages at once (`batch_texts`); the
per-conversation helpers run the same kernels on one row (about 0.4 ms a call: for tests
and tools, not for loops over rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import list_offsets
from data_engine.schema import MESSAGE_TYPE

# ASCII whitespace and every Unicode separator (NFKC already maps most odd spaces to U+0020).
_SPACES = r"[\s\p{Z}]+"
# Where replacing _SPACES with one space changes a string: two of them in a row, or one that
# is not U+0020 (RE2's \s is [\t\n\f\r ]; [^ \P{Z}] is a separator other than the space).
_ODD_SPACES = r"[\s\p{Z}]{2}|[\t\n\f\r]|[^ \P{Z}]"


@dataclass
class BatchTexts:
    exact: list[str]
    near: list[str]
    prompt: list[str]

    @property
    def exact_keys(self) -> np.ndarray:
        """A 63-bit hash of each exact text (fits an Arrow int64)."""
        return np.array([_key(t) for t in self.exact], dtype=np.int64)


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _canonical(values: pa.Array) -> pa.Array:
    """NFKC, runs of whitespace to one space, trimmed (nulls stay null).

    Each step runs only on the strings it can change: NFKC leaves ASCII as it is, and the
    whitespace rewrite changes only strings that `_ODD_SPACES` matches.
    """
    text = _where(values, pc.invert(pc.string_is_ascii(values)),
                  lambda some: pc.utf8_normalize(some, "NFKC"))
    text = _where(text, pc.match_substring_regex(text, _ODD_SPACES),
                  lambda some: pc.replace_substring_regex(some, _SPACES, " "))
    return pc.utf8_trim(text, " ")


def _where(values: pa.Array, mask: pa.Array, change: Any) -> pa.Array:
    """``values`` with ``change`` applied to those where ``mask`` is true."""
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return values
    return pc.replace_with_mask(values, mask, change(values.filter(mask)))


def batch_texts(messages: pa.ListArray | pa.ChunkedArray) -> BatchTexts:
    """Exact, near and prompt texts of every conversation in ``messages``."""
    values, offsets = list_offsets(messages)
    offsets = offsets.astype(np.int32)
    content = _canonical(pc.fill_null(values.field("content"), ""))
    tools = _canonical(values.field("tool_calls"))
    with_tools = pc.binary_join_element_wise(content, pc.fill_null(tools, ""), "\x1f")
    content_all = pc.if_else(pc.is_valid(tools), with_tools, content)
    exact_turn = pc.binary_join_element_wise(pc.fill_null(values.field("role"), ""),
                                             content_all, "\x1f")
    near_turn = pc.utf8_lower(pc.if_else(pc.is_valid(tools),
                                         pc.binary_join_element_wise(content, tools, " "),
                                         content))

    def per_row(turns: pa.Array, sep: str, offs: np.ndarray) -> list[str]:
        rows = pa.ListArray.from_arrays(pa.array(offs, pa.int32()), turns)
        return pc.binary_join(rows, sep).to_pylist()

    is_user = pc.fill_null(pc.equal(values.field("role"), "user"), False)
    users_before = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(is_user.to_numpy(zero_copy_only=False), out=users_before[1:])
    user_offsets = users_before[offsets]  # user turns before each row's first turn
    prompt_turns = near_turn.filter(is_user)
    return BatchTexts(exact=per_row(exact_turn, "\x1e", offsets),
                      near=per_row(near_turn, "\n", offsets),
                      prompt=per_row(prompt_turns, "\n", user_offsets))


def _one(messages: Iterable[dict[str, Any]]) -> BatchTexts:
    rows = [[{"role": m.get("role"), "content": m.get("content"),
              "reasoning_content": m.get("reasoning_content"),
              "tool_calls": m.get("tool_calls")} for m in messages]]
    return batch_texts(pa.array(rows, pa.list_(MESSAGE_TYPE)))


def exact_text(messages: Iterable[dict[str, Any]]) -> str:
    """Roles and contents (and tool calls), normalised; equal texts are exact duplicates."""
    return _one(messages).exact[0]


def exact_key(messages: Iterable[dict[str, Any]]) -> int:
    """A 63-bit hash of `exact_text`."""
    return _key(exact_text(messages))


def near_text(messages: Iterable[dict[str, Any]]) -> str:
    """Contents of every turn, normalised and lower-cased, one line each."""
    return _one(messages).near[0]


def prompt_text(messages: Iterable[dict[str, Any]]) -> str:
    """The user turns of `near_text` (system prompts are shared templates, replies differ)."""
    return _one(messages).prompt[0]
