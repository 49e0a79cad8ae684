"""Sequence-parallel scan and ParaGRU on P gloo processes of this machine vs the single-process op.

    python benchmarks/distributed_bench.py                     # P=2, B=4, T=8192, N=256
    python benchmarks/distributed_bench.py --T 2048 --reps 1   # smaller

The work is in nlseq.bench.cases.distributed (the ``distributed`` bench family); this script
launches it and prints a markdown table (docs/distributed.md shows one).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from nlseq.bench.cases.distributed import run, table  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--P", type=int, default=2)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--N", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    print(table(run(a.P, a.B, a.T, a.N, a.reps), a.P, a.B, a.T, a.N))
