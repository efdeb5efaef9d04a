"""Seeded train/validation/test assignment by hashing each row's id.

Hashing (not shuffling) makes the assignment independent of row order and of how rows are
batched across workers, and puts rows with equal ids (identical conversations) on one side.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from data_engine.config import SplitConfig
from data_engine.schema import SPLIT

def split_of(row_id: str, seed: int, config: SplitConfig) -> str:
    """The split of ``row_id``: a uniform draw from the id's hash against the ratios."""
    digest = hashlib.blake2b(f"{seed}\x00{row_id}".encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < config.train:
        return "train"
    if u < config.train + config.validation:
        return "validation"
    return "test"

def split_batch(batch: pa.Table, config: SplitConfig, seed: int) -> pa.Table:
    """Ray Data batch UDF: adds `split` to kept rows (null on rejected ones)."""
    ids = batch.column("id").to_pylist()
    reasons = batch.column("_reason").to_pylist()
    splits = [split_of(i, seed, config) if r is None else None for i, r in zip(ids, reasons)]
    return batch.append_column(SPLIT, pa.array(splits, pa.string()))
