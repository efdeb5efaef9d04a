"""Load benchmark: RPC latency of the training service under many concurrent clients.

Run:
    .venv/bin/python benchmarks/trainer_service_load.py --clients 50 --seconds 30
    .venv/bin/python benchmarks/trainer_service_load.py --clients 10 --seconds 10   # 2 cores

Starts a real `tunesmith trainer serve` subprocess on loopback (--port 0, a bearer token so
auth runs on every call, --max-concurrent-jobs 1, --drain-timeout 5) on a fresh state dir
whose data roots hold the capitals dataset of tests/trainer_service/test_recipe_run.py and
the embedded SmolLM2-135M-Instruct. Then --clients threads, each with its own
TrainingClient (own channel), loop for --seconds over: CreateJob (a dry_run spec, a fresh
request_id), GetJob of that job, ListJobs (page_size 20), and WatchJob of that job, read
for up to --watch-seconds (a deadline) and then cancelled; its latency is the time to the
first event. Dry-run jobs queue behind one slot while their job processes run; measured
is RPC latency as the client sees it (the client threads share one Python process), not
job throughput. An uncounted warm-up (--warmup-seconds, at most 5 clients) runs first.
An error is any grpc.RpcError except the watch's own deadline after its first event.

Printed: calls and p50 / p99 / max ms per RPC, calls/s, errors by RPC and status; targets
0 errors, p99 CreateJob < --create-p99-ms (100), auth enforced (a call without the token
is UNAUTHENTICATED) and a clean shutdown (SIGTERM: exit 0 within the drain timeout + 30 s,
no job process left) as PASS / FAIL; exit 1 on any FAIL.
trainer_service_faults.py reuses the server helpers here.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as a script this folder leads sys.path; the project root must

from protos.tunesmith.training.v1 import training_pb2 as pb  # noqa: E402
from trainer_service.client import TrainingClient  # noqa: E402

CLI = str(Path(sys.executable).with_name("tunesmith"))
READY = re.compile(r"tunesmith trainer serving on (\S+):(\d+) ")
RPCS = ("CreateJob", "GetJob", "ListJobs", "WatchJob")


# --- shared with trainer_service_faults.py ------------------------------------------------------

class Server:
    """A started `tunesmith trainer serve` subprocess on loopback, port 0; its output is
    appended to ``log``, its ``address`` read from the ready line."""

    def __init__(self, state_dir: Path, data_roots: list[Path], token_file: Path, log: Path,
                 extra: tuple[str, ...] = (), timeout_s: float = 180.0):
        argv = [CLI, "trainer", "serve", "--host", "127.0.0.1", "--port", "0", "--state-dir",
                str(state_dir), "--token-file", str(token_file), *extra]
        argv += [arg for root in data_roots for arg in ("--data-root", str(root))]
        self.log, offset = log, log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            found = READY.search(log.read_bytes()[offset:].decode(errors="replace"))
            if found:
                self.address = f"{found[1]}:{found[2]}"
                return
            time.sleep(0.1)
        self.kill()
        raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout_s: float) -> bool:
        """SIGTERM (drain, then exit); True if it exited cleanly in time, else SIGKILLed."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s) == 0
        except subprocess.TimeoutExpired:
            self.kill()
            return False


