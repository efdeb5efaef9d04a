"""The QLoRA SFT step: spec -> (quantized base, LoRA, SFTConfig) -> TRL SFTTrainer -> adapter.

Reads like a recipe: load the splits, tokenize with assistant masks, load and quantize the
base, wrap it with LoRA, train with eval/early stopping/overfitting alarm, save the adapter.
`build_recipe` is the one place where our spec becomes transformers/PEFT/TRL objects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from data_engine.readers.formats import tool_definitions
from trainer_service.recipe.chat_format import ChatTemplate, end_of_turn, has_generation_markers
from trainer_service.recipe.errors import TrainError
from trainer_service.recipe.hooks import RecipeStopped, RunHooks
from trainer_service.recipe.metrics import (METRICS_FILE, MetricsCallback, OverfittingCallback,
                                            write_report)
from trainer_service.recipe.spec import TrainSpec

CHECKPOINTS_DIR = "checkpoints"
TRAIN_RESULT = "train_result.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_SPEC = "spec.json"  # in checkpoints/: the spec that made them
GENERATION_MARKER = "{% generation %}"


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter_dir: Path | None
    best_checkpoint: str | None
    best_eval_loss: float | None
    global_step: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: str | None = None
    metrics_path: Path | None = None
    report_path: Path | None = None
    attention: str | None = None  # the attention kernel used, and why


def quantized_layers(model: Any) -> int:
    """Linear layers bitsandbytes quantized (Linear4bit for nf4, Linear8bitLt for int8)."""
    return sum(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules())


@dataclass
class Recipe:
    """The library objects built from a spec (see build_recipe)."""

    quantization: Any  # transformers.BitsAndBytesConfig | None
    lora: Any  # peft.LoraConfig
    sft: Any  # trl.SFTConfig
    torch_dtype: Any


def build_recipe(spec: TrainSpec, output_dir: Path, *, use_cpu: bool, has_validation: bool,
                 trainable_token_indices: list[int] | dict[str, list[int]] | None = None
                 ) -> Recipe:
    """Translates the spec into BitsAndBytesConfig, LoraConfig and SFTConfig, in one place."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    bf16 = (not use_cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    compute_dtype = torch.bfloat16 if bf16 else torch.float32
    quant = None
    if spec.quantization == "nf4":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=compute_dtype)
    elif spec.quantization == "int8":
        quant = BitsAndBytesConfig(load_in_8bit=True)
    lora = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.effective_alpha,
                      lora_dropout=spec.lora.dropout, target_modules=spec.lora.target_modules,
                      use_rslora=spec.lora.use_rslora, bias="none", task_type="CAUSAL_LM",
                      trainable_token_indices=trainable_token_indices)
    t = spec.training
    every = t.eval_every_steps
    sft = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of steps
        per_device_train_batch_size=t.per_device_batch,
        per_device_eval_batch_size=t.per_device_batch,
        gradient_accumulation_steps=t.grad_accum,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5 name
        max_length=t.max_seq_len,
        packing=t.packing,
        # BFD packing is padding-free: no attention mask, position ids restart per row and
        # the rows' bounds come with the batch, so attention (varlen row by row, flash varlen,
        # or the block-diagonal mask transformers derives from position ids for sdpa/eager)
        # never crosses row boundaries.
        packing_strategy="bfd",
        padding_free=t.packing,
        # Rows arrive tokenized with our own assistant masks (loss_on), which TRL folds into
        # labels; its assistant_only_loss flag only applies to untokenized messages.
        assistant_only_loss=False,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        logging_steps=min(t.logging_steps, every),
        load_best_model_at_end=has_validation,
        metric_for_best_model="eval_loss" if has_validation else None,
        greater_is_better=False if has_validation else None,
        save_total_limit=2,  # the best checkpoint is kept beyond the limit by Trainer
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        use_cpu=use_cpu,
        report_to="none",
        include_num_input_tokens_seen=True,
        disable_tqdm=True,
    )
    return Recipe(quantization=quant, lora=lora, sft=sft, torch_dtype=compute_dtype)


