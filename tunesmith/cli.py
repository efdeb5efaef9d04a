"""The `tunesmith` command line: a thin map from flags onto each service's entry point.

Heavy modules (Ray, transformers, the data engine's pipeline) are imported inside the
commands, so `tunesmith --help` answers at once.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunesmith import __version__

app = typer.Typer(help="Turn messy task data into a fine-tuned, verified, served LLM.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="The data engine: ingest, clean and split chat data on Ray.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
models_app = typer.Typer(help="The embedded default model.", no_args_is_help=True)
app.add_typer(models_app, name="models")
synth_app = typer.Typer(help="Synthesize rows with a model: Evol-Instruct, CRAFT, Self-Instruct.",
                        no_args_is_help=True)
app.add_typer(synth_app, name="synth")
train_app = typer.Typer(help="QLoRA SFT: run the recipe here, or submit and follow jobs on the "
                        "training service.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
export_app = typer.Typer(help="Export a finished run to other formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")
pipeline_app = typer.Typer(help="The whole chain: data -> training -> evaluation -> serving.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
console = Console(stderr=True)



def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None
         ) -> None:
    """tunesmith command line."""


def _run_data(config_path: Optional[Path], inputs: list[Path], out: Path,
              ray_address: Optional[str], seed: Optional[int], progress: bool):
    from data_engine.config import load_config
    from data_engine.errors import DataEngineError
    from data_engine.run import run

    overrides = {"seed": seed} if seed is not None else None
    try:
        config = load_config(config_path, [str(p) for p in inputs], overrides)
        if ray_address:
            config.ray.address = ray_address
        return run(config, out, console=console, progress=progress)
    except DataEngineError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(exc.exit_code) from None


def _print_outputs(result) -> None:
    counts = result.manifest["counts"]
    rejected = sum(counts["rejected"].values())
    top = ", ".join(f"{r} {n}" for r, n in sorted(counts["rejected"].items(),
                                                   key=lambda x: -x[1]) if n)
    typer.echo(f"rows: {counts['input']} in, {counts['kept']} kept, {rejected} rejected"
               + (f" ({top})" if top else ""))
    typer.echo("splits: " + ", ".join(f"{s} {n}" for s, n in counts["splits"].items()))
    typer.echo(f"outputs:  {result.out_dir}")
    typer.echo(f"manifest: {result.manifest_path}")
    typer.echo(f"report:   {result.report_path}")
    for warning in result.manifest.get("warnings", []):
        typer.secho(f"WARNING {warning}", err=True, fg="yellow")


@data_app.command("run")
def data_run(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created).")],
    inputs: Annotated[list[Path], typer.Option(
        "--input", help="JSONL or Parquet file, a folder of them, or a datasets "
        "save_to_disk folder; repeatable.")] = [],
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML config; `tunesmith data config` prints the defaults.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Ray cluster address (also RAY_ADDRESS); default: local Ray.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Overrides the config's seed.")] = None,
    progress: Annotated[bool, typer.Option(help="Show per-stage progress.")] = True,
) -> None:
    """Ingest, clean and split chat data into train/validation/test files; exit 1 when no
    row is left to train on (the reasons are in rejected.jsonl)."""
    result = _run_data(config, inputs, out, ray_address, seed, progress)
    _print_outputs(result)
    if not result.manifest["counts"]["splits"]["train"]:
        typer.secho("error: train is empty: no row is left to train on; rejected.jsonl says "
                    "why for each row", err=True, fg="red")
        raise typer.Exit(1)


@data_app.command("config")
def data_config() -> None:
    """Print the default config as YAML, each field with its help."""
    from data_engine.config import DataConfig
    from data_engine.config_loader import to_yaml_comments

    typer.echo(to_yaml_comments(DataConfig()))


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where every stage writes.")
                       ] = Path("runs/demo"),
    resume: Annotated[bool, typer.Option(help="Continue a stopped demo.")] = False,
) -> None:
    """The whole chain on the bundled sample, on CPU: data (cleaning, an Evol-Instruct round
    judged by probability, split) -> QLoRA training job -> evaluation against the base ->
    the served model answering a chat request."""
    from importlib import resources

    pipeline = Path(str(resources.files("tunesmith").joinpath("demo", "pipeline.yaml")))
    typer.echo(f"demo: {pipeline} -> {workdir}")
    _run_pipeline(pipeline, workdir, resume)


def _run_pipeline(pipeline: Path, workdir: Optional[Path], resume: bool) -> None:
    import time

    from tunesmith.pipeline import PipelineError, run_pipeline

    started = time.monotonic()
    try:
        state = run_pipeline(pipeline, workdir, resume,
                             log=lambda line: console.print(line, highlight=False, markup=False))
    except PipelineError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        if exc.workdir:
            typer.echo(f"pipeline.json: {exc.workdir / 'pipeline.json'}")
            typer.echo(f"summary:       {exc.workdir / 'report.html'}")
        raise typer.Exit(2 if exc.stage == "pipeline" else 1) from None
    root = Path(state["workdir"])
    typer.echo(f"done in {time.monotonic() - started:.0f} s")
    for name, stage in state["stages"].items():
        for key in ("report", "metrics"):
            if (stage.get("outputs") or {}).get(key):
                typer.echo(f"{name + ' ' + key + ':':16s}{stage['outputs'][key]}")
    typer.echo(f"{'pipeline:':16s}{root / 'pipeline.json'}")
    typer.echo(f"{'summary:':16s}{root / 'report.html'}")


@pipeline_app.command("run")
def pipeline_run(
    pipeline: Annotated[Path, typer.Argument(help="The pipeline YAML (data, train, eval, serve).")],
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", help="Overrides the file's workdir.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Keep the stages that finished; continue from the first that did not.")] = False,
) -> None:
    """data -> training job -> evaluation -> serving, each stage gated on the one before."""
    _run_pipeline(pipeline, workdir, resume)


@export_app.command("gguf")
def export_gguf_command(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder (its merged/).")],
    types: Annotated[str, typer.Option(
        "--types", help="Comma-separated: f16 first, then quantizations (q8_0, q6_k, "
        "q4_k_m).")] = "f16,q4_k_m",
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Rows for the parity checks (default: the run's dataset).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Default: RUN_DIR/gguf.")
                   ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Export a run whose run.json says it failed verification.")] = False,
) -> None:
    """Convert the merged model with llama.cpp's converter, quantize, and check each form
    against the one before (tokenization, eos, PPL ratio, KL, top-token agreement). A run
    that failed verification is refused without --force."""
    from evaluator.export import ExportError, export_gguf

    try:
        result = export_gguf(run_dir, types=[t.strip() for t in types.split(",") if t.strip()],
                             data_dir=data, out_dir=out, log=typer.echo,
                             require_verified=not force)
    except ExportError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2 if exc.bad_input else exc.exit_code) from None
    typer.echo(f"export.json: {result['out_dir']}/export.json")


@models_app.command("fetch-default")
def models_fetch_default() -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF into a HF folder (once) and print it."""
    from tunesmith.models import ModelError, fetch_default

    try:
        typer.echo(str(fetch_default()))
    except ModelError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


_ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="The `data run` YAML; its engine:, synth:, judge:, clean: and seed: "
    "apply (a null synth block: that generator's defaults).")]
_ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Overrides engine.model (a local folder, hub id or served name).")]
_EngineOpt = Annotated[Optional[str], typer.Option(
    "--engine", help="Overrides engine.kind: transformers | openai | vllm.")]
_BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", help="Overrides engine.base_url (openai engine).")]
_OutOpt = Annotated[Path, typer.Option("--out", help="JSONL of the kept rows.")]
_RejectedOpt = Annotated[Optional[Path], typer.Option(
    "--rejected", help="JSONL of eliminated rows with reasons; default: OUT's "
    "<stem>.rejected.jsonl.")]


def _synth(name: str, config_path: Optional[Path], engine: Optional[str], model: Optional[str],
           base_url: Optional[str], out: Path, rejected: Optional[Path], **inputs) -> None:
    from data_engine.engines import build_engine
    from data_engine.engines.base import EngineError
    from data_engine.errors import DataEngineError
    from data_engine.synth.runner import (load_synth_config, output_paths, run_generator,
                                          write_rows)

    try:
        output_paths(out, rejected)  # a folder given as --out fails now, not after the model
        config = load_synth_config(config_path, {"kind": engine, "model": model,
                                                 "base_url": base_url})
        progress = _SynthProgress(name)
        rows = run_generator(name, config, lambda: build_engine(config.engine),
                             progress=progress, **inputs)
        progress.final()
    except (DataEngineError, EngineError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None
    written = write_rows(rows, out, rejected)
    eliminated = ", ".join(f"{r} {n}" for r, n in written.reasons.most_common())
    typer.echo(f"{name}: {len(rows)} rows made, {written.kept} kept"
               + (f", eliminated: {eliminated}" if eliminated else ""))
    typer.echo(f"kept:     {written.out}")
    typer.echo(f"rejected: {written.rejected}")


def _progress_lines(every_s: float = 10.0):
    """``say(line, final=False)``: `progress: LINE` on stderr, at most one every ``every_s``
    but always a final one, unless that line is already the last one shown (judging or
    generating thousands of rows on a CPU takes a while; an engine's threads may call it at
    once)."""
    import threading
    import time

    lock = threading.Lock()
    last = [time.monotonic(), None]  # when the last line went out, and what it said

    def say(line: str, final: bool = False) -> None:
        with lock:
            if final and line == last[1]:
                return  # the final counts are already on screen
            if final or time.monotonic() - last[0] >= every_s:
                last[0], last[1] = time.monotonic(), line
                typer.echo(f"progress: {line}", err=True)

    return say


def _judge_progress():
    """`progress: judge N/M rows` as parts finish (`_progress_lines`), and at the end."""
    say = _progress_lines()
    return lambda done, total: say(f"judge {done:,}/{total:,} rows", final=done >= total)


class _SynthProgress:
    """`progress: evol 180/256 replies (call 3)` as replies come (`_progress_lines`), and
    the last counts at the end (`final`)."""

    def __init__(self, name: str):
        self.name, self.last, self.say = name, None, _progress_lines()

    def __call__(self, counts: dict, final: bool = False) -> None:
        from data_engine.engines.base import progress_line

        self.last = counts
        self.say(f"{self.name} {progress_line(counts)}", final=final)

    def final(self) -> None:
        if self.last is not None:
            self(self.last, final=True)


def _read(path: Path, what: str) -> list:
    from data_engine.errors import DataEngineError
    from data_engine.synth.runner import read_rows

    try:
        rows, skipped = read_rows(path)
    except DataEngineError as exc:
        typer.secho(f"error: {what}: {exc}", err=True, fg="red")
        raise typer.Exit(exc.exit_code) from None
    if skipped:
        typer.secho(f"warning: {what} {path}: skipped unreadable rows: {dict(skipped)}",
                    err=True, fg="yellow")
    if not rows:
        typer.secho(f"error: {what} {path}: no readable rows", err=True, fg="red")
        raise typer.Exit(2)
    return rows


def _seeds(path: Path, name: str) -> list:
    """Seed rows (`_read`), saying how many offer tools or hold tool calls: the generator
    leaves those out, and exit 2 when that is all of them."""
    from data_engine.synth.evol import uses_tools

    rows = _read(path, "seeds")
    with_tools = sum(map(uses_tools, rows))
    if with_tools:
        line = (f"seeds {path}: {with_tools} of {len(rows)} rows offer tools or hold tool "
                f"calls; {name} leaves them out (it writes text replies, without calling tools)")
        if with_tools == len(rows):
            typer.secho(f"error: {line}", err=True, fg="red")
            raise typer.Exit(2)
        typer.secho(f"warning: {line}", err=True, fg="yellow")
    return rows


@synth_app.command("evol")
def synth_evol(
    input: Annotated[Path, typer.Option("--input", help="Seed rows (any supported format).")],
    out: _OutOpt, rejected: _RejectedOpt = None, config: _ConfigOpt = None,
    engine: _EngineOpt = None, model: _ModelOpt = None, base_url: _BaseUrlOpt = None,
) -> None:
    """Evol-Instruct: rewrite seed prompts deeper or broader, answer them, eliminate failures."""
    _synth("evol", config, engine, model, base_url, out, rejected,
           seeds=_seeds(input, "evol"))


@synth_app.command("self-instruct")
def synth_self_instruct(
    input: Annotated[Path, typer.Option("--input", help="Seed tasks (any supported format).")],
    out: _OutOpt, rejected: _RejectedOpt = None, config: _ConfigOpt = None,
    engine: _EngineOpt = None, model: _ModelOpt = None, base_url: _BaseUrlOpt = None,
) -> None:
    """Self-Instruct baseline: new instructions from seed tasks, answered by the engine."""
    _synth("self_instruct", config, engine, model, base_url, out, rejected,
           seeds=_seeds(input, "self-instruct"))


@synth_app.command("craft")
def synth_craft(
    fewshots: Annotated[Path, typer.Option("--fewshots", help="8-32 human examples.")],
    corpus: Annotated[list[Path], typer.Option(
        "--corpus", help="Documents (JSONL/Parquet with a text column); repeatable.")],
    out: _OutOpt, rejected: _RejectedOpt = None, config: _ConfigOpt = None,
    engine: _EngineOpt = None, model: _ModelOpt = None, base_url: _BaseUrlOpt = None,
) -> None:
    """CRAFT: retrieve corpus documents near the few-shots and rewrite them into samples."""
    _synth("craft", config, engine, model, base_url, out, rejected,
           fewshots=_read(fewshots, "few-shots"), corpus=[str(p) for p in corpus])


@app.command()
def judge(
    input: Annotated[Path, typer.Option("--input", help="Rows to judge (any supported format).")],
    out: _OutOpt, rejected: _RejectedOpt = None, config: _ConfigOpt = None,
    engine: _EngineOpt = None, model: _ModelOpt = None, base_url: _BaseUrlOpt = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="Drop rows scoring below this (reason low_judge_score).")] = None,
    all_rows: Annotated[bool, typer.Option(
        "--all", help="Judge every row, not only synthesized ones (origin other than seed).")
    ] = False,
) -> None:
    """Score rows' last assistant reply from the judge's score-token probabilities."""
    from data_engine.engines import build_engine
    from data_engine.engines.base import EngineError
    from data_engine.errors import DataEngineError
    from data_engine.synth.runner import (judge_rows, load_synth_config, output_paths,
                                          write_rows)

    rows = _read(input, "rows")
    try:
        output_paths(out, rejected)  # a folder given as --out fails now, not after the model
        cfg = load_synth_config(config, {"kind": engine, "model": model, "base_url": base_url})
        judged = judge_rows(rows, cfg, lambda: build_engine(cfg.engine), threshold,
                            "all" if all_rows else None, progress=_judge_progress())
    except (DataEngineError, EngineError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None
    written = write_rows(judged, out, rejected)
    scored = [r["judge_score"] for r in judged if r.get("judge_score") is not None]
    methods = sorted({r["judge_method"] for r in judged if r.get("judge_method")})
    flagged = sum(1 for r in judged if r.get("judge_error"))
    mean = f"{sum(scored) / len(scored):.2f}" if scored else "n/a"
    typer.echo(f"judge: {len(scored)} of {len(judged)} rows scored (mean {mean}, method "
               f"{'/'.join(methods) or 'none'}), {flagged} flagged, "
               f"{written.reasons.get('low_judge_score', 0)} below the threshold")
    typer.echo(f"kept:     {written.out}")
    typer.echo(f"rejected: {written.rejected}")


@train_app.command("run")
def train_run(
    spec: Annotated[Optional[Path], typer.Argument(
        help="YAML spec; a minimal one names base_model and dataset.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder (created; a rerun resumes).")
                   ] = Path("runs/train"),
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="A data engine output folder (overrides the spec).")] = None,
    base_model: Annotated[Optional[str], typer.Option(
        "--base-model", help="Local folder or hub id (overrides the spec).")] = None,
    dry_run: Annotated[Optional[bool], typer.Option(
        "--dry-run/--no-dry-run", help="Stop after preflight: checks and the plan, no step "
        "(overrides the spec's dry_run).")] = None,
) -> None:
    """Preflight, QLoRA SFT, merge into the unquantized base, parity and sanity checks, and the
    GGUF export when the spec has `export.gguf`."""
    from data_engine.errors import ConfigError
    from trainer_service.recipe.errors import RecipeError
    from trainer_service.recipe.spec import load_spec

    try:
        loaded = load_spec(spec, {"dataset": str(dataset.resolve()) if dataset else None,
                                  "base_model": base_model, "dry_run": dry_run})
    except ConfigError as exc:  # before torch, transformers and peft load: at once
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(exc.exit_code) from None
    from trainer_service.recipe.run import run_recipe

    if loaded.base_model == "default":
        from data_engine.engines import resolve_model

        loaded.base_model = resolve_model("default")
    try:
        state = run_recipe(loaded, out, log=lambda line: console.print(line, highlight=False))
    except RecipeError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        typer.echo(f"run.json: {out / 'run.json'}")
        raise typer.Exit(exc.exit_code) from None
    typer.echo(f"{state['status']}: step {state.get('global_step', 0)}, best eval loss "
               f"{state.get('best_eval_loss')}")
    for name, path in state["artifacts"].items():
        typer.echo(f"{name + ':':9s} {path}")


from tunesmith import service_cli  # noqa: E402,F401 - registers `trainer serve`, `train submit|...`
from tunesmith import serve_cli  # noqa: E402,F401 - registers `serve`
from tunesmith import eval_cli  # noqa: E402,F401 - registers `eval run|compare`


def entry(prog_name: str | None = None) -> None:
    """The `tunesmith` command (console script and `python -m tunesmith`)."""
    try:
        app(prog_name=prog_name)
    finally:
        # Every object alive now lives until the process ends. Frozen, the interpreter's last
        # collection skips them instead of walking all of pyarrow's, pandas', datasets',
        # matplotlib's and Ray's: 0.4-0.5 s of CPU at the exit of a data run.
        gc.freeze()
