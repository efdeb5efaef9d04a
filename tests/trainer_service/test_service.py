"""The training service against a real gRPC server on a loopback port 0: auth, health,
reflection, validation, idempotency, a real job watched to SUCCEEDED, cancel, drain, the
Ray executor, and Prometheus metrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from protos.tunesmith.training.v1 import training_pb2 as pb
from tests.trainer_service.service_helpers import TOKEN, data_root, job_spec, states, wait_for
from trainer_service.client import TrainingClient
from trainer_service.server.app import SERVICE_NAME, ServerConfig, create_server

ORDER = [pb.JOB_STATE_QUEUED, pb.JOB_STATE_VALIDATING, pb.JOB_STATE_RUNNING,
         pb.JOB_STATE_MERGING, pb.JOB_STATE_VERIFYING, pb.JOB_STATE_SUCCEEDED]


@pytest.fixture
def roots(tmp_path, polite_model_dir):
    return data_root(tmp_path), polite_model_dir


def _server(tmp_path, roots, **overrides):
    config = ServerConfig(state_dir=tmp_path / "state", data_roots=list(roots), port=0,
                          token=TOKEN, **overrides)
    return create_server(config).start()


@pytest.fixture
def server(tmp_path, roots):
    srv = _server(tmp_path, roots, reflection=True, metrics_port=0)
    yield srv
    srv.stop(0)


@pytest.fixture
def client(server):
    with TrainingClient(server.address, token=TOKEN) as c:
        yield c


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, list[str]]:
    status = rpc_status.from_call(exc)
    fields = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return exc.code(), fields


def test_token_is_required_but_health_is_open(server):
    for token in (None, "wrong"):
        with TrainingClient(server.address, token=token) as anon:
            with pytest.raises(grpc.RpcError) as err:
                anon.list()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(anon.watch("job-x"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


class _Bearer(grpc.StreamStreamClientInterceptor):
    def intercept_stream_stream(self, continuation, details, requests):
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {TOKEN}")]
        return continuation(details._replace(metadata=metadata), requests)


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase)

    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(grpc.intercept_channel(channel, _Bearer()))
        services = set(database.get_services())
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
        method = database.FindFileContainingSymbol(SERVICE_NAME)
        assert method.package == "tunesmith.training.v1"


@pytest.mark.parametrize("change, field", [
    ({"lora": pb.LoraSpec(r=0)}, "lora.r"),
    ({"training": {"learning_rate": 2.0}}, "training.learning_rate"),
    ({"training": {"lr_scheduler": "wavy"}}, "training.lr_scheduler"),
    ({"training": {"seed": -1}}, "training.seed"),
    ({"quantization": "fp3"}, "quantization"),
    ({"loss_on": "everything"}, "loss_on"),
    ({"dataset_path": "empty"}, "dataset"),
    ({"dataset_path": ""}, "dataset"),
    ({"resources": pb.Resources(gpus=-1)}, "resources.gpus"),
    ({"export": pb.ExportSpec(gguf=["f16", "q3"])}, "export.gguf"),
])
def test_bad_values_are_invalid_argument_naming_the_field(client, roots, change, field):
    spec = job_spec(roots[1], change.pop("dataset_path", "data"), **change)
    with pytest.raises(grpc.RpcError) as err:
        client.create(spec)
    code, fields = _status(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in fields, fields
    assert field in err.value.details()
    assert client.list().jobs == []  # nothing was queued


def test_a_field_this_server_does_not_know_is_invalid_argument(client, roots):
    spec = job_spec(roots[1])
    newer = pb.JobSpec.FromString(spec.SerializeToString() + bytes([0xb8, 0x06, 0x01]))  # #103
    with pytest.raises(grpc.RpcError) as err:
        client.create(newer)
    code, fields = _status(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["spec"]
    assert "field number 103" in err.value.details()
    assert client.list().jobs == []


def test_other_invalid_requests(client, roots):
    with pytest.raises(grpc.RpcError) as err:
        client.stub.CreateJob(pb.CreateJobRequest(spec=job_spec(roots[1])),
                              metadata=client.metadata)
    assert _status(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])
    not_a_model = roots[0] / "empty"
    with pytest.raises(grpc.RpcError) as err:
        client.create(job_spec(not_a_model))
    assert _status(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, ["base_model"])
    with pytest.raises(grpc.RpcError) as err:
        client.list(page_size=5000)
    assert _status(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])
    with pytest.raises(grpc.RpcError) as err:
        client.get("job-nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    import base64
    for token in ("not base64!", base64.urlsafe_b64encode(b"[[1], [2]]").decode()):
        with pytest.raises(grpc.RpcError) as err:  # the second was UNKNOWN, from SQLite
            client.stub.ListJobs(pb.ListJobsRequest(page_token=token), metadata=client.metadata)
        assert _status(err.value) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


def test_paths_outside_the_data_roots_are_permission_denied(client, roots, tmp_path):
    root, model = roots
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "train.jsonl").write_text((root / "data" / "train.jsonl").read_text())
    (root / "sneaky").symlink_to(outside)
    (root / "template.jinja").symlink_to(outside / "train.jsonl")
    (root / "filelink").mkdir()  # a folder inside whose split file is a link out
    (root / "filelink" / "train.jsonl").symlink_to(outside / "train.jsonl")
    cases = [(job_spec(model, "../outside"), "dataset"),
             (job_spec(model, "filelink"), "dataset"),
             (job_spec(model, "data/../../outside"), "dataset"),
             (job_spec(model, str(outside)), "dataset"),
             (job_spec(model, "sneaky"), "dataset"),
             (job_spec(outside), "base_model"),
             (job_spec(model, chat_template="/etc/passwd"), "chat_template"),
             (job_spec(model, chat_template="template.jinja"), "chat_template")]
    for spec, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            client.create(spec)
        assert _status(err.value) == (grpc.StatusCode.PERMISSION_DENIED, [field]), spec
    assert client.list().jobs == []


def test_concurrent_creates_with_one_request_id_make_one_job(client, roots):
    spec = job_spec(roots[1], dry_run=True)
    request_id = str(uuid.uuid4())
    ids, errors = [], []

    def create():
        try:
            ids.append(client.create(spec, request_id).id)
        except grpc.RpcError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ids) == 24 and len(set(ids)) == 1
    assert [j.id for j in client.list().jobs] == ids[:1]
    events = list(client.watch(ids[0]))
    assert states(events) == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_VALIDATING,
                              pb.JOB_STATE_SUCCEEDED]  # a dry run stops after preflight
    job = client.get(ids[0])
    assert job.state == pb.JOB_STATE_SUCCEEDED and "preflight" in job.artifacts
    assert "adapter" not in job.artifacts
    # the dry run's plan, in the job's numbers: 16 rows of ~60 tokens (SmolLM2's template adds
    # its system prompt) in 8 blocks of 128; 3 steps (max_steps), an evaluation each
    assert {k: v for k, v in job.metrics.items() if k.startswith("planned_")} == {
        "planned_train_items": 8, "planned_optimizer_steps": 3, "planned_warmup_steps": 1,
        "planned_evaluations": 3}


@pytest.mark.slow
def test_job_runs_to_succeeded_with_events_in_order(server, client, roots):
    job = client.create(job_spec(roots[1]))
    assert job.state == pb.JOB_STATE_QUEUED and job.spec.dataset == str(roots[0] / "data")
    events = list(client.watch(job.id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert states(events) == ORDER
    steps = [e.step.step for e in events if e.kind == pb.EVENT_KIND_STEP_METRICS]
    evals = [e.eval for e in events if e.kind == pb.EVENT_KIND_EVAL_METRICS]
    saved = [e.checkpoint for e in events if e.kind == pb.EVENT_KIND_CHECKPOINT_SAVED]
    assert steps == [1, 2, 3] and [e.step for e in evals] == [1, 2, 3]
    assert [c.step for c in saved] == [1, 2, 3]
    assert all(c.eval_loss == e.eval_loss for c, e in zip(saved, evals))
    assert any(e.kind == pb.EVENT_KIND_LOG for e in events)

    done = client.get(job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.attempts == 1
    assert done.metrics["global_step"] == 3 and done.metrics["best_eval_loss"] > 0
    assert done.end_time.seconds >= done.start_time.seconds >= done.create_time.seconds
    for name in ("adapter", "merged", "verify", "report", "metrics", "log"):
        assert name in done.artifacts, name
    # The trainer keeps two (the newest and the best): deleted ones are not listed (31 were
    # listed where 2 were on disk).
    listed = client.checkpoints(job.id)
    on_disk = sorted(int(p.name.split("-")[1]) for p in
                     Path(done.artifacts["run_dir"], "checkpoints").glob("checkpoint-*"))
    assert [c.step for c in listed.checkpoints] == on_disk and 3 in on_disk
    assert len(on_disk) == 2
    assert listed.best_step == min(saved, key=lambda c: c.eval_loss).step

    tail = list(client.watch(job.id, from_sequence=5))  # a reconnecting client
    assert tail == events[4:]
    assert list(client.watch(job.id, from_sequence=len(events) + 1)) == []

    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'tunesmith_jobs{state="SUCCEEDED"} 1.0' in metrics
    assert "tunesmith_queue_length 0.0" in metrics


@pytest.mark.slow
def test_a_job_with_export_makes_gguf_files_each_checked(client, roots):
    # The export scores its forms on the job's test split. The scripted base gives the
    # capitals' replies a PPL near 1e39 (a logit margin of ~500 against every word of them),
    # where a KL of 1e-4 between two forms moves the PPL ratio by percents; on replies it
    # makes ("Hello there") the ratio measures the forms, not that margin.
    (roots[0] / "data" / "test.jsonl").write_text("".join(
        json.dumps({"id": f"h{i}", "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "Hello there"}]}) + "\n"
        for i, question in enumerate(["Say hello.", "Greet me.", "Hi!", "Good morning."])))
    job = client.create(job_spec(roots[1], export=pb.ExportSpec(gguf=["q8_0"])))
    events = list(client.watch(job.id))
    done = client.get(job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert states(events) == ORDER[:-1] + [pb.JOB_STATE_EXPORTING, pb.JOB_STATE_SUCCEEDED]
    export = json.loads(Path(done.artifacts["gguf"]).read_text())
    assert export["status"] == "succeeded"
    assert export["rows"]["source"].endswith("data/test.jsonl")  # the job's own test split
    assert [s["form"] for s in export["stages"]] == ["f16", "q8_0"]  # f16 first, always
    for stage in export["stages"]:
        assert stage["ok"] and Path(stage["file"]).stat().st_size > 0, stage["form"]
    f16 = {c["name"]: c for c in export["stages"][0]["checks"]}
    assert f16["eos"]["gguf"]["token"] == "<|im_end|>"
    run = json.loads(Path(done.artifacts["run"]).read_text())
    assert set(run["export"]["gguf"]) == {"f16", "q8_0"}


def test_an_export_that_cannot_run_fails_before_training(client, roots, tmp_path,
                                                        monkeypatch):
    # No converter where the environment points: the job must fail in VALIDATING, before
    # any optimizer step, not after the training it would otherwise waste.
    monkeypatch.setenv("TUNESMITH_LLAMA_CPP_DIR", str(tmp_path / "no-llama.cpp"))
    job = client.create(job_spec(roots[1], export=pb.ExportSpec(gguf=["f16"])))
    events = list(client.watch(job.id))
    assert states(events) == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_VALIDATING,
                              pb.JOB_STATE_FAILED]
    done = client.get(job.id)
    assert done.error.code == "converter_not_found" and done.error.field == "export.gguf"
    assert "TUNESMITH_LLAMA_CPP_DIR" in done.error.message and "gguf" in done.error.fix
    assert "adapter" not in done.artifacts


@pytest.mark.slow
def test_cancel_queued_and_running_jobs(client, roots):
    long = {"max_steps": 400, "eval_every_steps": 100, "logging_steps": 1}
    running = client.create(job_spec(roots[1], training=long))
    queued = client.create(job_spec(roots[1], training=long))  # one job at a time
    assert client.cancel(queued.id).state == pb.JOB_STATE_CANCELLED
    wait_for(client, running.id, pb.EVENT_KIND_STEP_METRICS)
    assert client.cancel(running.id).cancel_requested
    events = list(client.watch(running.id))
    assert states(events)[-1] == pb.JOB_STATE_CANCELLED
    assert "cancelled during training" in events[-1].state_change.reason
    job = client.get(running.id)
    assert job.state == pb.JOB_STATE_CANCELLED and job.metrics["global_step"] < 400
    assert client.cancel(running.id).state == pb.JOB_STATE_CANCELLED  # ended: unchanged


def test_watchers_past_their_share_of_threads_are_refused_and_others_are_answered(
        tmp_path, roots):
    """Each open WatchJob stream holds an RPC thread: 128 watchers left none, so GetJob
    and health checks timed out. Watchers get all but UNARY_THREADS of them."""
    from trainer_service.server.servicer import UNARY_THREADS

    server = _server(tmp_path, roots, rpc_threads=UNARY_THREADS + 3)
    long = {"max_steps": 400, "eval_every_steps": 100, "logging_steps": 1}
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            running = client.create(job_spec(roots[1], training=long))
            queued = client.create(job_spec(roots[1], training=long))  # waits its turn
            streams = [client.stub.WatchJob(pb.WatchJobRequest(job_id=queued.id),
                                            metadata=client.metadata) for _ in range(3)]
            firsts = [next(stream) for stream in streams]  # all three are open
            assert {e.sequence for e in firsts} == {1}
            with pytest.raises(grpc.RpcError) as err:
                next(client.stub.WatchJob(pb.WatchJobRequest(job_id=queued.id),
                                          metadata=client.metadata))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 WatchJob streams are open" in err.value.details()
            assert client.get(queued.id).state == pb.JOB_STATE_QUEUED  # answered at once
            with grpc.insecure_channel(server.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                next(client.stub.WatchJob(pb.WatchJobRequest(job_id=queued.id,
                                                             from_sequence=2**63 - 1),
                                          metadata=client.metadata))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            client.cancel(queued.id)
            for stream in streams:  # the cancel ends them and frees their slots
                assert states(list(stream))[-1] == pb.JOB_STATE_CANCELLED
            assert states(list(client.watch(queued.id)))[-1] == pb.JOB_STATE_CANCELLED
            client.cancel(running.id)
            assert states(list(client.watch(running.id)))[-1] == pb.JOB_STATE_CANCELLED
    finally:
        server.stop(0)


@pytest.mark.slow
def test_drain_checkpoints_running_jobs_and_refuses_new_ones(tmp_path, roots):
    server = _server(tmp_path, roots)
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            job = client.create(job_spec(roots[1], training={
                "max_steps": 400, "eval_every_steps": 100, "logging_steps": 1}))
            wait_for(client, job.id, pb.EVENT_KIND_STEP_METRICS)
            assert server.drain(timeout_s=120) == []
            with grpc.insecure_channel(server.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                client.create(job_spec(roots[1]))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            paused = client.get(job.id)
            assert paused.state == pb.JOB_STATE_QUEUED
            saved = client.checkpoints(job.id).checkpoints
            assert saved and saved[-1].step == paused.metrics["global_step"]
    finally:
        server.stop(0)


@pytest.mark.slow
def test_ray_executor_sends_the_same_events(tmp_path, roots, ray_local):
    server = _server(tmp_path, roots, executor="ray")
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            job = client.create(job_spec(roots[1], training={"max_steps": 2}))
            events = list(client.watch(job.id))
            assert states(events) == ORDER, [e.state_change.reason for e in events]
            kinds = {e.kind for e in events}
            assert {pb.EVENT_KIND_STEP_METRICS, pb.EVENT_KIND_EVAL_METRICS,
                    pb.EVENT_KIND_CHECKPOINT_SAVED, pb.EVENT_KIND_LOG} <= kinds
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            done = client.get(job.id)
            assert done.metrics["global_step"] == 2 and "merged" in done.artifacts
    finally:
        server.stop(0)


@pytest.mark.slow
def test_ray_job_whose_channel_actor_dies_fails_and_frees_its_slot(tmp_path, roots, ray_local):
    """The channel actor killed (an OOM kill, a lost node) used to make every scheduler tick
    fail: the job read RUNNING forever and no other job started."""
    import ray

    server = _server(tmp_path, roots, executor="ray")
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            job = client.create(job_spec(roots[1], training={"max_steps": 400,
                                                             "logging_steps": 1}))
            wait_for(client, job.id, pb.EVENT_KIND_STEP_METRICS)
            ray.kill(server.scheduler.running[job.id].channel)
            assert states(list(client.watch(job.id)))[-1] == pb.JOB_STATE_FAILED
            failed = client.get(job.id)
            assert failed.error.code == "worker_crashed"
            assert "event channel" in failed.error.message
            dry = client.create(job_spec(roots[1], dry_run=True))
            assert states(list(client.watch(dry.id)))[-1] == pb.JOB_STATE_SUCCEEDED
    finally:
        server.stop(0)


def test_ray_job_no_node_can_take_fails_and_a_cancel_or_drain_reaches_it(tmp_path, roots,
                                                                         ray_local):
    """`resources.gpus` no node has: the task waited for ever (CancelJob answered but changed
    nothing, and the queue behind it never moved). Now the job is told why it waits, fails
    after --ray-pending-timeout naming the field, and a cancel or drain takes it at once."""
    gpus = pb.Resources(gpus=1)  # the test's Ray has no GPU
    server = _server(tmp_path, roots, executor="ray", ray_pending_timeout_s=4)
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            waits = client.create(job_spec(roots[1], dry_run=True, resources=gpus))
            events = list(client.watch(waits.id))
            assert states(events)[-1] == pb.JOB_STATE_FAILED
            assert any("no live Ray node has 1 GPU (the largest has 0)" in e.message
                       for e in events if e.kind == pb.EVENT_KIND_WARNING)
            failed = client.get(waits.id)
            assert (failed.error.code, failed.error.field) == ("resources_unavailable",
                                                               "resources.gpus")
            dry = client.create(job_spec(roots[1], dry_run=True))
            events = list(client.watch(dry.id))
            assert states(events)[-1] == pb.JOB_STATE_SUCCEEDED
            assert any("no GPU now, so the job trains on CPU" in e.message for e in events
                       if e.kind == pb.EVENT_KIND_WARNING)  # said, where it was silent
    finally:
        server.stop(0)
    server = _server(tmp_path, roots, executor="ray", ray_pending_timeout_s=600)
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            cancelled = client.create(job_spec(roots[1], dry_run=True, resources=gpus))
            wait_for(client, cancelled.id, pb.EVENT_KIND_WARNING)
            client.cancel(cancelled.id)
            assert states(list(client.watch(cancelled.id)))[-1] == pb.JOB_STATE_CANCELLED
            drained = client.create(job_spec(roots[1], dry_run=True, resources=gpus))
            wait_for(client, drained.id, pb.EVENT_KIND_WARNING)
            assert server.drain(timeout_s=20) == []
            assert client.get(drained.id).state == pb.JOB_STATE_QUEUED
    finally:
        server.stop(0)


def test_a_ray_task_waiting_for_a_busy_gpu_waits_on(tmp_path, ray_local, monkeypatch):
    """The pending timeout fails a request no live node can hold, never one waiting for a
    GPU another job holds (more concurrent jobs than GPUs queue in Ray)."""
    import ray

    from trainer_service.jobs import executors
    from trainer_service.jobs.store import JobStore

    store = JobStore.in_dir(tmp_path)
    job, _ = store.create("r", pb.JobSpec(base_model="m", dataset="d"))
    store.claim_next()
    pending = ray.remote(num_gpus=1)(lambda: None).remote()  # the test's Ray has no GPU
    handle = executors.RayHandle(job.id, pending, executors._channel_class().remote(), gpus=1,
                                 pending_timeout_s=0.01)
    time.sleep(0.05)
    monkeypatch.setattr(executors, "_largest_node_gpus", lambda: 1)  # a node has one, busy
    handle.sync(store)
    assert handle.exit_status() is None and store.get(job.id).state == pb.JOB_STATE_VALIDATING
    monkeypatch.setattr(executors, "_largest_node_gpus", lambda: 0)  # that node is gone
    handle.sync(store)
    ended = handle.exit_status()
    assert (ended.code, ended.field) == ("resources_unavailable", "resources.gpus")
    assert "the largest live node has 0 GPU" in ended.message


def test_tls_with_a_token(tmp_path, roots):
    """--tls-cert/--tls-key: a client trusting the certificate gets through; a plaintext one
    does not."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover - openssl ships with every CI image we use
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = _server(tmp_path, roots, tls_cert=cert, tls_key=key)
    try:
        with TrainingClient(server.address, token=TOKEN, tls_ca=cert) as client:
            assert client.list().jobs == []
        with TrainingClient(server.address, token=TOKEN, timeout_s=3) as plain:
            with pytest.raises(grpc.RpcError) as err:
                plain.list()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


