"""The job process: runs one job's recipe and turns everything it does into job events.

`python -m trainer_service.jobs.worker --state-dir D --job-id J --parent-pid P` is what the
local executor starts, one process per job, so a crash or an out-of-memory kill ends that
job and never the server. The Ray executor calls `execute` inside a Ray task instead, with
a sink that sends the events back to the server. Either way the process stops only at
safe points: between recipe stages, or at an optimizer step boundary during training.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.errors import ServiceError
from trainer_service.jobs.store import JobStore, state_event
from trainer_service.jobs.validate import to_train_spec
from trainer_service.recipe.hooks import RecipeStopped, RunHooks

STAGE_STATES = {"validating": pb.JOB_STATE_VALIDATING, "training": pb.JOB_STATE_RUNNING,
                "merging": pb.JOB_STATE_MERGING, "verifying": pb.JOB_STATE_VERIFYING,
                "exporting": pb.JOB_STATE_EXPORTING}
RUNS_DIR, LOCKS_DIR = "runs", "locks"
EXIT_ALREADY_RUNNING = 75  # another live process holds the job's lock
PR_SET_PDEATHSIG = 1


class JobSink(Protocol):
    """Where a job's events go: the store itself (local) or a channel to the server (Ray)."""

    def emit(self, event: pb.JobEvent) -> None: ...

    def update(self, artifacts: dict[str, str] | None = None,
               metrics: dict[str, float] | None = None) -> None: ...

    def stop_request(self) -> str | None: ...


class StoreSink:
    """Writes events straight into the job store (the job process shares its disk)."""

    def __init__(self, store: JobStore, job_id: str):
        self.store, self.job_id = store, job_id

    def emit(self, event: pb.JobEvent) -> None:
        self.store.append(self.job_id, event)

    def update(self, artifacts=None, metrics=None) -> None:
        self.store.update(self.job_id, artifacts, metrics)

    def stop_request(self) -> str | None:
        return self.store.stop_request(self.job_id)


def run_dir_of(state_dir: Path, job_id: str) -> Path:
    return Path(state_dir) / RUNS_DIR / job_id


class JobHooks(RunHooks):
    """Recipe hooks that report stages, metrics and checkpoints as job events."""

    def __init__(self, sink: JobSink):
        self.sink = sink
        self.eval_loss: float | None = None
        self.eval_step: int | None = None  # the step `eval_loss` was measured at
        self._last_step: tuple[float, int] | None = None  # (time, step) of the last train log

    def stage(self, name: str) -> None:
        self.sink.emit(state_event(STAGE_STATES[name], name))

    def planned(self, plan: dict[str, Any]) -> None:
        # before the first step: the job's metrics say how long the run will be
        self.sink.update(metrics={f"planned_{k}": float(v) for k, v in plan.items()
                                  if isinstance(v, int)})

    def metrics(self, row: dict[str, Any]) -> None:
        step = int(row.get("step") or 0)
        if row.get("eval_loss") is not None:
            self.eval_loss, self.eval_step = float(row["eval_loss"]), step
            self.sink.emit(pb.JobEvent(kind=pb.EVENT_KIND_EVAL_METRICS, eval=pb.EvalMetrics(
                step=step, eval_loss=self.eval_loss)))
        if row.get("loss") is not None:
            now = time.monotonic()
            self.sink.emit(pb.JobEvent(kind=pb.EVENT_KIND_STEP_METRICS, step=pb.StepMetrics(
                step=step, max_steps=int(row.get("max_steps") or 0),
                epoch=float(row.get("epoch") or 0.0), loss=float(row["loss"]),
                learning_rate=float(row.get("learning_rate") or 0.0),
                tokens_per_s=float(row.get("tokens_per_s") or 0.0),
                tokens_seen=int(row.get("tokens_seen") or 0))))
            if self._last_step is not None and step > self._last_step[1]:
                seconds = (now - self._last_step[0]) / (step - self._last_step[1])
                self.sink.update(metrics={"step_seconds": seconds})
            self._last_step = (now, step)

    def checkpoint(self, step: int, path: str) -> None:
        cp = pb.Checkpoint(step=step, path=path)
        if self.eval_loss is not None and self.eval_step == step:  # not an earlier step's
            cp.eval_loss = self.eval_loss
        self.sink.emit(pb.JobEvent(kind=pb.EVENT_KIND_CHECKPOINT_SAVED, checkpoint=cp))

    def stop_requested(self) -> str | None:
        return self.sink.stop_request()


