"""The `transformers` engine: a local Hugging Face model, batched with left padding.

The embedded default (SmolLM2-135M-Instruct on CPU) and the engine of the test suite. On a
GPU it works too, but vLLM serves far more rows per second there.

Scoring shares the prompts' common prefix: judge prompts start with the same rubric (87 of
~150 tokens on the judge benchmark), so that prefix runs through the model once per call and
each batch continues from a copy of its KV cache; scores agree with the plain forward to
~5e-5 in log-probability and take about half the time (measured: 5.4 s against 10.1 s for 32
rows on this CPU). vLLM's prefix caching does the same on its own.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

from data_engine.engines.base import (Conversation, EngineError, Generation, SamplingParams,
                                      TokenScores)


# Score through a shared prefix only when it is at least this many tokens (below it the
# prefix pass and the cache copies cost about what they save).
MIN_SHARED_PREFIX = 32


# A reasoning block a template opens in the generation prompt whatever it is asked
# (DeepSeek-R1's `<think>\n`), and what closes it empty, as Qwen3 writes a reply with thinking
# off: the model answers right away.
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"


def fold_system(conversation: Conversation) -> Conversation:
    """The system turn's text put before the first user turn's, for templates with no
    system role (Gemma 2, Mistral v0.3)."""
    system, rest = conversation[0], [dict(m) for m in conversation[1:]]
    first = next((m for m in rest if m["role"] == "user"), None)
    if first is None:
        return [{"role": "user", "content": system["content"]}, *rest]
    first["content"] = f"{system['content']}\n\n{first['content']}"
    return rest


def shared_prefix(ids: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own."""
    if len(ids) < 2:
        return 0
    shortest = min(map(len, ids))
    for k in range(shortest):
        first = ids[0][k]
        if any(seq[k] != first for seq in ids):
            return k
    return max(shortest - 1, 0)