@pytest.mark.slow
def test_a_killed_job_process_fails_its_job_not_the_server(server, client, roots):
    import os
    import signal
    import subprocess

    job = client.create(job_spec(roots[1], training={"max_steps": 400, "logging_steps": 1}))
    wait_for(client, job.id, pb.EVENT_KIND_STEP_METRICS)
    pids = subprocess.run(["pgrep", "-f", f"trainer_service.jobs.worker .*{job.id}"],
                          capture_output=True, text=True).stdout.split()
    assert len(pids) == 1
    os.kill(int(pids[0]), signal.SIGKILL)  # what the OOM killer does
    events = list(client.watch(job.id))
    assert states(events)[-1] == pb.JOB_STATE_FAILED
    failed = client.get(job.id)
    assert failed.error.code == "worker_crashed" and "SIGKILL" in failed.error.message
    assert "job.log" in failed.error.message
    dry = client.create(job_spec(roots[1], dry_run=True))  # the server carries on
    assert states(list(client.watch(dry.id)))[-1] == pb.JOB_STATE_SUCCEEDED


def test_a_second_server_is_refused_a_port_or_state_dir_in_use(server, tmp_path, roots):
    """gRPC's default SO_REUSEPORT let a second server bind the first one's port, and the
    kernel then split clients between two job stores; each clash is now a flag error, and
    the refused server lets go of what it took."""
    from trainer_service.server.app import ServerConfigError, read_token

    def config(state: str, **overrides):
        return ServerConfig(state_dir=tmp_path / state, data_roots=list(roots),
                            **{"port": 0, **overrides})

    for state, overrides, flag in [("other", {"port": server.port}, "--port"),
                                   ("state", {}, "--state-dir"),
                                   ("other", {"metrics_port": server.metrics_port},
                                    "--metrics-port")]:
        with pytest.raises(ServerConfigError) as err:
            create_server(config(state, **overrides)).start()
        assert err.value.field == flag, err.value
    second = create_server(config("other")).start()  # nothing of "other" was left held
    second.stop(0)
    with TrainingClient(server.address, token=TOKEN) as c:
        assert c.list().jobs is not None  # the first server still answers alone
    for overrides, flag in [({"port": 70000}, "--port"), ({"metrics_port": -1}, "--metrics-port")]:
        with pytest.raises(ServerConfigError) as err:
            create_server(config("third", **overrides))
        assert err.value.field == flag and "is not a port" in err.value.message
    with pytest.raises(ServerConfigError) as err:
        create_server(ServerConfig(state_dir=Path("/proc/tunesmith"), data_roots=list(roots)))
    assert err.value.field == "--state-dir"
    with pytest.raises(ServerConfigError) as err:
        read_token(tmp_path / "no-token")
    assert err.value.field == "--token-file" and "No such file" in err.value.message


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_serves_grpc_and_metrics(tmp_path, roots, host):
    """`--host ::` (an IPv6-only cluster's pods) failed as "the port is in use", and
    `--host [::]` bound gRPC but not the metrics server."""
    server = _server(tmp_path, roots, host=host, metrics_port=0)
    try:
        assert server.address.startswith("[::1]:")
        with TrainingClient(server.address, token=TOKEN) as client:
            assert client.list().jobs == []
        metrics = urllib.request.urlopen(f"http://[::1]:{server.metrics_port}/metrics",
                                         timeout=10).read().decode()
        assert "tunesmith_queue_length" in metrics
    finally:
        server.stop(0)


