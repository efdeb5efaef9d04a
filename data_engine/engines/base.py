"""The engine interface: batched chat generation and next-token log-probabilities.

Every model-powered stage (synthesis, judging) talks to an `Engine` and nothing else, so
the same stage runs on the embedded transformers model, an OpenAI-compatible server or
in-process vLLM. Failures are per row: a request that fails after its retries comes back
as a `Generation` with `error` set, never as a missing row.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `seed` makes sampling repeatable where the engine supports it."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = SamplingParams(temperature=0.0)


@dataclass
class Generation:
    """One reply. `finish_reason` is "stop" (end of turn or a stop string), "length"
    (hit `max_tokens`) or "error"; `error` then says why, as `code: message`."""

    text: str
    finish_reason: str
    tokens: int = 0
    error: str | None = None
    prompt_tokens: int | None = None  # the prompt as the server rendered it, where it says
    # (name, arguments' JSON text) of the calls a server parsed out of the reply into
    # `tool_calls` (transformers' server does so for Qwen and Gemma 4 models whatever
    # `tool_choice` says, leaving them out of `text`); None when it returned none
    tool_calls: list[tuple[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TokenScores:
    """Next-token log-probabilities of the candidate labels at one position.

    `logprobs` maps each label to the log of the summed probability of its token variants
    (e.g. "4" and " 4"); a label absent from what the engine returned is missing. `complete`
    is False when the engine only reported its top tokens (OpenAI `top_logprobs`), so a
    missing label may still have had a little probability.
    """

    logprobs: dict[str, float] = field(default_factory=dict)
    complete: bool = True
    error: str | None = None


class EngineError(Exception):
    """An engine could not be built or reached at all (per-request failures are rows)."""

    def __init__(self, code: str, message: str, field: str = "engine"):
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{field}: {code}: {message}")


class Engine(Protocol):
    """What stages need from a model. Implementations: transformers, openai, vllm."""

    kind: str
    model: str
    supports_logprobs: bool

    def generate(self, conversations: list[Conversation], params: SamplingParams
                 ) -> list[Generation]:
        """One reply per conversation, in order."""
        ...

    def next_token_scores(self, conversations: list[Conversation], labels: list[str]
                          ) -> list[TokenScores]:
        """For each conversation, the log-probabilities of ``labels`` as the first token of
        the assistant's reply."""
        ...

    def close(self) -> None:
        ...


class WithoutLogprobs:
    """An engine presented as a chat API without log-probabilities (generation only), as
    `transformers serve` and some hosted APIs are: compares the probability judge with the
    text-parsing one on the same model."""

    supports_logprobs = False

    def __init__(self, engine: Engine):
        self.engine = engine
        self.kind, self.model = engine.kind, engine.model

    def generate(self, conversations: list[Conversation], params: SamplingParams
                 ) -> list[Generation]:
        return self.engine.generate(conversations, params)

    def next_token_scores(self, conversations: list[Conversation], labels: list[str]
                          ) -> list[TokenScores]:
        raise EngineError("no_logprobs", f"{self.model} is used without log-probabilities")

    def close(self) -> None:
        """The wrapped engine belongs to the caller, who closes it."""


class Counted:
    """``engine`` counting the replies it makes, for progress while a generator runs (one
    generator call can hold thousands of generations, over several engine calls).

    `done` moves as the engine finishes rows where it says so (its `on_replies` hook: per
    batch for transformers, per request for openai), else when each call returns (vllm).
    ``on_change`` hears the counts after every move (from the engine's threads, in any
    order); another thread may read them at any time (the data run's driver asks the worker
    actor). `detach` unhooks the engine. Generators only generate (and name the engine by
    kind and model); the engine's owner closes it."""

    def __init__(self, engine: Any,
                 on_change: Callable[[dict[str, int]], None] | None = None):
        self.engine = engine
        self.kind, self.model = engine.kind, engine.model
        self.calls = 0  # generate calls started
        self.asked = 0  # rows asked for so far, the running call's included
        self.done = 0  # replies made
        self._lock = threading.Lock()
        self._on_change = on_change
        self._hooked = hasattr(engine, "on_replies")
        if self._hooked:
            engine.on_replies = self._replied

    def _replied(self, count: int) -> None:
        with self._lock:
            self.done += count
            counts = self._counts()
        if self._on_change is not None:
            self._on_change(counts)

    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 **kwargs: Any) -> list[Generation]:
        with self._lock:
            self.calls += 1
            self.asked += len(conversations)
            before = self.done
        try:
            return self.engine.generate(conversations, params, **kwargs)
        finally:
            with self._lock:  # every row has its reply now, failed ones included
                self.done = before + len(conversations)
                counts = self._counts()
            if self._on_change is not None:
                self._on_change(counts)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, int]:
        return {"calls": self.calls, "asked": self.asked, "done": self.done}

    def detach(self) -> None:
        if self._hooked:
            self.engine.on_replies = None


def progress_line(counts: dict[str, int]) -> str:
    """`Counted.counts` as a progress line's tail: `180/256 replies (call 3)`; the rows
    asked grow with each call (a generator decides its next call from the replies)."""
    return f"{counts['done']:,}/{counts['asked']:,} replies (call {counts['calls']})"
