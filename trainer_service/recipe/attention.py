"""Attention over packed rows, computed row by row.

The recipe trains padding-free: TRL's BFD collator flattens a step's packed blocks into one
sequence and hands the rows' boundaries to the model (``cu_seq_lens_q/k``, ``max_length_q/k``).
transformers' ``sdpa`` path does not read them: it derives a dense block-diagonal mask from
the position ids, a (tokens x tokens) boolean over the whole step, and SDPA then computes every
masked-out score too (it cannot use its flash kernel with a mask). With 8 blocks of 2,048
tokens that is 16,384^2 scores per head where the rows need at most 8 x 2,048^2: the
attention cost grows with the square of the step, not of the row.

``varlen`` (registered with transformers' AttentionInterface under ``ATTENTION``) gives the
rows to torch's own variable-length flash kernel, ``torch.nn.attention.varlen.varlen_attn``,
on CUDA in fp16/bf16 (no flash-attn package needed). Elsewhere (CPU, fp32, an older torch) it
runs SDPA once per row: the same arithmetic, without the cross-row scores. Batches that carry
no row boundaries (padded batches with an attention mask, generation with a cache) go to
transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

ATTENTION = "tunesmith_varlen"


def register() -> str:
    """Registers ``ATTENTION`` (attention function and its mask builder) with transformers;
    idempotent. Returns the name to pass as ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTENTION, _mask)
    return ATTENTION


def resolve(choice: str, packing: bool, config: Any = None, max_seq_len: int | None = None
            ) -> tuple[str, str]:
    """The ``attn_implementation`` for a spec's ``training.attention`` and why.

    ``auto`` is ``varlen`` when rows are packed and the model has nothing ``varlen`` cannot
    do (attention-logit soft-capping; a sliding window shorter than ``max_seq_len``), else
    ``sdpa`` (transformers' default)."""
    if choice == "varlen":
        if takes_interface(config) is False:
            from trainer_service.recipe.errors import TrainError

            raise TrainError("attention_unsupported", f"{type(config).__name__}'s model code "
                             "does not call transformers' attention interface, so it cannot "
                             "use varlen", "training.attention", fix="set training.attention: "
                             "sdpa")
        return register(), "varlen (training.attention)"
    if choice != "auto":
        return choice, f"{choice} (training.attention)"
    if not packing:
        return "sdpa", "sdpa: rows are not packed (training.packing: false)"
    blocker = _unsupported(config, max_seq_len)
    if blocker:
        return "sdpa", f"sdpa: {blocker}"
    return register(), "varlen: each packed row attends only to itself, row by row"


def takes_interface(config: Any) -> bool | None:
    """Whether the causal-LM class for ``config`` dispatches attention through transformers'
    AttentionInterface (``_supports_attention_backend``); None when unknown (no config,
    remote code). A class that does not would run its own attention and ignore the bounds."""
    if config is None:
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, ValueError, ImportError):
        return None
    return bool(getattr(model_class, "_supports_attention_backend", False))


def _unsupported(config: Any, max_seq_len: int | None) -> str | None:
    if config is None:
        return None
    if takes_interface(config) is False:
        return "the model's code does not call transformers' attention interface"
    if getattr(config, "attn_logit_softcapping", None):
        return "the model soft-caps attention logits"
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if max_seq_len and window < max_seq_len:
        return f"the model's sliding window ({window}) is shorter than max_seq_len ({max_seq_len})"
    return None


# --- what transformers calls ---------------------------------------------------------------------

