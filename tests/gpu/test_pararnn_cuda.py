"""Fused ParaRNN CUDA kernels (csrc/cuda/pararnn.cu) on a GPU, against a float64 sequential oracle.

Skipped without a GPU or without an nlseq._C built with CUDA. The chunk length is forced through
the CUDA-only test ops ``nlseq_ext::pararnn_cuda_{fwd,bwd}_chunked`` (chunk_len <= 0: the default
choice) so the multiple-shooting Newton path is exercised at every size; the registered
``pararnn_fwd`` / ``pararnn_bwd`` / ``pararnn_seq_fwd`` CUDA kernels are checked at the sizes of
docs/spec.md §1.4. The oracle (tests/_pararnn_oracle.py) runs in float64 on the GPU (a plain loop of
docs/spec.md §1.3); its gradients come from autograd. The CUDA build uses --use_fast_math (__expf): float32 tolerances
allow a few ulp per step on top of the contraction of the cell.
"""

from __future__ import annotations

import pytest
import torch

import _pararnn_oracle as _oracle
import nlseq
from _pararnn_oracle import S_OF, oracle, oracle_grads
from _pararnn_oracle import f64 as d64
from _utils import DTYPE_IDS, assert_close_to_oracle
from nlseq.registry import extension_has_cuda

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not extension_has_cuda():
    pytest.skip(str(nlseq.backends()["cuda"]), allow_module_level=True)

DEV = torch.device("cuda")
OPS = torch.ops.nlseq_ext

