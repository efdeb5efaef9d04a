"""Row-by-row attention over packed rows (trainer_service/recipe/attention.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer_service.recipe import attention
from trainer_service.recipe.spec import load_spec

LENGTHS = [5, 9, 3, 9, 1]


def _models(arch: str):
    """The same random weights twice: with sdpa and with varlen attention."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    config_class = {"llama": LlamaConfig, "qwen3": Qwen3Config}[arch]
    config = config_class(vocab_size=300, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, max_position_embeddings=256)
    torch.manual_seed(0)
    sdpa = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa")
    varlen = AutoModelForCausalLM.from_config(copy.deepcopy(config),
                                              attn_implementation=attention.register())
    varlen.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    assert varlen.config._attn_implementation == attention.ATTENTION
    return sdpa.eval(), varlen.eval()


def _packed(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, 300, (n,), generator=g) for n in lengths]
    ids = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    bounds = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths),
                  max_length_k=max(lengths))
    return rows, ids, positions, bounds


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_rows_compute_as_rows_alone(arch):
    """Logits and gradients of a packed sequence equal those of each row run on its own,
    with the bounds the collator passes and with restarting position ids alone."""
    sdpa, varlen = _models(arch)
    rows, ids, positions, bounds = _packed()
    alone = torch.cat([sdpa(r[None]).logits[0] for r in rows])
    with_bounds = varlen(ids, position_ids=positions, **bounds).logits[0]
    from_positions = varlen(ids, position_ids=positions).logits[0]
    assert torch.allclose(with_bounds, alone, atol=1e-5)
    assert torch.allclose(from_positions, alone, atol=1e-5)
    # without the bounds or restarting positions, rows would see each other: not equal
    leaky = varlen(ids).logits[0]
    assert not torch.allclose(leaky, alone, atol=1e-3)

    sum(sdpa(r[None], labels=r[None]).loss * (len(r) - 1) for r in rows).backward()
    labels = torch.cat([torch.cat([r[1:], torch.tensor([-100])]) for r in rows])[None]
    out = varlen(ids, position_ids=positions, **bounds)
    logits = out.logits[0]
    torch.nn.functional.cross_entropy(logits, labels[0], reduction="sum").backward()
    for (name, a), (_, b) in zip(sdpa.named_parameters(), varlen.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4), name


def test_padded_batches_and_generation_use_sdpa():
    sdpa, varlen = _models("qwen3")
    ids = torch.randint(0, 300, (2, 7))
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    assert torch.allclose(varlen(ids, attention_mask=mask).logits,
                          sdpa(ids, attention_mask=mask).logits, atol=1e-5)
    prompt = torch.randint(0, 300, (1, 4))
    a = sdpa.generate(prompt, max_new_tokens=5, do_sample=False)
    b = varlen.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)


def test_trl_collator_bounds_reach_the_attention(monkeypatch):
    """TRL's padding-free collator output, fed to the model as the trainer does, takes the
    bounds path (not the position-id fallback) and gives the rows' own loss."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    sdpa, varlen = _models("qwen3")
    rows, *_ = _packed([6, 4, 8])
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": r.tolist()} for r in rows])
    seen = []
    real = attention.row_bounds

    def spy(query, key, mask, kwargs):
        seen.append("cu_seq_lens_q" in kwargs)
        return real(query, key, mask, kwargs)
    monkeypatch.setattr(attention, "row_bounds", spy)
    loss = varlen(**{k: v for k, v in batch.items() if k != "seq_idx"}).loss
    tokens = sum(len(r) - 1 for r in rows)
    alone = sum(sdpa(r[None], labels=r[None]).loss * (len(r) - 1) for r in rows) / tokens
    assert seen and all(seen)
    assert torch.allclose(loss, alone, atol=1e-5)


def _fake_api(signature: str, calls: list):
    """Stand-ins for torch's varlen_attn as two torch releases spell it, computing with the
    per-row reference so the adapter's output can be checked."""
    def reference(q, k, v, cu, scale):
        if k.shape[1] != q.shape[1]:
            raise AssertionError("kv heads not expanded for an API without enable_gqa")
        return attention.per_row_attention(q, k, v, cu, scale)

    if signature == "early":  # is_causal, no scale, no GQA
        def fn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
               return_aux=None):
            calls.append(dict(is_causal=is_causal, max_q=max_q))
            return reference(query, key, value, cu_seq_q, query.shape[-1] ** -0.5)
    else:
        def fn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
               scale=None, window_size=(-1, -1), enable_gqa=False):
            calls.append(dict(window_size=window_size, scale=scale, enable_gqa=enable_gqa))
            if enable_gqa:
                groups = query.shape[1] // key.shape[1]
                key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
            return reference(query, key, value, cu_seq_q, scale)
    import inspect
    return fn, frozenset(inspect.signature(fn).parameters)


@pytest.mark.parametrize("signature", ["early", "late"])
def test_kernel_call_follows_the_torch_signature(monkeypatch, signature):
    calls: list = []
    monkeypatch.setattr(attention, "_varlen_api", lambda: _fake_api(signature, calls))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(20, 4, 16, generator=g)
    k, v = torch.randn(20, 2, 16, generator=g), torch.randn(20, 2, 16, generator=g)
    cu = torch.tensor([0, 6, 13, 20])
    scale = 16 ** -0.5
    out = attention.kernel_attention(q, k, v, cu, 7, scale)
    assert torch.allclose(out, attention.per_row_attention(q, k, v, cu, scale), atol=1e-6)
    if signature == "early":
        assert calls == [dict(is_causal=True, max_q=7)]
    else:
        assert calls == [dict(window_size=(-1, 0), scale=scale, enable_gqa=True)]