def _mask(*, attention_mask=None, **kwargs):
    """Mask builder for ``ATTENTION``: none when there is no padding mask (the rows' bounds
    come with the batch), transformers' sdpa mask otherwise (for the sdpa fallback)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, sliding_window: int | None = None,
                             softcap: float | None = None, **kwargs):
    """transformers' attention signature: query (B, Hq, T, D), key/value (B, Hkv, T, D);
    returns ((B, T, Hq, D), None)."""
    bounds = row_bounds(query, key, attention_mask, kwargs)
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, softcap=softcap, **kwargs)
    cu_seq_lens, max_len = bounds
    if softcap:
        raise ValueError("training.attention varlen cannot soft-cap attention logits; set "
                         "training.attention: sdpa (or eager) for this model")
    if sliding_window is not None and max_len > sliding_window:
        raise ValueError(f"a packed row of {max_len} tokens is longer than the model's sliding "
                         f"window ({sliding_window}); set training.attention: sdpa")
    batch, heads, length, dim = query.shape
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], value.shape[-1])
    scale = scaling if scaling is not None else dim ** -0.5
    if dropout == 0.0 and kernel_usable(q, scale):
        out = kernel_attention(q, k, v, cu_seq_lens, max_len, scale)
    else:
        if q.is_cuda:
            _slow_path_warning(q, scale, dropout)
        out = per_row_attention(q, k, v, cu_seq_lens, scale, dropout)
    return out.reshape(batch, length, heads, out.shape[-1]), None


def row_bounds(query, key, attention_mask, kwargs: dict) -> tuple[Any, int] | None:
    """(cu_seq_lens, longest row) of a packed batch without padding mask: TRL's collator
    passes them; otherwise they are derived from position ids that restart. None for
    anything else (padding masks, a KV cache, positions that never restart)."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return None
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:  # self-attention over equal q and k lengths: the k bounds are the same
        longest = kwargs.get("max_length_q")
        if longest is None:
            longest = cu.diff().max()
        return cu, int(longest)
    positions = kwargs.get("position_ids")
    if positions is None or positions.numel() != query.shape[0] * query.shape[2]:
        return None
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu, _), (longest, _) = prepare_fa_kwargs_from_position_ids(positions)
    if cu.numel() - 1 <= query.shape[0]:
        return None  # a row per batch entry, nothing packed: plain causal sdpa does it
    return cu, int(longest)


# --- the two ways to compute it ------------------------------------------------------------------

@lru_cache(maxsize=1)
def _varlen_api() -> tuple[Any, frozenset] | None:
    """torch's varlen_attn and its keyword names (they changed between torch releases:
    ``is_causal`` early, ``window_size``/``scale``/``enable_gqa`` later), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


@lru_cache(maxsize=None)
def _warn(message: str) -> None:
    from transformers.utils import logging

    logging.get_logger(__name__).warning(message)


def _slow_path_warning(q, scale: float, dropout: float) -> None:
    if dropout:
        why = f"attention dropout {dropout:g} (the kernel has none)"
    elif _varlen_api() is None:
        why = "this torch has no torch.nn.attention.varlen"
    elif str(q.dtype) not in ("torch.float16", "torch.bfloat16"):
        why = f"{q.dtype} (the kernel needs fp16 or bf16)"
    elif q.shape[-1] > 256:
        why = f"head dim {q.shape[-1]} > 256"
    else:
        why = "this torch's varlen_attn takes no scale and the model's is not 1/sqrt(head dim)"
    _warn(f"varlen attention on CUDA without torch's varlen kernel: {why}; computing SDPA "
          "row by row (correct, slower)")


def kernel_usable(q, scale: float) -> bool:
    """torch's flash varlen kernel runs on CUDA, in fp16/bf16, head dim <= 256."""
    import torch

    api = _varlen_api()
    if api is None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) \
            or q.shape[-1] > 256:
        return False
    params = api[1]
    if "window_size" not in params and "is_causal" not in params:
        return False
    return "scale" in params or abs(scale - q.shape[-1] ** -0.5) < 1e-12


def kernel_attention(q, k, v, cu_seq_lens, max_len: int, scale: float):
    """Causal attention within each row by torch's varlen flash kernel; (T, H, D) in and out."""
    import torch

    fn, params = _varlen_api()
    kw: dict[str, Any] = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)  # causal
    else:
        kw["is_causal"] = True
    if "scale" in params:
        kw["scale"] = scale
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
    cu = cu_seq_lens.to(device=q.device, dtype=torch.int32)
    return fn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **kw)


def per_row_attention(q, k, v, cu_seq_lens, scale: float, dropout: float = 0.0):
    """Causal SDPA once per row; (T, H, D) in and out. Rows of equal length are batched."""
    import torch
    import torch.nn.functional as F

    bounds = [int(x) for x in cu_seq_lens.tolist()]
    gqa = q.shape[1] != k.shape[1]
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    pieces: dict[int, Any] = {}
    for length, starts in by_length.items():
        idx = torch.tensor(starts, device=q.device)[:, None] + torch.arange(length, device=q.device)
        # (rows, H, L, D)
        qs, ks, vs = (x[idx].transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                             dropout_p=dropout, enable_gqa=gqa)
        for i, start in enumerate(starts):
            pieces[start] = out[i].transpose(0, 1)
    ordered = [pieces[s] for s in sorted(pieces)]
    return torch.cat(ordered) if ordered else q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
