"""The dedup stage, shaped like NeMo Curator's and datatrove's: no index of all rows anywhere.

1. signatures: per stored part of clean rows, the exact-text hash, MinHash signature
   (rensa) and one key per LSH band, as a Parquet part. The clean stage's tasks already
   sign the rows they clean (`sign_rows`, the rows are in memory there); this stage uses
   those parts when they were made with its signature settings and signs only the rest.
2. buckets: one Ray task per group of bands reads only its band columns and pairs rows with
   equal keys (rows sorted by key, so a bucket is a run); the exact hash is one more "band".
3. confirm: Ray tasks compute the exact Jaccard of each candidate pair's n-gram sets (pairs
   whose full-signature estimate is far below the threshold skip it); pairs below the
   threshold are LSH false positives and dropped.
4. clusters: connected components over the confirmed pairs (an edge list, O(duplicates)).
   Within a cluster the first row in input order is kept; the others are dropped as
   `exact_duplicate` (same normalised conversation as the kept row) or `near_duplicate`.
   Dedup runs on rows that passed the cleaning filters only, so a clean row is never
   dropped in favour of a defective twin.
5. reference (optional): reference rows get signatures of the same text; a row whose
   confirmed Jaccard to any reference row reaches the reference threshold is dropped as
   `contaminates_reference`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_engine.config import CleanConfig, DedupConfig
from data_engine.dedup.graph import (WINDOW, bucket_pairs, components, cross_pairs,
                                     pair_jaccard, unique_pairs)
from data_engine.dedup.minhash import band_keys, ngram_hashes, signatures
from data_engine.dedup.text import batch_texts
from data_engine.executor import map_tasks
from data_engine.stages import PartWriter, stage_key, write_table

STAGE = "dedup"
REASONS = ("exact_duplicate", "near_duplicate", "contaminates_reference")
# Reference rows are numbered from here, so one pair array can hold both kinds of rows.
REF_BASE = 1 << 40
# Candidate pairs per confirmation task. Each task reads the text and signature columns of
# the parts holding its rows, which for random pairs is every part (~0.8 s at 1M rows): few,
# large tasks. 150k pairs peak at ~320 MB a task (1M rows: ~290k candidates, one round of
# two tasks: 4.8 -> ~3.2 s against two rounds of 100k-pair tasks).
CONFIRM_CHUNK = 150_000
# Candidates whose MinHash estimate is this far below the threshold skip the exact Jaccard:
# with 128 permutations a pair at Jaccard 0.8 is estimated below 0.65 with probability 5e-5.
ESTIMATE_MARGIN = 0.15
# Pairs per slice when estimating from signatures and when computing the exact Jaccard (the
# vectorised `pair_jaccard` peaks at ~60 bytes per character of the slice's texts: ~75 MB).
ESTIMATE_SLICE = 50_000
JACCARD_SLICE = 2_000


def key_columns(prefix: str, bands: int) -> list[str]:
    return [f"{prefix}{b}" for b in range(bands)]


def signature_key(config: DedupConfig, with_prompt: bool) -> str:
    """What a signature part depends on besides its rows; parts made under another key
    (another n-gram size, seed or banding) are not reused."""
    return stage_key("signatures", {
        "ngram": config.ngram, "bands": config.bands, "rows_per_band": config.rows_per_band,
        "seed": config.seed, "with_prompt": with_prompt}, None)


def sign_rows(rows: pa.Table, path: Path, config: DedupConfig, with_prompt: bool) -> None:
    """Writes the signature part of ``rows`` (stored rows with `_idx`) to ``path``."""
    _write_signatures(signature_batch(rows, config, with_prompt), path)


def _write_signatures(table: pa.Table, path: str | Path) -> None:
    """Only the text columns are compressed: the hashes, signatures and keys are random bytes
    that neither LZ4 nor dictionaries shrink, and nothing reads their statistics; writing
    them plain is ~30% faster and reads back faster, for a ~4% larger part."""
    pq.write_table(table, path, compression={"text": "lz4", "ptext": "lz4"},
                   use_dictionary=False, write_statistics=False)


def sign_part(rows_path: str, out_path: str, config: DedupConfig, with_prompt: bool,
              excluded: np.ndarray, signed_path: str | None) -> int:
    """Ray task: the signature part of one stored rows part, from the part the clean stage
    signed (``signed_path``, minus ``excluded`` rows) or computed here; returns its rows."""
    if signed_path is not None:
        table = pq.read_table(signed_path)
        if len(excluded):
            table = table.filter(pc.invert(pc.is_in(table.column("_idx"), pa.array(excluded))))
    else:
        table = signature_batch(pq.read_table(rows_path, columns=["_idx", "id", "messages",
                                                                    "_reason"]),
                                config, with_prompt, excluded=excluded)
    _write_signatures(table, out_path)
    return table.num_rows


def signature_batch(batch: pa.Table, config: DedupConfig, with_prompt: bool,
                    normalize: CleanConfig | None = None, reference: bool = False,
                    excluded: np.ndarray | None = None) -> pa.Table:
    """Arrow batch function: kept rows -> `_idx`, `id`, `exact`, `text`, `sig`, band keys `k0..`.

    `sig` is the whole MinHash signature (uint32 x permutations, as bytes), used to skip the
    exact Jaccard of candidates that are clearly below the threshold. With ``with_prompt``
    also `ptext`, `psig` and keys `p0..` of the user turns (for matching a reference set by
    prompt). Reference rows (``reference``) are normalised like the clean stage does
    (``normalize``) and signed on the text the reference is matched by.
    """
    if normalize is not None:
        from data_engine.pipeline.clean import normalize_messages

        batch = batch.set_column(batch.schema.get_field_index("messages"), "messages",
                                 normalize_messages(batch.column("messages"), normalize))
    kept = pc.is_null(batch.column("_reason"))
    if excluded is not None and len(excluded):
        kept = pc.and_(kept, pc.invert(pc.is_in(batch.column("_idx"), pa.array(excluded))))
    # Only the columns signing reads are filtered (copied): the rows' others are not needed.
    batch = batch.select(["_idx", "id", "messages"]).filter(kept)
    texts = batch_texts(batch.column("messages"))
    signed = (texts.prompt_array if reference and config.reference.match == "prompt"
              else texts.near_array)
    columns: dict[str, Any] = {"_idx": batch.column("_idx"), "id": batch.column("id"),
                               "exact": pa.array(texts.exact_keys, pa.int64())}
    columns.update(_signed(signed, config, "text", "sig", "k"))
    if with_prompt:
        columns.update(_signed(texts.prompt_array, config, "ptext", "psig", "p"))
    return pa.table(columns)


def _signed(texts: pa.StringArray, config: DedupConfig, text: str, sig: str, prefix: str
            ) -> dict[str, Any]:
    sigs = signatures(texts.to_pylist(), config.ngram, config.num_perm, config.seed)
    keys = band_keys(sigs, config.bands, config.rows_per_band)
    width = 4 * config.num_perm
    columns: dict[str, Any] = {
        text: texts,
        sig: pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(texts), [None, pa.py_buffer(np.ascontiguousarray(sigs))])}
    for b, name in enumerate(key_columns(prefix, config.bands)):
        columns[name] = keys[:, b]
    return columns


def _read_part(path: str, columns: list[str]) -> pa.Table:
    """``columns`` of one Parquet part, decoded on this thread: a task holds one CPU, and on
    parts this small Arrow's thread pool costs more than it gains (4x on `sig`)."""
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)


