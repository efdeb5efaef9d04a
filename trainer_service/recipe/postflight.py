"""Postflight: save the adapter, merge it into the unquantized base, and prove the merge worked.

The founding failures this guards against: a model that never emitted `<|im_end|>` (so it
never stopped and looped `」」」」`), and merges that silently did nothing or lost precision.
Each step checks its own result and raises `VerifyError` with a code a job can fail on:

- `merge_adapter` loads the base in its own precision (bf16, fp16 or fp32 as its config
  says; bf16 when it says none), never into 4-bit weights, merges with `safe_merge`, saves
  the *returned* model, and writes a generation config that stops on the end-of-turn token.
  The merged folder must hold no adapter files.
- `check_parity` compares logits of base+adapter with the merged model, and the merged model
  with the base: a merge that changed nothing is `merge_noop`.
- `sanity_generate` decodes held-out prompts greedily and fails on `no_stop` / `degenerate`.

Parity and the sanity generation run on the GPU when there is one with room for the model,
else on the CPU (an 8B model in float32 is 32 GB of weights, all read from memory for each
generated token); each report says where.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from data_engine.config import RepetitionConfig
from data_engine.filters.repetition import is_degenerate
from trainer_service.recipe.chat_format import (call_format, normalize_messages,
                                                parse_tool_calls, row_parts)
from trainer_service.recipe.errors import VerifyError

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
# What PEFT writes; none of these may appear in a merged folder.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")

# Parity tolerances, for logits computed in float32 from weights stored in bf16. The merged
# weight W+BA is rounded to bf16 once (relative error <= 2^-9 per weight); base+adapter keeps
# BA unrounded, so the difference is that rounding, carried through every layer, and it grows
# with the adapter's size. Measured on SmolLM2-135M (30 layers, bf16 base), rank-16 LoRA on
# all linear layers, merged vs base+adapter:
#   adapter moving the base by KL 4e-4 (8 rows):      max |d| 0.21, mean KL 8e-5
#   adapter moving the base by KL 1e-2 (8 rows):      max |d| 0.38, mean KL 3e-4
#   4 real training steps, lr 5e-4, KL 0.15 (4 rows): max |d| 2.07, mean KL 2.0e-3
#   3 real steps on short answers, lr 5e-4 (4 rows):   max |d| 4.41, mean KL 6.1e-3
#   weights rounded to 4 bits (a merge into NF4-like weights): max |d| ~21, mean KL ~0.8
# The mean KL is the measure (max |d| is one logit of 49k x tokens, and swings); the bounds
# leave room above bf16 rounding of a trained adapter and stay ~2.5x (max |d|) and 80x (KL)
# under a 4-bit merge.
PARITY_MAX_ABS = 8.0
PARITY_MEAN_KL = 1e-2
# The share of the adapter's loss gain (base NLL - base+adapter NLL, at the rows' assistant
# tokens) the merged model keeps. Rounding W+BA to bf16 drops the part of a small update
# under half a bf16 step of its weight: a 3-step run on SmolLM2 kept 74% (PPL 1.969 base,
# 1.706 base+adapter, 1.771 merged), within the parity bounds above. Below this share the
# run warns; serving the adapter un-merged keeps all of it.
MERGE_GAIN_KEPT_WARN = 0.9
# A gain under this (nats per token) is too small to take a share of.
MERGE_GAIN_MIN = 1e-3


# ---------------------------------------------------------------------------------------------
# save and merge


def save_adapter(peft_model, run_dir: str | Path) -> Path:
    """Save the trained adapter (weights + config, no base) to RUN_DIR/adapter/."""
    out = Path(run_dir) / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    if not (out / "adapter_config.json").is_file():
        raise VerifyError("adapter_not_saved", f"{out} has no adapter_config.json after saving; "
                          "was a PEFT model passed?", field="adapter")
    return out


def end_of_turn_id(tokenizer, end_of_turn: str) -> int:
    """The single token id of ``end_of_turn``; a marker the tokenizer splits cannot stop."""
    ids = tokenizer.encode(end_of_turn, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise VerifyError("end_of_turn_unknown", f"{end_of_turn!r} is not one token in this "
                          f"tokenizer (encodes to {ids})", field="end_of_turn")
    return ids[0]


def base_dtype(base_model: str | Path):
    """The precision the base is stored in (its config's `dtype`) when it is bf16, fp16 or
    fp32, else bf16. Merging in it keeps the base's weights as they are: a float32 base
    merged in bf16 is rounded everywhere, and an fp16 one loses 3 mantissa bits."""
    import torch
    from transformers import AutoConfig

    floats = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    config = AutoConfig.from_pretrained(str(base_model))
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return floats.get(str(stored).removeprefix("torch."), torch.bfloat16)


def merge_adapter(base_model: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  tokenizer, end_of_turn: str, dtype=None, call_end: str | None = None) -> Path:
    """Merge the adapter into an unquantized copy of the base, in the base's own precision
    (``base_dtype``) unless ``dtype`` says otherwise, and save it as a plain HF folder whose
    generation config stops on ``end_of_turn`` (and ``call_end``, the template's token after
    a tool call where it has its own)."""
    import torch
    from peft import PeftModel

    dtype = dtype or base_dtype(base_model)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise VerifyError("merge_dtype", f"merge needs a 16- or 32-bit base, got {dtype}",
                          field="dtype")
    eot = end_of_turn_id(tokenizer, end_of_turn)
    base = _load_base(base_model, dtype, tokenizer)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # safe_merge found NaN/inf in the merged weights
        raise VerifyError("merge_nan", str(exc), field="adapter") from exc
    _assert_unwrapped(merged)

    gen = merged.generation_config
    gen.eos_token_id = _with_id(gen.eos_token_id, eot)
    if call_end:
        gen.eos_token_id = _with_id(gen.eos_token_id, end_of_turn_id(tokenizer, call_end))
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    merged.config.eos_token_id = _with_id(merged.config.eos_token_id, eot)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    gen.save_pretrained(str(out))
    leftovers = [name for name in ADAPTER_FILES if (out / name).exists()]
    if leftovers:
        raise VerifyError("merge_incomplete", f"{out} still holds adapter files {leftovers}: "
                          "the adapter was saved instead of the merged model", field="merged")
    return out


def placement(model_id: str | Path, dtype) -> str:
    """Where postflight runs ``model_id`` in ``dtype``: ``cuda`` when a GPU's free memory
    holds its weights with a quarter to spare (activations, logits), else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():  # a skeleton on the meta device: sizes, no memory
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_id)))
    need = sum(p.numel() for p in skeleton.parameters()) * torch.finfo(dtype).bits // 8
    free, _ = torch.cuda.mem_get_info()
    return "cuda" if need * 1.25 <= free else "cpu"


