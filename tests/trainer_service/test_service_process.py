"""The training server as users run it (`tunesmith trainer serve` in its own process) and
the client commands: SIGTERM drains and SIGKILL loses nothing (the next server resumes the
job from its checkpoint), and `train submit|watch|get|list|cancel` exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from protos.tunesmith.training.v1 import training_pb2 as pb
from tests.trainer_service.service_helpers import (CLI, TOKEN, ServerProcess, data_root,
                                                   job_spec, states, wait_for)
from trainer_service.client import TrainingClient


def _workers(job_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"trainer_service.jobs.worker .*{job_id}"],
                           capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


@pytest.fixture
def setup(tmp_path, polite_model_dir):
    root = data_root(tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    return tmp_path, [root, polite_model_dir]


def _serve(tmp_path, roots) -> ServerProcess:
    return ServerProcess(tmp_path / "state", roots, "--token-file", str(tmp_path / "token"))


@pytest.mark.slow
def test_sigterm_drains_and_sigkill_loses_nothing(setup):
    tmp_path, roots = setup
    server = _serve(tmp_path, roots)
    # no overfitting alarm or early stop: the job must reach step 10 across three attempts
    # (the scripted model's steps are quick: enough of them that each signal lands mid-run)
    spec = job_spec(roots[1], training={"max_steps": 10, "logging_steps": 1,
                                        "overfit_train_loss": 0.0,
                                        "early_stopping_patience": 100})
    with TrainingClient(server.address, token=TOKEN) as client:
        job = client.create(spec, "the-one")
        wait_for(client, job.id, pb.EVENT_KIND_CHECKPOINT_SAVED)
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert "draining" in server.output() and not _workers(job.id)

    server = _serve(tmp_path, roots)
    with TrainingClient(server.address, token=TOKEN) as client:
        paused = client.get(job.id)
        assert paused.state == pb.JOB_STATE_QUEUED or paused.state in (
            pb.JOB_STATE_VALIDATING, pb.JOB_STATE_RUNNING), paused  # picked up again
        wait_for(client, job.id, pb.EVENT_KIND_CHECKPOINT_SAVED,
                 from_sequence=paused.last_sequence + 1)  # a checkpoint of attempt 2
        assert _workers(job.id)
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _workers(job.id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _workers(job.id), "the job process outlived its server"

    server = _serve(tmp_path, roots)
    try:
        with TrainingClient(server.address, token=TOKEN) as client:
            assert client.create(spec, "the-one").id == job.id  # a retried create
            events = list(client.watch(job.id))
            done = client.get(job.id)
            assert [j.id for j in client.list().jobs] == [job.id]
    finally:
        server.stop(signal.SIGTERM)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert done.attempts == 3 and done.metrics["global_step"] == 10
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    reasons = [e.state_change.reason for e in events if e.kind == pb.EVENT_KIND_STATE_CHANGE]
    assert any("paused during training (drain)" in r for r in reasons), reasons
    assert any("resuming after a server restart" in r for r in reasons), reasons
    assert states(events).count(pb.JOB_STATE_VALIDATING) == 3
    log = open(done.artifacts["log"]).read()
    assert log.count("resuming from") == 2  # each later attempt started from a checkpoint
    steps = [e.step.step for e in events if e.kind == pb.EVENT_KIND_STEP_METRICS]
    assert sorted(set(steps)) == list(range(1, 11))


def _cli(*args: str, env_extra: dict | None = None, timeout: int = 600):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([CLI, "train", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_client_commands_and_their_exit_codes(setup):
    tmp_path, roots = setup
    root, model = roots
    (tmp_path / "spec.yaml").write_text(
        f"base_model: {model}\ndataset: root/data\ndry_run: true\n"
        "lora: {r: 16, target_modules: all-linear}\n")
    bare = root / "bare"
    bare.mkdir()
    (bare / "train.jsonl").write_text((root / "data" / "train.jsonl").read_text())
    server = _serve(tmp_path, roots)
    auth = ["--server", server.address, "--token-file", str(tmp_path / "token")]
    try:
        ok = _cli("submit", str(tmp_path / "spec.yaml"), *auth, "--watch")
        assert ok.returncode == 0, ok.stderr
        job_id = ok.stdout.split()[0]
        assert f"{job_id} SUCCEEDED" in ok.stdout and "preflight:" in ok.stdout

        failed = _cli("submit", str(tmp_path / "spec.yaml"), *auth, "--watch",
                      "--dataset", str(bare), "--no-dry-run")
        assert failed.returncode == 1, failed.stderr
        assert "FAILED" in failed.stdout and "error no_validation" in failed.stderr

        denied = _cli("submit", str(tmp_path / "spec.yaml"), *auth, "--dataset", "/etc")
        assert denied.returncode == 3 and "PERMISSION_DENIED: dataset:" in denied.stderr
        anon = _cli("list", "--server", server.address, env_extra={"TUNESMITH_TOKEN": ""})
        assert anon.returncode == 3 and anon.stderr.startswith("UNAUTHENTICATED")
        typo = tmp_path / "typo.yaml"
        typo.write_text(f"base_model: {model}\ndataset: root/data\ntraining: {{epoch: 2}}\n")
        bad = _cli("submit", str(typo), *auth)
        assert bad.returncode == 2 and "training.epoch: unknown key" in bad.stderr
        typo.write_text(f"base_model: {model}\ndataset: root/data\nlora: {{r: 0}}\n")
        bad = _cli("submit", str(typo), *auth)  # a bad value, found before any call
        assert bad.returncode == 2 and "lora.r: must be >= 1" in bad.stderr
        typo.write_text(f"base_model: {model}\ndataset: root/data\nlora: {{r: '16'}}\n"
                        "training: {epochs: three, learning_rate: '2e-4', warmup_ratio: 2}\n")
        bad = _cli("submit", str(typo), *auth)  # the YAML's types, as `train run` reads them
        assert bad.returncode == 2, bad.stderr
        for problem in ("lora.r: expected int, got '16'", "training.epochs: expected float",
                        "training.learning_rate: expected float, got '2e-4'",
                        "training.warmup_ratio: must be in [0, 1)"):
            assert problem in bad.stderr, bad.stderr
        typo.write_text("base_model: default\ndataset: root/data\n")
        bad = _cli("submit", str(typo), *auth)
        assert bad.returncode == 2 and "base_model: 'default' is the embedded model" in bad.stderr
        typo.write_text(f"base_model: {model}\ndataset: root/data\nresources: {{gpus: -1}}\n")
        bad = _cli("submit", str(typo), *auth)  # was exit 3, the server's INVALID_ARGUMENT
        assert bad.returncode == 2 and "resources.gpus: must be >= 0" in bad.stderr

        bad = _cli("list", "--server", server.address, "--token-file", str(tmp_path / "nope"))
        assert bad.returncode == 2 and "error: --token-file:" in bad.stderr, bad.stderr
        bad = _cli("list", *auth, "--state", "bogus")
        assert bad.returncode == 2 and "bogus is not a job state (one of queued," in bad.stderr
        listed = _cli("list", *auth, "--state", "succeeded")
        assert listed.returncode == 0 and listed.stdout.split()[0] == job_id
        got = _cli("get", job_id, *auth)
        assert json.loads(got.stdout)["state"] == "JOB_STATE_SUCCEEDED"
        watched = _cli("watch", job_id, *auth, "--from-sequence", "2")
        assert watched.returncode == 0 and "#1 " not in watched.stderr
        cancelled = _cli("cancel", job_id, *auth)
        assert cancelled.returncode == 0 and "SUCCEEDED" in cancelled.stdout
        missing = _cli("get", "job-000000000000", *auth)
        assert missing.returncode == 3 and missing.stderr.startswith("NOT_FOUND")
    finally:
        server.stop(signal.SIGTERM)
