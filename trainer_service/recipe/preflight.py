"""Preflight: prove, before the first training step, that the run can learn to stop.

Checks eos == end-of-turn (tokenizer and generation config), that every supervised assistant
turn ends with that token inside the loss mask and no prompt token is in it, that a
validation split exists, and whether the stop token's embeddings were ever trained (Qwen2.5
base models never trained `<|im_start|>`/`<|im_end|>`). Reports length, truncation and
packing statistics, and the run's plan: packed blocks, optimizer steps, warmup and
evaluations, counted as the trainer will count them, so a dry run shows a run too short to
learn or to be evaluated. The caller writes `report.to_json()` to RUN_DIR/preflight.json.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer_service.recipe.chat_format import (ChatFormatError, ChatTemplate, encode_row,
                                                renders_tools, row_parts)
from trainer_service.recipe.errors import PreflightError
from trainer_service.recipe.spec import TrainingSpec

TRUNCATION_WARN_RATE = 0.03  # a few % of rows losing their stop token is already visible
# Most rows losing their stop token teach the model to run on: the founding failure.
TRUNCATION_FAIL_RATE = 0.5
UNTRAINED_PERCENTILE = 1.0  # a stop-token row below this percentile of ordinary rows' norms
NEAR_MEAN_RATIO = 0.1  # ... or this close to the mean row, relative to the median distance
# TRL packs through datasets' batched map, whose batches hold 1,000 rows: blocks never mix
# rows of two batches.
PACK_MAP_BATCH = 1000


@dataclass
class PreflightReport:
    """What preflight saw; warnings are loud but do not stop the run."""

    template_source: str
    end_of_turn_token: str
    end_of_turn_id: int
    eos_token: str
    generation_eos_ids: list[int]
    loss_on: str
    max_seq_len: int
    packing: bool
    train_rows: int
    validation_rows: int
    supervised_turns: int
    tokens_per_row: dict[str, float]
    # supervised tokens per assistant turn as rendered (thinking and tool-call tags and the
    # stop token included): what the model learns to generate in one reply
    reply_tokens: dict[str, float]
    truncated_rows: int
    truncation_rate: float
    packing_efficiency: float
    plan: dict[str, Any] = field(default_factory=dict)  # blocks, steps, warmup, evaluations
    trainable_token_ids: list[int] = field(default_factory=list)
    embedding_check: dict[str, Any] = field(default_factory=dict)
    # the token replies that end in tool calls close with, where it is not the end of turn
    # (Gemma 4's <|tool_response>), and how many supervised turns end with it
    call_end_token: str | None = None
    call_turns: int = 0
    warnings: list[str] = field(default_factory=list)
    sample: str = ""  # the first row with supervised text in [[...]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


def _eos_ids(generation_config) -> list[int]:
    ids = getattr(generation_config, "eos_token_id", None)
    return [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))


def _messages(row) -> tuple[list[dict], list[dict] | None, str]:
    messages, tools = row_parts(row)
    return messages, tools, str(row.get("id", "")) if isinstance(row, dict) else ""


def _check_row(tokenizer, encoded, stop_ids: set[int], row_id: str) -> int:
    """Raise on a mask defect; return the number of supervised turns."""
    where = f"row {row_id!r}" if row_id else "a row"
    leaked = [i for i, (m, e) in enumerate(zip(encoded.mask, encoded.expected_mask)) if m and not e]
    if leaked:
        text = tokenizer.decode([encoded.input_ids[i] for i in leaked])
        raise PreflightError(
            "prompt_in_mask", f"{where}: prompt tokens are in the loss mask: {text!r}; the model "
            "would be trained to write the chat template's headers", "chat_template",
            "put {% generation %} after the assistant header (<|im_start|>assistant\\n) and "
            "{% endgeneration %} after the end-of-turn token, or use chat_template: chatml")
    missing = [i for i, (m, e) in enumerate(zip(encoded.mask, encoded.expected_mask)) if e and not m]
    for start, end in encoded.spans:
        last = max(i for i, (a, b) in enumerate(encoded.offsets) if a < end and b > start)
        if encoded.input_ids[last] not in stop_ids:
            raise PreflightError(
                "turn_without_end_of_turn", f"{where}: a supervised assistant turn ends with "
                f"{tokenizer.decode([encoded.input_ids[last]])!r}, not the end-of-turn token",
                "chat_template", "render each assistant turn followed by the end-of-turn token")
        if not encoded.mask[last]:
            raise PreflightError(
                "end_of_turn_not_in_mask", f"{where}: the end-of-turn token after an assistant "
                "reply is outside the loss mask, so the model never learns to stop (the "
                "`」」」」` failure)", "chat_template",
                "move {% endgeneration %} after the end-of-turn token, or use chat_template: chatml")
    if missing:
        raise PreflightError(
            "reply_not_in_mask", f"{where}: {len(missing)} reply tokens are outside the loss mask: "
            f"{tokenizer.decode([encoded.input_ids[i] for i in missing])[:80]!r}", "chat_template",
            "wrap each whole assistant reply in {% generation %}...{% endgeneration %}")
    return len(encoded.spans)


def _runs(mask: list[int]) -> list[int]:
    """The lengths of the runs of 1s in a loss mask: one per supervised turn."""
    runs, n = [], 0
    for bit in mask:
        if bit:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + [n] if n else runs


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _row_verdict(matrix, token_id: int, ordinary) -> dict[str, Any]:
    """How a token's embedding row compares with ordinary tokens' rows."""
    import torch

    rows = matrix.detach().float()
    base = rows[ordinary]
    norms = base.norm(dim=1)
    mean = base.mean(dim=0)
    row = rows[token_id]
    p1 = float(torch.quantile(norms, UNTRAINED_PERCENTILE / 100.0))
    dist = float((row - mean).norm())
    median_dist = float((base - mean).norm(dim=1).median())
    low_norm = float(row.norm()) < p1
    near_mean = dist < NEAR_MEAN_RATIO * median_dist
    return {"norm": round(float(row.norm()), 6), "p1_norm": round(p1, 6),
            "median_norm": round(float(norms.median()), 6),
            "distance_to_mean": round(dist, 6), "median_distance_to_mean": round(median_dist, 6),
            "untrained": bool(low_norm or near_mean),
            "why": "norm below the 1st percentile" if low_norm else
                   ("near the mean row (initialisation)" if near_mean else "")}


@dataclass
class EmbeddingRows:
    """A base model's input and output embedding matrices without the rest of its weights,
    read from its safetensors files (`read_embedding_rows`): all the stop-token check needs,
    whatever the model's size. Quacks like a model for `run_preflight`."""

    config: Any
    input: Any  # torch.Tensor (vocab, hidden)
    output: Any | None = None  # None: tied to the input embeddings
    generation_config: Any = None

    def get_input_embeddings(self):
        return _Weight(self.input)

    def get_output_embeddings(self):
        return None if self.output is None else _Weight(self.output)


