"""Count the collectives a block of code issues and the bytes this rank puts on the wire.

    with CommCounter() as cc:
        loss = model(x).sum(); loss.backward()
    cc.calls        # {"alltoall_base_": 4, "allgather_": 2, ...}
    cc.bytes_sent   # payload bytes this rank sent, by the model below

It is a ``TorchDispatchMode`` on the ``c10d`` ops, so it sees every collective that goes through
the dispatcher while it is active: torch.distributed calls from Python (ours, FSDP2's, functional
collectives) and the C++ ProcessGroup methods, which dispatch the same ops (DDP's gradient
buckets and bucket rebuild), in forward and in backward (autograd carries the mode to its
threads). Collectives that a library issues on threads of its own are not seen.

Bytes model (what a rank must send with ring / pairwise algorithms; n = the collective's tensor
bytes on this rank, P = group size): all_to_all: the pieces for the other ranks; all_gather:
(P−1)·n; all_reduce: 2(P−1)/P·n; reduce_scatter: (P−1)/P·n of the input; broadcast: n·(P−1) on
the root, 0 elsewhere. It is the logical traffic, not a measurement of the transport.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    return 0


def _group_of(args):
    """The ProcessGroup argument of a c10d op (a boxed TorchScript object in the dispatcher)."""
    from torch._C._distributed_c10d import ProcessGroup

    for a in args:
        if isinstance(a, ProcessGroup):
            return a
        if isinstance(a, torch.ScriptObject) and "ProcessGroup" in str(a._type()):
            return ProcessGroup.unbox(a)
    return None


def _sent(name: str, args) -> int:
    pg = _group_of(args)
    P = pg.size() if pg is not None else 1
    rank = pg.rank() if pg is not None else 0
    if P <= 1:
        return 0
    if name == "alltoall_base_":
        inp, in_splits = args[1], args[4]
        total = _nbytes(inp)
        if not in_splits:
            return total * (P - 1) // P
        row = total // max(sum(in_splits), 1)
        return row * (sum(in_splits) - in_splits[rank])
    if name == "alltoall_":
        return sum(_nbytes(t) for i, t in enumerate(args[1]) if i != rank)
    if name in ("allgather_", "_allgather_base_", "allgather_into_tensor_coalesced_", "allgather_coalesced_"):
        return (P - 1) * _nbytes(args[1])
    if name in ("allreduce_", "allreduce_coalesced_"):
        return 2 * (P - 1) * _nbytes(args[0]) // P
    if name in ("reduce_scatter_", "_reduce_scatter_base_", "reduce_scatter_tensor_coalesced_"):
        return (P - 1) * _nbytes(args[1]) // P
    if name == "broadcast_":
        return _nbytes(args[0]) * (P - 1) if args[2] == rank else 0
    if name == "reduce_":
        return 0 if args[3] == rank else _nbytes(args[0])
    if name in ("gather_",):
        return _nbytes(args[1])
    if name in ("scatter_",):
        return _nbytes(args[1]) if args[3] == rank else 0
    return 0


class CommCounter(TorchDispatchMode):
    """Context manager: ``calls`` (collective name → count) and ``bytes_sent`` of this rank."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.bytes_sent = 0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            name = func._opname
            self.calls[name] += 1
            self.bytes_sent += _sent(name, args)
        return func(*args, **kwargs)
