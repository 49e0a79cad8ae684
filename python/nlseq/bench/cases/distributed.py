"""The ``distributed`` family: sequence-parallel scan and ParaGRU on P gloo processes of this machine.

It needs P processes, so it has no in-process ``Case``s (``cases`` returns none and the
``python -m nlseq.bench`` run skips it); run it with

    python benchmarks/distributed_bench.py [--P 2] [--B 4] [--T 8192] [--N 256] [--reps 3]

which calls :func:`run`: P spawned ranks (gloo, ``file://`` rendezvous, one thread each), every
rank builds the same float32 inputs from one seed and holds its contiguous piece of the sequence.
For the scan (``nlseq.distributed.linear_recurrence``) and the GRU (``nlseq.distributed.pararnn``,
strategies "all_to_all" and "state") it reports the time per call (forward, forward+backward;
median over ``reps`` after one warm-up, the slowest rank's time) and the bytes and collectives
each rank sent (``nlseq.distributed.CommCounter``), against the single-process op timed in the
same run on rank 0 while the other ranks wait (with 1 thread, and with P threads: the same cores
the P ranks use). Correctness is the tests' job (tests/distributed); here the distributed outputs
are only checked against the single-process ones to a float32 bound so a broken row cannot hide.
"""

from __future__ import annotations

import datetime
import os
import pickle
import statistics
import tempfile
import time

import torch

FAMILY = "distributed"


def cases(device: torch.device, quick: bool) -> list:
    """None in process: this family runs on P processes (see the module docstring)."""
    return []


def _timeit(fn, reps, dist):
    """Median wall time (ms) of ``fn()`` over ``reps`` calls after one warm-up; every rank starts
    together and the call's time is the slowest rank's."""
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        times.append(float(dt) * 1e3)
    return statistics.median(times)


def _inputs(B, T, N):
    g = torch.Generator().manual_seed(0)
    A_scan = torch.rand(B, T, N, generator=g) * 0.49 + 0.5
    b_scan = torch.randn(B, T, N, generator=g)
    U = torch.randn(B, T, 3, N, generator=g)
    A = torch.randn(3, N, generator=g) * (2.0 / (5 * N) ** 0.5)
    return A_scan, b_scan, U, A


