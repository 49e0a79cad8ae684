"""pytest-benchmark suite of the scan family on the CPU: cpp against the PyTorch reference peers.

    PYTHONPATH=python python -m pytest benchmarks/bench_scan.py --benchmark-only
    PYTHONPATH=python python -m pytest benchmarks/bench_scan.py --benchmark-only -k "fwd and T4096"
    ... --benchmark-save=scan --benchmark-compare    (pytest-benchmark's own history and comparison)

Not part of the test run (pyproject's testpaths is tests/, and this file's name is not test_*).
Peers: ``cpp`` (C++ kernel), ``reference`` (Hillis–Steele, backend="reference") and ``loop`` (the
sequential loop, nlseq.reference.scan.linear_recurrence_loop; forward only: its autograd is O(T²)).
Each benchmark first checks its result against the float64 loop, so a wrong kernel cannot post a
time. ``extra_info`` carries GB/s with the byte model of nlseq.bench (3·B·T·N·itemsize forward).
The full harness with every family, GB/s against copy bandwidth and JSON output is
``python -m nlseq.bench``.
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from nlseq.bench.cases.scan import diag_inputs, oracle
from nlseq.reference.scan import linear_recurrence_loop

SIZES = [(4, 4096, 256), (2, 1024, 128)]
SLOW_ROUNDS = 3  # rounds for calls that take seconds (reference at the large size)


def _loop(A, b):
    h, h_last = linear_recurrence_loop(A[..., None, None], b[..., None])
    return h[..., 0], h_last[..., 0]


IMPLS = {
    "cpp": lambda A, b: nlseq.linear_recurrence(A, b, backend="cpp"),
    "reference": lambda A, b: nlseq.linear_recurrence(A, b, backend="reference"),
    "loop": _loop,
}


def _size_id(size):
    return "B{}-T{}-N{}".format(*size)


@pytest.fixture(scope="module", params=SIZES, ids=_size_id)
def problem(request):
    B, T, N = request.param
    inputs = diag_inputs(B, T, N, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        h64, _ = oracle(inputs["A"].double(), inputs["b"].double())
    return request.param, inputs, h64


def _check(impl, inputs, h64):
    with torch.no_grad():
        h, _ = IMPLS[impl](inputs["A"], inputs["b"])
    torch.testing.assert_close(h.double(), h64, atol=2e-5, rtol=2e-5)  # as nlseq.bench (fp32)


def _run(benchmark, fn, slow):
    if slow:
        return benchmark.pedantic(fn, rounds=SLOW_ROUNDS, iterations=1, warmup_rounds=1)
    return benchmark(fn)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_scan_fwd(benchmark, problem, impl):
    (B, T, N), inputs, h64 = problem
    _check(impl, inputs, h64)
    benchmark.group = f"scan fwd {_size_id((B, T, N))} fp32"
    benchmark.extra_info.update(bytes=3 * B * T * N * 4, shape=[B, T, N], dtype="fp32")
    A, b = inputs["A"], inputs["b"]

    def fwd():
        with torch.no_grad():
            return IMPLS[impl](A, b)

    _run(benchmark, fwd, slow=impl == "reference" and T * N >= 4096 * 256)
    benchmark.extra_info["GBps_median"] = 3 * B * T * N * 4 / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_scan_fwdbwd(benchmark, problem, impl):
    (B, T, N), inputs, h64 = problem
    _check(impl, inputs, h64)
    benchmark.group = f"scan fwd+bwd {_size_id((B, T, N))} fp32"
    nbytes = (3 + 5) * B * T * N * 4  # fwd: A, b, h; bwd: A, h, dh, dA, db
    benchmark.extra_info.update(bytes=nbytes, shape=[B, T, N], dtype="fp32")
    A = inputs["A"].clone().requires_grad_()
    b = inputs["b"].clone().requires_grad_()
    dh = torch.randn_like(b)

    def fwdbwd():
        A.grad = b.grad = None
        h, _ = IMPLS[impl](A, b)
        h.backward(dh)

    _run(benchmark, fwdbwd, slow=impl == "reference" and T * N >= 4096 * 256)
    benchmark.extra_info["GBps_median"] = nbytes / benchmark.stats.stats.median / 1e9
