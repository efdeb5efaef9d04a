"""The `vllm` engine: in-process vLLM behind Ray Data's LLM processor (`ray.data.llm`).

Thin on purpose: Ray's `vLLMEngineProcessorConfig` + `build_processor` own the actor pool
(one vLLM engine per GPU, `replicas` of them), chat templating, batching and per-row error
capture. This class turns conversations into a dataset, runs the processor and maps the
rows back to `Generation` / `TokenScores` in input order.

vLLM (and Ray's LLM extra) are optional: this module imports without them, and building
the engine without them raises `EngineError("vllm_missing")` naming the extra to install.
`import vllm` itself only ever happens inside Ray's actors.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from data_engine.engines.base import (Conversation, EngineError, Generation, SamplingParams,
                                      TokenScores)
from data_engine.engines.openai_engine import TOP_LOGPROBS, cut_at_stop, label_logprobs

if TYPE_CHECKING:
    from data_engine.config import EngineConfig

# Carried through every processor stage, so output rows map back to inputs in any order.
ROW_INDEX = "ts_row_index"
_INSTALL = "install the gpu extra: pip install 'tunesmith[gpu]' (vllm and ray[llm])"


def require_vllm() -> None:
    """Fail fast, before any model is resolved or any actor started, when vLLM is absent."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineError("vllm_missing", f"vLLM is not installed; {_INSTALL}", "engine.kind")


def vllm_sampling(params: SamplingParams) -> dict[str, Any]:
    """Our sampling parameters as keyword arguments of `vllm.SamplingParams`."""
    out: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p,
                           "max_tokens": params.max_tokens}
    if params.stop:  # an empty list column has no Arrow type worth keeping
        out["stop"] = list(params.stop)
    if params.seed is not None:
        out["seed"] = params.seed
    return out


def first_token_top(logprobs: Any) -> list[tuple[str, float]]:
    """(decoded token, logprob) of the candidates at the first generated position.

    Ray's vLLM stage reports, per position, ``{token_id: {logprob, rank, decoded_token}}``;
    after a trip through Arrow it may be a dict or a list of those entries, with None for
    keys other rows had, so both shapes are read and empty entries skipped.
    """
    if logprobs is None or len(logprobs) == 0:
        return []
    first = logprobs[0]
    entries = first.values() if isinstance(first, dict) else first
    return [(entry["decoded_token"], float(entry["logprob"])) for entry in entries
            if entry and entry.get("decoded_token") is not None
            and entry.get("logprob") is not None]


def output_row(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's postprocess: only the columns we read back (runs in Ray workers)."""
    top = first_token_top(row.get("logprobs"))
    return {ROW_INDEX: row[ROW_INDEX], "text": row.get("generated_text") or "",
            "tokens": int(row.get("num_generated_tokens") or 0),
            "top_tokens": [t for t, _ in top], "top_logprobs": [lp for _, lp in top],
            "has_logprobs": row.get("logprobs") is not None}


class VLLMEngine:
    """Batched generation and next-token scoring with vLLM actors run by Ray Data."""

    kind = "vllm"
    supports_logprobs = True

    def __init__(self, model: str, batch_size: int = 16, replicas: int = 1,
                 max_model_len: int = 4096, engine_kwargs: dict[str, Any] | None = None,
                 template_kwargs: dict[str, Any] | None = None):
        require_vllm()
        try:
            from ray.data.llm import build_processor, vLLMEngineProcessorConfig
        except ImportError as exc:  # ray.data.llm needs ray[llm] (aiohttp, ...)
            raise EngineError("vllm_missing", f"ray.data.llm cannot be imported ({exc}); "
                              f"{_INSTALL}", "engine.kind") from exc

        self.model = model
        config = vLLMEngineProcessorConfig(
            model_source=model,
            batch_size=batch_size,
            concurrency=replicas,
            engine_kwargs={"max_model_len": max_model_len, "max_logprobs": TOP_LOGPROBS,
                           **(engine_kwargs or {})},
            # A failing row gets `__inference_error__` instead of failing the dataset.
            should_continue_on_error=True,
            # vLLM's own detokenizer already applies stop strings; Ray's stage would
            # re-decode the stop string's tokens back into the text.
            detokenize_stage=False,
        )
        # `engine.chat_template_kwargs`, for Ray's chat-template stage
        self.processor = build_processor(config, postprocess=output_row, builder_kwargs={
            "chat_template_kwargs": {"enable_thinking": False, **(template_kwargs or {})}})

    @classmethod
    def from_config(cls, config: "EngineConfig") -> "VLLMEngine":
        from data_engine.engines import resolve_model

        require_vllm()  # before resolve_model, which may convert the default model
        return cls(resolve_model(config.model), batch_size=config.batch_size,
                   replicas=config.replicas, max_model_len=config.max_model_len,
                   template_kwargs=config.chat_template_kwargs)

    def _run(self, conversations: list[Conversation], sampling: dict[str, Any]
             ) -> list[dict[str, Any] | None]:
        """One output row per conversation, in input order (None where one went missing)."""
        from data_engine.executor import ray_data

        if not conversations:
            return []
        ds = ray_data().from_items([{ROW_INDEX: i, "messages": conv, "sampling_params": sampling}
                                  for i, conv in enumerate(conversations)])
        by_index = {int(row[ROW_INDEX]): row for row in self.processor(ds).take_all()}
        return [by_index.get(i) for i in range(len(conversations))]

    @staticmethod
    def _row_error(row: dict[str, Any] | None) -> str | None:
        if row is None:
            return "missing_row: the processor returned no row for this input"
        failure = row.get("__inference_error__")
        return f"inference_error: {failure}" if failure else None

    def generate(self, conversations: list[Conversation], params: SamplingParams
                 ) -> list[Generation]:
        out = []
        for row in self._run(conversations, vllm_sampling(params)):
            error = self._row_error(row)
            if error:
                out.append(Generation("", "error", 0, error))
                continue
            text, cut = cut_at_stop(row["text"], params.stop)
            # Ray's output has no finish reason: a reply that used its whole budget without
            # a stop string is taken as cut by length (rarely, it ended on eos exactly there).
            reason = "length" if row["tokens"] >= params.max_tokens and not cut else "stop"
            out.append(Generation(text, reason, row["tokens"]))
        return out

    def next_token_scores(self, conversations: list[Conversation], labels: list[str]
                          ) -> list[TokenScores]:
        sampling = {"temperature": 0.0, "max_tokens": 1, "logprobs": TOP_LOGPROBS}
        out = []
        for row in self._run(conversations, sampling):
            error = self._row_error(row)
            if error:
                out.append(TokenScores(complete=False, error=error))
            elif not row["has_logprobs"]:
                out.append(TokenScores(complete=False, error="no_logprobs: vLLM returned none"))
            else:
                top = list(zip(row["top_tokens"], row["top_logprobs"]))
                out.append(TokenScores(label_logprobs(top, labels), complete=False))
        return out

    def close(self) -> None:
        # The processor's actors live only while a dataset runs; nothing is held between.
        self.processor = None
