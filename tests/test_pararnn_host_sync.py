"""The Triton ParaRNN forward never reads a device value back on the host during the solve.

Convergence is decided on the device (kernels/pararnn.py: every launch reads the previous
iteration's residual and does nothing once it met tol), so the launch sequence is fixed and the
launcher needs no host synchronisation per Newton iteration. Here every way a tensor value
reaches Python (item, float, int, bool, tolist, numpy) raises while the launcher runs, on a
problem that needs several Newton updates and on one that converges early; the NewtonInfo values
it returns (iterations, residual) are then compared with a step-by-step recount. The same check
on a GPU, with torch.cuda.set_sync_debug_mode("error"), is tests/gpu/test_pararnn_host_sync.py.
"""
from __future__ import annotations

import pytest
import torch
from _utils import backend_params

pytestmark = backend_params("triton")[0].marks


def _problem(cell, B=2, T=40, N=5, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(B, T, 3, N, generator=g) * scale
    A = torch.randn(3, N, generator=g) * 0.5
    P = torch.randn(2, N, generator=g) * 0.5 if cell == "lstm" else None
    return U, A, P


def _forbid_readback(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("host read of a device value inside the Newton launcher")

    for name in ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("max_iters,tol", [(3, 0.0), (20, 1e-4)], ids=["capped", "converges"])
def test_fused_forward_has_no_host_readback(cell, max_iters, tol, monkeypatch):
    from nlseq.kernels import pararnn as tk

    U, A, P = _problem(cell)
    with monkeypatch.context() as m:
        _forbid_readback(m)
        S, iters, res = tk._pararnn_fwd(cell, U, A, P, None, max_iters, tol, chunk_len=5)
    # recount on the host: the first k whose residual met tol (or the cap), and that residual
    it, r = int(iters), float(res)
    ref = [tk._pararnn_fwd(cell, U, A, P, None, k, 0.0, chunk_len=5) for k in range(max_iters + 1)]
    assert 0 <= it <= min(max_iters, 7)
    if tol == 0.0:
        assert it == min(max_iters, 7)
    else:
        assert r <= tol and (it == 0 or float(ref[it - 1][2]) > tol)
    # the reported residual is the one of the iterate returned, and S_all is that iterate
    assert r == float(ref[it][2])
    torch.testing.assert_close(S, ref[it][0], rtol=0, atol=0)