def _load(model_id, dtype, device: str):
    from transformers import AutoModelForCausalLM

    if device == "cpu":
        return AutoModelForCausalLM.from_pretrained(str(model_id), dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(str(model_id), dtype=dtype, device_map=device)


def _load_base(base_model, dtype, tokenizer, device: str = "cpu"):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base_model))
    if getattr(config, "quantization_config", None):
        raise VerifyError("base_quantized", f"{base_model} is a quantized checkpoint; merge needs "
                          "the unquantized base (merging into 4-bit weights loses the adapter)",
                          field="base_model")
    base = _load(base_model, dtype, device)
    # Training may have added tokens (resizing embeddings); the adapter's shapes follow that.
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    return base


def _assert_unwrapped(model) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [name for name, module in model.named_modules()
               if isinstance(module, BaseTunerLayer)]
    if wrapped:
        raise VerifyError("merge_incomplete", f"{len(wrapped)} adapter layer(s) survived the "
                          f"merge, e.g. {wrapped[:3]}", field="merged")


def _with_id(existing, new_id: int) -> list[int] | int:
    ids = [] if existing is None else ([existing] if isinstance(existing, int) else list(existing))
    if new_id not in ids:
        ids.insert(0, new_id)
    return ids[0] if len(ids) == 1 else ids


# ---------------------------------------------------------------------------------------------
# parity


