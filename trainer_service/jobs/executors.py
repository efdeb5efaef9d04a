"""Where job processes run: a local subprocess per job, or a Ray task per job.

An executor starts a claimed job and returns a handle; the scheduler polls handles. Both
kinds give the same events: the local process writes them into the store itself, a Ray
task sends them through a small channel actor that the server drains into the store.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.jobs.store import JobStore
from trainer_service.jobs.worker import EXIT_ALREADY_RUNNING, job_lock, run_dir_of

JOB_LOG = "job.log"
# How long the server waits for one drain of a Ray job's channel before trying again.
CHANNEL_TIMEOUT_S = 10.0
# How long a Ray job's task may wait for a node with its resources before it fails (an
# autoscaled cluster may take minutes to add a GPU node).
RAY_PENDING_TIMEOUT_S = 600.0
log = logging.getLogger("tunesmith.trainer")


@dataclass(frozen=True)
class Ended:
    """How a job ended that the server, not the job's process, had to end: a failure with
    its code and offending field, or ``requeue`` (stopped before it began; a pending cancel
    makes the requeue a cancel)."""

    code: str = ""
    message: str = ""
    field: str = ""
    requeue: bool = False


class JobHandle(Protocol):
    job_id: str

    def sync(self, store: JobStore) -> None:
        """Moves pending events into the store and forwards stop requests."""

    def exit_status(self) -> str | Ended | None:
        """None while running; then "ok", why the process ended abnormally, or how the
        server ended it (``Ended``)."""

    def kill(self) -> None: ...


def describe_exit(code: int) -> str | None:
    """How a job process ended, for its error message (None: a normal exit)."""
    if code == 0:
        return None
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (likely out of memory)" if -code == signal.SIGKILL else ""
        return f"the job process was killed by {name}{hint}"
    if code == EXIT_ALREADY_RUNNING:
        return "another process was already running this job"
    return f"the job process exited with code {code}"


class LocalHandle:
    def __init__(self, job_id: str, process: subprocess.Popen):
        self.job_id, self.process = job_id, process

    def sync(self, store: JobStore) -> None:
        return None  # the job process writes to the store itself

    def exit_status(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return describe_exit(code) or "ok"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class LocalExecutor:
    """One `python -m trainer_service.jobs.worker` process per job, logging to job.log."""

    name = "local"

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)

    def start(self, job: pb.Job) -> LocalHandle:
        run_dir = run_dir_of(self.state_dir, job.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / JOB_LOG, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "trainer_service.jobs.worker", "--state-dir",
                 str(self.state_dir), "--job-id", job.id, "--parent-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the server's terminal drains, not kills
                cwd=str(run_dir))
        return LocalHandle(job.id, process)

    def orphan_alive(self, job_id: str) -> bool:
        """True while a process from an earlier server still holds the job's lock."""
        fd = job_lock(self.state_dir, job_id)
        if fd is None:
            return True
        os.close(fd)
        return False

    def close(self) -> None:
        return None


