"""Candidate pairs from LSH buckets, their exact Jaccard, and clusters from connected
components, in NumPy.

Rows are named by their global `_idx` (int64). A pair is an (a, b) row of an int64 array
with a < b.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Rows of a bucket within this many places of each other (after sorting) are paired, and
# every member is paired with the bucket's first: all pairs for buckets of up to
# WINDOW + 1 rows, and a linear number of pairs for larger ones (templated rows can fill a
# bucket with thousands).
WINDOW = 8
# Fills a segment's row of a padded matrix after its values; the largest uint64, so it sorts
# last (a value equal to it sorts among the padding, which leaves the row's values first).
_FILL = np.iinfo(np.uint64).max


def bucket_pairs(keys: np.ndarray, idx: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Pairs of rows whose ``keys`` are equal (one band's keys, or exact-text hashes)."""
    if len(keys) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((idx, keys))
    k, i = keys[order], idx[order]
    parts = []
    for d in range(1, min(window, len(k) - 1) + 1):
        same = k[d:] == k[:-d]
        if not same.any():
            break  # no bucket has d + 1 members, so none has more
        parts.append(np.stack([i[:-d][same], i[d:][same]], axis=1))
    if window < len(k) - 1:
        # star edges to each bucket's first member, for members beyond the window
        starts = np.r_[True, k[1:] != k[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(len(k)), 0))
        far = np.arange(len(k)) - first > window
        if far.any():
            parts.append(np.stack([i[first[far]], i[far]], axis=1))
    return unique_pairs(np.concatenate(parts)) if parts else np.zeros((0, 2), dtype=np.int64)


def cross_pairs(keys: np.ndarray, idx: np.ndarray, ref_keys: np.ndarray, ref_idx: np.ndarray
                ) -> np.ndarray:
    """Every (row, reference row) pair with equal keys: each reference row against its whole
    bucket, since matching a reference does not carry from one row to another."""
    if not len(keys) or not len(ref_keys):
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    k, i = keys[order], idx[order]
    lo, hi = np.searchsorted(k, ref_keys, "left"), np.searchsorted(k, ref_keys, "right")
    sizes = hi - lo
    starts = np.repeat(lo, sizes) + np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes,
                                                                      sizes)
    return np.stack([i[starts], np.repeat(ref_idx, sizes)], axis=1).astype(np.int64)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Pairs ordered (min, max), duplicates and self-pairs removed, sorted."""
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(pairs.astype(np.int64), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    # lexsort, not np.unique(axis=0): that sorts rows as opaque bytes, 6x slower here
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    new = np.ones(len(pairs), dtype=bool)
    new[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    return pairs[new]


def pair_jaccard(hashes: np.ndarray, offsets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of segments a and b's distinct values, for every (a, b) of ``pairs``.

    Segment i is ``hashes[offsets[i]:offsets[i + 1]]`` (uint64, repeats allowed: a text's
    n-gram hashes). The same numbers as `minhash.jaccard` of the segments' distinct sorted
    values, pair by pair, in a few NumPy calls for all pairs: each segment is sorted and its
    repeats dropped, then each pair's two distinct segments are sorted together, where a
    value in both is two equal neighbours.
    """
    count = len(offsets) - 1
    sizes = np.zeros(count, dtype=np.int64)
    distinct, held = [], []
    for rows, matrix, valid in _sorted_segments(hashes, offsets):
        first = valid.copy()
        first[:, 1:] &= matrix[:, 1:] != matrix[:, :-1]
        distinct.append(matrix[first])
        sizes[rows] = np.count_nonzero(first, axis=1)
        held.append(rows)
    # Segments' distinct values lie in `distinct` by length class, not in segment order.
    order = np.concatenate(held) if held else np.zeros(0, dtype=np.int64)
    starts = np.zeros(count, dtype=np.int64)
    starts[order] = np.cumsum(sizes[order]) - sizes[order]
    values = np.concatenate(distinct) if distinct else np.zeros(0, dtype=np.uint64)
    a, b = pairs[:, 0], pairs[:, 1]
    both = pairs.ravel()  # a's values then b's, pair after pair
    merged = values[_ranges(starts[both], sizes[both])]
    merged_offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
    np.cumsum(sizes[a] + sizes[b], out=merged_offsets[1:])
    inter = np.zeros(len(pairs), dtype=np.int64)
    # Each merged segment is two sorted runs: a stable sort (timsort) just merges them.
    for rows, matrix, valid in _sorted_segments(merged, merged_offsets, "stable"):
        inter[rows] = np.count_nonzero((matrix[:, 1:] == matrix[:, :-1]) & valid[:, 1:], axis=1)
    union = sizes[a] + sizes[b] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty sets: 1.0


def _sorted_segments(values: np.ndarray, offsets: np.ndarray, kind: str = "quicksort"
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every segment ``values[offsets[i]:offsets[i + 1]]`` sorted, as rows of padded
    matrices: yields (segment numbers, their rows sorted, which cells hold values).

    One matrix per power-of-two length, so the padding at most doubles the work and one
    long segment does not widen every row; NumPy sorts each short row in cache.
    """
    lengths = np.diff(offsets)
    if not len(lengths):
        return
    width = np.left_shift(1, np.frexp(np.maximum(lengths, 1) - 1)[1].astype(np.int64))
    padded = np.concatenate([values, np.full(int(width.max()), _FILL, dtype=np.uint64)])
    for w in np.unique(width).tolist():
        rows = np.flatnonzero(width == w)
        matrix = sliding_window_view(padded, w)[offsets[rows]]  # a copy: each row a segment
        valid = np.arange(w) < lengths[rows, None]
        np.putmask(matrix, ~valid, _FILL)
        matrix.sort(axis=1, kind=kind)
        yield rows, matrix, valid


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]`` to ``starts[i] + lengths[i]`` (exclusive), concatenated."""
    ends = np.cumsum(lengths)
    return np.repeat(starts + lengths - ends, lengths) + np.arange(ends[-1] if len(ends) else 0)


def components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of an edge list: (nodes, root of each node).

    Nodes are sorted; a component's root is its smallest node, so "first in input order".
    Min-label propagation with pointer jumping: O(edges) per round, few rounds.
    """
    if not len(edges):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    nodes, flat = np.unique(edges, return_inverse=True)
    a, b = flat.reshape(-1, 2).T
    label = np.arange(len(nodes))
    while True:
        la, lb = label[a], label[b]
        low = np.minimum(la, lb)
        before = label.copy()
        np.minimum.at(label, la, low)
        np.minimum.at(label, lb, low)
        while True:  # pointer jumping: every node points at its label's label
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label, before):
            return nodes, nodes[label]