@dataclass
class ParityReport:
    """Logit agreement of merged vs base+adapter, and how far the merge moved the base."""

    rows: int
    tokens: int
    max_abs_diff: float
    mean_kl: float
    base_max_abs_diff: float
    base_mean_kl: float
    max_abs_tol: float
    mean_kl_tol: float
    device: str = "cpu"
    # mean NLL per token at the rows' assistant tokens (all tokens for plain texts)
    nll_base: float | None = None
    nll_adapter: float | None = None
    nll_merged: float | None = None
    nll_tokens: str = "assistant"
    gain_kept: float | None = None  # (base - merged) / (base - adapter); None: no gain

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def merge_warning(self) -> str | None:
        """Said when the merge kept under MERGE_GAIN_KEPT_WARN of the adapter's gain."""
        if self.gain_kept is None or self.gain_kept >= MERGE_GAIN_KEPT_WARN:
            return None
        return (f"merge: the merged model keeps {self.gain_kept:.0%} of the adapter's loss gain "
                f"on {self.rows} validation rows (NLL per {self.nll_tokens} token: base "
                f"{self.nll_base:.4f}, base+adapter {self.nll_adapter:.4f}, merged "
                f"{self.nll_merged:.4f}): rounding the merged weights to the base's "
                "precision drops small updates. Serving the adapter un-merged keeps all of "
                "it (`tunesmith serve BASE_MODEL --adapter RUN_DIR/adapter`, vLLM "
                "--enable-lora); a longer run makes larger updates, which round less")


def check_parity(base_model: str | Path, adapter_dir: str | Path, merged_dir: str | Path,
                 rows_or_texts: Sequence, tokenizer, n: int = 8, dtype=None,
                 max_abs_tol: float = PARITY_MAX_ABS,
                 mean_kl_tol: float = PARITY_MEAN_KL) -> ParityReport:
    """Compare next-token logits of base+adapter and merged on ``n`` validation rows.

    Rows are chat rows (``{"messages": [...]}``), message lists, or plain texts. Logits are
    computed in ``dtype`` (float32 by default, so what is measured is the merge's rounding,
    not bf16 arithmetic noise). Raises `VerifyError` `parity` or `merge_noop`.
    """
    import torch
    from peft import PeftModel

    dtype = dtype or torch.float32
    chosen = list(rows_or_texts)[:n]
    texts = [_as_text(r, tokenizer) for r in chosen]
    if not texts:
        raise VerifyError("parity_no_rows", "no validation rows to compare on", field="rows")
    device = placement(merged_dir, dtype)
    batches = [tokenizer(t, return_tensors="pt", add_special_tokens=False).to(device)
               for t in texts]
    loss_masks, scored = _loss_masks(chosen, [b["input_ids"][0].tolist() for b in batches],
                                     tokenizer)

    def logits(model) -> list:  # compared on the CPU, where they are kept
        return [model(**b).logits[0].float().cpu() for b in batches]

    base = _load_base(base_model, dtype, tokenizer, device).eval()
    adapted = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        with_adapter = logits(adapted)
        with adapted.disable_adapter():
            plain = logits(adapted)
    del adapted, base
    free_device_memory(device)
    merged = _load(merged_dir, dtype, device).eval()
    with torch.no_grad():
        out = logits(merged)
    del merged
    free_device_memory(device)

    max_abs, kl, tokens = _compare(with_adapter, out)
    base_max_abs, base_kl, _ = _compare(plain, out)
    ids = [b["input_ids"][0].cpu() for b in batches]
    nll = {name: _mean_nll(logits, ids, loss_masks)
           for name, logits in (("base", plain), ("adapter", with_adapter), ("merged", out))}
    gain = nll["base"] - nll["adapter"]
    report = ParityReport(rows=len(texts), tokens=tokens, max_abs_diff=max_abs, mean_kl=kl,
                          base_max_abs_diff=base_max_abs, base_mean_kl=base_kl,
                          max_abs_tol=max_abs_tol, mean_kl_tol=mean_kl_tol, device=device,
                          nll_base=nll["base"], nll_adapter=nll["adapter"],
                          nll_merged=nll["merged"], nll_tokens=scored,
                          gain_kept=(nll["base"] - nll["merged"]) / gain
                          if gain > MERGE_GAIN_MIN else None)
    if not (max_abs <= max_abs_tol and kl <= mean_kl_tol):
        raise VerifyError("parity", f"merged logits differ from base+adapter: max |d| "
                          f"{max_abs:.4g} (tolerance {max_abs_tol}), mean KL {kl:.3g} "
                          f"(tolerance {mean_kl_tol}); the merge lost precision",
                          field="merged", details=report.to_json())
    # The adapter's effect must stand out from the merge's own rounding noise; a merge that
    # left the base unchanged (zero adapter, or a delta rounded away) is indistinguishable.
    if base_max_abs <= max(max_abs, 1e-6):
        raise VerifyError("merge_noop", f"the merged model equals the base (max |d| "
                          f"{base_max_abs:.3g}, at or below merge noise {max_abs:.3g}): the "
                          "adapter changed nothing", field="adapter", details=report.to_json())
    return report


