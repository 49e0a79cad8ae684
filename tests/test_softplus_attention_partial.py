"""The key-block kernel arguments used by context parallelism (signed kv_offset, global N_i through
n_offset, unnormalised partial outputs, supplied LSSAR stats and Γ): reference and cpp against the
float64 oracle ``softplus_attention_naive``, single process (docs/context_parallel.md)."""

from __future__ import annotations

import math

import pytest
import torch

from nlseq import registry
from nlseq.distributed import _blocks
from nlseq.ops import softplus_attention as ops
from nlseq.reference import softplus_attention as ref

BACKENDS = ["reference"] + (["cpp"] if registry.backend_status("cpp") else [])
RTOL = 1e-12


def _close(a, b, what):
    scale = b.abs().max().clamp_min(1e-300)
    err = (a - b).abs().max() / scale
    assert err <= RTOL, f"{what}: max error {err:.3e} relative to max |expected| {scale:.3e}"


def _inputs(T, H=4, Hkv=2, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, D, generator=g, dtype=dtype)
    k = torch.randn(1, Hkv, T, D, generator=g, dtype=dtype)
    v = torch.randn(1, Hkv, T, D, generator=g, dtype=dtype)
    return q, k, v


def _zigzag(T, P):
    cuts = [c * T // (2 * P) for c in range(2 * P + 1)]
    return [[(cuts[r], cuts[r + 1]), (cuts[2 * P - 1 - r], cuts[2 * P - r])] for r in range(P)]


def _blocks_forward(backend, q, k, v, causal, p, segs, P=3):
    blocks = _zigzag(q.shape[2], P)
    return _blocks.blockwise_attention(backend, q, k, v, blocks, blocks, segs, causal, p if p else 0.0, True)


def _oracle(q, k, v, causal, p, cu=None):
    return ref.softplus_attention_naive(q, k, v, causal=causal, reweight_p=p, cu_seqlens_q=cu, cu_seqlens_k=cu)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("p", [None, 1.0, 2.0, 15.0])
def test_blockwise_forward_is_the_single_device_op(backend, causal, p):
    q, k, v = _inputs(13)
    o, st = _blocks_forward(backend, q, k, v, causal, p, [(0, 13)])
    _close(o, _oracle(q, k, v, causal, p), "o")
    _, st_ref = ref.softplus_attention_fwd(q, k, v, causal, p, True, 0, None, None)
    _close(st[0], st_ref[0], "L")
    if p is not None:
        _close(st[1], st_ref[1], "M")
        _close(st[2], st_ref[2], "R")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("p", [None, 15.0])
def test_blockwise_forward_with_packed_sequences_crossing_blocks(backend, causal, p):
    q, k, v = _inputs(17, seed=1)
    bounds = [0, 3, 4, 11, 17]
    segs = list(zip(bounds, bounds[1:]))
    o, _ = _blocks_forward(backend, q, k, v, causal, p, segs, P=2)
    _close(o, _oracle(q, k, v, causal, p, torch.tensor(bounds)), "o")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("p", [None, 2.0, 15.0])
def test_blockwise_backward_is_the_single_device_gradient(backend, causal, p):
    T = 11
    q, k, v = _inputs(T, seed=2)
    do = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(3))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    _oracle(*leaves, causal, p).backward(do)
    o, st = _blocks_forward(backend, q, k, v, causal, p, [(0, T)])
    pf = p if p else 0.0
    blocks = [[(0, 4)], [(4, 5)], [(5, T)]]
    qp = [(0, T, 0)]
    gamma = None
    if p is not None:
        G = torch.zeros(q.shape[:-1], dtype=q.dtype)
        for blk in blocks:
            _blocks.block_gamma(
                backend, q, qp, k, v, [(a, b, a) for a, b in blk], [(0, T)], causal, pf, True, o, do, st, G
            )
        gamma = torch.where(st[0] > 0, G / st[0], torch.zeros_like(G))
    dq, dk, dv = (torch.zeros(t.shape, dtype=t.dtype) for t in (q, k, v))
    for blk in blocks:
        _blocks.block_backward(
            backend, q, qp, k, v, [(a, b, a) for a, b in blk], [(0, T)], causal, pf, True, o, do, st, gamma, dq, dk, dv
        )
    dq, dk = ref.norm_backward(q, dq), ref.norm_backward(k, dk)
    for name, got, leaf in (("dq", dq, leaves[0]), ("dk", dk, leaves[1]), ("dv", dv, leaves[2])):
        _close(got, leaf.grad, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.0, 15.0])
def test_key_block_after_the_queries_leaves_rows_without_keys(backend, p):
    q, k, v = _inputs(5, seed=4)
    # causal, the keys start 3 positions after the first query: rows 0..2 see nothing, row 3 sees
    # key 0 and row 4 keys 0..1, with global N_i = 10 + i + 1.
    U, st = ops.PARTIAL_FWD[backend](q, k, v, True, True, p, -3, 10, None)
    assert torch.equal(U[:, :, :3], torch.zeros_like(U[:, :, :3]))
    assert torch.equal(st[0, :, :, :3], torch.zeros_like(st[0, :, :, :3]))
    assert bool((st[1, :, :, :3] == -math.inf).all())
    # row 4 by hand: s = ln D · ln 15 · q̂·k̂ over keys 0, 1
    qh, kh = ref.normalize(q[0, 0, 4]), ref.normalize(k[0, 0, :2])
    s = math.log(8) * math.log(15) * (kh @ qh)
    _close(st[0, 0, 0, 4], ref.softplus(s).sum(), "L of row 4")
    _close(st[1, 0, 0, 4], s.max(), "row max of s of row 4")
    if p == 0.0:
        _close(U[0, 0, 4], ref.softplus(s) @ v[0, 0, :2], "U of row 4")
    else:
        assert torch.equal(U, torch.zeros_like(U))  # the LSSAR statistics pass writes no output


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the compiled extension is not built")
@pytest.mark.parametrize("p", [0.0, 3.0])
def test_cpp_matches_reference_in_float32(p):
    q, k, v = (t.float() for t in _inputs(70, seed=5))
    a = ops.PARTIAL_FWD["cpp"](q, k, v, True, True, p, 20, 50, None)
    b = ops.PARTIAL_FWD["reference"](q, k, v, True, True, p, 20, 50, None)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-5, atol=1e-5)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the compiled extension is not built")
def test_cpp_rejects_bad_stats_in():
    q, k, v = _inputs(4)
    with pytest.raises(RuntimeError, match="stats_in"):
        ops.PARTIAL_FWD["cpp"](q, k, v, True, True, 2.0, 0, 0, torch.zeros(3, 1, 4, 5, dtype=q.dtype))
