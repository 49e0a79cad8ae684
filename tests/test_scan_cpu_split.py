"""cpp scan (csrc/cpu/scan.cpp): few channels and long T, where the kernel picks its work split
(one thread, channel blocks, or time chunks) from the thread count, T and the row width.

Each split is checked against the float64 oracle, and the splits that run every channel
sequentially (one thread, or channel blocks) are checked bit for bit against a float32 loop
computing b + A·h term by term: the register-resident loop for blocks of 16/32/64 channels and
the generic loop must round exactly as that loop does.
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from _utils import assert_close_to_oracle, backend_params
from test_scan import TOL, _id, check_float32_against_oracle, make_inputs, oracle

CPP = backend_params("cpp")


def _float32_loop(A, b, reverse):
    """h_t = b_t + A_t h_{t-1} in float32, one rounding per multiply and per add (diagonal layout)."""
    h = torch.zeros_like(b[:, 0])
    out = torch.empty_like(b)
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    for t in steps:
        h = b[:, t] + A[:, t] * h
        out[:, t] = h
    return out, h


# (threads, (B, T, N, K)); K = 0 is the diagonal layout. With B*T*N*K*K >= 2^15 the kernel runs
# in parallel; rows narrower than 1 KiB of A are not split across threads when T allows time
# chunks (>= 256 steps each: T >= 854 for 2 threads, 2048 for 3), so:
CASES = [
    (1, (1, 4099, 64, 0)),  # one thread: sequential, register-resident 64 channels
    (2, (1, 4099, 64, 0)),  # whole rows, time chunks (3 phases, 2 re-run chunks)
    (3, (1, 4099, 64, 0)),  # whole rows, 3 threads per item: 6 chunks
    (2, (1, 2053, 37, 0)),  # whole rows of 37 channels (not a vector multiple), time chunks
    (2, (1, 1031, 16, 2)),  # K = 2, whole rows, time chunks
    (3, (1, 1031, 64, 2)),  # K = 2, 3 threads but too short for 3-way chunks: blocks of 32 channels
    (2, (1, 523, 64, 0)),  # too short for chunks: two blocks of 32 channels
    (2, (1, 701, 48, 0)),  # too short for chunks: blocks of 32 + 16 channels
    (2, (3, 1031, 16, 0)),  # B > threads: whole rows per batch, no chunks
    (2, (1, 1, 64, 0)),  # T = 1
]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "cpu_threads,shape", CASES, ids=[f"threads{n}-{_id(*s)}" for n, s in CASES], indirect=["cpu_threads"]
)
@pytest.mark.parametrize("backend", CPP)
def test_splits_against_oracle(backend, cpu_threads, shape, reverse):
    check_float32_against_oracle(backend, shape, reverse=reverse, with_h0=True, seed=11, grad_seed=12)


# Sequential splits: one thread, or channel blocks (T too short for chunks). Widths 16/32/64 take
# the register-resident loop, 37 and 65 the generic one; both must give the loop's bits.
SEQUENTIAL = [(1, (2, 300, n, 0)) for n in (16, 32, 37, 64, 65)] + [(2, (1, 523, 64, 0)), (2, (1, 701, 48, 0))]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "cpu_threads,shape", SEQUENTIAL, ids=[f"threads{n}-{_id(*s)}" for n, s in SEQUENTIAL], indirect=["cpu_threads"]
)
@pytest.mark.parametrize("backend", CPP)
def test_sequential_splits_round_like_the_loop(backend, cpu_threads, shape, reverse):
    B, T, N, _ = shape
    A, b, _ = make_inputs(B, T, N, 0, with_h0=False, dtype=torch.float32, device="cpu", seed=13)
    h, h_last = nlseq.linear_recurrence(A, b, reverse=reverse, backend=backend)
    h_loop, last_loop = _float32_loop(A, b, reverse)
    assert torch.equal(h, h_loop), f"max |diff| {(h - h_loop).abs().max().item():.3e}"
    assert torch.equal(h_last, last_loop)


@pytest.mark.parametrize("cpu_threads", [2], indirect=True)
@pytest.mark.parametrize("backend", CPP)
def test_chunks_with_decaying_gates(backend, cpu_threads):
    # Gates in (0.5, 1): a chunk's composed A decays below the smallest normal float and is
    # flushed to 0 (unflushed it sticks at the smallest subnormal). With b = 0 over the second
    # half the states themselves decay towards 0 too: the result must still match the oracle.
    B, T, N = 1, 8209, 64
    g = torch.Generator().manual_seed(14)
    A = torch.rand(B, T, N, generator=g) * 0.5 + 0.5
    b = torch.randn(B, T, N, generator=g)
    b[:, T // 2 :] = 0
    h0 = torch.randn(B, N, generator=g)
    for reverse in (False, True):
        h, h_last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend=backend)
        h_ref, last_ref = oracle(A, b, h0, reverse)
        assert_close_to_oracle(h, h_ref, **TOL[torch.float32], what="h")
        assert_close_to_oracle(h_last, last_ref, **TOL[torch.float32], what="h_last")