def _compare(reference: list, candidate: list) -> tuple[float, float, int]:
    """Max absolute logit difference and mean per-token KL(reference || candidate)."""
    import torch

    max_abs, kl_sum, tokens = 0.0, 0.0, 0
    for ref, cand in zip(reference, candidate):
        max_abs = max(max_abs, (ref - cand).abs().max().item())
        logp, logq = torch.log_softmax(ref, -1), torch.log_softmax(cand, -1)
        kl_sum += (logp.exp() * (logp - logq)).sum(-1).clamp_min(0).sum().item()
        tokens += ref.shape[0]
    return max_abs, kl_sum / max(tokens, 1), tokens


def _loss_masks(rows: Sequence, ids: list[list[int]], tokenizer) -> tuple[list, str]:
    """Per row, which tokens training scored (the assistant tokens, from the training
    template's own mask where its ids are the parity ids), and what they are: "assistant",
    or "all" when a row is plain text or its mask is not to be had."""
    from trainer_service.recipe.chat_format import ChatFormatError, encode_row, resolve_template

    if any(isinstance(r, str) for r in rows):
        return [[1] * len(i) for i in ids], "all"
    try:
        template = resolve_template(tokenizer, "auto")
        masks = []
        for row, row_ids in zip(rows, ids):
            messages, tools = row_parts(row)
            enc = encode_row(tokenizer, template, messages, tools=tools)
            if list(enc.input_ids) != row_ids or not any(enc.mask):
                return [[1] * len(i) for i in ids], "all"
            masks.append(list(enc.mask))
    except ChatFormatError:
        return [[1] * len(i) for i in ids], "all"
    return masks, "assistant"


def _mean_nll(logits: list, ids: list, masks: list[list[int]]) -> float:
    """Mean negative log-likelihood of each row's next tokens where its mask is 1."""
    import torch

    total, count = 0.0, 0
    for row_logits, row_ids, mask in zip(logits, ids, masks):
        logp = torch.log_softmax(row_logits[:-1].float(), -1)
        nll = -logp.gather(-1, row_ids[1:].unsqueeze(-1)).squeeze(-1)
        keep = torch.tensor(mask[1:], dtype=torch.bool)
        total += nll[keep].sum().item()
        count += int(keep.sum())
    return total / max(count, 1)


def _as_text(row, tokenizer) -> str:
    if isinstance(row, str):
        return row
    messages, tools = row_parts(row)
    return tokenizer.apply_chat_template(_plain(messages), tools=tools, tokenize=False)


def _plain(messages) -> list[dict]:
    """Messages as training rendered them (tool calls parsed, reasoning kept), content never
    null."""
    return [{**m, "content": m.get("content") or ""} for m in normalize_messages(messages)]


# ---------------------------------------------------------------------------------------------
# sanity generation


@dataclass
class Sample:
    prompt: str
    output: str
    new_tokens: int
    stopped: bool
    degenerate: bool
    # for a held-out row that ends with a tool call: whether the output holds parseable
    # `<tool_call>` blocks; None for one that ends with a text reply
    call_parsed: bool | None = None


@dataclass
class SanityReport:
    """Greedy outputs on held-out prompts, with stop and degeneration verdicts."""

    samples: list[Sample] = field(default_factory=list)
    stop_rate: float = 0.0
    degenerate: int = 0
    min_stop_rate: float = 0.8
    max_new_tokens: int = 64
    end_of_turn: str = ""
    # The base model on the same prompts and budget (when it was given): tells "training
    # broke stopping" (the base stops) from "this base never finishes these prompts".
    base_model: str | None = None
    base_samples: list[Sample] = field(default_factory=list)
    base_stop_rate: float | None = None
    base_degenerate: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    # held-out rows ending with a tool call, and the outputs there with parseable calls in
    # the template's call format (`chat_format.call_format`)
    call_rows: int = 0
    calls_parsed: int = 0
    call_format: str = "hermes"

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def call_warning(self) -> str | None:
        """A warning when outputs that should call a tool hold no parseable call."""
        if self.calls_parsed >= self.call_rows:
            return None
        form = ("<tool_call> block" if self.call_format == "hermes"
                else f"call ({self.call_format})")
        return (f"{self.call_rows - self.calls_parsed} of {self.call_rows} held-out prompts "
                f"that end with a tool call got no parseable {form} from the merged "
                "model (verify.json sanity.samples, call_parsed): it may answer in text or "
                "break the call's JSON where a client expects a call")

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1)


