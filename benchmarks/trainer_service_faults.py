"""Fault benchmark: the training service's jobs survive a server killed with SIGKILL.

Run:
    .venv/bin/python benchmarks/trainer_service_faults.py --kills 3 --jobs 2 --seed 1
    .venv/bin/python benchmarks/trainer_service_faults.py --kills 1 --jobs 1   # 2 cores

Starts a real `tunesmith trainer serve` subprocess (loopback, port 0, a bearer token) on a
state dir, submits --jobs real tiny jobs (the capitals dataset of test_recipe_run.py,
SmolLM2-135M-Instruct, --steps optimizer steps, eval and a checkpoint every step, batch 4,
max_seq_len 128, learning rate 5e-4), then --kills times: waits a random --min-wait to
--max-wait seconds (random.Random(--seed)), SIGKILLs the server and starts a new one on
the SAME state dir and a new port. After each restart the client sends every CreateJob
again with its request_id (a client retrying calls it is unsure about) and must get the
same job back. Then everything runs to its end (--timeout).

Counted:
- lost: a submitted job missing from ListJobs, or not SUCCEEDED within --timeout;
- duplicated: jobs in the store beyond the submitted request_ids, a retried CreateJob
  answered with another job, a job whose event log shows an "attempt N started" while an
  earlier attempt was still live (no requeue between), attempt numbers that are not 1..n
  or disagree with the job's `attempts`, train steps going backwards within one attempt,
  or two live worker processes for one job at once (`ps` sampled every 0.5 s);
- leftover workers: `python -m trainer_service.jobs.worker` processes of this state dir
  whose parent is not the live server, checked after every restart and at the end (they
  die with their server through PR_SET_PDEATHSIG), and any left after the final SIGTERM.

Printed: a line per kill (when, which jobs were running), a line per job (final state,
attempts, problems), kills, jobs, succeeded, lost, duplicated, total wall time; targets
lost == 0, duplicated == 0, leftover workers == 0 as PASS / FAIL; exit 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as a script this folder leads sys.path; the project root must

import grpc  # noqa: E402

from benchmarks.trainer_service_load import (Server, setup, verdict,  # noqa: E402
                                             worker_processes)
from protos.tunesmith.training.v1 import training_pb2 as pb  # noqa: E402
from trainer_service.client import TrainingClient  # noqa: E402
from trainer_service.jobs.store import ACTIVE, TERMINAL, state_name  # noqa: E402

ATTEMPT = re.compile(r"attempt (\d+) started")


class PsSampler(threading.Thread):
    """Samples the state dir's worker processes; keeps the most seen at once per job."""

    def __init__(self, state_dir: Path):
        super().__init__(daemon=True)
        self.state_dir, self.most = state_dir, Counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for job_id, n in Counter(j for _, _, j in worker_processes(self.state_dir)).items():
                self.most[job_id] = max(self.most[job_id], n)


def strays(state_dir: Path, server: Server) -> list[tuple[int, int, str]]:
    """Worker processes of this state dir whose parent is not the live server."""
    return [w for w in worker_processes(state_dir) if w[1] != server.proc.pid]


def events_of(client, job_id: str, timeout_s: float = 30.0) -> list:
    """The job's events from the start until its final state (or the deadline)."""
    events = []
    try:
        for event in client.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_sequence=1),
                                          metadata=client.metadata, timeout=timeout_s):
            events.append(event)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return events


