"""Benchmarks of nlseq: ``python -m nlseq.bench`` (console script ``nlseq-bench``).

For every op family's cases (modules in ``nlseq.bench.cases``) on every device present, it checks
each implementation against a float64 oracle, times forward / backward / forward+backward medians
(with their spread) of the implementations and their peers in one process, and reports GB/s and
TFLOP/s against the machine's measured copy bandwidth and matmul throughput, speedups over a named
baseline, goals met or missed and peak memory; as a table, a JSON file (rewritten after every row)
and a figure per family (``--out``, default ``results/``). See docs/benchmarks.md.

A family adds cases with :class:`Case` and :class:`Impl` (see ``nlseq/bench/cases/__init__.py``).
"""

from .case import MODES, Case, Goal, Impl

__all__ = ["Case", "Goal", "Impl", "MODES"]