@dataclass
class _Weight:
    weight: Any


def read_embedding_rows(folder, config=None) -> EmbeddingRows:
    """Only the embedding matrices of the causal LM in ``folder``, read lazily from its
    safetensors shards (a 7B model's two matrices are ~1.1 GB of its 15). Raises LookupError
    saying why when they cannot be read (no folder, no safetensors, names not found)."""
    from pathlib import Path

    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not folder.is_dir():
        raise LookupError(f"{folder} is not a local folder (a hub id: download it and pass "
                          "the folder to have it checked)")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise LookupError(f"{folder} has no .safetensors weights")
    config = config or AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # parameter names only, no memory
        skeleton = AutoModelForCausalLM.from_config(config)
    names: dict[int, str] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)  # a tied matrix: its first (saved) name
    inp = skeleton.get_input_embeddings().weight
    out_layer = skeleton.get_output_embeddings()
    wanted = {"input": names[id(inp)]}
    if out_layer is not None and out_layer.weight is not inp:
        wanted["output"] = names[id(out_layer.weight)]
    where: dict[str, Any] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                where[key] = shard
    found: dict[str, Any] = {}
    for kind, name in wanted.items():
        key = name if name in where else _unique_suffix_match(name, where)
        if key is None:
            if kind == "output" and getattr(config, "tie_word_embeddings", False):
                continue  # tied in the checkpoint although the classes keep two modules
            raise LookupError(f"no tensor named {name!r} in {folder}'s safetensors")
        with safe_open(str(where[key]), framework="pt") as f:
            found[kind] = f.get_tensor(key)
    return EmbeddingRows(config=config, input=found["input"], output=found.get("output"))