def label_token_ids(tokenizer: Any, label: str) -> list[int]:
    """The single tokens that spell ``label`` as the first token of a reply: the label
    itself and its leading-space variant, where each encodes to exactly one token."""
    found = []
    for variant in (label, " " + label):
        ids = tokenizer.encode(variant, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in found:
            found.append(ids[0])
    return found


class TransformersEngine:
    """Batched generation and next-token scoring with a local transformers model."""

    kind = "transformers"
    supports_logprobs = True
    on_replies: Callable[[int], None] | None = None  # told each batch's replies (`Counted`)

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, share_prefix: bool = True,
                 template_kwargs: dict[str, Any] | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model
        # `engine.chat_template_kwargs`; thinking stays off unless they turn it on
        self.template_kwargs = {"enable_thinking": False, **(template_kwargs or {})}
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" \
            else device
        # bf16 matmuls are slow on most CPUs; float32 is the fast CPU choice for small models.
        torch_dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
                       "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}.get(dtype)
        if torch_dtype is None:
            raise EngineError("bad_dtype", f"{dtype!r} is not auto|float32|bfloat16|float16",
                              "engine.dtype")
        if str(model).startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
            raise EngineError("model_not_loadable", f"{model} is not a folder", "engine.model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise EngineError("model_not_loadable", str(exc).splitlines()[0],
                              "engine.model") from exc
        if not self.tokenizer.chat_template:
            raise EngineError("no_chat_template", f"{model} has no chat template; engines "
                              "need a chat (instruct) model", "engine.model")
        self.lm.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.lm.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

    def render(self, conversation: Conversation) -> str:
        """The conversation as the model's template writes it, up to the reply: with
        the template arguments (`engine.chat_template_kwargs`; by default thinking off,
        `enable_thinking=False`, Qwen3's switch: a judge's score token must come first, not a
        reasoning block's first token, and a rewrite is not its reasoning), a
        reasoning block the template opens anyway (DeepSeek-R1's, Qwen3.5's) closed empty,
        and a system turn folded into the first user turn for templates that refuse one
        (Gemma 2's, which raised on the judge's system prompt)."""
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                      tokenize=False, **self.template_kwargs)
        except TemplateError as exc:
            if not (conversation and conversation[0]["role"] == "system"
                    and "system" in str(exc).lower()):
                raise
            text = self.render(fold_system(conversation))
        if text.endswith(THINK_OPEN):  # the template forces a reasoning block open
            text += THINK_CLOSE
        return text

    def _render_all(self, conversations: list[Conversation]
                    ) -> tuple[list[int], list[str], dict[int, str]]:
        """(indices, texts) of the conversations the template renders, and the error of
        each it refuses: a row's failure, not the call's."""
        from jinja2 import TemplateError

        idx, texts, errors = [], [], {}
        for i, conversation in enumerate(conversations):
            try:
                texts.append(self.render(conversation))
                idx.append(i)
            except TemplateError as exc:
                errors[i] = f"template_error: {exc}"
        return idx, texts, errors

    def _batches(self, conversations: list[Conversation], texts: list[str] | None = None):
        """(indices, encoded inputs) per batch; similar lengths batched together. ``texts``:
        the conversations already rendered."""
        texts = texts if texts is not None else [self.render(c) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
            yield idx, enc.to(self.device)

    def _last_logits(self, texts: list[str]):
        """(indices, a thunk giving each row's next-token logits) per padded batch."""
        for idx, enc in self._batches(texts, texts):
            yield idx, (lambda enc=enc: self.lm(**enc).logits[:, -1, :].float())

    def _suffix_batches(self, ids: list[list[int]], prefix: int):
        """The same, continuing each batch from the shared prefix's KV cache: the prefix runs
        once, every batch gets a copy of its cache, suffixes are right padded and each row's
        logits are read at its own last token."""
        import torch

        head = torch.tensor([ids[0][:prefix]], device=self.device)
        with torch.inference_mode():
            cache = self.lm(input_ids=head, use_cache=True).past_key_values
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            tails = [ids[i][prefix:] for i in idx]
            width = max(map(len, tails))
            inputs = torch.tensor([t + [pad] * (width - len(t)) for t in tails],
                                  device=self.device)
            mask = torch.tensor([[1] * (prefix + len(t)) + [0] * (width - len(t))
                                 for t in tails], device=self.device)
            positions = (prefix + torch.arange(width, device=self.device)).expand(len(idx), -1)
            last = torch.tensor([len(t) - 1 for t in tails], device=self.device)

            def forward(inputs=inputs, mask=mask, positions=positions, last=last):
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(last))
                logits = self.lm(input_ids=inputs, attention_mask=mask, position_ids=positions,
                                 past_key_values=batch_cache).logits
                return logits[torch.arange(len(last), device=self.device), last].float()
            yield idx, forward

    def generate(self, conversations: list[Conversation], params: SamplingParams
                 ) -> list[Generation]:
        import torch

        out: list[Generation | None] = [None] * len(conversations)
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id,
                                  "eos_token_id": sorted(self.eos_ids)}
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        rendered, texts, errors = self._render_all(conversations)
        for i, error in errors.items():
            out[i] = Generation("", "error", 0, error)
        for batch, enc in self._batches([conversations[i] for i in rendered], texts):
            idx = [rendered[k] for k in batch]
            try:
                with torch.inference_mode():
                    seqs = self.lm.generate(**enc, **kwargs)
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: these rows fail
                for i in idx:
                    out[i] = Generation("", "error", 0, f"generation_failed: {exc}")
            else:
                new = seqs[:, enc["input_ids"].shape[1]:].tolist()
                for i, tokens in zip(idx, new):
                    out[i] = self._finish(tokens, params)
            if self.on_replies is not None:
                self.on_replies(len(idx))
        if errors and self.on_replies is not None:
            self.on_replies(len(errors))
        return out  # type: ignore[return-value]

    def _finish(self, tokens: list[int], params: SamplingParams) -> Generation:
        pad = self.tokenizer.pad_token_id
        stopped_at = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if stopped_at is not None:
            tokens = tokens[:stopped_at]
        elif pad is not None:  # a finished row in a batch is padded after its last token
            while tokens and tokens[-1] == pad:
                tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        reason = "stop" if stopped_at is not None else "length"
        for stop in params.stop:  # OpenAI semantics: the stop string is not returned
            cut = text.find(stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Generation(text, reason, len(tokens))

    def next_token_scores(self, conversations: list[Conversation], labels: list[str]
                          ) -> list[TokenScores]:
        import torch

        variants = {label: label_token_ids(self.tokenizer, label) for label in labels}
        unspellable = [label for label, ids in variants.items() if not ids]
        if unspellable:
            raise EngineError("label_not_one_token", f"labels {unspellable} are not single "
                              f"tokens for {self.model}'s tokenizer; use a 1-5 scale",
                              "judge.scale")
        out: list[TokenScores | None] = [None] * len(conversations)
        rendered, texts, errors = self._render_all(conversations)
        for i, error in errors.items():
            out[i] = TokenScores(error=error)
        ids = (self.tokenizer(texts, add_special_tokens=False)["input_ids"]
               if self.share_prefix and len(texts) > 1 else [])
        prefix = shared_prefix(ids)
        batches = (self._suffix_batches(ids, prefix) if prefix >= MIN_SHARED_PREFIX
                   else self._last_logits(texts))
        for batch, forward in batches:
            idx = [rendered[k] for k in batch]
            try:
                with torch.inference_mode():
                    logits = forward()
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: these rows fail
                for i in idx:
                    out[i] = TokenScores(error=f"scoring_failed: {exc}")
                continue
            logp = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(idx):
                scores = {label: float(torch.logsumexp(logp[row, ids], dim=0))
                          for label, ids in variants.items()}
                out[i] = TokenScores({k: v for k, v in scores.items() if v > -math.inf})
        return out  # type: ignore[return-value]

    def close(self) -> None:
        del self.lm