def sanity_generate(model_dir: str | Path, prompts: Sequence, tokenizer, end_of_turn: str,
                    max_new_tokens: int = 64, min_stop_rate: float = 0.8,
                    repetition: RepetitionConfig | None = None, limit: int = 10,
                    dtype=None, base_model: str | Path | None = None,
                    call_end: str | None = None) -> SanityReport:
    """Greedy-decode up to ``limit`` held-out conversations; fail on loops or no stop.

    A conversation ending with an assistant turn (a held-out row) is cut before that turn.
    A prompt given as `{"messages", "tools", "calls"}` whose `calls` are set was cut before
    a tool call: its output is checked for a parseable call in the template's format
    (`call_format`: `<tool_call>` blocks, Llama 3.1's JSON, Mistral's, Gemma 4's; `call_rows`,
    `calls_parsed`; a warning for the run, not a failure).
    A sample stops when it emits ``end_of_turn`` within ``max_new_tokens``, or ``call_end``
    (a template's own token after a tool call: Gemma 4's <|tool_response>); any other stop
    token does not count (it is what the founding failure's server never saw). Raises
    `VerifyError` `degenerate` when any output loops (the data engine's detector; checked
    first, being the more specific diagnosis) and `no_stop` below ``min_stop_rate``.
    With ``base_model``, the base is decoded the same way first, and a failure's message
    says whether the base stops on these prompts (training broke stopping) or not (the task
    or the budget is beyond this base model). ``dtype`` defaults to bf16 on a GPU with room
    for the model, else float32 on the CPU.
    """
    import torch

    repetition = repetition or RepetitionConfig()
    stops = [end_of_turn_id(tokenizer, end_of_turn)]
    if call_end:
        stops.append(end_of_turn_id(tokenizer, call_end))
    prompts = list(prompts)[:limit]
    convs = [_prompt_turns(p) for p in prompts]
    if not convs:
        raise VerifyError("sanity_no_prompts", "no held-out prompts to generate on",
                          field="prompts")
    chosen = dtype
    if dtype is None:  # on a GPU, bf16 (what servers run); on a CPU, float32 (bf16 is slow)
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    device = placement(model_dir, dtype)
    if chosen is None and device == "cpu":
        dtype = torch.float32
    report = SanityReport(min_stop_rate=min_stop_rate, max_new_tokens=max_new_tokens,
                          end_of_turn=end_of_turn, device=device,
                          dtype=str(dtype).removeprefix("torch."))
    if base_model is not None:
        report.base_model = str(base_model)
        report.base_samples = _greedy(base_model, convs, tokenizer, stops, max_new_tokens,
                                      repetition, dtype, device)
        report.base_stop_rate, report.base_degenerate = _rates(report.base_samples)
    report.samples = _greedy(model_dir, convs, tokenizer, stops, max_new_tokens, repetition,
                             dtype, device)
    report.stop_rate, report.degenerate = _rates(report.samples)
    report.call_format = call_format(tokenizer, tokenizer.chat_template)
    for prompt, sample in zip(prompts, report.samples):
        # calls written in a form parse_tool_calls cannot read are not checked
        if report.call_format != "unknown" and isinstance(prompt, dict) and prompt.get("calls"):
            sample.call_parsed = parse_tool_calls(sample.output, report.call_format) is not None
            report.call_rows += 1
            report.calls_parsed += sample.call_parsed
    if report.degenerate:
        first = next(s for s in report.samples if s.degenerate)
        raise VerifyError("degenerate", f"{report.degenerate}/{len(report.samples)} output(s) "
                          f"loop, e.g. {first.output[:80]!r} (stop rate {report.stop_rate:.0%})"
                          + _against_base(report, "degenerate"),
                          field="merged", fix=_fix_for(report, "degenerate"),
                          details=report.to_json())
    if report.stop_rate + 1e-9 < min_stop_rate:
        raise VerifyError("no_stop", f"only {report.stop_rate:.0%} of outputs end with "
                          f"{end_of_turn} within {max_new_tokens} tokens (need "
                          f"{min_stop_rate:.0%}): the end-of-turn token was not learned"
                          + _against_base(report, "no_stop"),
                          field="end_of_turn", fix=_fix_for(report, "no_stop"),
                          details=report.to_json())
    return report


