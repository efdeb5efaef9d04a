"""The text a conversation is compared by, for exact and near-duplicate detection.

Exact: roles and contents (and tool calls) after NFKC and whitespace collapsing, so
`Ｔｏｋｙｏ  tower` and `Tokyo tower` are one conversation. Tool calls are compared as calls
(`call_text`): without their ids, which are random handles (`call_8f3k...`), and with their
arguments' JSON key order and spacing settled, so one conversation logged twice is one
conversation. The tool turns' `tool_call_id` and a row's `tools` (the definitions it
offers) are not compared: two rows with the same turns are duplicates, whatever tools they
offer. Near: the contents only (system turns left out: a prompt shared by a source's rows
would make them all look alike), lower-cased, one line per turn; MinHash runs over its
character n-grams, which works for Japanese and Chinese without word boundaries. Prompt: the user turns of the near text, what
decontamination against an eval set compares by default.

Computed with Arrow kernels over a whole batch's messages at once (`batch_texts`); the
per-conversation helpers run the same kernels on one row (about 0.4 ms a call: for tests
and tools, not for loops over rows).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.columns import list_offsets, string_buffers, to_numpy_bool
from data_engine.normalizers.text import has_bytes
from data_engine.schema import MESSAGE_TYPE

# ASCII whitespace and every Unicode separator (NFKC already maps most odd spaces to U+0020).
_SPACES = r"[\s\p{Z}]+"
# Where replacing _SPACES with one space changes a string: two of them in a row, or one that
# is not U+0020 (RE2's \s is [\t\n\f\r ]; [^ \P{Z}] is a separator other than the space).
_ODD_SPACES = r"[\s\p{Z}]{2}|[\t\n\f\r]|[^ \P{Z}]"
# CJK punctuation, kana, kanji and hangul (RE2 classes). In the near text a space beside one
# of them is dropped (it carries no meaning between CJK words: `。　` and `。` are one text),
# and the full stop and comma are folded onto the ones NFKC gives for `．，`, the forms
# official documents use.
_CJK = r"[\x{3000}-\x{30ff}\x{3400}-\x{4dbf}\x{4e00}-\x{9fff}\x{f900}-\x{faff}\x{ac00}-\x{d7af}]"
_CJK_MARKS = {"。": ".", "、": ","}
# `_nfkc_may_change` checks code points below this one by one and takes all from it on.
_PLANE_2 = 0x20000
# Every UTF-8 byte from 0xC0 but the lead bytes of the CJK and Hangul blocks U+3000-U+9FFF
# and U+B000-U+CFFF: the characters that utf8_lower changes, ASCII aside, start with one (a
# test checks every code point).
_CASED_STARTS = ((0xC0, 0xE2), (0xEA, 0xEA), (0xED, 0xFF))


@dataclass
class BatchTexts:
    """Exact, near and prompt texts of a batch, one Arrow string per row.

    Signing reads the Arrow arrays as they are (hashes their buffers, stores them as
    columns); the Python lists, and the prompt texts, which signing mostly does not need,
    are made on first use.
    """

    exact_array: pa.StringArray
    near_array: pa.StringArray
    near_turns: pa.StringArray  # every turn's near text, flat
    is_user: pa.BooleanArray  # per turn
    offsets: np.ndarray  # row i's turns are near_turns[offsets[i]:offsets[i + 1]]

    @cached_property
    def prompt_array(self) -> pa.StringArray:
        return _join(self.near_turns.filter(self.is_user),
                     _offsets_of(self.is_user, self.offsets), "\n")

    @cached_property
    def exact(self) -> list[str]:
        return self.exact_array.to_pylist()

    @cached_property
    def near(self) -> list[str]:
        return self.near_array.to_pylist()

    @cached_property
    def prompt(self) -> list[str]:
        return self.prompt_array.to_pylist()

    @property
    def exact_keys(self) -> np.ndarray:
        """A 63-bit hash of each exact text (fits an Arrow int64): the first 8 bytes of its
        UTF-8 blake2b, read big-endian, shifted right by one."""
        offsets, data = string_buffers(self.exact_array)
        offsets, data = offsets.tolist(), memoryview(data)
        blake2b = hashlib.blake2b
        digests = b"".join([blake2b(data[start:end], digest_size=8).digest()
                            for start, end in zip(offsets, offsets[1:])])
        return (np.frombuffer(digests, dtype=">u8") >> np.uint64(1)).astype(np.int64)


def _canonical(values: pa.Array) -> pa.Array:
    """NFKC, runs of whitespace to one space, trimmed (nulls stay null).

    Each step runs only on the strings it can change: NFKC those with a character of
    `_nfkc_may_change` (most Japanese and Chinese text has none; the class has no ASCII
    character, so only non-ASCII strings are tested), the whitespace rewrite those that
    `_ODD_SPACES` matches.
    """
    may_change = to_numpy_bool(pc.invert(pc.string_is_ascii(values)))
    if may_change.any():
        may_change[may_change] = to_numpy_bool(pc.match_substring_regex(
            values.filter(pa.array(may_change)), _nfkc_may_change()))
    text = _where(values, may_change, lambda some: pc.utf8_normalize(some, "NFKC"))
    text = _where(text, to_numpy_bool(pc.match_substring_regex(text, _ODD_SPACES)),
                  lambda some: pc.replace_substring_regex(some, _SPACES, " "))
    return pc.utf8_trim(text, " ")


def _cjk_folded(values: pa.Array) -> pa.Array:
    """The near text's forms of CJK text: no space beside a CJK character, `。、` as `.,`
    (run on the strings with a CJK character; the others are left as they are)."""
    if not len(values):
        return values
    cjk = to_numpy_bool(pc.match_substring_regex(values, _CJK))

    def fold(some: pa.Array) -> pa.Array:
        some = pc.replace_substring_regex(some, f" ({_CJK})", "\\1")
        some = pc.replace_substring_regex(some, f"({_CJK}) ", "\\1")
        for mark, folded in _CJK_MARKS.items():
            some = pc.replace_substring(some, mark, folded)
        return some

    return _where(values, cjk, fold)


def _lower(values: pa.Array) -> pa.Array:
    """``pc.utf8_lower``, one code point at a time: ``pc.ascii_lower`` (~15x faster) does
    the same to the strings without a byte of `_CASED_STARTS`, and the rest are lowered
    again with utf8_lower."""
    return _where(pc.ascii_lower(values), has_bytes(values, _CASED_STARTS), pc.utf8_lower)


@cache
def _nfkc_may_change() -> str:
    """An RE2 class of the characters without which NFKC leaves a string as it is.

    NFKC changes a string only where a character is not NFKC alone, has a nonzero combining
    class, can compose with the character before it (second of a canonical pair, Hangul
    vowel and trailing jamo) or decomposes to one that does. Characters this Python's
    Unicode does not know, and all from U+20000 on, are in the class too: whatever Unicode
    version Arrow's NFKC has, a string it would change is matched (decompositions of
    assigned characters never change). Built once per process (~50 ms).
    """
    seconds = {*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)}
    for cp in range(0x80, _PLANE_2):
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(int(parts[1], 16))
    ranges: list[list[int]] = []
    for cp in range(0x80, _PLANE_2):
        if 0xD800 <= cp < 0xE000:  # surrogates are never in UTF-8
            continue
        char = chr(cp)
        first = unicodedata.normalize("NFD", char)[0]
        if (cp in seconds or ord(first) in seconds or unicodedata.combining(char)
                or unicodedata.combining(first) or unicodedata.category(char) == "Cn"
                or unicodedata.normalize("NFKC", char) != char):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    ranges.append([_PLANE_2, 0x10FFFF])
    return "[" + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges) + "]"


def _where(values: pa.Array, mask: np.ndarray, change: Any) -> pa.Array:
    """``values`` with ``change`` applied to those where ``mask`` is true."""
    if not mask.any():
        return values
    mask = pa.array(mask)
    return pc.replace_with_mask(values, mask, change(values.filter(mask)))


def call_text(text: str) -> str:
    """A turn's tool calls (JSON text: OpenAI's list, or one ShareGPT call) as compared:
    each call without its `id`, arguments given as JSON text parsed, keys sorted, no spaces.
    Text that is not JSON is compared as it is."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    calls = [_call(call) for call in value] if isinstance(value, list) else _call(value)
    return json.dumps(calls, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    call = {k: v for k, v in call.items() if k != "id"}
    function = call.get("function")
    if isinstance(function, dict):
        call["function"] = _parsed_arguments(function)
        return call
    return _parsed_arguments(call)


def _parsed_arguments(function: dict[str, Any]) -> dict[str, Any]:
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            return {**function, "arguments": json.loads(arguments)}
        except ValueError:
            pass
    return function


def _call_texts(values: pa.Array) -> pa.Array:
    """`call_text` of each turn's tool calls (nulls stay null; a batch without calls is
    returned as it is)."""
    if values.null_count == len(values):
        return values
    return pa.array([None if text is None else call_text(text) for text in values.to_pylist()],
                    pa.string())


def _turn_texts(values: pa.StructArray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Each turn's canonical content and tool calls' text, and its exact text."""
    content = _canonical(pc.fill_null(values.field("content"), ""))
    tools = _canonical(_call_texts(values.field("tool_calls")))
    with_tools = pc.binary_join_element_wise(content, pc.fill_null(tools, ""), "\x1f")
    content_all = pc.if_else(pc.is_valid(tools), with_tools, content)
    exact_turn = pc.binary_join_element_wise(pc.fill_null(values.field("role"), ""),
                                             content_all, "\x1f")
    return content, tools, exact_turn


def _key(text: str) -> int:
    """`BatchTexts.exact_keys` of one exact text."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def conversation_keys(messages: pa.ListArray | pa.ChunkedArray
                      ) -> tuple[list[int], list[list[int]]]:
    """Each row's exact key, and the exact keys its proper prefixes that end with an
    assistant turn would have as rows: a row whose key is another's prefix key is that
    conversation cut short (ShareGPT dumps store one chat at several lengths), which the
    split keeps on the same side."""
    values, offsets = list_offsets(messages)
    turns = _turn_texts(values)[2].to_pylist()
    roles = values.field("role").to_pylist()
    keys, prefixes = [], []
    for start, end in zip(offsets.tolist(), offsets[1:].tolist()):
        keys.append(_key("\x1e".join(turns[start:end])))
        prefixes.append([_key("\x1e".join(turns[start:cut])) for cut in range(start + 1, end)
                         if roles[cut - 1] == "assistant"])
    return keys, prefixes


def batch_texts(messages: pa.ListArray | pa.ChunkedArray) -> BatchTexts:
    """Exact, near and prompt texts of every conversation in ``messages``."""
    values, offsets = list_offsets(messages)
    offsets = offsets.astype(np.int32)
    content, tools, exact_turn = _turn_texts(values)
    near_turn = _cjk_folded(_lower(pc.if_else(
        pc.is_valid(tools), pc.binary_join_element_wise(content, tools, " "), content)))
    # A system prompt is most often one template shared by every row of a source: in the
    # near text it would outweigh the turns that differ (a shared 1.4 kB prompt put 100
    # unrelated question/answer rows at Jaccard 0.9), so it is left out, as from the prompt
    # text. The exact text keeps it: rows that differ only in it are near duplicates.
    kept = pc.invert(pc.fill_null(pc.equal(values.field("role"), "system"), False))

    is_user = pc.fill_null(pc.equal(values.field("role"), "user"), False)
    return BatchTexts(exact_array=_join(exact_turn, offsets, "\x1e"),
                      near_array=_join(near_turn.filter(kept), _offsets_of(kept, offsets),
                                       "\n"),
                      near_turns=near_turn, is_user=is_user, offsets=offsets)


def _offsets_of(kept: pa.BooleanArray, offsets: np.ndarray) -> np.ndarray:
    """Each row's offsets among the turns ``kept`` selects (``offsets``: among all)."""
    before = np.zeros(len(kept) + 1, dtype=np.int32)
    np.cumsum(kept.to_numpy(zero_copy_only=False), out=before[1:])
    return before[offsets]


def _join(turns: pa.Array, offsets: np.ndarray, sep: str) -> pa.StringArray:
    """Row i's ``turns[offsets[i]:offsets[i + 1]]`` joined by ``sep``, one string a row."""
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), turns), sep)


def _one(messages: Iterable[dict[str, Any]]) -> BatchTexts:
    rows = [[{"role": m.get("role"), "content": m.get("content"),
              "reasoning_content": m.get("reasoning_content"),
              "tool_calls": m.get("tool_calls")} for m in messages]]
    return batch_texts(pa.array(rows, pa.list_(MESSAGE_TYPE)))


def exact_text(messages: Iterable[dict[str, Any]]) -> str:
    """Roles and contents (and tool calls), normalised; equal texts are exact duplicates."""
    return _one(messages).exact[0]


def exact_key(messages: Iterable[dict[str, Any]]) -> int:
    """A 63-bit hash of `exact_text` (`BatchTexts.exact_keys` of one row)."""
    return int(_one(messages).exact_keys[0])


def near_text(messages: Iterable[dict[str, Any]]) -> str:
    """Contents of every turn but the system prompt's, normalised and lower-cased, one
    line each."""
    return _one(messages).near[0]


def prompt_text(messages: Iterable[dict[str, Any]]) -> str:
    """The user turns of `near_text` (system prompts are shared templates, replies differ)."""
    return _one(messages).prompt[0]
