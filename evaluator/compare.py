"""`tunesmith eval compare A B`: do two forms of one model say the same thing?

Forms: a model folder (merged, or any HF checkpoint), an adapter folder (its base, from
`--base` or the adapter's config, plus the un-merged LoRA), or a GGUF file (dequantized by
transformers). On the same rows, rendered with the same template, both forms score the
assistant tokens; reported are each form's assistant-only perplexity and their ratio (B/A),
the mean KL(A || B) of the next-token distributions at those positions, and how often both
put the same token on top. A merge that lost precision or a quantization that broke the
model shows here before anyone serves it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from evaluator.data import EvalError, EvalRow
from evaluator.perplexity import BATCH_ROWS, Encoded, encode_rows, pad_right


def describe_form(spec: str) -> str:
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise EvalError("form_not_found", f"{spec} is not a model folder (config.json), an "
                    "adapter folder (adapter_config.json) or a .gguf file", "form")


def load_form(spec: str, base: str | None = None, dtype: str = "float32", field: str = "model"):
    """(model, folder or file to read the tokenizer from) for one form, in eval mode;
    EvalError `model_not_loadable` (naming ``field``) when its files do not load."""
    try:
        return _load_form(spec, base, dtype)
    except (OSError, ValueError) as exc:  # a missing base, a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError("model_not_loadable", f"{spec} does not load: {first}", field) from None


def _load_form(spec: str, base: str | None, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    kind = describe_form(spec)
    torch_dtype = getattr(torch, dtype)
    path = Path(spec)
    if kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch_dtype)
        return model.eval(), path
    if kind == "adapter":
        from peft import PeftModel

        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base = base or config.get("base_model_name_or_path")
        if not base:
            raise EvalError("no_base", f"{spec} names no base model; pass --base", "base")
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype)
        return PeftModel.from_pretrained(model, str(path)).eval(), Path(base)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype).eval(), path


def _load_tokenizer(source: Path):
    from transformers import AutoTokenizer

    if source.is_file():  # a GGUF file carries its tokenizer
        return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    return AutoTokenizer.from_pretrained(str(source))


def scored_logits(model, encoded: Sequence[Encoded], batch_rows: int):
    """Per row, the float32 log-softmax at the positions that predict an assistant token,
    and those tokens' ids."""
    import torch

    for start in range(0, len(encoded), batch_rows):
        batch = encoded[start:start + batch_rows]
        ids, attention = pad_right(batch)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
        for i, e in enumerate(batch):
            targets = [j for j in range(1, len(e.ids)) if e.mask[j]]
            if not targets:
                continue
            positions = torch.tensor(targets) - 1
            yield torch.log_softmax(logits[i, positions], -1), ids[i, targets]


def compare_forms(a: str, b: str, rows: Sequence[EvalRow], base: str | None = None,
                  batch_rows: int = BATCH_ROWS) -> dict[str, Any]:
    """PPL of each form, their ratio, mean KL(A || B) and the same-top-token rate."""
    model_a, source_a = load_form(a, base, field="a")
    tokenizer = _load_tokenizer(source_a)
    encoded = encode_rows(tokenizer, rows)
    first = list(scored_logits(model_a, encoded, batch_rows))
    del model_a
    model_b, source_b = load_form(b, base, field="b")
    if len(_load_tokenizer(source_b)) != len(tokenizer):
        raise EvalError("vocab_mismatch", f"{a} and {b} have different vocabularies; they "
                        "are not forms of one model", "form")
    stats = agreement(first, scored_logits(model_b, encoded, batch_rows))
    return {"a": {"form": a, "kind": describe_form(a), "ppl": stats["ppl_a"]},
            "b": {"form": b, "kind": describe_form(b), "ppl": stats["ppl_b"]},
            "rows": len(rows), "tokens": stats["tokens"], "ppl_ratio": stats["ppl_ratio"],
            "mean_kl": stats["mean_kl"], "same_top_rate": stats["same_top_rate"]}


def agreement(first, second) -> dict[str, Any]:
    """PPL of each side, their ratio (second / first), mean KL(first || second) and the
    same-top-token rate, over per-row (log-probabilities, target ids) pairs."""
    nll_a = nll_b = kl = 0.0
    same = tokens = 0
    for (logp, targets), (logq, _) in zip(first, second):
        width = min(logp.shape[-1], logq.shape[-1])  # padded embeddings: the shared vocab
        logp, logq = logp[:, :width], logq[:, :width]
        nll_a -= logp.gather(-1, targets.unsqueeze(-1)).sum().item()
        nll_b -= logq.gather(-1, targets.unsqueeze(-1)).sum().item()
        kl += (logp.exp() * (logp - logq)).sum(-1).clamp_min(0).sum().item()
        same += (logp.argmax(-1) == logq.argmax(-1)).sum().item()
        tokens += targets.numel()
    if tokens == 0:
        raise EvalError("no_assistant_tokens", "no row has an assistant reply to score", "data")
    ppl_a, ppl_b = math.exp(nll_a / tokens), math.exp(nll_b / tokens)
    return {"ppl_a": ppl_a, "ppl_b": ppl_b, "ppl_ratio": ppl_b / ppl_a,
            "mean_kl": kl / tokens, "same_top_rate": same / tokens, "tokens": tokens}
