"""One spawn per world size for the sequence-parallel scan and Newton tests (test_scan_sp.py,
test_newton_sp.py): starting P processes costs seconds (each imports torch), the cases themselves
well under one, so both files share the ranks of one ``run_ranks`` call per P, cached for the
pytest session. Each part's exception is returned as text, so one failing part fails its own test.
"""

from __future__ import annotations

import functools
import traceback

from _harness import run_ranks


def _part(fn, *args):
    try:
        return {"ok": True, "value": fn(*args)}
    except Exception:  # reported by the test that owns the part (the ranks stay in step: see _all)
        return {"ok": False, "error": traceback.format_exc()}


def _all(rank, P):
    import test_newton_sp
    import test_scan_sp

    return {"scan": _part(test_scan_sp.run_rank, rank, P), "newton": _part(test_newton_sp.run_rank, rank, P)}


@functools.lru_cache(maxsize=None)
def results(P: int) -> tuple:
    """Per rank, {"scan": ..., "newton": ...} for a world of P gloo ranks (spawned once per session)."""
    return tuple(run_ranks(_all, P, timeout=240.0))


def part(P: int, name: str) -> list:
    """Every rank's value of one part; fails with the rank's traceback when that part raised."""
    out = []
    for rank, res in enumerate(results(P)):
        got = res[name]
        assert got["ok"], f"P={P} rank {rank}, {name} part raised:\n{got['error']}"
        out.append(got["value"])
    return out
