"""nlseq.distributed.pararnn_state and nlseq.distributed.newton_solve against the single-process
ops, on 2, 3 and 4 gloo ranks (the ranks are shared with test_scan_sp.py: see _sp_runs.py).

Every rank builds the full float64 problem from one seed, runs the single-process op (Newton,
same tol and max_iters) on all of it and compares its piece of the states, the NewtonInfo and
every gradient (≤ 1e-12 relative): ParaGRU and ParaLSTM cells with their heads-1 and heads-2 input
projections, with and without s0, uneven pieces, one step per rank and an empty piece; user cells
with diagonal and 2×2 block Jacobians, plain and damped Newton. Also: non-convergence raised
(and warned, and finished sequentially) on every rank alike, a NaN residual stopping at once, the
number of collectives per call (CommDebugMode), and bad input raising on every rank.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _sp_runs import part

TOL = 1e-12


def _rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    assert not torch.isnan(a).any(), "NaN in the sequence-parallel result"
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _lengths(kind: str, P: int) -> list[int]:
    return {
        "uneven": [2 + 3 * ((r * 2) % P) for r in range(P)],
        "one_step": [1] * P,
        "empty": [0 if r == P - 2 else 3 + r for r in range(P)],
    }[kind]


def _piece(lengths, rank):
    start = sum(lengths[:rank])
    return slice(start, start + lengths[rank])


def _all_reduce(t):
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t


# ---------------------------------------------------------------- built-in cells, "state" strategy
def _pararnn_case(rank, P, cell, heads, with_s0, kind, seed):
    import nlseq
    import nlseq.distributed as nd
    from nlseq.nn import ParaGRU, ParaLSTM
    from nlseq.reference.pararnn import input_projection

    torch.manual_seed(seed)
    lengths = _lengths(kind, P)
    B, n_in, N, T = 2, 4, 6, sum(lengths)
    mod = (ParaGRU if cell == "gru" else ParaLSTM)(n_in, N, heads=heads, dtype=torch.float64)
    with torch.no_grad():  # recurrent weights of order one, so that Newton needs a few iterations
        mod.weight_hh.normal_(0.0, 0.8)
        mod.bias.normal_(0.0, 0.5)
    x = torch.randn(B, T, n_in, dtype=torch.float64)
    S = 1 if cell == "gru" else 2
    s0 = torch.randn(B, S, N, dtype=torch.float64) if with_s0 else None
    Wg = torch.randn(B, T, S, N, dtype=torch.float64)
    peep = getattr(mod, "peephole", None)
    opts = dict(max_iters=25, tol=1e-11, return_info=True)

    def params():
        return [p.detach().clone().requires_grad_() for p in (mod.weight_ih, mod.bias, mod.weight_hh)] + (
            [peep.detach().clone().requires_grad_()] if peep is not None else []
        )

    # single process, on everything
    ref_p, xr = params(), x.clone().requires_grad_()
    s0r = None if s0 is None else s0.clone().requires_grad_()
    U = input_projection(xr, ref_p[0], ref_p[1])
    S_ref, info_ref = nlseq.pararnn(
        cell, U, ref_p[2], ref_p[3] if peep is not None else None, s0r, mode="newton", backend="reference", **opts
    )
    leaves = [xr] + ref_p + ([s0r] if with_s0 else [])
    grads_ref = torch.autograd.grad((S_ref * Wg).sum(), leaves)

    # sequence parallel
    sl = _piece(lengths, rank)
    mine, xm = params(), x[:, sl].clone().requires_grad_()
    s0m = None if s0 is None else s0.clone().requires_grad_()
    Um = input_projection(xm, mine[0], mine[1])
    S_m, info = nd.pararnn_state(cell, Um, mine[2], mine[3] if peep is not None else None, s0m, backend="cpp", **opts)
    (S_m * Wg[:, sl]).sum().backward()

    errs = {
        "S": _rel(S_m, S_ref[:, sl]),
        "dx": _rel(xm.grad, grads_ref[0][:, sl]),
        # the input projection is used on this rank's piece only: its gradients add up over ranks
        "dW_ih (summed)": _rel(_all_reduce(mine[0].grad), grads_ref[1]),
        "db (summed)": _rel(_all_reduce(mine[1].grad), grads_ref[2]),
        # A, P and s0 are replicated: every rank holds their full gradient
        "dA": _rel(mine[2].grad, grads_ref[3]),
    }
    if peep is not None:
        errs["dP"] = _rel(mine[3].grad, grads_ref[4])
    if with_s0:
        errs["ds0"] = _rel(s0m.grad, grads_ref[-1])
    iters = (int(info.iterations), int(info_ref.iterations))
    assert float(info.residual) <= 1e-11 and info.converged
    return errs, iters


# ---------------------------------------------------------------- user cells
def _diag_cell(h, x, w, u):
    return torch.tanh(w * h + u * x)


def _block_cell(h, x, W):  # h [B, T, N, 2]: each channel's 2-vector mixed by its own 2×2 matrix
    h = h.expand(x.shape) if h.dim() == 0 else h  # newton_solve probes the state shape with a scalar zero
    return torch.tanh(torch.einsum("nij,btnj->btni", W, h) + x)


def _solve_case(rank, P, jacobian, damping, with_h0, kind, seed):
    import nlseq
    import nlseq.distributed as nd

    g = torch.Generator().manual_seed(seed)
    lengths = [max(1, n) for n in _lengths(kind, P)]
    B, N, T = 2, 3, sum(lengths)
    if jacobian == "diag":
        step = _diag_cell
        x = torch.randn(B, T, N, generator=g, dtype=torch.float64)
        prm = [
            torch.rand(N, generator=g, dtype=torch.float64) * 1.6 - 0.8,
            torch.randn(N, generator=g, dtype=torch.float64),
        ]
        state = (N,)
        kw = {}
    else:
        step = _block_cell
        x = torch.randn(B, T, N, 2, generator=g, dtype=torch.float64)
        prm = [torch.randn(N, 2, 2, generator=g, dtype=torch.float64) * 0.6]
        state = (N, 2)
        kw = dict(block_size=2)
    h0 = torch.randn(B, *state, generator=g, dtype=torch.float64) if with_h0 else None
    Wg = torch.randn(B, T, *state, generator=g, dtype=torch.float64)
    opts = dict(jacobian=jacobian, damping=damping, max_iters=60, tol=1e-11, return_info=True, **kw)

    def leaves(xs):
        return (
            [xs.clone().requires_grad_()]
            + [p.clone().requires_grad_() for p in prm]
            + ([h0.clone().requires_grad_()] if with_h0 else [])
        )

    ref = leaves(x)
    y_ref, info_ref = nlseq.newton_solve(
        step, ref[0], ref[-1] if with_h0 else None, params=ref[1 : 1 + len(prm)], backend="reference", **opts
    )
    grads_ref = torch.autograd.grad((y_ref * Wg).sum(), ref)

    sl = _piece(lengths, rank)
    mine = leaves(x[:, sl])
    y, info = nd.newton_solve(
        step, mine[0], mine[-1] if with_h0 else None, params=mine[1 : 1 + len(prm)], backend="cpp", **opts
    )
    (y * Wg[:, sl]).sum().backward()
    errs = {"h": _rel(y, y_ref[:, sl]), "dx": _rel(mine[0].grad, grads_ref[0][:, sl])}
    for i in range(len(prm)):  # parameters: this rank's contribution; the sum is the full gradient
        errs[f"dparam{i} (summed)"] = _rel(_all_reduce(mine[1 + i].grad), grads_ref[1 + i])
    if with_h0:
        errs["dh0"] = _rel(mine[-1].grad, grads_ref[-1]) if rank == 0 else float(mine[-1].grad.abs().max())
    return errs, (info.iterations, info_ref.iterations), (info.residual, info_ref.residual)


# ---------------------------------------------------------------- non-convergence, counts, bad input
def _nonconvergence(rank, P):
    import nlseq
    import nlseq.distributed as nd

    torch.manual_seed(7)
    lengths = _lengths("uneven", P)
    T, N = sum(lengths), 5
    U = torch.randn(2, T, 3, N, dtype=torch.float64) * 2
    A = torch.randn(3, N, dtype=torch.float64) * 2
    sl = _piece(lengths, rank)
    out = {}
    try:
        nd.pararnn_state("gru", U[:, sl], A, max_iters=1, tol=1e-14)
        out["raise"] = None
    except RuntimeError as e:
        out["raise"] = str(e)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        S, info = nd.pararnn_state(
            "gru", U[:, sl], A, max_iters=1, tol=1e-14, on_nonconvergence="warn", return_info=True
        )
    out["warn"] = ([str(x.message) for x in w if issubclass(x.category, RuntimeWarning)], int(info.iterations))
    S, info = nd.pararnn_state(
        "gru", U[:, sl], A, max_iters=1, tol=1e-14, on_nonconvergence="sequential", return_info=True
    )
    exact = nlseq.pararnn("gru", U, A, mode="sequential", backend="reference")
    out["sequential"] = (_rel(S, exact[:, sl]), info.fallback)
    S, info = nd.pararnn_state("gru", U[:, sl], A, mode="sequential", return_info=True)
    out["mode=sequential"] = (_rel(S, exact[:, sl]), int(info.iterations))
    # a NaN on one rank: every rank stops at once (no iteration) and raises the same error
    Un = U[:, sl].clone()
    if rank == P - 1:
        Un[0, -1, 0, 0] = math.nan
    try:
        nd.pararnn_state("gru", Un, A, max_iters=5)
        out["nan"] = None
    except RuntimeError as e:
        out["nan"] = str(e)
    # user cells too
    x = torch.randn(2, T, N, dtype=torch.float64)
    w = torch.full((N,), 3.0, dtype=torch.float64)
    try:
        nd.newton_solve(_diag_cell, x[:, sl], params=(w, torch.ones(N, dtype=torch.float64)), max_iters=1, tol=1e-15)
        out["solve raise"] = None
    except RuntimeError as e:
        out["solve raise"] = str(e)
    return out


def _counts(rank, P):
    from torch.distributed.tensor.debug import CommDebugMode

    import nlseq.distributed as nd

    torch.manual_seed(3)
    U = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    A = (torch.randn(3, 4, dtype=torch.float64) * 0.5).requires_grad_()
    with CommDebugMode() as fwd:
        S, info = nd.pararnn_state("gru", U, A, return_info=True)
    with CommDebugMode() as bwd:
        S.sum().backward()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    prm = (torch.rand(4, dtype=torch.float64) - 0.5, torch.randn(4, dtype=torch.float64))
    with CommDebugMode() as sfwd:
        y, sinfo = nd.newton_solve(_diag_cell, x, params=prm, return_info=True)
    with CommDebugMode() as sbwd:
        y.sum().backward()
    names = lambda cm: {str(k): v for k, v in cm.get_comm_counts().items()}  # noqa: E731
    return ((int(info.iterations), names(fwd), names(bwd)), (int(sinfo.iterations), names(sfwd), names(sbwd)))


def _errors(rank, P):
    import nlseq.distributed as nd

    def attempt(fn, *a, **k):
        try:
            fn(*a, **k)
        except (TypeError, ValueError, RuntimeError) as e:
            return type(e).__name__, str(e)
        return None

    N = 4 if rank == 0 else 5
    out = {"N": attempt(nd.pararnn_state, "gru", torch.randn(1, 2, 3, N), torch.randn(3, N))}
    out["P"] = attempt(
        nd.pararnn_state, "lstm", torch.randn(1, 2, 3, 4), torch.randn(3, 4), torch.randn(2, 4) if rank else None
    )
    out["tol"] = attempt(nd.pararnn_state, "gru", torch.randn(1, 2, 3, 4), torch.randn(3, 4), tol=1e-5 * (1 + rank))
    x = torch.randn(1, 2, 3)
    out["dense"] = attempt(nd.newton_solve, _diag_cell, x, params=(torch.ones(3), torch.ones(3)), jacobian="dense")
    out["empty"] = attempt(
        nd.newton_solve, _diag_cell, x[:, :0] if rank == 1 else x, params=(torch.ones(3), torch.ones(3))
    )
    return out


def _low_precision(rank, P):
    """float32 I/O: the error against the float64 sequential oracle (on the same float32 inputs) of
    pararnn_state next to that of the single-process Newton op (both iterate in float32)."""
    import nlseq
    import nlseq.distributed as nd

    torch.manual_seed(11)
    lengths = _lengths("uneven", P)
    sl = _piece(lengths, rank)
    out = {}
    for cell in ("gru", "lstm"):
        N = 8
        U = torch.randn(2, sum(lengths), 3, N)
        A = torch.randn(3, N) * 0.6
        Pp = torch.randn(2, N) * 0.6 if cell == "lstm" else None
        exact = nlseq.pararnn(
            cell, U.double(), A.double(), None if Pp is None else Pp.double(), mode="sequential", backend="reference"
        )[:, sl]
        single = nlseq.pararnn(cell, U, A, Pp, mode="newton", backend="reference")[:, sl]
        mine = nd.pararnn_state(cell, U[:, sl], A, Pp, backend="cpp")
        assert mine.dtype == torch.float32
        out[cell] = (_rel(single.double(), exact), _rel(mine.double(), exact))
    return out


def _groups(rank, P):
    """A 1-D DeviceMesh as the group, and a subgroup of ranks 1..P-1 (group ranks differ from global
    ranks: the sequential pass broadcasts from the right process)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import nlseq
    import nlseq.distributed as nd

    mesh = init_device_mesh("cpu", (P,))
    sub = dist.new_group(ranks=list(range(1, P)))  # every rank takes part in creating it
    torch.manual_seed(5)
    out = {}
    lengths = _lengths("uneven", P)
    A, b = torch.rand(2, sum(lengths), 3, dtype=torch.float64), torch.randn(2, sum(lengths), 3, dtype=torch.float64)
    h_ref, _ = nlseq.linear_recurrence(A, b)
    sl = _piece(lengths, rank)
    out["mesh scan"] = _rel(nd.linear_recurrence(A[:, sl], b[:, sl], group=mesh)[0], h_ref[:, sl])
    if rank == 0:
        return out
    Q, q = P - 1, rank - 1
    lengths = _lengths("uneven", Q) if Q > 1 else [4]
    sl = _piece(lengths, q)
    U = torch.randn(2, sum(lengths), 3, 4, dtype=torch.float64)
    Aw = torch.randn(3, 4, dtype=torch.float64)
    S_ref = nlseq.pararnn("gru", U, Aw, mode="sequential", backend="reference")
    out["sub sequential"] = _rel(nd.pararnn_state("gru", U[:, sl], Aw, mode="sequential", group=sub), S_ref[:, sl])
    out["sub newton"] = _rel(nd.pararnn_state("gru", U[:, sl], Aw, max_iters=30, tol=1e-13, group=sub), S_ref[:, sl])
    return out


