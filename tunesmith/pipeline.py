"""`tunesmith pipeline run PIPELINE.yaml`: data -> training job -> evaluation -> serving, one
chain with a gate between stages.

Each stage starts only when the one before passed its checks: the data has train,
validation and test rows; the training job SUCCEEDED (its own preflight, parity and sanity
checks included); the evaluation's gate passed; the served model answered a chat request.
A failure stops the chain with the stage, the reason and the fix. Every stage's outputs,
checks and timings go into WORKDIR/pipeline.json (rewritten after each stage) and a summary
WORKDIR/report.html linking each stage's own report. `--resume` keeps the stages that
finished and continues from the first that did not; the training job is found again by its
request id, so an interrupted job resumes on the training service instead of starting over.

A pipeline file (paths relative to it):

    workdir: runs/pipeline
    data: {config: data.yaml}            # a `tunesmith data run` config
    train: {spec: train.yaml}            # a training spec; `dataset` is the data stage's output
    eval: {gate: {usability_min: 0.95}}  # `tunesmith eval run` options
    serve: {prompt: "Hello"}             # `tunesmith serve` options and one request
"""

from __future__ import annotations

import hashlib
import html
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

STAGES = ("data", "train", "eval", "serve")
PIPELINE_JSON = "pipeline.json"


class PipelineError(Exception):
    """A stage (or the pipeline file) failed: where, why and how to fix it."""

    def __init__(self, stage: str, code: str, message: str, field: str = "", fix: str = ""):
        self.stage, self.code, self.message, self.field, self.fix = stage, code, message, field, fix
        self.workdir: Path | None = None  # set once the pipeline knows it
        super().__init__(f"{stage}: {code}: {message}" + (f" (field {field})" if field else "")
                         + (f"\nfix: {fix}" if fix else ""))

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "field": self.field, "fix": self.fix}


@dataclass
class DataStage:
    config: str = ""  # a `tunesmith data run` YAML


@dataclass
class TrainStage:
    spec: str = ""  # a training spec YAML; its dataset is replaced by the data stage's output
    trainer: str | None = None  # host:port of a running training service; None: embedded
    token_file: str | None = None  # the service's bearer token (a running service)
    timeout_s: float = 6 * 3600.0


