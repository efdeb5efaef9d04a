"""Start an OpenAI-compatible server for a model folder, wait until it answers, and make
sure it is gone afterwards: `with serve_model(model_dir) as server: ... server.base_url`.

Three backends behind one contract (/v1/models lists the served name, requests naming it
are answered, /v1/completions with echo + logprobs returns prompt log-probabilities):
`vllm serve` where a CUDA device and vLLM exist, else transformers' serving app
(evaluator.serving.hf_app); a .gguf file (`tunesmith export gguf`) is served by
llama-cpp-python's server (evaluator.serving.llama_cpp_cli). Each runs as a child process
in its own process group, so a stop reaches every process it started (vLLM runs an engine
process beside its API server) and a Ctrl+C in the terminal reaches only the caller, which
then stops the server itself. On Linux the child is also killed by the kernel if the caller
dies without cleaning up.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from evaluator.serving.errors import ServeError
from evaluator.serving.inputs import check_adapter_dir, check_model_dir, ensure_hf_home
from evaluator.serving.llama_cpp_cli import check_gguf_file, llama_cpp_command
from evaluator.serving.vllm_cli import find_vllm, tool_call_parser, vllm_command

BACKENDS = ("auto", "vllm", "transformers", "llama_cpp")  # llama_cpp: a .gguf MODEL
DTYPES = ("auto", "bfloat16", "float16", "float32")
STOP_GRACE_S = 10.0  # SIGTERM, then this long to drain, then SIGKILL
POLL_S = 0.25
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class ModelServer:
    """A started server: where to reach it, under which name, and its process."""

    base_url: str  # "http://HOST:PORT/v1"
    name: str  # the model name requests use
    backend: str  # "vllm" | "transformers" | "llama_cpp"
    process: subprocess.Popen
    log_path: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float) -> None:
        """Returns once /health answers 200 and /v1/models lists the served name."""
        root = self.base_url.removesuffix("/v1")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServeError("server_exited", f"the {self.backend} server exited with code "
                                 f"{code} before it was ready; last log lines "
                                 f"({self.log_path}):\n{self.log_tail()}", field="model")
            healthy = self.backend == "llama_cpp" or _get(root + "/health") is not None
            if healthy and self.name in _model_ids(self.base_url):  # llama_cpp: no /health
                return
            time.sleep(POLL_S)
        raise ServeError("startup_timeout", f"the {self.backend} server did not answer within "
                         f"{timeout_s:.0f} s; last log lines ({self.log_path}):\n"
                         f"{self.log_tail()}", field="startup_timeout_s")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the server's process group, SIGKILL to whatever is left after `grace_s`;
        returns when no process of the group remains (or after a few more seconds)."""
        group = self.process.pid  # start_new_session: the leader's pid names the group
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _wait_group_gone(group, deadline)  # vLLM's engine process may outlive its API server
        _signal_group(group, signal.SIGKILL)
        self.process.wait()
        _wait_group_gone(group, time.monotonic() + 5.0)  # orphans are reaped by init


@contextmanager
def serve_model(model_dir: Path | str, adapter: Path | str | None = None, backend: str = "auto",
                host: str = "127.0.0.1", port: int | None = None,
                served_name: str | None = None, vllm_bin: str | None = None,
                extra_args: Sequence[str] = (), dtype: str = "auto",
                startup_timeout_s: float = 300.0,
                log_path: Path | str | None = None) -> Iterator[ModelServer]:
    """A ready server for `model_dir` (merged, or the base of `adapter`) for the block; it is
    stopped when the block ends, raises or is interrupted.

    The served name defaults to the adapter's folder name, else the model's; `port` None
    (or 0) picks a free one. Bad input raises ServeError before anything starts; a server that
    exits or does not answer within `startup_timeout_s` raises ServeError with its log tail.
    Call from the main thread, or a thread outliving the server: the kernel's parent-death
    signal fires when the thread that started the child ends.
    """
    server = start_server(model_dir, adapter=adapter, backend=backend, host=host, port=port,
                          served_name=served_name, vllm_bin=vllm_bin, extra_args=extra_args,
                          dtype=dtype, log_path=log_path)
    try:
        server.wait_ready(startup_timeout_s)
        yield server
    finally:
        server.stop()


