"""Synthesized rows in the row schema, with where they came from.

Every synthesized row records `origin` ("evol" | "craft" | "self_instruct"), `parent_id`
(the seed row, few-shot or document it was made from) and `generator` (`kind:model` of the
engine). Rows a generator eliminates are kept with `_reason` (and `_detail`, a short
human-readable why) so the report can show them; they never reach the outputs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from data_engine.engines.base import Engine
from data_engine.readers.formats import decoded_calls

ORIGINS = ("seed", "evol", "craft", "self_instruct")


def generator_name(engine: Engine) -> str:
    return f"{engine.kind}:{engine.model}"


def synth_id(origin: str, parent_id: str | None, messages: list[dict[str, Any]]) -> str:
    """A stable id: the same origin, parent and messages give the same id on every run."""
    blob = json.dumps([origin, parent_id, messages], ensure_ascii=False, sort_keys=True)
    return f"{origin}-{hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()}"


def make_row(messages: list[dict[str, Any]], origin: str, parent_id: str | None,
             generator: str, source: str, reason: str | None = None,
             detail: str | None = None, tags: list[str] | None = None) -> dict[str, Any]:
    """One synthesized row; ``reason`` set means it was eliminated."""
    if origin not in ORIGINS:
        raise ValueError(f"origin {origin!r} is not one of {ORIGINS}")
    return {"id": synth_id(origin, parent_id, messages), "messages": messages,
            "source": source, "tags": list(tags or []), "origin": origin,
            "parent_id": parent_id, "generator": generator, "_reason": reason,
            "_detail": detail}


def cleaned_table(rows: list[dict[str, Any]], config: Any, label: str = "synth") -> Any:
    """Synthesized rows as a work-schema table (`_file` = ``label``, `_line` = position,
    `_raw` = the row as shown in rejected.jsonl) after the clean stage's normalisers and
    filters (``config``: a CleanConfig): rows still kept get a filter's reason (`_stage`
    clean) when one rejects them, and every row its `num_tokens`."""
    import pyarrow as pa

    from data_engine.filters import REASONS as CLEAN_REASONS
    from data_engine.pipeline.clean import clean_batch
    from data_engine.readers.formats import to_messages
    from data_engine.schema import WORK_SCHEMA

    reasons = [r.get("_reason") for r in rows]
    table = pa.table({
        "id": [r["id"] for r in rows],
        "messages": [to_messages({"messages": r["messages"]}, "messages") for r in rows],
        "source": [r["source"] for r in rows],
        "tags": [r.get("tags") or [] for r in rows],
        "group": pa.nulls(len(rows), pa.string()),
        "tools": pa.nulls(len(rows), pa.string()),  # generators write text, not tool calls
        "_file": [label] * len(rows),
        "_line": list(range(1, len(rows) + 1)),
        "_raw": [json.dumps(shown_row(r), ensure_ascii=False) for r in rows],
        "_reason": reasons,
        "_stage": [None if r is None else "clean" if r in CLEAN_REASONS else "synth"
                   for r in reasons],
    }, schema=WORK_SCHEMA)
    return clean_batch(table, config)


def shown_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as people read it: the working fields dropped, the elimination's detail kept."""
    out = {k: v for k, v in row.items() if not k.startswith("_")}
    if isinstance(out.get("messages"), list):  # tool calls as objects, as `data run` writes
        out["messages"] = [{**m, "tool_calls": decoded_calls(m["tool_calls"])}
                           if isinstance(m.get("tool_calls"), str) else m
                           for m in out["messages"]]
    if row.get("_detail"):
        out["detail"] = row["_detail"]
    return out


def apply_clean(rows: list[dict[str, Any]], config: Any) -> list[dict[str, Any]]:
    """Runs the clean stage's normalisers and filters (``config``: a CleanConfig) over
    synthesized rows still kept; a row a filter rejects gets that filter's reason. Returns
    the rows with normalised messages, in order."""
    if not rows:
        return []
    cleaned = cleaned_table(rows, config)
    out = []
    for row, messages, reason in zip(rows, cleaned.column("messages").to_pylist(),
                                     cleaned.column("_reason").to_pylist()):
        kept = {k: v for k, v in row.items()}
        kept["messages"] = [{k: v for k, v in m.items() if v is not None} for m in messages]
        if kept.get("_reason") is None and reason is not None:
            kept["_reason"], kept["_detail"] = reason, "rejected by the clean filters"
        out.append(kept)
    return out
