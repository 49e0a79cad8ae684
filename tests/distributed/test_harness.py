"""The spawn harness itself: a failing rank and a hanging rank fail the test instead of hiding or hanging."""

from __future__ import annotations

import pytest
from _harness import run_ranks


def _fail_on_rank_one(rank, P):
    if rank == 1:
        raise ValueError("rank one says no")
    return rank


def _hang_on_rank_one(rank, P):
    import time

    if rank == 1:  # stands for a rank stuck in a collective its peers never join
        time.sleep(600)
    return rank


def test_an_error_on_one_rank_fails_with_its_traceback():
    with pytest.raises(AssertionError, match="rank 1:(.|\n)*rank one says no"):
        run_ranks(_fail_on_rank_one, 2)


def test_a_hung_rank_is_killed_and_reported():
    # 30 s: rank 0 must have started and returned by then, even on a loaded machine
    with pytest.raises(AssertionError, match=r"ranks \[1\] of 2 did not finish within 30 s"):
        run_ranks(_hang_on_rank_one, 2, timeout=30)
