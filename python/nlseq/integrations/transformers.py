"""Hugging Face transformers integration: ``attn_implementation="lssa"`` / ``"lssar"`` (docs/spec.md §2).

    import nlseq.integrations.transformers as nlseq_hf
    nlseq_hf.register()                 # LSSAR exponent p: config.lssar_p if set, else 15
    model = AutoModelForCausalLM.from_config(config, attn_implementation="lssa")

``register`` adds two attention functions to transformers' ``AttentionInterface`` and, under the
same names, a mask function to ``AttentionMaskInterface``: without one, transformers builds no
mask at all for an unknown implementation, and causal masking (and padding) would be dropped.
The mask function (``nlseq_mask``) returns None when the pattern is plain causal or bidirectional
with no padding, the 2-D padding mask [B, Tk] when the pattern is plain causal/bidirectional
with padding (as transformers' flash-attention mask does), and transformers' ``sdpa_mask``
(a boolean [B, 1, Tq, Tk] mask) for anything else (sliding windows, packed sequences, overlays).

How the attention function maps transformers' arguments onto ``nlseq.softplus_attention``:
- mask None (plain causal): the queries are the last Tq of the Tk keys (bottom-right, as
  transformers' KV cache lays them out), so kv_offset = Tk − Tq, the cache length: decoding one
  token sees every cached key. The one exception mirrors transformers' sdpa integration: a
  prefill into an empty static cache (Tq > 1, Tk > Tq, no mask) attends to the first Tq keys only.
- 2-D padding mask [B, Tk] (left or right padding, training or decoding): the real tokens are
  unpadded into one packed batch and run by the fused kernels with ``cu_seqlens`` (N_i counts the
  real keys only, docs/spec.md §2); memory stays O(T), as without padding. Padding query rows
  give 0. (One case keeps the dense path below: a chunk of Tq > 1 queries after a cache, where
  rows differ in how many real keys precede the chunk.)
- 4-D boolean mask (packed sequences, sliding windows...): a dense PyTorch path in which N_i is
  the number of keys row i may see. Correct for any mask, O(Tq·Tk) memory.
- ``scaling`` is ignored (LSSA has no 1/√D: it QK-normalises and scales by ln D · ln N_i).
  ``is_causal`` (or module.is_causal) selects causal vs bidirectional.
- Attention dropout: LSSA/LSSAR as published have none, and the fused kernels never form the
  weight matrix a dropout would act on. Training with a dropout > 0 (stock GPT-2 configs have
  attn_pdrop = 0.1) raises and says so, unless ``register(attention_dropout="ignore")`` was called:
  then dropout is skipped, with one warning (residual and embedding dropout are unaffected).

transformers is imported only when ``register`` runs; importing nlseq never imports it.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from .._checks import check_backend, check_choice, check_float, check_tensor
from ..ops.softplus_attention import softplus_attention
from ..reference import softplus_attention as _ref

NAMES = ("lssa", "lssar")
DEFAULT_P = 15.0
CONFIG_ATTR = "lssar_p"  # model config attribute read by "lssar" for its exponent p

_default_p = DEFAULT_P
_backend = "auto"
DROPOUT_POLICIES = ("raise", "ignore")
_dropout_policy = "raise"


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p: Optional[float]) -> Tensor:
    """docs/spec.md §2 under an arbitrary boolean mask [B, 1 or H, Tq, Tk] (True = visible); N_i = Σ_j mask_ij.

    Dense and differentiable through autograd, in float32 (float64 for float64 inputs).
    """
    dtype = q.dtype
    acc = _ref.acc_dtype(dtype)
    B, H, Tq, D = q.shape
    G = H // k.shape[1]
    k = k.repeat_interleave(G, dim=1)
    v = v.repeat_interleave(G, dim=1)
    qh, kh = _ref.normalize(q.to(acc)), _ref.normalize(k.to(acc))
    mask = mask.to(torch.bool).expand(B, H, Tq, k.shape[2])
    n = mask.sum(-1)  # [B, H, Tq]
    c = _ref.length_scale(n, D, acc)
    s = c[..., None] * (qh @ kh.transpose(-1, -2))
    zero = torch.zeros((), dtype=acc, device=q.device)
    w = torch.where(mask, _ref.softplus(s), zero)
    L = w.sum(-1, keepdim=True)
    Lsafe = torch.where(L > 0, L, torch.ones_like(L))
    if p is None:
        P = w / Lsafe
    else:
        nf = n.to(acc)[..., None]
        base = torch.where(mask, nf * w / Lsafe - _ref.reweight_offset(n, acc)[..., None], zero)
        M = base.amax(-1, keepdim=True)
        live = (M > _ref.ZERO_ROW_TOL) & (L > 0)
        Msafe = torch.where(live, M, torch.ones_like(M))
        r = torch.where(live, torch.relu(base) / Msafe, zero) ** p  # overflow-safe: every term <= 1
        R = r.sum(-1, keepdim=True)
        P = r / torch.where(R > 0, R, torch.ones_like(R))
        # a NaN score keeps its row NaN, as every backend does (docs/numerics.md)
        P = torch.where(L.isnan() | M.isnan(), torch.full((), float("nan"), dtype=acc, device=q.device), P)
    return (P @ v.to(acc)).to(dtype)


def _attention(
    module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    *,
    reweight: bool,
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
):
    name = "lssar" if reweight else "lssa"
    op = f"integrations.transformers ({name} attention)"
    dropout = check_float(op, "dropout", dropout, lo=0.0, hi=1.0)
    if dropout > 0:
        if _dropout_policy == "raise":
            raise ValueError(
                f"nlseq {'lssar' if reweight else 'lssa'} attention: attention dropout {dropout} is not supported (the "
                "fused kernels never form the weight matrix); set the model's attention dropout (attn_pdrop / "
                "attention_dropout) to 0, or call nlseq.integrations.transformers.register(attention_dropout='ignore')"
            )
        warnings.warn(
            f"nlseq attention: attention dropout {dropout} is skipped (register(attention_dropout='ignore'))",
            stacklevel=2,
        )
    p = None
    if reweight:
        config = getattr(module, "config", None)
        cfg_p = getattr(config, CONFIG_ATTR, None)
        p = _default_p if cfg_p is None else check_float(op, f"config.{CONFIG_ATTR}", cfg_p, lo=0.0, lo_open=True)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    Tq, Tk = query.shape[2], key.shape[2]
    if attention_mask is not None and attention_mask.dim() == 2:  # key padding mask from nlseq_mask
        check_tensor(
            "attention_mask",
            attention_mask,
            op=op,
            ndim=2,
            dtypes=(torch.bool,),
            layout="([B, Tk] key padding mask)",
            device=query.device,
            device_of="query",
        )
        out = _padded_attention(query, key, value, attention_mask, bool(causal), p)
    elif attention_mask is not None:
        check_tensor(
            "attention_mask",
            attention_mask,
            op=op,
            ndim=4,
            dtypes=(torch.bool, torch.float32, torch.float16, torch.bfloat16, torch.float64),
            layout="([B, 1 or H, Tq, Tk], bool or additive float)",
            device=query.device,
            device_of="query",
        )
        B, H = query.shape[0], query.shape[1]
        ok = (
            attention_mask.shape[0] in (1, B)
            and attention_mask.shape[1] in (1, H)
            and tuple(attention_mask.shape[2:]) == (Tq, Tk)
        )
        if not ok:
            raise ValueError(
                f"nlseq.{op}: attention_mask must have shape [B or 1, H or 1, Tq, Tk] = "
                f"[{B}, {H}, {Tq}, {Tk}], got {tuple(attention_mask.shape)}"
            )
        if attention_mask.dtype != torch.bool:  # an additive float mask: 0 = visible, finfo.min = masked
            attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        out = _masked_attention(query, key, value, attention_mask, p)
    else:
        kv_offset = Tk - Tq
        if causal and Tq > 1 and Tk > Tq:  # prefill into an empty static cache (see module docstring)
            key, value, kv_offset = key[:, :, :Tq], value[:, :, :Tq], 0
        out = softplus_attention(
            query, key, value, causal=bool(causal), reweight_p=p, kv_offset=max(kv_offset, 0), backend=_backend
        )
    return out.transpose(1, 2).contiguous(), None


def lssa_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function for LSSA: query [B, H, Tq, D], key/value [B, Hkv, Tk, D]."""
    return _attention(module, query, key, value, attention_mask, reweight=False, **kwargs)


