"""The `tunesmith` command line: a thin map from flags onto each service's entry point.

Heavy modules (Ray, transformers, the data engine's pipeline) are imported inside the
commands, so `tunesmith --help` answers at once.
"""

from __future__ import annotations

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


@data_app.command("run")
def data_run(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created).")],
    inputs: Annotated[list[Path], typer.Option(
        "--input", help="JSONL, Parquet or datasets save_to_disk folder; repeatable.")] = [],
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="YAML config; `tunesmith data config` prints the defaults.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Ray cluster address (also RAY_ADDRESS); default: local Ray.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Overrides the config's seed.")] = None,
    progress: Annotated[bool, typer.Option(help="Show per-stage progress.")] = True,
) -> None:
    """Ingest, clean and split chat data into train/validation/test files."""
    _print_outputs(_run_data(config, inputs, out, ray_address, seed, progress))


@data_app.command("config")
def data_config() -> None:
    """Print the default config as YAML, each field with its help."""
    from data_engine.config import DataConfig
    from data_engine.config_loader import to_yaml_comments

    typer.echo(to_yaml_comments(DataConfig()))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/demo"),
    progress: Annotated[bool, typer.Option(help="Show per-stage progress.")] = True,
) -> None:
    """Run the whole chain on the bundled sample data (today: the data engine)."""
    import data_engine

    config = Path(data_engine.__file__).resolve().parent / "sample" / "demo.yaml"
    typer.echo(f"demo: data engine on the bundled sample ({config})")
    result = _run_data(config, [], out / "data", None, None, progress)
    _print_outputs(result)
