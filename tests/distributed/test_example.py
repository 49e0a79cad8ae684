"""examples/pararnn_lm_sp.py under torchrun: 2 processes, sequence parallel 2, two steps on this CPU.

The rendezvous is on 127.0.0.1 with port 0 (the OS picks a free port); no fixed ports."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _model_bytes(B=2, T=64, N=16, P=2, layers=2, heads=2, f=4):
    """The communication model of docs/distributed.md for this run (float32, every rank sends the same)."""
    Tr, n = T // P, N // P
    per_layer = (
        16 * 8 * (P - 1)  # metadata all_gather (16 int64)
        + 2 * B * Tr * 3 * n * (P - 1) * f  # U and dU all-to-alls: the pieces for the other ranks
        + 2 * B * Tr * 1 * n * (P - 1) * f  # S and dS all-to-alls (GRU: S = 1)
        + (1 + B * N) * (P - 1) * f  # final state all_gather (flag + state)
        + 3 * n * (P - 1) * f  # dA all_gather
        + 2 * (P - 1) * B * N * f // P  # final state gradient all_reduce
        + 2 * (P - 1) * (N * 3 * N // heads + 3 * N) * f // P  # projection gradient all_reduce
    )
    local = 256 * N + layers * N + N + N * 256 + 256  # embedding, norms, head
    return layers * per_layer + 2 * (P - 1) * local * f // P


def test_lm_example_trains_two_steps_with_sequence_parallel_two():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "python"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "127.0.0.1:0",
        str(ROOT / "examples" / "pararnn_lm_sp.py"),
        "--steps",
        "2",
        "--seq-len",
        "64",
        "--width",
        "16",
        "--batch",
        "2",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(
        r"step +(\d+) +loss ([0-9.naif]+) +tokens/s +([0-9.]+) +bytes sent per rank \[(\d+), (\d+)\]"
        r" +collectives/rank (\d+) +\(dp 1 x sp 2",
        out.stdout,
    )
    assert [int(r[0]) for r in rows] == [0, 1], out.stdout
    for _, loss, tps, b0, b1, calls in rows:
        assert math.isfinite(float(loss)) and 0 < float(loss) < 10  # cross entropy over 256 bytes starts near ln 256
        assert float(tps) > 0
        # per layer: 3 all_gathers (metadata, final state, A grads), 4 all-to-alls, 2 all_reduces, and one
        # all_reduce for the embedding / norm / head gradients
        assert int(calls) == 2 * 9 + 1
        assert int(b0) == int(b1) == _model_bytes()