def choose_attention(spec: TrainSpec, config: Any) -> tuple[str, str]:
    """The attention kernel for ``training.attention`` on this model and machine, and why
    (recipe/attention.py); TrainError when the choice cannot run here. Preflight calls it,
    so a dry run finds a kernel that is missing."""
    from trainer_service.recipe import attention

    t = spec.training
    kernel, why = attention.resolve(t.attention, t.packing, config, t.max_seq_len)
    if kernel == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise TrainError("attention_unavailable", "flash_attention_2 needs the flash-attn "
                             "package and a CUDA GPU", "training.attention",
                             fix="install flash-attn, or use auto (torch's own varlen kernel)")
    return kernel, why


def load_base(spec: TrainSpec, recipe: Recipe, *, use_cpu: bool) -> tuple[Any, str]:
    """The base model, quantized as the recipe says, with the attention kernel of
    ``training.attention`` (see recipe/attention.py); returns (model, the kernel and why)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(spec.base_model)
    except (OSError, ValueError):
        config = None  # from_pretrained below reports it
    kernel, why = choose_attention(spec, config)
    kwargs = dict(quantization_config=recipe.quantization, dtype=recipe.torch_dtype,
                  device_map={"": 0} if not use_cpu and recipe.quantization is not None else None)
    if config is not None:
        kwargs["config"] = config  # read once
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, attn_implementation=kernel,
                                                 **kwargs)
    return model, why


def read_split(dataset_dir: Path, split: str) -> list[dict]:
    """Every row of DATASET/<split>.jsonl as `{"messages", "tools"?, "id"?}` (null message
    fields dropped; empty if the file is absent)."""
    path = Path(dataset_dir) / f"{split}.jsonl"
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError("dataset_row_invalid", f"{path}:{n}: not a JSON object ({exc})",
                             "dataset", fix="rewrite the split with the data engine") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TrainError("dataset_row_invalid", f"{path}:{n}: row has no `messages` list "
                             "of {role, content} objects", "dataset")
        try:
            tools = tool_definitions(row.get("tools"))
        except ValueError as exc:
            raise TrainError("dataset_row_invalid", f"{path}:{n}: `tools` is not a list of "
                             f"tool definitions ({exc})", "dataset") from None
        kept = {"messages": [{k: v for k, v in m.items() if v is not None} for m in messages]}
        if tools:
            kept["tools"] = tools
        if row.get("id") is not None:
            kept["id"] = str(row["id"])
        rows.append(kept)
    return rows


def last_span_only(mask: list[int]) -> list[int]:
    """Keeps only the last contiguous run of 1s: the final assistant reply."""
    out = [0] * len(mask)
    i = len(mask) - 1
    while i >= 0 and mask[i] == 0:
        i -= 1
    while i >= 0 and mask[i] == 1:
        out[i] = 1
        i -= 1
    return out


def tokenize_rows(tokenizer, rows: list, loss_on: str, template: ChatTemplate | None = None):
    """A datasets.Dataset of input_ids + assistant_masks rendered with the tokenizer's template,
    from the rows (`read_split`'s, or message lists) as preflight checks them, with the tools
    each offers (`normalize_messages`: tool calls stored as JSON strings parsed, as templates
    and inference servers expect). The masks come from the template's generation markers, or,
    for a ``template`` without them (`model+turns`), from its turns, as preflight computes
    them."""
    from datasets import Dataset

    from trainer_service.recipe.chat_format import (ChatFormatError, encode_row,
                                                    normalize_messages, row_parts,
                                                    through_end_of_turn)

    by_turns = template is not None and not template.markers
    if not by_turns:
        stops = (template.stop_tokens if template is not None
                 else [end_of_turn(tokenizer, tokenizer.chat_template)])
        stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in stops}
    ids, masks = [], []
    for n, row in enumerate(rows):
        messages, tools = row_parts(row)
        if by_turns:
            try:
                encoded = encode_row(tokenizer, template, messages, loss_on, tools)
            except ChatFormatError as err:
                raise TrainError(err.code, f"row {n}: {err.message}", err.field) from err
            row_ids, mask = encoded.input_ids, encoded.mask
        else:
            enc = tokenizer.apply_chat_template(normalize_messages(messages), tools=tools,
                                                tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            row_ids = list(enc["input_ids"])
            mask = through_end_of_turn(row_ids, list(enc["assistant_masks"]), stop_ids)
            if loss_on == "last_assistant":
                mask = last_span_only(mask)
        if 1 not in mask:
            raise TrainError("empty_loss_mask", f"row {n} has no assistant tokens in the loss "
                             f"mask; the chat template needs {GENERATION_MARKER} markers",
                             "chat_template")
        ids.append(row_ids)
        masks.append(mask)
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": masks})


def _resolve_template(spec: TrainSpec, tokenizer, chat_template: str | None) -> str:
    if chat_template is None:
        if spec.chat_template == "auto":
            chat_template = tokenizer.chat_template
        elif spec.chat_template == "chatml":
            raise TrainError("template_missing", "pass the ChatML training template (chat_format) "
                             "to train()", "chat_template")
        else:
            path = Path(spec.chat_template)
            if not path.is_file():
                raise TrainError("template_not_found", f"{path}: no such file", "chat_template")
            chat_template = path.read_text(encoding="utf-8")
    if not chat_template or not has_generation_markers(chat_template):  # as preflight reads it
        raise TrainError("template_without_generation", f"assistant-only loss needs a template "
                         f"with {GENERATION_MARKER} markers", "chat_template")
    return chat_template


class HooksCallback(TrainerCallback):
    """Reports saved checkpoints to the hooks and stops at a step boundary when asked: a
    drain saves a checkpoint first (the job resumes from it), a cancel does not."""

    def __init__(self, hooks: RunHooks):
        self.hooks = hooks
        self.stopped: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        reason = self.hooks.stop_requested()
        if reason and not self.stopped:
            self.stopped = reason
            control.should_training_stop = True
            control.should_save = reason != "cancel"

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            self.hooks.checkpoint(state.global_step, str(path))


def token_row_targets(model: Any, token_ids: list[int]) -> dict[str, list[int]]:
    """PEFT ``trainable_token_indices`` naming both embedding matrices: the input rows (how
    the model reads a token) and the output rows (whether it emits it: for the end-of-turn
    token, the stop). A bare list reaches only the input embedding, so an untied model
    (Qwen2.5-7B) would keep an untrained output row. With tied weights PEFT trains the one
    shared row."""
    names = {module: name for name, module in model.named_modules()}
    targets = {names[model.get_input_embeddings()]: list(token_ids)}
    output = model.get_output_embeddings()
    if output is not None and output in names:
        targets[names[output]] = list(token_ids)
    return targets


def sft_trainer_class(token_rows: bool) -> type:
    """TRL's SFTTrainer, or, for runs that train single token rows (PEFT trainable tokens),
    one whose loss goes through the model's own head. TRL's fused LM head reads
    ``lm_head.weight`` directly, past PEFT's wrapper: on a tied model it fails (the wrapper
    has no ``bias``), on an untied one it would train without the output rows' update. The
    model's head applies them: the same loss (a mean over the batch's supervised tokens),
    with the full logits in memory."""
    from transformers import Trainer
    from trl import SFTTrainer

    if not token_rows:
        return SFTTrainer

    class TokenRowsSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return TokenRowsSFTTrainer


def _checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders in ``output_dir``, newest (highest N) first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir()
             if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def _incomplete(checkpoint: Path) -> bool:
    """A save cut short (a kill, an OOM, a full disk): transformers writes
    `trainer_state.json` last, without a temporary folder."""
    return not (checkpoint / "trainer_state.json").is_file()


def _latest_checkpoint(output_dir: Path) -> str | None:
    """The newest complete checkpoint (transformers' `get_last_checkpoint` takes the newest
    folder, and resuming a cut-short one failed every rerun with FileNotFoundError)."""
    return next((str(p) for p in _checkpoints(output_dir) if not _incomplete(p)), None)


def _training_fields(spec: TrainSpec) -> dict[str, Any]:
    """The spec's fields that shape training: all but what comes after it (`export`) and
    `dry_run`, flattened to dotted names."""
    from dataclasses import asdict

    flat: dict[str, Any] = {}
    for key, value in asdict(spec).items():
        if key in ("export", "dry_run"):
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _digest(spec: TrainSpec) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(_training_fields(spec), sort_keys=True,
                                     default=str).encode()).hexdigest()


def check_checkpoints_match(spec: TrainSpec, out_dir: Path, record: bool = True) -> None:
    """Checkpoints in ``out_dir`` resume only the run whose spec made them: resuming them under
    another spec would keep their step count, optimizer and schedule (a new learning rate
    ignored, a run already at its last step training nothing), or fail on a new LoRA rank.
    Raises TrainError naming what differs; records the spec when there is none yet (unless
    ``record`` is False: a check before anything is written)."""
    path = out_dir / CHECKPOINT_SPEC
    fields = json.loads(json.dumps(_training_fields(spec), default=str))
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in saved.keys() | fields.keys() if saved.get(k) != fields.get(k))
        if changed and _latest_checkpoint(out_dir):
            shown = ", ".join(f"{k} ({saved.get(k)!r} -> {fields.get(k)!r})" for k in changed[:4])
            raise TrainError("run_dir_in_use", f"{out_dir} holds checkpoints of a run with "
                             f"another spec: {shown}{' ...' if len(changed) > 4 else ''}",
                             "out", fix="give this run its own --out folder, or delete "
                             f"{out_dir} to start this one over")
    if record:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fields, indent=2, sort_keys=True), encoding="utf-8")


CHECKPOINT_DATA = "data.json"  # in checkpoints/: the SHA-256 of the splits they were trained on


def data_digests(dataset: str | Path) -> dict[str, str | None]:
    """SHA-256 of the dataset's train and validation files (None for one that is absent)."""
    from data_engine.readers.shards import file_sha256

    paths = {split: Path(dataset) / f"{split}.jsonl" for split in ("train", "validation")}
    return {split: file_sha256(path) if path.is_file() else None
            for split, path in paths.items()}


