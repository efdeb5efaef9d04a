"""`python -m evaluator.serving.hf_app MODEL_DIR`: transformers' OpenAI-compatible server for
one local model (or a base model plus a LoRA adapter) under a served name, with prompt
log-probabilities.

`transformers serve` 5.23 alone does not meet the evaluator's contract: pinned to a local
folder, its /v1/models lists the Hugging Face cache instead, requests must name the folder's
full path, and its /v1/completions takes string prompts only and ignores `echo`/`logprobs`.
This app is assembled from the parts `transformers.cli.serve.Serve` uses (ModelManager,
GenerationState, the handlers, `build_server`) and changes three things; everything else
(chat templates, generation, streaming) is transformers' own code:

1. The served name: /v1/models lists it, a request naming it (or no model) reaches the loaded
   model, any other name gets vLLM's 404, and responses carry the name, not the path.
2. /v1/completions with `echo` and `logprobs` returns prompt log-probabilities in vLLM's
   format (echo_completion.py); other completions go to transformers' handler.
3. `--adapter` attaches a PEFT adapter, un-merged, to the model the ModelManager loaded.

The routes that would change what is served are removed: /reset unloads the model (the next
request would reload the base without its adapter); /load_model and
/v1/audio/transcriptions load other models.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from evaluator.serving.echo_completion import EchoCompletionHandler, wants_prompt_logprobs
from evaluator.serving.errors import ApiError, ServeError
from evaluator.serving.inputs import check_adapter_dir, check_model_dir, ensure_hf_home

FORWARDED_ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/systemone")
REPLACED_ROUTES = {*FORWARDED_ROUTES, "/v1/models", "/v1/completions"}
REMOVED_ROUTES = {"/reset", "/load_model", "/v1/audio/transcriptions"}


class PinnedModel:
    """The one model this server answers for: which request names reach it, and its served
    name in place of the folder path in what transformers' handlers answer."""

    def __init__(self, served_name: str, force_model: str, model_id: str):
        self.served_name = served_name
        self.force_model = force_model  # the folder path transformers' handlers expect
        self._internal_names = {force_model, model_id}  # model_id: "<path>@main"

    def claim(self, body: dict) -> None:
        """Points a request for the served name at the loaded model; 404 for other names."""
        requested = body.get("model")
        if requested is not None and requested != self.served_name:
            raise ApiError(404, f"model '{requested}' is not served here; this server serves "
                                f"'{self.served_name}'")
        body["model"] = self.force_model

    def rename(self, response: Response) -> Response:
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._renamed_stream(response.body_iterator)
            return response
        if isinstance(response, JSONResponse):
            return JSONResponse(self._renamed(json.loads(response.body)),
                                status_code=response.status_code)
        return response

    def _renamed(self, value: object) -> object:
        if isinstance(value, dict):
            return {key: self.served_name if key == "model" and item in self._internal_names
                    else self._renamed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._renamed(item) for item in value]
        return value

    async def _renamed_stream(self, chunks: AsyncIterator[str | bytes]) -> AsyncIterator[str]:
        async for chunk in chunks:  # whole server-sent events: "data: {json}\n\n", one or more
            text = chunk.decode() if isinstance(chunk, bytes) else chunk
            yield "\n".join(self._renamed_event_line(line) for line in text.split("\n"))

    def _renamed_event_line(self, line: str) -> str:
        if not line.startswith("data: "):
            return line
        try:
            payload = json.loads(line[len("data: "):])
        except ValueError:  # "data: [DONE]"
            return line
        return "data: " + json.dumps(self._renamed(payload), ensure_ascii=False,
                                     separators=(",", ":"))


