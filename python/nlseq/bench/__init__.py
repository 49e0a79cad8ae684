"""Benchmarks of nlseq: ``python -m nlseq.bench`` (console script ``nlseq-bench``).

For every op family's cases (modules in ``nlseq.bench.cases``) on every device present, it checks
each implementation against a float64 oracle, times forward / backward / forward+backward medians
of the implementations and their peers in one process, and reports GB/s and TFLOP/s against the
machine's measured copy bandwidth and matmul throughput, speedups over a named baseline and peak
memory; as a table, a JSON file and a PNG plot (``--out``, default ``results/``).

A family adds cases with :class:`Case` and :class:`Impl` (see ``nlseq/bench/cases/__init__.py``).
"""
from .case import MODES, Case, Impl

__all__ = ["Case", "Impl", "MODES"]
