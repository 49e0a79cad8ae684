"""ParaRNN fused forward on a GPU: no host synchronisation during the Newton solve (triton and
cuda launchers; torch.cuda.set_sync_debug_mode("error") turns any sync torch makes into an error),
and the input projection's GEMM precision follows the user's settings only.
CPU counterpart (interpreter, host reads forbidden): tests/test_pararnn_host_sync.py.
"""

from __future__ import annotations

import pytest
import torch

from nlseq.reference import pararnn as R
from nlseq.registry import extension_has_cuda

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

DEV = torch.device("cuda")


def _problem(cell, B=4, T=2048, N=256):
    g = torch.Generator(device=DEV).manual_seed(0)
    U = torch.randn(B, T, 3, N, generator=g, device=DEV)
    A = torch.randn(3, N, generator=g, device=DEV) * 0.5
    P = torch.randn(2, N, generator=g, device=DEV) * 0.5 if cell == "lstm" else None
    return U, A, P


def _launchers():
    from nlseq.kernels import pararnn as tk

    out = [("triton", lambda c, U, A, P, k, tol: tk._pararnn_fwd(c, U, A, P, None, k, tol, chunk_len=64))]
    if extension_has_cuda():
        ops = torch.ops.nlseq_ext
        out.append(("cuda", lambda c, U, A, P, k, tol: ops.pararnn_cuda_fwd_chunked(c, U, A, P, None, k, tol, 64)))
    return out


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_newton_forward_does_not_sync(cell):
    U, A, P = _problem(cell)
    for name, fwd in _launchers():
        fwd(cell, U, A, P, 8, 1e-6)  # compile / warm up outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            S, iters, res = fwd(cell, U, A, P, 8, 1e-6)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        # one sync at the end, here: the report is the iterate's, and met tol or used the cap
        it, r = int(iters), float(res)
        assert 0 <= it <= 8, name
        assert r <= 1e-6 or it == 8, f"{name}: residual {r} after {it} iterations"
        S2, _, res2 = fwd(cell, U, A, P, it, 0.0)  # exactly `it` updates
        assert float(res2) == r and torch.equal(S, S2), name


def test_projection_fp32_is_not_tf32_unless_asked():
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(8, 256, 1024, generator=g, device=DEV)
    W = torch.randn(2, 512, 3, 512, generator=g, device=DEV) / 32
    b = torch.randn(3, 1024, generator=g, device=DEV)
    exact = R.input_projection(x.double(), W.double(), b.double())
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        err32 = (R.input_projection(x, W, b).double() - exact).abs().max().item()
        torch.backends.cuda.matmul.allow_tf32 = True
        err_tf32 = (R.input_projection(x, W, b).double() - exact).abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert err32 < 1e-4, f"fp32 projection error {err32:.2e}: a TF32 GEMM without allow_tf32?"
    assert err_tf32 >= err32  # TF32 (10-bit mantissa) when the user asked for it
