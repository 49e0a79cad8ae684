"""Context-parallel softplus attention on P gloo processes against the single-process op (CPU).

    PYTHONPATH=python python benchmarks/cp_attention_bench.py --n 8192 [--p 2] [--reweight 15] [--backend cpp]

For every strategy (all_gather, all_to_all, ring) and for the single-process op (run on rank 0
while the other ranks wait), one forward and one forward+backward in float32, B=1, H=8 (Hkv=8),
D=64, causal, contiguous and zigzag layouts: wall time, peak resident memory above the level
before the call (a sampling thread reads /proc/self/statm every 2 ms; MALLOC_MMAP_THRESHOLD_=64 KiB
so freed tensors leave the resident set: an approximation), and bytes sent per rank (the algorithmic
volume of each collective: all_gather x·(P−1), reduce-scatter/all_to_all in·(P−1)/P, isend x).
Each rank runs one thread (OMP_NUM_THREADS=1), so P ranks use P cores. One measurement per cell:
on a shared machine the times are noisy. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Peak:
    """Peak RSS above the starting level while the block runs (sampled)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, _rss())
        self.bytes = self.peak - self.base


class _Bytes:
    """Bytes this rank sends, by wrapping the collectives the op uses."""

    def __init__(self, P):
        self.P, self.n = P, 0
        self.orig = {}
        for name in (
            "all_gather",
            "all_to_all_single",
            "reduce_scatter_single",
            "reduce_scatter_tensor",
            "batch_isend_irecv",
        ):
            if hasattr(dist, name):
                self.orig[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(name))

    def _wrap(self, name):
        f, P = self.orig[name], self.P

        def g(*a, **kw):
            if name == "all_gather":
                self.n += a[1].numel() * a[1].element_size() * (P - 1)
            elif name in ("all_to_all_single", "reduce_scatter_single", "reduce_scatter_tensor"):
                self.n += a[1].numel() * a[1].element_size() * (P - 1) // P
            else:
                self.n += sum(op.tensor.numel() * op.tensor.element_size() for op in a[0] if op.op is dist.isend)
            return f(*a, **kw)

        return g


def _rank(rank, P, init, args, out):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init}", rank=rank, world_size=P, timeout=datetime.timedelta(seconds=3600)
    )
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
    import nlseq
    from nlseq.distributed import shard
    from nlseq.distributed import softplus_attention as cp

    N, H, D = args.n, 8, 64
    p = args.reweight if args.reweight > 0 else None
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(1, H, N, D, generator=g) for _ in range(3)]
    rows = []
    counter = _Bytes(P)

    def measure(fn, inputs):
        res = {}
        for mode in ("fwd", "fwd+bwd"):
            leaves = [t.clone().requires_grad_(mode != "fwd") for t in inputs]
            dist.barrier()
            counter.n = 0
            with _Peak() as pk:
                t0 = time.perf_counter()
                if mode == "fwd":
                    with torch.no_grad():
                        fn(*leaves)
                else:
                    fn(*leaves).sum().backward()
                dt = time.perf_counter() - t0
            res[mode] = (dt, pk.bytes, counter.n)
        return res

    if rank == 0:
        single = measure(lambda q, k, v: nlseq.softplus_attention(q, k, v, reweight_p=p, backend=args.backend), full)
        rows.append(("single process", single))
    else:
        for _ in range(2):
            dist.barrier()  # the barrier of each of rank 0's two measurements
    for strategy, layout in (
        ("all_gather", "contiguous"),
        ("all_gather", "zigzag"),
        ("all_to_all", "contiguous"),
        ("ring", "contiguous"),
        ("ring", "zigzag"),
    ):
        loc = [shard(t, dim=2, layout=layout)[0].contiguous() for t in full]
        res = measure(
            lambda q, k, v, strategy=strategy, layout=layout: cp(
                q, k, v, strategy=strategy, layout=layout, reweight_p=p, backend=args.backend
            ),
            loc,
        )
        rows.append((f"{strategy} ({layout})", res))
    dist.barrier()
    torch.save(rows, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8192, help="global sequence length N")
    ap.add_argument("--p", type=int, default=2, help="number of gloo processes P")
    ap.add_argument("--reweight", type=float, default=0.0, help="LSSAR exponent p (0: LSSA)")
    ap.add_argument("--backend", default="cpp")
    args = ap.parse_args()
    # Blocks over 64 KiB come from mmap and go back to the system when freed, so the resident set
    # follows live tensors (glibc would otherwise keep freed memory and hide later peaks).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank, args=(args.p, os.path.join(tmp, "init"), args, tmp), nprocs=args.p, start_method="spawn"
        )
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(args.p)]
    kind = f"LSSAR p={args.reweight:g}" if args.reweight > 0 else "LSSA"
    print(
        f"\nB=1, H=8, D=64, N={args.n}, P={args.p}, float32, causal, {kind}, backend={args.backend}, "
        f"1 thread per rank; one measurement per cell (shared machine: noisy)\n"
    )
    print(
        "| strategy | fwd s (slowest rank) | fwd+bwd s (slowest rank) | peak MiB fwd+bwd (rank 0 / 1 / ..) "
        "| MiB sent fwd+bwd (rank 0 / 1 / ..) |"
    )
    print("|---|---|---|---|---|")
    for name, _ in per_rank[0]:
        cells = [dict(rows)[name] for rows in per_rank if name in dict(rows)]  # single process: rank 0 only
        fwd = max(c["fwd"][0] for c in cells)
        fb = max(c["fwd+bwd"][0] for c in cells)
        mem = " / ".join(f"{c['fwd+bwd'][1] / 2**20:.0f}" for c in cells)
        sent = " / ".join(f"{c['fwd+bwd'][2] / 2**20:.1f}" for c in cells)
        print(f"| {name} | {fwd:.2f} | {fb:.2f} | {mem} | {sent} |")


if __name__ == "__main__":
    main()
