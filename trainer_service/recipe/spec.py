"""The training spec: YAML maps onto these dataclasses; unknown keys are errors.

A spec of just `base_model` and `dataset` is complete: every other field has a default taken
from published fine-tuning practice, with the reason in its help string.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_engine.config import _help
from data_engine.config_loader import from_dict, read_yaml
from evaluator.export import TYPES

# A hub model id, `org/name`: what `base_model` is when it names no folder.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

QUANTIZATIONS = ("nf4", "int8", "none")
ATTENTIONS = ("auto", "varlen", "sdpa", "eager", "flash_attention_2")
LOSS_ON = ("all_assistant", "last_assistant")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts")
LORA_RANK_RANGE = (16, 64)
# Unsloth's and other published SFT guidance agree on 1-3 SFT epochs; the failed run did 3 on 638 rows.
MAX_EPOCHS = 3
SMALL_TRAIN_ROWS = 1000
# Fewer optimizer steps than this leave warmup, the schedule and evaluation nothing to act on.
MIN_USEFUL_STEPS = 10


@dataclass
class LoraSpec:
    r: int = _help("LoRA rank. 16-64 is the range published QLoRA guidance recommends; rank "
                   "> 256 adds little (LoRA Without Regret).", 16)
    alpha: int | None = _help("LoRA alpha; null = 2 * r (the usual recommendation, "
                              "alpha = rank x 2).")
    dropout: float = _help("LoRA dropout; 0.05 for small datasets (0.0 for large ones).", 0.05)
    target_modules: Any = _help(
        "'all-linear' or a list of module names (lm_head excepted: TRL computes the loss from "
        "its weight directly). Adapters on every linear layer, MLP included, give the largest "
        "effect (LoRA Without Regret).", "all-linear")
    use_rslora: bool = _help("Rank-stabilised scaling alpha/sqrt(r) instead of alpha/r; keeps "
                             "the update size stable when r grows.", False)

    @property
    def effective_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r

    def check(self) -> list[str]:
        problems = []
        if self.r < 1:
            problems.append("r: must be >= 1")
        if self.alpha is not None and self.alpha < 1:
            problems.append("alpha: must be >= 1 or null")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout: must be in [0, 1)")
        tm = self.target_modules
        if isinstance(tm, str) and tm != "all-linear":
            problems.append(f"target_modules: {tm!r} is neither 'all-linear' nor a list; write "
                            f"a list of module names, e.g. [{tm}]" if tm else
                            "target_modules: must be 'all-linear' or a non-empty list of names")
        elif not isinstance(tm, str) and not (
                isinstance(tm, list) and tm and all(isinstance(m, str) and m for m in tm)):
            problems.append("target_modules: must be 'all-linear' or a non-empty list of names")
        elif isinstance(tm, list) and "lm_head" in tm:
            problems.append("target_modules: LoRA on lm_head never trains (TRL computes the loss "
                            "from lm_head.weight directly); leave it out (preflight trains the "
                            "stop token's rows when they need it)")
        return problems


@dataclass
class TrainingSpec:
    epochs: float = _help("Passes over the train split. 1-3 is the SFT norm; over 3 overfits, "
                          "and the failed run overfit with 3 on 638 rows.", 1.0)
    learning_rate: float = _help("Peak learning rate; 2e-4 is the QLoRA norm (LoRA's best LR is "
                                 "about 10x full fine-tuning's).", 2e-4)
    lr_scheduler: str = _help("Learning-rate schedule: " + " | ".join(SCHEDULERS) + ". Cosine "
                              "decays to zero by the last step (Llama 2's SFT used cosine).",
                              "cosine")
    warmup_ratio: float = _help("Fraction of steps spent warming up linearly; 0.03 is the "
                                "QLoRA and Alpaca training scripts' value.", 0.03)
    per_device_batch: int = _help("Rows (packed blocks when packing) per device per step; "
                                  "memory grows linearly with it.", 2)
    grad_accum: int = _help("Gradient accumulation steps; effective batch = per_device_batch x "
                            "grad_accum x devices (2 x 8 = 16 by default, QLoRA's batch for "
                            "7B-13B models at lr 2e-4).", 8)
    max_seq_len: int = _help("Tokens per sequence (packed block). Keep it equal to the data "
                             "engine's length.max_tokens so no reply loses its end-of-turn token.",
                             2048)
    packing: bool = _help("Pack rows into max_seq_len blocks (best-fit decreasing) with "
                          "per-row position ids, so packed rows never attend to each other.", True)
    eval_every_steps: int = _help("Evaluate on the validation split every N optimizer steps "
                                  "(also the checkpoint interval; logging_steps is capped at "
                                  "it).", 50)
    logging_steps: int = _help("Log train loss every N steps (capped at eval_every_steps); "
                               "each point averages its N steps, smoothing batch noise.", 10)
    early_stopping_patience: int = _help(
        "Stop after this many evaluations without a better eval loss (HF EarlyStoppingCallback "
        "norm: 3).", 3)
    overfit_train_loss: float = _help(
        "Train loss below this with a widening train/eval gap, while eval loss is no better "
        "than its best, raises the overfitting alarm; train loss < 0.3 is a sure overfitting "
        "sign (the failed run ended at 0.25).", 0.3)
    seed: int = _help("Seed for data order, LoRA init and dropout; fixed so a rerun repeats "
                      "the run (42 is transformers' default).", 42)
    gradient_checkpointing: bool = _help("Recompute activations in backward: much less memory, "
                                         "about 30% slower.", True)
    max_steps: int | None = _help("Optimizer steps; overrides epochs when set.")
    attention: str = _help(
        "Attention kernel: auto | varlen | sdpa | eager | flash_attention_2. auto = varlen when "
        "packing: each packed row attends only to itself, by torch's variable-length flash "
        "kernel on CUDA (SDPA per row elsewhere), where sdpa computes a dense mask over the "
        "whole step's tokens; else sdpa. flash_attention_2 needs the flash-attn package.",
        "auto")

    def check(self) -> list[str]:
        problems = []
        if not 0 < self.epochs < math.inf:
            problems.append("epochs: must be > 0 and finite")
        if not 0 < self.learning_rate < 1:
            problems.append("learning_rate: must be in (0, 1)")
        if self.lr_scheduler not in SCHEDULERS:
            problems.append(f"lr_scheduler: {self.lr_scheduler!r} is not one of "
                            f"{', '.join(SCHEDULERS)}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append("warmup_ratio: must be in [0, 1)")
        for name in ("per_device_batch", "grad_accum", "max_seq_len", "eval_every_steps",
                     "logging_steps", "early_stopping_patience"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps: must be >= 1 or null")
        if self.overfit_train_loss < 0:
            problems.append("overfit_train_loss: must be >= 0")
        if not 0 <= self.seed < 2 ** 32:  # numpy's and transformers' range
            problems.append("seed: must be in [0, 2**32)")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention: {self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        return problems

    def planned_steps(self, items: int) -> int:
        """Optimizer steps of a run over ``items`` train items (packed blocks, or rows), as
        transformers counts them on one device: partial batches and accumulations count."""
        batches = math.ceil(items / self.per_device_batch)
        per_epoch = max(math.ceil(batches / self.grad_accum), 1)
        return self.max_steps if self.max_steps is not None else math.ceil(self.epochs * per_epoch)

    def plan(self, items: int, has_validation: bool) -> dict[str, Any]:
        """The run's schedule over ``items`` train items: optimizer steps, warmup steps (as
        transformers rounds a ratio) and evaluations (every eval_every_steps, and one at the
        last step when it falls between)."""
        steps = self.planned_steps(items)
        # transformers' constant schedule takes no warmup (constant_with_warmup does)
        warmup = 0 if self.lr_scheduler == "constant" else math.ceil(steps * self.warmup_ratio)
        return {"train_items": items, "unit": "packed block" if self.packing else "row",
                "optimizer_steps": steps, "warmup_steps": warmup,
                "evaluations": math.ceil(steps / self.eval_every_steps) if has_validation else 0}

    def step_warnings(self, items: int, train_rows: int, has_validation: bool) -> list[str]:
        """What the run's optimizer-step count makes useless: packing puts many rows in a block
        and the effective batch is per_device_batch x grad_accum blocks, so a small dataset can
        train for a handful of steps, mostly warmup, with no evaluation before the end."""
        plan = self.plan(items, has_validation)
        steps, unit = plan["optimizer_steps"], plan["unit"]
        where = (f"{train_rows} train rows in {items} {unit}{'s' * (items != 1)}"
                 if self.packing else f"{items} train rows")
        where += f", {self.per_device_batch} x {self.grad_accum} {unit}s a step"
        out = []
        if self.max_steps is None and steps < MIN_USEFUL_STEPS:
            out.append(f"training: only {steps} optimizer step{'s' * (steps != 1)} ({where}); "
                       f"warmup takes {plan['warmup_steps']} of them. Lower grad_accum (or "
                       "per_device_batch), or add rows")
        if has_validation and steps < self.eval_every_steps:
            every = max(1, steps // 5)
            out.append(f"training.eval_every_steps: {self.eval_every_steps} > the run's {steps} "
                       f"optimizer step{'s' * (steps != 1)} ({where}): validation runs only at "
                       "the end, so early stopping and the overfitting alarm cannot act; set "
                       f"eval_every_steps to {every}{' or lower' * (every > 1)}")
        return out


# GGUF forms `export.gguf` may name (evaluator.export imports neither llama.cpp nor torch
# at module level, so reading a spec stays light).
GGUF_TYPES = TYPES


@dataclass
class ExportSpec:
    gguf: list[str] = _help(
        "GGUF forms to make after the run is verified, e.g. [f16, q4_k_m]: llama.cpp's "
        "converter, then its quantizer, each form checked against the one before (eos id, "
        "tokenization, PPL ratio, KL, top-token agreement); f16 is always made, as the "
        "reference. Empty: no export. Needs the gguf extra (llama-cpp-python).", factory=list)

    def check(self) -> list[str]:
        unknown = [t for t in self.gguf if str(t).strip().lower() not in GGUF_TYPES]
        if unknown:
            return [f"gguf: unknown type(s) {', '.join(map(str, unknown))}; choose from "
                    f"{', '.join(GGUF_TYPES)}"]
        return []


@dataclass
class TrainSpec:
    base_model: str = _help("Base model: a local HF folder, a hub id, or `default` (the "
                            "embedded SmolLM2-135M-Instruct; `train run` and pipelines).", "")
    dataset: str = _help("A data engine output folder with train.jsonl and validation.jsonl.", "")
    chat_template: str = _help("auto (the tokenizer's when it has {% generation %} markers, "
                               "else ours for ChatML models or TRL's training variant of it, "
                               "each checked by preflight to render what inference servers "
                               "render) | chatml | a path to a Jinja file.", "auto")
    quantization: str = _help(
        "nf4 (QLoRA: 4-bit NF4, double quant, bf16 compute on GPU; the QLoRA paper matched "
        "16-bit LoRA quality at about a quarter of the base's memory) | int8 | none (16-bit "
        "base).", "nf4")
    lora: LoraSpec = _help("LoRA adapter settings.", factory=LoraSpec)
    loss_on: str = _help("Which tokens carry loss: all_assistant (every assistant turn) | "
                         "last_assistant (only the final reply; earlier turns are context).",
                         "all_assistant")
    training: TrainingSpec = _help("Optimisation settings.", factory=TrainingSpec)
    allow_no_validation: bool = _help(
        "Train without a validation split. Off: the failed run had none and nobody saw it "
        "overfit.", False)
    align_eos: bool = _help(
        "Make the template's end-of-turn token the tokenizer's eos and add it to the "
        "generation config's eos ids, for the run and in adapter/ and merged/, each change a "
        "warning: what Qwen2.5's chat release did to its base (eos <|endoftext|> -> "
        "<|im_end|>), and what Gemma (<eos>, turns end <end_of_turn>) and Phi-3 (<|endoftext|>, "
        "turns end <|end|>) need for a runtime that stops on the eos (a GGUF). Off: preflight "
        "fails eos_not_end_of_turn instead, naming the token.", False)
    dry_run: bool = _help("Stop after preflight: the template, masks, stop token, lengths and "
                          "the plan (optimizer steps, warmup, evaluations) are checked and "
                          "written (preflight.json), only the embedding rows are read from the "
                          "weights, and no step is taken.", False)
    export: ExportSpec = _help("Exports made from the verified merged model (RUN_DIR/gguf/).",
                               factory=ExportSpec)

    def check(self) -> list[str]:
        problems = []
        if not self.base_model:
            problems.append("base_model: must be set")
        if not self.dataset:
            problems.append("dataset: must be set")
        if self.quantization not in QUANTIZATIONS:
            problems.append(f"quantization: {self.quantization!r} is not one of "
                            f"{', '.join(QUANTIZATIONS)}")
        if self.loss_on not in LOSS_ON:
            problems.append(f"loss_on: {self.loss_on!r} is not one of {', '.join(LOSS_ON)}")
        if not self.chat_template:
            problems.append("chat_template: must be auto, chatml or a path")
        return problems

    def warnings(self, train_rows: int | None = None) -> list[str]:
        """Advice that does not block training: epochs that overfit, a warmup the schedule
        ignores, a rank outside 16-64."""
        out = []
        t = self.training
        if t.max_steps is None and t.epochs > MAX_EPOCHS:
            out.append(f"training.epochs: {t.epochs:g} > {MAX_EPOCHS}; overfitting risk rises "
                       f"sharply past {MAX_EPOCHS} epochs")
        elif (t.max_steps is None and t.epochs > 1 and train_rows is not None
              and train_rows < SMALL_TRAIN_ROWS):
            out.append(f"training.epochs: {t.epochs:g} epochs on {train_rows} train rows "
                       f"(< {SMALL_TRAIN_ROWS}); the failed run overfit with 3 epochs on 638 rows, "
                       "use 1 epoch or more data")
        if t.lr_scheduler == "constant" and t.warmup_ratio > 0:
            out.append(f"training.warmup_ratio: {t.warmup_ratio:g} is ignored by the constant "
                       "schedule; use lr_scheduler: constant_with_warmup to warm up")
        lo, hi = LORA_RANK_RANGE
        if not lo <= self.lora.r <= hi:
            out.append(f"lora.r: {self.lora.r} is outside the recommended {lo}-{hi}")
        return out


def resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Makes a spec mapping's relative paths start at ``base``, the spec file's folder (see
    `load_spec`)."""
    for key, keywords in (("dataset", ()), ("chat_template", ("auto", "chatml"))):
        value = data.get(key)
        if isinstance(value, str) and value.startswith("~"):
            data[key] = value = os.path.expanduser(value)
        if isinstance(value, str) and value and value not in keywords \
                and not Path(value).is_absolute():
            data[key] = os.path.normpath(base / value)  # `../data` from a configs/ folder
    model = data.get("base_model")
    if isinstance(model, str) and model and model != "default" and not Path(model).is_absolute() \
            and (model.startswith(".") or (base / model).is_dir()):
        data["base_model"] = os.path.normpath(base / model)


def load_spec(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainSpec:
    """Reads a YAML spec (or none) and applies CLI overrides (`dataset`, `base_model`, ...).

    Relative `dataset` and `chat_template` paths in the file are relative to the file's
    folder, and so is a `base_model` that is a folder there or starts with `.` (else it is a
    hub id, or a folder relative to the working directory).
    """
    data, base, origin = read_yaml(path, "train spec")
    if path is not None:
        resolve_relative(data, base)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = {**data, **overrides}
    return from_dict(TrainSpec, data, origin)