FWD_TOL = {
    torch.float32: dict(atol=5e-5, rtol=5e-5),
    torch.bfloat16: dict(atol=4e-3, rtol=2**-8),
    torch.float16: dict(atol=5e-4, rtol=2**-10),
}
BWD_TOL = {
    torch.float32: dict(atol=2e-4, rtol=2e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
}


def make_inputs(cell, B, T, N, *, dtype, with_s0=True, scale_a=1.0, seed=0):
    """The shared fused-kernel inputs (tests/_pararnn_oracle.py), on the GPU."""
    return _oracle.make_inputs(cell, B, T, N, dtype=dtype, with_s0=with_s0, device=DEV, scale_a=scale_a, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("with_s0", [False, True], ids=["zero_s0", "s0"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(
    "B,T,N,L",
    [
        pytest.param(2, 1, 5, 0, id="T1"),
        pytest.param(3, 63, 129, 0, id="T63-default"),
        pytest.param(3, 63, 129, 8, id="T63-L8"),
        pytest.param(2, 301, 257, 1, id="T301-L1"),
        pytest.param(2, 301, 257, 64, id="T301-L64"),
        pytest.param(4, 1000, 333, 0, id="T1000-default"),
    ],
)
def test_fwd_bwd_match_oracle(cell, with_s0, dtype, B, T, N, L):
    U, A, P, s0 = make_inputs(cell, B, T, N, dtype=dtype, with_s0=with_s0)
    S_all, iters, residual = OPS.pararnn_cuda_fwd_chunked(cell, U, A, P, s0, 100, 1e-6, L)
    assert S_all.dtype == dtype and iters.dtype == torch.int64 and residual.dtype == torch.float32
    assert residual.item() <= 1e-6
    ref = oracle(cell, d64(U), d64(A), d64(P), d64(s0))
    assert_close_to_oracle(S_all, ref, **FWD_TOL[dtype], what=f"{cell} S_all")
    g = torch.Generator(device=DEV).manual_seed(1)
    dS = torch.randn(S_all.shape, generator=g, device=DEV).to(dtype)
    ds_last = torch.randn(B, S_OF[cell], N, generator=g, device=DEV).to(dtype)
    dU, dA, dP, ds0 = OPS.pararnn_cuda_bwd_chunked(cell, U, A, P, s0, S_all, dS, ds_last, L)
    gU, gA, gP, gs0 = oracle_grads(cell, U, A, P, s0, dS, ds_last)
    tol = BWD_TOL[dtype]
    assert_close_to_oracle(dU, gU, **tol, what=f"{cell} dU")
    assert_close_to_oracle(ds0, gs0, **tol, what=f"{cell} ds0")
    sum_tol = dict(atol=tol["atol"] * B * T, rtol=tol["rtol"])  # dA, dP: sums of B·T terms
    assert_close_to_oracle(dA, gA, **sum_tol, what=f"{cell} dA")
    if cell == "lstm":
        assert_close_to_oracle(dP, gP, **sum_tol, what=f"{cell} dP")
    else:
        assert torch.equal(dP, torch.zeros_like(dP))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_iteration_semantics(cell):
    U, A, P, s0 = make_inputs(cell, 2, 200, 37, dtype=torch.float32, scale_a=6.0)
    # one chunk: the exact sequential recurrence, no update, residual exactly 0
    _, iters, residual = OPS.pararnn_cuda_fwd_chunked(cell, U, A, P, s0, 10, 1e-6, 200)
    assert iters.item() == 0 and residual.item() == 0.0
    # tol < 0: exactly min(max_iters, C − 1) updates; after C − 1 the boundaries are exact
    S_all, iters, residual = OPS.pararnn_cuda_fwd_chunked(cell, U, A, P, s0, 100, -1.0, 40)
    assert iters.item() == 4 and residual.item() == 0.0
    assert_close_to_oracle(
        S_all,
        oracle(cell, d64(U), d64(A), d64(P), d64(s0)),
        atol=1e-4,
        rtol=1e-4,
        what=f"{cell} S_all (non-contracting, exact after C - 1 updates)",
    )
    # short chunks, one update: stopped before convergence, and says so
    _, iters, residual = OPS.pararnn_cuda_fwd_chunked(cell, U, A, P, s0, 1, -1.0, 2)
    assert iters.item() == 1 and residual.item() > 0.0
    # NaN input: residual NaN, the solve stops at once
    U[1, 111, 0, 3] = float("nan")
    _, iters, residual = OPS.pararnn_cuda_fwd_chunked(cell, U, A, P, s0, 10, 1e-6, 40)
    assert torch.isnan(residual).item() and iters.item() == 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_newton_converges_quadratically(cell):
    """48 two-step chunks of a weakly contracting cell: <= 6 Newton updates to reach 1e-6 (the
    fixed-point iteration without the tangent correction needs 20+)."""
    U, A, P, s0 = make_inputs(cell, 2, 96, 6, dtype=torch.float32, scale_a=3.0)
    _, iters, residual = OPS.pararnn_cuda_fwd_chunked(cell, U, A, P, s0, 100, 1e-6, 2)
    assert iters.item() <= 6 and residual.item() <= 1e-6, (iters.item(), residual.item())


def test_seq_fwd_is_exact_sequential():
    U, A, P, s0 = make_inputs("lstm", 3, 500, 70, dtype=torch.float32)
    S_all = OPS.pararnn_seq_fwd("lstm", U, A, P, s0)
    assert_close_to_oracle(
        S_all, oracle("lstm", d64(U), d64(A), d64(P), d64(s0)), **FWD_TOL[torch.float32], what="lstm seq S_all"
    )


def test_bad_inputs_are_rejected():
    U, A, P, s0 = make_inputs("gru", 2, 5, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="float64 runs on the cpp and reference"):
        OPS.pararnn_fwd("gru", U.double(), A, None, None, 3, 1e-6)
    with pytest.raises(RuntimeError, match="needs the peepholes"):
        OPS.pararnn_fwd("lstm", U, A, None, None, 3, 1e-6)
    with pytest.raises(RuntimeError, match="cell must be"):
        OPS.pararnn_fwd("elman", U, A, None, None, 3, 1e-6)
    with pytest.raises(RuntimeError, match="A must have shape"):
        OPS.pararnn_fwd("gru", U, A[:, :2].contiguous(), None, None, 3, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize(
    "cell,B,T,N",
    [
        pytest.param("gru", 8, 2048, 1024, id="gru-8x2048x1024"),
        pytest.param("gru", 2, 8192, 256, id="gru-2x8192x256"),
        pytest.param("lstm", 8, 2048, 1024, id="lstm-8x2048x1024"),
    ],
)
def test_registered_ops_at_benchmark_sizes(cell, B, T, N, dtype):
    """pararnn_fwd / pararnn_bwd with the default chunking at docs/spec.md §1.4 sizes, against the
    float64 loop (and its autograd) on the GPU; Triton on the same inputs agrees too."""
    U, A, P, s0 = make_inputs(cell, B, T, N, dtype=dtype)
    S_all, iters, residual = OPS.pararnn_fwd(cell, U, A, P, s0, 10, 1e-6)
    assert residual.item() <= 1e-6 and iters.item() <= 4, (iters.item(), residual.item())
    ref = oracle(cell, d64(U), d64(A), d64(P), d64(s0))
    assert_close_to_oracle(S_all, ref, **FWD_TOL[dtype], what=f"{cell} S_all")
    dS = torch.randn_like(S_all) * 0.1
    ds_last = torch.zeros_like(s0)
    dU, dA, dP, ds0 = OPS.pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last)
    gU, gA, gP, gs0 = oracle_grads(cell, U, A, P, s0, dS, ds_last)
    tol = BWD_TOL[dtype]
    assert_close_to_oracle(dU, gU, **tol, what=f"{cell} dU")
    assert_close_to_oracle(ds0, gs0, **tol, what=f"{cell} ds0")
    # dA sums B·T terms of size ~|dS|: float32 summation error grows like √(B·T) ulp
    rel = 1e-4 if dtype == torch.float32 else 3e-2
    scale = gA.abs().max().item() + 1.0
    assert_close_to_oracle(dA, gA, atol=rel * scale, rtol=rel, what=f"{cell} dA")
    if cell == "lstm":
        assert_close_to_oracle(dP, gP, atol=rel * (gP.abs().max().item() + 1.0), rtol=rel, what=f"{cell} dP")
    pytest.importorskip("triton")
    from nlseq.kernels import pararnn as K

    S_tr, _, res_tr = K.pararnn_fwd(cell, U, A, P, s0, 10, 1e-6)
    assert res_tr.item() <= 1e-6
    assert_close_to_oracle(S_tr, ref, **FWD_TOL[dtype], what=f"triton {cell} S_all")
    dU_tr, dA_tr, _, _ = K.pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last)
    assert_close_to_oracle(dU_tr, gU, **tol, what=f"triton {cell} dU")
    assert_close_to_oracle(dA_tr, gA, atol=rel * scale, rtol=rel, what=f"triton {cell} dA")
