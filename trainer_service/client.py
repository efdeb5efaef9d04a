"""A small client for the training service: a channel with the token attached, and a
watch that reconnects from the last sequence number it saw."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import grpc

from protos.tunesmith.training.v1 import training_pb2 as pb
from protos.tunesmith.training.v1 import training_pb2_grpc
from trainer_service.jobs.store import TERMINAL

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class TrainingClient:
    """Calls TrainingService at ``address`` with an optional bearer token and TLS root."""

    def __init__(self, address: str, token: str | None = None, tls_ca: Path | None = None,
                 timeout_s: float = 30.0, tls_server_name: str | None = None):
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
            # the name the certificate is for, where the address is another (127.0.0.1 in a
            # container's own health check)
            options = [("grpc.ssl_target_name_override", tls_server_name)] \
                if tls_server_name else []
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "TrainingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name (SERVING, NOT_SERVING while draining); the check
        needs no token."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def create(self, spec: pb.JobSpec, request_id: str | None = None) -> pb.Job:
        request = pb.CreateJobRequest(spec=spec, request_id=request_id or str(uuid.uuid4()))
        return self.stub.CreateJob(request, metadata=self.metadata, timeout=self.timeout_s)

    def get(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self.metadata,
                                timeout=self.timeout_s)

    def list(self, states: list[int] | None = None, page_size: int = 50,
             page_token: str = "") -> pb.ListJobsResponse:
        return self.stub.ListJobs(pb.ListJobsRequest(states=states or [], page_size=page_size,
                                                     page_token=page_token),
                                  metadata=self.metadata, timeout=self.timeout_s)

    def cancel(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=self.metadata,
                                   timeout=self.timeout_s)

    def checkpoints(self, job_id: str) -> pb.ListCheckpointsResponse:
        return self.stub.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id),
                                         metadata=self.metadata, timeout=self.timeout_s)

    def watch(self, job_id: str, from_sequence: int = 1, reconnect_s: float = 60.0,
              on_retry: Callable[[str], None] | None = None) -> Iterator[pb.JobEvent]:
        """The job's events until its final state; survives a server restart by
        reconnecting (for up to ``reconnect_s``) from the next sequence number.
        ``on_retry`` hears once per outage why, and for how long, it retries."""
        next_seq = max(1, from_sequence)
        down_since: float | None = None
        while True:
            try:
                stream = self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id,
                                                               from_sequence=next_seq),
                                            metadata=self.metadata)
                for event in stream:
                    down_since = None
                    next_seq = event.sequence + 1
                    yield event
                    if event.kind == pb.EVENT_KIND_STATE_CHANGE and \
                            event.state_change.state in TERMINAL:
                        return
                if self.get(job_id).state in TERMINAL:
                    return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                if down_since is None and on_retry is not None:
                    on_retry(f"{exc.code().name}: {exc.details()}; reconnecting for up to "
                             f"{reconnect_s:.0f} s")
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_s:
                    raise
                time.sleep(0.5)
