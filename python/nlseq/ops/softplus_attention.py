"""``nlseq.softplus_attention``: softplus attention, LSSA, and its re-weighted form LSSAR (docs/spec.md §2).

Layers (docs/design.md): ``softplus_attention`` (checks, defaults, layout) → the ``torch.library``
custom ops ``nlseq::softplus_attention`` / ``nlseq::softplus_attention_backward`` (autograd and
fake-tensor rules, one definition; the backward recomputes the scores) → per-backend launchers in
``_FWD`` / ``_BWD`` → kernels.

Launcher contract, shared by every backend:
    fwd(q, k, v, qk_norm, causal, p, kv_offset, cu_q, cu_k) -> (o, stats)
    bwd(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, cu_q, cu_k) -> (dq̂, dk̂, dv)
q [B, H, Tq, D], k/v [B, Hkv, Tk, D] contiguous; p <= 0 means LSSA. The compiled and Triton
kernels take the QK-norm as reciprocal norms rq [B, H, Tq], rk [B, Hkv, Tk] (``_scales``: ones
when qk_norm=False) and scale the raw q·k products, so low-precision inputs are not rounded again
after normalisation; stats [3, B, H, Tq] = (L, M, R) of reference/softplus_attention.py. dq̂, dk̂ are gradients
w.r.t. the normalised q̂ = q·rq and k̂ = k·rk in the accumulation dtype; this module finishes them
with the QK-norm backward, once for every backend.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import registry as _registry
from .._checks import (
    MAX_POSITION,
    check_backend,
    check_bool,
    check_dims,
    check_float,
    check_int,
    check_same,
    check_tensor,
)
from ..reference import softplus_attention as _ref

OP = "softplus_attention"
IMPLEMENTED = ("cuda", "triton", "cpp", "reference")
DECODE_MAX_TQ = 16  # the CUDA decoding kernel serves Tq <= 16 queries
DECODE_OP = "nlseq_ext::softplus_attention_decode"
_LAYOUT = "(q [B, H, Tq, D], k and v [B, Hkv, Tk, D], H divisible by Hkv)"


# ---------------------------------------------------------------- launchers, one pair per backend
def _ext_ops():
    _registry._extension()  # loading nlseq._C registers the nlseq_ext ops
    return torch.ops.nlseq_ext


def _fwd_cpp(q, k, v, qk_norm, causal, p, kv_offset, cu_q, cu_k):
    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    o, stats = _ext_ops().softplus_attention_fwd(q, k, v, rq, rk, causal, p, kv_offset, cu_q, cu_k)
    return o, stats


def _bwd_cpp(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, cu_q, cu_k):
    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return tuple(_ext_ops().softplus_attention_bwd(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, cu_q, cu_k))


def _fwd_triton(q, k, v, qk_norm, causal, p, kv_offset, cu_q, cu_k):
    from ..kernels import softplus_attention as _tk

    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _tk.softplus_attention_fwd(q, k, v, rq, rk, causal, p, kv_offset, cu_q, cu_k)


def _bwd_triton(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, cu_q, cu_k):
    from ..kernels import softplus_attention as _tk

    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _tk.softplus_attention_bwd(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, cu_q, cu_k)


def _fwd_reference(q, k, v, qk_norm, causal, p, kv_offset, cu_q, cu_k):
    return _ref.softplus_attention_fwd(q, k, v, causal, _p_or_none(p), qk_norm, kv_offset, cu_q, cu_k)


def _bwd_reference(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, cu_q, cu_k):
    return _ref.softplus_attention_bwd(q, k, v, o, do, stats, causal, _p_or_none(p), qk_norm, kv_offset, cu_q, cu_k)


def _fwd_cuda(q, k, v, qk_norm, causal, p, kv_offset, cu_q, cu_k):
    # The decoding kernel (Tq <= 16, QK-norm on, no cu_seqlens; checked in softplus_attention)
    # returns o only. Its stats are NaN on purpose: the backward recomputes them with Triton.
    o = _ext_ops().softplus_attention_decode(q, k, v, causal, float(p), int(kv_offset))
    B, H, Tq, _ = q.shape
    return o, torch.full((3, B, H, Tq), math.nan, dtype=torch.float32, device=q.device)


def _bwd_cuda(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, cu_q, cu_k):
    # Decoding is inference; when a gradient is asked for anyway, the Triton kernels recompute
    # the statistics and run the backward (documented in softplus_attention).
    o2, stats2 = _fwd_triton(q, k, v, qk_norm, causal, p, kv_offset, cu_q, cu_k)
    return _bwd_triton(q, k, v, qk_norm, o2, do, stats2, causal, p, kv_offset, cu_q, cu_k)


_FWD = {"cuda": _fwd_cuda, "triton": _fwd_triton, "cpp": _fwd_cpp, "reference": _fwd_reference}
_BWD = {"cuda": _bwd_cuda, "triton": _bwd_triton, "cpp": _bwd_cpp, "reference": _bwd_reference}


LAYOUTS = ("bhtd", "bthd")
_LAYOUT_BTHD = "(layout='bthd': q [B, Tq, H, D], k and v [B, Tk, Hkv, D])"


def _refuse_other_layout(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Refuse a [B, T, H, D] call read as [B, H, T, D] where the shapes tell: the reading as
    'bhtd' breaks a rule (H a multiple of Hkv, k and v alike) that the 'bthd' reading keeps."""

    def fits(hq, hk, tk, tv_k, hv):
        return hk > 0 and hq % hk == 0 and hk == hv and tk == tv_k

    as_bhtd = fits(q.shape[1], k.shape[1], k.shape[2], v.shape[2], v.shape[1])
    as_bthd = fits(q.shape[2], k.shape[2], k.shape[1], v.shape[1], v.shape[2])
    if not as_bhtd and as_bthd and q.shape[0] == k.shape[0] == v.shape[0] and q.shape[3] == k.shape[3] == v.shape[3]:
        H, Hkv = q.shape[1], k.shape[1]
        why = (
            f"the number of query heads H = {H} must be a multiple of the number of key/value heads Hkv = {Hkv}"
            if Hkv == 0 or H % Hkv
            else "k and v must have the same shape"
        )
        raise ValueError(
            f"nlseq.{OP}: {why} {_LAYOUT}; q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} would fit the "
            f"flash-attn layout [B, T, H, D]: pass layout='bthd' if that is what they are"
        )