def run_rank(rank, P):
    """Every Newton case on this rank (run by _sp_runs, together with test_scan_sp's cases)."""
    cases = {}
    i = 0
    for cell in ("gru", "lstm"):
        for heads in (1, 2):
            for with_s0 in (False, True):
                kind = ("uneven", "one_step", "empty")[i % 3]
                cases[f"{cell}-heads={heads}-s0={with_s0}-{kind}"] = _pararnn_case(
                    rank, P, cell, heads, with_s0, kind, 100 + i
                )
                i += 1
    solves = {}
    for jac in ("diag", "block"):
        for damping in (1.0, 0.5):
            for with_h0 in (False, True):
                kind = ("uneven", "one_step")[i % 2]
                solves[f"{jac}-damping={damping}-h0={with_h0}-{kind}"] = _solve_case(
                    rank, P, jac, damping, with_h0, kind, 200 + i
                )
                i += 1
    return (
        cases,
        solves,
        _nonconvergence(rank, P),
        _counts(rank, P),
        _errors(rank, P),
        _low_precision(rank, P),
        _groups(rank, P),
    )


@pytest.mark.parametrize("P", [2, 3, 4])
def test_pararnn_state_matches_single_process(P):
    for rank, (cases, *_) in enumerate(part(P, "newton")):
        assert len(cases) == 8
        for key, (errs, (iters, iters_ref)) in cases.items():
            assert iters == iters_ref >= 1, f"P={P} rank {rank} {key}: {iters} Newton iterations, single {iters_ref}"
            for what, e in errs.items():
                assert e <= TOL, f"P={P} rank {rank} {key}: {what} relative error {e:.3e} > {TOL:g}"


