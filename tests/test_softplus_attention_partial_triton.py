"""The Triton key-block kernels of the ring (kernels/softplus_attention_partial.py), interpreted on
CPU (tests/conftest.py), against the reference partial functions evaluated in float64 on the same
(rounded) inputs. Tolerances are those of the Triton tests in tests/test_softplus_attention.py
(float32 accumulation against a float64 oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from nlseq import registry
from nlseq.ops import softplus_attention as ops
from nlseq.reference import softplus_attention as ref

pytestmark = pytest.mark.skipif(not registry.backend_status("triton"), reason="triton is not installed")

F32 = dict(atol=2e-5, rtol=2e-5)  # tests/test_softplus_attention.py F32 / F32_GRAD
F32_GRAD = {
    None: dict(atol=5e-5, rtol=1e-4),
    1.0: dict(atol=1e-4, rtol=1e-4),
    2.0: dict(atol=2e-4, rtol=2e-4),
    15.0: dict(atol=2e-3, rtol=1e-3),
}


def _inputs(Tq, Tk, H=2, Hkv=1, D=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, Tq, D, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(1, Hkv, Tk, D, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(1, Hkv, Tk, D, generator=g, dtype=torch.float64).to(dtype)
    do = torch.randn(1, H, Tq, D, generator=g, dtype=torch.float64)
    return q, k, v, do


def _global_stats(q, k, v, causal, p, kv_offset, n_offset, qk_norm):
    """float64 global statistics (L, M, R) and o of the rows, as the ring forms them, with this one
    block as the whole key set: LSSAR pass 1 → M from the max, pass 2 → R and U."""
    pp = p if p is not None else 0.0
    U, st = ref.partial_fwd(q, k, v, causal, p, qk_norm, kv_offset, n_offset)
    if p is None:
        L = st[0]
        o = torch.where(L[..., None] > 0, U / torch.where(L > 0, L, torch.ones_like(L))[..., None], 0.0)
        return torch.stack((L, torch.zeros_like(L), torch.zeros_like(L))), o
    Tq = q.shape[2]
    _, n = ref.visible(Tq, k.shape[2], causal, kv_offset, q.device, n_offset=n_offset)
    from nlseq.distributed._blocks import lssar_base_max

    L, M = st[0], lssar_base_max(st[1], st[0], n)
    sin = torch.stack((L, M, torch.zeros_like(L)))
    U, st2 = ref.partial_fwd(q, k, v, causal, p, qk_norm, kv_offset, n_offset, sin)
    R = st2[2]
    ok = (R > 0) & (M > 0)
    o = torch.where(ok[..., None], U / torch.where(ok, R, torch.ones_like(R))[..., None], 0.0)
    assert pp > 0
    return torch.stack((L, M, R)), o


CASES = [  # (Tq, Tk, causal, kv_offset, n_offset)
    (17, 19, True, 0, -1),  # primes, past one 16-row block
    (17, 19, True, 23, 40),  # keys of an earlier block, global N_i
    (13, 17, True, -5, 3),  # keys after the first rows: rows without visible keys
    (11, 19, False, 0, 57),  # non-causal, global N = 57
]


def _ids(c):
    return f"Tq={c[0]},Tk={c[1]},causal={c[2]},kv={c[3]},n={c[4]}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("p", [None, 1.0, 2.0, 15.0])
def test_partial_fwd_matches_reference(case, p):
    Tq, Tk, causal, kvo, no = case
    q, k, v, _ = _inputs(Tq, Tk, H=4, Hkv=2)
    pp = p or 0.0
    qd, kd, vd = q.double(), k.double(), v.double()
    # LSSA / LSSAR statistics pass
    U_ref, st_ref = ref.partial_fwd(qd, kd, vd, causal, p, True, kvo, no)
    U, st = ops.PARTIAL_FWD["triton"](q, k, v, True, causal, pp, kvo, no, None)
    assert U.dtype == st.dtype == torch.float32
    torch.testing.assert_close(U.double(), U_ref, **F32)
    torch.testing.assert_close(st[0].double(), st_ref[0], **F32)
    torch.testing.assert_close(st[1].double(), st_ref[1], **F32)  # −inf on rows without keys, both sides
    assert not U.isnan().any() and not st[0].isnan().any()
    if kvo < 0:
        empty = torch.arange(Tq) + kvo < 0
        assert empty.any() and (U[:, :, empty] == 0).all() and (st[0][:, :, empty] == 0).all()
    if p is not None:  # pass 2 with supplied (L, M)
        sin, _ = _global_stats(qd, kd, vd, causal, p, kvo, no, True)
        U_ref, st_ref = ref.partial_fwd(qd, kd, vd, causal, p, True, kvo, no, sin)
        U, st = ops.PARTIAL_FWD["triton"](q, k, v, True, causal, pp, kvo, no, sin.float())
        torch.testing.assert_close(U.double(), U_ref, **F32)
        torch.testing.assert_close(st.double(), st_ref, **F32)
        assert not U.isnan().any()


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("p", [None, 1.0, 2.0, 15.0])
def test_partial_bwd_and_gamma_match_reference(case, p):
    Tq, Tk, causal, kvo, no = case
    q, k, v, do = _inputs(Tq, Tk, H=4, Hkv=2, seed=1)
    pp = p or 0.0
    qd, kd, vd = q.double(), k.double(), v.double()
    stats, o = _global_stats(qd, kd, vd, causal, p, kvo, no, True)
    gamma = None
    if p is not None:
        G_ref = ref.partial_bwd_gamma(qd, kd, vd, o, do, stats, causal, p, True, kvo, no)
        G = ops.PARTIAL_GAMMA["triton"](q, k, v, True, o.float(), do.float(), stats.float(), causal, pp, kvo, no)
        assert G.shape == G_ref.shape and G.dtype == torch.float32
        torch.testing.assert_close(G.double(), G_ref, **F32_GRAD[p])
        L = stats[0]
        gamma = G_ref / torch.where(L > 0, L, torch.ones_like(L))
    want = ref.partial_bwd(qd, kd, vd, o, do, stats, causal, p, True, kvo, no, gamma)
    got = ops.PARTIAL_BWD["triton"](
        q,
        k,
        v,
        True,
        o.float(),
        do.float(),
        stats.float(),
        causal,
        pp,
        kvo,
        no,
        None if gamma is None else gamma.float(),
    )
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.shape == b.shape and a.dtype == torch.float32, name
        assert not a.isnan().any(), name
        torch.testing.assert_close(a.double(), b, **F32_GRAD[p], msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("qk_norm", [True, False])
def test_partial_without_qk_norm_and_wide_head(qk_norm):
    """D = 40 (padded to 64), MQA (Hkv = 1), LSSAR p = 2 forward pass 2 and backward."""
    q, k, v, do = _inputs(7, 18, H=3, Hkv=1, D=40, seed=2)
    if not qk_norm:
        q, k = q * 0.3, k * 0.3
    qd, kd, vd = q.double(), k.double(), v.double()
    stats, o = _global_stats(qd, kd, vd, True, 2.0, 11, 20, qk_norm)
    U_ref, _ = ref.partial_fwd(qd, kd, vd, True, 2.0, qk_norm, 11, 20, stats)
    U, _ = ops.PARTIAL_FWD["triton"](q, k, v, qk_norm, True, 2.0, 11, 20, stats.float())
    torch.testing.assert_close(U.double(), U_ref, **F32)
    G = ref.partial_bwd_gamma(qd, kd, vd, o, do, stats, True, 2.0, qk_norm, 11, 20)
    gamma = G / stats[0]
    want = ref.partial_bwd(qd, kd, vd, o, do, stats, True, 2.0, qk_norm, 11, 20, gamma)
    got = ops.PARTIAL_BWD["triton"](
        q, k, v, qk_norm, o.float(), do.float(), stats.float(), True, 2.0, 11, 20, gamma.float()
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **F32_GRAD[2.0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_partial_low_precision_inputs(dtype):
    """bf16 / fp16 inputs accumulate in float32: compared with the float64 reference on the same
    rounded inputs, so the float32 tolerance still applies."""
    q, k, v, do = _inputs(17, 19, H=2, Hkv=1, dtype=dtype, seed=3)
    qd, kd, vd = q.double(), k.double(), v.double()
    U_ref, st_ref = ref.partial_fwd(qd, kd, vd, True, None, True, 4, 30)
    U, st = ops.PARTIAL_FWD["triton"](q, k, v, True, True, 0.0, 4, 30, None)
    assert U.dtype == torch.float32
    torch.testing.assert_close(U.double(), U_ref, **F32)
    torch.testing.assert_close(st[0].double(), st_ref[0], **F32)
    stats, o = _global_stats(qd, kd, vd, True, None, 4, 30, True)
    want = ref.partial_bwd(qd, kd, vd, o, do, stats, True, None, True, 4, 30)
    got = ops.PARTIAL_BWD["triton"](q, k, v, True, o.float(), do.float(), stats.float(), True, 0.0, 4, 30, None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **F32_GRAD[None])


def test_partial_bad_input_names_the_op():
    q, k, v, _ = _inputs(3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="ring partial, triton"):
        ops.PARTIAL_FWD["triton"](q, k, v, True, True, 0.0, 0, -1, None)
    q, k, v, _ = _inputs(3, 3, D=300)
    with pytest.raises(ValueError, match="head dim D"):
        ops.PARTIAL_FWD["triton"](q, k, v, True, True, 0.0, 0, -1, None)
    q, k, v, do = _inputs(3, 3)
    st = torch.ones(3, 1, 2, 3)
    with pytest.raises(ValueError, match="needs the global gamma"):
        ops.PARTIAL_BWD["triton"](q, k, v, True, q, do.float(), st, True, 2.0, 0, -1, None)


def test_blockwise_forward_on_triton_is_the_single_device_op():
    """The ring's block walk (nlseq.distributed._blocks, single process, 3 simulated ranks, zigzag)
    on the Triton partials against the float64 oracle."""
    from nlseq.distributed import _blocks

    T = 13
    q, k, v, _ = _inputs(T, T, H=2, Hkv=1, seed=4)
    cuts = [c * T // 6 for c in range(7)]
    blocks = [[(cuts[r], cuts[r + 1]), (cuts[5 - r], cuts[6 - r])] for r in range(3)]
    for p in (None, 15.0):
        o, _ = _blocks.blockwise_attention("triton", q, k, v, blocks, blocks, [(0, T)], True, p or 0.0, True)
        want = ref.softplus_attention_naive(q.double(), k.double(), v.double(), causal=True, reweight_p=p)
        torch.testing.assert_close(o.double(), want, **F32)
        assert math.isfinite(o.abs().max().item())


_SM90 = r"""
from nlseq.kernels import softplus_attention_partial as kp