def _p_or_none(p: float) -> Optional[float]:
    return None if p <= 0 else p


def _acc(dtype):
    return _ref.acc_dtype(dtype)


def _scales(x: Tensor, qk_norm: bool) -> Tensor:
    """Reciprocal norms 1 / max(‖x‖, EPS) [B, H, T] (accumulation dtype), or ones when not qk_norm."""
    acc = _acc(x.dtype)
    if not qk_norm:
        return torch.ones(x.shape[:-1], dtype=acc, device=x.device)
    return 1.0 / torch.clamp_min(torch.linalg.vector_norm(x.to(acc), dim=-1), _ref.EPS)


# ---------------------------------------------------------------- registered ops (autograd boundary)
@torch.library.custom_op("nlseq::softplus_attention", mutates_args=())
def _softplus_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    reweight_p: float,
    qk_norm: bool,
    kv_offset: int,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor]:
    o, stats = _FWD[backend](q, k, v, qk_norm, causal, reweight_p, kv_offset, cu_seqlens_q, cu_seqlens_k)
    return o, stats


@_softplus_attention_op.register_fake
def _(q, k, v, causal, reweight_p, qk_norm, kv_offset, cu_seqlens_q, cu_seqlens_k, backend):
    B, H, Tq, _ = q.shape
    stats_dtype = torch.float32 if backend == "cuda" else _acc(q.dtype)
    return torch.empty_like(q), q.new_empty(3, B, H, Tq, dtype=stats_dtype)


@torch.library.custom_op("nlseq::softplus_attention_backward", mutates_args=())
def _softplus_attention_backward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    do: Tensor,
    stats: Tensor,
    causal: bool,
    reweight_p: float,
    qk_norm: bool,
    kv_offset: int,
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    dqh, dkh, dv = _BWD[backend](
        q, k, v, qk_norm, o, do, stats, causal, reweight_p, kv_offset, cu_seqlens_q, cu_seqlens_k
    )
    if qk_norm:  # the QK-norm backward, once for every backend
        dqh, dkh = _ref.norm_backward(q, dqh), _ref.norm_backward(k, dkh)
    return dqh.to(q.dtype), dkh.to(k.dtype), dv.to(v.dtype)


