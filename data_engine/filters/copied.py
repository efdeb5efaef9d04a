"""`copied_prompt`: an assistant reply that is a verbatim piece of its own prompt.

A title that is the article's first sentence, an answer that repeats the question, a
"summary" pasted from the text: rows like these teach a model to echo its input, and a
small model learns that first (the demo's 135M model, trained on Japanese titles it could
not write, answered every held-out article with its opening sentence). A reply is copied
when it has at least `min_chars` characters and at least `min_fraction` of its character
`ngram`-grams occur in the system and user turns before it (lower-cased, whitespace
collapsed). A reply found whole inside the prompt always counts.

The default fraction, 0.95, keeps editing tasks: fixing one word of a 10-15 word sentence
leaves 0.85-0.90 of the reply's 8-grams in the prompt (four such edits measured in
tests/data_engine/test_filters.py). Tasks whose
answers are extracts of their input (span extraction, quoting) should disable the filter:
`clean.disable: [copied_prompt]`.

The batch filter normalises each message once (Arrow for plain ASCII text, ``_normal``
otherwise) and builds each prompt from its normalised turns; see ``_normal_prompt``.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from data_engine.config import CleanConfig, CopiedPromptConfig
from data_engine.filters.base import MessageView, Reasons, to_numpy_bool
from data_engine.normalizers.text import re2_class_pattern, re2_literal

PROMPT_ROLES = ("system", "user")
# ASCII whitespace that ``str.split`` splits on, other than a lone space; "  " is two.
_NOT_SINGLE_SPACES = re2_class_pattern("[\t\n\x0b\x0c\r\x1c-\x1f]") + "|" + re2_literal("  ")


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _normals(view: MessageView, wanted: np.ndarray) -> list[str | None]:
    """``_normal`` of each message's content where ``wanted`` (None elsewhere). For ASCII
    text whose only whitespace is single spaces, ``_normal`` is lower-casing and dropping
    a space at either end, which Arrow does; other text goes through ``_normal``."""
    text = view.content_array
    simple = to_numpy_bool(pc.and_(pc.string_is_ascii(text), pc.invert(
        pc.match_substring_regex(text, _NOT_SINGLE_SPACES))))
    out = pc.utf8_trim(pc.ascii_lower(text.filter(wanted & simple)), " ").to_pylist()
    normals: list[str | None] = [None] * len(text)
    for i, value in zip(np.flatnonzero(wanted & simple).tolist(), out):
        normals[i] = value
    contents = view.contents
    for i in np.flatnonzero(wanted & ~simple).tolist():
        normals[i] = _normal(contents[i])
    return normals


def _normal_prompt(parts: list[str]) -> str:
    """``_normal("\\n".join(texts))`` from ``parts``, the ``_normal`` of each of the texts:
    lower-casing goes character by character (its one context rule, final sigma, does not
    look across a newline), and splitting the joined text splits each text in turn."""
    return " ".join(part for part in parts if part)


def _missing(reply: str, prompt: str, ngram: int, stop_after: int | None = None) -> int:
    """How many of ``reply``'s character ``ngram``-grams ``prompt`` lacks; counting stops
    once more than ``stop_after`` are missing (most replies miss early)."""
    missed = 0
    for i in range(len(reply) - ngram + 1):
        if reply[i:i + ngram] not in prompt:
            missed += 1
            if stop_after is not None and missed > stop_after:
                break
    return missed


def copied_fraction(reply: str, prompt: str, ngram: int) -> float:
    """Share of ``reply``'s character ``ngram``-grams found in ``prompt`` (both already
    normalised); a reply shorter than one n-gram counts as found when it is a substring."""
    if len(reply) < ngram:
        return 1.0 if reply and reply in prompt else 0.0
    grams = len(reply) - ngram + 1
    return 1.0 - _missing(reply, prompt, ngram) / grams


def is_copied(reply: str, prompt: str, config: CopiedPromptConfig) -> bool:
    """True when ``reply`` is (nearly) verbatim text of ``prompt``; see the module docstring."""
    return _copied_normal(_normal(reply), _normal(prompt), config)


def _copied_normal(reply: str, prompt: str, config: CopiedPromptConfig) -> bool:
    """``is_copied`` of a reply and prompt already normalised."""
    if len(reply) < config.min_chars or not prompt:
        return False
    if reply in prompt:
        return True
    allowed = int((len(reply) - config.ngram + 1) * (1.0 - config.min_fraction))
    return _missing(reply, prompt, config.ngram, stop_after=allowed) <= allowed


def copied_prompt(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                  ) -> Reasons:
    cfg = config.copied_prompt
    normals = _normals(view, view.message_mask(alive))
    roles, contents, offsets = view.roles, view.contents, view.offsets.tolist()
    out: Reasons = []
    for row in range(view.num_rows):
        if alive is not None and not alive[row]:
            out.append(None)
            continue
        prompt: list[str] = []
        reason = None
        for i in range(offsets[row], offsets[row + 1]):
            role = roles[i]
            if role in PROMPT_ROLES:
                prompt.append(normals[i])
            elif role == "assistant" and contents[i] and _copied_normal(
                    normals[i], _normal_prompt(prompt), cfg):
                reason = "copied_prompt"
                break
        out.append(reason)
    return out