def check_data_unchanged(spec: TrainSpec, out_dir: Path,
                         digests: dict[str, str | None], record: bool = True) -> None:
    """Checkpoints in ``out_dir`` resume only on the data they were trained on: a job
    paused by a drain and resumed after its dataset folder was rewritten trained its last
    29 of 40 steps on other rows, kept the old schedule, and ended SUCCEEDED. Raises
    TrainError `dataset_changed`; records the digests when there are none yet."""
    path = out_dir / CHECKPOINT_DATA
    if path.is_file() and _latest_checkpoint(out_dir):
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [split for split in ("train", "validation")
                   if saved.get(split) != digests.get(split)]
        if changed:
            shown = ", ".join(f"{split}.jsonl (sha256 {str(saved.get(split))[:12]} -> "
                              f"{str(digests.get(split))[:12]})" for split in changed)
            raise TrainError("dataset_changed", f"{spec.dataset} changed since {out_dir} "
                             f"was checkpointed: {shown}; resuming would go on with another "
                             "data's rows under the first one's step count and schedule",
                             "dataset", fix="restore the dataset the run started on, or "
                             "train the new data as a new run (its own --out, or a new job)")
    if record:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(digests, indent=2, sort_keys=True), encoding="utf-8")


def finished_result(spec: TrainSpec, run_dir: Path) -> TrainResult | None:
    """The result of a training that already finished in ``run_dir`` for this same spec
    (a rerun after an interruption in merge or verification skips straight to them)."""
    path = run_dir / TRAIN_RESULT
    if not path.is_file():
        return None
    done = json.loads(path.read_text(encoding="utf-8"))
    adapter = Path(done.get("adapter_dir") or "")
    if done.get("spec_digest") != _digest(spec) or not (adapter / "adapter_config.json").is_file():
        return None
    if "data_sha256" in done and done["data_sha256"] != data_digests(spec.dataset):
        return None  # trained on other data: training runs, and finds it out
    return TrainResult(
        adapter_dir=adapter, best_checkpoint=done.get("best_checkpoint"),
        best_eval_loss=done.get("best_eval_loss"), global_step=done.get("global_step", 0),
        final_metrics=done.get("final_metrics") or {}, warnings=done.get("warnings") or [],
        stopped_early=bool(done.get("stopped_early")), resumed_from=done.get("resumed_from"),
        metrics_path=run_dir / METRICS_FILE, report_path=run_dir / "report.html",
        attention=done.get("attention"))