def _member(idx: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which of ``idx`` are in ``wanted`` (sorted, distinct, not empty): a binary search,
    where `pc.is_in` would hash all of ``wanted`` again for every part it filters."""
    return wanted[np.minimum(np.searchsorted(wanted, idx), len(wanted) - 1)] == idx


def _read_keys(files: list[str], columns: list[str]
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``columns`` (band keys or exact hashes) and `_idx` of every part, each part read once."""
    tables = [_read_part(f, ["_idx", *columns]) for f in files]
    if not tables:
        return {c: np.zeros(0, np.int64) for c in columns}, np.zeros(0, np.int64)
    table = pa.concat_tables(tables)
    return {c: table.column(c).to_numpy() for c in columns}, table.column("_idx").to_numpy()


def band_task(files: list[str], columns: list[str], window: int,
              ref_files: list[str] | None = None) -> np.ndarray:
    """Candidate pairs from the given band columns (one task holds one band at a time).

    With ``ref_files``: (row, reference row) pairs, each reference row against every row
    sharing its key in a band (the reference rows' band keys are their `k*` columns).
    """
    keys, idx = _read_keys(files, columns)
    if ref_files is not None:
        ref_columns = ["k" + column[1:] for column in columns]
        ref_keys, ref_idx = _read_keys(ref_files, ref_columns)
    found = []
    for number, column in enumerate(columns):
        if ref_files is None:
            found.append(bucket_pairs(keys.pop(column), idx, window))
        else:
            found.append(cross_pairs(keys.pop(column), idx, ref_keys[ref_columns[number]],
                                     ref_idx))
    return unique_pairs(np.concatenate(found)) if found else np.zeros((0, 2), np.int64)


def _read_sorted(files: list[str], column: str, wanted: np.ndarray
                 ) -> tuple[np.ndarray, pa.Array]:
    """``column`` of the rows whose `_idx` is in ``wanted`` (sorted, distinct): their `_idx`
    ascending and the values in that order, kept as Arrow (no Python object per row)."""
    idx_parts, value_parts = [], []
    for f in files if len(wanted) else []:
        table = _read_part(f, ["_idx", column])
        idx = table.column("_idx").to_numpy()
        keep = _member(idx, wanted)
        if keep.any():
            idx_parts.append(idx[keep])
            value_parts.append(table.column(column).combine_chunks().filter(pa.array(keep)))
    if not idx_parts:
        return np.zeros(0, np.int64), pa.array([], pa.string())
    idx, values = np.concatenate(idx_parts), pa.concat_arrays(value_parts)
    if (idx[1:] < idx[:-1]).any():  # parts out of `_idx` order
        order = np.argsort(idx, kind="stable")
        idx, values = idx[order], values.take(pa.array(order))
    return idx, values


def _signature_matrix(values: pa.Array, num_perm: int) -> np.ndarray:
    """A FixedSizeBinary column of signatures as a (rows, num_perm) uint32 view."""
    flat = np.frombuffer(values.buffers()[1], dtype=np.uint32)
    return flat[values.offset * num_perm:(values.offset + len(values)) * num_perm].reshape(
        len(values), num_perm)


def confirm_task(pairs: np.ndarray, files: list[str], text: str, sig: str, ngram: int,
                 threshold: float, ref_files: list[str] | None = None) -> np.ndarray:
    """Each pair's Jaccard: exact for pairs whose MinHash estimate is within
    ESTIMATE_MARGIN of ``threshold`` or above, the estimate for the rest (which are clearly
    below). Reference rows are read from ``ref_files`` (their `text` and `sig`).

    Memory stays near the size of the rows' signatures and texts as Arrow buffers: the
    estimates and the n-gram sets are made a slice of pairs at a time.
    """
    if not len(pairs):
        return np.zeros(0, dtype=np.float64)

    def read(column: str, ref_column: str, wanted: np.ndarray) -> tuple[np.ndarray, pa.Array]:
        idx, values = _read_sorted(files, column, wanted[wanted < REF_BASE])
        if ref_files is not None:  # reference rows number from REF_BASE: they sort last
            ref_idx, ref_values = _read_sorted(ref_files, ref_column, wanted[wanted >= REF_BASE])
            if len(ref_idx):
                idx = np.concatenate([idx, ref_idx])
                values = pa.concat_arrays([values, ref_values]) if len(values) else ref_values
        return idx, values

    sig_idx, sig_values = read(sig, "sig", np.unique(pairs))
    matrix = _signature_matrix(sig_values, sig_values.type.byte_width // 4)
    pos = np.searchsorted(sig_idx, pairs)
    similarity = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), ESTIMATE_SLICE):
        a, b = pos[lo:lo + ESTIMATE_SLICE, 0], pos[lo:lo + ESTIMATE_SLICE, 1]
        same = np.count_nonzero(matrix[a] == matrix[b], axis=1)
        similarity[lo:lo + ESTIMATE_SLICE] = same / matrix.shape[1]
    del matrix, sig_values
    close = np.flatnonzero(similarity >= threshold - ESTIMATE_MARGIN)
    text_idx, texts = read(text, "text", np.unique(pairs[close]))
    for lo in range(0, len(close), JACCARD_SLICE):
        part = close[lo:lo + JACCARD_SLICE]
        rows = np.unique(pairs[part])
        hashes, offsets = ngram_hashes(
            texts.take(pa.array(np.searchsorted(text_idx, rows))).to_pylist(), ngram)
        similarity[part] = pair_jaccard(hashes, offsets, np.searchsorted(rows, pairs[part]))
    return similarity