def lssar_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function for LSSAR (p from config.lssar_p, else register's p)."""
    return _attention(module, query, key, value, attention_mask, reweight=True, **kwargs)


def _padded_attention(q: Tensor, k: Tensor, v: Tensor, mask2d: Tensor, causal: bool, p: Optional[float]) -> Tensor:
    """q [B, H, Tq, D], k/v [B, Hkv, Tk, D] with a key padding mask [B, Tk] (True = real token); the
    queries are the last Tq positions. Real tokens are packed into one varlen batch for the fused op."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if mask2d.shape != (B, Tk):
        raise ValueError(f"nlseq attention: the padding mask must be [B, Tk] = {(B, Tk)}, got {tuple(mask2d.shape)}")
    if not causal and Tq != Tk:  # cross-attention: the key mask says nothing of which queries are real
        return _masked_attention(q, k, v, mask2d[:, None, None, :].expand(B, 1, Tq, Tk), p)
    valid_q = mask2d[:, Tk - Tq :]
    nq, nk = valid_q.sum(1), mask2d.sum(1)
    kv_offset = 0
    if causal and Tq == 1:
        causal = False  # the one query is the last token: it sees every real key of its row either way
    elif causal:
        offsets = (nk - nq).tolist()
        if len(set(offsets)) > 1:  # rows differ in how many real keys precede the query chunk: no one kv_offset
            pos = torch.arange(Tk, device=q.device)
            return _masked_attention(q, k, v, mask2d[:, None, None, :] & (pos[None, :] <= pos[Tk - Tq :, None]), p)
        kv_offset = offsets[0]
    zero = torch.zeros(1, dtype=torch.int64, device=q.device)
    cu_q = torch.cat([zero, nq.cumsum(0)])
    cu_k = torch.cat([zero, nk.cumsum(0)])
    qp = q.transpose(1, 2)[valid_q].transpose(0, 1).unsqueeze(0)  # [1, H, Σ nq, D]
    kp = k.transpose(1, 2)[mask2d].transpose(0, 1).unsqueeze(0)
    vp = v.transpose(1, 2)[mask2d].transpose(0, 1).unsqueeze(0)
    o = softplus_attention(
        qp,
        kp,
        vp,
        causal=causal,
        reweight_p=p,
        kv_offset=kv_offset,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        backend=_backend,
    )
    out = q.new_zeros(B, Tq, H, D)
    out[valid_q] = o[0].transpose(0, 1)
    return out.transpose(1, 2)


def nlseq_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: Optional[Tensor] = None,
    **kwargs,
):
    """transformers mask function: None (no padding), the 2-D padding mask, or sdpa_mask's 4-D mask."""
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, sdpa_mask

    plain = mask_function is None or mask_function in (causal_mask_function, bidirectional_mask_function)
    if (
        plain
        and (attention_mask is None or attention_mask.dim() == 2)
        and attention_mask is not None
        and attention_mask.shape[1] >= kv_length
    ):
        m = attention_mask[:, -kv_length:].to(torch.bool)
        return None if bool(m.all()) else m
    if plain and attention_mask is None:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function or causal_mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )


def register(p: float = DEFAULT_P, backend: str = "auto", attention_dropout: str = "raise") -> None:
    """Register "lssa" and "lssar" with transformers' AttentionInterface and AttentionMaskInterface.

    ``p`` is the LSSAR exponent used when the model config has no ``lssar_p``; ``backend`` is
    passed to nlseq.softplus_attention; ``attention_dropout`` is what a training forward with an
    attention dropout > 0 does: "raise" (default) or "ignore" (skip it, with a warning). Calling
    it again updates all three.
    """
    p = check_float("integrations.transformers.register", "p", p, lo=0.0, lo_open=True)
    check_backend("integrations.transformers.register", backend)
    check_choice("integrations.transformers.register", "attention_dropout", attention_dropout, DROPOUT_POLICIES)
    global _default_p, _backend, _dropout_policy
    _default_p, _backend, _dropout_policy = float(p), backend, attention_dropout
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("lssa", lssa_attention_forward)
    AttentionInterface.register("lssar", lssar_attention_forward)
    for name in NAMES:
        AttentionMaskInterface.register(name, nlseq_mask)
