"""Median timers with their spread, and the machine's measured ceilings (copy bandwidth, matmul).

Every timer returns a :class:`Timing`: the median and the quartiles (25 % / 75 %) of the measured
calls, so that a report can show the spread (IQR) beside the median and flag noisy rows.
GPU: ``triton.testing.do_bench(..., quantiles=[0.5, 0.25, 0.75])`` (it flushes the L2 cache
between runs and clears the gradients named in ``grad_to_none``); CUDA-event quantiles when
triton is missing. CPU: the median of per-call ``time.perf_counter`` measurements for calls of 1 ms and
more (a per-call median is robust to the scheduler's occasional stall, which a block of calls
averages in); ``torch.utils.benchmark.Timer`` (median over at least 7 blocks) for faster
calls, where one call is too short to time alone (quartiles over the blocks). Both run on
torch's thread count.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

FAST_CALL_S = 0.001  # below this, a CPU call is timed in blocks by torch.utils.benchmark


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles of ``n`` measurements, and how they were taken."""

    median: float
    q25: float
    q75: float
    n: int
    how: str

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.1 = the middle half spans 10 %)."""
        return (self.q75 - self.q25) / self.median if self.median > 0 else float("nan")


def _quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    if len(times) < 2:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q[0], q[2]


@dataclass(frozen=True)
class Budget:
    """How long to measure one (impl, mode) on each device."""

    cpu_min_s: float  # least total measuring time on the CPU
    cpu_min_reps: int  # least number of measured calls on the CPU (slow calls)
    gpu_warmup_ms: int
    gpu_rep_ms: int

    @staticmethod
    def for_run(quick: bool) -> "Budget":
        return Budget(0.25, 3, 10, 40) if quick else Budget(1.0, 5, 25, 200)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(fn: Callable[[], object], budget: Budget, reset: Sequence[torch.Tensor] = ()) -> Timing:
    """Seconds per call of ``fn()`` on the CPU (median, quartiles). The caller warmed fn up."""

    def call():
        for t in reset:
            t.grad = None
        fn()

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    if first < FAST_CALL_S:
        from torch.utils import benchmark

        # Timer runs on ONE thread unless told otherwise: every row must use torch's thread count,
        # as the perf_counter path below does, or fast and slow rows are timed differently.
        threads = torch.get_num_threads()
        timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=threads)
        # blocks of ``number`` calls lasting about a tenth of the budget each, and at least 7 of
        # them: the quartiles over the blocks give the spread (blocked_autorange may time a single
        # long block, which has none)
        number = 1
        while timer.timeit(number).median * number < budget.cpu_min_s / 10 and number < 10**7:
            number *= 10
        blocks: list = []
        while len(blocks) < 7 or sum(blocks) * number < budget.cpu_min_s:
            blocks.append(timer.timeit(number).median)
        med, q25, q75 = _quartiles(blocks)
        return Timing(
            med,
            q25,
            q75,
            len(blocks),
            f"torch.utils.benchmark Timer median of {len(blocks)} blocks x {number}, {threads} threads",
        )
    times = [first]
    while len(times) < budget.cpu_min_reps or sum(times) < budget.cpu_min_s:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    med, q25, q75 = _quartiles(times)
    return Timing(med, q25, q75, len(times), f"perf_counter median of {len(times)}")


def time_gpu(fn: Callable[[], object], budget: Budget, reset: Sequence[torch.Tensor] = ()) -> Timing:
    """Seconds per call of ``fn()`` on the current CUDA device (median, quartiles)."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        med, q25, q75 = do_bench(
            fn,
            warmup=budget.gpu_warmup_ms,
            rep=budget.gpu_rep_ms,
            grad_to_none=list(reset) or None,
            quantiles=[0.5, 0.25, 0.75],
        )
        return Timing(
            med * 1e-3,
            q25 * 1e-3,
            q75 * 1e-3,
            0,
            f"triton.testing.do_bench median (warmup {budget.gpu_warmup_ms} ms, rep {budget.gpu_rep_ms} ms)",
        )
    times = []
    deadline = time.perf_counter() + budget.gpu_rep_ms * 1e-3
    while len(times) < 5 or time.perf_counter() < deadline:
        for t in reset:
            t.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    med, q25, q75 = _quartiles(times)
    return Timing(med, q25, q75, len(times), f"CUDA events median of {len(times)} (triton not installed)")


def time_fn(
    device: torch.device, fn: Callable[[], object], budget: Budget, reset: Sequence[torch.Tensor] = ()
) -> Timing:
    if device.type == "cuda":
        return time_gpu(fn, budget, reset)
    return time_cpu(fn, budget, reset)


def copy_bandwidth(device: torch.device, quick: bool) -> dict:
    """Measured copy bandwidth of ``device``: a large contiguous fp32 copy, (read + write) / time."""
    if device.type == "cuda":
        nbytes = (256 if quick else 1024) * 2**20
    else:
        nbytes = (128 if quick else 512) * 2**20  # well past any CPU last-level cache
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    t = time_fn(device, lambda: dst.copy_(src), Budget.for_run(quick))
    src = dst = None  # free the buffers before the next case (the lambda holds the names, not a copy)
    return {"copy_GBps": 2 * nbytes / t.median / 1e9, "copy_bytes": nbytes, "copy_spread": t.spread, "timer": t.how}


def matmul_tflops(device: torch.device, dtype: torch.dtype, quick: bool) -> dict:
    """Measured dense matmul throughput in ``dtype`` (the ceiling for cases that declare flops)."""
    if device.type == "cuda":
        n = 4096 if quick else 8192
    else:
        n = 512 if quick else 1024
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b
    _sync(device)
    t = time_fn(device, lambda: a @ b, Budget.for_run(quick))
    return {"matmul_TFLOPs": 2 * n**3 / t.median / 1e12, "matmul_n": n, "timer": t.how}


def peak_memory(device: torch.device, fn: Callable[[], object]) -> Optional[int]:
    """Peak bytes allocated on a CUDA device by one ``fn()`` call above what was allocated before."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