@_softplus_attention_backward_op.register_fake
def _(q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, cu_seqlens_q, cu_seqlens_k, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, p, qk_norm, kv_offset, cu_q, cu_k, backend = inputs
    o, stats = output
    ctx.save_for_backward(q, k, v, o, stats, cu_q, cu_k)
    ctx.args = (causal, p, qk_norm, kv_offset)
    ctx.backend = backend


def _backward(ctx, grad_o, grad_stats):
    q, k, v, o, stats, cu_q, cu_k = ctx.saved_tensors
    causal, p, qk_norm, kv_offset = ctx.args
    if grad_o is None:
        return None, None, None, None, None, None, None, None, None, None
    dq, dk, dv = _softplus_attention_backward_op(
        q, k, v, o, grad_o.contiguous(), stats, causal, p, qk_norm, kv_offset, cu_q, cu_k, ctx.backend
    )
    return dq, dk, dv, None, None, None, None, None, None, None


_softplus_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public function
def _decode_op_available() -> bool:
    """True when nlseq._C registers the CUDA decoding op (csrc/cuda/softplus_attention_decode.cu)."""
    _registry._extension()
    if not hasattr(torch.ops.nlseq_ext, DECODE_OP.split("::")[1]):  # schema not defined in this build
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(DECODE_OP, "CUDA")


def _cuda_serves(Tq: int, qk_norm: bool, varlen: bool) -> str:
    """'' when the CUDA decoding kernel can run this call, else why not."""
    if Tq > DECODE_MAX_TQ:
        return f"the CUDA kernel is a decoding kernel for Tq <= {DECODE_MAX_TQ} queries, got Tq = {Tq}"
    if not qk_norm:
        return "the CUDA decoding kernel always applies the QK-norm (qk_norm=False is not available)"
    if varlen:
        return "the CUDA decoding kernel does not take cu_seqlens"
    if not _decode_op_available():
        return f"nlseq._C has no CUDA kernel for {DECODE_OP}"
    return ""


def softplus_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    reweight_p: Optional[float] = None,
    qk_norm: bool = True,
    kv_offset: int = 0,
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
    backend: str = "auto",
    layout: str = "bhtd",
) -> Tensor:
    """Softplus attention LSSA, or LSSAR with ``reweight_p=p`` (docs/spec.md §2). Returns o shaped like q.

    Shapes: q [B, H, Tq, D]; k, v [B, Hkv, Tk, D] with H divisible by Hkv (GQA; Hkv = 1 is MQA).
    Query head h reads key/value head h // (H // Hkv). ``layout="bthd"`` takes and returns the
    flash-attn / fla layout instead: q [B, Tq, H, D], k, v [B, Tk, Hkv, D] (no copy is made
    for the kernels' sake beyond the one ``.contiguous()`` of the default layout). A call whose
    shapes only make sense in the other layout is refused with a message that names ``layout``.

    For query row i, N_i is the number of keys it may see:
        causal      keys j <= i + kv_offset, N_i = min(i + 1 + kv_offset, Tk) (kv_offset = number
                    of cached keys before the first query; decoding with a KV cache passes the
                    cache length and Tk = kv_offset + Tq)
        non-causal  all Tk keys
        varlen      ``cu_seqlens_q``/``cu_seqlens_k`` (int32/int64 [S + 1], cumulative lengths,
                    B = 1): q and k/v hold S packed sequences; row i of sequence z sees only keys
                    of sequence z, with the rules above applied per sequence (local positions,
                    the same kv_offset for every sequence).
    Then (no 1/√D):  s_ij = ln D · ln N_i · q̂_i·k̂_j, with q̂, k̂ L2-normalised per head when
    ``qk_norm`` (norm clamped at 1e-12 like F.normalize); LSSA a_ij = softplus(s_ij) / Σ_j;
    LSSAR a_ij ← ReLU(N_i a_ij − O_i)^p renormalised (O_i = 0 if N_i <= 3 else 1), computed in
    the overflow-safe form (divided by the row's largest term, so (N a)^p is never formed).
    Rows with no visible key, and LSSAR rows whose largest N_i a_ij − O_i is <= 1e-4 (all
    re-weighted weights zero up to float32 rounding), give o_i = 0 and zero gradients; other rows
    are normalised exactly (no +1e-8 in the denominator; see nlseq.reference.softplus_attention).

    Precision: float32/bfloat16/float16 accumulate in float32 (scores, sums and the output
    accumulator); float64 runs in float64 on ``cpp`` and ``reference``. Differentiable in q, k, v
    (the backward recomputes scores tile by tile; nothing of size Tq·Tk is stored).

    ``backend``: "auto", "cuda", "triton", "cpp" or "reference". "cuda" is the decoding kernel:
    Tq <= 16, qk_norm=True, no cu_seqlens; otherwise it raises (auto then chooses Triton).
    A backward through the cuda backend runs the Triton backward.
    """
    if layout not in LAYOUTS:
        raise ValueError(
            f"nlseq.{OP}: layout must be one of {LAYOUTS} ('bhtd': q [B, H, T, D]; 'bthd': "
            f"q [B, T, H, D] as flash-attn), got {layout!r}"
        )
    if layout == "bthd":
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_tensor(name, t, op=OP, ndim=4, layout=_LAYOUT_BTHD)
        o = softplus_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            causal=causal,
            reweight_p=reweight_p,
            qk_norm=qk_norm,
            kv_offset=kv_offset,
            cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=cu_seqlens_k,
            backend=backend,
            layout="bhtd",
        )
        return o.transpose(1, 2)
    check_tensor("q", q, op=OP, ndim=4, layout=_LAYOUT)
    check_tensor("k", k, op=OP, ndim=4, layout=_LAYOUT)
    check_tensor("v", v, op=OP, ndim=4, layout=_LAYOUT)
    check_same(OP, "q", q, k=k, v=v)
    _refuse_other_layout(q, k, v)
    dims = check_dims(OP, _LAYOUT, q=(q, "B H Tq D"), k=(k, "B Hkv Tk D"), v=(v, "B Hkv Tk D"))
    B, H, Tq, D = q.shape
    Hkv, Tk = dims["Hkv"], dims["Tk"]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(
            f"nlseq.{OP}: the number of query heads H = {H} must be a multiple of the "
            f"number of key/value heads Hkv = {Hkv} {_LAYOUT}"
        )
    if D == 0:
        raise ValueError(f"nlseq.{OP}: the head dim D must be at least 1 {_LAYOUT}")
    check_bool(OP, "causal", causal)
    check_bool(OP, "qk_norm", qk_norm)
    check_backend(OP, backend)
    # positions i + kv_offset + 1 must fit the kernels' int32 (and never overflow int64)
    kv_offset = check_int(
        OP,
        "kv_offset",
        kv_offset,
        lo=0,
        hi=MAX_POSITION - Tq,
        what=f"(cached keys before the first query; kv_offset + Tq <= 2^31 - 1, Tq = {Tq})",
    )
    if Tk > MAX_POSITION or Tq > MAX_POSITION:
        raise ValueError(f"nlseq.{OP}: Tq = {Tq} and Tk = {Tk} must be <= 2^31 - 1")
    if reweight_p is None:
        p = 0.0
    else:
        p = check_float(
            OP, "reweight_p", reweight_p, lo=0.0, lo_open=True, what="(None for LSSA, a finite number > 0 for LSSAR)"
        )
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise ValueError(f"nlseq.{OP}: pass both cu_seqlens_q and cu_seqlens_k, or neither")
        for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
            check_tensor(
                name,
                cu,
                op=OP,
                ndim=1,
                dtypes=(torch.int32, torch.int64),
                layout="(cumulative sequence lengths [S + 1], starting at 0)",
            )
            if cu.device != q.device:
                raise ValueError(f"nlseq.{OP}: {name} must be on the device of q ({q.device}), got {cu.device}")
        if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.numel() < 2:
            raise ValueError(
                f"nlseq.{OP}: cu_seqlens_q and cu_seqlens_k must both have shape [S + 1] with S >= 1, "
                f"got {tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
            )
        if B != 1:
            raise ValueError(f"nlseq.{OP}: with cu_seqlens the batch must be packed into B = 1, got B = {B}")
        if not torch.compiler.is_compiling():
            for name, cu, T in (("cu_seqlens_q", cu_seqlens_q, Tq), ("cu_seqlens_k", cu_seqlens_k, Tk)):
                c = cu.tolist()
                if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
                    raise ValueError(f"nlseq.{OP}: {name} must rise from 0 to {T} (the packed length), got {c}")
        cu_seqlens_q = cu_seqlens_q.to(torch.int32).contiguous()
        cu_seqlens_k = cu_seqlens_k.to(torch.int32).contiguous()

    implemented = IMPLEMENTED
    if q.device.type == "cuda" and backend in ("auto", "cuda"):
        why = _cuda_serves(Tq, qk_norm, varlen)
        if why:
            if backend == "cuda":
                raise RuntimeError(
                    f"nlseq.{OP}: backend 'cuda' is not available for this call: {why}. "
                    f"Use backend='triton' (or 'auto', which picks Triton here)."
                )
            implemented = tuple(b for b in IMPLEMENTED if b != "cuda")
    name = _registry.resolve(backend, q.device, OP, implemented)
    if q.dtype == torch.float64 and name in ("cuda", "triton"):
        raise TypeError(
            f"nlseq.{OP}: backend {name!r} accepts float32, bfloat16 and float16; float64 runs on "
            f"backend='cpp' or 'reference'"
        )
    if Tq == 0:
        return q * 0  # empty, and still connected to the autograd graph
    o, _ = _softplus_attention_op(
        q.contiguous(), k.contiguous(), v.contiguous(), causal, p, qk_norm, kv_offset, cu_seqlens_q, cu_seqlens_k, name
    )
    return o


