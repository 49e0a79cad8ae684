"""The C++ input projection of ParaGRU / ParaLSTM (nlseq.ops.pararnn_projection, nlseq_ext::pararnn_projection).

Against the float64 block-diagonal formula: values for odd shapes (T = 1, primes, 1/3/5 heads, more
rows than one work block), every accepted dtype, gradients by gradcheck in float64 and for every
subset of inputs that needs them, the modules on it against the reference backend, and the errors
of the op on bad shapes. Outputs of the compiled op are NaN-poisoned (conftest), so a row or
column the kernel does not write fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from nlseq.nn import ParaGRU, ParaLSTM
from nlseq.ops.pararnn_projection import _CppProjection, input_projection

pytestmark = pytest.mark.skipif(not nlseq.backends()["cpp"], reason="needs the compiled cpp backend")


def _formula(x, W, b):
    """U [..., G, N] in float64 straight from the definition (docs/spec.md §1.3)."""
    heads, ih, G, nh = W.shape
    xh = x.double().reshape(*x.shape[:-1], heads, ih)
    U = torch.einsum("...hi,higj->...ghj", xh, W.double())
    return U.reshape(*x.shape[:-1], G, heads * nh) + b.double()


def _problem(B, T, heads, ih, nh, dtype, G=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, heads * ih, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(heads, ih, G, nh, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(G, heads * nh, generator=g, dtype=torch.float64).to(dtype)
    return x, W, b


SHAPES = [(1, 1, 1, 4, 4), (2, 7, 3, 5, 3), (3, 13, 5, 2, 7), (2, 1031, 2, 8, 16), (1, 4099, 1, 3, 5)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 6e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("B,T,heads,ih,nh", SHAPES, ids=["B{}-T{}-h{}-ih{}-nh{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_values_match_formula(B, T, heads, ih, nh, dtype):
    x, W, b = _problem(B, T, heads, ih, nh, dtype)
    U = input_projection(x, W, b)
    assert U.shape == (B, T, 3, heads * nh) and U.dtype == dtype
    ref = _formula(x, W, b)
    # the inputs are rounded to dtype already: the error is the GEMM's rounding, relative to |U|
    scale = _formula(x.abs(), W.abs(), b.abs()).abs()
    err = ((U.double() - ref).abs() / (scale + 1e-30)).max().item()
    assert err <= TOL[dtype], f"{dtype}: max error {err:.2e} relative to sum |x||W| + |b|"


def test_runs_the_compiled_op_on_cpu():
    """The CPU path is the compiled op (not a silent fallback to the reference function)."""
    x, W, b = _problem(2, 5, 2, 3, 4, torch.float32)
    with torch.profiler.profile() as prof:
        input_projection(x, W, b)
    names = {e.name for e in prof.events()}
    assert "nlseq_ext::pararnn_projection" in names, sorted(names)[:20]


def test_gradcheck_float64():
    x, W, b = _problem(2, 5, 3, 2, 3, torch.float64)
    x2 = x.reshape(-1, x.shape[-1]).contiguous().requires_grad_()
    W.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(_CppProjection.apply, (x2, W, b))


@pytest.mark.parametrize("which", ["x", "W", "b", "xW", "Wb"])
def test_gradients_only_where_needed(which):
    x, W, b = _problem(2, 37, 2, 4, 6, torch.float64, seed=3)
    leaves = {"x": x, "W": W, "b": b}
    for k in which:
        leaves[k].requires_grad_()
    dU = torch.randn(2, 37, 3, 12, dtype=torch.float64)
    U = input_projection(x, W, b)
    grads = torch.autograd.grad(U, [leaves[k] for k in which], dU)
    xr, Wr, br = (t.detach().clone().requires_grad_() for t in (x, W, b))
    ref = torch.autograd.grad(_formula(xr, Wr, br), [{"x": xr, "W": Wr, "b": br}[k] for k in which], dU)
    for k, got, want in zip(which, grads, ref):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11, msg=f"d{k}")


def test_non_contiguous_inputs():
    x, W, b = _problem(3, 11, 2, 4, 5, torch.float32)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    Wt = W.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    torch.testing.assert_close(input_projection(xt, Wt, b), input_projection(x, W, b), atol=0, rtol=0)


def test_empty_rows():
    x, W, b = _problem(2, 0, 2, 3, 4, torch.float32)
    x.requires_grad_()
    W.requires_grad_()
    U = input_projection(x, W, b)
    assert U.shape == (2, 0, 3, 8)
    dx, dW = torch.autograd.grad(U, (x, W), torch.ones_like(U))
    assert dx.shape == x.shape and torch.equal(dW, torch.zeros_like(W))


@pytest.mark.parametrize("cls", [ParaGRU, ParaLSTM])
def test_module_matches_reference_backend(cls):
    """The module on the cpp backend (C++ projection + fused kernels) against the reference
    backend (reference projection + PyTorch Newton), forward and every gradient, float64."""
    torch.manual_seed(0)
    m = cls(6, 9, heads=3, backend="cpp", dtype=torch.float64)
    r = cls(6, 9, heads=3, backend="reference", dtype=torch.float64, tol=1e-12, max_iters=60)
    r.load_state_dict(m.state_dict())
    x = torch.randn(2, 17, 6, dtype=torch.float64)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [mod(xi)[0] for mod, xi in zip((m, r), xs)]
    torch.testing.assert_close(ys[0], ys[1], atol=1e-9, rtol=1e-9)
    gy = torch.randn_like(ys[0])
    g0 = torch.autograd.grad(ys[0], (xs[0], *m.parameters()), gy)
    g1 = torch.autograd.grad(ys[1], (xs[1], *r.parameters()), gy)
    for a, c in zip(g0, g1):
        torch.testing.assert_close(a, c, atol=1e-8, rtol=1e-8)


def test_op_rejects_bad_shapes():
    op = torch.ops.nlseq_ext.pararnn_projection
    x, W, b = (torch.randn(4, 6), torch.randn(2, 3, 3, 2), torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="pararnn_projection: x's last dim must be heads"):
        op(torch.randn(4, 5), W, b)
    with pytest.raises(RuntimeError, match=r"pararnn_projection: b must have shape \[G, N\]"):
        op(x, W, torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="pararnn_projection: W must have x's dtype"):
        op(x, W.double(), b)
    with pytest.raises(RuntimeError, match=r"pararnn_projection_bwd: dU must have shape \[M, G, N\]"):
        torch.ops.nlseq_ext.pararnn_projection_bwd(x, W, torch.randn(4, 3, 5), True, True)
    with pytest.raises(ValueError, match="input_projection: x's last dim must be heads"):
        input_projection(torch.randn(2, 3, 5), W, b)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_results_do_not_depend_on_the_thread_count(cell):
    """Work items are claimed by whichever thread is free (csrc/cpu/pararnn.cpp parallel_items):
    the projection, the sequential forward and the fused backward give the same bits with 1 and
    2 threads, gradients included (every reduction over items runs in a fixed order)."""
    torch.manual_seed(1)
    m = (ParaGRU if cell == "gru" else ParaLSTM)(8, 12, heads=2, backend="cpp")
    x = torch.randn(3, 300, 8)  # 900 rows: several projection blocks
    gy = torch.randn(3, 300, 12)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xi = x.clone().requires_grad_()
            y, _ = m(xi)
            results.append((y, *torch.autograd.grad(y, (xi, *m.parameters()), gy)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.slow  # a float64 loop over 4099 steps and GEMMs of 16 MB: seconds
def test_large_outputs():
    """Outputs of 8 MB and more get the huge-page advice (csrc/cpu/pararnn.cpp advise_huge_pages) and
    the projection runs on the BLAS directly: at such sizes (U 12.6 MB, S_all 8.4 MB, dU 25 MB;
    4099 rows: blocks of unequal length, a tensor start not on a 2 MiB boundary) the projection,
    its gradients and the fused recurrence forward+backward match float64."""
    x, W, b = _problem(1, 4099, 2, 128, 128, torch.float32, seed=5)
    W = W / 16
    xg, Wg, bg = (t.clone().requires_grad_() for t in (x, W, b))
    U = input_projection(xg, Wg, bg)
    ref = _formula(x, W, b)
    scale = _formula(x.abs(), W.abs(), b.abs()).abs()
    assert ((U.double() - ref).abs() / scale).max().item() <= TOL[torch.float32]
    dU = torch.randn_like(U)
    got = torch.autograd.grad(U, (xg, Wg, bg), dU)
    x64, W64, b64 = (t.double().requires_grad_() for t in (x, W, b))
    want = torch.autograd.grad(_formula(x64, W64, b64), (x64, W64, b64), dU.double())
    for name, g, w in zip("xWb", got, want):
        err = ((g.double() - w).abs().max() / w.abs().max()).item()
        assert err <= 1e-5, f"d{name}: max error {err:.2e} relative to max |d{name}|"

    from nlseq.reference import pararnn as ref_pararnn

    Ur = torch.randn(2, 4099, 3, 256, dtype=torch.float64)
    A = torch.rand(3, 256, dtype=torch.float64) * 0.5
    Ug, Ag = Ur.float().requires_grad_(), A.float().requires_grad_()
    S = nlseq.pararnn("gru", Ug, Ag, mode="sequential", backend="cpp")
    S64 = ref_pararnn.pararnn_sequential("gru", Ur, A, None, None)
    torch.testing.assert_close(S.double(), S64, atol=1e-5, rtol=1e-5)
    gS = torch.randn_like(S)
    dUc, dAc = torch.autograd.grad(S, (Ug, Ag), gS)
    # the fused backward against float64 autograd over the last 64 steps (autograd through the
    # whole loop is slow): λ runs backwards from T, so dU there depends only on those steps, their
    # cotangents and the state before them
    assert dUc.shape == Ug.shape and torch.isfinite(dUc).all() and torch.isfinite(dAc).all()
    t0 = 4099 - 64
    s0 = S64[:, t0 - 1].clone()
    Ut = Ur[:, t0:].clone().requires_grad_()
    St = ref_pararnn.pararnn_sequential("gru", Ut, A, None, s0)
    (dUt,) = torch.autograd.grad(St, (Ut,), gS[:, t0:].double())
    torch.testing.assert_close(dUc[:, t0:].double(), dUt, atol=1e-5, rtol=1e-4)