@pytest.mark.parametrize("P", [2, 3, 4])
def test_newton_solve_matches_single_process(P):
    for rank, (_, solves, *_) in enumerate(part(P, "newton")):
        assert len(solves) == 8
        for key, (errs, (iters, iters_ref), (res, res_ref)) in solves.items():
            assert iters == iters_ref >= 1, f"P={P} rank {rank} {key}: {iters} iterations, single process {iters_ref}"
            assert res <= 1e-11 and res_ref <= 1e-11, (key, res, res_ref)
            for what, e in errs.items():
                assert e <= TOL, f"P={P} rank {rank} {key}: {what} relative error {e:.3e} > {TOL:g}"


@pytest.mark.parametrize("P", [2, 3, 4])
def test_nonconvergence_is_the_same_on_every_rank(P):
    outs = part(P, "newton")
    nc = [o[2] for o in outs]
    for k in ("raise", "nan", "solve raise"):
        msgs = [o[k] for o in nc]
        assert all(m is not None for m in msgs), (k, msgs)
        assert len(set(msgs)) == 1, (k, msgs)  # the same global residual and iteration count everywhere
        assert "same on every rank" in msgs[0], msgs[0]
        if k != "nan":
            assert "did not converge" in msgs[0], msgs[0]
    # a NaN residual stops at once with its own message (docs/numerics.md), on every rank alike
    assert "stopped at iteration 0" in nc[0]["nan"] and "is nan (not finite)" in nc[0]["nan"], nc[0]["nan"]
    assert "after 1 iteration" in nc[0]["raise"]
    for o in nc:
        warned, iters = o["warn"]
        assert len(warned) == 1 and "did not converge" in warned[0] and iters == 1
        err, fallback = o["sequential"]
        assert fallback and err <= TOL
        err, iters = o["mode=sequential"]
        assert err <= TOL and iters == 0


