"""nlseq.distributed.sharding: the layouts and the shard / unshard round trip over real ranks."""

from __future__ import annotations

import pytest
import torch
from _harness import run_ranks

from nlseq.distributed import shard, shard_bounds, unshard, zigzag_bounds
from nlseq.distributed.sharding import layout_shard


@pytest.mark.parametrize("T,P", [(10, 3), (7, 7), (1, 1), (16, 4), (5, 2)])
def test_bounds_cover_the_sequence_in_order(T, P):
    b = shard_bounds(T, P)
    assert b[0][0] == 0 and b[-1][1] == T
    assert all(b[i][1] == b[i + 1][0] for i in range(P - 1))
    z = zigzag_bounds(T, P)
    covered = sorted(p for r in z for p in r)
    assert covered[0][0] == 0 and covered[-1][1] == T
    assert all(covered[i][1] == covered[i + 1][0] for i in range(2 * P - 1))
    assert [r[0] for r in z] == [(c * T // (2 * P), (c + 1) * T // (2 * P)) for c in range(P)]


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="number of ranks"):
        shard_bounds(4, 0)
    with pytest.raises(ValueError, match="layout"):
        layout_shard(4, 2, 0, "ring")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        shard([1, 2], rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank and world_size together"):
        shard(torch.zeros(2, 4), rank=0)


def _round_trip(rank, P, T, layout):
    full = torch.arange(2 * T * 3, dtype=torch.float64).reshape(2, T, 3)
    local, s = shard(full, dim=1, layout=layout)
    assert torch.equal(local, full[:, s.positions()])
    return torch.equal(unshard(local, dim=1, layout=layout), full), s.length


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_round_trip_over_three_ranks(layout):
    res = run_ranks(_round_trip, 3, 11, layout)
    assert [ok for ok, _ in res] == [True, True, True]
    assert sum(n for _, n in res) == 11
