"""nlseq.distributed.linear_recurrence against the single-process op, on 2, 3 and 4 gloo ranks.

Every rank builds the full float64 problem from one seed, runs ``nlseq.linear_recurrence`` on
all of it, and compares its piece of h, the global h_last and every gradient with the
sequence-parallel op on its shard (≤ 1e-12 relative). One spawn per world size runs every case
(spawning costs seconds): layouts diagonal and K = 1..4, with and without h0, both directions,
losses on h and h_last, on h_last only and on h only, uneven pieces, one step per rank and an
empty piece; the number of collectives per call (CommDebugMode); bad input raising on every rank.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _sp_runs import part

TOL = 1e-12
LAYOUTS = ("diag", 1, 2, 3, 4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    assert not torch.isnan(a).any(), "NaN in the sequence-parallel result"
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _lengths(kind: str, P: int) -> list[int]:
    return {
        "uneven": [3 + 2 * r for r in range(P)][::-1] if P % 2 else [1 + 3 * r for r in range(P)],
        "one_step": [1] * P,
        "empty": [0 if r == P // 2 else 2 + r for r in range(P)],
    }[kind]


def _problem(layout, T, B=2, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 1 if layout == "diag" else layout
    shape = (B, T, N) if layout == "diag" else (B, T, N, K)
    if layout == "diag":
        A = torch.rand(B, T, N, generator=g, dtype=torch.float64) * 1.6 - 0.8
    else:  # blocks with norm below ~1, so that products over T stay of order one
        A = torch.randn(B, T, N, K, K, generator=g, dtype=torch.float64) * (0.7 / K**0.5)
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    h0 = torch.randn(shape[:1] + shape[2:], generator=g, dtype=torch.float64)
    return A, b, h0, g


def _case(rank, P, layout, lengths, with_h0, reverse, loss, backend, seed):
    import nlseq
    import nlseq.distributed as nd

    T = sum(lengths)
    A, b, h0, g = _problem(layout, T, seed=seed)
    Wh = torch.randn(b.shape, generator=g, dtype=torch.float64)
    Wl = torch.randn((P,) + h0.shape, generator=g, dtype=torch.float64)  # each rank's weight on h_last
    h0 = h0 if with_h0 else None

    def objective(h, h_last, r):  # rank r's loss; the single-process one is the sum over r
        out = 0.0
        if loss in ("both", "h"):
            out = out + (h * Wh_of(r)).sum()
        if loss in ("both", "last"):
            out = out + (h_last * Wl[r]).sum()
        return out

    start = sum(lengths[:rank])
    sl = slice(start, start + lengths[rank])

    # single process, on everything
    leaves = [t.clone().requires_grad_() for t in (A, b)] + ([h0.clone().requires_grad_()] if with_h0 else [])
    h_ref, last_ref = nlseq.linear_recurrence(
        leaves[0], leaves[1], leaves[2] if with_h0 else None, reverse=reverse, backend=backend
    )
    Wh_of = lambda r: Wh[:, sum(lengths[:r]) : sum(lengths[: r + 1])]  # noqa: E731
    full = sum(objective(h_ref[:, sum(lengths[:r]) : sum(lengths[: r + 1])], last_ref, r) for r in range(P))
    grads_ref = torch.autograd.grad(full, leaves)

    # sequence parallel, on this rank's piece
    mine = [A[:, sl].clone().requires_grad_(), b[:, sl].clone().requires_grad_()]
    mine += [h0.clone().requires_grad_()] if with_h0 else []
    h, h_last = nd.linear_recurrence(mine[0], mine[1], mine[2] if with_h0 else None, reverse=reverse, backend=backend)
    objective(h, h_last, rank).backward()

    errs = {
        "h": _rel(h.detach(), h_ref[:, sl].detach()),
        "h_last": _rel(h_last.detach(), last_ref.detach()),
        "dA": _rel(mine[0].grad, grads_ref[0][:, sl]),
        "db": _rel(mine[1].grad, grads_ref[1][:, sl]),
    }
    if with_h0:
        first = (P - 1) if reverse else 0
        if rank == first:
            errs["dh0"] = _rel(mine[2].grad, grads_ref[2])
        else:
            errs["dh0 (zero off the first rank)"] = float(mine[2].grad.abs().max())
    return errs


def _count(rank, P):
    """Collectives of one forward and one backward (CommDebugMode sees gloo's c10d ops)."""
    from torch.distributed.tensor.debug import CommDebugMode

    import nlseq.distributed as nd

    A = torch.rand(2, 3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    with CommDebugMode() as fwd:
        h, h_last = nd.linear_recurrence(A, b, backend="reference")
    with CommDebugMode() as bwd:
        (h.sum() + h_last.sum()).backward()
    name = lambda cm: {str(k): v for k, v in cm.get_comm_counts().items()}  # noqa: E731
    return fwd.get_total_counts(), name(fwd), bwd.get_total_counts(), name(bwd)


def _errors(rank, P):
    """Bad input on one or all ranks: every rank raises, none hangs (the harness times out hangs)."""
    import nlseq.distributed as nd

    def attempt(A, b, h0=None, reverse=False):
        try:
            nd.linear_recurrence(A, b, h0, reverse=reverse)
        except (TypeError, ValueError, RuntimeError) as e:
            return type(e).__name__, str(e)
        return None

    ok = lambda N=3, dtype=torch.float64: (torch.rand(2, 2, N, dtype=dtype), torch.rand(2, 2, N, dtype=dtype))  # noqa
    out = {}
    out["N"] = attempt(*ok(N=3 if rank else 4))
    out["dtype"] = attempt(*ok(dtype=torch.float32 if rank == P - 1 else torch.float64))
    A, b = ok()
    out["h0"] = attempt(A, b, torch.zeros(2, 3, dtype=torch.float64) if rank == 0 else None)
    out["reverse"] = attempt(A, b, reverse=rank == 1)
    out["shape"] = attempt(A[..., :2] if rank == 1 else A, b)  # rank 1's A does not match its b
    out["device"] = attempt(*(t.to("meta") for t in ok())) if rank == 0 else attempt(*ok())
    out["K"] = attempt(torch.rand(2, 2, 3, 5, 5), torch.rand(2, 2, 3, 5))
    A, b = ok()
    out["grad"] = attempt(A.requires_grad_(rank == 0), b)  # only rank 0 would run the backward's collective
    # the group is still usable afterwards: every failed call made the same collectives on every rank
    h, _ = nd.linear_recurrence(*ok())
    out["after"] = h.shape
    return out


def _low_precision(rank, P):
    """float32 and bfloat16 I/O (summaries in float32): the error against the float64 oracle (on the
    rounded inputs) of the sequence-parallel op next to that of the single-process op."""
    import nlseq
    import nlseq.distributed as nd

    out = {}
    lengths = _lengths("uneven", P)
    sl = slice(sum(lengths[:rank]), sum(lengths[: rank + 1]))
    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("diag", 2):
            A, b, h0, g = _problem(layout, sum(lengths), seed=5)
            A, b, h0 = (t.to(dtype) for t in (A, b, h0))
            Wh = torch.randn(b.shape, generator=g, dtype=torch.float64)

            def run(fn, A, b, h0, W, last_weight=1.0):
                leaves = [t.clone().requires_grad_() for t in (A, b, h0)]
                h, last = fn(*leaves)
                ((h.double() * W).sum() + last_weight * last.double().sum()).backward()
                return [h.detach(), last.detach()] + [t.grad for t in leaves]

            exact = run(
                lambda A, b, h0: nlseq.linear_recurrence(A, b, h0, backend="reference"),
                A.double(),
                b.double(),
                h0.double(),
                Wh,
            )
            exact = [exact[0][:, sl], exact[1], exact[2][:, sl], exact[3][:, sl]]  # h, h_last, dA, db
            single = run(lambda A, b, h0: nlseq.linear_recurrence(A, b, h0, backend="cpp"), A, b, h0, Wh)
            single = [single[0][:, sl], single[1], single[2][:, sl], single[3][:, sl]]
            # every rank's loss has h_last / P: the gradients of the replicated h_last add up to the single one's
            mine = run(
                lambda A, b, h0: nd.linear_recurrence(A, b, h0, backend="cpp"),
                A[:, sl],
                b[:, sl],
                h0,
                Wh[:, sl],
                1.0 / P,
            )
            for i, what in enumerate(("h", "h_last", "dA", "db")):
                out[f"{dtype}-{layout}-{what}"] = (_rel(single[i].double(), exact[i]), _rel(mine[i].double(), exact[i]))
    return out


def run_rank(rank, P, seed=1234):
    """Every scan case on this rank (run by _sp_runs, together with test_newton_sp's cases)."""
    results = {}
    combos = itertools.product(LAYOUTS, (False, True), (False, True), ("both", "last", "h"))
    for i, (layout, with_h0, reverse, loss) in enumerate(combos):
        kind = ("uneven", "one_step", "empty")[i % 3]
        backend = ("cpp", "reference")[i % 2]
        key = f"{layout}-h0={with_h0}-rev={reverse}-loss={loss}-{kind}-{backend}"
        results[key] = _case(rank, P, layout, _lengths(kind, P), with_h0, reverse, loss, backend, seed + i)
    return results, _count(rank, P), _errors(rank, P), _low_precision(rank, P)


@pytest.mark.parametrize("P", [2, 3, 4])
def test_sequence_parallel_scan_matches_single_process(P):
    per_rank = part(P, "scan")
    for rank, (results, counts, errors, _) in enumerate(per_rank):
        assert len(results) == len(LAYOUTS) * 12
        for key, errs in results.items():
            for what, e in errs.items():
                assert e <= TOL, f"P={P} rank {rank} {key}: {what} relative error {e:.3e} > {TOL:g}"

        fwd_total, fwd, bwd_total, bwd = counts
        # forward: the metadata all_gather and the summary all_gather; backward: the adjoint summaries
        assert (fwd_total, bwd_total) == (2, 1), (fwd, bwd)
        assert set(fwd) == {"c10d._allgather_base_"} and set(bwd) == {"c10d._allgather_base_"}, (fwd, bwd)

        n_err = errors
        assert "channel count N" in n_err["N"][1] and "[4, 3" in n_err["N"][1], n_err["N"]
        assert "same dtype" in n_err["dtype"][1] and "float32" in n_err["dtype"][1], n_err["dtype"]
        assert "h0" in n_err["h0"][1], n_err["h0"]
        assert "reverse flag" in n_err["reverse"][1], n_err["reverse"]
        if rank == 1:
            assert n_err["shape"][0] == "ValueError" and "A must have shape" in n_err["shape"][1], n_err["shape"]
        else:
            assert "rank(s) [1]" in n_err["shape"][1] and "rejected" in n_err["shape"][1], n_err["shape"]
        if rank == 0:
            assert "gloo group cannot move" in n_err["device"][1], n_err["device"]
        else:
            assert "rank(s) [0]" in n_err["device"][1], n_err["device"]
        assert "block size K" in n_err["K"][1], n_err["K"]
        assert "autograd state" in n_err["grad"][1] and "[1, 0" in n_err["grad"][1], n_err["grad"]
        for k in ("N", "dtype", "h0", "reverse", "shape", "device", "K", "grad"):
            assert n_err[k][1].startswith("nlseq.distributed.linear_recurrence:"), (k, n_err[k])
        assert n_err["after"] == (2, 2, 3)


def test_needs_an_initialised_group():
    import nlseq.distributed as nd

    with pytest.raises(RuntimeError, match="not initialised"):
        nd.linear_recurrence(torch.rand(1, 2, 3), torch.rand(1, 2, 3))


@pytest.mark.parametrize("P", [2, 3, 4])
def test_low_precision_io_is_as_accurate_as_the_single_process_op(P):
    for rank, (_, _, _, low) in enumerate(part(P, "scan")):
        assert len(low) == 16
        for key, (e_single, e_mine) in low.items():
            floor = 1e-6 if "float32" in key else 1e-2  # one rounding of the output (and of the incoming state)
            assert e_mine <= max(4 * e_single, floor), f"P={P} rank {rank} {key}: {e_mine:.2e} vs single {e_single:.2e}"
