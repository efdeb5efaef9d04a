"""Weighted mixing of sources: which rows go on, how often, and in what order.

Works on the `source` of each row still kept (one entry per row, in input order) and returns
emissions: row positions in output order, a row appearing more than once when resampling
repeated it. Seeded with NumPy's PCG64, so the same seed gives the same rows in the same
order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_engine.config import MixConfig
from data_engine.errors import ConfigError

REASON = "mix_surplus"


@dataclass
class MixResult:
    rows: np.ndarray  # positions into the input, in output order (repeats included)
    copy: np.ndarray  # 0 for a row's first emission, 1 for its first repeat, ...
    surplus: np.ndarray  # positions not emitted at all
    facts: dict[str, Any] = field(default_factory=dict)


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder)."""
    if total <= 0 or not weights.sum():
        return np.zeros(len(weights), dtype=np.int64)
    quota = total * weights / weights.sum()
    shares = np.floor(quota).astype(np.int64)
    rest = total - shares.sum()
    order = np.lexsort((np.arange(len(weights)), -(quota - shares)))
    shares[order[:rest]] += 1
    return shares


def mix(sources: list[str], config: MixConfig, seed: int) -> MixResult:
    """Applies ``config`` to rows whose sources are ``sources``."""
    n = len(sources)
    names, codes = np.unique(np.asarray(sources, dtype=object).astype(str), return_inverse=True)
    names = names.tolist()
    available = np.bincount(codes, minlength=len(names))
    if config.strategy == "none":
        rows = np.arange(n)
        return MixResult(rows, np.zeros(n, np.int64), np.zeros(0, np.int64),
                         _facts(config, names, available, codes, rows, np.zeros(n, np.int64)))
    unknown = sorted(set(config.weights) - set(names))
    if unknown:
        raise ConfigError([f"mix.weights.{name}: no kept row has this source (sources: "
                           f"{', '.join(names) or 'none'})" for name in unknown])
    weights = np.array([float(config.weights.get(name, 0.0)) for name in names])
    if not config.weights or not weights.sum():
        weights = np.ones(len(names))
    rng = np.random.default_rng(seed)
    order_in = [rng.permutation(np.flatnonzero(codes == s)) for s in range(len(names))]
    if config.strategy == "interleave":
        rows, copy = _interleave(order_in, weights, config.total, rng)
    else:
        rows, copy = _resample(order_in, weights, config.total or n, rng)
    surplus = np.setdiff1d(np.arange(n), rows)
    facts = _facts(config, names, available, codes, rows, copy)
    facts["warnings"] = _warnings(config, names, available, weights, facts)
    return MixResult(rows, copy, surplus, facts)


def _warnings(config: MixConfig, names: list[str], available: np.ndarray,
              weights: np.ndarray, facts: dict[str, Any]) -> list[str]:
    """What the mix left out that a user may not expect: a source's every row because the
    weights do not name it, and (interleave) the part of `total` it could not fill."""
    out = []
    if config.weights:
        for name, rows, weight in zip(names, available.tolist(), weights.tolist()):
            if weight == 0 and name not in config.weights:
                out.append(f"mix: source {name!r} ({rows:,} rows) is not in mix.weights, so "
                           f"none of its rows are kept; give it a weight to keep them")
    if config.strategy == "interleave" and config.total and facts["total"] < config.total:
        sources = facts["sources"]
        ran_out = [name for name, weight in zip(names, weights.tolist())
                   if weight and sources[name]["after"] == sources[name]["before"]]
        out.append(f"mix: interleave stopped at {facts['total']:,} of the {config.total:,} rows "
                   f"of mix.total, when {' and '.join(map(repr, ran_out)) or 'a source'} ran "
                   "out (interleave repeats no row and stops at the first source to run out; "
                   "strategy resample fills the total)")
    return out


def _interleave(order_in: list[np.ndarray], weights: np.ndarray, total: int | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws a source by weight and takes its next row, until a source runs out."""
    p = weights / weights.sum()
    available = np.array([len(o) for o in order_in])
    draws = int(available[p > 0].sum()) + 1  # some source must run out within this many
    if total is not None:
        draws = min(draws, total)
    picks = rng.choice(len(p), size=draws, p=p)
    rank = np.zeros(draws, dtype=np.int64)
    for s in range(len(p)):
        where = picks == s
        rank[where] = np.arange(where.sum())
    over = np.flatnonzero(rank >= available[picks])
    stop = over[0] if len(over) else draws
    picks, rank = picks[:stop], rank[:stop]
    starts = np.concatenate([[0], np.cumsum(available)[:-1]]).astype(np.int64)
    rows = np.concatenate(order_in).astype(np.int64)[starts[picks] + rank]
    return rows, np.zeros(len(rows), np.int64)


def _resample(order_in: list[np.ndarray], weights: np.ndarray, total: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each source gets exactly its share: a sample, or whole copies plus a sample."""
    shares = apportion(total, weights)
    rows, copy = [], []
    for s, share in enumerate(shares.tolist()):
        rows_s = order_in[s]
        if not len(rows_s) or not share:
            continue
        whole, rest = divmod(share, len(rows_s))
        for c in range(whole):
            rows.append(rows_s)
            copy.append(np.full(len(rows_s), c))
        rows.append(rows_s[:rest])
        copy.append(np.full(rest, whole))
    rows_all = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    copy_all = np.concatenate(copy) if copy else np.zeros(0, np.int64)
    shuffle = rng.permutation(len(rows_all))
    return rows_all[shuffle].astype(np.int64), copy_all[shuffle].astype(np.int64)


def _facts(config: MixConfig, names: list[str], available: np.ndarray, codes: np.ndarray,
           rows: np.ndarray, copy: np.ndarray) -> dict[str, Any]:
    after = np.bincount(codes[rows], minlength=len(names)) if len(rows) else \
        np.zeros(len(names), np.int64)
    repeats = np.bincount(codes[rows[copy > 0]], minlength=len(names)) if len(rows) else after
    total = max(int(after.sum()), 1)
    return {
        "strategy": config.strategy,
        "weights": dict(config.weights),
        "total_asked": config.total,
        "total": int(after.sum()),
        "sources": {name: {"before": int(available[i]), "after": int(after[i]),
                           "repeats": int(repeats[i]), "share": round(float(after[i]) / total, 4)}
                    for i, name in enumerate(names)},
    }
