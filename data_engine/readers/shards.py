"""Splits inputs into shards (byte ranges, row groups, Arrow files) that ingest tasks read.

The driver only scans for line boundaries and file metadata; rows are parsed inside the
Ray tasks, so a large file is read in parallel and no row passes through the driver.
On a cluster, input paths must be readable from every node (shared storage).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_engine.config import InputConfig
from data_engine.errors import InputError

_SCAN_BLOCK = 16 << 20
_BOM = "\ufeff".encode("utf-8")
# A JSON escape of a UTF-16 surrogate, the only way JSON text holds one.
_LONE_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass
class Shard:
    """A slice of one input file that one ingest task reads."""

    input_index: int
    path: str  # the file itself (for a save_to_disk folder: one of its Arrow files)
    kind: str  # jsonl | json (an array of rows) | parquet | arrow
    start: int  # jsonl: byte offset; parquet: first row group; json, arrow: first row
    stop: int  # exclusive, same unit as start
    first_line: int  # 1-based line / row number of the shard's first row
    rows: int  # lines (JSONL, blank ones included) or rows in the shard
    # `_idx` of the shard's first line: lines (or rows) of every shard before it, so a row's
    # `_idx` is its position in the whole input (blank JSONL lines leave gaps)
    base: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InputFile:
    """What the manifest records about one file read."""

    input_index: int
    path: str
    kind: str
    sha256: str


def plan_shards(inputs: list[InputConfig], shard_rows: int) -> tuple[list[Shard], list[InputFile]]:
    """Returns the shards to read and a record of every file, in input order."""
    shards: list[Shard] = []
    files: list[InputFile] = []
    for index, item in enumerate(inputs):
        for path, kind in _files_of(item.path):
            planner = {"jsonl": _plan_jsonl, "json": _plan_json, "parquet": _plan_parquet,
                       "arrow": _plan_arrow}[kind]
            file_shards, digest = planner(index, path, shard_rows)
            for shard in file_shards:
                shard.base = shards[-1].base + shards[-1].rows if shards else 0
                shards.append(shard)
            files.append(InputFile(index, path, kind, digest))
    return shards, files


def check_inputs(inputs: list[InputConfig], field: str = "inputs") -> None:
    """Raises InputError (naming ``field``) for an input that does not exist or is of no kind
    we read, without reading any file (planning reads and hashes them all)."""
    for item in inputs:
        try:
            _files_of(item.path)
        except InputError as exc:
            raise InputError(exc.path, exc.message, field) from None


def first_rows(item: InputConfig, lines: int) -> tuple[str, list[dict[str, Any]]]:
    """(the input's first file, the rows among its first ``lines`` lines or rows that parse
    as objects): enough to tell a file's shape without reading it."""
    path, kind = _files_of(item.path)[0]
    if kind == "json":
        try:
            return path, [row for row in _json_array(path)[:lines] if isinstance(row, dict)]
        except InputError:  # planning's to report
            return path, []
    if kind == "jsonl":
        rows = []
        with open(path, "rb") as fh:
            for _, raw in zip(range(lines), fh):
                try:
                    row = json.loads(raw)
                except ValueError:  # UnicodeDecodeError is one
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        return path, rows
    try:  # a corrupt file is planning's to report, with its own message
        if kind == "parquet":
            batch = next(pq.ParquetFile(path).iter_batches(batch_size=lines), None)
        else:
            with pa.memory_map(path) as source:
                batch = next(iter(pa.ipc.open_stream(source)), None)
    except (pa.ArrowInvalid, OSError):
        return path, []
    return path, [] if batch is None else batch.slice(0, lines).to_pylist()


def default_source(path: str) -> str:
    """The `source` of rows from ``path``: the file's name up to its first dot
    (`qa.train.jsonl`: qa), or the folder's name."""
    p = Path(path)
    return p.name if p.is_dir() else p.name.split(".")[0]


