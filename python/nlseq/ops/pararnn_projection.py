"""The input projection of ParaGRU / ParaLSTM, U = Wx + b (docs/spec.md §1.3), on the fastest path.

``input_projection(x, W, b, backend=...)`` has the contract of
``nlseq.reference.pararnn.input_projection``: x [..., I], block-diagonal W [heads, I/heads, G,
N/heads], b [G, N] -> U [..., G, N], the layout the recurrence reads.

On the CPU (backend "auto" or "cpp", the compiled extension loaded, not under torch.compile) it
runs ``nlseq_ext::pararnn_projection``: the rows of x are split over the threads and every thread
runs the heads·G GEMMs of its rows single-threaded, straight into U (bias written first, the
GEMMs accumulate onto it), so nothing is copied, stacked or permuted around the GEMMs. float32 and
float64 call the BLAS libtorch links (sgemm_ / dgemm_) directly, and U is backed by transparent
huge pages where the kernel allows (first touch of a fresh 50 MB buffer in 4 KiB pages cost about
as much as the GEMMs on the VM of docs/cpu_rnn.md). Its
backward is ``nlseq_ext::pararnn_projection_bwd``: dx by GEMMs over row blocks, dW by one GEMM
over all rows per (head, gate), db = Σ dU. Why not torch's batched GEMMs: on a 2-core CPU the
BLAS splits each of the G·heads narrow GEMMs (N/heads columns) over both threads and runs ~2x
slower than one GEMM of the same FLOPs (benchmarks/pararnn_cpu_breakdown.py, docs/cpu_rnn.md).
Elsewhere (GPU, reference backend, torch.compile, complex inputs) it is the reference function.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import registry as _registry
from ..reference import pararnn as _ref

_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _ext_available() -> bool:
    ext, _ = _registry._extension()
    return ext is not None and hasattr(torch.ops.nlseq_ext, "pararnn_projection")


def _use_cpp(x: Tensor, W: Tensor, b: Tensor, backend: str) -> bool:
    return (
        backend in ("auto", "cpp")
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in _CPU_DTYPES
        and W.dtype == x.dtype
        and b.dtype == x.dtype
        and W.device == x.device
        and b.device == x.device
        and _ext_available()
    )


class _CppProjection(torch.autograd.Function):
    """U [M, G, N] = x2 [M, I] · blockdiag(W) + b by the C++ kernel; backward by its twin."""

    @staticmethod
    def forward(ctx, x2: Tensor, W: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x2, W)
        return torch.ops.nlseq_ext.pararnn_projection(x2, W, b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dU: Tensor):
        x2, W = ctx.saved_tensors
        need_dx, need_dW, need_db = ctx.needs_input_grad
        dU = dU.contiguous()
        dx = dW = db = None
        if need_dx or need_dW:
            gx, gW = torch.ops.nlseq_ext.pararnn_projection_bwd(x2, W, dU, need_dx, need_dW)
            dx = gx if need_dx else None
            dW = gW if need_dW else None
        if need_db:
            db = dU.sum(0)
        return dx, dW, db


def input_projection(x: Tensor, W: Tensor, b: Tensor, *, backend: str = "auto") -> Tensor:
    """U [..., G, N] = Wx + b for x [..., I], W [heads, I/heads, G, N/heads], b [G, N] (see the module doc)."""
    if not _use_cpp(x, W, b, backend):
        return _ref.input_projection(x, W, b)
    heads, ih, G, nh = _ref.check_projection(x, W, b)
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), heads * ih).contiguous()
    U = _CppProjection.apply(x2, W.contiguous(), b.contiguous())
    return U.reshape(*lead, G, heads * nh)


__all__ = ["input_projection"]
