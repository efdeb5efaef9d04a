"""The rows an evaluation runs on: one split of a data engine output folder.

Each row is split where the model takes over: `prompt` is every turn before the last
assistant reply (what the model is asked), `reference` is that reply (what the data says a
good answer is). Perplexity scores the whole conversation's assistant tokens; generation
answers the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")
# Codes of a server that failed a valid request; every other code means "fix the input".
SERVER_FAILURES = frozenset({"server_logprobs_failed"})


class EvalError(Exception):
    """An evaluation that cannot run: `code`, `message` and the offending `field`."""

    def __init__(self, code: str, message: str, field: str):
        self.code, self.message, self.field = code, message, field
        super().__init__(f"{field}: {code}: {message}")

    @property
    def bad_input(self) -> bool:
        return self.code not in SERVER_FAILURES


@dataclass
class EvalRow:
    id: str
    source: str
    tags: list[str]
    messages: list[dict[str, str]]  # the whole conversation, plain role/content turns
    prompt: list[dict[str, str]] = field(default_factory=list)  # turns before the last reply
    reference: str | None = None  # the last assistant reply; None when the row ends otherwise

    @property
    def question(self) -> str:
        """The last user turn's text: what reports show as the prompt."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""


def _plain(message: dict[str, Any]) -> dict[str, str]:
    return {"role": message["role"], "content": message.get("content") or ""}


def to_row(raw: dict[str, Any], where: str) -> EvalRow:
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(messages, list) or not messages:
        raise EvalError("bad_row", f"{where}: row has no `messages` list", "data")
    plain = [_plain(m) for m in messages]
    ends_with_reply = plain[-1]["role"] == "assistant"
    return EvalRow(id=str(raw.get("id") or where), source=raw.get("source") or "unknown",
                   tags=list(raw.get("tags") or []), messages=plain,
                   prompt=plain[:-1] if ends_with_reply else plain,
                   reference=plain[-1]["content"] if ends_with_reply else None)


def read_rows(data_dir: str | Path, split: str = "test", limit: int | None = None
              ) -> list[EvalRow]:
    """The rows of DATA_DIR/<split>.jsonl, in file order (the first ``limit`` if given)."""
    if split not in SPLITS:
        raise EvalError("bad_split", f"{split!r} is not one of {', '.join(SPLITS)}", "split")
    if limit is not None and limit < 1:
        raise EvalError("bad_option", f"{limit} is below 1", "limit")
    path = Path(data_dir) / f"{split}.jsonl"
    if not Path(data_dir).is_dir():
        raise EvalError("data_not_found", f"{data_dir} is not a folder (expected the output "
                        "of `tunesmith data run`)", "data")
    if not path.is_file():
        raise EvalError("split_not_found", f"{path} does not exist: the data has no "
                        f"{split} split", "split")
    rows = []
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise EvalError("bad_row", f"{path}:{n}: not JSON ({exc})", "data") from None
            rows.append(to_row(raw, f"{path.name}:{n}"))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise EvalError("empty_split", f"{path} has no rows", "split")
    return rows