def _files_of(path: str) -> list[tuple[str, str]]:
    p = Path(path)
    if not p.exists():
        raise InputError(path, "no such file or folder")
    if p.is_file():
        kind = _kind_of(p)
        if kind is None:
            raise InputError(path, "unsupported file type (expected .jsonl, .json, .ndjson, "
                             ".parquet or .arrow, or a folder of them)"
                             + _CONVERT.get(_data_suffix(p) or "", ""))
        return [(str(p), kind)]
    if (p / "dataset_dict.json").exists():
        splits = json.loads((p / "dataset_dict.json").read_text())["splits"]
        return [f for split in splits for f in _save_to_disk_files(p / split)]
    if (p / "state.json").exists():
        return _save_to_disk_files(p)
    entries = sorted(f for f in p.iterdir() if f.is_file())
    unread = [f.name for f in entries if _kind_of(f) is None and _data_suffix(f)]
    if unread:  # skipped in silence, they were rows missing from the outputs
        shown = ", ".join(unread[:5]) + (f" and {len(unread) - 5} more" if len(unread) > 5
                                         else "")
        raise InputError(path, f"folder holds data files of a type not read: {shown}; "
                         "convert them (.jsonl, .parquet) or give the files to read as "
                         "inputs one by one" + _CONVERT.get(_data_suffix(p / unread[0]), ""))
    files = [(str(f), kind) for f in entries if (kind := _kind_of(f)) is not None]
    if files:
        return files
    raise InputError(path, "folder is neither a datasets save_to_disk folder nor holds "
                     "*.parquet, *.jsonl or *.arrow files")


# Files that hold rows in a form not read here: a folder holding one is refused, not read
# in part.
_DATA_SUFFIXES = (".gz", ".zst", ".bz2", ".xz", ".zip", ".csv", ".tsv", ".feather", ".avro")
_CONVERT = {
    ".gz": " (decompress first: gunzip -k FILE)",
    ".zst": " (decompress first: zstd -d FILE)",
    ".csv": " (a CSV: write it as Parquet, e.g. pandas.read_csv(F).to_parquet(G), and map "
            "its columns with `columns:`)",
}


