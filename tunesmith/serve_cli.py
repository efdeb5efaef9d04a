"""`tunesmith serve`: an OpenAI-compatible server for a merged model or base + adapter.

It starts the server (evaluator.serving.serve_model), waits until it answers, prints how to
reach it, and stays in the foreground until the server exits or this command gets SIGTERM or
Ctrl+C, which it passes on (SIGTERM to the server's process group, SIGKILL after 10 s).

Exit codes: 0 after a requested stop; the server's own code when it exits by itself (its log
tail is printed); 1 when the server failed to start; 2 for bad input, printed as
`error: <field>: <code>: <message>`.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli import app

EXIT_START_FAILED, EXIT_BAD_INPUT = 1, 2


class _StopRequested(BaseException):
    """Raised by the signal handler while the server is still starting (unwinds the wait,
    and serve_model stops the server); a BaseException so no `except Exception` eats it."""


@app.command("serve", context_settings={"allow_extra_args": True,
                                        "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(
        help="A merged model folder, the base model of --adapter, or a .gguf file "
        "(served by llama-cpp-python).")],
    adapter: Annotated[Optional[Path], typer.Option(
        "--adapter", help="A LoRA adapter folder (adapter_config.json), served un-merged on "
        "the base.")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    backend: Annotated[str, typer.Option(
        "--backend", help="auto: vLLM when it is installed and a CUDA device is visible, "
        "else transformers; llama_cpp for a .gguf (auto picks it).")] = "auto",
    served_name: Annotated[Optional[str], typer.Option(
        "--served-name", help="The model name clients use; default: the adapter's folder "
        "name, else the model's.")] = None,
    vllm_bin: Annotated[Optional[str], typer.Option(
        "--vllm-bin", help="The `vllm` executable of another environment.")] = None,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="auto (the weights' dtype on a GPU, float32 on CPU), bfloat16, "
        "float16, float32.")] = "auto",
    log_file: Annotated[Optional[Path], typer.Option(
        "--log-file", help="The server's stdout and stderr; default: a temporary file.")
                        ] = None,
    startup_timeout: Annotated[float, typer.Option(
        "--startup-timeout", min=1.0, help="Seconds to wait for the server to answer.")] = 600.0,
) -> None:
    """Serve a model behind an OpenAI-compatible API until SIGTERM or Ctrl+C; arguments
    after `--` go to the backend (`vllm serve` or evaluator.serving.hf_app)."""
    from evaluator.serving import ServeError, client_snippet, serve_model

    stop = threading.Event()
    ready = False

    def on_signal(signum: int, _frame) -> None:
        stop.set()
        if not ready:
            raise _StopRequested()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    typer.echo(f"starting a server for {model_dir}" + (f" + {adapter}" if adapter else "")
               + f" on {host}:{port} (backend {backend})...", err=True)
    try:
        with serve_model(model_dir, adapter=adapter, backend=backend, host=host, port=port,
                         served_name=served_name, vllm_bin=vllm_bin, extra_args=ctx.args,
                         dtype=dtype, startup_timeout_s=startup_timeout,
                         log_path=log_file) as server:
            ready = True
            command = server.command
            parser = (command[command.index("--tool-call-parser") + 1]
                      if "--tool-call-parser" in command else None)
            typer.echo(f"base URL: {server.base_url}\nmodel:    {server.name}\n"
                       f"backend:  {server.backend}\npid:      {server.pid}\n"
                       + (f"tools:    calls returned in tool_calls (vLLM's {parser} parser, "
                          "the form the chat template writes them in)\n" if parser else "")
                       + f"log:      {server.log_path}\n\n"
                       f"{client_snippet(server.base_url, server.name)}\n"
                       "Serving until Ctrl+C or SIGTERM.")
            code = None
            while code is None and not stop.is_set():
                stop.wait(0.5)
                code = server.process.poll()
            if code is not None and not stop.is_set():
                typer.secho(f"the server exited by itself with code {code}; last log lines:\n"
                            f"{server.log_tail()}", err=True, fg="red")
                raise typer.Exit(code if code >= 0 else 128 - code)
            typer.echo("stopping the server...", err=True)
    except ServeError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(EXIT_BAD_INPUT if exc.bad_input else EXIT_START_FAILED) from None
    except _StopRequested:
        typer.echo("stopped before the server was ready", err=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    typer.echo("server stopped", err=True)
