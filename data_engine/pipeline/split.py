"""Train/validation/test assignment with exact counts, stratified by source, leak-free.

Units, not rows, are assigned: rows sharing a `group` value, rows of one duplicate cluster
(when duplicates are kept) and the repeats of a resampled row form one unit, so they land
on one side. Each source gets its share of every split (stratified), the totals match the
ratios exactly (largest remainder), and validation gets a floor. Units are visited largest
first, then in the order of a seeded hash of their members' ids (the smallest, whose row
also names the unit's source), each going to the split its source is furthest from
filling: the result depends on the seed and the rows, not on their order or on how they
were batched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_engine.config import SplitConfig
from data_engine.dedup.graph import components
from data_engine.pipeline.mix import apportion
from data_engine.schema import SPLITS

# Ties between equally short splits go to the smaller held-out splits first.
_PRIORITY = {"validation": 0, "test": 1, "train": 2}


@dataclass
class SplitResult:
    split: np.ndarray  # index into SPLITS, per row
    targets: dict[str, int]
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def split_targets(total: int, config: SplitConfig) -> tuple[np.ndarray, list[str]]:
    """Rows per split (train, validation, test) for ``total`` rows, and any warning."""
    ratios = np.array([config.train, config.validation, config.test])
    targets = apportion(total, ratios)
    warnings = []
    if total >= config.floor_min_rows and config.validation > 0:
        floor = min(config.validation_floor, total)
        if targets[1] < floor:
            moved = floor - targets[1]
            targets[1] = floor
            targets[0] -= min(moved, targets[0])
            if targets.sum() > total:
                targets[2] -= targets.sum() - total
    else:
        warnings += _small_validation(int(targets[1]), total, config)
    return targets, warnings


def _small_validation(rows: int, total: int, config: SplitConfig) -> list[str]:
    """The warning for a validation split of ``rows`` below the floor, in data too small for
    the floor to apply."""
    if total >= config.floor_min_rows or config.validation <= 0 \
            or rows >= config.validation_floor:
        return []
    return [f"validation has {rows} rows: the data has {total} rows, fewer than the "
            f"{config.floor_min_rows} the floor of {config.validation_floor} applies from; "
            "eval loss on so few rows is noisy"]


def _unit_drift(sizes: np.ndarray, targets: np.ndarray, largest_unit: int) -> list[str]:
    """The warning for split sizes off their targets: units (a group, a kept duplicate
    cluster, a row and its repeats) are never divided."""
    if np.array_equal(sizes, targets):
        return []
    off = ", ".join(f"{name} {int(size)} (target {int(target)})"
                    for name, size, target in zip(SPLITS, sizes, targets) if size != target)
    return [f"split sizes differ from the ratios' targets: {off}; rows that share a group, a "
            f"kept duplicate cluster or a row's repeats stay together (largest unit: "
            f"{largest_unit} rows)"]


def _cell_targets(per_source: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Source x split targets whose rows sum to each source's size and columns to totals."""
    grand = per_source.sum()
    quota = per_source[:, None] * totals[None, :] / max(grand, 1)
    cells = np.floor(quota).astype(np.int64)
    row_left = per_source - cells.sum(axis=1)
    col_left = totals - cells.sum(axis=0)
    frac = quota - cells
    for flat in np.argsort(-frac, axis=None, kind="stable"):
        s, k = divmod(int(flat), len(totals))
        if row_left[s] > 0 and col_left[k] > 0:
            cells[s, k] += 1
            row_left[s] -= 1
            col_left[k] -= 1
    for s in np.flatnonzero(row_left):  # only when rounding left a gap: fill any open column
        for k in np.flatnonzero(col_left):
            take = min(row_left[s], col_left[k])
            cells[s, k] += take
            row_left[s] -= take
            col_left[k] -= take
    return cells


def assign_splits(ids: list[str], sources: list[str], weights: np.ndarray,
                  links: np.ndarray, config: SplitConfig, seed: int) -> SplitResult:
    """Splits rows (``weights``: how many output rows each stands for, its repeats).

    ``links`` holds pairs of row positions that must share a split.
    """
    n = len(ids)
    nodes, roots = components(links)
    unit = np.arange(n)
    unit[nodes] = roots
    names, source_code = np.unique(np.asarray(sources, dtype=object).astype(str),
                                   return_inverse=True)
    total = int(weights.sum())
    targets, _ = split_targets(total, config)  # its warning is about the sizes reached
    # Each row's seeded hash; a unit is ranked by, and belongs to the source of, its member
    # with the smallest hash, so neither depends on the order rows came in.
    row_rank = _id_ranks(ids, seed)
    unit_ids, inverse = np.unique(unit, return_inverse=True)
    by_rank = np.lexsort((row_rank, inverse))
    first = by_rank[np.r_[True, inverse[by_rank][1:] != inverse[by_rank][:-1]][:n]]
    rank = row_rank[first]
    unit_weight = np.bincount(inverse, weights=weights).astype(np.int64)
    unit_source = source_code[first]
    cells = _cell_targets(np.bincount(unit_source, weights=unit_weight,
                                      minlength=len(names)).astype(np.int64), targets)
    split = _greedy_splits(unit_source, unit_weight, rank, cells)[inverse]
    counts = np.bincount(split, weights=weights, minlength=len(SPLITS)).astype(np.int64)
    by_source = {name: {SPLITS[k]: int(np.sum(weights[(source_code == s) & (split == k)]))
                        for k in range(len(SPLITS))} for s, name in enumerate(names.tolist())}
    largest = int(unit_weight.max()) if len(unit_weight) else 0
    facts = {"targets": dict(zip(SPLITS, targets.tolist())),
             "sizes": dict(zip(SPLITS, counts.tolist())),
             "by_source": by_source,
             "units": int(len(unit_ids)),
             "largest_unit": largest}
    warnings = _small_validation(int(counts[1]), total, config) \
        + _unit_drift(counts, targets, largest)
    return SplitResult(split, dict(zip(SPLITS, targets.tolist())), facts, warnings)