def build_app(model_dir: Path, served_name: str, adapter: Path | None = None,
              dtype: str = "auto", device: str = "auto") -> FastAPI:
    """Loads the model (and adapter) and returns the app; HF_HOME must exist already."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    force_model = str(model_dir)
    manager = ModelManager(device=device, dtype=dtype, force_model=force_model)  # loads it now
    model_id = manager.process_model_name(force_model)
    model, processor = manager.load_model_and_processor(model_id)
    if adapter is not None:
        model.load_adapter(str(adapter))  # becomes the active adapter: every request uses it
    tokenizer = getattr(processor, "tokenizer", processor)
    state = GenerationState()
    chat = ChatCompletionHandler(model_manager=manager, generation_state=state)
    completion = CompletionHandler(model_manager=manager, generation_state=state)
    forwarded = {"/v1/chat/completions": chat,
                 "/v1/responses": ResponseHandler(model_manager=manager, generation_state=state),
                 "/v1/systemone": SystemOneHandler(model_manager=manager,
                                                   generation_state=state)}
    app = build_server(manager, chat, completion_handler=completion,
                       response_handler=forwarded["/v1/responses"],
                       transcription_handler=TranscriptionHandler(manager, state),
                       systemone_handler=forwarded["/v1/systemone"], generation_state=state)
    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) not in REPLACED_ROUTES | REMOVED_ROUTES]

    pinned = PinnedModel(served_name, force_model, model_id)
    echo = EchoCompletionHandler(manager, state, model_id, served_name)
    listing = {"object": "list", "data": [{"id": served_name, "object": "model",
                                           "created": int(time.time()), "owned_by": "tunesmith",
                                           "root": force_model}]}

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/v1/models")
    def list_models() -> dict:
        return listing

    @app.post("/v1/completions")
    async def completions(request: Request, body: dict) -> Response:
        pinned.claim(body)
        if wants_prompt_logprobs(body):
            return JSONResponse(await echo.handle_request(body, request.state.request_id))
        if body.get("echo") or body.get("logprobs") is not None:
            raise ApiError(400, "log-probabilities are returned for echoed prompts only: send "
                                "echo true with logprobs (and max_tokens 0 or 1)")
        body["prompt"] = _text_prompt(body.get("prompt", ""), tokenizer)
        return pinned.rename(await completion.handle_request(body, request.state.request_id))

    for path, handler in forwarded.items():
        app.add_api_route(path, _forwarding(handler, pinned), methods=["POST"])
    return app


def _forwarding(handler, pinned: PinnedModel):
    """A route handing the request to a transformers handler under the loaded model's path."""
    async def route(request: Request, body: dict) -> Response:
        pinned.claim(body)
        return pinned.rename(await handler.handle_request(body, request.state.request_id))
    return route


def _text_prompt(prompt: object, tokenizer) -> str:
    """transformers' completion handler takes one string: token ids are decoded first."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                        for t in prompt):
        return tokenizer.decode(prompt)
    raise ApiError(400, "this server generates for one prompt per request: send a string or a "
                        "list of token ids (a batch of prompts only with echo and logprobs)")


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is float32 on CPU, as in the data engine's transformers engine: bf16 matmuls
    there are slow, and their rounding depends on the batch's shape, so a row's prompt
    log-probabilities would change with its batch (measured on SmolLM2-135M: up to 1.65 nats
    per row between batched and single requests)."""
    if dtype != "auto" or device.startswith("cuda"):
        return dtype
    import torch

    return dtype if device == "auto" and torch.cuda.is_available() else "float32"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluator.serving.hf_app",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="merged model, or the adapter's base")
    parser.add_argument("--adapter", type=Path, help="PEFT adapter folder, served un-merged")
    parser.add_argument("--served-name", help="default: the adapter's folder name, else the "
                                              "model's")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", help="auto (the weights' dtype on a GPU, "
                        "float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model_dir = check_model_dir(args.model_dir)
        adapter = check_adapter_dir(args.adapter) if args.adapter is not None else None
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    served_name = args.served_name or (adapter or model_dir).name
    ensure_hf_home(os.environ)  # before transformers imports huggingface_hub, which reads it
    import uvicorn

    print(f"loading {model_dir}" + (f" + adapter {adapter}" if adapter else "")
          + f" as '{served_name}'", file=sys.stderr, flush=True)
    app = build_app(model_dir, served_name, adapter, dtype=resolve_dtype(args.dtype, args.device),
                    device=args.device)
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
