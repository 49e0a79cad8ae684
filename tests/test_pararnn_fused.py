"""Fused ParaRNN kernels (Triton; CUDA when a GPU is present) against a float64 sequential oracle.

The oracle (tests/_pararnn_oracle.py) is a plain float64 loop of the equations of docs/spec.md §1.3 and
its gradients come from autograd, so the kernels' Newton forward and implicit backward (docs/spec.md
§1.2) are checked against an independent derivation. On the CPU the Triton kernels run in the
interpreter (tests/conftest.py), so shapes are small; chunk lengths are forced to exercise the
multiple-shooting Newton path (several chunks, a partial last chunk, one-step chunks).
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from _pararnn_oracle import BWD_TOL, FWD_TOL, S_OF, f64, oracle, oracle_grads, residual_of
from _pararnn_oracle import make_inputs as _make_inputs
from _utils import DTYPE_IDS, assert_close_to_oracle
from nlseq.registry import triton_interpret

if not (torch.cuda.is_available() or triton_interpret()):
    pytest.skip(str(nlseq.backends()["triton"]), allow_module_level=True)
pytest.importorskip("triton")

from nlseq.kernels import pararnn as K  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEV.type == "cuda":  # compiled Triton uses approximate exp (ex2.approx): a few ulp more per step
    FWD_TOL = {**FWD_TOL, torch.float32: dict(atol=5e-5, rtol=5e-5)}
    BWD_TOL = {**BWD_TOL, torch.float32: dict(atol=2e-4, rtol=2e-4)}


def make_inputs(cell, B, T, N, **kw):
    return _make_inputs(cell, B, T, N, device=DEV, **kw)


# (B, T, N, chunk length) and I/O dtype. Every dtype on a multi-chunk shape (chunks of 5, the last
# one partial); in float32 also T = 1, a single chunk of 63 steps, N past one block of 128 channels,
# and one-step chunks. (The interpreter is slow: the matrix is kept to what can fail differently.)
_DT = [torch.float32, torch.bfloat16, torch.float16]
CASES = [
    pytest.param(2, 24, 5, 5, dt, s, id=f"T24-L5-{DTYPE_IDS[dt]}-{'s0' if s else 'zero_s0'}")
    for dt in _DT
    for s in (False, True)
] + [
    pytest.param(2, 1, 5, None, torch.float32, True, id="T1-fp32-s0"),
    pytest.param(2, 63, 5, None, torch.float32, False, id="T63-1chunk-fp32-zero_s0"),
    pytest.param(2, 63, 7, 8, torch.float32, True, id="T63-L8-fp32-s0"),
    pytest.param(1, 37, 133, 10, torch.float32, True, id="T37-N133-L10-fp32-s0"),
    pytest.param(3, 6, 3, 1, torch.float32, True, id="T6-L1-fp32-s0"),
]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("B,T,N,L,dtype,with_s0", CASES)
def test_forward_matches_oracle(cell, with_s0, dtype, B, T, N, L):
    U, A, P, s0 = make_inputs(cell, B, T, N, dtype=dtype, with_s0=with_s0)
    S_all, iters, residual = K._pararnn_fwd(cell, U, A, P, s0, 50, 1e-6, chunk_len=L)
    assert S_all.dtype == dtype and S_all.shape == (B, T, S_OF[cell], N)
    assert iters.dtype == torch.int64 and iters.dim() == 0
    assert residual.dtype == torch.float32 and residual.dim() == 0
    ref = oracle(cell, f64(U), f64(A), f64(P), f64(s0))
    assert_close_to_oracle(S_all, ref, **FWD_TOL[dtype], what=f"{cell} S_all")
    assert residual.item() <= 1e-6, f"not converged: residual {residual.item():.3e}"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_single_chunk_is_exact_sequential(cell):
    """One chunk per sequence is the sequential recurrence: no Newton update, residual exactly 0."""
    U, A, P, s0 = make_inputs(cell, 2, 40, 9, dtype=torch.float32, with_s0=True)
    S_all, iters, residual = K._pararnn_fwd(cell, U, A, P, s0, 5, 1e-6, chunk_len=40)
    assert iters.item() == 0 and residual.item() == 0.0
    assert_close_to_oracle(
        S_all, oracle(cell, f64(U), f64(A), f64(P), f64(s0)), **FWD_TOL[torch.float32], what=f"{cell} S_all"
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_residual_is_honest(cell):
    """The reported residual is max_t |s_t − f(s_{t−1}, x_t)| of the returned states, also when the
    solve is stopped early (max_iters=0: the initial guess only; max_iters=1: one update)."""
    U, A, P, s0 = make_inputs(cell, 2, 48, 6, dtype=torch.float32, with_s0=True, scale_a=3.0)
    for max_iters in (0, 1):
        S_all, iters, residual = K._pararnn_fwd(cell, U, A, P, s0, max_iters, 0.0, chunk_len=6)
        assert iters.item() == max_iters
        expect = residual_of(cell, S_all, U, A, P, s0)
        assert expect > 1e-5, "test needs an unconverged state"
        assert abs(residual.item() - expect) <= 1e-6 + 1e-5 * expect, (residual.item(), expect)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_converges_quadratically_and_exact_after_c_minus_1(cell):
    # 24 two-step chunks of a weakly contracting cell: Newton on the boundary states takes <= 6
    # updates to reach 1e-6 (the fixed-point iteration without the tangent correction needs 10+)
    U, A, P, s0 = make_inputs(cell, 1, 48, 6, dtype=torch.float32, with_s0=True, scale_a=3.0)
    _, iters, residual = K._pararnn_fwd(cell, U, A, P, s0, 100, 1e-6, chunk_len=2)
    assert iters.item() <= 6 and residual.item() <= 1e-6, (iters.item(), residual.item())
    # tol < 0 never stops early: exactly min(max_iters, C − 1) updates, and after C − 1 the chunk
    # boundaries are exact, so the residual is exactly 0 even for a strongly non-contracting cell
    U, A, P, s0 = make_inputs(cell, 1, 20, 4, dtype=torch.float32, with_s0=True, scale_a=8.0)
    S_all, iters, residual = K._pararnn_fwd(cell, U, A, P, s0, 100, -1.0, chunk_len=4)
    assert iters.item() == 4 and residual.item() == 0.0
    assert_close_to_oracle(
        S_all, oracle(cell, f64(U), f64(A), f64(P), f64(s0)), atol=1e-5, rtol=1e-5, what=f"{cell} S_all"
    )
    _, iters, _ = K._pararnn_fwd(cell, U, A, P, s0, 2, -1.0, chunk_len=4)
    assert iters.item() == 2


def test_nan_input_gives_nan_residual():
    U, A, P, s0 = make_inputs("gru", 1, 24, 4, dtype=torch.float32, with_s0=False)
    U[0, 13, 1, 2] = float("nan")
    S_all, iters, residual = K._pararnn_fwd("gru", U, A, P, s0, 10, 1e-6, chunk_len=6)
    assert torch.isnan(residual).item()
    assert iters.item() == 0  # stops at once: nothing converges past a NaN


def test_empty_sequence():
    U, A, P, s0 = make_inputs("lstm", 2, 0, 3, dtype=torch.float32, with_s0=True)
    S_all, iters, residual = K.pararnn_fwd("lstm", U, A, P, s0, 3, 1e-6)
    assert S_all.shape == (2, 0, 2, 3) and iters.item() == 0 and residual.item() == 0.0
    dU, dA, dP, ds0 = K.pararnn_bwd("lstm", U, A, P, s0, S_all, torch.zeros_like(S_all), s0 * 2)
    assert dU.shape == U.shape and dA.abs().sum() == 0 and dP.abs().sum() == 0
    assert torch.equal(ds0, s0 * 2)


def test_bad_cell_name():
    U, A, P, s0 = make_inputs("gru", 1, 3, 2, dtype=torch.float32, with_s0=False)
    with pytest.raises(ValueError, match="cell must be one of"):
        K.pararnn_fwd("elman", U, A, P, s0, 3, 1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("B,T,N,L,dtype,with_s0", CASES)
def test_backward_matches_autograd(cell, with_s0, dtype, B, T, N, L):
    U, A, P, s0 = make_inputs(cell, B, T, N, dtype=dtype, with_s0=with_s0)
    S_all, _, _ = K._pararnn_fwd(cell, U, A, P, s0, 50, 1e-6, chunk_len=L)
    g = torch.Generator().manual_seed(1)
    dS = torch.randn(S_all.shape, generator=g).to(dtype).to(DEV)
    ds_last = torch.randn(B, S_OF[cell], N, generator=g).to(dtype).to(DEV)
    dU, dA, dP, ds0 = K._pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last, chunk_len=L)
    assert dU.dtype == dtype and ds0.dtype == dtype and dA.dtype == torch.float32
    gU, gA, gP, gs0 = oracle_grads(cell, U, A, P, s0, dS, ds_last)
    tol = BWD_TOL[dtype]
    assert_close_to_oracle(dU, gU, **tol, what=f"{cell} dU")
    assert_close_to_oracle(ds0, gs0, **tol, what=f"{cell} ds0")
    sum_tol = dict(atol=tol["atol"] * (B * T) ** 0.5, rtol=tol["rtol"])  # dA, dP: sums of B·T terms
    assert_close_to_oracle(dA, gA, **sum_tol, what=f"{cell} dA")
    if cell == "lstm":
        assert dP.dtype == torch.float32
        assert_close_to_oracle(dP, gP, **sum_tol, what=f"{cell} dP")
    else:
        assert dP is None


def test_lstm_without_peepholes():
    U, A, _, s0 = make_inputs("lstm", 2, 30, 5, dtype=torch.float32, with_s0=True, peepholes=False)
    S_all, _, residual = K._pararnn_fwd("lstm", U, A, None, s0, 50, 1e-6, chunk_len=7)
    assert_close_to_oracle(
        S_all, oracle("lstm", f64(U), f64(A), None, f64(s0)), **FWD_TOL[torch.float32], what="lstm S_all"
    )
    dS, ds_last = torch.randn_like(S_all), torch.randn_like(s0)
    dU, dA, dP, ds0 = K._pararnn_bwd("lstm", U, A, None, s0, S_all, dS, ds_last, chunk_len=7)
    assert dP is None
    gU, gA, _, gs0 = oracle_grads("lstm", U, A, None, s0, dS, ds_last)
    assert_close_to_oracle(dU, gU, **BWD_TOL[torch.float32], what="dU")
    assert_close_to_oracle(
        dA, gA, atol=BWD_TOL[torch.float32]["atol"] * 60**0.5, rtol=BWD_TOL[torch.float32]["rtol"], what="dA"
    )
    assert_close_to_oracle(ds0, gs0, **BWD_TOL[torch.float32], what="ds0")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_public_launchers_default_chunking(cell):
    """pararnn_fwd / pararnn_bwd with the launcher's own chunk choice (the contract's signature)."""
    U, A, P, s0 = make_inputs(cell, 2, 33, 6, dtype=torch.float32, with_s0=True)
    S_all, iters, residual = K.pararnn_fwd(cell, U, A, P, s0, 8, 1e-6)
    assert_close_to_oracle(
        S_all, oracle(cell, f64(U), f64(A), f64(P), f64(s0)), **FWD_TOL[torch.float32], what=f"{cell} S_all"
    )
    assert residual.item() <= 1e-6
    dS, ds_last = torch.randn_like(S_all), torch.randn_like(s0)
    dU, dA, dP, ds0 = K.pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last)
    gU, gA, gP, gs0 = oracle_grads(cell, U, A, P, s0, dS, ds_last)
    assert_close_to_oracle(dU, gU, **BWD_TOL[torch.float32], what=f"{cell} dU")
    assert_close_to_oracle(
        dA, gA, atol=BWD_TOL[torch.float32]["atol"] * 66**0.5, rtol=BWD_TOL[torch.float32]["rtol"], what=f"{cell} dA"
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_opcheck_registered_ops_on_triton(cell):
    """The registered ops nlseq::pararnn / nlseq::pararnn_backward (python/nlseq/ops/pararnn.py)
    with backend="triton": schema, fake tensors, autograd registration against these launchers."""
    from nlseq.ops.pararnn import _pararnn_backward_op, _pararnn_op

    U, A, P, s0 = make_inputs(cell, 2, 9, 5, dtype=torch.float32, with_s0=True)
    args = (
        cell,
        U.requires_grad_(),
        A.requires_grad_(),
        None if P is None else P.requires_grad_(),
        s0,
        10,
        1e-5,
        "newton",
        "raise",
        "triton",
    )
    torch.library.opcheck(_pararnn_op, args)
    S_all, _, _ = K.pararnn_fwd(cell, U.detach(), A.detach(), P, s0, 10, 1e-5)
    dS, ds_last = torch.randn_like(S_all), torch.randn_like(s0)
    torch.library.opcheck(
        _pararnn_backward_op,
        (cell, U.detach(), A.detach(), None if P is None else P.detach(), s0, S_all, dS, ds_last, "triton"),
    )