@dataclass
class Cluster:
    """The decisions of one stage run, keyed by `_idx` (sorted)."""

    idx: np.ndarray  # every row in a cluster or matching a reference
    cluster: np.ndarray  # the cluster's first row's _idx (-1 when only a reference matched)
    reason: pa.Array  # string, null: kept
    duplicate_of: pa.Array  # string: the kept row's id, or the reference row's id
    similarity: np.ndarray  # best confirmed Jaccard to a neighbour


def decide(config: DedupConfig, exact_pairs: np.ndarray, near_pairs: np.ndarray,
           near_sim: np.ndarray, ref_pairs: np.ndarray, idx: np.ndarray, ids: pa.Array,
           exact: np.ndarray) -> Cluster:
    """Clusters rows and picks the kept row of each; the rest get their reason.

    ``idx`` (ascending) holds at least every row of the pairs, reference rows included;
    ``ids`` and ``exact`` (exact-text hashes) are theirs, in that order. Vectorised: at 1M
    rows some 400k rows are in a pair.
    """
    edges = np.concatenate([exact_pairs, near_pairs]) if len(near_pairs) else exact_pairs
    nodes, roots = components(edges)
    last = ref_pairs[::-1]  # a row matching several reference rows names its last pair's
    contaminated, first = np.unique(last[:, 0], return_index=True)
    everything = np.union1d(nodes, contaminated)
    in_graph = np.isin(everything, nodes)
    is_contaminated = np.isin(everything, contaminated)
    cluster = np.full(len(everything), -1, dtype=np.int64)
    cluster[in_graph] = roots
    # Each cluster's kept row is its first clean member, held at its root's place in `nodes`.
    root_at = np.searchsorted(nodes, roots)
    clean = ~is_contaminated[in_graph]
    first_clean = np.full(len(nodes), np.iinfo(np.int64).max)
    np.minimum.at(first_clean, root_at[clean], nodes[clean])
    keeper = np.full(len(everything), -1, dtype=np.int64)
    keeper[in_graph] = first_clean[root_at]
    dropped = in_graph & ~is_contaminated & (everything != keeper)
    keeper_at = np.searchsorted(idx, keeper[dropped])
    same = exact[np.searchsorted(idx, everything[dropped])] == exact[keeper_at]
    code = np.zeros(len(everything), dtype=np.int64)  # into `labels`: 0 is kept
    code[dropped] = np.where(same, 1 if config.exact else 0, 2 if config.near else 0)
    code[is_contaminated] = 3
    labels = pa.array([None, *REASONS], pa.string())
    dup_at = np.full(len(everything), -1, dtype=np.int64)  # into `ids`
    dup_at[dropped] = keeper_at
    dup_at[is_contaminated] = np.searchsorted(idx, last[first, 1])
    similarity = np.zeros(len(everything), dtype=np.float64)
    for pairs, sim in ((near_pairs, near_sim), (exact_pairs, np.ones(len(exact_pairs)))):
        for end in pairs.T:
            np.maximum.at(similarity, np.searchsorted(everything, end), sim)
    return Cluster(everything, cluster, labels.take(pa.array(code)),
                   ids.take(pa.array(dup_at, mask=dup_at < 0)), similarity)


