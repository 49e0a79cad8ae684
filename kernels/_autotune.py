"""The autotune config lists of every Triton kernel pass through :func:`tuned`.

``NLSEQ_AUTOTUNE_FIRST=1`` keeps only the first config of every list: tests on a GPU then compile
one variant per kernel instead of every one (the GPU check runs its correctness phase this way, so
a cold cache costs seconds, not minutes); timings must be taken without it. Under the interpreter
the kernels already supply a single config.
"""

from __future__ import annotations

import os


def autotune_first() -> bool:
    """True when NLSEQ_AUTOTUNE_FIRST asks for the first config only."""
    return os.environ.get("NLSEQ_AUTOTUNE_FIRST", "0") not in ("", "0")


def tuned(configs: list) -> list:
    """``configs``, or only its first entry under ``NLSEQ_AUTOTUNE_FIRST=1``."""
    return configs[:1] if autotune_first() else configs
