"""TrainingService: proto in -> store/scheduler call -> proto out.

Domain code raises `trainer_service.errors`; `_rpc` is the one place that turns them
into gRPC statuses, with a google.rpc.BadRequest detail naming each offending field.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from protos.tunesmith.training.v1 import training_pb2 as pb
from protos.tunesmith.training.v1 import training_pb2_grpc
from trainer_service.errors import InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from trainer_service.jobs.scheduler import Scheduler
from trainer_service.jobs.store import TERMINAL, JobStore
from trainer_service.jobs.validate import validate_spec

MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1000, 50
WATCH_WAIT_S = 1.0  # a watcher re-checks its client at least this often
# RPC threads kept from WatchJob streams, each of which holds one while open: with every
# thread watching, GetJob, CancelJob and health checks waited (128 watchers: all timed out)
# and Kubernetes would restart the pod. Watchers past the rest get RESOURCE_EXHAUSTED.
UNARY_THREADS = 16
MAX_SEQUENCE = 2**62  # event sequence numbers are SQLite integers


def status_of(exc: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status for a service error, fields named in a BadRequest detail."""
    status = status_pb2.Status(code=getattr(code_pb2, exc.code), message=str(exc))
    problems = getattr(exc, "problems", None) or ([(exc.field, exc.message)] if exc.field
                                                  else [])
    if problems:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=m)
            for f, m in problems]))
        status.details.append(detail)
    return status


def _abort(context, exc: ServiceError) -> None:
    context.abort_with_status(rpc_status.to_status(status_of(exc)))


def _store_failed(exc: sqlite3.Error) -> ServiceError:
    """UNAVAILABLE for a job store that cannot be read or written (a full disk), which
    was UNKNOWN with SQLite's text."""
    return Unavailable(f"the server's job store failed ({exc}); retry later")


def _rpc(method: Callable) -> Callable:
    """Unary method: a ServiceError ends the call with its status."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServiceError as exc:
            _abort(context, exc)
        except sqlite3.Error as exc:
            _abort(context, _store_failed(exc))
    return wrapper


def _stream_rpc(method: Callable) -> Callable:
    """Server-streaming method: the same, for errors raised while streaming."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            yield from method(self, request, context)
        except ServiceError as exc:
            _abort(context, exc)
        except sqlite3.Error as exc:
            _abort(context, _store_failed(exc))
    return wrapper


class EventNotifier:
    """Wakes watchers when any process appends an event (polls the store's newest row id,
    so events written by job processes are seen too)."""

    def __init__(self, store: JobStore, poll_s: float = 0.05):
        self.store, self.poll_s = store, poll_s
        self._cond = threading.Condition()
        self._last = store.last_event_id()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunesmith-events",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed.wait(self.poll_s):
            last = self.store.last_event_id()
            if last != self._last:
                self._last = last
                with self._cond:
                    self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: JobStore, scheduler: Scheduler, data_roots: list[Path],
                 notifier: EventNotifier, max_watchers: int = 112):
        self.store, self.scheduler = store, scheduler
        self.data_roots = [Path(r) for r in data_roots]
        self.notifier = notifier
        self.draining = False
        self.max_watchers = max_watchers
        self._watch_slots = threading.BoundedSemaphore(max_watchers)

    @_rpc
    def CreateJob(self, request: pb.CreateJobRequest, context) -> pb.Job:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica or later")
        if not request.request_id.strip():
            raise InvalidArgument([("request_id", "must be set (a client-chosen unique key, "
                                    "e.g. a UUID), so a retried call creates one job")])
        spec = validate_spec(request.spec, self.data_roots)
        job, created = self.store.create(request.request_id, spec)
        if created:
            self.scheduler.wake()
        return job

    @_rpc
    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return self.store.get(request.job_id)

    @_rpc
    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument([("page_size", f"must be 0-{MAX_PAGE_SIZE}")])
        if pb.JOB_STATE_UNSPECIFIED in request.states:
            raise InvalidArgument([("states", "JOB_STATE_UNSPECIFIED is not a state")])
        jobs, token = self.store.list(list(request.states), size, request.page_token)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    @_rpc
    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        job = self.store.request_stop(request.job_id, "cancel")
        self.scheduler.wake()
        return job

    @_stream_rpc
    def WatchJob(self, request: pb.WatchJobRequest, context):
        job = self.store.get(request.job_id)
        if not 0 <= request.from_sequence <= MAX_SEQUENCE:
            raise InvalidArgument([("from_sequence", f"must be 0-{MAX_SEQUENCE}")])
        if not self._watch_slots.acquire(blocking=False):
            raise ResourceExhausted(f"{self.max_watchers} WatchJob streams are open, the "
                                    "most this server keeps (each holds a thread); retry "
                                    "later, or poll GetJob")
        try:
            yield from self._watch(job, request.from_sequence, context)
        finally:
            self._watch_slots.release()

    def _watch(self, job: pb.Job, from_sequence: int, context):
        next_seq = max(1, from_sequence)
        while context.is_active():
            events = self.store.events(job.id, next_seq)
            for event in events:
                yield event
                next_seq = event.sequence + 1
                if event.kind == pb.EVENT_KIND_STATE_CHANGE and \
                        event.state_change.state in TERMINAL:
                    return
            if events:
                continue
            job = self.store.get(job.id)
            if job.state in TERMINAL and next_seq > job.last_sequence:
                return
            self.notifier.wait(WATCH_WAIT_S)

    @_rpc
    def ListCheckpoints(self, request: pb.ListCheckpointsRequest,
                        context) -> pb.ListCheckpointsResponse:
        # the trainer keeps the newest and the best (`save_total_limit`) and deletes the rest
        checkpoints = [c for c in self.store.checkpoints(request.job_id)
                       if Path(c.path).is_dir()]
        scored = [c for c in checkpoints if c.HasField("eval_loss")]
        best = min(scored, key=lambda c: (c.eval_loss, c.step)).step if scored else 0
        return pb.ListCheckpointsResponse(checkpoints=checkpoints, best_step=best)
