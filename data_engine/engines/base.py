"""The engine interface: batched chat generation and next-token log-probabilities.

Every model-powered stage (synthesis, judging) talks to an `Engine` and nothing else, so
the same stage runs on the embedded transformers model, an OpenAI-compatible server or
in-process vLLM. Failures are per row: a request that fails after its retries comes back
as a `Generation` with `error` set, never as a missing row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

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