@dataclass
class EvalStage:
    split: str = "test"
    limit: int | None = None
    max_tokens: int | None = None
    baseline: str | None = None  # None: the training run's base model; "none"; folder | URL
    judge: str | None = None
    gate: Any = None  # thresholds inline (a mapping), a gate file, or None: the defaults
    backend: str = "auto"

    def check(self) -> list[str]:
        """What `eval run` would refuse, found before data and training run (a typo in
        `split` used to cost the whole chain, and a fix made --resume refuse). A gate file
        is read by `load_pipeline`, which knows where relative paths start."""
        from evaluator.data import SPLITS, EvalError
        from evaluator.judged import parse_engine_spec
        from evaluator.serving.manager import BACKENDS

        problems = []
        if self.gate is not None and not isinstance(self.gate, (dict, str)):
            problems.append(f"gate: a mapping of thresholds or a gate file, got {self.gate!r}")
        elif isinstance(self.gate, dict):
            problems += [f"gate.{p}" for p in gate_problems(self.gate)]
        if self.split not in SPLITS:
            problems.append(f"split: {self.split!r} is not one of {', '.join(SPLITS)}")
        for name in ("limit", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name}: {value} is below 1")
        if self.backend not in BACKENDS:
            problems.append(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.judge:
            try:
                parse_engine_spec(self.judge)
            except EvalError as exc:
                problems.append(f"judge: {exc.message}")
        return problems


def gate_problems(gate: dict[str, Any] | Path) -> list[str]:
    """What the evaluator finds wrong with inline thresholds or a gate file."""
    from evaluator.gate import GateError, gate_from, load_gate

    try:
        gate_from(gate) if isinstance(gate, dict) else load_gate(gate)
    except GateError as exc:
        return list(exc.problems)
    return []


@dataclass
class ServeStage:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    backend: str = "auto"
    prompt: str = "Write a one-line title for an article about learning English by reading aloud."
    max_tokens: int = 64
    keep: bool = False  # stay up in the foreground after the request, until Ctrl+C

    def check(self) -> list[str]:
        from evaluator.serving.manager import BACKENDS

        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens: {self.max_tokens} is below 1")
        if self.port is not None and not 0 <= self.port <= 65535:
            problems.append(f"port: {self.port} is not a port (0-65535)")
        return problems


@dataclass
class PipelineConfig:
    workdir: str = "runs/pipeline"
    data: DataStage = field(default_factory=DataStage)
    train: TrainStage = field(default_factory=TrainStage)
    eval: EvalStage = field(default_factory=EvalStage)
    serve: ServeStage = field(default_factory=ServeStage)
    # the pipeline file's folder, where relative paths start; not a key of the file
    base: Path = field(default=Path("."), init=False)

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()


def load_pipeline(path: Path) -> PipelineConfig:
    """The pipeline file, every problem reported at once (PipelineError, stage `pipeline`)."""
    from data_engine.config_loader import from_dict, read_yaml
    from data_engine.errors import ConfigError

    try:
        data, base, origin = read_yaml(path, "pipeline")
    except ConfigError as exc:
        raise PipelineError("pipeline", "bad_pipeline_file", str(exc), "pipeline") from None
    problems: list[str] = []
    config = None
    try:
        config = from_dict(PipelineConfig, data, origin)
        config.base = base
        if isinstance(config.eval.gate, str):  # a gate file, relative to this one
            problems += [f"eval.gate: {p}" for p in gate_problems(config.path(config.eval.gate))]
        if config.eval.baseline and config.eval.baseline != "none" \
                and not config.eval.baseline.startswith(("http://", "https://")) \
                and (base / Path(config.eval.baseline).expanduser()).exists():
            config.eval.baseline = str(config.path(config.eval.baseline))  # as documented
    except ConfigError as exc:
        problems += exc.problems
    for name in ("data.config", "train.spec"):
        section, key = name.split(".")
        value = data[section].get(key) if isinstance(data.get(section), dict) else None
        if not value:
            problems.append(f"{name}: required")
        elif not (base / Path(value).expanduser()).is_file():
            problems.append(f"{name}: {base / Path(value).expanduser()} is not a file")
    if config is not None and not any(p.startswith("train.spec:") for p in problems):
        try:  # the spec's own problems now, not after the data stage's minutes
            train_spec(config, str(config.path(config.workdir) / "data"), check_only=True)
        except PipelineError as exc:
            problems.append(f"train.spec: {exc.message}")
    if problems:
        raise PipelineError("pipeline", "bad_pipeline_file", "; ".join(problems), "pipeline",
                            f"fix {path}")
    return config


def digests(config: PipelineConfig) -> dict[str, str]:
    """What the data and training stages read, each part hashed: their sections, the data
    config and training spec files, and the data files the config names (inputs, reference
    sets, CRAFT few-shots and corpus: a file fixed after a failed gate is data the chain
    has not seen). The eval and serve sections may change under --resume (a gate or split
    fixed after the eval stage failed reruns the evaluation, not the training)."""
    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    sections = {"data": asdict(config.data), "train": asdict(config.train)}
    return {"pipeline sections": sha(json.dumps(sections, sort_keys=True, default=str).encode()),
            "data config": sha(config.path(config.data.config).read_bytes()),
            "training spec": sha(config.path(config.train.spec).read_bytes()),
            "data files": sha(json.dumps(_data_files(config)).encode())}


def _data_files(config: PipelineConfig) -> list[Any]:
    """(path, SHA-256) of each data file the data config names; what cannot be read is
    named with its error (the data stage reports it)."""
    from data_engine.config import InputConfig, load_config
    from data_engine.errors import DataEngineError
    from data_engine.readers.shards import input_digests

    try:
        data = load_config(config.path(config.data.config))
        items = data.inputs + data.dedup.reference.inputs
        craft = data.synth.craft
        if craft is not None:
            items = items + [InputConfig(path=p) for p in [craft.fewshots, *craft.corpus] if p]
        return [list(pair) for pair in input_digests(items)]
    except (DataEngineError, OSError) as exc:
        return [f"{type(exc).__name__}: {exc}"]


def digest(config: PipelineConfig, parts: dict[str, str] | None = None) -> str:
    """One hash of `digests` (``parts``, when already made): changes when any part does."""
    parts = digests(config) if parts is None else parts
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class Chain:
    """The stages' state, written to pipeline.json after every change."""

    def __init__(self, config: PipelineConfig, pipeline_file: Path, workdir: Path,
                 resume: bool, log: Callable[[str], None]):
        self.config, self.workdir, self.log = config, workdir, log
        self.path = workdir / PIPELINE_JSON
        previous = (json.loads(self.path.read_text(encoding="utf-8"))
                    if resume and self.path.is_file() else None)
        parts = digests(config)
        key = digest(config, parts)
        if previous and previous.get("digest") != key:
            before = previous.get("digests") or {}
            changed = [name for name, value in parts.items() if before.get(name) != value] \
                if before else []
            raise PipelineError("pipeline", "pipeline_changed", (
                f"changed since the stopped run: {', '.join(changed)}" if changed else
                "the pipeline file or a file it names changed since the stopped run"),
                "pipeline", "run without --resume to start over")
        self.state = previous or {
            "pipeline": str(pipeline_file), "workdir": str(workdir), "digest": key,
            "digests": parts, "run_id": secrets.token_hex(4),
            "stages": {name: {"status": "pending"} for name in STAGES}}
        self.state["status"] = "running"

    def stage(self, name: str) -> dict[str, Any]:
        return self.state["stages"][name]

    def done(self, name: str) -> bool:
        return self.stage(name).get("status") == "succeeded"

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.state, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
        write_summary(self.workdir, self.state)

    def run(self, name: str, body: Callable[[dict[str, Any]], None]) -> None:
        stage = self.stage(name)
        if self.done(name):
            self.log(f"[{name}] done in an earlier run, kept")
            return
        stage.clear()
        stage.update(status="running", started=time.time(), outputs={}, checks=[])
        self.save()
        self.log(f"[{name}] started")
        try:
            body(stage)
        except PipelineError as exc:
            stage.update(status="failed", error=exc.to_json())
            self.state.update(status="failed", failed_stage=name)
            raise
        except BaseException as exc:  # an interrupt or a bug: recorded, then re-raised
            stage.update(status="failed", error={"code": type(exc).__name__,
                                                 "message": str(exc), "field": "", "fix": ""})
            self.state.update(status="failed", failed_stage=name)
            raise
        finally:
            stage.update(finished=time.time(), seconds=round(time.time() - stage["started"], 1))
            self.save()
        stage["status"] = "succeeded"
        self.save()
        self.log(f"[{name}] passed in {stage['seconds']:.0f} s")


def check(stage: dict[str, Any], name: str, passed: bool, detail: str) -> bool:
    stage["checks"].append({"name": name, "passed": passed, "detail": detail})
    return passed


# ---- the stages ----

def data_stage(chain: Chain, stage: dict[str, Any]) -> None:
    from data_engine.config import load_config
    from data_engine.errors import DataEngineError
    from data_engine.run import run

    out = chain.workdir / "data"
    try:
        result = run(load_config(chain.config.path(chain.config.data.config), [], None), out,
                     progress=False)
    except DataEngineError as exc:
        raise PipelineError("data", "data_engine_failed", str(exc), "data.config") from None
    counts = result.manifest["counts"]
    stage["outputs"] = {"dataset": str(result.out_dir), "manifest": str(result.manifest_path),
                        "report": str(result.report_path)}
    stage["counts"] = {"input": counts["input"], "kept": counts["kept"],
                       "splits": counts["splits"],
                       "rejected": {k: v for k, v in counts["rejected"].items() if v}}
    chain.log(f"[data] {counts['input']} rows in, {counts['kept']} kept, splits "
              + ", ".join(f"{s} {n}" for s, n in counts["splits"].items()))
    for split in ("train", "validation", "test"):
        n = counts["splits"].get(split, 0)
        if not check(stage, f"{split}_rows", n > 0, f"{n} {split} rows"):
            raise PipelineError("data", f"no_{split}_rows", f"the data stage wrote no {split} "
                                "rows", "data.config", "add input rows or raise that split's "
                                "share in the data config's split section")


def train_spec(config: PipelineConfig, dataset: str, check_only: bool = False
               ) -> tuple[Any, list[Path]]:
    """The job spec (dataset set to the data stage's output) and the folders it reads.
    ``check_only``: for the checks when the pipeline file loads, before the data stage
    (`base_model: default` is not converted then)."""
    from data_engine.config_loader import from_dict, read_yaml
    from data_engine.errors import ConfigError
    from trainer_service.errors import InvalidArgument
    from trainer_service.jobs.validate import TEMPLATE_KEYWORDS, spec_from_mapping
    from trainer_service.recipe.spec import TrainSpec

    spec_path = config.path(config.train.spec)
    try:
        data, base, _ = read_yaml(spec_path, "train spec")
    except ConfigError as exc:
        raise PipelineError("train", "bad_train_spec", str(exc), "train.spec") from None
    data["dataset"] = dataset
    if data.get("base_model") in (None, "", "default") and not check_only:
        from data_engine.engines import resolve_model

        data["base_model"] = resolve_model("default")
    roots = [Path(dataset).parent]
    for key in ("base_model", "chat_template"):
        value = data.get(key)
        if isinstance(value, str) and value not in TEMPLATE_KEYWORDS:
            path = Path(value) if Path(value).is_absolute() else base / value
            if path.exists():
                data[key] = str(path.resolve())
                roots.append(path.resolve().parent)
    try:
        # the YAML's own types, every problem at once, as `train run` reads them
        from_dict(TrainSpec, {k: v for k, v in data.items() if k != "resources"}, str(spec_path))
    except ConfigError as exc:
        raise PipelineError("train", "bad_train_spec", "; ".join(exc.problems), "train.spec",
                            f"fix {spec_path}") from None
    try:
        return spec_from_mapping(data), roots
    except InvalidArgument as exc:
        raise PipelineError("train", "bad_train_spec", "; ".join(
            f"{f}: {m}" for f, m in exc.problems), "train.spec", f"fix {spec_path}") from None


def train_stage(chain: Chain, stage: dict[str, Any]) -> None:
    from trainer_service.client import TrainingClient
    from protos.tunesmith.training.v1 import training_pb2 as pb
    from trainer_service.jobs.store import state_name

    dataset = chain.stage("data")["outputs"]["dataset"]
    spec, roots = train_spec(chain.config, dataset)
    settings = chain.config.train
    server = None
    if settings.trainer:
        address = settings.trainer
        token = (Path(chain.config.path(settings.token_file)).read_text().strip()
                 if settings.token_file else None)
    else:
        from trainer_service.server.app import ServerConfig, TrainerServer

        token = secrets.token_hex(16)
        server = TrainerServer(ServerConfig(state_dir=chain.workdir / "trainer",
                                            data_roots=sorted(set(roots)), port=0,
                                            token=token)).start()
        address = server.address
        chain.log(f"[train] embedded training service on {address}")
    stage["outputs"]["trainer"] = address
    request_id = f"pipeline-{chain.state['digest']}-{chain.state['run_id']}"
    try:
        with TrainingClient(address, token=token) as client:
            job = client.create(spec, request_id=request_id)
            stage["outputs"]["job_id"] = job.id
            chain.save()
            chain.log(f"[train] job {job.id} ({state_name(job.state)})")
            deadline = time.monotonic() + settings.timeout_s
            for event in client.watch(job.id):
                if event.kind == pb.EVENT_KIND_STATE_CHANGE:
                    chain.log(f"[train] {state_name(event.state_change.state)}: "
                              f"{event.state_change.reason}")
                elif event.kind == pb.EVENT_KIND_STEP_METRICS:
                    chain.log(f"[train] step {event.step.step}/{event.step.max_steps} "
                              f"loss {event.step.loss:.3f}")
                elif event.kind == pb.EVENT_KIND_EVAL_METRICS:
                    chain.log(f"[train] step {event.eval.step} eval loss "
                              f"{event.eval.eval_loss:.3f}")
                if time.monotonic() > deadline:
                    client.cancel(job.id)
                    raise PipelineError("train", "train_timeout", f"job {job.id} ran past "
                                        f"{settings.timeout_s:.0f} s and was cancelled",
                                        "train.timeout_s", "raise train.timeout_s or train "
                                        "fewer steps")
            job = client.get(job.id)
    except PipelineError:
        raise
    except Exception as exc:  # grpc.RpcError and friends: the service was not reachable
        raise PipelineError("train", "trainer_unreachable", f"{address}: {exc}", "train.trainer",
                            "start the training service or leave train.trainer unset") from None
    finally:
        if server is not None:
            server.stop()
    stage["outputs"].update(dict(job.artifacts))
    stage["metrics"] = dict(job.metrics)
    stage["warnings"] = list(job.warnings)
    if not check(stage, "job_succeeded", job.state == pb.JOB_STATE_SUCCEEDED,
                 f"job {job.id} {state_name(job.state)}"):
        error = job.error
        raise PipelineError("train", error.code or "job_failed", error.message or
                            f"job {job.id} ended {state_name(job.state)}",
                            error.field, error.fix or f"see {job.artifacts.get('log', '')}")
    merged = job.artifacts.get("merged")
    if not check(stage, "merged_model", bool(merged) and Path(merged).is_dir(),
                 f"merged model {merged}"):
        raise PipelineError("train", "no_merged_model", f"job {job.id} succeeded but left no "
                            f"merged model ({merged or 'none reported'}); eval needs one",
                            "train.spec", "a spec with `dry_run: true` stops before training: "
                            "remove it to run the chain")


def eval_stage(chain: Chain, stage: dict[str, Any]) -> None:
    from evaluator.data import EvalError
    from evaluator.gate import GateError
    from evaluator.run import EvalOptions, run_eval

    settings = chain.config.eval
    out = chain.workdir / "eval"
    gate: Path | None = None
    if isinstance(settings.gate, dict):
        import yaml

        gate = chain.workdir / "gate.yaml"
        gate.write_text(yaml.safe_dump(settings.gate), encoding="utf-8")
    elif settings.gate:
        gate = chain.config.path(settings.gate)
    options = EvalOptions(data=Path(chain.stage("data")["outputs"]["dataset"]), out=out,
                          model=chain.stage("train")["outputs"]["merged"], split=settings.split,
                          baseline=settings.baseline, judge=settings.judge, gate=gate,
                          max_tokens=settings.max_tokens, limit=settings.limit,
                          backend=settings.backend)
    from evaluator.serving import ServeError

    try:
        metrics = run_eval(options, log=lambda line: chain.log(f"[eval] {line}"))
    except EvalError as exc:
        raise PipelineError("eval", exc.code, exc.message, f"eval.{exc.field}",
                            "fix the eval section" if exc.bad_input else
                            f"see {out}, and the server's log lines above") from None
    except GateError as exc:
        raise PipelineError("eval", "bad_gate", str(exc), "eval.gate") from None
    except ServeError as exc:  # the model (or baseline) did not come up: was a traceback
        raise PipelineError("eval", exc.code, exc.message, f"eval.{exc.field or 'backend'}",
                            "check the merged model and the backend (`tunesmith serve "
                            "MODEL_DIR` shows the server's own output)") from None
    stage["outputs"] = {"metrics": str(out / "metrics.json"), "samples": str(out / "samples.jsonl"),
                        "report": str(out / "report.html")}
    ppl, usability = metrics["perplexity"], metrics["usability"]
    stage["summary"] = {"ppl": ppl["model"]["ppl"], "ppl_ratio": ppl["ratio"],
                        "usability": usability["model"]["rate"],
                        "baseline_usability": (usability["baseline"] or {}).get("rate")}
    for item in metrics["gate"]["checks"]:
        check(stage, f"gate_{item['name']}", item["status"] != "fail",
              f"{item['status']}: {item['reason']}")
    if not metrics["gate"]["passed"]:
        failed = [c["reason"] for c in metrics["gate"]["checks"] if c["status"] == "fail"]
        raise PipelineError("eval", "gate_failed", "; ".join(failed), "eval.gate",
                            f"read {out / 'report.html'}: train longer or on more rows, or "
                            "check the data; the gate thresholds are in eval.gate")


def serve_stage(chain: Chain, stage: dict[str, Any]) -> None:
    import openai

    from evaluator.serving import ServeError, serve_model

    settings = chain.config.serve
    merged = chain.stage("train")["outputs"]["merged"]
    try:
        with serve_model(merged, backend=settings.backend, host=settings.host,
                         port=settings.port) as server:
            stage["outputs"] = {"base_url": server.base_url, "model": server.name,
                                "backend": server.backend}
            client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
            reply = client.chat.completions.create(
                model=server.name, messages=[{"role": "user", "content": settings.prompt}],
                max_tokens=settings.max_tokens, temperature=0.0)
            text = reply.choices[0].message.content or ""
            stage["request"] = {"prompt": settings.prompt, "reply": text,
                                "finish_reason": reply.choices[0].finish_reason}
            chain.log(f"[serve] {server.name} at {server.base_url} ({server.backend})")
            chain.log(f"[serve] user: {settings.prompt}")
            chain.log(f"[serve] {server.name}: {text}")
            if not check(stage, "answered", bool(text.strip()), f"{len(text)} characters, "
                         f"finish reason {reply.choices[0].finish_reason}"):
                raise PipelineError("serve", "empty_reply", "the served model answered with "
                                    "nothing", "serve.prompt")
            if settings.keep:
                chain.save()
                chain.log(f"[serve] serving until Ctrl+C: {server.base_url}")
                while server.process.poll() is None:
                    time.sleep(1.0)
    except ServeError as exc:
        raise PipelineError("serve", exc.code, exc.message, exc.field or "serve") from None
    except KeyboardInterrupt:
        if not settings.keep:
            raise


BODIES = {"data": data_stage, "train": train_stage, "eval": eval_stage, "serve": serve_stage}


def run_pipeline(pipeline_file: Path, workdir: Path | None = None, resume: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the chain; returns pipeline.json's content. Raises PipelineError on a failure
    (after recording it)."""
    config = load_pipeline(pipeline_file)
    workdir = (workdir or config.path(config.workdir)).resolve()
    chain = Chain(config, pipeline_file.resolve(), workdir, resume, log)
    started = time.time()
    chain.save()
    try:
        for name in STAGES:
            if name == "serve" and not config.serve.enabled:
                chain.stage(name).update(status="skipped")
                continue
            chain.run(name, lambda stage, name=name: BODIES[name](chain, stage))
    except PipelineError as exc:
        exc.workdir = workdir
        raise
    finally:
        chain.state["seconds"] = round(time.time() - started, 1)
        chain.save()
    chain.state["status"] = "succeeded"
    chain.save()
    return chain.state


# ---- the summary report ----

def _link(workdir: Path, path: str | None) -> str:
    if not path:
        return ""
    target = Path(path)
    try:
        href = target.relative_to(workdir)
    except ValueError:
        href = target
    return f'<a href="{html.escape(str(href))}">{html.escape(target.name)}</a>'


def write_summary(workdir: Path, state: dict[str, Any]) -> Path:
    """WORKDIR/report.html: each stage's status, time, checks and a link to its report."""
    from data_engine.writers.report import STYLE

    rows = []
    for name in STAGES:
        stage = state["stages"][name]
        outputs = stage.get("outputs") or {}
        reports = " ".join(_link(workdir, outputs.get(key)) for key in ("report", "metrics")
                           if outputs.get(key))
        checks = "<br>".join(
            f'<span class="{"" if c["passed"] else "bad"}">{html.escape(c["name"])}: '
            f'{html.escape(c["detail"])}</span>' for c in stage.get("checks") or [])
        error = stage.get("error")
        if error:
            checks += (f'<br><span class="bad">{html.escape(error["code"])}: '
                       f'{html.escape(error["message"])}</span>'
                       + (f'<br>fix: {html.escape(error["fix"])}' if error.get("fix") else ""))
        seconds = stage.get("seconds")
        rows.append(f"<tr><td>{name}</td><td>{html.escape(stage.get('status', ''))}</td>"
                    f"<td>{'' if seconds is None else f'{seconds:.0f} s'}</td>"
                    f"<td style='text-align:left'>{checks}</td><td>{reports}</td></tr>")
    request = state["stages"]["serve"].get("request")
    answer = (f"<h2>The served model</h2><p>user: {html.escape(request['prompt'])}</p>"
              f"<pre>{html.escape(request['reply'])}</pre>" if request else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tunesmith pipeline"
            f"</title><style>{STYLE}</style></head><body><h1>tunesmith pipeline: "
            f"{html.escape(state.get('status', ''))}</h1><p>{html.escape(state['pipeline'])}"
            f"</p><table><tr><th>stage</th><th>status</th><th>time</th><th>checks</th>"
            f"<th>report</th></tr>{''.join(rows)}</table>{answer}</body></html>")
    path = workdir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
