"""``nlseq.distributed``: nlseq's ops over torch.distributed (sequence and context parallelism).

Every function works on the local shard of a sequence that is split over the ranks of a
``group`` (a ``ProcessGroup``, a 1-D ``DeviceMesh`` or ``None`` for the world). The layouts
(contiguous, uneven, zigzag) and the helpers that shard and unshard a full tensor live in
``nlseq.distributed.sharding``. Communication uses torch.distributed collectives only.
"""

from __future__ import annotations

from ._group import GroupInfo, resolve_group
from .attention import softplus_attention
from .sharding import Shard, shard, shard_bounds, unshard, zigzag_bounds

__all__ = [
    "GroupInfo",
    "resolve_group",
    "Shard",
    "shard",
    "shard_bounds",
    "unshard",
    "zigzag_bounds",
    "softplus_attention",
]

from .pararnn import final_state, grad_sum, pararnn  # noqa: E402  (sequence-parallel ParaRNN, docs/distributed.md)
from .traffic import CommCounter  # noqa: E402

__all__ += ["pararnn", "final_state", "grad_sum", "CommCounter"]
from .newton import newton_solve, pararnn_state  # noqa: E402  (docs/sequence_parallel_scan.md)
from .scan import linear_recurrence  # noqa: E402  (sequence-parallel scan, docs/sequence_parallel_scan.md)

__all__ += ["linear_recurrence", "newton_solve", "pararnn_state"]