def start_server(model_dir: Path | str, adapter: Path | str | None = None,
                 backend: str = "auto", host: str = "127.0.0.1", port: int | None = None,
                 served_name: str | None = None, vllm_bin: str | None = None,
                 extra_args: Sequence[str] = (), dtype: str = "auto",
                 log_path: Path | str | None = None) -> ModelServer:
    """Checks the input and starts the server process, without waiting for it; the caller
    owns it (`wait_ready`, `stop`). `serve_model` is the safe way to use this."""
    if dtype not in DTYPES:
        raise ServeError("bad_dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}",
                         field="dtype")
    gguf = Path(model_dir).suffix == ".gguf"
    if gguf and adapter is not None:
        raise ServeError("adapter_with_gguf", "a .gguf is served as it is; export the merged "
                         "model (tunesmith export gguf) instead of adding an adapter",
                         field="adapter")
    model_dir = check_gguf_file(model_dir) if gguf else check_model_dir(model_dir)
    adapter = check_adapter_dir(adapter) if adapter is not None else None
    name = served_name or (adapter.name if adapter else model_dir.stem if gguf
                           else model_dir.name)
    chosen, vllm_path = choose_backend(backend, vllm_bin, model=model_dir)
    port = check_port_free(host, port) if port else free_port(host)
    if chosen == "llama_cpp":
        command = llama_cpp_command(model_dir, host=host, port=port, served_name=name,
                                    extra_args=extra_args)
    elif chosen == "vllm":
        command = vllm_command(model_dir, host=host, port=port, served_name=name,
                               adapter=adapter, vllm_bin=vllm_path or "vllm", dtype=dtype,
                               extra_args=extra_args,
                               tool_parser=tool_call_parser(model_dir, extra_args))
    else:
        command = [sys.executable, "-m", "evaluator.serving.hf_app", str(model_dir),
                   "--served-name", name, "--host", host, "--port", str(port), "--dtype", dtype,
                   *(["--adapter", str(adapter)] if adapter is not None else []), *extra_args]
    if log_path is None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)  # a served name may hold "/"
        fd, log_name = tempfile.mkstemp(prefix=f"tunesmith-serve-{safe}-", suffix=".log")
        os.close(fd)
        log_path = log_name
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    ensure_hf_home(env)
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True,
                                       preexec_fn=_die_with_parent(os.getpid()))
        except OSError as exc:
            raise ServeError("server_not_started", f"cannot run {command[0]}: {exc}",
                             field="backend") from None
    return ModelServer(base_url=f"http://{_connect_host(host)}:{port}/v1", name=name,
                       backend=chosen, process=process, log_path=log_path, command=command)


def choose_backend(backend: str, vllm_bin: str | None = None,
                   model: Path | str | None = None) -> tuple[str, str | None]:
    """("vllm", its executable), ("transformers", None) or ("llama_cpp", None). A .gguf
    `model` is served by llama_cpp (llama-cpp-python's server), and only by it. Otherwise
    `auto` takes vLLM only where it is installed and a CUDA device is visible; `vllm`
    without vLLM is an error."""
    if backend not in BACKENDS:
        raise ServeError("bad_backend", f"backend must be one of {', '.join(BACKENDS)}; got "
                         f"{backend!r}", field="backend")
    gguf = model is not None and Path(model).suffix == ".gguf"
    if gguf or backend == "llama_cpp":
        if gguf and backend in ("auto", "llama_cpp"):
            return "llama_cpp", None
        raise ServeError("bad_backend", "a .gguf file is served by the llama_cpp backend and "
                         "a model folder by vllm or transformers; got backend "
                         f"{backend!r} for {model}", field="backend")
    if backend == "transformers":
        return "transformers", None
    found = find_vllm(vllm_bin)
    if backend == "vllm":
        if found is None:
            raise ServeError("vllm_not_found", "vLLM is not installed here: install the gpu "
                             "extra (pip install -e '.[gpu]') or pass --vllm-bin with the "
                             "`vllm` of another environment", field="backend")
        return "vllm", found
    if found is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm", found
    return "transformers", None


def client_snippet(base_url: str, name: str) -> str:
    """Python that talks to the server with the `openai` client, ready to paste."""
    return (f"from openai import OpenAI\n"
            f"client = OpenAI(base_url={json.dumps(base_url)}, api_key=\"EMPTY\")\n"
            f"reply = client.chat.completions.create(model={json.dumps(name)}, "
            f"messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}])\n"
            f"print(reply.choices[0].message.content)\n")


def free_port(host: str) -> int:
    """A port the OS reports free on `host` now (another process could still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and vLLM bind
        try:
            sock.bind((host, port))
        except OverflowError:
            raise ServeError("bad_port", f"{port} is not a port (1-65535)", field="port") from None
        except OSError as exc:
            raise ServeError("port_in_use", f"cannot listen on {host}:{port}: {exc.strerror}",
                             field="port") from None
    return port


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}
    return wildcard.get(host, f"[{host}]" if ":" in host else host)


def _die_with_parent(parent_pid: int):
    """preexec_fn for the server: Linux kills it when its parent dies, so a crashed caller
    leaves no server holding the port and the GPU."""
    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _wait_group_gone(group: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


# Loopback polling must not go through an HTTP proxy configured in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> bytes | None:
    """The body of a 200 answer, else None (not listening yet, or not ready)."""
    try:
        with _DIRECT.open(url, timeout=5) as response:
            return response.read() if response.status == 200 else None
    except (OSError, http.client.HTTPException):  # URLError, refused, reset, half-started
        return None


def _model_ids(base_url: str) -> list[str]:
    body = _get(base_url + "/models")
    try:
        return [entry["id"] for entry in json.loads(body or b"{}").get("data", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
