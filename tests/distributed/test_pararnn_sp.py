"""nlseq.distributed.pararnn and ParaGRU/ParaLSTM(sequence_parallel_group=...) against the single-process op.

Every rank builds the full float64 inputs from one seed, runs the single-process op, then its own
piece through the distributed one, and compares its piece of the outputs and every gradient. The
all_to_all strategy runs the same kernel on each channel as one process, so the comparisons are
exact (torch.equal) in sequential mode; in Newton mode each rank's channels stop iterating when
their own residual is below tol (one process stops when all of them are), so those cases run with
tol = 1e-13 and compare at 1e-12 relative. The parameter gradients are gathered, so every rank
must hold the full single-process gradient. One spawn per world size runs every case (spawning costs seconds).
"""

from __future__ import annotations

import pytest
import torch
from _harness import run_ranks

import nlseq
from nlseq.distributed import CommCounter, shard
from nlseq.distributed import pararnn as sp_pararnn

F64 = torch.float64


def _inputs(cell, B, T, N, with_s0, seed):
    g = torch.Generator().manual_seed(seed)
    S = 2 if cell == "lstm" else 1
    U = torch.randn(B, T, 3, N, generator=g, dtype=F64)
    A = 0.5 * torch.randn(3, N, generator=g, dtype=F64)
    P = 0.5 * torch.randn(2, N, generator=g, dtype=F64) if cell == "lstm" else None
    s0 = torch.randn(B, S, N, generator=g, dtype=F64) if with_s0 else None
    W = torch.randn(B, T, S, N, generator=g, dtype=F64)  # loss weights: sum(S * W)
    return U, A, P, s0, W


def _leaves(*ts):
    return [None if t is None else t.clone().requires_grad_(True) for t in ts]


