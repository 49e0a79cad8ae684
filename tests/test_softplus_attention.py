"""nlseq.softplus_attention (LSSA / LSSAR): every backend against the float64 oracle of docs/spec.md §2."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import nlseq
from _utils import DTYPE_IDS, assert_close_to_oracle, backend_params, device_for
from nlseq.reference.softplus_attention import (
    ZERO_ROW_TOL,
    length_scale,
    reweight_offset,
    softplus,
    softplus_attention_naive,
    visible,
)

ALL = backend_params("cuda", "triton", "cpp", "reference")
CPU_EXACT = backend_params("cpp", "reference")  # float64-capable backends


def _interpreted(backend):
    return backend == "triton" and device_for(backend).type == "cpu"


def make_qkv(B, H, Hkv, Tq, Tk, D, *, dtype, device, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=torch.float64) * scale
    k = torch.randn(B, Hkv, Tk, D, generator=g, dtype=torch.float64) * scale
    v = torch.randn(B, Hkv, Tk, D, generator=g, dtype=torch.float64)
    return tuple(x.to(dtype).to(device).requires_grad_() for x in (q, k, v))


def oracle(q, k, v, **kw):
    """Output and dq/dk/dv of the float64 naive reference on the same (rounded) inputs."""
    q64, k64, v64 = (x.detach().double().cpu().requires_grad_() for x in (q, k, v))
    kw = {n: (x.cpu() if isinstance(x, torch.Tensor) else x) for n, x in kw.items()}
    o = softplus_attention_naive(q64, k64, v64, **kw)
    return o, q64, k64, v64


def check_against_oracle(backend, q, k, v, *, tol, grad_tol, seed=3, **kw):
    o = nlseq.softplus_attention(q, k, v, backend=backend, **kw)
    assert o.dtype == q.dtype and o.shape == q.shape
    o64, q64, k64, v64 = oracle(q, k, v, **kw)
    assert_close_to_oracle(o, o64, **tol, what="o")
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), g.to(o.dtype).to(o.device))
    rq, rk, rv = torch.autograd.grad(o64, (q64, k64, v64), g.to(o.dtype).double())
    assert_close_to_oracle(dq, rq, **grad_tol, what="dq")
    assert_close_to_oracle(dk, rk, **grad_tol, what="dk")
    assert_close_to_oracle(dv, rv, **grad_tol, what="dv")


# fp32: scores are O(ln D · ln N) <= ~25 here, rounding in s is ~25·2^-24; the outputs are convex
# combinations of v (|v| ~ 3) and gradients are amplified by c_i and, for LSSAR, by p: 15·25 = 375
# in the worst case, hence the looser gradient bound for p = 15.
F32 = dict(atol=2e-5, rtol=2e-5)
F32_GRAD = {
    None: dict(atol=5e-5, rtol=1e-4),
    1.0: dict(atol=1e-4, rtol=1e-4),
    3.0: dict(atol=2e-4, rtol=2e-4),
    15.0: dict(atol=2e-3, rtol=1e-3),
}
F64 = dict(atol=1e-11, rtol=1e-11)

P_VALUES = [None, 1.0, 3.0, 15.0]
P_IDS = {None: "lssa", 1.0: "p1", 3.0: "p3", 15.0: "p15"}

# (B, H, Hkv, Tq, Tk, D, causal, kv_offset)
CASES = [
    (2, 2, 2, 37, 37, 24, True, 0),  # causal, D not a power of two, past one Triton tile
    (1, 4, 2, 19, 19, 32, False, 0),  # non-causal, GQA
    (1, 4, 1, 5, 40, 16, True, 35),  # decoding-like: kv_offset = cached keys, MQA
    (2, 2, 1, 7, 29, 20, True, 3),  # Tq != Tk with an offset (the last rows see all keys, clamped)
    (1, 2, 2, 23, 11, 16, False, 0),  # Tq > Tk, non-causal
    (1, 1, 1, 1, 1, 8, True, 0),  # T = 1: N = 1, ln N = 0
]


def _case_id(c):
    B, H, Hkv, Tq, Tk, D, causal, off = c
    return f"B{B}-H{H}kv{Hkv}-Tq{Tq}-Tk{Tk}-D{D}-{'causal' if causal else 'full'}" + (f"-off{off}" if off else "")


@pytest.mark.parametrize("p", P_VALUES, ids=[P_IDS[p] for p in P_VALUES])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.parametrize("backend", ALL)
def test_fp32_against_oracle(backend, case, p):
    B, H, Hkv, Tq, Tk, D, causal, off = case
    if backend == "cuda" and Tq > 16:
        pytest.skip("the cuda backend is the decoding kernel (Tq <= 16)")
    q, k, v = make_qkv(B, H, Hkv, Tq, Tk, D, dtype=torch.float32, device=device_for(backend))
    check_against_oracle(backend, q, k, v, causal=causal, reweight_p=p, kv_offset=off, tol=F32, grad_tol=F32_GRAD[p])


@pytest.mark.parametrize("p", P_VALUES, ids=[P_IDS[p] for p in P_VALUES])
@pytest.mark.parametrize("backend", CPU_EXACT)
def test_fp64_tight(backend, p):
    q, k, v = make_qkv(2, 4, 2, 70, 70, 24, dtype=torch.float64, device="cpu")
    check_against_oracle(backend, q, k, v, causal=True, reweight_p=p, tol=F64, grad_tol=dict(atol=1e-9, rtol=1e-9))


@pytest.mark.slow
def test_fp64_gradcheck_cpp():
    if not nlseq.backends()["cpp"]:
        pytest.skip(str(nlseq.backends()["cpp"]))
    q, k, v = make_qkv(1, 2, 1, 6, 6, 5, dtype=torch.float64, device="cpu")
    for p in (None, 3.0):
        torch.autograd.gradcheck(
            lambda q, k, v, p=p: nlseq.softplus_attention(q, k, v, reweight_p=p, backend="cpp"), (q, k, v)
        )


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("backend", ALL)
def test_varlen_with_length_one_sequences(backend, causal, p):
    if backend == "cuda":
        pytest.skip("the cuda decoding kernel takes no cu_seqlens")
    dev = device_for(backend)
    lens_q = [1, 5, 1, 18, 3]
    lens_k = lens_q if causal else [2, 5, 1, 13, 0]  # non-causal: an empty key sequence gives o = 0
    cu_q = torch.tensor([0] + lens_q).cumsum(0).to(torch.int32).to(dev)
    cu_k = torch.tensor([0] + lens_k).cumsum(0).to(torch.int32).to(dev)
    q, k, v = make_qkv(1, 4, 2, sum(lens_q), sum(lens_k), 16, dtype=torch.float32, device=dev)
    check_against_oracle(
        backend,
        q,
        k,
        v,
        causal=causal,
        reweight_p=p,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        tol=F32,
        grad_tol=F32_GRAD[p],
    )
    if not causal:  # the last sequence has no keys: its row is exactly 0
        o = nlseq.softplus_attention(
            q, k, v, causal=False, reweight_p=p, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend=backend
        )
        assert torch.all(o[:, :, -3:] == 0)


def test_varlen_equals_separate_calls():
    lens = [3, 1, 9]
    q, k, v = make_qkv(1, 2, 2, sum(lens), sum(lens), 8, dtype=torch.float64, device="cpu")
    cu = torch.tensor([0] + lens).cumsum(0)
    o = nlseq.softplus_attention(q, k, v, reweight_p=3.0, cu_seqlens_q=cu, cu_seqlens_k=cu)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        part = nlseq.softplus_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], reweight_p=3.0)
        torch.testing.assert_close(o[:, :, a:b], part)


@pytest.mark.parametrize("p", [1.0, 15.0], ids=["p1", "p15"])
@pytest.mark.parametrize("backend", ALL)
def test_rows_that_reweight_to_zero(backend, p):
    """Identical keys make every a_ij = 1/N_i, so N_i a_ij − 1 = 0: rows with N_i > 3 are all-zero rows."""
    if backend == "cuda":
        pytest.skip("needs Tq > 16")
    dev = device_for(backend)
    T, D = 21, 16
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, T, D, generator=g).to(dev).requires_grad_()
    k = torch.randn(1, 1, 1, D, generator=g).expand(1, 1, T, D).contiguous().to(dev).requires_grad_()
    v = torch.randn(1, 1, T, D, generator=g).to(dev).requires_grad_()
    o = nlseq.softplus_attention(q, k, v, reweight_p=p, backend=backend)
    assert not torch.isnan(o).any()
    assert torch.all(o[:, :, 3:] == 0), "rows with N_i > 3 must be exactly zero"
    # rows 0..2 (O_i = 0) are the uniform average of the visible values
    for i in range(3):
        torch.testing.assert_close(o[0, :, i], v[0, 0, : i + 1].mean(0).expand(2, D), atol=1e-5, rtol=1e-5)
    dq, dk, dv = torch.autograd.grad(o.sum(), (q, k, v))
    for name, d in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(d).all(), f"{name} not finite"
    o64, *_ = oracle(q, k, v, reweight_p=p)
    assert torch.all(o64[:, :, 3:] == 0)


def test_zero_query_gives_uniform_lssa_and_zero_lssar():
    q = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    k, v = torch.randn(1, 1, 6, 8, dtype=torch.float64), torch.randn(1, 1, 6, 8, dtype=torch.float64)
    o = nlseq.softplus_attention(q, k, v)
    torch.testing.assert_close(o[0, 0], v[0, 0].cumsum(0) / torch.arange(1, 7, dtype=torch.float64)[:, None])
    o = nlseq.softplus_attention(q, k, v, reweight_p=15.0)
    assert torch.all(o[0, 0, 3:] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
@pytest.mark.parametrize("backend", ALL)
def test_low_precision_long_rows_no_overflow(backend, dtype, p):
    """Large N and a dominant key: N_i a_ij reaches ~N, (N a)^15 would overflow fp16 and fp32."""
    if backend == "cuda":
        pytest.skip("needs Tq > 16")
    T = 96 if _interpreted(backend) else 1024
    D = 48
    dev = device_for(backend)
    q, k, v = make_qkv(1, 2, 1, T, T, D, dtype=torch.float32, device="cpu", seed=7)
    with torch.no_grad():
        k[0, 0, 0] = q[0, :, -40:].mean((0, 1)) * 4  # a key aligned with the late queries
    q, k, v = (x.detach().to(dtype).to(dev).requires_grad_() for x in (q, k, v))
    o = nlseq.softplus_attention(q, k, v, reweight_p=p, backend=backend)
    o64, q64, k64, v64 = oracle(q, k, v, reweight_p=p)
    # output rounding (2^-8 bf16, 2^-11 fp16 relative) plus the weights rounded to the input dtype
    # before the P·V product on the GPU kernels: a few ulps of |v| ~ 3
    tol = dict(atol=3e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=4e-3, rtol=4e-3)
    assert_close_to_oracle(o, o64, **tol, what=f"o ({DTYPE_IDS[dtype]})")
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(o, (q, k, v), g.to(dtype).to(dev))
    ref = torch.autograd.grad(o64, (q64, k64, v64), g.to(dtype).double())
    for name, d, r in zip(("dq", "dk", "dv"), grads, ref):
        assert torch.isfinite(d).all(), f"{name} not finite"
        scale = r.abs().max().item()
        rel = (d.double().cpu() - r).abs().max().item() / scale
        assert rel < (3e-2 if dtype == torch.bfloat16 else 5e-3), f"{name}: max error {rel:.2e} of its scale"


def test_fp32_where_the_naive_power_overflows():
    """The safe form stays finite where ReLU(N a − O)^15 in float32 is inf (base > ~370)."""
    T, D = 1024, 64
    q, k, v = make_qkv(1, 1, 1, T, T, D, dtype=torch.float32, device="cpu", seed=2)
    with torch.no_grad():  # key 0 along the last query, the others against it: N_i a_i0 ~ N
        k[0, 0, 0] = q[0, 0, -1]
        k[0, 0, 1:] = -q[0, 0, -1] + 0.1 * k[0, 0, 1:]
    with torch.no_grad():  # show that the direct power overflows for the last row
        s = length_scale(torch.tensor([T]), D, torch.float32) * (
            torch.nn.functional.normalize(q[0, 0, -1:], dim=-1) @ torch.nn.functional.normalize(k[0, 0], dim=-1).T
        )
        a = softplus(s) / softplus(s).sum()
        base = T * a - 1
        assert torch.isinf(torch.relu(base) ** 15).any()
    o64, *_ = oracle(q, k, v, reweight_p=15.0)
    for backend in ("cpp", "reference"):
        if not nlseq.backends()[backend]:
            continue
        o = nlseq.softplus_attention(q, k, v, reweight_p=15.0, backend=backend)
        assert torch.isfinite(o).all()
        # p = 15 amplifies the float32 rounding of base = N a − 1 fifteenfold (and more where base
        # is small), so compare with FlashAttention's rule: at most twice the error of the plain
        # PyTorch float32 evaluation (the chunked reference) plus a little.
        plain = (softplus_attention_naive(q.detach(), k.detach(), v.detach(), reweight_p=15.0).double() - o64).abs()
        finite = torch.isfinite(plain)
        assert not finite.all(), "the plain float32 evaluation should overflow on the last row"
        err = (o.double() - o64).abs()
        bound = 2 * plain[finite].max().item() + 1e-5
        assert err.max().item() <= bound, f"{backend}: error {err.max().item():.2e} > {bound:.2e}"


@pytest.mark.parametrize("backend", ALL)
def test_identities(backend):
    """LSSA = softmax(log softplus(s)) with −inf masked; LSSAR = softmax(p · log ReLU(N a − O))."""
    if backend == "cuda":
        pytest.skip("needs Tq > 16")
    dev = device_for(backend)
    B, H, T, D = 1, 2, 29, 24
    q, k, v = make_qkv(B, H, H, T, T, D, dtype=torch.float32, device=dev)
    q64, k64, v64 = (x.detach().double().cpu() for x in (q, k, v))
    mask, n = visible(T, T, True, 0, "cpu")
    s = length_scale(n, D, torch.float64)[:, None] * (
        torch.nn.functional.normalize(q64, dim=-1) @ torch.nn.functional.normalize(k64, dim=-1).transpose(-1, -2)
    )
    logits = torch.where(mask, torch.log(softplus(s)), -math.inf)
    lssa = torch.softmax(logits, -1) @ v64
    assert_close_to_oracle(nlseq.softplus_attention(q, k, v, backend=backend), lssa, **F32, what="LSSA identity")
    p = 3.0
    a = torch.softmax(logits, -1)
    base = n.double()[:, None] * a - reweight_offset(n, torch.float64)[:, None]
    lssar = torch.softmax(torch.where(mask & (base > 0), p * torch.log(base.clamp_min(1e-300)), -math.inf), -1) @ v64
    assert (base.amax(-1) > ZERO_ROW_TOL).all()
    assert_close_to_oracle(
        nlseq.softplus_attention(q, k, v, reweight_p=p, backend=backend), lssar, **F32, what="LSSAR identity"
    )


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "p15"])
@pytest.mark.parametrize("backend", ALL)
def test_cached_decoding_equals_full_forward(backend, p):
    """Query t with the first t + 1 keys and kv_offset = t gives row t of the full causal forward."""
    dev = device_for(backend)
    T = 24
    q, k, v = make_qkv(2, 4, 2, T, T, 16, dtype=torch.float32, device=dev)
    full = nlseq.softplus_attention(q, k, v, reweight_p=p, backend="reference" if backend == "cuda" else backend)
    for t in (0, 3, 4, 17, T - 1):
        step = nlseq.softplus_attention(
            q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1], reweight_p=p, kv_offset=t, backend=backend
        )
        torch.testing.assert_close(step, full[:, :, t : t + 1], atol=2e-6, rtol=2e-5)
    # a block of 4 new queries after a cache of 12 keys (speculative decoding / chunked prefill)
    step = nlseq.softplus_attention(
        q[:, :, 12:16], k[:, :, :16], v[:, :, :16], reweight_p=p, kv_offset=12, backend=backend
    )
    torch.testing.assert_close(step, full[:, :, 12:16], atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("backend", backend_params("triton", "cpp", "reference"))
def test_no_qk_norm(backend):
    q, k, v = make_qkv(1, 2, 2, 17, 17, 16, dtype=torch.float32, device=device_for(backend), scale=0.3)
    check_against_oracle(backend, q, k, v, qk_norm=False, reweight_p=3.0, tol=F32, grad_tol=F32_GRAD[3.0])


@pytest.mark.parametrize("backend", backend_params("triton", "cpp", "reference"))
def test_opcheck(backend):
    dev = device_for(backend)
    q, k, v = make_qkv(1, 2, 1, 9, 9, 16, dtype=torch.float32, device=dev)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32, device=dev)
    op = torch.ops.nlseq.softplus_attention
    torch.library.opcheck(op, (q, k, v, True, 0.0, True, 0, None, None, backend))
    torch.library.opcheck(op, (q, k, v, True, 15.0, True, 2, None, None, backend))
    torch.library.opcheck(op, (q, k, v, False, 3.0, False, 0, cu, cu, backend))


def test_torch_compile_matches_eager():
    q, k, v = make_qkv(1, 2, 1, 12, 12, 16, dtype=torch.float32, device="cpu")

    def f(q, k, v):
        return nlseq.softplus_attention(q, k, v, reweight_p=3.0).square().sum()

    eager = f(q, k, v)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager)


def test_input_errors():
    q, k, v = make_qkv(1, 3, 2, 4, 4, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        nlseq.softplus_attention(q, k, v)
    q, k, v = make_qkv(2, 2, 1, 4, 4, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="k must have shape"):
        nlseq.softplus_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="reweight_p"):
        nlseq.softplus_attention(q, k, v, reweight_p=0)
    with pytest.raises(ValueError, match="kv_offset"):
        nlseq.softplus_attention(q, k, v, kv_offset=-1)
    with pytest.raises(TypeError, match="dtype"):
        nlseq.softplus_attention(q, k.double(), v)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="B = 1"):
        nlseq.softplus_attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu)
    with pytest.raises(ValueError, match="rise from 0"):
        nlseq.softplus_attention(q[:1], k[:1], v[:1], cu_seqlens_q=torch.tensor([0, 3]), cu_seqlens_k=cu)
    with pytest.raises(RuntimeError, match="cuda"):
        nlseq.softplus_attention(q, k, v, backend="cuda")


def test_module_cache_matches_full_sequence():
    torch.manual_seed(0)
    m = nlseq.nn.SoftplusAttention(48, 4, 2, reweight_p=15.0).double()
    x = torch.randn(2, 11, 48, dtype=torch.float64, requires_grad=True)
    y, (k, v) = m(x)
    assert y.shape == x.shape and k.shape == (2, 2, 11, 12)
    y1, cache = m(x[:, :7])
    y2, _ = m(x[:, 7:], cache)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    y.sum().backward()
    assert x.grad is not None and m.q_proj.weight.grad is not None


def test_import_does_not_import_transformers():
    code = "import sys, nlseq, nlseq.nn; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ})


def test_cuda_backend_routing_rules():
    """The cuda backend serves decoding only; every other call says why (and auto then picks triton)."""
    from nlseq.ops import softplus_attention as ops

    assert "Tq <= 16" in ops._cuda_serves(17, True, False)
    assert "qk_norm" in ops._cuda_serves(4, False, False)
    assert "cu_seqlens" in ops._cuda_serves(4, True, True)
    assert ops._cuda_serves(16, True, False) in ("", f"nlseq._C has no CUDA kernel for {ops.DECODE_OP}")
