"""Sequence layouts over the ranks of a group, and helpers to shard and unshard a full tensor.

Two layouts:

- **contiguous** (default): rank r holds steps ``[floor(r·T/P), floor((r+1)·T/P))``. Uneven
  lengths are fine, and a rank may hold a single step. Ops that take shards accept any contiguous
  split (not only this default one), as long as the ranks hold consecutive pieces in rank order.
- **zigzag** (causal load balance for attention): the sequence is cut into 2P chunks and rank r
  holds chunks r and 2P−1−r, concatenated in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ._group import resolve_group

LAYOUTS = ("contiguous", "zigzag")


def _check_tp(T: int, P: int, what: str) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 0:
        raise ValueError(f"nlseq.distributed.{what}: sequence length must be an int >= 0, got {T!r}")
    if not isinstance(P, int) or isinstance(P, bool) or P < 1:
        raise ValueError(f"nlseq.distributed.{what}: number of ranks must be an int >= 1, got {P!r}")


def shard_bounds(T: int, P: int) -> list[tuple[int, int]]:
    """Contiguous split: ``[(start, stop)]`` of every rank, rank r holding ``[r·T//P, (r+1)·T//P)``."""
    _check_tp(T, P, "shard_bounds")
    return [(r * T // P, (r + 1) * T // P) for r in range(P)]


def zigzag_bounds(T: int, P: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Zigzag split: for every rank, the two ``(start, stop)`` chunks it holds (chunk r, chunk 2P−1−r)."""
    _check_tp(T, P, "zigzag_bounds")
    cuts = [c * T // (2 * P) for c in range(2 * P + 1)]
    return [((cuts[r], cuts[r + 1]), (cuts[2 * P - 1 - r], cuts[2 * P - r])) for r in range(P)]


@dataclass(frozen=True)
class Shard:
    """What a rank holds of a sequence of length ``total``: its pieces as global ``(start, stop)``."""

    pieces: tuple[tuple[int, int], ...]
    total: int
    layout: str

    @property
    def length(self) -> int:
        return sum(b - a for a, b in self.pieces)

    @property
    def start(self) -> int:
        """Global position of the first local step (contiguous layout)."""
        return self.pieces[0][0]

    def positions(self, device=None) -> Tensor:
        """Global position of every local step, int64 ``[length]``."""
        return torch.cat([torch.arange(a, b, device=device) for a, b in self.pieces])


def layout_shard(T: int, P: int, rank: int, layout: str = "contiguous") -> Shard:
    """The :class:`Shard` of ``rank`` in a ``layout`` split of ``T`` steps over ``P`` ranks."""
    if layout not in LAYOUTS:
        raise ValueError(f"nlseq.distributed: layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "contiguous":
        return Shard((shard_bounds(T, P)[rank],), T, layout)
    return Shard(zigzag_bounds(T, P)[rank], T, layout)


def shard(
    x: Tensor,
    dim: int = 1,
    *,
    group: Optional[Any] = None,
    layout: str = "contiguous",
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> tuple[Tensor, Shard]:
    """This rank's piece of a full tensor ``x`` along ``dim`` (no communication), and its :class:`Shard`.

    ``rank``/``world_size`` default to this process's place in ``group``; pass both to shard
    without an initialised process group (e.g. to build every rank's expected piece in a test).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"nlseq.distributed.shard: x must be a torch.Tensor, got {type(x).__name__}")
    if (rank is None) != (world_size is None):
        raise ValueError("nlseq.distributed.shard: pass rank and world_size together, or neither")
    if rank is None:
        info = resolve_group(group, op="shard")
        rank, world_size = info.rank, info.size
    if not 0 <= rank < world_size:
        raise ValueError(f"nlseq.distributed.shard: rank must be in [0, {world_size}), got {rank}")
    d = dim % x.dim()
    s = layout_shard(x.shape[d], world_size, rank, layout)
    return torch.cat([x.narrow(d, a, b - a) for a, b in s.pieces], dim=d), s


def unshard(x_local: Tensor, dim: int = 1, *, group: Optional[Any] = None, layout: str = "contiguous") -> Tensor:
    """The full tensor from every rank's piece along ``dim`` (one all_gather of the lengths, one of the data).

    Pieces may have different lengths (contiguous layout in rank order); for ``layout="zigzag"``
    every rank must hold the pieces that :func:`zigzag_bounds` gives it for the total length.
    The result is not differentiable (use it for checks and outputs, not inside a model).
    """
    if not isinstance(x_local, Tensor):
        raise TypeError(f"nlseq.distributed.unshard: x_local must be a torch.Tensor, got {type(x_local).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"nlseq.distributed.unshard: layout must be one of {LAYOUTS}, got {layout!r}")
    info = resolve_group(group, op="unshard")
    d = dim % x_local.dim()
    n = torch.tensor([x_local.shape[d]], dtype=torch.int64, device=x_local.device)
    ns = [torch.empty_like(n) for _ in range(info.size)]
    dist.all_gather(ns, n, group=info.group)
    lengths = [int(t.item()) for t in ns]
    L = max(lengths)
    pad = list(x_local.shape)
    pad[d] = L
    buf = x_local.new_zeros(pad)
    buf.narrow(d, 0, lengths[info.rank]).copy_(x_local.detach())
    bufs = [torch.empty_like(buf) for _ in range(info.size)]
    dist.all_gather(bufs, buf.contiguous(), group=info.group)
    pieces = [b.narrow(d, 0, l) for b, l in zip(bufs, lengths)]
    if layout == "contiguous":
        return torch.cat(pieces, dim=d)
    T = sum(lengths)
    out_shape = list(x_local.shape)
    out_shape[d] = T
    out = x_local.new_empty(out_shape)
    for r, piece in enumerate(pieces):
        off = 0
        for a, b in layout_shard(T, info.size, r, "zigzag").pieces:
            out.narrow(d, a, b - a).copy_(piece.narrow(d, off, b - a))
            off += b - a
    return out