def _unique_suffix_match(name: str, keys) -> str | None:
    """The one checkpoint key ending like ``name`` (its last two parts, e.g.
    ``embed_tokens.weight``), for checkpoints saved with another prefix."""
    tail = ".".join(name.split(".")[-2:])
    hits = [k for k in keys if k == tail or k.endswith("." + tail)]
    return hits[0] if len(hits) == 1 else None


def check_embeddings(tokenizer, model, token_ids: list[int]) -> tuple[dict[str, Any], list[int]]:
    """Per token and matrix (input, output), whether its row looks trained; ids to train."""
    import torch

    inp = model.get_input_embeddings().weight
    out_layer = model.get_output_embeddings()
    matrices = {"input": inp}
    if out_layer is not None and out_layer.weight.data_ptr() != inp.data_ptr():
        matrices["output"] = out_layer.weight
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    limit = min(len(tokenizer), inp.shape[0])
    ordinary = torch.tensor([i for i in range(limit) if i not in special])
    result, untrained = {}, []
    for token_id in token_ids:
        name = tokenizer.convert_ids_to_tokens(token_id)
        verdicts = {kind: _row_verdict(m, token_id, ordinary) for kind, m in matrices.items()}
        if "output" not in matrices:
            verdicts["output"] = {"tied": True}
        result[name] = verdicts
        if any(v.get("untrained") for v in verdicts.values()):
            untrained.append(token_id)
    return result, untrained


def check_lora_targets(config, target_modules) -> list[str]:
    """The layers a list of ``lora.target_modules`` names wraps, by PEFT's rule (a module whose
    name is the entry or ends with "." + it), found on a meta-device skeleton of the model
    (no weights). PreflightError when a name matches no layer, or only modules LoRA cannot
    wrap (a block rather than a layer), naming the model's linear layers; 'all-linear' is
    PEFT's own choice and is not checked."""
    if isinstance(target_modules, str):
        return []
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    layers = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    modules = list(skeleton.named_modules())
    output = skeleton.get_output_embeddings()
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in modules
                     if isinstance(module, torch.nn.Linear) and module is not output})
    wrapped, problems = [], []
    for target in target_modules:
        hits = [(name, module) for name, module in modules
                if name == target or name.endswith("." + target)]
        if not hits:
            problems.append(f"{target!r} matches no module")
        elif not any(isinstance(module, layers) for _, module in hits):
            problems.append(f"{target!r} matches {type(hits[0][1]).__name__} blocks, not layers")
        wrapped += [name for name, module in hits if isinstance(module, layers)]
    if problems:
        raise PreflightError(
            "lora_targets_unknown", f"{'; '.join(problems)} in {type(skeleton).__name__}",
            "lora.target_modules", f"name its linear layers ({', '.join(linear)}), or use "
            "all-linear")
    return wrapped