# every constexpr branch for bf16 at D = 128 (first GPU config); the widest head in float32 with the
# smallest tiles for the LSSAR branches only (each compile takes tens of seconds on a CPU)
cfgs = kp._configs()
for dtype, causal, bd, cfg, everything in [("bf16", True, 128, cfgs[0], True), ("fp32", True, 256, cfgs[-1], False)]:
    ptrs = dict(q_ptr=dtype, k_ptr=dtype, v_ptr=dtype, do_ptr=dtype, rq_ptr="fp32", rk_ptr="fp32", u_ptr="fp32",
                st_ptr="fp32", sin_ptr="fp32", dl_ptr="fp32", gam_ptr="fp32", dq_ptr="fp32", dk_ptr="fp32",
                dv_ptr="fp32")
    floats = ("logD", "p")
    w = dict(cfg.kwargs, BD=bd, CAUSAL=causal)
    for mode in ((0, 1, 2) if everything else (2,)):
        compile_kernel(kp._partial_fwd_kernel, ptrs, dict(w, MODE=mode), cfg.num_warps, cfg.num_stages, floats)
    for reweight, gamma in (((False, False), (True, False), (True, True)) if everything else ((True, True),)):
        compile_kernel(kp._partial_dq_kernel, ptrs, dict(w, REWEIGHT=reweight, GAMMA=gamma), cfg.num_warps,
                       cfg.num_stages, floats)
    for reweight in ((False, True) if everything else (True,)):
        compile_kernel(kp._partial_dkv_kernel, ptrs, dict(w, REWEIGHT=reweight), cfg.num_warps, cfg.num_stages,
                       floats)
print("compiled")
"""


def test_partial_kernels_compile_for_sm90():
    """The interpreter never lowers the kernels: compile the variants a GPU launches for sm_90
    (first and last GPU autotune config, every constexpr branch) without a GPU (tests/_triton_aot.py)."""
    from _triton_aot import compile_sm90

    compile_sm90(_SM90)
