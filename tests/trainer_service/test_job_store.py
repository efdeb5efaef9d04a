"""The durable job store: gap-free sequences under concurrent writers (threads and
processes), idempotent creation, sticky final states, paging and stop requests."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.errors import AlreadyExists, InvalidArgument, NotFound
from trainer_service.jobs.store import JobStore, state_event

SPEC = pb.JobSpec(base_model="m", dataset="d")


def _log(n: int) -> pb.JobEvent:
    return pb.JobEvent(kind=pb.EVENT_KIND_LOG, message=f"line {n}")


def _append_many(path: str, job_id: str, count: int) -> None:
    store = JobStore(path)
    for n in range(count):
        store.append(job_id, _log(n))


def test_sequences_have_no_gaps_with_threads_and_processes(tmp_path):
    store = JobStore.in_dir(tmp_path)
    job, _ = store.create("r1", SPEC)
    threads = [threading.Thread(target=_append_many, args=(store.path, job.id, 40))
               for _ in range(4)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(store.path), job.id, 40))
             for _ in range(2)]
    for worker in threads + procs:
        worker.start()
    for worker in threads + procs:
        worker.join()
    assert all(p.exitcode == 0 for p in procs)
    events = store.events(job.id, 1, limit=10_000)
    assert [e.sequence for e in events] == list(range(1, 1 + 1 + 6 * 40))
    assert store.get(job.id).last_sequence == len(events)
    assert store.events(job.id, 200, limit=10_000)[0].sequence == 200


def test_one_job_per_request_id_under_concurrency(tmp_path):
    store = JobStore.in_dir(tmp_path)
    ids: list[str] = []
    created: list[bool] = []

    def create():
        job, new = JobStore(store.path).create("same", SPEC)
        ids.append(job.id)
        created.append(new)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and created.count(True) == 1
    assert len(store.list()[0]) == 1
    with pytest.raises(AlreadyExists) as err:
        store.create("same", pb.JobSpec(base_model="other", dataset="d"))
    assert err.value.field == "request_id"


def test_a_retry_whose_spec_differs_only_by_empty_blocks_is_the_same_request(tmp_path):
    """Clients of other protobuf libraries send an unset block as an empty message (`lora
    {}`); the retry got ALREADY_EXISTS, its bytes differing."""
    store = JobStore.in_dir(tmp_path)
    job, _ = store.create("r", SPEC)
    padded = pb.JobSpec(base_model="m", dataset="d")
    padded.lora.SetInParent()
    padded.resources.SetInParent()
    assert padded.SerializeToString() != SPEC.SerializeToString()
    assert store.create("r", padded) == (job, False)
    changed = pb.JobSpec(base_model="m", dataset="d", lora=pb.LoraSpec(r=8))
    with pytest.raises(AlreadyExists):
        store.create("r", changed)


def test_fields_this_server_does_not_know_are_named():
    """A newer client's field was stored and ignored in silence; the YAML path refuses
    unknown keys, and the wire now does too, naming where."""
    from trainer_service.jobs.validate import unknown_fields

    raw = pb.TrainingSpec(epochs=1).SerializeToString() + bytes([0x98, 0x06, 0x05])  # #99
    spec = pb.JobSpec(base_model="m", dataset="d",
                      training=pb.TrainingSpec.FromString(raw))
    top = pb.JobSpec.FromString(spec.SerializeToString() + bytes([0xb8, 0x06, 0x01]))  # #103
    assert unknown_fields(top) == [
        ("spec", "field number 103 of tunesmith.training.v1.JobSpec unknown to this server (a "
                 "newer client's field?): upgrade the server, or leave the field out"),
        ("training", "field number 99 of tunesmith.training.v1.TrainingSpec unknown to this "
                     "server (a newer client's field?): upgrade the server, or leave the "
                     "field out")]
    assert unknown_fields(SPEC) == []


def test_final_states_are_sticky_and_events_fold_into_the_job(tmp_path):
    store = JobStore.in_dir(tmp_path)
    job, _ = store.create("r", SPEC)
    claimed = store.claim_next()
    assert claimed.id == job.id and claimed.state == pb.JOB_STATE_VALIDATING
    assert claimed.attempts == 1 and store.claim_next() is None
    store.append(job.id, pb.JobEvent(kind=pb.EVENT_KIND_STEP_METRICS,
                                     step=pb.StepMetrics(step=2, max_steps=5, loss=1.5)))
    store.append(job.id, pb.JobEvent(kind=pb.EVENT_KIND_EVAL_METRICS,
                                     eval=pb.EvalMetrics(step=2, eval_loss=1.25)))
    store.append(job.id, pb.JobEvent(kind=pb.EVENT_KIND_EVAL_METRICS,
                                     eval=pb.EvalMetrics(step=4, eval_loss=1.75)))
    cp = pb.Checkpoint(step=2, path="/x/checkpoint-2", eval_loss=1.25)
    store.append(job.id, pb.JobEvent(kind=pb.EVENT_KIND_CHECKPOINT_SAVED, checkpoint=cp))
    store.append(job.id, pb.JobEvent(kind=pb.EVENT_KIND_WARNING, message="overfitting"))
    store.fail(job.id, "boom", "it broke", "training.max_seq_len")
    assert store.append(job.id, state_event(pb.JOB_STATE_SUCCEEDED, "late")) is None
    final = store.get(job.id)
    assert final.state == pb.JOB_STATE_FAILED and final.error.field == "training.max_seq_len"
    assert final.metrics["global_step"] == 4 and final.metrics["best_eval_loss"] == 1.25
    assert final.metrics["eval_loss"] == 1.75 and list(final.warnings) == ["overfitting"]
    assert [c.step for c in store.checkpoints(job.id)] == [2]
    changes = [e.state_change for e in store.events(job.id)
               if e.kind == pb.EVENT_KIND_STATE_CHANGE]
    assert [(c.previous, c.state) for c in changes] == [
        (pb.JOB_STATE_UNSPECIFIED, pb.JOB_STATE_QUEUED),
        (pb.JOB_STATE_QUEUED, pb.JOB_STATE_VALIDATING),
        (pb.JOB_STATE_VALIDATING, pb.JOB_STATE_FAILED)]


def test_paging_newest_first_with_a_state_filter(tmp_path):
    store = JobStore.in_dir(tmp_path)
    made = [store.create(f"r{i}", SPEC)[0].id for i in range(7)]
    store.request_stop(made[0], "cancel")
    seen, token = [], ""
    while True:
        page, token = store.list(page_size=3, page_token=token)
        seen += [j.id for j in page]
        if not token:
            break
    assert seen == made[::-1]
    cancelled, _ = store.list([pb.JOB_STATE_CANCELLED])
    assert [j.id for j in cancelled] == [made[0]]
    with pytest.raises(InvalidArgument):
        store.list(page_token="garbage!")
    with pytest.raises(NotFound):
        store.get("job-missing")


def test_stop_requests(tmp_path):
    store = JobStore.in_dir(tmp_path)
    queued, _ = store.create("q", SPEC)
    assert store.request_stop(queued.id, "cancel").state == pb.JOB_STATE_CANCELLED
    running, _ = store.create("r", SPEC)
    store.claim_next()
    store.request_stop(running.id, "cancel")
    store.request_stop(running.id, "drain")  # never downgrades a cancel
    assert store.stop_request(running.id) == "cancel" and store.get(running.id).cancel_requested
    # a cancel pending when the server died ends the job instead of resuming it
    assert store.requeue(running.id, "restart").state == pb.JOB_STATE_CANCELLED
    paused, _ = store.create("p", SPEC)
    store.claim_next()
    store.request_stop(paused.id, "drain")
    again = store.requeue(paused.id, "restart")
    assert again.state == pb.JOB_STATE_QUEUED and store.stop_request(paused.id) is None
    assert store.claim_next().attempts == 2


class _EndedProcess:
    """A job handle (the executors' protocol) whose process has already exited."""

    job_id = ""

    def sync(self, store: JobStore) -> None:
        pass

    def exit_status(self) -> str:
        return "exited with code 1"


def test_a_crash_the_store_cannot_record_yet_is_recorded_on_a_later_tick(tmp_path,
                                                                        monkeypatch):
    """On a full disk, storing a crashed job's failure raised after its handle was dropped:
    the job read RUNNING with no process until a restart, and `train watch` never ended."""
    import sqlite3

    from trainer_service.jobs.scheduler import Scheduler

    store = JobStore.in_dir(tmp_path)
    job, _ = store.create("r1", SPEC)
    assert store.claim_next().id == job.id
    scheduler = Scheduler(store, executor=None)
    scheduler.draining = True  # only the running handles are looked at
    handle = _EndedProcess()
    handle.job_id = job.id
    scheduler.running[job.id] = handle
    real_fail = store.fail
    calls = []

    def full_disk_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_fail(*args, **kwargs)

    monkeypatch.setattr(store, "fail", full_disk_once)
    scheduler._tick()
    assert job.id in scheduler.running and store.get(job.id).state == pb.JOB_STATE_VALIDATING
    scheduler._tick()  # the disk has room again
    failed = store.get(job.id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == "worker_crashed"
    assert failed.error.message.startswith("exited with code 1")
    assert job.id not in scheduler.running


class _Unreachable:
    """A running job whose process the server cannot reach: every sync fails."""

    def __init__(self, job_id: str):
        self.job_id, self.killed = job_id, False

    def sync(self, store: JobStore) -> None:
        raise ConnectionError("the channel does not answer")

    def exit_status(self) -> None:
        return None

    def kill(self) -> None:
        self.killed = True


class _Starts:
    name, state_dir = "test", Path("/nonexistent")

    def __init__(self):
        self.started: list[str] = []

    def start(self, job):
        self.started.append(job.id)
        return _Running(job.id)


class _Running:
    def __init__(self, job_id: str):
        self.job_id = job_id

    def sync(self, store: JobStore) -> None:
        pass

    def exit_status(self) -> None:
        return None


def test_one_unreachable_job_neither_stalls_the_queue_nor_runs_forever(tmp_path):
    """A job whose checks raise (a Ray channel actor that died used to abort every tick:
    no other job ever started) is tried again on later ticks, then stopped and failed,
    while the queue moves."""
    from trainer_service.jobs.scheduler import MAX_TICK_FAILURES, Scheduler

    store = JobStore.in_dir(tmp_path)
    stuck, _ = store.create("r1", SPEC)
    waiting, _ = store.create("r2", SPEC)
    assert store.claim_next().id == stuck.id
    executor = _Starts()
    scheduler = Scheduler(store, executor=executor, max_concurrent=2)
    handle = _Unreachable(stuck.id)
    scheduler.running[stuck.id] = handle
    scheduler._tick()
    assert executor.started == [waiting.id]  # the queue moved past the stuck job
    for _ in range(MAX_TICK_FAILURES - 2):
        scheduler._tick()
    assert not handle.killed and store.get(stuck.id).state == pb.JOB_STATE_VALIDATING
    scheduler._tick()
    failed = store.get(stuck.id)
    assert handle.killed and failed.state == pb.JOB_STATE_FAILED
    assert failed.error.code == "worker_crashed"
    assert "lost touch" in failed.error.message and "does not answer" in failed.error.message
    assert stuck.id not in scheduler.running