def _logger(sink: JobSink):
    def log(line: str) -> None:
        print(line, flush=True)
        if line.startswith("WARNING "):
            sink.emit(pb.JobEvent(kind=pb.EVENT_KIND_WARNING, message=line[len("WARNING "):]))
        else:
            sink.emit(pb.JobEvent(kind=pb.EVENT_KIND_LOG, message=line))
    return log


def _summary(state: dict[str, Any]) -> dict[str, float]:
    numbers = {k: state.get(k) for k in ("global_step", "best_eval_loss")}
    numbers.update({k: v for k, v in (state.get("metrics") or {}).items()})
    return {k: float(v) for k, v in numbers.items() if isinstance(v, (int, float))}


def execute(job: pb.Job, run_dir: Path, sink: JobSink) -> int:
    """Runs ``job``'s recipe into ``run_dir`` and records how it ended; returns the job's
    final (or, when paused by a drain, QUEUED) state."""
    from trainer_service.recipe.run import RecipeError, run_recipe

    log = _logger(sink)
    run_dir = Path(run_dir)
    try:
        spec = to_train_spec(job.spec)
        state = run_recipe(spec, run_dir, log=log, hooks=JobHooks(sink))
    except RecipeStopped as exc:
        if exc.reason == "cancel":
            sink.emit(state_event(pb.JOB_STATE_CANCELLED, f"cancelled during {exc.stage}"))
            return pb.JOB_STATE_CANCELLED
        resume = f"; resumes from {Path(exc.checkpoint).name}" if exc.checkpoint else ""
        sink.emit(state_event(pb.JOB_STATE_QUEUED, f"paused during {exc.stage} ({exc.reason})"
                              + resume))
        return pb.JOB_STATE_QUEUED
    except RecipeError as exc:
        sink.update(artifacts=_artifacts(run_dir))
        error = pb.JobError(code=exc.code, message=exc.message, field=exc.field, fix=exc.fix)
        sink.emit(state_event(pb.JOB_STATE_FAILED, exc.message, error))
        return pb.JOB_STATE_FAILED
    except ServiceError as exc:
        error = pb.JobError(code="invalid_spec", message=exc.message, field=exc.field)
        sink.emit(state_event(pb.JOB_STATE_FAILED, exc.message, error))
        return pb.JOB_STATE_FAILED
    except Exception as exc:  # noqa: BLE001 - any other failure ends the job, not the server
        log("".join(traceback.format_exception(exc)).rstrip())
        sink.update(artifacts=_artifacts(run_dir))
        error = pb.JobError(code="internal", message=f"{type(exc).__name__}: {exc}")
        sink.emit(state_event(pb.JOB_STATE_FAILED, error.message, error))
        return pb.JOB_STATE_FAILED
    sink.update(artifacts=_artifacts(run_dir, state.get("artifacts")), metrics=_summary(state))
    reason = "dry run: validated, no step taken" if state["status"] == "validated" else \
        "trained, merged, verified and exported" if state.get("export") else \
        "trained, merged and verified"
    sink.emit(state_event(pb.JOB_STATE_SUCCEEDED, reason))
    return pb.JOB_STATE_SUCCEEDED


def _artifacts(run_dir: Path, paths: dict[str, Any] | None = None) -> dict[str, str]:
    out = {"run_dir": str(run_dir)}
    if (run_dir / "run.json").is_file():
        out["run"] = str(run_dir / "run.json")
    out.update({k: str(v) for k, v in (paths or {}).items() if v})
    return out


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this process when the server dies, so a restarted server
    never finds an orphan still training the job it is about to resume."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the server died before prctl took effect
        sys.exit(1)


def job_lock(state_dir: Path, job_id: str) -> int | None:
    """Takes the job's lock file (held for the life of the process); None if taken."""
    folder = Path(state_dir) / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{job_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--parent-pid", required=True, type=int)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when jobs stop
    if job_lock(args.state_dir, args.job_id) is None:
        print(f"{args.job_id} is already running in another process", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    store = JobStore.in_dir(args.state_dir)
    job = store.get(args.job_id)
    execute(job, run_dir_of(args.state_dir, args.job_id), StoreSink(store, args.job_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
