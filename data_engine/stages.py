"""Stage outputs on disk: Parquet files plus a completion marker, so a re-run resumes.

Each stage writes into `OUT/.stages/<name>.partial/`; when it is complete the marker
`_SUCCESS.json` (the stage's key and what it measured) is written and the folder renamed to
`OUT/.stages/<name>/`. A stage is skipped when its folder holds a marker with the same key.
The key hashes the stage's own config with the key of its input, so changing a stage's
config re-runs it and, through the keys, every stage after it. A run killed mid-stage
(kill -9) leaves only a `.partial` folder, which the next run clears and redoes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MARKER = "_SUCCESS.json"
# Bump when a stage's output format or logic changes, so old outputs are not reused.
FORMAT_VERSION = 9  # 9: only a sentence that asks excuses a list; 8: a lone hashtag reply is a tag list; 7: CJK spacing and 。、 folded in the near text; 6: near text without system turns, U+2028/U+2029 as line breaks; 5: `bad_tool_call`/`unknown_tool`, `tool_calls: []` read as none; 4: dedup compares tool calls without ids; 3: `tools`, call ids, ...


def stage_key(name: str, config: Any, upstream: str | None) -> str:
    """The identity of one stage's output: its config and its input's key."""
    blob = json.dumps({"stage": name, "config": config, "upstream": upstream,
                       "format": FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


@dataclass
class StageOutput:
    """A completed stage: its folder, key and the facts it recorded."""

    name: str
    path: Path
    key: str
    meta: dict[str, Any]
    reused: bool = False

    def files(self, prefix: str) -> list[str]:
        """The stage's Parquet files named ``prefix``-*.parquet, in order."""
        return [str(p) for p in sorted(self.path.glob(f"{prefix}-*.parquet"))]

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file of the stage, or all parts of a prefix, as a table."""
        single = self.path / f"{name}.parquet"
        if single.exists():
            return pq.read_table(single, columns=columns)
        tables = [pq.read_table(f, columns=columns) for f in self.files(name)]
        return pa.concat_tables(tables) if tables else pa.table({})


class StageStore:
    """The `.stages` folder of one output directory."""

    def __init__(self, out_dir: Path):
        self.root = out_dir / ".stages"

    def completed(self, name: str, key: str) -> StageOutput | None:
        path = self.root / name
        try:
            marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if marker.get("key") != key:
            return None
        return StageOutput(name, path, key, marker.get("meta", {}), reused=True)

    def begin(self, name: str) -> Path:
        """A fresh, empty folder for the stage's outputs (an interrupted attempt is cleared)."""
        partial = self.root / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return partial

    def commit(self, name: str, key: str, meta: dict[str, Any]) -> StageOutput:
        """Marks the stage complete and moves its outputs into place."""
        partial = self.root / f"{name}.partial"
        (partial / MARKER).write_text(json.dumps({"key": key, "meta": meta}, ensure_ascii=False,
                                                 indent=1, default=str), encoding="utf-8")
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        return StageOutput(name, final, key, meta)


class PartWriter:
    """Writes batches as numbered Parquet parts (`<prefix>-00000.parquet`, ...)."""

    def __init__(self, folder: Path, prefix: str):
        self.folder = folder
        self.prefix = prefix
        self.count = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            pq.write_table(table, self.folder / f"{self.prefix}-{self.count:05d}.parquet",
                           compression="lz4")
            self.count += 1


def write_table(folder: Path, name: str, table: pa.Table) -> None:
    pq.write_table(table, folder / f"{name}.parquet", compression="lz4")
