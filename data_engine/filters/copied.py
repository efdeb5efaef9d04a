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
otherwise) and builds each prompt from its normalised turns; see ``_normal_prompt``. It
normalises only the replies long enough to count and the prompt turns of their rows, and
rules most replies out with a few short searches (``_many_missing``) before ``_missing``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.config import CleanConfig, CopiedPromptConfig
from data_engine.filters.base import MessageView, Reasons, to_numpy_bool
from data_engine.normalizers.text import re2_class_pattern, re2_literal

PROMPT_ROLES = ("system", "user")
# ASCII whitespace that ``str.split`` splits on, other than a lone space; "  " is two.
_NOT_SINGLE_SPACES = re2_class_pattern("[\t\n\x0b\x0c\r\x1c-\x1f]") + "|" + re2_literal("  ")
# Characters per piece in ``_many_missing``: shorter pieces are found in the prompt more
# often, longer ones rule out fewer n-grams each (3 measured fastest on chat rows).
_PIECE = 3


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _normals(view: MessageView, where: np.ndarray) -> dict[int, str]:
    """``_normal`` of the content of the messages at ``where``, by index. For ASCII text whose
    only whitespace is single spaces, ``_normal`` is lower-casing and dropping a space at
    either end, which Arrow does; other text goes through ``_normal``."""
    text = view.content_array.take(where)
    simple = to_numpy_bool(pc.and_(pc.string_is_ascii(text), pc.invert(
        pc.match_substring_regex(text, _NOT_SINGLE_SPACES))))
    out = pc.utf8_trim(pc.ascii_lower(text.filter(simple)), " ").to_pylist()
    normals = dict(zip(where[simple].tolist(), out))
    normals.update(zip(where[~simple].tolist(),
                       map(_normal, text.filter(pa.array(~simple)).to_pylist())))
    return normals


def _normal_prompt(parts: list[str]) -> str:
    """``_normal("\\n".join(texts))`` from ``parts``, the ``_normal`` of each of the texts:
    lower-casing goes character by character (its one context rule, final sigma, does not
    look across a newline), and splitting the joined text splits each text in turn."""
    return " ".join(filter(None, parts))


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
    if _many_missing(reply, prompt, config.ngram, allowed):
        return False
    return _missing(reply, prompt, config.ngram, stop_after=allowed) <= allowed


def _many_missing(reply: str, prompt: str, ngram: int, allowed: int) -> bool:
    """True when surely more than ``allowed`` of ``reply``'s n-grams are missing from
    ``prompt``, found with fewer searches than ``_missing``: a piece of ``_PIECE``
    characters the prompt lacks is missing from every n-gram holding it. The pieces start
    at ``step - 1``, ``2 * step - 1``, ... (``step = ngram - _PIECE + 1``) up to the last
    n-gram's start, so each lies in ``step`` n-grams that no other piece lies in. False
    proves nothing."""
    piece = min(_PIECE, ngram)
    step = ngram - piece + 1
    missed = 0
    for start in range(step - 1, len(reply) - ngram + 1, step):
        if reply[start:start + piece] not in prompt:
            missed += step
            if missed > allowed:
                return True
    return False


def copied_prompt(view: MessageView, config: CleanConfig, alive: np.ndarray | None = None
                  ) -> Reasons:
    cfg = config.copied_prompt
    replies = np.flatnonzero(view.is_assistant & view.message_mask(alive))
    text = view.content_array.take(replies)
    # ``_normal`` lengthens a text only by lower-casing "İ" (to two characters): replies
    # shorter than this bound cannot reach min_chars, and their rows need no prompt.
    most = pc.add(pc.utf8_length(text), pc.count_substring(text, "İ")).to_numpy()
    normals = _normals(view, replies[most >= max(cfg.min_chars, 1)])
    checked = np.zeros(len(view.is_assistant), dtype=bool)
    where = np.fromiter(normals, dtype=np.int64, count=len(normals))
    lengths = np.fromiter(map(len, normals.values()), dtype=np.int64, count=len(normals))
    checked[where[lengths >= cfg.min_chars]] = True
    has_reply = view.any_per_row(checked)
    normals.update(_normals(view, np.flatnonzero(view.message_mask(has_reply) & to_numpy_bool(
        pc.is_in(view.column("role"), pa.array(PROMPT_ROLES))))))
    roles, offsets, is_checked = view.roles, view.offsets.tolist(), checked.tolist()
    out: Reasons = [None] * view.num_rows
    for row in np.flatnonzero(has_reply).tolist():
        prompt: list[str] = []
        for i in range(offsets[row], offsets[row + 1]):
            if is_checked[i]:
                if _copied_normal(normals[i], _normal_prompt(prompt), cfg):
                    out[row] = "copied_prompt"
                    break
            elif roles[i] in PROMPT_ROLES:
                prompt.append(normals[i])
    return out
