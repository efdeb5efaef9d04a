"""Helpers over Arrow columns that the stages share: list columns as flat values plus row
offsets, per-row folds of per-item flags, boolean columns as NumPy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def list_offsets(lists: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """A list column's items, flat, and row offsets into them: row i holds
    ``items[offsets[i]:offsets[i + 1]]`` (a null row holds none)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks() if lists.num_chunks else pa.array([], lists.type)
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
