"""Benchmark cases, one module per op family; ``python -m nlseq.bench`` finds them by itself.

To add a family, create ``nlseq/bench/cases/<family>.py`` (no other file changes) with:

    FAMILY = "<family>"          # optional; defaults to the module name

    def cases(device: torch.device, quick: bool) -> list[nlseq.bench.Case]:
        '''The cases to run on ``device`` ("cpu" or "cuda"); fewer/smaller when ``quick``.'''

``cases`` is called once per device the run covers; return [] for a device the family has
nothing for. It should be cheap: build tensors lazily in each ``Case.inputs``. A case lists its
``Impl``s (nlseq backends and plain-PyTorch peers); the runner skips unavailable ones with their
reason, checks the others against the float64 ``oracle`` and times them (see
``nlseq/bench/case.py`` for every field, and ``cases/scan.py`` for a complete example).
``--quick`` must stay under 2 minutes on a 2-core CPU for all families together: keep quick CPU
cases to a few seconds each, and make slow peers check-only (``timed=False``) or absent there.

Peers go into the case they are compared with (a peer computing another function brings its own
``inputs`` / ``oracle`` / ``tol``, see ``Impl``). Mark ``headline=True`` on the few cases a short
GPU run must time first (``--subset headline``; the GPU check runs them before the rest), and give
speed goals as ``Goal`` s. A case whose name ends in ``-tiny`` (a few milliseconds, timed on the
CPU) is what the GPU check's dry run runs of the family (docs/benchmarks.md).

Modules whose name starts with "_" are ignored (shared helpers).
"""
