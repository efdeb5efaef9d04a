"""`hf/`: each split's kept rows as a `datasets` DatasetDict (`datasets.load_from_disk`).

It is saved from the Arrow streams the writer filled by a child process
(`python -P -m data_engine.writers.hf HF_DIR SPLIT=STREAM ...`). Importing `datasets`
costs ~1.4 s of CPU and saving 200k rows ~0.7 s; in a process of its own that runs on
another core while the driver draws the report and Ray stops. On a thread of the driver
the two took turns on the GIL, and the end of a 200k-row run took ~3 s on one core.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from data_engine.errors import OutputError


def save_hf(streams: dict[str, Path], hf_dir: Path) -> None:
    """Saves the Arrow IPC streams (split -> file, memory-mapped) as a DatasetDict."""
    import datasets

    datasets.disable_progress_bars()
    dataset = datasets.DatasetDict({split: datasets.Dataset.from_file(str(path))
                                    for split, path in streams.items()})
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    # An empty split left to datasets' sharding gets no data file, and load_from_disk then
    # fails on the whole dict (IndexError); one shard holds its schema.
    dataset.save_to_disk(str(hf_dir), num_shards={split: 1 if len(part) == 0 else None
                                                  for split, part in dataset.items()})


class HfSave:
    """`save_hf` running in a child process; `wait` ends it."""

    def __init__(self, streams: dict[str, Path], hf_dir: Path):
        self.hf_dir = hf_dir
        # -P: the module comes from where the driver's does, never from the working folder
        command = [sys.executable, "-P", "-m", __name__, str(hf_dir),
                   *(f"{split}={path}" for split, path in streams.items())]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, encoding="utf-8",
                                         errors="replace")

    def wait(self) -> None:
        """Returns once `hf/` is saved; raises OutputError with the child's last words when
        it failed."""
        _, stderr = self._process.communicate()
        if self._process.returncode != 0:
            tail = "\n".join(stderr.strip().splitlines()[-15:])
            raise OutputError(str(self.hf_dir), f"saving failed (exit "
                              f"{self._process.returncode}):\n{tail}")

    def cancel(self) -> None:
        """Stops the child, if it still runs (the run failed before `wait`)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()


def main(argv: list[str]) -> None:
    hf_dir, *pairs = argv
    save_hf({split: Path(path) for split, path in (p.split("=", 1) for p in pairs)},
            Path(hf_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