class RayHandle:
    """A job's Ray task and its channel actor.

    The server ends the job itself when the task cannot: when the channel actor dies (its
    events can no longer reach the store: the task is cancelled and the job fails
    ``worker_crashed``), when no node takes the task within ``pending_timeout_s`` and no
    live node has its GPUs (it asked for more than the cluster has:
    ``resources_unavailable``, field ``resources.gpus``; a task waiting for a busy GPU
    waits on), and when a cancel or drain comes before the task started (nothing
    there polls for it: the task is cancelled and the job cancelled or queued again)."""

    def __init__(self, job_id: str, ref: Any, channel: Any, gpus: float = 0,
                 pending_timeout_s: float = RAY_PENDING_TIMEOUT_S,
                 cpu_by_default: bool = False):
        self.job_id, self.ref, self.channel = job_id, ref, channel
        self.gpus, self.pending_timeout_s = gpus, pending_timeout_s
        self.cpu_by_default = cpu_by_default  # no gpus asked for, and the cluster had none
        self.launched = time.monotonic()
        self.started = False
        self.ended: Ended | None = None
        self._stop_sent: str | None = None
        self._warned = False

    def sync(self, store: JobStore) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self.ended is not None:
            return
        try:
            items = ray.get(self.channel.drain.remote(), timeout=CHANNEL_TIMEOUT_S)
        except GetTimeoutError:
            log.warning("%s: its event channel did not answer in %.0f s; trying again",
                        self.job_id, CHANNEL_TIMEOUT_S)
            return
        except RayActorError as exc:
            self._end(Ended("worker_crashed", "the job's event channel (a Ray actor) died, so "
                            "its events could no longer be recorded; the task was stopped: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))
            return
        for kind, payload in items:
            if kind == "started":
                self.started = True
            elif kind == "event":
                store.append(self.job_id, pb.JobEvent.FromString(payload))
            else:
                store.update(self.job_id, **payload)
        if not self._warned:
            self._warned = True
            if self.cpu_by_default:
                self._warn(store, "the Ray cluster has no GPU now, so the job trains on CPU; "
                           "set resources.gpus: 1 to wait for a GPU node instead")
            elif not self.started and (largest := _largest_node_gpus()) < self.gpus:
                self._warn(store, f"no live Ray node has {self.gpus:g} GPU (the largest has "
                           f"{largest:g}); waiting up to {self.pending_timeout_s:.0f} s for "
                           "one (an autoscaler may add it)")
        stop = store.stop_request(self.job_id)
        if not self.started:
            if stop:
                self._end(Ended(message=f"stopped ({stop}) before its Ray task started",
                                requeue=True))
            elif time.monotonic() - self.launched > self.pending_timeout_s \
                    and (largest := _largest_node_gpus()) < self.gpus:
                # only a request no node can hold: a task waiting for a busy GPU waits on
                self._end(Ended(
                    "resources_unavailable",
                    f"no Ray node took the job's task (1 CPU, {self.gpus:g} GPU) in "
                    f"{self.pending_timeout_s:.0f} s; the largest live node has {largest:g} "
                    "GPU: ask for fewer resources.gpus or add a node that has them",
                    "resources.gpus"))
            return
        if stop and stop != self._stop_sent:
            self.channel.request_stop.remote(stop)
            self._stop_sent = stop

    def _warn(self, store: JobStore, message: str) -> None:
        store.append(self.job_id, pb.JobEvent(kind=pb.EVENT_KIND_WARNING, message=message))

    def _end(self, ended: Ended) -> None:
        import ray

        self.ended = ended
        ray.cancel(self.ref, force=True)
        ray.kill(self.channel)

    def exit_status(self) -> str | Ended | None:
        import ray

        if self.ended is not None:
            return self.ended
        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            ray.get(self.ref)
        except Exception as exc:  # noqa: BLE001 - a dead task is reported, not raised
            return f"the Ray task failed: {type(exc).__name__}: {str(exc)[:500]}"
        return "ok"

    def kill(self) -> None:
        import ray

        ray.cancel(self.ref, force=True)


def _largest_node_gpus() -> float:
    """The most GPUs one live node of the cluster has."""
    import ray

    return max((node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]),
               default=0)


def _channel_class():
    import ray

    @ray.remote(num_cpus=0)
    class JobChannel:
        """Events from a job's Ray task, kept until the server drains them."""

        def __init__(self):
            self.items: list[tuple[str, Any]] = []
            self.stop: str | None = None

        def put(self, kind: str, payload: Any) -> None:
            self.items.append((kind, payload))

        def drain(self) -> list[tuple[str, Any]]:
            items, self.items = self.items, []
            return items

        def request_stop(self, reason: str) -> None:
            self.stop = reason

        def stop_request(self) -> str | None:
            return self.stop

    return JobChannel


class ChannelSink:
    """The Ray task's side of the channel: events are sent in order, stop is polled."""

    def __init__(self, channel: Any):
        self.channel = channel

    def emit(self, event: pb.JobEvent) -> None:
        self.channel.put.remote("event", event.SerializeToString())

    def update(self, artifacts=None, metrics=None) -> None:
        self.channel.put.remote("update", {"artifacts": artifacts, "metrics": metrics})

    def stop_request(self) -> str | None:
        import ray

        return ray.get(self.channel.stop_request.remote(), timeout=30)


def run_in_ray_task(job_bytes: bytes, run_dir: str, channel: Any) -> int:
    """The Ray task body: the same `execute` as a local job process."""
    from trainer_service.jobs.worker import execute

    import contextlib

    channel.put.remote("started", None)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / JOB_LOG, "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log):
        return execute(pb.Job.FromString(job_bytes), Path(run_dir), ChannelSink(channel))


class RayExecutor:
    """Each job is a Ray task asking for the spec's GPUs (default: 1 when the cluster has
    any). The run folder is the server's state dir, so on a multi-node cluster it must be
    on a filesystem every node mounts at the same path. A task no node takes within
    ``pending_timeout_s`` fails its job (``resources_unavailable``)."""

    name = "ray"

    def __init__(self, state_dir: Path, address: str | None = None,
                 pending_timeout_s: float = RAY_PENDING_TIMEOUT_S):
        import ray

        from data_engine.config import RayConfig
        from data_engine.executor import ray_session

        self.state_dir = Path(state_dir)
        self.pending_timeout_s = pending_timeout_s
        # The data engine's session: joins ADDRESS, or starts a loopback head whose temp
        # dir lives in the state dir; shut down by close().
        self._session = ExitStack()
        self._ray = self._session.enter_context(ray_session(RayConfig(address=address),
                                                            self.state_dir))
        self._channel = _channel_class()
        self._task = ray.remote(run_in_ray_task)

    def start(self, job: pb.Job) -> RayHandle:
        import ray

        asked = job.spec.resources.HasField("gpus")
        gpus = job.spec.resources.gpus if asked else \
            (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0)
        channel = self._channel.remote()
        run_dir = run_dir_of(self.state_dir, job.id)
        ref = self._task.options(num_gpus=gpus, num_cpus=1, max_retries=0,
                                 name=f"tunesmith-{job.id}").remote(
            job.SerializeToString(), str(run_dir), channel)
        return RayHandle(job.id, ref, channel, gpus, self.pending_timeout_s,
                         cpu_by_default=not asked and gpus == 0)

    def orphan_alive(self, job_id: str) -> bool:
        return False  # Ray ends a dead driver's tasks with it

    def close(self) -> None:
        self._session.close()
        self._ray.wait_stopped()