def pack_blocks(lengths: list[int], max_seq_len: int) -> int:
    """Blocks that TRL's best-fit-decreasing packing (`packing_strategy="bfd"`) makes of rows of
    these token lengths: each row cut to max_seq_len, then, batch by batch of the map, the
    longest first into the open block with the least room that fits it. The count does not
    depend on which of equally full blocks is picked, so it equals TRL's."""
    blocks = 0
    for start in range(0, len(lengths), PACK_MAP_BATCH):
        room: list[int] = []  # free tokens of the open blocks, ascending
        batch = (min(n, max_seq_len) for n in lengths[start:start + PACK_MAP_BATCH] if n > 0)
        for n in sorted(batch, reverse=True):
            i = bisect.bisect_left(room, n)
            if i < len(room):
                left = room.pop(i) - n
            else:
                blocks += 1
                left = max_seq_len - n
            if left:
                bisect.insort(room, left)
    return blocks


def _pack_efficiency(lengths: list[int], max_seq_len: int, packing: bool, batch_size: int) -> float:
    """Real tokens over the slots they take: packed blocks, or batches padded to their
    longest row."""
    if not lengths:
        return 0.0
    lengths = [min(n, max_seq_len) for n in lengths]
    if packing:
        return sum(lengths) / (pack_blocks(lengths, max_seq_len) * max_seq_len)
    slots = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                for i in range(0, len(lengths), batch_size))  # padded to each batch's longest
    return sum(lengths) / slots