def test_a_host_that_is_no_address_is_named(tmp_path, roots):
    from trainer_service.server.app import ServerConfigError

    with pytest.raises(ServerConfigError) as err:
        create_server(ServerConfig(state_dir=tmp_path / "s", data_roots=list(roots), port=0,
                                   host="no-such-host.invalid"))
    assert err.value.field == "--host" and "no-such-host.invalid" in err.value.message


def test_a_state_dir_that_cannot_be_used_is_a_config_error(tmp_path, roots):
    """A read-only or broken state dir was an OSError traceback (exit 1), not `--state-dir`."""
    from trainer_service.server.app import ServerConfigError

    state = tmp_path / "state"
    (state / "server.lock").mkdir(parents=True)  # where the lock file goes
    with pytest.raises(ServerConfigError) as err:
        create_server(ServerConfig(state_dir=state, data_roots=list(roots), port=0))
    assert err.value.field == "--state-dir" and "Is a directory" in err.value.message


def test_watching_where_no_server_answers_says_so_at_once():
    """`train watch` against a port with no server retried in silence for 60 s."""
    import socket

    with socket.socket() as hole:  # bound, never listening: connections are refused
        hole.bind(("127.0.0.1", 0))
        heard = []
        with TrainingClient(f"127.0.0.1:{hole.getsockname()[1]}", token=TOKEN) as client:
            with pytest.raises(grpc.RpcError) as err:
                list(client.watch("job-x", reconnect_s=1.0, on_retry=heard.append))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(heard) == 1 and heard[0].startswith("UNAVAILABLE: ")
    assert heard[0].endswith("reconnecting for up to 1 s")
