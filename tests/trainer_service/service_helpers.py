"""Shared pieces of the training-service tests: data roots, specs, servers, watching."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from protos.tunesmith.training.v1 import training_pb2 as pb
from tests.trainer_service.test_recipe_run import dataset

TOKEN = "s3cret-token"
CLI = str(Path(sys.executable).with_name("tunesmith"))
TINY_TRAINING = {"max_steps": 3, "per_device_batch": 4, "grad_accum": 1, "max_seq_len": 128,
                 "eval_every_steps": 1, "learning_rate": 5.0e-4}


def data_root(tmp_path: Path) -> Path:
    """A data root holding the capitals dataset (`data/`) and a bare folder (`empty/`)."""
    root = tmp_path / "root"
    dataset(root / "data")
    (root / "empty").mkdir(parents=True)
    return root


def job_spec(model: Path, dataset_path: str = "data", **fields) -> pb.JobSpec:
    training = {**TINY_TRAINING, **fields.pop("training", {})}
    return pb.JobSpec(base_model=str(model), dataset=dataset_path,
                      training=pb.TrainingSpec(**training), **fields)


def states(events: list[pb.JobEvent]) -> list[int]:
    return [e.state_change.state for e in events if e.kind == pb.EVENT_KIND_STATE_CHANGE]


def wait_for(client, job_id: str, kind: int, timeout_s: float = 300,
             from_sequence: int = 1) -> pb.JobEvent:
    """Watches from ``from_sequence`` until the first event of ``kind``; returns it."""
    deadline = time.monotonic() + timeout_s
    for event in client.watch(job_id, from_sequence):
        if event.kind == kind:
            return event
        assert time.monotonic() < deadline, f"no event of kind {kind} in {timeout_s} s"
    raise AssertionError(f"{job_id} ended without an event of kind {kind}")


class ServerProcess:
    """`tunesmith trainer serve --port 0` as a child process (for SIGTERM/SIGKILL tests)."""

    def __init__(self, state_dir: Path, roots: list[Path], *extra: str):
        args = [CLI, "trainer", "serve", "--port", "0", "--state-dir", str(state_dir)]
        for root in roots:
            args += ["--data-root", str(root)]
        self.log_path = state_dir.parent / f"server-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen([*args, *extra], stdout=self.log,
                                        stderr=subprocess.STDOUT, text=True)
        self.address = self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.log.seek(0)
            found = re.search(r"serving on (\S+)", self.log.read())
            if found:
                return found.group(1)
            assert self.process.poll() is None, self.output()
            time.sleep(0.2)
        raise AssertionError("server not ready:\n" + self.output())

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int, timeout_s: float = 120) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        self.log.close()
        return code