def test_kernel_only_where_it_runs(monkeypatch):
    q = torch.zeros(4, 2, 16, dtype=torch.bfloat16)
    assert not attention.kernel_usable(q, 0.25)  # CPU tensors never take the CUDA kernel
    monkeypatch.setattr(attention, "_varlen_api", lambda: _fake_api("early", []))

    class Cuda(torch.Tensor):
        is_cuda = True
    fake = q.as_subclass(Cuda)
    assert attention.kernel_usable(fake, 0.25)
    assert not attention.kernel_usable(fake, 0.3)  # the early API has no scale argument
    assert not attention.kernel_usable(fake.float().as_subclass(Cuda), 0.25)  # fp32


def test_auto_picks_varlen_only_where_it_applies():
    from transformers import FalconConfig, Gemma2Config, MistralConfig, Qwen2Config, Qwen3Config

    from trainer_service.recipe.errors import TrainError

    name, why = attention.resolve("auto", True, Qwen3Config(), 2048)
    assert name == attention.ATTENTION and why.startswith("varlen")
    assert attention.resolve("auto", False, Qwen3Config(), 2048)[0] == "sdpa"
    # Qwen2.5 ships a sliding window it does not use
    assert attention.resolve("auto", True, Qwen2Config(sliding_window=4096), 8192)[0] \
        == attention.ATTENTION
    name, why = attention.resolve("auto", True, MistralConfig(sliding_window=1024), 2048)
    assert name == "sdpa" and "sliding window (1024)" in why
    assert attention.resolve("auto", True, MistralConfig(sliding_window=4096), 2048)[0] \
        == attention.ATTENTION
    name, why = attention.resolve("auto", True, Gemma2Config(), 2048)
    assert name == "sdpa" and "soft-caps" in why
    assert attention.resolve("sdpa", True, Qwen3Config(), 2048)[0] == "sdpa"
    assert attention.resolve("varlen", False, None, None)[0] == attention.ATTENTION
    # Falcon's code runs its own attention: the bounds would be ignored, rows would mix
    name, why = attention.resolve("auto", True, FalconConfig(), 2048)
    assert name == "sdpa" and "attention interface" in why
    with pytest.raises(TrainError) as err:
        attention.resolve("varlen", True, FalconConfig(), 2048)
    assert (err.value.code, err.value.field) == ("attention_unsupported", "training.attention")


def test_spec_rejects_an_unknown_attention(tmp_path):
    from data_engine.errors import ConfigError

    path = tmp_path / "spec.yaml"
    path.write_text("base_model: m\ndataset: d\ntraining: {attention: flash}\n")
    with pytest.raises(ConfigError, match="attention: 'flash' is not one of auto, varlen"):
        load_spec(path)
    assert load_spec(None, {"base_model": "m", "dataset": "d"}).training.attention == "auto"


def test_flash_attention_2_without_its_package_is_a_train_error(tmp_path):
    from transformers import Qwen3Config
    from transformers.utils import is_flash_attn_2_available

    from trainer_service.recipe.errors import TrainError
    from trainer_service.recipe.spec import TrainingSpec, TrainSpec
    from trainer_service.recipe.train import build_recipe, load_base

    assert not is_flash_attn_2_available()  # this machine: no CUDA, no flash-attn
    Qwen3Config(vocab_size=300, hidden_size=64, num_hidden_layers=1).save_pretrained(tmp_path)
    spec = TrainSpec(base_model=str(tmp_path), dataset=str(tmp_path), quantization="none",
                     training=TrainingSpec(attention="flash_attention_2"))
    recipe = build_recipe(spec, tmp_path / "out", use_cpu=True, has_validation=False)
    with pytest.raises(TrainError) as err:
        load_base(spec, recipe, use_cpu=True)
    assert (err.value.code, err.value.field) == ("attention_unavailable", "training.attention")


@pytest.mark.gpu
def test_varlen_kernel_on_cuda():
    """On CUDA in bf16 the recipe's attention takes torch's varlen flash kernel, which agrees
    with SDPA row by row, forward and backward, with grouped kv heads."""
    assert torch.cuda.is_available()
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [300, 17, 1024, 5, 700]
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                      device="cuda")
    q = torch.randn(total, 16, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    scale = 128 ** -0.5
    assert attention.kernel_usable(q, scale), attention._varlen_api()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = attention.kernel_attention(*leaves, cu, max(lengths), scale)
    ref_leaves = [x.float().clone().requires_grad_() for x in (q, k, v)]
    ref = attention.per_row_attention(*ref_leaves, cu, scale)
    assert (out.float() - ref).abs().max() < 2e-2
    grad = torch.randn_like(ref)
    out.backward(grad.to(out.dtype))
    ref.backward(grad)
    for a, b in zip(leaves, ref_leaves):
        assert (a.grad.float() - b.grad).abs().max() < 5e-2
