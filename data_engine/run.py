"""`tunesmith data run`: ingest -> clean -> split on Ray Data, then the output contract.

Reads like a recipe: plan shards, build the lazy Ray Data pipeline, stream its batches into
the writers, then write the manifest and the report.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from data_engine.config import DataConfig
from data_engine.errors import ConfigError
from data_engine.executor import ray_session
from data_engine.pipeline.clean import clean_batch
from data_engine.pipeline.split import split_batch
from data_engine.progress import StageProgress
from data_engine.readers.ingest import ingest_shards
from data_engine.readers.shards import plan_shards
from data_engine.writers.outputs import DatasetWriter, render_batch
from data_engine.writers.report import write_report

STAGES = ("ingest", "clean", "split")
_VERSIONED = ("tunesmith", "ray", "pyarrow", "datasets", "ftfy", "py3langid", "transformers")


@dataclass
class RunResult:
    """Where a run's outputs are and what its manifest says."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / "manifest.json"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"


def run(config: DataConfig, out_dir: Path, console: Console | None = None,
        progress: bool = True) -> RunResult:
    """Runs the data engine over ``config.inputs`` into ``out_dir``."""
    if not config.inputs:
        raise ConfigError(["inputs: give at least one --input or an `inputs:` entry"])
    console = console or Console(stderr=True)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shards, files = plan_shards(config.inputs, config.ray.shard_rows)
    tracker = StageProgress(STAGES, expected_rows=sum(s.rows for s in shards), console=console,
                            enabled=progress)
    with ray_session(config.ray, out_dir) as session:
        writer = DatasetWriter(out_dir)  # only once Ray is up: a failed connect writes nothing
        if shards:
            import ray.data

            ds = ray.data.from_items([s.to_dict() for s in shards], override_num_blocks=len(shards))
            ds = ds.map_batches(ingest_shards, batch_size=1, batch_format="pyarrow",
                                fn_kwargs={"inputs": config.inputs})
            ds = ds.map_batches(clean_batch, batch_size=None, batch_format="pyarrow",
                                fn_kwargs={"config": config.clean})
            ds = ds.map_batches(split_batch, batch_size=None, batch_format="pyarrow",
                                fn_kwargs={"config": config.split, "seed": config.seed})
            ds = ds.map_batches(render_batch, batch_size=None, batch_format="pyarrow")
            with tracker:
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write(batch)
                    tracker.update(batch)
    writer.close()
    manifest = _manifest(config, writer, files, tracker, session.address,
                         time.perf_counter() - started)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2),
                                           encoding="utf-8")
    write_report(out_dir / "report.html", manifest, writer.tokens, writer.examples)
    if progress:
        console.print(tracker.summary())
    return RunResult(out_dir, manifest)


def _manifest(config: DataConfig, writer: DatasetWriter, files: list, tracker: StageProgress,
              ray_address: str, seconds: float) -> dict[str, Any]:
    counts = {"input": writer.input, "kept": writer.kept, "rejected": dict(writer.rejected),
              "splits": dict(writer.splits)}
    if counts["input"] != counts["kept"] + sum(counts["rejected"].values()):
        raise AssertionError(f"row counts not conserved: {counts}")  # a bug, never user error
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": counts,
        "sources": {name: {"input": c["input"], "kept": c["kept"]}
                    for name, c in sorted(writer.sources.items())},
        "inputs": [{"path": f.path, "kind": f.kind, "sha256": f.sha256,
                    "format": config.inputs[f.input_index].format} for f in files],
        "seed": config.seed,
        "config": config.to_dict(),
        "stages": [s.to_dict() for s in tracker.stats.values()],
        "seconds": round(seconds, 3),
        "ray": {"address": ray_address},
        "outputs": {"train": "train.jsonl", "validation": "validation.jsonl",
                    "test": "test.jsonl", "hf": "hf", "rejected": "rejected.jsonl",
                    "report": "report.html"},
        "versions": {"python": platform.python_version(),
                     **{name: _version(name) for name in _VERSIONED}},
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