def _compare(what, got, want, exact):
    if got is None:
        return [f"{what}: no gradient"]
    if got.shape != want.shape:
        return [f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"]
    if exact:
        got, want = got.detach(), want.detach()
        return [] if torch.equal(got, want) else [f"{what}: not equal, max err {float((got - want).abs().max()):.3e}"]
    got, want = got.detach(), want.detach()
    if want.numel() == 0:
        return []
    err = float((got - want).abs().max())
    scale = float(want.abs().max())
    return [] if err <= 1e-12 * max(scale, 1e-300) else [f"{what}: max err {err:.3e} > 1e-12 x {scale:.3e}"]


def _op_cases(rank, P):
    """(cell, T, N, s0?, mode) cases; T=P gives one step per rank, T not divisible by P uneven pieces,
    T = P − 1 an empty piece on rank 0."""
    out = []
    for cell in ("gru", "lstm"):
        for T, with_s0, mode in (
            (5 * P + 2, True, "sequential"),
            (P, False, "newton"),
            (3 * P + 1, False, "auto"),
            (4 * P, True, "newton"),
            (P - 1, True, "sequential"),
        ):  # last: rank 0 holds no step
            out.append((cell, T, 2 * P, with_s0, mode))
    return out


def _check_op(rank, P):
    failures = []
    counts = {}
    for k, (cell, T, N, with_s0, mode) in enumerate(_op_cases(rank, P)):
        U, A, Pp, s0, W = _inputs(cell, 2, T, N, with_s0, seed=100 + k)
        Uf, Af, Pf, s0f = _leaves(U, A, Pp, s0)
        tol = 1e-13 if mode == "newton" else None
        S_full = nlseq.pararnn(cell, Uf, Af, Pf, s0f, mode=mode, tol=tol, backend="cpp")
        (S_full * W).sum().backward()

        U_loc, sh = shard(U, dim=1)
        W_loc, _ = shard(W, dim=1)
        Ul, Al, Pl, s0l = _leaves(U_loc, A, Pp, s0)
        with CommCounter() as fwd:
            S_loc, info = sp_pararnn(cell, Ul, Al, Pl, s0l, mode=mode, tol=tol, backend="cpp", return_info=True)
        with CommCounter() as bwd:
            (S_loc * W_loc).sum().backward()
        counts[(cell, mode)] = (dict(fwd.calls), dict(bwd.calls))
        a, b = sh.pieces[0]
        # the "state" strategy (Newton across ranks, nlseq.distributed.newton) through the same entry point
        Us, As, Ps, s0s = _leaves(U_loc, A, Pp, s0)
        S_st = sp_pararnn(cell, Us, As, Ps, s0s, strategy="state", mode="newton", tol=1e-13, backend="cpp")
        (S_st * W_loc).sum().backward()
        st = {"S": (S_st, S_full[:, a:b]), "dU": (Us.grad, Uf.grad[:, a:b]), "dA": (As.grad, Af.grad)}
        if Pp is not None:
            st["dP"] = (Ps.grad, Pf.grad)
        if s0 is not None:
            st["ds0"] = (s0s.grad, s0f.grad)
        for name, (got, want) in st.items():
            failures += _compare(f"{cell} T={T} mode={mode} strategy=state {name}", got, want, exact=False)
        checks = {"S": (S_loc, S_full[:, a:b]), "dU": (Ul.grad, Uf.grad[:, a:b]), "dA": (Al.grad, Af.grad)}
        if Pp is not None:
            checks["dP"] = (Pl.grad, Pf.grad)
        if s0 is not None:
            checks["ds0"] = (s0l.grad, s0f.grad)
        for name, (got, want) in checks.items():
            failures += _compare(f"{cell} T={T} mode={mode} {name}", got, want, exact=mode != "newton")
        if info.mode == "newton" and not info.converged:
            failures.append(f"{cell} T={T}: info says not converged")
    return failures, counts


def _check_modules(rank, P):
    """ParaGRU / ParaLSTM with sequence_parallel_group against the same module in one process."""
    from nlseq.nn import ParaGRU, ParaLSTM

    failures, counts = [], {}
    B, I, N = 2, 4, 2 * P
    T = 3 * P + 1  # uneven pieces
    for cls in (ParaGRU, ParaLSTM):
        for heads, with_h0, batch_first, strategy in (
            (1, True, True, "all_to_all"),
            (2, False, True, "all_to_all"),
            (2, True, False, "all_to_all"),
            (2, True, True, "state"),
        ):
            torch.manual_seed(7)
            ref = cls(I, N, heads=heads, batch_first=batch_first, dtype=F64, backend="cpp")
            sp = cls(
                I,
                N,
                heads=heads,
                batch_first=batch_first,
                dtype=F64,
                backend="cpp",
                sp_strategy=strategy,
                sequence_parallel_group=torch.distributed.group.WORLD,
                tol=1e-13 if strategy == "state" else None,
            )
            sp.load_state_dict(ref.state_dict())
            g = torch.Generator().manual_seed(11)
            x = torch.randn(B, T, I, generator=g, dtype=F64)
            Wy = torch.randn(B, T, N, generator=g, dtype=F64)
            Wh = torch.randn(1, B, N, generator=g, dtype=F64)
            h0 = torch.randn(1, B, N, generator=g, dtype=F64) if with_h0 else None
            lstm = cls is ParaLSTM

            def run(m, xx, Wyy, own_final, h0=h0, Wh=Wh, lstm=lstm, batch_first=batch_first):
                xx = xx.clone().requires_grad_(True)
                hh = None if h0 is None else h0.clone().requires_grad_(True)
                xin = xx if batch_first else xx.transpose(0, 1)
                state = None if hh is None else ((hh, 0.5 * hh) if lstm else hh)  # LSTM: (h0, c0), as torch
                y, fin = m(xin, state)
                y = y if batch_first else y.transpose(0, 1)
                h_n = fin[0] if lstm else fin
                loss = (y * Wyy).sum()
                if own_final:  # the final state enters the loss once (on rank 0 in the group)
                    loss = loss + (h_n * Wh).sum() + ((fin[1] * Wh).sum() if lstm else 0)
                loss.backward()
                return y, h_n, xx, hh

            y_f, hn_f, x_f, h0_f = run(ref, x, Wy, True)
            x_l, sh = shard(x, dim=1)
            Wy_l, _ = shard(Wy, dim=1)
            a, b = sh.pieces[0]
            with CommCounter() as cc:
                y_l, hn_l, x_lg, h0_l = run(sp, x_l, Wy_l, rank == 0)
            if strategy == "all_to_all":
                counts[(cls.__name__, heads)] = dict(cc.calls)
            what = f"{cls.__name__} heads={heads} h0={with_h0} batch_first={batch_first} {strategy}"
            ex = strategy == "all_to_all"  # the state strategy is Newton to tol = 1e-13: compared at 1e-12
            failures += _compare(what + " y", y_l, y_f[:, a:b], exact=ex)
            failures += _compare(what + " h_n", hn_l, hn_f, exact=ex)
            failures += _compare(what + " dx", x_lg.grad, x_f.grad[:, a:b], exact=False)
            if with_h0:
                failures += _compare(what + " dh0", h0_l.grad, h0_f.grad, exact=ex)
            for (name, p_ref), p_sp in zip(ref.named_parameters(), sp.parameters()):
                exact = ex and name in ("weight_hh", "peephole")  # gathered channel slices; the projection's summed
                failures += _compare(f"{what} d{name}", p_sp.grad, p_ref.grad, exact=exact)
    return failures, counts


def _rank_main(rank, P):
    out = {"op": _check_op(rank, P), "modules": _check_modules(rank, P)}
    if P == 2:
        out["bad"] = _bad_inputs(rank, P)
    return out


_RESULTS: dict = {}


def _results(P):
    """One spawn of P ranks per world size runs every case (spawning costs seconds)."""
    if P not in _RESULTS:
        _RESULTS[P] = run_ranks(_rank_main, P)
    return _RESULTS[P]


@pytest.mark.parametrize("P", [2, 3, 4])
def test_all_to_all_matches_one_process(P):
    for rank, res in enumerate(_results(P)):
        failures, counts = res["op"]
        assert failures == [], f"rank {rank}: {failures}"
        for (cell, mode), (fwd, bwd) in counts.items():
            # forward: the metadata all_gather and two all-to-alls (+ one all_reduce of Newton's verdict);
            # backward: two all-to-alls and one all_gather of the parameter gradients
            want_fwd = {"_allgather_base_": 1, "alltoall_base_": 2}
            if mode == "newton":
                want_fwd["allreduce_"] = 1
            assert fwd == want_fwd, (cell, mode, fwd)
            assert bwd == {"alltoall_base_": 2, "_allgather_base_": 1}, (cell, mode, bwd)


@pytest.mark.parametrize("P", [2, 3, 4])
def test_modules_match_one_process(P):
    for rank, res in enumerate(_results(P)):
        failures, counts = res["modules"]
        assert failures == [], f"rank {rank}: {failures}"
        for key, calls in counts.items():
            # forward: metadata + final-state all_gathers, two all-to-alls; backward: two all-to-alls,
            # the gathered A/P gradients, the final state's and the projection's all_reduces
            assert calls == {"_allgather_base_": 3, "alltoall_base_": 4, "allreduce_": 2}, (key, calls)


def _bad_inputs(rank, P):
    out = {}
    U = torch.randn(2, 3, 3, 5, dtype=F64)  # N = 5 is not divisible by P = 2
    A = torch.randn(3, 5, dtype=F64)
    try:
        sp_pararnn("gru", U, A)
    except ValueError as e:
        out["indivisible"] = str(e)
    B = 2 if rank == 0 else 3  # the ranks disagree on the batch
    try:
        sp_pararnn("gru", torch.randn(B, 3, 3, 4, dtype=F64), torch.randn(3, 4, dtype=F64))
    except ValueError as e:
        out["mismatch"] = str(e)
    cell = "lstm" if rank == 1 else "gru"  # only rank 1 passes a bad argument (lstm without peepholes)
    try:
        sp_pararnn(cell, torch.randn(2, 3, 3, 4, dtype=F64), torch.randn(3, 4, dtype=F64))
    except ValueError as e:
        out["one_rank_bad"] = str(e)
    U_bad = [1.0] if rank == 0 else torch.randn(2, 3, 3, 4, dtype=F64)  # not a tensor on rank 0 only
    try:
        sp_pararnn("gru", U_bad, torch.randn(3, 4, dtype=F64))
    except (TypeError, ValueError) as e:
        out["not_a_tensor"] = str(e)
    try:
        sp_pararnn("gru", torch.randn(2, 3, 3, 4, dtype=F64), torch.randn(3, 4, dtype=F64), strategy="ring")
    except ValueError as e:
        out["strategy"] = str(e)
    # Newton that cannot converge in 1 iteration: raised on every rank alike
    g = torch.Generator().manual_seed(1)
    U = 3 * torch.randn(2, 16, 3, 4, generator=g, dtype=F64)
    A = 3 * torch.randn(3, 4, generator=g, dtype=F64)
    try:
        sp_pararnn("gru", shard(U, 1)[0], A, mode="newton", max_iters=1)
    except RuntimeError as e:
        out["nonconvergence"] = str(e)
    return out


def test_bad_input_is_the_same_clear_error_on_every_rank():
    res = [r["bad"] for r in _results(2)]
    for out in res:
        assert "N = 5 channels over the 2 ranks" in out["indivisible"]
        assert "must be divisible by 2" in out["indivisible"]
        assert "ranks disagree on B (by rank: [2, 3])" in out["mismatch"]
        assert "strategy must be one of" in out["strategy"]
        assert "Newton did not converge" in out["nonconvergence"]
    assert "lstm cell needs the peepholes" in res[1]["one_rank_bad"]
    assert "U must be a torch.Tensor" in res[0]["not_a_tensor"]
    assert "rank(s) [0] of the group rejected their arguments" in res[1]["not_a_tensor"]
    assert "rank(s) [1] of the group rejected their arguments" in res[0]["one_rank_bad"]


def test_module_rejects_an_unknown_strategy():
    from nlseq.nn import ParaGRU, ParaLSTM

    for cls in (ParaGRU, ParaLSTM):
        with pytest.raises(ValueError, match=f"{cls.__name__}: sp_strategy must be one of"):
            cls(4, 4, sp_strategy="ring")
