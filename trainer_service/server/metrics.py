"""Prometheus metrics, read from the job store at scrape time (so they hold across
restarts and include what job processes wrote): jobs by state, queue length, and the
latest step time and throughput of each running job."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.jobs.store import JobStore, state_name


class JobStoreCollector(Collector):
    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        counts = self.store.counts_by_state()
        jobs = GaugeMetricFamily("tunesmith_jobs", "Jobs in the store by state.",
                                 labels=["state"])
        for state in pb.JobState.values():
            if state != pb.JOB_STATE_UNSPECIFIED:
                jobs.add_metric([state_name(state)], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("tunesmith_queue_length", "Jobs waiting to start.",
                                value=counts.get(pb.JOB_STATE_QUEUED, 0))
        step = GaugeMetricFamily("tunesmith_job_step_seconds",
                                 "Seconds per optimizer step at the latest log, per running job.",
                                 labels=["job_id"])
        rate = GaugeMetricFamily("tunesmith_job_tokens_per_second",
                                 "Training tokens per second at the latest log, per running job.",
                                 labels=["job_id"])
        for job in self.store.active():
            if "step_seconds" in job.metrics:
                step.add_metric([job.id], job.metrics["step_seconds"])
            if "tokens_per_s" in job.metrics:
                rate.add_metric([job.id], job.metrics["tokens_per_s"])
        yield step
        yield rate


def start_metrics_server(store: JobStore, host: str, port: int):
    """Serves /metrics on ``host:port`` (0: a free port); returns (http server, port)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(JobStoreCollector(store))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
