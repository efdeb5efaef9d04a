"""Candidate pairs from LSH buckets and clusters from connected components, in NumPy.

Rows are named by their global `_idx` (int64). A pair is an (a, b) row of an int64 array
with a < b.
"""

from __future__ import annotations

import numpy as np

# Rows of a bucket within this many places of each other (after sorting) are paired, and
# every member is paired with the bucket's first: all pairs for buckets of up to
# WINDOW + 1 rows, and a linear number of pairs for larger ones (templated rows can fill a
# bucket with thousands).
WINDOW = 8


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
    return np.unique(pairs, axis=0)


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
