"""Helpers over Arrow columns that the stages share: list columns as flat values plus row
offsets, string columns as NumPy views of their buffers, per-row folds of per-item flags,
boolean columns as NumPy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one array (a copy only when it has several chunks)."""
    if not isinstance(values, pa.ChunkedArray):
        return values
    if values.num_chunks == 1:
        return values.chunk(0)
    return values.combine_chunks() if values.num_chunks else pa.array([], values.type)


def string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's value offsets (string i: ``data[offsets[i]:offsets[i + 1]]``) and
    its whole data buffer, as NumPy views (no copy)."""
    wide = pa.types.is_large_string(values.type)
    offsets = np.frombuffer(values.buffers()[1], np.int64 if wide else np.int32)[
        values.offset:values.offset + len(values) + 1]
    return offsets, np.frombuffer(values.buffers()[2] or b"", np.uint8)


def list_offsets(lists: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """A list column's items, flat, and row offsets into them: row i holds
    ``items[offsets[i]:offsets[i + 1]]`` (a null row holds none)."""
    lists = one_array(lists)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pc.list_flatten(lists), offsets


def any_per_row(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row: is any of its items' ``flags`` set (rows as ``list_offsets`` gives them)."""
    before = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=before[1:])
    return before[offsets[1:]] > before[offsets[:-1]]


def to_numpy_bool(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as NumPy, nulls read as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)