@pytest.mark.parametrize("P", [2, 3, 4])
def test_collectives_per_call(P):
    for o in part(P, "newton"):
        (k, fwd, bwd), (ks, sfwd, sbwd) = o[3]
        # forward: metadata + initial boundaries (2 all_gathers), per iteration a residual all_reduce and a
        # scan all_gather, and the all_reduce of the last convergence test
        assert k >= 2 and fwd == {"c10d._allgather_base_": 2 + k, "c10d.allreduce_": k + 1}, (k, fwd)
        assert bwd == {"c10d._allgather_base_": 1, "c10d.allreduce_": 1}, bwd  # adjoint scan; dA, dP sum
        assert ks >= 2 and sfwd == {"c10d._allgather_base_": 2 + ks, "c10d.allreduce_": ks + 1}, (ks, sfwd)
        assert sbwd == {"c10d._allgather_base_": 1}, sbwd


@pytest.mark.parametrize("P", [2, 3, 4])
def test_bad_input_raises_on_every_rank(P):
    for rank, o in enumerate(part(P, "newton")):
        err = o[4]
        assert "channel count N" in err["N"][1] and err["N"][1].startswith("nlseq.distributed.pararnn_state:"), err
        if rank == 0:
            assert "lstm cell needs the peepholes" in err["P"][1], err["P"]
        else:
            assert "rank(s) [0]" in err["P"][1] and "rejected" in err["P"][1], err["P"]
        assert "same tol" in err["tol"][1], err["tol"]
        assert "jacobian must be one of ('diag', 'block')" in err["dense"][1], err["dense"]
        if rank == 1:
            assert "at least one step" in err["empty"][1], err["empty"]
        else:
            assert "rank(s) [1]" in err["empty"][1], err["empty"]


@pytest.mark.parametrize("P", [2, 3, 4])
def test_float32_is_as_accurate_as_the_single_process_op(P):
    for rank, o in enumerate(part(P, "newton")):
        for cell, (e_single, e_mine) in o[5].items():
            assert e_mine <= max(4 * e_single, 1e-5), f"P={P} rank {rank} {cell}: {e_mine:.2e} vs {e_single:.2e}"


@pytest.mark.parametrize("P", [2, 3, 4])
def test_device_mesh_and_subgroups(P):
    for rank, o in enumerate(part(P, "newton")):
        errs = o[6]
        assert set(errs) == ({"mesh scan"} if rank == 0 else {"mesh scan", "sub sequential", "sub newton"})
        for what, e in errs.items():
            assert e <= TOL, f"P={P} rank {rank} {what}: {e:.3e}"
