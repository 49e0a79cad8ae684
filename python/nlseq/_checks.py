"""Input validation shared by every public op and module: errors name the op, the argument, what
was expected and what was given (docs/numerics.md lists the rules).

``op`` is the name after ``nlseq.`` in messages: "linear_recurrence", "nn.ParaGRU",
"analog.CrossbarConfig", ... Scalars are checked strictly: an int argument must be an int (not a
bool, not a float that ``int()`` would truncate), a bool a bool, and float arguments finite
unless said otherwise. Tensor *values* are only checked where a bad value changes the answer
silently (thresholds, noise); NaN/inf in data tensors follow the NaN rule instead.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# The largest kv_offset (cached keys before the first query) any backend accepts: positions
# i + kv_offset + 1 are formed in int32 by the Triton and CUDA kernels, so kv_offset + Tq must
# stay below 2^31 (docs/numerics.md, "integer offsets").
MAX_POSITION = 2**31 - 1


def _where(op: str, name: str) -> str:
    return f"nlseq.{op}: {name}"


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _given(v: Any) -> str:
    """How a bad value is shown: its repr, and its type when the repr does not say it."""
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)} and dtype {v.dtype}"
    if isinstance(v, (tuple, list)):
        items = ", ".join(
            f"tensor {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__ for x in v[:4]
        )
        return f"a {type(v).__name__} of {len(v)} item(s) ({items}{', ...' if len(v) > 4 else ''})"
    r = repr(v)
    if len(r) > 80:
        r = r[:77] + "..."
    return f"{r} ({type(v).__name__})"


# ----------------------------------------------------------------------------- tensors
def check_tensor(
    name: str,
    t: object,
    *,
    op: str,
    ndim: Optional[int | Sequence[int]] = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    layout: str = "",
    device: Optional[torch.device] = None,
    device_of: str = "",
) -> torch.Tensor:
    """Check that ``t`` is a tensor of an accepted dtype and rank (and on ``device`` when given,
    the device of the argument named ``device_of``); ``layout`` documents the shape."""
    where = _where(op, name)
    lay = f" {layout}" if layout else ""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor{lay}, got {_given(t)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            ranks = " or ".join(str(r) for r in allowed)
            raise ValueError(f"{where} must have {ranks} dimensions{lay}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{where} must have dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(
            f"{where} must be on the device of {device_of or 'the other inputs'} ({device}), got {t.device}"
        )
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
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"nlseq.{op}: {name} must be a torch.Tensor, got {_given(t)}")
        if t.dtype != ref.dtype:
            raise TypeError(f"nlseq.{op}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"nlseq.{op}: {name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def check_dims(op: str, layout: str, **specs: tuple[Optional[torch.Tensor], str]) -> dict[str, int]:
    """Check that tensors agree on their named dims and return {dim name: size}.

    ``specs`` maps an argument name to ``(tensor or None, "B T N")``: one name per dim of the
    tensor (ranks are checked before), ``_`` for a dim that is not shared. When the tensors give a
    dim different sizes, the message blames the odd one out — the tensor whose size differs from
    the one most of the others agree on ("h0 must have shape (2, 3) (B = 2, as A and b give), got
    (1, 3)") — and names both sides when there is no majority (two tensors that disagree): the
    argument that is wrong, not the first one checked.
    """
    seen: dict[str, list[tuple[str, int, tuple]]] = {}
    for arg, (t, dims) in specs.items():
        if t is None:
            continue
        names = dims.split()
        if len(names) != t.dim():  # a caller bug, not a user error
            raise AssertionError(f"check_dims: {arg} has {t.dim()} dims, spec {dims!r}")
        for d, size in zip(names, t.shape):
            if d != "_":
                seen.setdefault(d, []).append((arg, int(size), tuple(t.shape)))
    sizes = {}
    for d, entries in seen.items():
        counts = Counter(size for _, size, _ in entries)
        if len(counts) == 1:
            sizes[d] = entries[0][1]
            continue
        (top, n_top), *rest = counts.most_common()
        if rest and rest[0][1] == n_top:  # no majority: name every side
            sides = ", ".join(f"{arg} {shape} has {d} = {size}" for arg, size, shape in entries)
            raise ValueError(f"nlseq.{op}: the inputs disagree on {d}: {sides} {layout}".rstrip())
        agree = [arg for arg, size, _ in entries if size == top]
        for arg, size, shape in entries:
            if size != top:
                names = specs[arg][1].split()
                want = tuple(top if n == d else s for n, s in zip(names, shape))
                raise ValueError(
                    f"nlseq.{op}: {arg} must have shape {want} ({d} = {top}, as {' and '.join(agree)} give), "
                    f"got {shape} {layout}".rstrip()
                )
    return sizes


def check_values(
    op: str,
    name: str,
    t: torch.Tensor,
    *,
    finite: bool = True,
    nondecreasing: bool = False,
    increasing: bool = False,
    nonneg: bool = False,
) -> None:
    """Checks on a tensor's values (one host sync): finite, >= 0, (strictly) increasing along
    the last dim. For configuration tensors (thresholds, levels, noise) whose bad values would
    otherwise change the answer silently; skipped while torch.compile traces."""
    if torch.compiler.is_compiling() or t.numel() == 0:
        return
    where = _where(op, name)
    tf = t.detach()
    if finite and not bool(torch.isfinite(tf).all()):
        bad = tf[~torch.isfinite(tf)].flatten()[0].item()
        raise ValueError(f"{where} must be finite, got a non-finite value ({bad})")
    if nonneg and bool((tf < 0).any()):
        raise ValueError(f"{where} must be >= 0, got a minimum of {tf.min().item()}")
    if (increasing or nondecreasing) and tf.shape[-1] > 1:
        d = tf[..., 1:] - tf[..., :-1]
        bad = (d <= 0) if increasing else (d < 0)
        if bool(bad.any()):
            idx = torch.nonzero(bad)[0].tolist()
            what = "strictly increasing" if increasing else "non-decreasing"
            a = tf[tuple(idx[:-1]) + (idx[-1],)].item()
            b = tf[tuple(idx[:-1]) + (idx[-1] + 1,)].item()
            raise ValueError(f"{where} must be {what} along its last dim, got {a} then {b} at index {tuple(idx)}")


# ----------------------------------------------------------------------------- scalars
def check_bool(op: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{_where(op, name)} must be a bool (True or False), got {_given(v)}")
    return v


def check_int(op: str, name: str, v: Any, *, lo: Optional[int] = None, hi: Optional[int] = None, what: str = "") -> int:
    """An int in [lo, hi]: a bool, a float (even 3.0) or a tensor is rejected rather than coerced
    with int(), which would truncate 2.7 to 2 without a word."""
    where = _where(op, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{where} must be an int{what and ' ' + what}, got {_given(v)}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (
            f"in [{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        )
        raise ValueError(f"{where} must be an int {rng}{what and ' ' + what}, got {v}")
    return v


def check_float(
    op: str,
    name: str,
    v: Any,
    *,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
    what: str = "",
) -> float:
    """A real number (int or float, not bool, not str) in the interval given, finite unless
    ``finite=False``; returned as a float. NaN is always rejected."""
    where = _where(op, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{where} must be a real number{what and ' ' + what}, got {_given(v)}")
    f = float(v)
    if math.isnan(f) or (finite and math.isinf(f)):
        raise ValueError(f"{where} must be a finite number{what and ' ' + what}, got {f}")
    bad = (lo is not None and (f <= lo if lo_open else f < lo)) or (hi is not None and (f >= hi if hi_open else f > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{where} must be {rng}{what and ' ' + what}, got {f}")
    return f


def check_prob(op: str, name: str, v: Any) -> float:
    return check_float(op, name, v, lo=0.0, hi=1.0, what="(a probability)")


def check_choice(op: str, name: str, v: Any, choices: Sequence[str]) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{_where(op, name)} must be one of {tuple(choices)} (a str), got {_given(v)}")
    if v not in choices:
        raise ValueError(f"{_where(op, name)} must be one of {tuple(choices)}, got {v!r}")
    return v


def check_backend(op: str, backend: Any) -> str:
    """The type of ``backend``; the registry checks the name and availability."""
    if not isinstance(backend, str):
        raise TypeError(
            f"{_where(op, 'backend')} must be a str ('auto', 'cuda', 'triton', 'cpp' or 'reference'), "
            f"got {_given(backend)}"
        )
    return backend


def check_range_pair(op: str, name: str, v: Any) -> tuple[float, float]:
    """A pair (lo, hi) of finite numbers with lo < hi."""
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{_where(op, name)} must be a pair (lo, hi), got {_given(v)}")
    lo = check_float(op, f"{name}[0]", v[0])
    hi = check_float(op, f"{name}[1]", v[1])
    if not lo < hi:
        raise ValueError(f"{_where(op, name)} must satisfy lo < hi, got {tuple(v)}")
    return lo, hi


def check_tuple(op: str, name: str, v: Any, count: int, what: str) -> tuple:
    """A tuple/list of exactly ``count`` items (``what`` names them, e.g. "(k, v)")."""
    if not isinstance(v, (tuple, list)) or len(v) != count:
        raise ValueError(f"{_where(op, name)} must be a tuple {what} of {count} tensors, got {_given(v)}")
    return tuple(v)


def check_mapping_keys(op: str, name: str, v: Mapping, expected: Iterable[str]) -> None:
    missing = [k for k in expected if k not in v]
    if missing:
        raise KeyError(f"{_where(op, name)} is missing {missing}")
