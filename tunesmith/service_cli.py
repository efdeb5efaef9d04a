"""`tunesmith trainer serve` and the client commands `tunesmith train submit|get|list|watch|
cancel|checkpoints`: flags -> TrainingClient / ServerConfig, results -> the terminal.

Exit codes: 0 when the job SUCCEEDED (submit --watch, watch) or the call worked; 1 when the
watched job ended FAILED or CANCELLED; 2 for a bad spec or flag; 3 for an RPC error, printed
as its gRPC status name and message.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli import app, console, train_app

trainer_app = typer.Typer(help="The training service (gRPC): durable QLoRA jobs.",
                          no_args_is_help=True)
app.add_typer(trainer_app, name="trainer")

DEFAULT_SERVER = "127.0.0.1:50051"
ServerOpt = Annotated[str, typer.Option(
    "--server", envvar="TUNESMITH_SERVER", help="The training service's host:port.")]
TokenOpt = Annotated[Optional[Path], typer.Option(
    "--token-file", envvar="TUNESMITH_TOKEN_FILE", help="File holding the bearer token.")]
CaOpt = Annotated[Optional[Path], typer.Option(
    "--tls-ca", help="CA certificate to verify a TLS server (PEM); omit for plaintext.")]
EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_RPC = 1, 2, 3


@trainer_app.command("serve")
def trainer_serve(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Job store and run folders.")],
    data_root: Annotated[list[Path], typer.Option(
        "--data-root", help="A folder jobs may read datasets and models from (repeatable).")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="0 picks a free port.")] = 50051,
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="Require this bearer token on every call but health checks.")
                          ] = None,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert")] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key")] = None,
    executor: Annotated[str, typer.Option(
        "--executor", help="local: a process per job; ray: a Ray task per job.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Ray cluster for --executor ray; default: a local Ray.")] = None,
    ray_pending_timeout: Annotated[float, typer.Option(
        "--ray-pending-timeout", min=0.001,
        help="Seconds a job's Ray task may wait for a node with its GPUs before the job "
             "fails (resources_unavailable); an autoscaler may take minutes to add one.")
                                   ] = 600.0,
    max_concurrent_jobs: Annotated[int, typer.Option("--max-concurrent-jobs")] = 1,
    metrics_port: Annotated[Optional[int], typer.Option(
        "--metrics-port", min=0, max=65535, help="Serve Prometheus /metrics on this port.")
                            ] = None,
    reflection: Annotated[bool, typer.Option(
        "--reflection/--no-reflection", help="Enable gRPC server reflection.")] = False,
    drain_timeout: Annotated[float, typer.Option(
        "--drain-timeout", min=0.0,
        help="Seconds SIGTERM waits for running jobs to checkpoint.")
                             ] = 25.0,
) -> None:
    """Serve TrainingService until SIGTERM, then drain (running jobs checkpoint and resume on
    the next start)."""
    import logging

    from trainer_service.server.app import ServerConfig, ServerConfigError, read_token, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = ServerConfig(
            state_dir=state_dir.resolve(), data_roots=[r.resolve() for r in data_root],
            host=host, port=port, token=read_token(token_file), tls_cert=tls_cert,
            tls_key=tls_key, executor=executor, ray_address=ray_address,
            ray_pending_timeout_s=ray_pending_timeout,
            max_concurrent_jobs=max_concurrent_jobs, metrics_port=metrics_port,
            reflection=reflection, drain_timeout_s=drain_timeout)
        serve(config, ready=lambda line: typer.echo(line, err=True))
    except ServerConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None


@trainer_app.command("health")
def trainer_health(
    server: ServerOpt = DEFAULT_SERVER,
    tls_ca: CaOpt = None,
    tls_server_name: Annotated[Optional[str], typer.Option(
        "--tls-server-name", help="The name the server's certificate is for, when --server "
                                  "is another (127.0.0.1 inside its container).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds.")] = 5.0,
) -> None:
    """Exit 0 when the server answers SERVING (grpc.health.v1, no token), else 1: a probe
    for Docker and Kubernetes that also speaks TLS, which Kubernetes' grpc probe does not."""
    import grpc

    from trainer_service.client import TrainingClient

    with TrainingClient(server, tls_ca=tls_ca, timeout_s=timeout,
                        tls_server_name=tls_server_name) as client:
        try:
            status = client.health()
        except grpc.RpcError as exc:
            status = exc.code().name
    typer.echo(status)
    raise typer.Exit(0 if status == "SERVING" else EXIT_JOB_FAILED)


def _client(server: str, token_file: Optional[Path], tls_ca: Optional[Path]):
    from trainer_service.client import TrainingClient

    token = os.environ.get("TUNESMITH_TOKEN")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            typer.secho(f"error: --token-file: {token_file}: {exc.strerror or exc}", err=True,
                        fg="red")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        if not token:
            typer.secho(f"error: --token-file: {token_file} is empty", err=True, fg="red")
            raise typer.Exit(EXIT_BAD_INPUT)
    return TrainingClient(server, token=token or None, tls_ca=tls_ca)


