"""Benchmark cases of the CUDA decoding kernel of softplus attention (docs/spec.md §2):
``torch.ops.nlseq_ext.softplus_attention_decode`` (csrc/cuda/softplus_attention_decode.cu), GPU only.

One new token per sequence (Tq = 1) against a long cache, GQA (H = 32 query heads on Hkv = 8 kv
heads), D = 128, bf16, LSSA and LSSAR (p = 15). Decoding is memory-bound: the byte model is one
read of K and V (LSSAR reads K twice; the model counts it once, so its GB/s shows that cost).
Peer: the same formulas in eager PyTorch (float32 arithmetic on the bf16 inputs), the baseline.
Oracle: docs/spec.md §2 in float64 with the full score row.
"""

from __future__ import annotations

import functools
import math

import torch

from nlseq.bench import Case, Impl

FAMILY = "softplus_attention"

ZERO_ROW_TOL = 1e-4  # LSSAR all-zero row threshold (python/nlseq/reference/softplus_attention.py)
# bf16 output, float32 accumulation: one rounding of outputs of size O(1) (u = 2^-8): rtol 2u.
ATOL, RTOL = 1e-2, 2**-7
TOL_NOTE = "bf16 output rounded once (2^-8) on float32 accumulation; atol for outputs near 0"


def decode_inputs(B, H, Hkv, Tk, D, p, dtype, device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, D, generator=g)
    cast = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return {"q": cast(q), "k": cast(k), "v": cast(v), "p": p, "kv_offset": Tk - 1}


def softplus_attention_formula(q, k, v, p, kv_offset):
    """docs/spec.md §2 for causal decoding rows, in the dtype of q (float64: the oracle). GQA by reshaping
    q to [B, Hkv, G·Tq, D], so k and v are never repeated."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    qg = q.reshape(B, Hkv, G, Tq, D)
    qn = qg / qg.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    i = torch.arange(Tq, device=q.device)
    mask = torch.arange(Tk, device=q.device)[None, :] <= i[:, None] + kv_offset  # [Tq, Tk]
    n = torch.clamp(i + 1 + kv_offset, max=Tk)
    c = math.log(D) * torch.log(n.clamp_min(1).to(q.dtype))
    s = c[:, None] * torch.einsum("bhgqd,bhkd->bhgqk", qn, kn)
    w = torch.where(
        mask, s.clamp_min(0) + torch.log1p(torch.exp(-s.abs())), torch.zeros((), dtype=s.dtype, device=s.device)
    )
    L = w.sum(-1, keepdim=True)
    L1 = torch.where(L > 0, L, torch.ones_like(L))
    if p <= 0:
        P = w / L1
    else:
        base = torch.where(mask, n.to(s.dtype)[:, None] * w / L1 - (n > 3).to(s.dtype)[:, None], torch.zeros_like(w))
        M = base.amax(-1, keepdim=True)
        zero = (M <= ZERO_ROW_TOL) | (L <= 0)
        r = (torch.relu(base) / torch.where(zero, torch.ones_like(M), M)) ** p
        R = r.sum(-1, keepdim=True)
        P = torch.where(zero, torch.zeros_like(r), r / torch.where(zero, torch.ones_like(R), R))
    o = torch.einsum("bhgqk,bhkd->bhgqd", P, v)
    return o.reshape(B, H, Tq, D)


def _cuda(q, k, v, p, kv_offset):
    return torch.ops.nlseq_ext.softplus_attention_decode(q, k, v, True, float(p), int(kv_offset))


def _eager_fp32(q, k, v, p, kv_offset):
    return softplus_attention_formula(q.float(), k.float(), v.float(), p, kv_offset).to(q.dtype)


def _case(device, B, H, Hkv, Tk, D, p):
    dtype = torch.bfloat16
    s = torch.tensor([], dtype=dtype).element_size()
    kv_bytes = 2 * B * Hkv * Tk * D * s
    name = "decode-lssa" if p <= 0 else f"decode-lssar{p:g}"
    return Case(
        family=FAMILY,
        name=name,
        device=device,
        dtype=dtype,
        shape={"B": B, "H": H, "Hkv": Hkv, "Tq": 1, "Tk": Tk, "D": D},
        inputs=functools.partial(decode_inputs, B, H, Hkv, Tk, D, p, dtype, device),
        oracle=softplus_attention_formula,
        impls=[
            Impl(
                "cuda",
                _cuda,
                backend="cuda",
                backward=False,
                note="nlseq_ext::softplus_attention_decode: split over keys, then a combine",
            ),
            Impl("torch", _eager_fp32, backward=False, note="eager PyTorch, float32 arithmetic"),
        ],
        atol=ATOL,
        rtol=RTOL,
        tolerance_note=TOL_NOTE,
        baseline="torch",
        bytes={"fwd": kv_bytes + 2 * B * H * D * s},
        flops={"fwd": 4 * B * H * Tk * D},
        note="decoding: one query per head against the cache; bytes = one read of K and V",
    )


def cases(device: torch.device, quick: bool) -> list[Case]:
    if device.type != "cuda":
        return []  # the op has a CUDA kernel only
    lengths = (4096,) if quick else (4096, 32768)
    return [_case(device, 8, 32, 8, Tk, 128, p) for Tk in lengths for p in (0.0, 15.0)]