def run_preflight(tokenizer, model_config_or_model, train_rows, validation_rows,
                  template: ChatTemplate, loss_on: str, max_seq_len: int,
                  allow_no_validation: bool = False, packing: bool = False,
                  generation_config=None, batch_size: int = 8,
                  embedding_skip: str = "no weights given (a config only)",
                  training: TrainingSpec | None = None) -> PreflightReport:
    """Run every check; raise PreflightError on the first failure, else return the report.

    Rows are dicts with `messages` (and optional `tools`, `id`) or bare message lists.
    `model_config_or_model`: a model (or `EmbeddingRows`) enables the embedding check; a
    config skips it, with `embedding_skip` as the reason, and a warning.
    `generation_config` defaults to the model's (or one built from the config).
    `training` (the spec's section, whose packing, batch and max_seq_len then apply) adds the
    run's plan and the warnings of a run with too few steps.
    """
    if training is not None:
        max_seq_len, packing = training.max_seq_len, training.packing
        batch_size = training.per_device_batch
    warnings: list[str] = []
    eot = template.end_of_turn
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    if eot_id is None or eot_id == tokenizer.unk_token_id:
        raise PreflightError("end_of_turn_unknown", f"{eot!r} is not a token of this tokenizer",
                             "chat_template", "use the model's own template or its tokenizer")
    if tokenizer.eos_token != eot:
        raise PreflightError(
            "eos_not_end_of_turn", f"the tokenizer's eos is {tokenizer.eos_token!r} but turns end "
            f"with {eot!r}; a runtime that stops on the tokenizer's eos (a GGUF takes it from "
            "tokenizer_config.json) would not stop at the end of a reply", "tokenizer.eos_token",
            f"set align_eos: true in the spec (the run then uses {eot!r} as the eos and saves "
            f'adapter/ and merged/ with it), or set "eos_token": {json.dumps(eot)} in '
            "tokenizer_config.json of (a copy of) the base model's folder")
    is_model = hasattr(model_config_or_model, "get_input_embeddings")
    if generation_config is None:
        from transformers import GenerationConfig

        generation_config = (getattr(model_config_or_model, "generation_config", None)
                             if is_model else None)
        if generation_config is None:
            config = model_config_or_model.config if is_model else model_config_or_model
            generation_config = GenerationConfig.from_model_config(config)
    gen_ids = _eos_ids(generation_config)
    if eot_id not in gen_ids:
        raise PreflightError(
            "generation_eos_missing", f"generation_config.eos_token_id {gen_ids} lacks {eot!r} "
            f"({eot_id}); generate() and servers reading it would not stop after a reply",
            "generation_config.eos_token_id",
            f"set align_eos: true in the spec, or add {eot_id} to eos_token_id in the base "
            "model's generation_config.json")
    stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in template.stop_tokens}
    if tokenizer.pad_token_id == eot_id:
        warnings.append(f"pad token is {eot!r}: padding must be masked by attention_mask, never by "
                        "token id, or the stop token leaves the loss (TRL masks by attention_mask)")
    if not validation_rows:
        if not allow_no_validation:
            raise PreflightError(
                "no_validation", "there is no validation split, so overfitting cannot be seen "
                "(the founding run fell from loss 2.85 to 0.25 unnoticed)", "dataset.validation",
                "give the dataset a validation.jsonl (the data engine's split stage makes one), "
                "or set allow_no_validation: true")
        warnings.append("NO VALIDATION SPLIT: overfitting will go unnoticed; eval and early "
                        "stopping are off (allow_no_validation is set)")
    if not train_rows:
        raise PreflightError("no_train_rows", "the train split is empty", "dataset.train",
                             "point the job at a data engine output folder with train.jsonl")

    lengths, truncated, unsupervised, turns, dropped_reasoning, sample = [], 0, 0, 0, 0, ""
    calls = 0  # supervised turns that end with the template's call_end
    replies: list[int] = []
    offered, tools_shown = 0, None  # rows with tool definitions; whether the template shows them
    for index, row in enumerate(train_rows):
        messages, tools, row_id = _messages(row)
        try:
            encoded = encode_row(tokenizer, template, messages, loss_on, tools)
        except ChatFormatError as err:
            raise PreflightError(err.code, f"row {row_id or index}: {err.message}", err.field,
                                 err.fix or "fix the row or the template") from err
        turns += _check_row(tokenizer, encoded, stop_ids, row_id or str(index))
        calls += sum(1 for start, end in encoded.spans if template.call_end
                     and encoded.text[:end].endswith(template.call_end))
        # reasoning the rendered text lacks: a template without thinking blocks, or one
        # that, like Qwen3's, renders them only after the last user message
        dropped_reasoning += sum(
            1 for m in messages if m.get("role") == "assistant"
            and isinstance(m.get("reasoning_content"), str) and m["reasoning_content"].strip()
            and m["reasoning_content"].strip() not in encoded.text)
        if tools:
            offered += 1
            if tools_shown is None:  # a property of the template: one row tells
                tools_shown = renders_tools(tokenizer, template, messages, tools)
        replies += _runs(encoded.mask)
        n = len(encoded.input_ids)
        lengths.append(n)
        if n > max_seq_len and any(encoded.mask[max_seq_len:]):
            truncated += 1
            unsupervised += not any(encoded.mask[:max_seq_len])
        if not sample:
            cuts = [0]
            for a, b in encoded.spans:
                cuts += [a, b]
            pieces = [encoded.text[cuts[i]:cuts[i + 1]] for i in range(len(cuts) - 1)]
            sample = "".join(f"[[{p}]]" if i % 2 else p for i, p in enumerate(pieces))
            sample += encoded.text[cuts[-1]:]
    # Validation rows are scored every evaluation: a row training would refuse (unreadable
    # tool calls, a stop token in its text, a turn without a role) failed only after
    # preflight, with a traceback, or was scored as it came.
    for index, row in enumerate(validation_rows or []):
        messages, tools, row_id = _messages(row)
        where = f"{row_id or index} (validation)"
        try:
            encoded = encode_row(tokenizer, template, messages, loss_on, tools)
        except ChatFormatError as err:
            raise PreflightError(err.code, f"row {where}: {err.message}", err.field,
                                 err.fix or "fix the row or the template") from err
        _check_row(tokenizer, encoded, stop_ids, where)
    if calls and template.call_end:
        call_id = tokenizer.convert_tokens_to_ids(template.call_end)
        if call_id not in gen_ids:
            raise PreflightError(
                "generation_eos_missing", f"generation_config.eos_token_id {gen_ids} lacks "
                f"{template.call_end!r} ({call_id}), which the template ends a tool call "
                f"with; {calls} supervised turns end with a call, and after one generate() "
                "and servers reading it would run on and write the tool's result themselves",
                "generation_config.eos_token_id",
                f"set align_eos: true in the spec, or add {call_id} to eos_token_id in the "
                "base model's generation_config.json")
    if dropped_reasoning:
        warnings.append(f"{dropped_reasoning} assistant turns have reasoning_content that the "
                        "template does not render (it has no thinking blocks, or, like "
                        "Qwen3's, renders them only after the last user message); it is not "
                        "trained")
    if offered and not tools_shown:
        warnings.append(f"{offered} rows offer tools that the template does not render: the "
                        "model learns their calls without seeing the definitions; use "
                        "chat_template: chatml, or a template that renders `tools`")
    rate = truncated / len(lengths)
    if rate > TRUNCATION_FAIL_RATE:
        raise PreflightError(
            "truncated_stop_tokens", f"{truncated} of {len(lengths)} rows ({rate:.1%}) lose "
            f"supervised tokens, their stop token included, at max_seq_len {max_seq_len}: the "
            "model would learn to run past the end of a reply", "training.max_seq_len",
            f"raise max_seq_len to at least {int(_percentile(lengths, 95))} (95% of rows), or "
            "drop long rows in the data engine (clean.length.max_tokens)")
    if rate > TRUNCATION_WARN_RATE:
        warnings.append(f"{truncated} of {len(lengths)} rows ({rate:.1%}) lose supervised tokens, "
                        f"their stop token included, at max_seq_len {max_seq_len}; raise "
                        "max_seq_len or filter long rows (data engine clean.length.max_tokens)")
    plan: dict[str, Any] = {}
    if training is not None:
        # packed: every row takes its place in a block; padded: the trainer drops the rows
        # that truncation leaves without a supervised token
        items = pack_blocks(lengths, max_seq_len) if packing else len(lengths) - unsupervised
        plan = training.plan(items, bool(validation_rows))
        warnings += training.step_warnings(items, len(lengths), bool(validation_rows))

    embedding_check: dict[str, Any] = {}
    trainable: list[int] = []
    if is_model:
        ids = [eot_id] + ([tokenizer.convert_tokens_to_ids(template.call_end)] if calls else [])
        if template.turn_start:
            ids.append(tokenizer.convert_tokens_to_ids(template.turn_start))
        embedding_check, trainable = check_embeddings(tokenizer, model_config_or_model, ids)
        if trainable:
            names = tokenizer.convert_ids_to_tokens(trainable)
            warnings.append(f"embedding rows of {names} look untrained (base model never saw "
                            f"them); training them too: trainable_token_indices={trainable}")
    else:
        embedding_check = {"skipped": embedding_skip}
        warnings.append(f"stop-token embedding check skipped: {embedding_skip}; if the base "
                        f"never trained {eot!r}'s rows (Qwen2.5 base models), they stay "
                        "untrained")
    return PreflightReport(
        template_source=template.source, end_of_turn_token=eot, end_of_turn_id=eot_id,
        eos_token=tokenizer.eos_token, generation_eos_ids=gen_ids, loss_on=loss_on,
        max_seq_len=max_seq_len, packing=packing, train_rows=len(lengths),
        validation_rows=len(validation_rows or []), supervised_turns=turns,
        tokens_per_row={"min": min(lengths), "median": _percentile(lengths, 50),
                        "p95": _percentile(lengths, 95), "max": max(lengths)},
        reply_tokens={"median": _percentile(replies, 50), "p95": _percentile(replies, 95),
                      "max": max(replies, default=0)},
        truncated_rows=truncated, truncation_rate=rate,
        packing_efficiency=_pack_efficiency(lengths, max_seq_len, packing, batch_size),
        plan=plan,
        trainable_token_ids=trainable, embedding_check=embedding_check, warnings=warnings,
        sample=sample, call_end_token=template.call_end if calls else None,
        call_turns=calls)