@contextmanager
def _rpc_errors():
    """Any RPC error in the block: print `STATUS: message` and exit EXIT_RPC."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        typer.secho(f"{code}: {details}", err=True, fg="red")
        raise typer.Exit(EXIT_RPC) from None


def _load_spec(path: Path, dataset: Optional[Path], base_model: Optional[str],
               dry_run: Optional[bool]):
    from data_engine.config_loader import from_dict, read_yaml
    from data_engine.errors import ConfigError
    from trainer_service.errors import InvalidArgument
    from trainer_service.jobs.validate import spec_from_mapping, to_train_spec
    from trainer_service.recipe.spec import TrainSpec, resolve_relative

    try:
        data, base, _ = read_yaml(path, "train spec")
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    resolve_relative(data, base)  # relative paths start at the file's folder, as in `train run`
    if dataset is not None:
        data["dataset"] = str(dataset.resolve())
    if base_model is not None:
        data["base_model"] = base_model
    if dry_run is not None:
        data["dry_run"] = dry_run
    try:
        # the YAML's types as `train run` reads them, every problem at once (the wire format
        # would coerce '16' to 16 and stop at its first problem)
        from_dict(TrainSpec, {k: v for k, v in data.items() if k != "resources"}, str(path))
    except ConfigError as exc:
        for problem in exc.problems:
            typer.secho(f"error: {path}: {problem}", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if data.get("base_model") == "default":
        typer.secho(f"error: {path}: base_model: 'default' is the embedded model of `train run` "
                    "and pipelines; a server trains a model folder inside its data roots "
                    "(`tunesmith models fetch-default` there prints one) or a hub id",
                    err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        spec = spec_from_mapping(data)
        to_train_spec(spec)  # the values too, as the server will: exit 2 before any call
        if spec.resources.HasField("gpus") and spec.resources.gpus < 0:
            raise InvalidArgument([("resources.gpus", "must be >= 0")])
        return spec
    except InvalidArgument as exc:
        for field, message in exc.problems:
            typer.secho(f"error: {path}: {field}: {message}", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _state(value: int) -> str:
    from trainer_service.jobs.store import state_name

    return state_name(value)


def _print_job(job) -> None:
    from google.protobuf import json_format

    typer.echo(json.dumps(json_format.MessageToDict(job, preserving_proto_field_name=True),
                          indent=2, ensure_ascii=False))


def _watch(client, job_id: str, from_sequence: int, show_logs: bool) -> int:
    """Follows a job with a progress bar; returns the exit code for its final state."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from protos.tunesmith.training.v1 import training_pb2 as pb

    final = None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[numbers]}"), console=console) as bar:
        task = bar.add_task(job_id, total=None, numbers="")
        numbers: dict[str, float] = {}
        def retrying(why: str) -> None:  # a restarting server, or none there: said at once
            bar.console.print(f"server unavailable ({why})", style="yellow", highlight=False)

        with _rpc_errors():
            for event in client.watch(job_id, from_sequence, on_retry=retrying):
                kind = event.kind
                if kind == pb.EVENT_KIND_STATE_CHANGE:
                    change = event.state_change
                    final = change.state
                    bar.update(task, description=f"{job_id} {_state(change.state)}")
                    bar.console.print(f"#{event.sequence} {_state(change.previous)} -> "
                                      f"{_state(change.state)}: {change.reason}",
                                      highlight=False)
                elif kind == pb.EVENT_KIND_STEP_METRICS:
                    numbers["loss"] = event.step.loss
                    bar.update(task, completed=event.step.step,
                               total=event.step.max_steps or None)
                elif kind == pb.EVENT_KIND_EVAL_METRICS:
                    numbers["eval_loss"] = event.eval.eval_loss
                elif kind == pb.EVENT_KIND_CHECKPOINT_SAVED:
                    bar.console.print(f"#{event.sequence} checkpoint step "
                                      f"{event.checkpoint.step}: {event.checkpoint.path}",
                                      highlight=False)
                elif kind == pb.EVENT_KIND_WARNING:
                    bar.console.print(f"[yellow]#{event.sequence} warning: {event.message}")
                elif kind == pb.EVENT_KIND_LOG and show_logs:
                    bar.console.print(f"#{event.sequence} {event.message}", highlight=False,
                                      markup=False)
                bar.update(task, numbers=" ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
    with _rpc_errors():
        job = client.get(job_id)
    typer.echo(f"{job.id} {_state(job.state)}")
    if job.state == pb.JOB_STATE_FAILED:
        e = job.error
        typer.secho(f"error {e.code}: {e.field + ': ' if e.field else ''}{e.message}"
                    + (f" Fix: {e.fix}" if e.fix else ""), err=True, fg="red")
    for name, path in sorted(job.artifacts.items()):
        typer.echo(f"{name + ':':9s} {path}")
    return 0 if (final or job.state) == pb.JOB_STATE_SUCCEEDED else EXIT_JOB_FAILED


@train_app.command("submit")
def train_submit(
    spec: Annotated[Path, typer.Argument(help="YAML spec, as for `train run`.")],
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenOpt = None,
    tls_ca: CaOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job to its end.")] = False,
    request_id: Annotated[Optional[str], typer.Option(
        "--request-id", help="Idempotency key; default: a new UUID.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="A data engine output folder on the server (overrides the spec).")
                       ] = None,
    base_model: Annotated[Optional[str], typer.Option(
        "--base-model", help="A model folder on the server or a hub id (overrides the spec).")
                          ] = None,
    dry_run: Annotated[Optional[bool], typer.Option(
        "--dry-run/--no-dry-run", help="Stop after validation and preflight.")] = None,
    logs: Annotated[bool, typer.Option("--logs", help="Show the job's log lines.")] = False,
) -> None:
    """Submit a training job to the service (paths as the server sees them)."""
    job_spec = _load_spec(spec, dataset, base_model, dry_run)
    with _client(server, token_file, tls_ca) as client:
        with _rpc_errors():
            job = client.create(job_spec, request_id)
        typer.echo(f"{job.id} {_state(job.state)}")
        if watch:
            raise typer.Exit(_watch(client, job.id, 1, logs))


@train_app.command("watch")
def train_watch(
    job_id: Annotated[str, typer.Argument()],
    server: ServerOpt = DEFAULT_SERVER,
    token_file: TokenOpt = None,
    tls_ca: CaOpt = None,
    from_sequence: Annotated[int, typer.Option(
        "--from-sequence", help="First event to show (1: from the start).")] = 1,
    logs: Annotated[bool, typer.Option("--logs", help="Show the job's log lines.")] = False,
) -> None:
    """Follow a job's events to its end; exit 0 only when it SUCCEEDED."""
    with _client(server, token_file, tls_ca) as client:
        raise typer.Exit(_watch(client, job_id, from_sequence, logs))


@train_app.command("get")
def train_get(job_id: Annotated[str, typer.Argument()], server: ServerOpt = DEFAULT_SERVER,
              token_file: TokenOpt = None, tls_ca: CaOpt = None) -> None:
    """Print a job as JSON."""
    with _client(server, token_file, tls_ca) as client, _rpc_errors():
        _print_job(client.get(job_id))


@train_app.command("list")
def train_list(
    server: ServerOpt = DEFAULT_SERVER, token_file: TokenOpt = None, tls_ca: CaOpt = None,
    state: Annotated[Optional[list[str]], typer.Option(
        "--state", help="Only jobs in this state, e.g. RUNNING (repeatable).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many jobs.")] = 50,
) -> None:
    """List jobs, newest first."""
    from protos.tunesmith.training.v1 import training_pb2 as pb

    try:
        states = [pb.JobState.Value("JOB_STATE_" + s.upper()) for s in state or []]
    except ValueError:
        known = [n.removeprefix("JOB_STATE_").lower() for n in pb.JobState.keys()
                 if n != "JOB_STATE_UNSPECIFIED"]
        typer.secho(f"error: --state: {', '.join(state or [])} is not a job state (one of "
                    f"{', '.join(known)})", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    shown, token = 0, ""
    with _client(server, token_file, tls_ca) as client, _rpc_errors():
        while shown < limit:
            page = client.list(states, min(limit - shown, 1000), token)
            for job in page.jobs:
                step = job.metrics.get("global_step")
                loss = job.metrics.get("eval_loss")
                typer.echo(f"{job.id}  {_state(job.state):10s} "
                           f"{job.create_time.ToDatetime():%Y-%m-%d %H:%M:%S}  "
                           + (f"step {step:g} " if step is not None else "")
                           + (f"eval_loss {loss:.4f}" if loss is not None else ""))
            shown += len(page.jobs)
            token = page.next_page_token
            if not token:
                break


@train_app.command("cancel")
def train_cancel(job_id: Annotated[str, typer.Argument()], server: ServerOpt = DEFAULT_SERVER,
                 token_file: TokenOpt = None, tls_ca: CaOpt = None) -> None:
    """Ask a job to stop at its next safe point (it ends CANCELLED)."""
    with _client(server, token_file, tls_ca) as client, _rpc_errors():
        job = client.cancel(job_id)
    typer.echo(f"{job.id} {_state(job.state)}"
               + (" (cancel requested)" if job.cancel_requested else ""))


@train_app.command("checkpoints")
def train_checkpoints(job_id: Annotated[str, typer.Argument()],
                      server: ServerOpt = DEFAULT_SERVER, token_file: TokenOpt = None,
                      tls_ca: CaOpt = None) -> None:
    """List a job's checkpoints; * marks the best by validation loss."""
    with _client(server, token_file, tls_ca) as client, _rpc_errors():
        page = client.checkpoints(job_id)
    for cp in page.checkpoints:
        loss = f"eval_loss {cp.eval_loss:.4f}" if cp.HasField("eval_loss") else ""
        typer.echo(f"{'*' if cp.step == page.best_step else ' '} step {cp.step:6d} {loss:18s}"
                   f" {cp.path}")