def worker_processes(state_dir: Path) -> list[tuple[int, int, str]]:
    """(pid, ppid, job id) of live `trainer_service.jobs.worker` processes of this state dir."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,args="], capture_output=True,
                        text=True, check=True).stdout
    out = []
    for line in ps.splitlines():
        pid, ppid, stat, args = line.split(None, 3)
        if "trainer_service.jobs.worker" in args and f"--state-dir {state_dir} " in args \
                and not stat.startswith("Z"):
            job = re.search(r"--job-id (\S+)", args)
            out.append((int(pid), int(ppid), job[1] if job else "?"))
    return out


def setup(workdir: Path, quantization: str | None, max_steps: int = 3, **extra):
    """(spec, data roots, token file): the capitals dataset of test_recipe_run.py under
    ``workdir``, SmolLM2 and its tiny spec (``extra``: more top-level spec keys);
    quantization None: nf4 with CUDA, else none (bitsandbytes 4-bit on CPU is slow)."""
    import torch

    from tests.trainer_service.test_recipe_run import dataset
    from trainer_service.jobs.validate import spec_from_mapping
    from tunesmith.models import fetch_default

    data, model = dataset(workdir / "data" / "capitals"), Path(fetch_default()).resolve()
    token_file = workdir / "token"
    token_file.write_text(secrets.token_hex(16) + "\n")
    token_file.chmod(0o600)
    spec = spec_from_mapping({
        "base_model": str(model), "dataset": str(data),
        "quantization": quantization or ("nf4" if torch.cuda.is_available() else "none"),
        "training": {"max_steps": max_steps, "per_device_batch": 4, "grad_accum": 1,
                     "max_seq_len": 128, "eval_every_steps": 1, "learning_rate": 5e-4},
        **extra})
    return spec, [workdir / "data", model], token_file


def verdict(targets: list[tuple[str, bool]], log: Path) -> None:
    """Prints PASS / FAIL per target; on a FAIL the end of ``log`` and exit 1."""
    print()
    for name, ok in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if not all(ok for _, ok in targets):
        print(f"\nend of the server log:\n{log.read_text(errors='replace')[-3000:]}")
        sys.exit(1)


# --- the load -----------------------------------------------------------------------------------

class Stats:
    """Latencies (s) per RPC and errors per (RPC, status), shared by the client threads."""

    def __init__(self):
        self.latency: dict[str, list[float]] = {r: [] for r in RPCS}
        self.errors: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()

    def error(self, rpc: str, code: str, message: str) -> None:
        with self.lock:
            self.errors[(rpc, code)] += 1
            self.examples.setdefault((rpc, code), message[:200])

    def timed(self, rpc: str, call):
        start = time.perf_counter()
        try:
            result = call()
        except grpc.RpcError as exc:
            self.error(rpc, exc.code().name, exc.details() or "")
            return None
        self.latency[rpc].append(time.perf_counter() - start)
        return result


def watch_first_event(client, job_id: str, seconds: float, stats: Stats) -> None:
    start = time.perf_counter()
    stream = client.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_sequence=1),
                                  metadata=client.metadata, timeout=seconds)
    first = None
    try:
        for _ in stream:
            if first is None:
                first = time.perf_counter() - start
    except grpc.RpcError as exc:
        if not (exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and first is not None):
            stats.error("WatchJob", exc.code().name, exc.details() or "")
            return
    finally:
        stream.cancel()
    if first is None:
        stats.error("WatchJob", "NO_EVENT", "the stream ended without an event")
    else:
        stats.latency["WatchJob"].append(first)


def client_loop(address: str, token: str, spec, stop_at: float, watch_s: float,
                stats: Stats) -> None:
    with TrainingClient(address, token=token, timeout_s=30) as client:
        while time.monotonic() < stop_at:
            job = stats.timed("CreateJob", lambda: client.create(spec, str(uuid.uuid4())))
            if job is None:
                continue
            stats.timed("GetJob", lambda: client.get(job.id))
            stats.timed("ListJobs", lambda: client.list(page_size=20))
            watch_first_event(client, job.id, watch_s, stats)


def run_load(address: str, token: str, spec, clients: int, seconds: float,
             watch_s: float) -> tuple[Stats, float]:
    stats, stop_at, start = Stats(), time.monotonic() + seconds, time.perf_counter()
    threads = [threading.Thread(target=client_loop, daemon=True,
                                args=(address, token, spec, stop_at, watch_s, stats))
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of ``values``, in ms."""
    ordered = sorted(values)
    return 1000 * ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=30, help="measured load duration")
    parser.add_argument("--warmup-seconds", type=float, default=5,
                        help="uncounted warm-up with min(5, --clients) clients (0: none)")
    parser.add_argument("--watch-seconds", type=float, default=1.0,
                        help="deadline of each WatchJob read")
    parser.add_argument("--create-p99-ms", type=float, default=100.0,
                        help="target: p99 CreateJob latency below this")
    parser.add_argument("--quantization", choices=("nf4", "int8", "none"),
                        help="the jobs' quantization (default: nf4 with CUDA, else none)")
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="the server's --drain-timeout")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ts-load-")).resolve()
    server = None
    try:
        spec, roots, token_file = setup(workdir, args.quantization, dry_run=True)
        state, token = workdir / "state", token_file.read_text().strip()
        server = Server(state, roots, token_file, workdir / "server.log",
                        ("--max-concurrent-jobs", "1",
                         "--drain-timeout", str(args.drain_timeout)))
        print(f"server {server.address} (pid {server.proc.pid}); {args.clients} clients for "
              f"{args.seconds:g} s after a {args.warmup_seconds:g} s warm-up; "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
        with TrainingClient(server.address) as anonymous:  # no token: must be refused
            try:
                anonymous.list(page_size=1)
                refused = "OK"
            except grpc.RpcError as exc:
                refused = exc.code().name
        if args.warmup_seconds > 0:
            run_load(server.address, token, spec, min(5, args.clients), args.warmup_seconds,
                     args.watch_seconds)
        stats, wall = run_load(server.address, token, spec, args.clients, args.seconds,
                               args.watch_seconds)
        clean = server.terminate(args.drain_timeout + 30)
        deadline = time.monotonic() + 10
        while (left := worker_processes(state)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, _, _ in left:
            os.kill(pid, signal.SIGKILL)

        calls = sum(len(v) for v in stats.latency.values())
        print(f"\n{'rpc':<10}{'calls':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for rpc, lat in stats.latency.items():
            print(f"{rpc:<10}{len(lat):>8}" + "".join(
                f"{pct(lat, q) if lat else float('nan'):>10.1f}" for q in (50, 99, 100)))
        print(f"{calls} successful calls in {wall:.1f} s: {calls / wall:.1f} calls/s "
              f"(WatchJob: time to first event)")
        errors = sum(stats.errors.values())
        print(f"errors: {errors}")
        for (rpc, code), n in sorted(stats.errors.items()):
            print(f"  {rpc} {code}: {n}  e.g. {stats.examples[(rpc, code)]}")
        creates = stats.latency["CreateJob"]
        p99 = pct(creates, 99) if creates else float("inf")
        verdict([(f"errors == 0 (got {errors})", errors == 0),
                 (f"p99 CreateJob < {args.create_p99_ms:g} ms (got {p99:.1f})",
                  p99 < args.create_p99_ms),
                 (f"auth enforced (a call without the token: {refused})",
                  refused == "UNAUTHENTICATED"),
                 (f"clean shutdown (exit 0 on SIGTERM: {clean}, job processes left: "
                  f"{len(left)})", clean and not left)], server.log)
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