def check_events(job, events) -> list[str]:
    """What in a job's event log shows two executions at once or miscounted attempts."""
    problems = []
    if [e.sequence for e in events] != list(range(1, len(events) + 1)):
        problems.append("event sequence numbers have gaps or repeats")
    live, started, last_step = None, [], 0
    for e in events:
        if e.kind == pb.EVENT_KIND_STATE_CHANGE:
            change = e.state_change
            found = ATTEMPT.match(change.reason)
            if found:
                if live is not None:
                    problems.append(f"attempt {found[1]} started while attempt {live} was live")
                live, last_step = int(found[1]), 0
                started.append(live)
            elif change.state == pb.JOB_STATE_QUEUED or change.state in TERMINAL:
                live = None
        elif e.kind == pb.EVENT_KIND_STEP_METRICS:
            if e.step.step < last_step:
                problems.append(f"step {e.step.step} after step {last_step} in attempt {live}")
            last_step = e.step.step
    if started != list(range(1, len(started) + 1)) or job.attempts != len(started):
        problems.append(f"attempts started {started}, job.attempts {job.attempts}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of the server")
    parser.add_argument("--jobs", type=int, default=2, help="jobs submitted at the start")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per job")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    parser.add_argument("--min-wait", type=float, default=5.0, help="seconds before a kill, min")
    parser.add_argument("--max-wait", type=float, default=20.0, help="seconds before a kill, max")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds after the last restart for every job to end")
    parser.add_argument("--max-concurrent-jobs", type=int, default=1,
                        help="the server's --max-concurrent-jobs")
    parser.add_argument("--quantization", choices=("nf4", "int8", "none"),
                        help="the jobs' quantization (default: nf4 with CUDA, else none)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="ts-faults-")).resolve()
    server = sampler = None
    try:
        spec, roots, token_file = setup(workdir, args.quantization, args.steps)
        token, state = token_file.read_text().strip(), workdir / "state"

        def new_server() -> Server:
            return Server(state, roots, token_file, workdir / "server.log",
                          ("--max-concurrent-jobs", str(args.max_concurrent_jobs),
                           "--drain-timeout", "5"))

        server = new_server()
        sampler = PsSampler(state)
        sampler.start()
        client = TrainingClient(server.address, token=token, timeout_s=30)
        start = time.monotonic()
        jobs = {f"faults-{i}-{uuid.uuid4().hex[:8]}": "" for i in range(args.jobs)}
        for rid in jobs:
            jobs[rid] = client.create(spec, rid).id
        print(f"server {server.address}; submitted {', '.join(jobs.values())}", flush=True)
        mismatched, stray_pids = 0, set()
        for k in range(1, args.kills + 1):
            wait = rng.uniform(args.min_wait, args.max_wait)
            time.sleep(wait)
            running = [f"{j.id} {state_name(j.state)} step {j.metrics.get('global_step', 0):g}"
                       for j in client.list(page_size=1000).jobs if j.state in ACTIVE]
            server.kill()
            client.close()
            print(f"kill {k} at {time.monotonic() - start:.1f} s (waited {wait:.1f} s); "
                  f"running: {', '.join(running) or 'none'}", flush=True)
            server = new_server()
            left = strays(state, server)
            stray_pids.update(pid for pid, _, _ in left)
            client = TrainingClient(server.address, token=token, timeout_s=30)
            for rid, job_id in jobs.items():  # a client retrying its creates
                mismatched += client.create(spec, rid).id != job_id
            print(f"  restarted on {server.address}; workers of killed servers left: "
                  f"{len(left)}", flush=True)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                if all(client.get(j).state in TERMINAL for j in jobs.values()):
                    break
            except grpc.RpcError as exc:
                print(f"  GetJob: {exc.code().name}: {exc.details()}", flush=True)
            time.sleep(2)
        wall = time.monotonic() - start
        stray_pids.update(pid for pid, _, _ in strays(state, server))

        listed, token_ = [], ""
        while True:
            page = client.list(page_size=1000, page_token=token_)
            listed += page.jobs
            token_ = page.next_page_token
            if not token_:
                break
        by_id = {j.id: j for j in listed}
        extra = sum(j.id not in jobs.values() for j in listed)  # only these were submitted
        duplicated = extra + mismatched
        lost, succeeded = 0, 0
        print(f"\n{'job':<18}{'state':<11}{'attempts':>9}  problems")
        for rid, job_id in jobs.items():
            job = by_id.get(job_id)
            if job is None:
                lost += 1
                print(f"{job_id:<18}{'MISSING':<11}{'-':>9}")
                continue
            problems = check_events(job, events_of(client, job_id))
            if sampler.most[job_id] > 1:
                problems.append(f"{sampler.most[job_id]} worker processes at once")
            duplicated += bool(problems)
            ok = job.state == pb.JOB_STATE_SUCCEEDED
            succeeded += ok
            lost += not ok
            error = f"; error {job.error.code}: {job.error.message[:100]}" \
                if job.error.code else ""
            print(f"{job_id:<18}{state_name(job.state):<11}{job.attempts:>9}  "
                  f"{'; '.join(problems) or 'none'}{error}")
        client.close()
        sampler.done.set()
        clean = server.terminate(35)
        time.sleep(1)
        stray_pids.update(pid for pid, _, _ in worker_processes(state))
        server = None

        print(f"\nkills {args.kills}, jobs {len(jobs)} (in the store: {len(listed)}, "
              f"{extra} not submitted), succeeded "
              f"{succeeded}, lost {lost}, duplicated {duplicated}, retried creates answered "
              f"with another job {mismatched}, attempts per job "
              f"{[by_id[j].attempts for j in jobs.values() if j in by_id]}, total wall time "
              f"{wall:.1f} s, final SIGTERM exit clean: {clean}")
        verdict([(f"lost == 0 (got {lost})", lost == 0),
                 (f"duplicated == 0 (got {duplicated})", duplicated == 0),
                 (f"leftover workers == 0 (got {len(stray_pids)})", not stray_pids)],
                workdir / "server.log")
    finally:
        if sampler is not None:
            sampler.done.set()
        if server is not None:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
