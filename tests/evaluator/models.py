"""Tiny real Llama models for the evaluator's tests: random ones, and scripted ones whose
greedy replies are known in advance.

A scripted model is an ordinary `LlamaForCausalLM` (or `Qwen3ForCausalLM`) with weights
chosen so that the next token depends on the current token alone: every attention and MLP
output projection is zero, so the residual stream at each position is the current token's
embedding, and the unembedding row of token `f(x)` is the normalised embedding of `x`.
Greedy decoding then follows the chain `x -> f(x) -> f(f(x))...` from the prompt's last
token (ChatML's generation prompt ends with a newline). Served by a real server, such a
model says "Hello" and stops, loops forever, or never emits the end-of-turn token, on
purpose.
"""

from __future__ import annotations

from pathlib import Path

END_OF_TURN = "<|im_end|>"
GENERATION_PROMPT_END = "\n"


def tiny_config(tokenizer, hidden_size: int = 64, tie: bool = False, arch: str = "llama",
                end_of_turn: str = END_OF_TURN):
    """A 2-layer config of Llama's architecture, or of Qwen3's (``arch="qwen3"``: per-head
    q/k norms, the architecture users fine-tune most), speaking the tokenizer's vocabulary."""
    from transformers import LlamaConfig, Qwen3Config

    config_class = {"llama": LlamaConfig, "qwen3": Qwen3Config}[arch]
    return config_class(vocab_size=len(tokenizer), hidden_size=hidden_size,
                        intermediate_size=2 * hidden_size, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2,
                        head_dim=hidden_size // 4,
                        max_position_embeddings=1024, tie_word_embeddings=tie,
                        initializer_range=0.3,  # logits of real-model scale (std ~2)
                        bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.convert_tokens_to_ids(end_of_turn),
                        pad_token_id=tokenizer.pad_token_id)


def save_model(model, tokenizer, out: Path, end_of_turn: str = END_OF_TURN) -> Path:
    """Saves model + tokenizer with a generation config that stops on the end-of-turn."""
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_model(tokenizer, out: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 64) in float32 speaking the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return save_model(LlamaForCausalLM(tiny_config(tokenizer)), tokenizer, out)


def chain_of(tokenizer, reply: str, then: str | None = END_OF_TURN,
             prompt_end: str = GENERATION_PROMPT_END) -> dict[str, str]:
    """The transition map for a model that answers ``reply`` (as the tokenizer splits it)
    and then emits ``then``: the end-of-turn token, or None to loop back to the reply's
    first token forever. ``prompt_end`` is the text the generation prompt ends with."""
    ids = tokenizer.encode(prompt_end, add_special_tokens=False)[-1:]
    ids += tokenizer.encode(reply, add_special_tokens=False)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    steps = dict(zip(tokens, tokens[1:]))
    if len(steps) != len(tokens) - 1:
        raise ValueError(f"{reply!r} repeats a token; a scripted model cannot tell them apart")
    steps[tokens[-1]] = then if then is not None else tokens[1]
    return steps


def scripted_model(tokenizer, out: Path, steps: dict[str, str], seed: int = 0,
                   arch: str = "llama", end_of_turn: str = END_OF_TURN) -> Path:
    """A Llama (or a Qwen3, `tiny_config`) whose greedy continuation of token x is
    ``steps[x]`` (token strings)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(tokenizer, hidden_size=128, arch=arch,
                                                         end_of_turn=end_of_turn))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.zero_()
        for source, target in steps.items():
            x = embed[tokenizer.convert_tokens_to_ids(source)]
            normalised = x / x.pow(2).mean().sqrt()
            head[tokenizer.convert_tokens_to_ids(target)] += normalised / normalised.norm() * 50
    return save_model(model, tokenizer, out, end_of_turn)
