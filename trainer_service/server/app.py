"""The training server's lifecycle: `create_server(config)` builds and binds it (port 0 for
tests), `serve(config)` runs it until SIGTERM/SIGINT and then drains.

Draining: health turns NOT_SERVING, CreateJob answers UNAVAILABLE, running jobs are asked
to stop at a safe point (training saves a checkpoint first) and go back to the queue, and
the server exits; the next server resumes them. Jobs that do not stop in time die with the
server and are recovered the same way.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sqlite3
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.tunesmith.training.v1 import training_pb2, training_pb2_grpc
from trainer_service.jobs.scheduler import Scheduler
from trainer_service.jobs.store import JobStore
from trainer_service.server.auth import TokenAuthInterceptor
from trainer_service.server.servicer import UNARY_THREADS, EventNotifier, TrainingServicer

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
log = logging.getLogger("tunesmith.trainer")


class ServerConfigError(Exception):
    """A server flag is wrong; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass
class ServerConfig:
    state_dir: Path
    data_roots: list[Path]
    host: str = "127.0.0.1"
    port: int = 50051
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    ray_pending_timeout_s: float = 600.0  # a Ray job's task waiting for a node this long fails
    max_concurrent_jobs: int = 1
    metrics_port: int | None = None
    reflection: bool = False
    drain_timeout_s: float = 25.0  # under Kubernetes' default 30 s termination grace
    rpc_threads: int = 128  # each open WatchJob stream holds one

    def check(self) -> None:
        if not self.data_roots:
            raise ServerConfigError("--data-root", "give at least one folder jobs may read")
        for root in self.data_roots:
            if not Path(root).is_dir():
                raise ServerConfigError("--data-root", f"{root}: no such folder")
        if self.executor not in ("local", "ray"):
            raise ServerConfigError("--executor", f"{self.executor!r} is not local or ray")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ServerConfigError("--tls-cert", "give --tls-cert and --tls-key together")
        if not self.ray_pending_timeout_s > 0:
            raise ServerConfigError("--ray-pending-timeout", "must be > 0 seconds")
        if self.max_concurrent_jobs < 1:
            raise ServerConfigError("--max-concurrent-jobs", "must be >= 1")
        try:
            socket.getaddrinfo(self.host.strip("[]"), None)
        except (socket.gaierror, UnicodeError):
            raise ServerConfigError("--host", f"{self.host!r} is neither an address nor a name "
                                    "this machine resolves") from None
        for flag, port in (("--port", self.port), ("--metrics-port", self.metrics_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ServerConfigError(flag, f"{port} is not a port (0-65535; 0 picks a free one)")


def grpc_address(host: str, port: int) -> str:
    """`HOST:PORT` as gRPC reads it: an IPv6 address in brackets (`[::]:50051`), given with
    or without them."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_token(path: Path | None) -> str | None:
    """The token in a file (surrounding whitespace removed), or None without a file."""
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ServerConfigError("--token-file", f"{path}: {exc.strerror or exc}") from None
    if not token:
        raise ServerConfigError("--token-file", f"{path} is empty")
    return token


class TrainerServer:
    """A bound, not yet started training server; `start`, then `drain` and/or `stop`."""

    def __init__(self, config: ServerConfig):
        config.check()
        self.config = config
        state_dir = Path(config.state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerConfigError("--state-dir", f"{state_dir}: {exc.strerror or exc}") from None
        try:
            self._lock_fd = _lock_state_dir(state_dir)
            self.store = JobStore.in_dir(state_dir)
        except (OSError, sqlite3.Error) as exc:  # a read-only or full filesystem
            raise ServerConfigError("--state-dir", f"{state_dir}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        if config.executor == "ray":
            from trainer_service.jobs.executors import RayExecutor

            self.executor = RayExecutor(state_dir, config.ray_address,
                                        config.ray_pending_timeout_s)
        else:
            from trainer_service.jobs.executors import LocalExecutor

            self.executor = LocalExecutor(state_dir)
        self.scheduler = Scheduler(self.store, self.executor, config.max_concurrent_jobs)
        self.notifier = EventNotifier(self.store)
        self.servicer = TrainingServicer(self.store, self.scheduler, config.data_roots,
                                         self.notifier,
                                         max(1, config.rpc_threads - UNARY_THREADS))
        interceptors = [TokenAuthInterceptor(config.token)] if config.token else []
        # no SO_REUSEPORT: gRPC's default lets a second server bind a port in use, and the
        # kernel then splits clients between two job stores
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=config.rpc_threads),
                                interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        training_pb2_grpc.add_TrainingServiceServicer_to_server(self.servicer, self.grpc)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        services = [SERVICE_NAME, health.SERVICE_NAME]
        if config.reflection:
            from grpc_reflection.v1alpha import reflection

            services.append(reflection.SERVICE_NAME)
            reflection.enable_server_reflection(services, self.grpc)
        address = grpc_address(config.host, config.port)
        try:
            if config.tls_cert:
                creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(),
                                                      Path(config.tls_cert).read_bytes())])
                self.port = self.grpc.add_secure_port(address, creds)
            else:
                self.port = self.grpc.add_insecure_port(address)
        except OSError as exc:  # the TLS files
            self._release()
            raise ServerConfigError("--tls-cert", f"{exc.filename}: {exc.strerror}") from None
        except RuntimeError:  # grpcio: "Failed to bind to address"
            self.port = 0
        if not self.port:
            self._release()
            raise ServerConfigError("--port", f"cannot bind {address}: the port is in use (or "
                                    "the host is not this machine's)")
        self.metrics_port: int | None = None
        self._metrics_http = None

    @property
    def address(self) -> str:
        return grpc_address(self.config.host, self.port)

    def _release(self) -> None:
        """Gives back what a server that failed to start holds: its port, executor (a Ray
        connection) and state dir."""
        self.grpc.stop(None)
        self.notifier.close()
        self.executor.close()
        os.close(self._lock_fd)

    def start(self) -> "TrainerServer":
        if self.config.metrics_port is not None:  # first: a port in use fails before any job
            from trainer_service.server.metrics import start_metrics_server

            try:
                self._metrics_http, self.metrics_port = start_metrics_server(
                    self.store, self.config.host.strip("[]"), self.config.metrics_port)
            except OSError as exc:
                self._release()
                raise ServerConfigError("--metrics-port", f"cannot bind {self.config.host}:"
                                        f"{self.config.metrics_port}: {exc.strerror}") from None
        self.scheduler.start()  # recovers interrupted jobs before accepting calls
        self.grpc.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def drain(self, timeout_s: float | None = None) -> list[str]:
        """Stops accepting jobs and lets running ones checkpoint and stop; returns the ids
        that did not stop in time (they resume when a server starts again)."""
        self.servicer.draining = True
        self.health.enter_graceful_shutdown()
        return self.scheduler.drain(self.config.drain_timeout_s if timeout_s is None
                                    else timeout_s)

    def stop(self, grace_s: float = 2.0) -> None:
        self.notifier.close()  # wakes open watchers so their streams end
        self.grpc.stop(grace_s).wait()
        self.scheduler.close()
        for handle in list(self.scheduler.running.values()):
            handle.kill()
        self.executor.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        os.close(self._lock_fd)


def create_server(config: ServerConfig) -> TrainerServer:
    """Builds the server and binds its port (config.port 0 picks a free one: `.port`)."""
    return TrainerServer(config)


def _lock_state_dir(state_dir: Path) -> int:
    fd = os.open(state_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServerConfigError("--state-dir", f"{state_dir} is in use by another running "
                                "server; each server needs its own state dir") from None
    return fd


def serve(config: ServerConfig, ready=print) -> None:
    """Runs the server until SIGTERM or SIGINT, then drains and exits."""
    server = create_server(config).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready(f"tunesmith trainer serving on {server.address} (executor {config.executor}, "
          f"state {config.state_dir})"
          + (f", metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""))
    stop.wait()
    ready("draining: no new jobs; running jobs checkpoint and stop")
    left = server.drain()
    if left:
        ready(f"still running after {config.drain_timeout_s:g} s, resumed on next start: "
              + ", ".join(left))
    server.stop()
    ready("stopped")
