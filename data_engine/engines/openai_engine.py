"""The `openai` engine: any OpenAI-compatible chat server (vLLM's server, a hosted API,
`transformers serve`), called concurrently from a thread pool.

Retries are ours, not the client's (it is built with ``max_retries=0``): exponential
backoff with jitter on connection errors, timeouts, 408/409/429 and 5xx, no retry on other
4xx. A request that still fails becomes one row with ``error="<code>: <message>"``; a row is
never dropped and one row's failure never raises.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from data_engine.engines.base import (Conversation, EngineError, Generation, SamplingParams,
                                      TokenScores)

if TYPE_CHECKING:
    from data_engine.config import EngineConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
I = TypeVar("I")

# OpenAI caps top_logprobs at 20, and so does vLLM's default `max_logprobs`.
TOP_LOGPROBS = 20
_RETRYABLE_STATUS = {408: "timeout", 409: "conflict", 429: "rate_limited"}
_FINAL_STATUS = {401: "auth_error", 403: "auth_error", 404: "not_found"}
_MAX_MESSAGE = 300


class RequestFailed(Exception):
    """One request's final failure, with a stable code (after its retries, if any)."""

    def __init__(self, code: str, message: str, attempts: int = 1):
        self.code = code
        self.message = message
        self.attempts = attempts
        super().__init__(self.describe())

    def describe(self) -> str:
        tail = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.code}: {self.message[:_MAX_MESSAGE]}{tail}"


def classify(exc: Exception) -> tuple[str, bool]:
    """(stable error code, retry?) for an exception raised by the openai client."""
    import openai

    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error", True
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in _RETRYABLE_STATUS:
            return _RETRYABLE_STATUS[status], True
        if status >= 500:
            return "server_error", True
        return _FINAL_STATUS.get(status, "bad_request"), False
    return "bad_response", False  # e.g. a reply that is not a chat completion


def cut_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string (OpenAI semantics: the stop string is not
    returned). Some servers (`transformers serve`) return it; this makes them agree."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def label_logprobs(top: list[tuple[str, float]], labels: list[str]) -> dict[str, float]:
    """Log of the summed probability of the top tokens that spell each label once leading
    whitespace is stripped ("4" and " 4" both count for "4"). Labels absent from ``top``
    are left out, not given -inf."""
    seen: set[tuple[str, float]] = set()
    mass = {label: 0.0 for label in labels}
    for token, logprob in top:
        if (token, logprob) in seen:  # the sampled token may be listed twice
            continue
        seen.add((token, logprob))
        key = token.lstrip()
        if key in mass:
            mass[key] += math.exp(logprob)
    return {label: math.log(p) for label, p in mass.items() if p > 0.0}


