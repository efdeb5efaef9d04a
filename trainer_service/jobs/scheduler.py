"""The scheduler: starts queued jobs up to the concurrency limit, watches their processes,
recovers jobs a dead server left behind, and drains on shutdown.

All state is in the store; the scheduler only holds handles to live processes. So after a
crash the next server finds every interrupted job (VALIDATING..EXPORTING) in the store,
waits until no process from the old server holds it, and queues it again: its next attempt
resumes from its last checkpoint. A job is never run by two processes at once (the job
process holds a lock file for its lifetime) and never lost (it stays in the store).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.jobs.executors import Ended
from trainer_service.jobs.store import TERMINAL, JobStore, state_name

log = logging.getLogger("tunesmith.trainer")
ORPHAN_WAIT_S = 30.0
# Failed checks of one running job in a row (a tick each, ~0.2 s apart, longer when a check
# waits on a timeout) before the job is given up.
MAX_TICK_FAILURES = 25


class Scheduler:
    """Runs jobs from the store through an executor; one background thread."""

    def __init__(self, store: JobStore, executor: Any, max_concurrent: int = 1,
                 poll_s: float = 0.2):
        self.store, self.executor = store, executor
        self.max_concurrent = max(1, max_concurrent)
        self.poll_s = poll_s
        self.running: dict[str, Any] = {}
        self._failures: dict[str, int] = {}  # job id -> failed checks in a row
        self.draining = False
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="tunesmith-scheduler",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def recover(self) -> list[str]:
        """Queues again every job an earlier server was running; returns their ids."""
        recovered = []
        for job in self.store.active():
            deadline = time.monotonic() + ORPHAN_WAIT_S
            while self.executor.orphan_alive(job.id) and time.monotonic() < deadline:
                time.sleep(0.2)  # the old process dies with its server (PR_SET_PDEATHSIG)
            if self.executor.orphan_alive(job.id):
                self.store.fail(job.id, "orphaned", "a process from an earlier server still "
                                "runs this job; stop it and submit again")
                continue
            self.store.requeue(job.id, f"resuming after a server restart (attempt "
                               f"{job.attempts} was interrupted in {state_name(job.state)})")
            recovered.append(job.id)
            log.info("recovered %s", job.id)
        return recovered

    def drain(self, timeout_s: float) -> list[str]:
        """Starts no new job and asks running ones to stop at a safe point (training saves
        a checkpoint first); waits up to ``timeout_s``. Returns the ids still running."""
        self.draining = True
        with self._lock:
            ids = list(self.running)
        for job_id in ids:
            self.store.request_stop(job_id, "drain")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.wake()
            with self._lock:
                if not self.running:
                    break
            time.sleep(self.poll_s)
        with self._lock:
            return list(self.running)

    def close(self) -> None:
        """Stops the thread; job processes still running die with the server process."""
        self._closed.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad tick
                log.exception("scheduler tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            handles = list(self.running.values())
        for handle in handles:
            try:
                self._check(handle)
            except Exception as exc:  # noqa: BLE001 - one job's trouble must not stall the rest
                self._trouble(handle, exc)
        if self.draining:
            return
        while True:
            with self._lock:
                if len(self.running) >= self.max_concurrent:
                    return
            job = self.store.claim_next()
            if job is None:
                return
            self._launch(job)

    def _check(self, handle: Any) -> None:
        """Syncs a running job's events; once its process is gone, stores how it ended."""
        handle.sync(self.store)
        status = handle.exit_status()
        if status is None:
            self._failures.pop(handle.job_id, None)
            return
        handle.sync(self.store)  # events sent just before the end
        job = self.store.get(handle.job_id)
        if job.state not in TERMINAL and job.state != pb.JOB_STATE_QUEUED:  # QUEUED: drained
            if isinstance(status, Ended) and status.requeue:
                self.store.requeue(job.id, status.message)
            elif isinstance(status, Ended):
                self.store.fail(job.id, status.code, status.message, status.field)
            else:
                message = status if status != "ok" else "the job process ended without a result"
                self.store.fail(job.id, "worker_crashed",
                                f"{message}; see {job.artifacts.get('log', 'job.log')}")
        # Only once its end is stored: when storing fails (a full disk), the next tick
        # tries again, where a dropped handle left the job RUNNING with no process.
        with self._lock:
            self.running.pop(handle.job_id, None)
        self._failures.pop(handle.job_id, None)

    def _trouble(self, handle: Any, exc: Exception) -> None:
        """A tick that failed for one job: tried again on the next tick. After
        ``MAX_TICK_FAILURES`` in a row with its process still running, the process is
        stopped and the job failed; a process that has ended only waits for its end to be
        stored (on a full disk, until there is room)."""
        count = self._failures.get(handle.job_id, 0) + 1
        self._failures[handle.job_id] = count
        log.error("%s: checking the job failed (%d in a row): %s: %s", handle.job_id, count,
                  type(exc).__name__, exc)
        if count < MAX_TICK_FAILURES:
            return
        try:
            if handle.exit_status() is not None:
                return
        except Exception:  # noqa: BLE001 - as good as running: stop it below
            pass
        try:
            handle.kill()
            self.store.fail(handle.job_id, "worker_crashed",
                            f"the server lost touch with the job's process ({count} checks "
                            f"failed; the last: {type(exc).__name__}: {exc}); it was stopped")
        except Exception:  # noqa: BLE001 - e.g. a full disk: the next tick tries again
            log.exception("%s: failing the job failed", handle.job_id)
            return
        with self._lock:
            self.running.pop(handle.job_id, None)
        self._failures.pop(handle.job_id, None)

    def _launch(self, job) -> None:
        from trainer_service.jobs.executors import JOB_LOG
        from trainer_service.jobs.worker import run_dir_of

        run_dir = run_dir_of(self.executor.state_dir, job.id)
        self.store.update(job.id, artifacts={"run_dir": str(run_dir),
                                             "log": str(run_dir / JOB_LOG)})
        try:
            handle = self.executor.start(job)
        except Exception as exc:  # noqa: BLE001 - a job that cannot start fails alone
            self.store.fail(job.id, "start_failed", f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.running[job.id] = handle
        log.info("started %s (attempt %d) on %s", job.id, job.attempts, self.executor.name)
