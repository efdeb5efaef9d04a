"""The durable job store: jobs, their event logs and checkpoints in one SQLite file (WAL).

Nothing about a job lives only in memory: the server, the job processes and a restarted
server all read and write this file. Every write is one `BEGIN IMMEDIATE` transaction, so
sequence numbers have no gaps even with several processes writing, and a state change and
its event are stored together or not at all. Rows hold the wire types (protobuf bytes) for
specs, errors and events, so what a client reads is exactly what was stored.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.errors import AlreadyExists, InvalidArgument, NotFound

TERMINAL = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
ACTIVE = frozenset({pb.JOB_STATE_VALIDATING, pb.JOB_STATE_RUNNING, pb.JOB_STATE_MERGING,
                    pb.JOB_STATE_VERIFYING, pb.JOB_STATE_EXPORTING})
STORE_FILE = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    spec BLOB NOT NULL,
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    error BLOB,
    metrics TEXT NOT NULL DEFAULT '{}',
    artifacts TEXT NOT NULL DEFAULT '{}',
    warnings TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    stop_request TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, create_time);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (create_time, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    UNIQUE (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    eval_loss REAL,
    create_time REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
"""


def canonical(spec: pb.JobSpec) -> str:
    """The spec as its meaning: set fields, with empty messages (`lora {}`, which some
    clients send for an unset block) left out; what a retried CreateJob is compared by."""
    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            pruned = {k: prune(v) for k, v in value.items()}
            return {k: v for k, v in pruned.items() if v != {}}
        return value

    return json.dumps(prune(json_format.MessageToDict(spec, preserving_proto_field_name=True)),
                      sort_keys=True)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def state_name(state: int) -> str:
    """JOB_STATE_RUNNING -> RUNNING."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


class JobStore:
    """SQLite-backed jobs, events and checkpoints; safe to share between threads and
    processes (one connection per thread, WAL, a generous busy timeout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> "JobStore":
        return cls(Path(state_dir) / STORE_FILE)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives process crashes
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- jobs -----------------------------------------------------------------------------

    def create(self, request_id: str, spec: pb.JobSpec) -> tuple[pb.Job, bool]:
        """Queues a job for ``request_id``, or returns the one already created for it.
        Returns (job, created)."""
        blob = spec.SerializeToString(deterministic=True)
        with self._tx() as c:
            row = c.execute("SELECT id, spec FROM jobs WHERE request_id = ?",
                            (request_id,)).fetchone()
            if row is not None:
                if row[1] != blob and canonical(pb.JobSpec.FromString(row[1])) \
                        != canonical(spec):
                    raise AlreadyExists(f"request_id {request_id!r} already created job {row[0]} "
                                        "with a different spec", "request_id")
                job_id, created = row[0], False
            else:
                job_id, created = f"job-{uuid.uuid4().hex[:12]}", True
                c.execute("INSERT INTO jobs (id, request_id, state, spec, create_time) "
                          "VALUES (?, ?, ?, ?, ?)",
                          (job_id, request_id, pb.JOB_STATE_UNSPECIFIED, blob, time.time()))
                self._apply(c, job_id, state_event(pb.JOB_STATE_QUEUED, "accepted"))
        return self.get(job_id), created

    def get(self, job_id: str) -> pb.Job:
        row = self._conn().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}", "job_id")
        return _job(row)

    def list(self, states: list[int] | None = None, page_size: int = 50,
             page_token: str = "") -> tuple[list[pb.Job], str]:
        """Jobs newest first; returns (page, next page token or "")."""
        where, args = [], []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += list(states)
        if page_token:
            try:
                t, last_id = json.loads(base64.urlsafe_b64decode(page_token.encode()))
                if not isinstance(t, (int, float)) or not isinstance(last_id, str):
                    raise TypeError("a token holds a time and a job id")
            except (ValueError, TypeError):
                raise InvalidArgument([("page_token", "not a token this server issued")]) \
                    from None
            where.append("(create_time < ? OR (create_time = ? AND id < ?))")
            args += [t, t, last_id]
        sql = (f"SELECT {_JOB_COLUMNS} FROM jobs"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + " ORDER BY create_time DESC, id DESC LIMIT ?")
        rows = self._conn().execute(sql, (*args, page_size + 1)).fetchall()
        jobs = [_job(r) for r in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            last = rows[page_size - 1]
            token = base64.urlsafe_b64encode(json.dumps([last[4], last[0]]).encode()).decode()
        return jobs, token

    def claim_next(self) -> pb.Job | None:
        """Moves the oldest queued job to VALIDATING as a new attempt; None if none waits."""
        with self._tx() as c:
            row = c.execute("SELECT id, attempts FROM jobs WHERE state = ? "
                            "ORDER BY create_time, id LIMIT 1",
                            (pb.JOB_STATE_QUEUED,)).fetchone()
            if row is None:
                return None
            job_id, attempts = row
            c.execute("UPDATE jobs SET attempts = ?, start_time = ?, stop_request = NULL "
                      "WHERE id = ?", (attempts + 1, time.time(), job_id))
            self._apply(c, job_id, state_event(pb.JOB_STATE_VALIDATING,
                                                f"attempt {attempts + 1} started"))
        return self.get(job_id)

    def active(self) -> list[pb.Job]:
        """Jobs some process was running (VALIDATING through EXPORTING)."""
        rows = self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({', '.join('?' * len(ACTIVE))}) "
            "ORDER BY create_time", tuple(ACTIVE)).fetchall()
        return [_job(r) for r in rows]

    def request_stop(self, job_id: str, reason: str) -> pb.Job:
        """Asks a job to stop ("cancel" or "drain"). A queued job is cancelled at once; an
        ended one is left as it is; a running one stops at its next safe point."""
        with self._tx() as c:
            row = c.execute("SELECT state, stop_request FROM jobs WHERE id = ?",
                            (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id!r}", "job_id")
            state, current = row
            if state in TERMINAL:
                pass
            elif state == pb.JOB_STATE_QUEUED:
                if reason == "cancel":
                    self._apply(c, job_id, state_event(pb.JOB_STATE_CANCELLED,
                                                        "cancelled before it started"))
            elif current != "cancel":  # a cancel is never downgraded to a drain
                c.execute("UPDATE jobs SET stop_request = ? WHERE id = ?", (reason, job_id))
        return self.get(job_id)

    def stop_request(self, job_id: str) -> str | None:
        row = self._conn().execute("SELECT stop_request FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
        return row[0] if row else None

    def requeue(self, job_id: str, reason: str) -> pb.Job:
        """Puts an interrupted job back in the queue (or ends it CANCELLED when a cancel was
        pending); its next attempt resumes from its last checkpoint."""
        with self._tx() as c:
            row = c.execute("SELECT stop_request FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row and row[0] == "cancel":
                self._apply(c, job_id, state_event(pb.JOB_STATE_CANCELLED,
                                                    "cancelled while interrupted"))
            else:
                self._apply(c, job_id, state_event(pb.JOB_STATE_QUEUED, reason))
        return self.get(job_id)

    def fail(self, job_id: str, code: str, message: str, field: str = "") -> pb.Job:
        error = pb.JobError(code=code, message=message, field=field)
        with self._tx() as c:
            self._apply(c, job_id, state_event(pb.JOB_STATE_FAILED, message, error))
        return self.get(job_id)

    def update(self, job_id: str, artifacts: dict[str, str] | None = None,
               metrics: dict[str, float] | None = None) -> None:
        """Merges artifact paths and summary numbers into the job."""
        with self._tx() as c:
            row = c.execute("SELECT artifacts, metrics FROM jobs WHERE id = ?",
                            (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id!r}", "job_id")
            arts = {**json.loads(row[0]), **(artifacts or {})}
            nums = {**json.loads(row[1]), **(metrics or {})}
            c.execute("UPDATE jobs SET artifacts = ?, metrics = ? WHERE id = ?",
                      (json.dumps(arts), json.dumps(nums), job_id))

    def counts_by_state(self) -> dict[int, int]:
        return dict(self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    # --- events ---------------------------------------------------------------------------

    def append(self, job_id: str, event: pb.JobEvent) -> pb.JobEvent | None:
        """Stores one event (numbering it) and folds it into the job; None when ignored (a
        state change for a job that already ended, or to the state it is in)."""
        with self._tx() as c:
            return self._apply(c, job_id, event)

    def events(self, job_id: str, from_sequence: int = 1, limit: int = 500) -> list[pb.JobEvent]:
        rows = self._conn().execute(
            "SELECT event FROM events WHERE job_id = ? AND sequence >= ? ORDER BY sequence "
            "LIMIT ?", (job_id, max(1, from_sequence), limit)).fetchall()
        return [pb.JobEvent.FromString(r[0]) for r in rows]

    def last_event_id(self) -> int:
        """The newest event's row id across all jobs (watchers poll this to wake up)."""
        return self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def checkpoints(self, job_id: str) -> list[pb.Checkpoint]:
        self.get(job_id)
        rows = self._conn().execute(
            "SELECT step, path, eval_loss, create_time FROM checkpoints WHERE job_id = ? "
            "ORDER BY step", (job_id,)).fetchall()
        out = []
        for step, path, loss, t in rows:
            cp = pb.Checkpoint(step=step, path=path, create_time=timestamp(t))
            if loss is not None:
                cp.eval_loss = loss
            out.append(cp)
        return out

    def _apply(self, c: sqlite3.Connection, job_id: str,
               event: pb.JobEvent) -> pb.JobEvent | None:
        row = c.execute("SELECT state, last_sequence, metrics, warnings FROM jobs WHERE id = ?",
                        (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}", "job_id")
        state, last_seq, metrics_json, warnings_json = row
        now = time.time()
        event = pb.JobEvent.FromString(event.SerializeToString())
        if not event.HasField("time"):
            event.time.CopyFrom(timestamp(now))
        kind = event.kind
        if kind == pb.EVENT_KIND_STATE_CHANGE:
            new = event.state_change.state
            if state in TERMINAL or new == state:
                return None
            event.state_change.previous = state
            sets, args = ["state = ?"], [new]
            if new in TERMINAL:
                sets += ["end_time = ?", "stop_request = NULL"]
                args.append(now)
            if new == pb.JOB_STATE_QUEUED:
                sets.append("stop_request = NULL")
            if new == pb.JOB_STATE_FAILED:
                sets.append("error = ?")
                args.append(event.state_change.error.SerializeToString())
            c.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
        elif kind in (pb.EVENT_KIND_STEP_METRICS, pb.EVENT_KIND_EVAL_METRICS):
            metrics = json.loads(metrics_json)
            if kind == pb.EVENT_KIND_STEP_METRICS:
                s = event.step
                metrics.update(global_step=s.step, max_steps=s.max_steps, epoch=s.epoch,
                               loss=s.loss, learning_rate=s.learning_rate,
                               tokens_per_s=s.tokens_per_s, tokens_seen=s.tokens_seen)
            else:
                loss = event.eval.eval_loss
                best = metrics.get("best_eval_loss")
                metrics.update(global_step=max(metrics.get("global_step", 0), event.eval.step),
                               eval_loss=loss,
                               best_eval_loss=loss if best is None else min(best, loss))
            c.execute("UPDATE jobs SET metrics = ? WHERE id = ?", (json.dumps(metrics), job_id))
        elif kind == pb.EVENT_KIND_CHECKPOINT_SAVED:
            cp = event.checkpoint
            c.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                      (job_id, cp.step, cp.path,
                       cp.eval_loss if cp.HasField("eval_loss") else None, now))
        elif kind == pb.EVENT_KIND_WARNING:
            warnings = json.loads(warnings_json)
            if event.message not in warnings:
                warnings.append(event.message)
                c.execute("UPDATE jobs SET warnings = ? WHERE id = ?",
                          (json.dumps(warnings), job_id))
        event.job_id = job_id
        event.sequence = last_seq + 1
        c.execute("INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
                  (job_id, event.sequence, event.SerializeToString()))
        c.execute("UPDATE jobs SET last_sequence = ? WHERE id = ?", (event.sequence, job_id))
        return event


_JOB_COLUMNS = ("id, request_id, state, spec, create_time, start_time, end_time, error, "
                "metrics, artifacts, warnings, attempts, last_sequence, stop_request")


def _job(row: tuple) -> pb.Job:
    (job_id, request_id, state, spec, created, started, ended, error, metrics, artifacts,
     warnings, attempts, last_seq, stop) = row
    job = pb.Job(id=job_id, request_id=request_id, state=state,
                 spec=pb.JobSpec.FromString(spec), create_time=timestamp(created),
                 metrics={k: float(v) for k, v in json.loads(metrics).items()
                          if isinstance(v, (int, float))},
                 artifacts=json.loads(artifacts), warnings=json.loads(warnings),
                 attempts=attempts, last_sequence=last_seq, cancel_requested=stop == "cancel")
    if started is not None:
        job.start_time.CopyFrom(timestamp(started))
    if ended is not None:
        job.end_time.CopyFrom(timestamp(ended))
    if error:
        job.error.CopyFrom(pb.JobError.FromString(error))
    return job


def state_event(state: int, reason: str, error: pb.JobError | None = None) -> pb.JobEvent:
    """A STATE_CHANGE event to ``state`` (the store fills in the previous state)."""
    change = pb.StateChange(state=state, reason=reason)
    if error is not None:
        change.error.CopyFrom(error)
    return pb.JobEvent(kind=pb.EVENT_KIND_STATE_CHANGE, state_change=change)