class OpenAIEngine:
    """Chat generation and next-token scoring against an OpenAI-compatible server."""

    kind = "openai"
    on_replies: Callable[[int], None] | None = None  # told of each reply (`Counted`)

    def __init__(self, model: str, base_url: str, api_key: str | None = None,
                 max_concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 3,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 template_kwargs: dict[str, Any] | None = None):
        import openai

        self.model = model
        # Sent as `chat_template_kwargs` (a vLLM extension most local servers share) until a
        # server rejects the field; None: not sent.
        self.template_kwargs = dict(template_kwargs) if template_kwargs else None
        self._lock = threading.Lock()
        self.base_url = base_url
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        # Unknown until a server answers; set False by the first reply without logprobs.
        self.supports_logprobs = True
        # Constructing the client does no I/O: an unreachable server fails rows, not this.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY",
                                    timeout=timeout_s, max_retries=0)
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency,
                                       thread_name_prefix="openai-engine")
        # Set on an interrupt (Ctrl+C): no retry starts, and waiting rows are dropped, where
        # each worker went on retrying, (1 + max_retries) x timeout_s of silence.
        self._stopping = threading.Event()

    @classmethod
    def from_config(cls, config: "EngineConfig") -> "OpenAIEngine":
        if not config.base_url:
            raise EngineError("no_base_url", "the openai engine needs the server's /v1 URL",
                              "engine.base_url")
        return cls(config.model, config.base_url, api_key=os.environ.get(config.api_key_env),
                   max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                   max_retries=config.max_retries, template_kwargs=config.chat_template_kwargs)

    def _backoff(self, attempt: int) -> float:
        """Equal jitter: half the exponential delay fixed, half random, so clients that
        failed together do not retry together."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        return delay / 2 + random.uniform(0.0, delay / 2)

    def _with_retries(self, call: Callable[[], T]) -> T:
        """``call()``'s result, retrying transient failures; raises `RequestFailed`."""
        import openai

        attempt = 0
        while True:
            if self._stopping.is_set():
                raise RequestFailed("cancelled", "the run was interrupted", attempt)
            try:
                return call()
            except (openai.OpenAIError, ValueError) as exc:
                # ValueError: a 200 whose body is cut short (the server died writing it) is
                # no JSON; as transient as a dropped connection
                code, retry = classify(exc) if isinstance(exc, openai.OpenAIError) else \
                    ("bad_response", True)
                if not retry or attempt >= self.max_retries or self._stopping.is_set():
                    raise RequestFailed(code, str(exc), attempt + 1) from exc
            self._stopping.wait(self._backoff(attempt))
            attempt += 1

    def _chat(self, conversation: Conversation, **kwargs: Any) -> Any:
        def call() -> Any:
            sent = self.template_kwargs
            extra = {"chat_template_kwargs": sent} if sent else None
            return self.client.chat.completions.create(
                model=self.model, messages=conversation, extra_body=extra, **kwargs)

        try:
            return self._with_retries(call)
        except RequestFailed as failed:
            if not (failed.code == "bad_request" and self.template_kwargs
                    and "chat_template_kwargs" in failed.message):
                raise
        # A server that takes only OpenAI's own fields (a hosted API) refuses the extension:
        # the rest of the run goes without it.
        with self._lock:
            if self.template_kwargs:
                log.warning("openai engine: %s rejects `chat_template_kwargs`; requests go "
                            "without it (engine.chat_template_kwargs: {} says so up front)",
                            self.base_url)
                self.template_kwargs = None
        return self._with_retries(call)

    def _map(self, fn: Callable[[I], T], items: list[I], on_error: Callable[[str], T]
             ) -> list[T]:
        """``fn`` over the items (conversations), in input order, at most max_concurrency at
        once. An exception nobody foresaw still fails only its own row."""
        def guarded(item: I) -> T:
            try:
                return fn(item)
            except Exception as exc:  # noqa: BLE001 - the interface promises a row per input
                return on_error(f"internal_error: {type(exc).__name__}: {exc}")

        try:
            return list(self.pool.map(guarded, items))
        except BaseException:  # Ctrl+C while waiting: stop the workers, do not wait them out
            self.stop()
            raise

    def stop(self) -> None:
        """Ends the engine's work at once: queued rows are dropped, no retry starts, and
        requests in flight are cut by closing the client's connections."""
        self._stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 tools: Sequence[list[dict[str, Any]] | None] | None = None
                 ) -> list[Generation]:
        """Replies in input order. ``tools``: per conversation, the tool definitions its
        prompt offers (None: none), sent with `tool_choice: none`: the server renders them
        into the prompt as training did, and answers in text (vLLM needs no tool parser for
        that; `auto` without one is a 400)."""
        kwargs: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p,
                                  "max_tokens": params.max_tokens}
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        offered = list(tools) if tools is not None else [None] * len(conversations)
        if len(offered) != len(conversations):
            raise ValueError(f"{len(offered)} tool lists for {len(conversations)} conversations")

        def one(pair: tuple[Conversation, list[dict[str, Any]] | None]) -> Generation:
            conversation, defs = pair
            extra = {"tools": defs, "tool_choice": "none"} if defs else {}
            try:
                return self._generate_one(conversation, params, {**kwargs, **extra})
            finally:
                if self.on_replies is not None:
                    self.on_replies(1)

        return self._map(one, list(zip(conversations, offered)),
                         lambda error: Generation("", "error", 0, error))

    def _generate_one(self, conversation: Conversation, params: SamplingParams,
                      kwargs: dict[str, Any]) -> Generation:
        try:
            reply = self._chat(conversation, **kwargs)
            choice = reply.choices[0]
        except RequestFailed as failed:
            return Generation("", "error", 0, failed.describe())
        except (IndexError, AttributeError, TypeError) as exc:  # a malformed 200 reply
            return Generation("", "error", 0, f"bad_response: {exc}")
        tokens = reply.usage.completion_tokens if reply.usage else 0
        if choice.finish_reason == "content_filter":
            return Generation(choice.message.content or "", "error", tokens,
                              "content_filter: the server filtered this reply")
        text, cut = cut_at_stop(choice.message.content or "", params.stop)
        reason = "length" if choice.finish_reason == "length" and not cut else "stop"
        return Generation(text, reason, tokens,
                          prompt_tokens=reply.usage.prompt_tokens if reply.usage else None,
                          tool_calls=_server_calls(choice.message))

    def next_token_scores(self, conversations: list[Conversation], labels: list[str]
                          ) -> list[TokenScores]:
        return self._map(lambda conv: self._score_one(conv, labels), conversations,
                         lambda error: TokenScores(complete=False, error=error))

    def _score_one(self, conversation: Conversation, labels: list[str]) -> TokenScores:
        if not self.supports_logprobs:
            return TokenScores(complete=False, error=f"no_logprobs: {self.base_url} does not "
                               "return logprobs")
        try:
            reply = self._chat(conversation, max_tokens=1, temperature=0.0, logprobs=True,
                               top_logprobs=TOP_LOGPROBS)
            content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
        except RequestFailed as failed:
            if failed.code == "bad_request" and "logprob" in failed.message.lower():
                self.supports_logprobs = False  # the server rejects the flag outright
                return TokenScores(complete=False, error=f"no_logprobs: {failed.describe()}")
            return TokenScores(complete=False, error=failed.describe())
        except (IndexError, AttributeError, TypeError) as exc:
            return TokenScores(complete=False, error=f"bad_response: {exc}")
        if not content:  # the server ignored the flag
            self.supports_logprobs = False
            return TokenScores(complete=False, error=f"no_logprobs: {self.base_url} answered "
                               "without logprobs")
        first = content[0]
        top = [(t.token, t.logprob) for t in first.top_logprobs or []]
        top.append((first.token, first.logprob))
        return TokenScores(label_logprobs(top, labels), complete=False)

    def close(self) -> None:
        self.pool.shutdown(wait=not self._stopping.is_set(), cancel_futures=True)
        self.client.close()


def _server_calls(message: Any) -> list[tuple[str, Any]] | None:
    """(name, arguments as the server sent them: JSON text) of the calls it returned in
    `tool_calls`; None when it returned none."""
    calls = [(call.function.name, call.function.arguments)
             for call in getattr(message, "tool_calls", None) or []
             if getattr(call, "function", None) is not None]  # not custom (non-function) ones
    return calls or None
