"""``nlseq.linear_recurrence``: the parallel linear-recurrence scan (docs/spec.md §1.1–1.2).

Layers (docs/design.md): ``linear_recurrence`` (checks, defaults, layout) → the ``torch.library``
custom ops ``nlseq::linear_recurrence`` / ``nlseq::linear_recurrence_backward`` (autograd and
fake-tensor rules, one definition) → per-backend launchers in ``_FWD`` / ``_BWD`` → kernels.
Launchers all take the block layout A [B, T, N, K, K], b [B, T, N, K], h0 [B, N, K] or None,
contiguous, and return tensors in the input dtype after accumulating in float32 (float64 for
float64).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import registry as _registry
from .._checks import check_backend, check_bool, check_dims, check_same, check_tensor
from ..reference import scan as _ref

OP = "linear_recurrence"
MAX_BLOCK_SIZE = 4  # K of the block layout; every backend supports 1..MAX_BLOCK_SIZE
IMPLEMENTED = ("cuda", "triton", "cpp", "reference")
_LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------- launchers, one pair per backend
def _ext_ops():
    _registry._extension()  # loading nlseq._C registers the nlseq_ext ops
    return torch.ops.nlseq_ext


def _fwd_compiled(A, b, h0, reverse):
    return tuple(_ext_ops().scan_fwd(A, b, h0, reverse))


def _bwd_compiled(A, h, h0, grad_h, grad_h_last, reverse):
    return tuple(_ext_ops().scan_bwd(A, h, h0, grad_h, grad_h_last, reverse))


def _fwd_triton(A, b, h0, reverse):
    from ..kernels import scan as _tk

    return _tk.linear_recurrence_fwd(A, b, h0, reverse)


def _bwd_triton(A, h, h0, grad_h, grad_h_last, reverse):
    from ..kernels import scan as _tk

    return _tk.linear_recurrence_bwd(A, h, h0, grad_h, grad_h_last, reverse)


def _bwd_reference(A, h, h0, grad_h, grad_h_last, reverse):
    dA, db, dh0 = _ref.linear_recurrence_backward(A, h, h0, grad_h, grad_h_last, reverse)
    if dh0 is None:
        dh0 = h.new_zeros(h.shape[0], h.shape[2], h.shape[3])
    return dA, db, dh0


_FWD = {"cuda": _fwd_compiled, "cpp": _fwd_compiled, "triton": _fwd_triton, "reference": _ref.linear_recurrence_scan}
_BWD = {"cuda": _bwd_compiled, "cpp": _bwd_compiled, "triton": _bwd_triton, "reference": _bwd_reference}


# ---------------------------------------------------------------- registered ops (autograd boundary)
@torch.library.custom_op("nlseq::linear_recurrence", mutates_args=())
def _linear_recurrence_op(
    A: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool, backend: str
) -> tuple[Tensor, Tensor]:
    h, h_last = _FWD[backend](A, b, h0, reverse)
    return h, h_last


@_linear_recurrence_op.register_fake
def _(A, b, h0, reverse, backend):
    B, T, N, K = b.shape
    return torch.empty_like(b), b.new_empty(B, N, K)


@torch.library.custom_op("nlseq::linear_recurrence_backward", mutates_args=())
def _linear_recurrence_backward_op(
    A: Tensor, h: Tensor, h0: Optional[Tensor], grad_h: Tensor, grad_h_last: Tensor, reverse: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    dA, db, dh0 = _BWD[backend](A, h, h0, grad_h, grad_h_last, reverse)
    return dA, db, dh0


@_linear_recurrence_backward_op.register_fake
def _(A, h, h0, grad_h, grad_h_last, reverse, backend):
    B, T, N, K = h.shape
    return torch.empty_like(A), torch.empty_like(h), h.new_empty(B, N, K)


def _setup_context(ctx, inputs, output):
    A, b, h0, reverse, backend = inputs
    h, _ = output
    ctx.save_for_backward(A, h, h0)
    ctx.reverse, ctx.backend, ctx.has_h0 = reverse, backend, h0 is not None


def _backward(ctx, grad_h, grad_h_last):
    A, h, h0 = ctx.saved_tensors
    grad_h = torch.zeros_like(h) if grad_h is None else grad_h.contiguous()
    B, T, N, K = h.shape
    grad_h_last = h.new_zeros(B, N, K) if grad_h_last is None else grad_h_last.contiguous()
    dA, db, dh0 = _linear_recurrence_backward_op(A, h, h0, grad_h, grad_h_last, ctx.reverse, ctx.backend)
    return dA, db, (dh0 if ctx.has_h0 else None), None, None


_linear_recurrence_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public function
_DIAG = "(diagonal layout: A and b [B, T, N], h0 [B, N])"
_BLOCK = "(block layout: A [B, T, N, K, K], b [B, T, N, K], h0 [B, N, K])"


def linear_recurrence(
    A: Tensor, b: Tensor, h0: Optional[Tensor] = None, *, reverse: bool = False, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Solve h_t = A_t h_{t-1} + b_t for t = 1..T with h_0 = h0 (0 when None), in parallel over T.

    With ``reverse=True`` it runs the other way: h_t = A_t h_{t+1} + b_t for t = T..1, h_{T+1} = h0.

    Layouts:
        diagonal  A [B, T, N], b [B, T, N], h0 [B, N]                 (N independent scalars)
        block     A [B, T, N, K, K], b [B, T, N, K], h0 [B, N, K]     (one K×K block per channel,
                                                                       1 <= K <= 4)
    Returns ``(h, h_last)``: h shaped like b, and h_last the state at the end of the direction of
    travel (h_T forward, h_1 reversed); for T = 0, h is empty and h_last is h0 (or zeros).

    Precision: float32, bfloat16 and float16 inputs accumulate in float32 (the carried state is
    float32; outputs are rounded once to the input dtype); float64 runs in float64 on the
    ``cpp`` and ``reference`` backends. Differentiable in A, b and h0 (the backward is the reverse
    recurrence of docs/spec.md §1.2). ``backend``: "auto", "cuda", "triton", "cpp" or "reference"
    (see ``nlseq.backends()``).
    """
    check_backend(OP, backend)
    check_bool(OP, "reverse", reverse)
    both = f"{_DIAG} or {_BLOCK}"
    check_tensor("b", b, op=OP, ndim=(3, 4), layout=both)
    check_tensor("A", A, op=OP, ndim=(3, 5), layout=both)
    if h0 is not None:
        check_tensor("h0", h0, op=OP, ndim=(2, 3), layout=both)
    # The layout is what the ranks say; when they disagree, blame the tensor the others outvote.
    votes = {"A": A.dim() == 3, "b": b.dim() == 3}
    if h0 is not None:
        votes["h0"] = h0.dim() == 2
    if len(set(votes.values())) > 1:
        said = {n: ("diagonal" if v else "block") for n, v in votes.items()}
        counts = list(said.values())
        odd = [n for n in said if counts.count(said[n]) == 1] if len(said) == 3 else list(said)
        ranks = ", ".join(f"{n} {tuple(t.shape)} ({said[n]})" for n, t in (("A", A), ("b", b), ("h0", h0)) if n in said)
        what = (
            f"{odd[0]} has the rank of the other layout"
            if len(odd) == 1
            else f"{' and '.join(odd)} disagree on the layout"
        )
        raise ValueError(f"nlseq.{OP}: {what}: {ranks}; expected {both}")
    diagonal = votes["b"]
    layout = _DIAG if diagonal else _BLOCK
    check_same(OP, "b", b, A=A, h0=h0)
    if diagonal:
        dims = check_dims(OP, layout, A=(A, "B T N"), b=(b, "B T N"), h0=(h0, "B N"))
        K = 1
    else:
        if A.shape[-1] != A.shape[-2]:
            raise ValueError(f"nlseq.{OP}: A must have square K×K blocks {layout}, got shape {tuple(A.shape)}")
        dims = check_dims(OP, layout, A=(A, "B T N K _"), b=(b, "B T N K"), h0=(h0, "B N K"))
        K = dims["K"]
        if not 1 <= K <= MAX_BLOCK_SIZE:
            raise ValueError(f"nlseq.{OP}: the block size K = b.shape[-1] must be in 1..{MAX_BLOCK_SIZE}, got {K}")
    B, T, N = dims["B"], dims["T"], dims["N"]

    name = _registry.resolve(backend, b.device, OP, IMPLEMENTED)
    if b.dtype == torch.float64 and name in ("cuda", "triton"):
        raise TypeError(
            f"nlseq.{OP}: backend {name!r} accepts float32, bfloat16 and float16; float64 runs on "
            f"backend='cpp' or 'reference'"
        )

    if diagonal:  # the diagonal layout is the block layout with K = 1: views, no copies
        A, b = A.unsqueeze(-1).unsqueeze(-1), b.unsqueeze(-1)
        h0 = None if h0 is None else h0.unsqueeze(-1)
    if T == 0:
        h_last = b.new_zeros(B, N, K) if h0 is None else h0.clone()
        h = b.new_empty(b.shape)
    else:
        h, h_last = _linear_recurrence_op(
            A.contiguous(), b.contiguous(), None if h0 is None else h0.contiguous(), reverse, name
        )
    if diagonal:
        # squeeze, not h[..., 0]: the backward of a squeeze is a view of the gradient, while that
        # of an index allocates a zero tensor of h's size and copies the gradient into it (two
        # extra passes over B*T*N in every backward).
        h, h_last = h.squeeze(-1), h_last.squeeze(-1)
    return h, h_last