def _id_ranks(ids: list[str], seed: int) -> np.ndarray:
    """A seeded 63-bit hash of each id (keyed BLAKE2b)."""
    keyed = hashlib.blake2b(digest_size=8, key=str(seed).encode())

    def digest(row_id: str) -> bytes:
        h = keyed.copy()  # copying the keyed state is ~2x cheaper than keying anew
        h.update(row_id.encode("utf-8"))
        return h.digest()

    digests = np.frombuffer(b"".join(map(digest, ids)), dtype=">u8")
    return (digests >> np.uint64(1)).astype(np.int64)


def _greedy_splits(unit_source: np.ndarray, unit_weight: np.ndarray, rank: np.ndarray,
                   cells: np.ndarray) -> np.ndarray:
    """Each unit's split: units visited largest first, then by rank, each going to the split
    its source is furthest from filling (``cells``: source x split targets; ties go to
    validation, then test, then train).

    Sources fill independently, and for a run of one source's units of equal weight w the
    visits take, in turn, the largest of the splits' next free values ``left[k] - i * w``:
    the run's splits are those values merged in descending order, the first as many as the
    run has units. So the loop over units is a sort per (source, weight) run.
    """
    priority = np.array([_PRIORITY[name] for name in SPLITS])
    splits = len(SPLITS)
    left = cells.astype(np.int64)
    visit = np.lexsort((rank, -unit_weight, unit_source))
    source, weight = unit_source[visit], unit_weight[visit]
    starts = np.flatnonzero(np.r_[len(visit) > 0, (source[1:] != source[:-1])
                                  | (weight[1:] != weight[:-1])])
    out = np.zeros(len(visit), dtype=np.int64)
    for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(visit)].tolist()):
        s, w, m = int(source[lo]), int(weight[lo]), hi - lo
        step = np.arange(m)
        values = (left[s][:, None] - w * step[None, :]).ravel()  # split-major
        split_of = np.repeat(np.arange(splits), m)
        picks = split_of[np.lexsort((np.tile(step, splits), priority[split_of], -values))[:m]]
        out[visit[lo:hi]] = picks
        left[s] -= w * np.bincount(picks, minlength=splits)
    return out


def leak_check(a: np.ndarray, b: np.ndarray, similarity: np.ndarray, threshold: float,
               rows: np.ndarray, split: np.ndarray, ids: list[str],
               examples: int = 5) -> dict[str, Any]:
    """Near-duplicate pairs among the output rows that sit in different splits.

    ``a``/``b``/``similarity``: every pair the dedup stage examined (LSH candidates and
    exact-hash pairs) with its exact Jaccard; ``rows``: the output rows' `_idx`, sorted, and
    ``split`` their split codes.
    """
    if not len(rows) or not len(a):
        return {"pairs_examined": int(len(a)), "pairs_in_output": 0, "near_pairs_in_output": 0,
                "leaks": 0, "examples": []}
    pa_, pb_ = np.searchsorted(rows, a), np.searchsorted(rows, b)
    pa_, pb_ = np.minimum(pa_, len(rows) - 1), np.minimum(pb_, len(rows) - 1)
    present = (rows[pa_] == a) & (rows[pb_] == b)
    near = present & (similarity >= threshold)
    leaking = near & (split[pa_] != split[pb_])
    found = [{"a": ids[i], "b": ids[j], "split_a": SPLITS[split[i]],
              "split_b": SPLITS[split[j]], "jaccard": float(s)}
             for i, j, s in zip(pa_[leaking][:examples].tolist(), pb_[leaking][:examples].tolist(),
                                similarity[leaking][:examples].tolist())]
    return {"pairs_examined": int(len(a)), "pairs_in_output": int(present.sum()),
            "near_pairs_in_output": int(near.sum()), "leaks": int(leaking.sum()),
            "examples": found}