def _greedy(model_dir: str | Path, convs: list[tuple[list[dict], list[dict] | None]],
            tokenizer, stops: list[int], max_new_tokens: int, repetition: RepetitionConfig,
            dtype, device: str = "cpu") -> list[Sample]:
    """One left-padded greedy batch; a sample stops only on one of ``stops`` (the end of
    turn first)."""
    import torch

    model = _load(model_dir, dtype, device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    texts = [tokenizer.apply_chat_template(c, tools=tools, tokenize=False,
                                           add_generation_prompt=True) for c, tools in convs]
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # one batch; left padding keeps every prompt's end aligned
    if pad_token is None:  # Llama 3, Mistral: none; left padding is masked out anyway
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
        if pad_token is None:
            tokenizer.pad_token = None
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=list(stops), pad_token_id=pad).cpu()
    del model
    free_device_memory(device)
    samples = []
    for (conv, _), row in zip(convs, out[:, batch["input_ids"].shape[1]:].tolist()):
        at = next((i for i, token in enumerate(row) if token in stops), None)
        stopped = at is not None
        new = row[:at] if stopped else row
        reply = tokenizer.decode(new, skip_special_tokens=True)
        samples.append(Sample(prompt=conv[-1]["content"], output=reply, new_tokens=len(new),
                              stopped=stopped, degenerate=is_degenerate(reply, repetition)))
    return samples


def free_device_memory(device: str) -> None:
    """Gives the GPU memory of models just dropped back before the next one loads."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _rates(samples: list[Sample]) -> tuple[float, int]:
    return sum(s.stopped for s in samples) / len(samples), sum(s.degenerate for s in samples)


def _against_base(report: SanityReport, code: str) -> str:
    """What the base model did on the same prompts, as the rest of a failure's message."""
    if report.base_stop_rate is None:
        return ""
    n = len(report.base_samples)
    stopped = round(report.base_stop_rate * n)
    if code == "degenerate":
        if report.base_degenerate:
            return (f". The base model loops on {report.base_degenerate}/{n} of the same "
                    "prompts too: this base model cannot do these prompts")
        if report.base_stop_rate + 1e-9 < report.min_stop_rate:
            # it runs on just the same, only too briefly for the detector to call it a loop
            return (f". The base model does not stop on these prompts either ({stopped}/{n} "
                    f"within {report.max_new_tokens} tokens): the model has not learned to "
                    "stop yet rather than learned a loop; more steps, a larger or "
                    "better-matched base model, and preflight.json's end-of-turn checks")
        return (f". The base model loops on none of the same prompts ({stopped}/{n} stop): "
                "training taught the loop; look for looping rows in the data and lower the "
                "learning rate or the epochs")
    if report.base_stop_rate + 1e-9 >= report.min_stop_rate:
        return (f". The base model stops on {stopped}/{n} of the same prompts: training broke "
                "stopping; check preflight.json (the end-of-turn token in the loss mask, the "
                "template) and the learning rate")
    return (f". The base model stops on only {stopped}/{n} of the same prompts within "
            f"{report.max_new_tokens} tokens: this base model does not finish these prompts "
            "either; a larger or better-matched base model, more steps, or shorter replies")


def _fix_for(report: SanityReport, code: str) -> str:
    """What to do about a `degenerate` or `no_stop` failure, by what the base model did on
    the same prompts (`_against_base` says what it did)."""
    base_stops = report.base_stop_rate is not None \
        and report.base_stop_rate + 1e-9 >= report.min_stop_rate
    if report.base_stop_rate is None:
        return ("look for looping or unfinished replies in the data (`tunesmith data run` "
                "drops them), check preflight.json's end-of-turn checks, and lower the "
                "learning rate or the epochs")
    if code == "degenerate" and report.base_degenerate:
        return "use a larger or better-matched base model for these prompts"
    if base_stops:
        return ("training broke what the base did: look for looping rows in the data "
                "(`tunesmith data run` drops them as degenerate_repetition), check "
                "preflight.json (the end-of-turn token in the loss mask), and lower the "
                "learning rate or the epochs")
    return ("the base does not finish these prompts either: train more steps, use a larger "
            "or better-matched base model, or ask for shorter replies")


def _prompt_turns(prompt) -> tuple[list[dict], list[dict] | None]:
    """A prompt's turns up to the reply to generate, and the tools the row offers."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], None
    messages, tools = row_parts(prompt)
    messages = _plain(messages)
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        raise VerifyError("sanity_no_prompts", "a held-out conversation has no prompt turns",
                          field="prompts")
    return messages, tools
