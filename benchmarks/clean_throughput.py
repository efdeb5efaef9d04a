"""Ingest + clean + split throughput: tunesmith on Ray against the same stages in one process.

Run: .venv/bin/python benchmarks/clean_throughput.py --rows 20000

Both sides read the same generated JSONL file. The reference calls the stage functions in
a plain loop in one process (no Ray, no output files); tunesmith runs the real pipeline on
an embedded local Ray, writers included. Printed: rows/s of each, their ratio, Ray's start
time (paid once per run) and the reject counts, which must agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from synthetic import write_rows


def reference(path: Path, shard_rows: int) -> tuple[float, Counter]:
    from data_engine.config import DataConfig, InputConfig
    from data_engine.pipeline.clean import clean_batch
    from data_engine.pipeline.split import split_batch
    from data_engine.readers.ingest import ingest_shards
    from data_engine.readers.shards import plan_shards

    config = DataConfig(inputs=[InputConfig(path=str(path))])
    start = time.perf_counter()
    shards, _ = plan_shards(config.inputs, shard_rows)
    reasons: Counter = Counter()
    for shard in shards:
        batch = ingest_shards(pa.Table.from_pylist([shard.to_dict()]), config.inputs)
        batch = split_batch(clean_batch(batch, config.clean), config.split, config.seed)
        reasons.update(r for r in batch.column("_reason").to_pylist() if r)
    return time.perf_counter() - start, reasons


def tunesmith(path: Path, out: Path, shard_rows: int, num_cpus: int) -> tuple[float, float, Counter]:
    from data_engine.config import DataConfig, InputConfig
    from data_engine.run import run

    config = DataConfig(inputs=[InputConfig(path=str(path))])
    config.ray.shard_rows = shard_rows
    config.ray.num_cpus = num_cpus
    start = time.perf_counter()
    result = run(config, out, progress=False)
    total = time.perf_counter() - start
    pipeline = result.manifest["stages"][0]["seconds"]
    return total, pipeline, Counter({r: n for r, n in result.manifest["counts"]["rejected"].items() if n})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--shard-rows", type=int, default=5000)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        path = write_rows(Path(tmp) / "rows.jsonl", args.rows)
        ref_s, ref_reasons = reference(path, args.shard_rows)
        total_s, pipe_s, reasons = tunesmith(path, Path(tmp) / "out", args.shard_rows, args.num_cpus)
    n = args.rows
    print(f"rows: {n:,}  rejected: {dict(sorted(reasons.items()))}")
    print(f"reference (1 process, no output files): {n / ref_s:10,.0f} rows/s  ({ref_s:.2f} s)")
    print(f"tunesmith pipeline on Ray ({args.num_cpus} CPUs):  {n / pipe_s:10,.0f} rows/s  ({pipe_s:.2f} s)")
    print(f"tunesmith whole run (Ray start, hf/, report): {n / total_s:7,.0f} rows/s  ({total_s:.2f} s)")
    print(f"ratio pipeline/reference: {ref_s / pipe_s:.2f}x")
    if reasons != ref_reasons:
        raise SystemExit(f"reject counts differ: reference {dict(ref_reasons)}")


if __name__ == "__main__":
    main()
