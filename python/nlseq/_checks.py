"""Input validation shared by every public op: errors name the argument and what was expected."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t: object,
    *,
    op: str,
    ndim: Optional[int | Sequence[int]] = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    layout: str = "",
) -> torch.Tensor:
    """Check that ``t`` is a tensor of an accepted dtype and rank; ``layout`` documents the shape."""
    where = f"nlseq.{op}: {name}"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor{' ' + layout if layout else ''}, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            ranks = " or ".join(str(r) for r in allowed)
            raise ValueError(f"{where} must have {ranks} dimensions{' ' + layout if layout else ''}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{where} must have dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], *, op: str, layout: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"nlseq.{op}: {name} must have shape {tuple(expected)}{' ' + layout if layout else ''}, got {tuple(t.shape)}"
        )


def check_same(op: str, ref_name: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    """Every tensor in ``others`` must share ``ref``'s dtype and device."""
    for name, t in others.items():
        if t is None:
            continue
        if t.dtype != ref.dtype:
            raise TypeError(f"nlseq.{op}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"nlseq.{op}: {name} must be on the device of {ref_name} ({ref.device}), got {t.device}")
