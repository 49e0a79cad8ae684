"""The tiled CPU kernel of softplus attention (cpp backend, csrc/cpu/softplus_attention.cpp):
the edges of its tiles and of its vectorised row passes, against the float64 naive oracle.

The kernel cuts query rows into tiles of 256 and keys into tiles of 512 in the forward, 128 and
256 in the backward, and runs float rows through
polynomial exp / log1p (csrc/cpu/softplus_attention_rows.cpp); rows it cannot take there (shifted
rows, non-integer LSSAR exponents, NaN rows) go through the shared scalar math. The sizes below sit
on both sides of those edges: N = 1, primes, one tile exactly, one row or key past it.
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from _utils import assert_close_to_oracle
from nlseq.reference.softplus_attention import softplus_attention_naive

pytestmark = pytest.mark.skipif(not nlseq.backends()["cpp"], reason=str(nlseq.backends()["cpp"]))

TILE_Q, TILE_K = 128, 256  # csrc/cpu/softplus_attention.cpp kBlockQ, kBlockK (backward)
FWD_TILE_Q, FWD_TILE_K = 256, 512  # kFwdBlockQ, kFwdBlockK (forward)

# The tolerances of tests/test_softplus_attention.py (same reasoning: float32 scores of size
# <= ln D · ln N, convex combinations of v; gradients amplified by c_i and by p for LSSAR).
F32 = dict(atol=2e-5, rtol=2e-5)
F32_GRAD = {
    None: dict(atol=5e-5, rtol=1e-4),
    1.0: dict(atol=1e-4, rtol=1e-4),
    2.5: dict(atol=2e-4, rtol=2e-4),
    3.0: dict(atol=2e-4, rtol=2e-4),
    15.0: dict(atol=2e-3, rtol=1e-3),
}


def make_qkv(B, H, Hkv, Tq, Tk, D, *, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=torch.float64) * scale
    k = torch.randn(B, Hkv, Tk, D, generator=g, dtype=torch.float64) * scale
    v = torch.randn(B, Hkv, Tk, D, generator=g, dtype=torch.float64)
    return tuple(x.to(dtype).requires_grad_() for x in (q, k, v))


def check(q, k, v, *, tol, grad_tol, **kw):
    """cpp output and gradients against autograd through the float64 naive definition."""
    o = nlseq.softplus_attention(q, k, v, backend="cpp", **kw)
    assert o.dtype == q.dtype and o.shape == q.shape
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = softplus_attention_naive(q64, k64, v64, **kw)
    assert_close_to_oracle(o, o64, **tol, what="o")
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = torch.autograd.grad(o, (q, k, v), g.to(o.dtype))
    want = torch.autograd.grad(o64, (q64, k64, v64), g.to(o.dtype).double())
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert_close_to_oracle(a, b, **grad_tol, what=name)


P_VALUES = [None, 1.0, 2.5, 15.0]  # 2.5: a non-integer exponent takes the scalar rows
P_IDS = {None: "lssa", 1.0: "p1", 2.5: "p2.5", 15.0: "p15"}
N_EDGES = [1, 2, 127, TILE_Q, TILE_Q + 1, 251, TILE_K, TILE_K + 1, 389]  # 251, 389 prime
FWD_EDGES = [FWD_TILE_K - 1, FWD_TILE_K, FWD_TILE_K + 1, 521, 2 * FWD_TILE_K + FWD_TILE_Q + 3]  # 521 prime


@pytest.mark.parametrize("p", P_VALUES, ids=[P_IDS[p] for p in P_VALUES])
@pytest.mark.parametrize("N", N_EDGES)
def test_causal_lengths_at_tile_edges(N, p):
    q, k, v = make_qkv(1, 2, 2, N, N, 24, dtype=torch.float32, seed=N)
    check(q, k, v, reweight_p=p, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("p", [None, 2.5, 15.0], ids=["lssa", "p2.5", "p15"])
@pytest.mark.parametrize("N", FWD_EDGES)
def test_causal_lengths_at_forward_key_tile_edges(N, p):
    # past one forward key tile (512): rows whose keys span two and three key tiles
    q, k, v = make_qkv(1, 1, 1, N, N, 16, dtype=torch.float32, seed=N)
    check(q, k, v, reweight_p=p, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
@pytest.mark.parametrize("D", [64, 128])
def test_head_dims_of_the_benchmark(D, p):
    q, k, v = make_qkv(1, 2, 2, 300, 300, D, dtype=torch.float32, seed=D)
    check(q, k, v, reweight_p=p, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("p", [None, 3.0], ids=["lssa", "p3"])
@pytest.mark.parametrize("Hkv", [1, 2])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gqa_past_one_tile(causal, Hkv, p):
    # GQA / MQA: the backward's work item (sequence, kv head) sums dk̂, dv over 4 / Hkv query heads
    q, k, v = make_qkv(2, 4, Hkv, 263, 263 if causal else 300, 16, dtype=torch.float32, seed=Hkv)
    check(q, k, v, causal=causal, reweight_p=p, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
@pytest.mark.parametrize("N", [200, 600])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_backward_split_over_keys(causal, N, p, threads):
    # B = 1 with MQA: fewer (sequence, kv head) pairs than threads, so the backward cuts the keys
    # into one part per thread, each with its own dq̂ buffer (N = 200: one key tile, empty parts)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v = make_qkv(1, 3, 1, N, N, 16, dtype=torch.float32, seed=N + threads)
        check(q, k, v, causal=causal, reweight_p=p, tol=F32, grad_tol=F32_GRAD[p])
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
def test_offset_queries_past_one_tile(p):
    # Tq != Tk with kv_offset (cached keys): query tiles whose rows see different key counts
    q, k, v = make_qkv(1, 2, 1, 140, 400, 16, dtype=torch.float32, seed=5)
    check(q, k, v, reweight_p=p, kv_offset=260, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_varlen_sequences_across_tiles(causal, p):
    lens_q = [1, 129, 3, 300]
    lens_k = lens_q if causal else [5, 257, 0, 140]  # non-causal: an empty key sequence gives o = 0
    cu_q = torch.tensor([0] + lens_q).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lens_k).cumsum(0).to(torch.int32)
    q, k, v = make_qkv(1, 2, 1, sum(lens_q), sum(lens_k), 16, dtype=torch.float32, seed=9)
    check(q, k, v, causal=causal, reweight_p=p, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
def test_no_qk_norm_wide_scores_and_shifted_rows(p):
    # qk_norm=False with scores over ±60: the vectorised softplus over its whole range (large
    # positive, tiny e^s tails) and, for the rows whose scores all lie below −40, the shifted form.
    B, H, T, D = 1, 2, 300, 8
    g = torch.Generator().manual_seed(21)
    k = torch.randn(B, 1, T, D, generator=g, dtype=torch.float64).abs() * 2 + 0.5  # positive keys
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    q[:, :, ::3] = -(q[:, :, ::3].abs() + 1) * 3  # every third row negative: all its scores far below −40
    v = torch.randn(B, 1, T, D, generator=g, dtype=torch.float64)
    q, k, v = (x.float().requires_grad_() for x in (q, k, v))
    with torch.no_grad():
        s = (
            torch.einsum("bhid,bjd->bhij", q, k[:, 0])
            * torch.log(torch.tensor(float(D)))
            * torch.log(torch.arange(1, T + 1, dtype=torch.float32)).clamp_min(0)[:, None]
        )
        vis = torch.ones(T, T).tril().bool()
        row_max = s.masked_fill(~vis, -float("inf")).amax(-1)
    assert (row_max < -40).any() and (row_max > 20).any(), "the case must hold shifted and ordinary rows"
    # scores of magnitude ~100 carry ~1e-5 absolute float32 rounding each (ulp · c): relative
    # errors of that size in the weights (tests/test_regressions_issue12.py, same bounds)
    o = nlseq.softplus_attention(q, k, v, qk_norm=False, reweight_p=p, backend="cpp")
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = softplus_attention_naive(q64, k64, v64, qk_norm=False, reweight_p=p)
    assert_close_to_oracle(o, o64, atol=2e-4, rtol=2e-4, what="o")
    o.sum().backward()
    o64.sum().backward()
    for name, a, b in (("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad), ("dv", v.grad, v64.grad)):
        assert torch.isfinite(a).all(), f"{name} not finite"
        scale = b.abs().max().item()
        err = (a.double() - b).abs().max().item() / scale
        assert err < 2e-3, f"{name}: max error {err:.2e} of its scale"


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
def test_bf16_inputs_accumulate_in_float32(p):
    # bf16 tiles are converted to float32; o is rounded once to bf16 (2^-8) and the gradients
    # come back in bf16: the bounds of tests/test_softplus_attention.py for bf16.
    q, k, v = make_qkv(1, 2, 1, 263, 263, 64, dtype=torch.bfloat16, seed=4)
    o = nlseq.softplus_attention(q, k, v, reweight_p=p, backend="cpp")
    assert o.dtype == torch.bfloat16
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = softplus_attention_naive(q64, k64, v64, reweight_p=p)
    assert_close_to_oracle(o, o64, atol=3e-2, rtol=2e-2, what="o (bf16)")
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(o, (q, k, v), g.bfloat16())
    want = torch.autograd.grad(o64, (q64, k64, v64), g.bfloat16().double())
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all(), name
        rel = (a.double() - b).abs().max().item() / b.abs().max().item()
        assert rel < 3e-2, f"{name}: max error {rel:.2e} of its scale"


def test_float32_matches_float64_kernel_closely():
    # The vectorised float rows against the same kernel in float64 (scalar libm rows) at a size
    # with many full tiles: the polynomial exp / log1p must be within float rounding, far inside F32.
    q, k, v = make_qkv(1, 2, 2, 700, 700, 32, dtype=torch.float64, seed=8)
    with torch.no_grad():
        for p in (None, 15.0):
            o64 = nlseq.softplus_attention(q, k, v, reweight_p=p, backend="cpp")
            o32 = nlseq.softplus_attention(q.float(), k.float(), v.float(), reweight_p=p, backend="cpp")
            err = (o32.double() - o64).abs().max().item()
            assert err < (2e-6 if p is None else 2e-5), f"p={p}: max |o32 − o64| = {err:.2e}"


@pytest.mark.parametrize("p", [None, 3.0], ids=["lssa", "p3"])
def test_fp64_gradcheck_past_one_tile(p):
    # float64 gradcheck where query and key tiles both have a remainder (Tq = Tk = 131 > kBlockQ),
    # GQA with 2 query heads per kv head; tiny D keeps the 3·131·2 perturbations quick.
    q, k, v = make_qkv(1, 2, 1, TILE_Q + 3, TILE_Q + 3, 2, dtype=torch.float64, seed=12)
    assert torch.autograd.gradcheck(
        lambda q, k, v: nlseq.softplus_attention(q, k, v, reweight_p=p, backend="cpp"), (q, k, v), fast_mode=True
    )