def _rank(rank, P, init_file, out_dir, B, T, N, reps):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch.distributed as dist

    import nlseq
    from nlseq.distributed import CommCounter, linear_recurrence, pararnn, shard

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=P, timeout=datetime.timedelta(minutes=10)
    )
    rows = []
    try:
        A_scan, b_scan, U, A = _inputs(B, T, N)
        lo, hi = shard(U, 1)[1].pieces[0]

        def single(name, fwd, threads):
            """Rank 0 alone (the others wait at the barrier): forward and forward+backward."""
            ms = [float("nan"), float("nan")]
            if rank == 0:
                torch.set_num_threads(threads)
                for k, with_bwd in enumerate((False, True)):

                    def call(with_bwd=with_bwd):
                        out = fwd(with_bwd)
                        if with_bwd:
                            out.sum().backward()

                    call()
                    ts = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        call()
                        ts.append((time.perf_counter() - t0) * 1e3)
                    ms[k] = statistics.median(ts)
                torch.set_num_threads(1)
            dist.barrier()
            rows.append(
                {
                    "op": name[0],
                    "impl": f"{name[1]} ({threads} thread{'s' if threads > 1 else ''})",
                    "fwd_ms": ms[0],
                    "fwdbwd_ms": ms[1],
                    "bytes_fwd": 0,
                    "bytes_fwdbwd": 0,
                    "collectives": 0,
                }
            )

        def distributed(name, fwd, check):
            out = fwd(False)
            check(out)
            fwd_ms = _timeit(lambda: fwd(False), reps, dist)
            fb_ms = _timeit(lambda: fwd(True).sum().backward(), reps, dist)
            with CommCounter() as cf:
                fwd(False)
            with CommCounter() as cb:
                fwd(True).sum().backward()
            sent = torch.tensor([cf.bytes_sent, cb.bytes_sent], dtype=torch.float64)
            dist.all_reduce(sent, op=dist.ReduceOp.MAX)
            rows.append(
                {
                    "op": name[0],
                    "impl": name[1],
                    "fwd_ms": fwd_ms,
                    "fwdbwd_ms": fb_ms,
                    "bytes_fwd": int(sent[0]),
                    "bytes_fwdbwd": int(sent[1]),
                    "collectives": cb.total_calls,
                }
            )

        def leaf(t, g):
            return t.clone().requires_grad_(g)

        # -- scan
        ref_h = nlseq.linear_recurrence(A_scan, b_scan)[0][:, lo:hi]

        def scan_single(g):
            return nlseq.linear_recurrence(leaf(A_scan, g), leaf(b_scan, g))[0]

        def scan_dist(g):
            return linear_recurrence(leaf(A_scan[:, lo:hi], g), leaf(b_scan[:, lo:hi], g))[0]

        def close(want):
            def check(got):
                err = float((got.detach() - want).abs().max()) / max(float(want.abs().max()), 1e-30)
                if not err <= 1e-4:
                    raise AssertionError(f"distributed bench: output off by {err:.2e} relative")

            return check

        for threads in sorted({1, P}):
            single(("scan", "single process"), scan_single, threads)
        distributed(("scan", "sequence parallel"), scan_dist, close(ref_h))

        # -- ParaGRU from U (the fused op; the projection is outside)
        ref_S = nlseq.pararnn("gru", U, A)[:, lo:hi]

        def gru_single(mode):
            return lambda g: nlseq.pararnn("gru", leaf(U, g), leaf(A, g), mode=mode)

        def gru_dist(strategy):
            return lambda g: pararnn("gru", leaf(U[:, lo:hi], g), leaf(A, g), strategy=strategy)

        for threads in sorted({1, P}):
            single(("pararnn gru", "single process, sequential"), gru_single("sequential"), threads)
        single(("pararnn gru", "single process, newton"), gru_single("newton"), 1)
        distributed(("pararnn gru", "all_to_all"), gru_dist("all_to_all"), close(ref_S))
        distributed(("pararnn gru", "state"), gru_dist("state"), close(ref_S))
        result = {"ok": True, "rows": rows}
    except BaseException as e:  # reported by run()
        import traceback

        result = {"ok": False, "error": f"{e}\n{traceback.format_exc()}"}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run(P: int = 2, B: int = 4, T: int = 8192, N: int = 256, reps: int = 3) -> list[dict]:
    """Launch P gloo ranks on this machine and return the rows (see the module docstring)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="nlseq-bench-dist-") as tmp:
        ctx = mp.start_processes(
            _rank,
            args=(P, os.path.join(tmp, "rendezvous"), tmp, B, T, N, reps),
            nprocs=P,
            join=True,
            start_method="spawn",
        )
        del ctx
        results = []
        for r in range(P):
            with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    bad = [f"rank {r}: {res['error']}" for r, res in enumerate(results) if not res["ok"]]
    if bad:
        raise RuntimeError("distributed bench failed:\n" + "\n".join(bad))
    return results[0]["rows"]


def table(rows: list[dict], P: int, B: int, T: int, N: int) -> str:
    """The rows as a markdown table."""
    head = (
        f"B={B}, T={T}, N={N}, float32, P={P} gloo ranks (1 thread each)\n\n"
        "| op | impl | fwd ms | fwd+bwd ms | bytes sent/rank fwd | bytes sent/rank fwd+bwd | collectives fwd+bwd |\n"
        "|---|---|---:|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(
        f"| {r['op']} | {r['impl']} | {r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} | {r['bytes_fwd']:,} | "
        f"{r['bytes_fwdbwd']:,} | {r['collectives']} |"
        for r in rows
    )
