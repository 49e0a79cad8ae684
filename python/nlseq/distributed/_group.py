"""One way to name the ranks an op runs over: a ProcessGroup, a 1-D DeviceMesh, or the world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GroupInfo:
    """The resolved group: the ProcessGroup to pass to collectives, this rank's index in it, its size."""

    group: Any  # dist.ProcessGroup
    rank: int
    size: int
    backend: str  # "gloo", "nccl", ...

    def check_device(self, op: str, name: str, t: torch.Tensor) -> None:
        """Raise (on this rank, before any collective) when the group cannot move ``t``'s device."""
        dev = t.device.type
        if self.backend == "nccl" and dev != "cuda":
            raise ValueError(
                f"nlseq.distributed.{op}: {name} is on {t.device}, but the group's backend is nccl, "
                "which moves CUDA tensors only; use a gloo group for CPU tensors"
            )
        if self.backend == "gloo" and dev not in ("cpu", "cuda"):
            raise ValueError(f"nlseq.distributed.{op}: {name} is on {t.device}, which the gloo group cannot move")


def resolve_group(group: Optional[Any], *, op: str) -> GroupInfo:
    """``group`` as a ProcessGroup with this rank's index and the group size.

    Accepts ``None`` (the default group), a ``ProcessGroup`` or a 1-D ``DeviceMesh``.
    """
    where = f"nlseq.distributed.{op}"
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"{where}: torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (or run under torchrun)"
        )
    pg = group
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:  # pragma: no cover - every supported torch has it
        DeviceMesh = ()  # type: ignore[assignment]
    if DeviceMesh and isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(
                f"{where}: group must be a 1-D DeviceMesh (slice the mesh, e.g. mesh['sp']), got a {group.ndim}-D mesh"
            )
        pg = group.get_group()
    elif group is None:
        pg = dist.group.WORLD
    elif not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"{where}: group must be None, a torch.distributed ProcessGroup or a 1-D DeviceMesh, "
            f"got {type(group).__name__}"
        )
    rank = dist.get_rank(pg)
    if rank < 0:
        raise ValueError(f"{where}: this process (global rank {dist.get_rank()}) is not a member of group")
    return GroupInfo(pg, rank, dist.get_world_size(pg), str(dist.get_backend(pg)))
