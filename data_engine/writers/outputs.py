"""Writes the output contract: split JSONL files, `hf/`, `rejected.jsonl`, and the counts.

Batches arrive on the driver in input order; kept rows go to their split's JSONL file and an
Arrow stream that `hf/` is saved from (memory-mapped, so no split is held in memory), rejected rows to `rejected.jsonl` with their file, line, reason and original text.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from data_engine.filters import REASONS
from data_engine.schema import NUM_TOKENS, ROW_SCHEMA, SPLITS

EXAMPLES_PER_REASON = 3
OUTPUT_SCHEMA = pa.schema(list(ROW_SCHEMA) + [NUM_TOKENS])


def chat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A kept row as users read it: null message fields dropped, tool_calls as JSON objects."""
    messages = []
    for m in row["messages"]:
        out = {"role": m["role"], "content": m["content"]}
        if m.get("reasoning_content") is not None:
            out["reasoning_content"] = m["reasoning_content"]
        if m.get("tool_calls"):
            try:
                out["tool_calls"] = json.loads(m["tool_calls"])
            except ValueError:
                out["tool_calls"] = m["tool_calls"]
        messages.append(out)
    return {"id": row["id"], "messages": messages, "source": row["source"], "tags": row["tags"],
            "num_tokens": row["num_tokens"]}


def rejected_row(row: dict[str, Any]) -> dict[str, Any]:
    """A rejected row: why, where from, and the original row (or the raw line)."""
    out = {"id": row["id"], "reason": row["_reason"], "stage": row["_stage"],
           "source": {"file": row["_file"], "line": row["_line"]}}
    if row["_reason"] == "malformed_json":
        out["raw"] = row["_raw"]
    else:
        out["row"] = json.loads(row["_raw"])
    return out


def render_batch(batch: pa.Table) -> pa.Table:
    """Ray Data batch UDF: adds `_json`, each row's output line, so workers do the encoding
    and the driver only appends bytes."""
    lines = [json.dumps(rejected_row(row) if row["_reason"] else chat_row(row), ensure_ascii=False)
             for row in batch.to_pylist()]
    return batch.append_column("_json", pa.array(lines, pa.string()))


class DatasetWriter:
    """Streams batches into the output folder and keeps the counts the manifest needs."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.work_dir = out_dir / ".work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.input = 0
        self.rejected: Counter[str] = Counter({r: 0 for r in REASONS})
        self.splits: Counter[str] = Counter({s: 0 for s in SPLITS})
        self.sources: dict[str, Counter[str]] = defaultdict(Counter)
        self.tokens: dict[str, list[int]] = {s: [] for s in SPLITS}
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._jsonl = {s: open(out_dir / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
        self._rejected = open(out_dir / "rejected.jsonl", "w", encoding="utf-8")
        self._arrow = {s: pa.ipc.new_stream(str(self.work_dir / f"{s}.arrow"), OUTPUT_SCHEMA)
                       for s in SPLITS}

    def write(self, batch: pa.Table) -> None:
        if "_json" not in batch.column_names:
            batch = render_batch(batch)
        self.input += batch.num_rows
        for source, n in Counter(batch.column("source").to_pylist()).items():
            self.sources[source]["input"] += n
        kept_mask = pc.is_null(batch.column("_reason"))
        kept = batch.filter(kept_mask)
        dropped = batch.filter(pc.invert(kept_mask))
        reasons = dropped.column("_reason").to_pylist()
        lines = dropped.column("_json").to_pylist()
        self.rejected.update(reasons)
        for reason, line in zip(reasons, lines):
            if len(self.examples[reason]) < EXAMPLES_PER_REASON:
                self.examples[reason].append(json.loads(line))
        self._write_lines(self._rejected, lines)
        for source, n in Counter(kept.column("source").to_pylist()).items():
            self.sources[source]["kept"] += n
        for split in SPLITS:
            part = kept.filter(pc.equal(kept.column("split"), split))
            if not part.num_rows:
                continue
            self._arrow[split].write_table(part.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA))
            self.splits[split] += part.num_rows
            self.tokens[split] += part.column("num_tokens").to_pylist()
            self._write_lines(self._jsonl[split], part.column("_json").to_pylist())

    @staticmethod
    def _write_lines(fh, lines: list[str]) -> None:
        if lines:
            fh.write("\n".join(lines) + "\n")

    @property
    def kept(self) -> int:
        return sum(self.splits.values())

    def close(self) -> None:
        """Closes the files and saves `hf/` as a datasets DatasetDict."""
        for fh in [*self._jsonl.values(), self._rejected]:
            fh.close()
        for writer in self._arrow.values():
            writer.close()
        import datasets  # import costs ~1 s: only at the end

        datasets.disable_progress_bars()
        dataset = datasets.DatasetDict({
            split: datasets.Dataset.from_file(str(self.work_dir / f"{split}.arrow"))
            for split in SPLITS})
        hf_dir = self.out_dir / "hf"
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        dataset.save_to_disk(str(hf_dir))
        del dataset  # release the memory maps before removing their files
        shutil.rmtree(self.work_dir, ignore_errors=True)