# ---------------------------------------------------------------- context parallelism: key blocks
# Launchers of one key block of a longer sequence, for nlseq.distributed.softplus_attention (ring):
#   partial_fwd(q, k, v, qk_norm, causal, p, kv_offset, n_offset, stats_in) -> (U, stats)
#   partial_bwd(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset, gamma) -> (dq̂, dk̂, dv)
#   partial_gamma(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset) -> Σ_j dbase w [B, H, Tq]
# kv_offset may be negative, n_offset >= 0 gives the global N_i (reference ``visible``); U and the
# stats are unnormalised partials that merge over blocks by addition (see
# reference.softplus_attention.partial_fwd). Backends: triton (kernels/softplus_attention_partial.py),
# cpp and reference (CUDA: not yet).
def _partial_fwd_cpp(q, k, v, qk_norm, causal, p, kv_offset, n_offset, stats_in):
    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _ext_ops().softplus_attention_fwd_partial(q, k, v, rq, rk, causal, p, kv_offset, n_offset, stats_in)


def _partial_bwd_cpp(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset, gamma):
    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return tuple(
        _ext_ops().softplus_attention_bwd_partial(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, n_offset, gamma)
    )


def _partial_gamma_cpp(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset):
    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _ext_ops().softplus_attention_bwd_gamma(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, n_offset)


