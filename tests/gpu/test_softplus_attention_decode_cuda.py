"""The CUDA decoding kernel of softplus attention, torch.ops.nlseq_ext.softplus_attention_decode
(csrc/cuda/softplus_attention_decode.cu), against a float64 oracle of docs/spec.md §2 written here.

Precision rule (docs/design.md, FlashAttention's): the kernel's max error against the float64
oracle must be at most 2x the error of the same formulas run by PyTorch in the input dtype, plus a
floor for float32 where PyTorch itself is nearly exact: fast-math exp/log (~2 ulp) on scores up to
|s| = ln D ln N (~50), and for LSSAR the exponent p multiplies relative weight errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from _utils import DTYPE_IDS
from nlseq import registry


def _unavailable() -> str:
    """Why the CUDA decode kernel cannot run here ('' when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    ext, err = registry._extension()
    if ext is None:
        return err
    if not torch._C._dispatch_has_kernel_for_dispatch_key("nlseq_ext::softplus_attention_decode", "CUDA"):
        return "nlseq._C was built without the CUDA kernels"
    return ""


pytestmark = pytest.mark.skipif(bool(_unavailable()), reason=f"CUDA decode kernel unavailable: {_unavailable()}")

ZERO_ROW_TOL = 1e-4  # LSSAR: a row whose largest base is <= this gives 0 (the family's reference)
FLOOR = {0.0: 2e-5, 3.0: 5e-5, 15.0: 2e-4}  # float32 error floor per p (0 = LSSA)


def decode(q, k, v, causal, p, kv_offset):
    return torch.ops.nlseq_ext.softplus_attention_decode(q, k, v, causal, p, kv_offset)


def oracle(q, k, v, causal, p, kv_offset, dtype):
    """docs/spec.md §2 with the full score matrix, computed in ``dtype`` (float64: the oracle)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    i = torch.arange(Tq, device=q.device)
    j = torch.arange(Tk, device=q.device)
    if causal:
        mask = j[None, :] <= i[:, None] + kv_offset
        n = torch.clamp(i + 1 + kv_offset, max=Tk)
    else:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
        n = torch.full_like(i, Tk)
    c = math.log(D) * torch.log(n.clamp_min(1).to(dtype))
    s = c[:, None] * (qn @ kn.transpose(-1, -2))
    w = torch.where(
        mask, s.clamp_min(0) + torch.log1p(torch.exp(-s.abs())), torch.zeros((), dtype=dtype, device=q.device)
    )
    L = w.sum(-1, keepdim=True)
    L1 = torch.where(L > 0, L, torch.ones_like(L))
    if p <= 0:
        P = w / L1
    else:
        nf = n.to(dtype)[:, None]
        base = torch.where(mask, nf * w / L1 - (n > 3).to(dtype)[:, None], torch.zeros_like(w))
        M = base.amax(-1, keepdim=True)
        zero = (M <= ZERO_ROW_TOL) | (L <= 0)
        t = torch.relu(base) / torch.where(zero, torch.ones_like(M), M)  # in [0, 1]: no overflow
        r = t**p
        R = r.sum(-1, keepdim=True)
        P = torch.where(zero, torch.zeros_like(r), r / torch.where(zero, torch.ones_like(R), R))
    return P @ v


def make_inputs(B, H, Hkv, Tq, Tk, D, dtype, seed=0, peaky=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g)
    k = torch.randn(B, Hkv, Tk, D, generator=g)
    v = torch.randn(B, Hkv, Tk, D, generator=g)
    if peaky and Tk > 8:  # a few keys aligned with the queries of their group: large s, peaky rows
        G = H // Hkv
        idx = torch.randint(0, Tk, (4,), generator=g)
        k[:, :, idx] = q[:, ::G, :1] + 0.1 * torch.randn(B, Hkv, 1, D, generator=g)
    return tuple(x.to(dtype).cuda() for x in (q, k, v))


def check(out, q, k, v, causal, p, kv_offset):
    o64 = oracle(q, k, v, causal, p, kv_offset, torch.float64)
    plain = oracle(q, k, v, causal, p, kv_offset, q.dtype)  # plain PyTorch in the input dtype
    assert out.shape == q.shape and out.dtype == q.dtype
    assert not torch.isnan(out).any(), "NaN in the output (an element was not written?)"
    err = (out.double() - o64).abs().max().item()
    ref = (plain.double() - o64).abs().max().item()
    floor = FLOOR[float(p)] if q.dtype == torch.float32 else 2**-8 * max(1.0, o64.abs().max().item())
    assert err <= 2 * ref + floor, f"max error {err:.3e} > 2 x PyTorch's {ref:.3e} + {floor:.1e}"


def _id(B, H, Hkv, Tq, Tk, D, causal, kv_offset):
    return f"B{B}-H{H}-Hkv{Hkv}-Tq{Tq}-Tk{Tk}-D{D}-{'causal' if causal else 'full'}-off{kv_offset}"


# (B, H, Hkv, Tq, Tk, D, causal, kv_offset)
CASES = [
    (2, 8, 2, 1, 5000, 128, True, 4999),  # one-token decode, GQA 4
    (1, 12, 1, 16, 40000, 64, True, 39984),  # MQA, 16 queries: 192 rows, 12 row tiles, many splits
    (2, 4, 4, 5, 777, 256, False, 0),  # MHA, D = 256 (largest), odd Tk, non-causal
    (1, 6, 3, 16, 16, 80, True, 0),  # prefill-like block: rows see 1..16 keys (N <= 3 rows too)
    (1, 2, 1, 7, 5, 33, True, 0),  # Tk < Tq + kv_offset: N clamped to Tk; odd D
    (3, 2, 2, 3, 1, 1, False, 0),  # Tk = 1, D = 1
    (1, 4, 2, 16, 100003, 128, True, 99987),  # long cache, prime Tk
]


@pytest.mark.parametrize("p", [0.0, 3.0, 15.0], ids=["lssa", "lssar3", "lssar15"])
@pytest.mark.parametrize("case", CASES, ids=[_id(*c) for c in CASES])
def test_fp32(case, p):
    B, H, Hkv, Tq, Tk, D, causal, off = case
    q, k, v = make_inputs(B, H, Hkv, Tq, Tk, D, torch.float32)
    check(decode(q, k, v, causal, p, off), q, k, v, causal, p, off)


LOW = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("p", [0.0, 15.0], ids=["lssa", "lssar15"])
@pytest.mark.parametrize("dtype", LOW, ids=[DTYPE_IDS[d] for d in LOW])
@pytest.mark.parametrize("case", CASES[:4], ids=[_id(*c) for c in CASES[:4]])
def test_low_precision(case, dtype, p):
    B, H, Hkv, Tq, Tk, D, causal, off = case
    q, k, v = make_inputs(B, H, Hkv, Tq, Tk, D, dtype)
    check(decode(q, k, v, causal, p, off), q, k, v, causal, p, off)


def test_all_zero_lssar_rows():
    """Identical keys: every visible weight is equal, so N a - O = 0 for rows with N > 3 (O = 1):
    those rows give 0; rows with N <= 3 (O = 0) average the visible values."""
    B, H, Tq, Tk, D = 1, 2, 6, 6, 16
    q = torch.randn(B, H, Tq, D, device="cuda")
    k = torch.randn(B, 1, 1, D, device="cuda").expand(B, 1, Tk, D).contiguous()
    v = torch.randn(B, 1, Tk, D, device="cuda")
    out = decode(q, k, v, True, 15.0, 0)
    for i in range(Tq):
        n = i + 1
        if n > 3:
            assert torch.equal(out[:, :, i], torch.zeros_like(out[:, :, i])), f"row {i} (N={n}) must be 0"
        else:
            expect = v[:, :, :n].mean(dim=2).expand(B, H, D)
            torch.testing.assert_close(out[:, :, i], expect, atol=1e-5, rtol=1e-5)


def test_zero_length_cache_and_non_contiguous():
    q, k, v = make_inputs(2, 4, 2, 3, 50, 64, torch.float32)
    empty = decode(q, k[:, :, :0], v[:, :, :0], False, 0.0, 0)
    assert torch.equal(empty, torch.zeros_like(q))
    # non-contiguous inputs: the binding copies them; the output is contiguous
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    kt, vt = k[..., ::1].transpose(2, 3).contiguous().transpose(2, 3), v.transpose(2, 3).contiguous().transpose(2, 3)
    assert not qt.is_contiguous() and not kt.is_contiguous()
    out = decode(qt, kt, vt, True, 15.0, 47)
    assert out.is_contiguous()
    check(out, q, k, v, True, 15.0, 47)


def test_bad_inputs_are_rejected():
    q, k, v = make_inputs(1, 4, 2, 17, 20, 32, torch.float32)
    with pytest.raises(RuntimeError, match="at most 16"):
        decode(q, k, v, True, 0.0, 3)
    q, k, v = make_inputs(1, 3, 2, 1, 20, 32, torch.float32)
    with pytest.raises(RuntimeError, match="multiple of the number of kv heads"):
        decode(q, k, v, True, 0.0, 19)
    q, k, v = make_inputs(1, 2, 1, 1, 20, 257, torch.float32)
    with pytest.raises(RuntimeError, match="D must be <= 256"):
        decode(q, k, v, True, 0.0, 19)
    q, k, v = make_inputs(1, 2, 1, 1, 20, 32, torch.float32)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        decode(q.double(), k.double(), v.double(), True, 0.0, 19)
    with pytest.raises(RuntimeError, match="kv_offset"):
        decode(q, k, v, True, 0.0, -1)