@dataclass
class DedupInputs:
    """What the stage reads: the stored rows' parts, and reference rows."""

    clean_files: list[str]
    reference: list[pa.Table] | None  # ingested reference rows with `_idx`
    read_args: dict[str, Any]  # ray_remote_args pinning reads to the node holding the files
    excluded: np.ndarray | None = None  # `_idx` of kept rows a later stage dropped (judge)
    signed: dict[str, str] | None = None  # rows part -> its signature part, made under
    #                                      this stage's `signature_key`


def run_dedup(inputs: DedupInputs, config: DedupConfig, clean: CleanConfig, folder: Path,
              num_tasks: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Runs the dedup stage into ``folder``; returns its facts for the manifest."""
    import ray

    timings: dict[str, float] = {}
    start = time.perf_counter()
    with_prompt = bool(inputs.reference is not None and config.reference.match == "prompt")
    excluded = inputs.excluded if inputs.excluded is not None else np.zeros(0, np.int64)
    signed = inputs.signed or {}
    excluded_ref = ray.put(excluded)
    sig_files: list[str] = []
    calls = []
    for number, rows_path in enumerate(inputs.clean_files):
        if rows_path in signed and not len(excluded):
            sig_files.append(signed[rows_path])  # the clean stage's part, as it is
            continue
        sig_files.append(str(folder / f"signatures-{number:05d}.parquet"))
        calls.append((rows_path, sig_files[-1], config, with_prompt, excluded_ref,
                      signed.get(rows_path)))
    for _ in map_tasks(sign_part, calls, inputs.read_args):
        pass
    signed_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in sig_files)
    ref_files: list[str] = []
    ref_rows = 0
    if inputs.reference is not None:  # reference sets are small (eval sets): on the driver
        ref_writer = PartWriter(folder, "reference")
        for table in inputs.reference:
            ref = signature_batch(table, config, False, normalize=clean, reference=True)
            ref_writer.write(ref)
            ref_rows += ref.num_rows
        ref_files = sorted(str(p) for p in folder.glob("reference-*.parquet"))
    timings["signatures"] = time.perf_counter() - start
    log(f"dedup: {signed_rows:,} rows signed ({config.bands} bands x {config.rows_per_band} "
        f"rows, {len(calls)} of {len(sig_files)} parts signed here)")

    remote = ray.remote(num_cpus=1, **inputs.read_args)
    band = remote(band_task)
    confirm = remote(confirm_task)
    start = time.perf_counter()
    columns = key_columns("k", config.bands)
    groups = [columns[g::num_tasks] for g in range(min(num_tasks, len(columns)))]
    futures = [band.remote(sig_files, g, WINDOW) for g in groups]
    exact_future = band.remote(sig_files, ["exact"], 1)  # equality is transitive: runs suffice
    ref_futures = []
    if ref_files:
        prefix = "p" if with_prompt else "k"
        ref_futures = [band.remote(sig_files, [prefix + c[1:] for c in g], WINDOW, ref_files)
                       for g in groups]
    candidates = unique_pairs(np.concatenate(ray.get(futures)))
    exact_pairs = ray.get(exact_future)
    ref_candidates = unique_pairs(np.concatenate(ray.get(ref_futures))) if ref_futures else \
        np.zeros((0, 2), np.int64)
    timings["buckets"] = time.perf_counter() - start
    log(f"dedup: {len(candidates):,} candidate pairs, {len(exact_pairs):,} exact pairs")

    start = time.perf_counter()
    sim = _confirm_all(confirm, candidates, num_tasks, sig_files, ("text", "sig"),
                       config.ngram, config.threshold)
    ref_sim = _confirm_all(confirm, ref_candidates, num_tasks, sig_files,
                           ("ptext", "psig") if with_prompt else ("text", "sig"), config.ngram,
                           config.reference.threshold, ref_files)
    near = sim >= config.threshold
    ref_hits = ref_candidates[ref_sim >= config.reference.threshold]
    timings["confirm"] = time.perf_counter() - start

    start = time.perf_counter()
    wanted = np.unique(np.concatenate([candidates.ravel(), exact_pairs.ravel(),
                                       ref_hits.ravel()]))
    idx, ids = _read_sorted(sig_files + ref_files, "id", wanted)
    exact = _read_sorted(sig_files + ref_files, "exact", wanted)[1]
    result = decide(config, exact_pairs, candidates[near], sim[near], ref_hits, idx, ids,
                    exact.to_numpy(zero_copy_only=False))
    write_table(folder, "decisions", pa.table({
        "_idx": result.idx, "dup_cluster": result.cluster, "_reason": result.reason,
        "duplicate_of": result.duplicate_of, "similarity": result.similarity}))
    # Every pair that was looked at, with its Jaccard (exact near the threshold, else the
    # MinHash estimate): the split's leak check re-reads them.
    write_table(folder, "pairs", pa.table({
        "a": np.concatenate([candidates[:, 0], exact_pairs[:, 0]]),
        "b": np.concatenate([candidates[:, 1], exact_pairs[:, 1]]),
        "jaccard": np.concatenate([sim, np.ones(len(exact_pairs))])}))
    timings["clusters"] = time.perf_counter() - start
    return _facts(result, signed_rows, len(candidates), int(near.sum()), len(exact_pairs), ref_rows,
                  len(ref_candidates), timings)


def _confirm_all(confirm: Any, pairs: np.ndarray, num_tasks: int, files: list[str],
                 columns: tuple[str, str], ngram: int, threshold: float,
                 ref_files: list[str] | None = None) -> np.ndarray:
    """Every pair's Jaccard, from tasks of at most CONFIRM_CHUNK pairs, as many as a multiple
    of the CPUs (each task reads the columns it needs from every part, so more tasks read
    more; a last round with fewer tasks than CPUs would leave CPUs idle)."""
    import ray

    if not len(pairs):
        return np.zeros(0, dtype=np.float64)
    rounds = -(-len(pairs) // (CONFIRM_CHUNK * num_tasks))  # every CPU busy in every round
    chunks = np.array_split(pairs, min(len(pairs), rounds * num_tasks))
    return np.concatenate(ray.get([confirm.remote(c, files, *columns, ngram, threshold,
                                                  ref_files) for c in chunks]))


def _facts(result: Cluster, signed: int, candidates: int, confirmed: int, exact_pairs: int,
           reference_rows: int, reference_candidates: int, timings: dict[str, float]
           ) -> dict[str, Any]:
    in_cluster = result.cluster[result.cluster >= 0]
    _, sizes = np.unique(in_cluster, return_counts=True)
    size_counts = np.unique(sizes, return_counts=True)
    removed: dict[str, int] = dict.fromkeys(REASONS, 0)
    for counted in pc.value_counts(result.reason.drop_null()).to_pylist():
        removed[counted["values"]] = counted["counts"]
    return {
        "rows": signed,
        "candidate_pairs": candidates,
        "confirmed_near_pairs": confirmed,
        "exact_pairs": exact_pairs,
        "clusters": int(len(sizes)),
        "cluster_sizes": {int(s): int(n) for s, n in zip(*size_counts)},
        "removed": removed,
        "reference_rows": int(reference_rows),
        "reference_candidates": int(reference_candidates),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