def _partial_fwd_reference(q, k, v, qk_norm, causal, p, kv_offset, n_offset, stats_in):
    return _ref.partial_fwd(q, k, v, causal, _p_or_none(p), qk_norm, kv_offset, n_offset, stats_in)


def _partial_bwd_reference(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset, gamma):
    return _ref.partial_bwd(q, k, v, o, do, stats, causal, _p_or_none(p), qk_norm, kv_offset, n_offset, gamma)


def _partial_gamma_reference(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset):
    return _ref.partial_bwd_gamma(q, k, v, o, do, stats, causal, _p_or_none(p), qk_norm, kv_offset, n_offset)


def _partial_fwd_triton(q, k, v, qk_norm, causal, p, kv_offset, n_offset, stats_in):
    from ..kernels import softplus_attention_partial as _tp

    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _tp.partial_fwd(q, k, v, rq, rk, causal, p, kv_offset, n_offset, stats_in)


def _partial_bwd_triton(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset, gamma):
    from ..kernels import softplus_attention_partial as _tp

    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _tp.partial_bwd(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, n_offset, gamma)


def _partial_gamma_triton(q, k, v, qk_norm, o, do, stats, causal, p, kv_offset, n_offset):
    from ..kernels import softplus_attention_partial as _tp

    rq, rk = _scales(q, qk_norm), _scales(k, qk_norm)
    return _tp.partial_bwd_gamma(q, k, v, rq, rk, o, do, stats, causal, p, kv_offset, n_offset)


PARTIAL_FWD = {"triton": _partial_fwd_triton, "cpp": _partial_fwd_cpp, "reference": _partial_fwd_reference}
PARTIAL_BWD = {"triton": _partial_bwd_triton, "cpp": _partial_bwd_cpp, "reference": _partial_bwd_reference}
PARTIAL_GAMMA = {"triton": _partial_gamma_triton, "cpp": _partial_gamma_cpp, "reference": _partial_gamma_reference}