def train(spec: TrainSpec, run_dir: str | Path,
          trainable_token_indices: list[int] | dict[str, list[int]] | None = None,
          chat_template: str | ChatTemplate | None = None, log=print,
          hooks: RunHooks | None = None, announced: tuple[str, ...] = ()) -> TrainResult:
    """Runs QLoRA SFT for `spec`, writing checkpoints, metrics.jsonl, report.html and adapter/
    under `run_dir`; resumes from the newest checkpoint there. Raises RecipeStopped when the
    hooks ask it to stop. Warnings in ``announced`` (preflight's) are returned, not logged
    again. A ``dry_run`` spec goes further here than in `run_recipe` (which stops after
    preflight): the base is loaded and quantized and the trainer built (rows packed), and no
    step is taken."""
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback, PrinterCallback

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not spec.dry_run and (done := finished_result(spec, run_dir)) is not None:
        log(f"training already finished in {run_dir} (step {done.global_step}); reusing "
            f"{done.adapter_dir}")
        return done
    train_rows = read_split(Path(spec.dataset), "train")
    val_rows = read_split(Path(spec.dataset), "validation")
    if not train_rows:
        raise TrainError("no_train_rows", f"{spec.dataset}/train.jsonl is missing or empty",
                         "dataset")
    if not val_rows and not spec.allow_no_validation:
        raise TrainError("no_validation", f"{spec.dataset}/validation.jsonl is missing or empty; "
                         "training without validation cannot see overfitting",
                         "dataset", fix="add a validation split, or set allow_no_validation: "
                         "true to insist")
    warnings = spec.warnings(len(train_rows))
    for w in warnings:
        if w not in announced:
            log(f"WARNING {w}")
    digests = data_digests(spec.dataset)
    if not spec.dry_run:
        check_checkpoints_match(spec, run_dir / CHECKPOINTS_DIR)
        check_data_unchanged(spec, run_dir / CHECKPOINTS_DIR, digests)

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    template = chat_template if isinstance(chat_template, ChatTemplate) else None
    tokenizer.chat_template = (template.text if template is not None
                               else _resolve_template(spec, tokenizer, chat_template))
    if spec.align_eos:  # as preflight aligned it; adapter/ is saved with it
        tokenizer.eos_token = (template.end_of_turn if template is not None
                               else end_of_turn(tokenizer, tokenizer.chat_template))
    train_ds = tokenize_rows(tokenizer, train_rows, spec.loss_on, template)
    val_ds = tokenize_rows(tokenizer, val_rows, spec.loss_on, template) if val_rows else None

    use_cpu = not torch.cuda.is_available()
    out_dir = run_dir / CHECKPOINTS_DIR
    recipe = build_recipe(spec, out_dir, use_cpu=use_cpu, has_validation=val_ds is not None,
                          trainable_token_indices=trainable_token_indices)
    model, attention = load_base(spec, recipe, use_cpu=use_cpu)
    log(f"base: {spec.quantization}, {quantized_layers(model)} bitsandbytes linear layers, "
        f"{'CPU' if use_cpu else 'CUDA'}")
    log(f"attention {attention}")
    if isinstance(recipe.lora.trainable_token_indices, list):
        recipe.lora.trainable_token_indices = token_row_targets(
            model, recipe.lora.trainable_token_indices)
    if recipe.lora.trainable_token_indices:
        log(f"trainable token rows {recipe.lora.trainable_token_indices}: the loss goes through "
            "the model's own head (full logits), which applies them")

    hooks = hooks or RunHooks()
    metrics_cb = MetricsCallback(run_dir / METRICS_FILE, log=log, on_row=hooks.metrics)
    alarm_cb = OverfittingCallback(spec.training.early_stopping_patience,
                                   spec.training.overfit_train_loss, log=log)
    hooks_cb = HooksCallback(hooks)
    callbacks = [metrics_cb, alarm_cb, hooks_cb]
    if val_ds is not None:
        callbacks.append(EarlyStoppingCallback(spec.training.early_stopping_patience))
    trainer_class = sft_trainer_class(bool(recipe.lora.trainable_token_indices))
    trainer = trainer_class(model=model, args=recipe.sft, train_dataset=train_ds,
                            eval_dataset=val_ds, processing_class=tokenizer,
                            peft_config=recipe.lora, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # MetricsCallback reports each log line
    for w in spec.training.step_warnings(len(trainer.train_dataset), len(train_rows),
                                         val_ds is not None):
        if w not in announced:  # preflight's plan counts the same blocks and said it already
            log(f"WARNING {w}")
        warnings.append(w)
    if spec.dry_run:
        log("dry run: trainer built, no step taken")
        return TrainResult(None, None, None, 0, warnings=warnings)

    resume = _latest_checkpoint(out_dir)
    for broken in _checkpoints(out_dir):
        if resume and broken.name == Path(resume).name:
            break
        if _incomplete(broken):
            log(f"WARNING {broken} is incomplete (no trainer_state.json: its save was cut "
                "short); " + (f"resuming from {Path(resume).name}" if resume else
                              "training from the start") + ", and it is saved again")
    if resume:
        log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    if hooks_cb.stopped:
        saved = _latest_checkpoint(out_dir) if hooks_cb.stopped != "cancel" else None
        raise RecipeStopped(hooks_cb.stopped, "training", saved)
    max_steps = state.max_steps
    stopped_early = state.global_step < max_steps

    final: dict[str, float] = {}
    warnings += [w for w in alarm_cb.warnings if w not in warnings]
    # The closing evaluation is a summary, not a log step, and no evaluation in training:
    # the alarm read it as one more (the best checkpoint reloaded scores 1-2% off its
    # in-training loss) and warned of overfitting on a run that improved at every eval.
    for callback in (metrics_cb, alarm_cb, EarlyStoppingCallback):
        trainer.remove_callback(callback)
    if val_ds is not None:
        final = {k: float(v) for k, v in trainer.evaluate().items()
                 if isinstance(v, (int, float))}
    train_losses = [h["loss"] for h in state.log_history if "loss" in h]
    if train_losses:
        final["last_train_loss"] = float(train_losses[-1])

    adapter_dir = run_dir / ADAPTER_DIR
    trainer.model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    result = TrainResult(
        adapter_dir=adapter_dir, best_checkpoint=state.best_model_checkpoint,
        best_eval_loss=state.best_metric, global_step=state.global_step, final_metrics=final,
        warnings=warnings, stopped_early=stopped_early, resumed_from=resume,
        metrics_path=run_dir / METRICS_FILE, attention=attention)
    summary = {"base_model": spec.base_model, "dataset": spec.dataset,
               "train_rows": len(train_rows), "validation_rows": len(val_rows),
               "global_step": state.global_step, "max_steps": max_steps,
               "stopped_early": stopped_early, "attention": attention,
               "best_checkpoint": state.best_model_checkpoint,
               "best_eval_loss": state.best_metric, **final}
    result.report_path = write_report(run_dir, warnings, summary)
    (run_dir / TRAIN_RESULT).write_text(json.dumps(
        {**summary, "warnings": warnings, "adapter_dir": str(adapter_dir),
         "resumed_from": resume, "final_metrics": final, "spec_digest": _digest(spec),
         "data_sha256": digests},
        indent=2, default=str), encoding="utf-8")
    log(f"adapter saved to {adapter_dir}")
    return result
