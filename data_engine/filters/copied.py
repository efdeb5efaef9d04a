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
"""

from __future__ import annotations

from data_engine.config import CleanConfig, CopiedPromptConfig
from data_engine.filters.base import MessageView, Reasons

PROMPT_ROLES = ("system", "user")


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


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
    reply, prompt = _normal(reply), _normal(prompt)
    if len(reply) < config.min_chars or not prompt:
        return False
    if reply in prompt:
        return True
    allowed = int((len(reply) - config.ngram + 1) * (1.0 - config.min_fraction))
    return _missing(reply, prompt, config.ngram, stop_after=allowed) <= allowed


def copied_prompt(view: MessageView, config: CleanConfig) -> Reasons:
    cfg = config.copied_prompt
    out: Reasons = []
    for row in range(view.num_rows):
        prompt: list[str] = []
        reason = None
        for i in view.span(row):
            role, text = view.roles[i], view.contents[i]
            if role in PROMPT_ROLES:
                prompt.append(text)
            elif role == "assistant" and text and is_copied(text, "\n".join(prompt), cfg):
                reason = "copied_prompt"
                break
        out.append(reason)
    return out
