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
    # recount on the host: exactly `it` updates (tol 0) give the same iterate and residual, and one
    # update fewer had not met tol (else the solve would have stopped there)
    it, r = int(iters), float(res)
    assert 0 <= it <= min(max_iters, 7)  # T = 40 in chunks of 5: at most C − 1 = 7 updates
    S_it, it_it, r_it = tk._pararnn_fwd(cell, U, A, P, None, it, 0.0, chunk_len=5)
    assert int(it_it) == it and float(r_it) == r
    torch.testing.assert_close(S, S_it, rtol=0, atol=0)
    if tol == 0.0:
        assert it == min(max_iters, 7)
    else:
        assert r <= tol
        if it > 0:
            assert float(tk._pararnn_fwd(cell, U, A, P, None, it - 1, 0.0, chunk_len=5)[2]) > tol