def _data_suffix(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in _DATA_SUFFIXES else None


def _kind_of(path: Path) -> str | None:
    """How a file is read: jsonl, json (one JSON array of rows, as Alpaca's
    `alpaca_data.json` is published), parquet or arrow; None for other files."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        with open(path, "rb") as fh:
            head = fh.read(4096).removeprefix(_BOM).lstrip()
        return "json" if head.startswith(b"[") else "jsonl"
    return {".parquet": "parquet", ".arrow": "arrow"}.get(suffix)


def _save_to_disk_files(folder: Path) -> list[tuple[str, str]]:
    state = json.loads((folder / "state.json").read_text())
    return [(str(folder / f["filename"]), "arrow") for f in state["_data_files"]]


def _plan_jsonl(index: int, path: str, shard_rows: int) -> tuple[list[Shard], str]:
    """Finds the byte offset of every line start and cuts every ``shard_rows`` lines."""
    digest = hashlib.sha256()
    ends: list[np.ndarray] = []
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_SCAN_BLOCK):
            digest.update(block)
            ends.append(np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + size + 1)
            size += len(block)
    line_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if size and (line_ends.size == 0 or line_ends[-1] != size):
        line_ends = np.append(line_ends, size)  # last line without a trailing newline
    starts = np.concatenate([[0], line_ends[:-1]]) if line_ends.size else line_ends
    shards = []
    for first in range(0, len(starts), shard_rows):
        last = min(first + shard_rows, len(starts)) - 1
        shards.append(Shard(index, path, "jsonl", int(starts[first]), int(line_ends[last]),
                            first + 1, last - first + 1))
    return shards, digest.hexdigest()


def _plan_json(index: int, path: str, shard_rows: int) -> tuple[list[Shard], str]:
    """A JSON array of rows: read whole (here to count its rows, and by each task that
    reads a range of them), cut every ``shard_rows`` elements."""
    rows = len(_json_array(path))
    shards = [Shard(index, path, "json", s, min(s + shard_rows, rows), s + 1,
                    min(s + shard_rows, rows) - s) for s in range(0, rows, shard_rows)]
    return shards, file_sha256(path)


def _json_array(path: str) -> list[Any]:
    try:
        with open(path, "rb") as fh:
            value = json.loads(fh.read().removeprefix(_BOM).decode("utf-8"))
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputError(path, f"starts like a JSON array but is not one ({exc}); a file "
                         "of one JSON object per line is read as JSON Lines") from None
    if not isinstance(value, list):
        raise InputError(path, "is JSON but not an array of rows")
    return value


def _plan_parquet(index: int, path: str, shard_rows: int) -> tuple[list[Shard], str]:
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    shards, group_start, first_line, rows = [], 0, 1, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows - (first_line - 1) >= shard_rows or g == meta.num_row_groups - 1:
            shards.append(Shard(index, path, "parquet", group_start, g + 1, first_line,
                                rows - first_line + 1))
            group_start, first_line = g + 1, rows + 1
    return shards, file_sha256(path)


def _plan_arrow(index: int, path: str, shard_rows: int) -> tuple[list[Shard], str]:
    try:
        with pa.memory_map(path) as source:
            rows = pa.ipc.open_stream(source).read_all().num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(path, f"not a readable Arrow stream ({exc})") from None
    shards = [Shard(index, path, "arrow", s, min(s + shard_rows, rows), s + 1,
                    min(s + shard_rows, rows) - s) for s in range(0, rows, shard_rows)]
    return shards, file_sha256(path)


def input_digests(inputs: list[InputConfig]) -> list[tuple[str, str]]:
    """(path, SHA-256) of every file the inputs name, in input order, without planning
    shards: what tells a caller that the data changed."""
    return [(path, file_sha256(path)) for item in inputs for path, _ in _files_of(item.path)]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_SCAN_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(shard: Shard) -> bytes:
    """The bytes of a JSONL shard."""
    with open(shard.path, "rb") as fh:
        fh.seek(shard.start)
        return fh.read(shard.stop - shard.start)


def iter_shard(shard: Shard) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yields (line number, parsed row or None when malformed, raw text) for each row."""
    if shard.kind == "jsonl":
        data = read_bytes(shard)
        for offset, raw in enumerate(data.split(b"\n")):
            if not raw.strip():
                continue  # blank lines (and the final newline) are not rows
            if offset == 0 and shard.start == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]  # a byte-order mark Windows editors write: not text
            try:  # JSON text is UTF-8 (RFC 8259): other bytes make the line malformed, not
                text = raw.decode("utf-8").rstrip("\r")  # silently replaced characters
                row = json.loads(text)
                if _LONE_SURROGATE_HINT.search(raw):
                    # an escaped half of a pair (`"\ud83d"`): json reads it, UTF-8 cannot
                    # hold it, so the row would fail every step that writes it
                    json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeError:  # bytes that are not UTF-8, or a lone surrogate
                text, row = raw.decode("utf-8", errors="replace").rstrip("\r"), None
            except ValueError:
                row = None
            yield shard.first_line + offset, row if isinstance(row, dict) else None, text
        return
    if shard.kind == "json":
        for offset, row in enumerate(_json_array(shard.path)[shard.start:shard.stop]):
            text = json.dumps(row, ensure_ascii=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # half a surrogate pair: no UTF-8 text holds it
                text, row = json.dumps(row), None
            yield shard.first_line + offset, row if isinstance(row, dict) else None, text
        return
    if shard.kind == "parquet":
        table = pq.ParquetFile(shard.path).read_row_groups(list(range(shard.start, shard.stop)))
    else:
        with pa.memory_map(shard.path) as source:
            table = pa.ipc.open_stream(source).read_all().slice(shard.start,
                                                                  shard.stop - shard.start)
    for offset, row in enumerate(table.to_pylist()):
        yield shard.first_line + offset, row, json.dumps(row, ensure_ascii=False, default=str)
