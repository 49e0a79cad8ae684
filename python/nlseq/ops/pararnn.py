"""ParaRNN: nonlinear RNNs solved in parallel over time by Newton's method (docs/spec.md §1).

Two public entry points:

- ``newton_solve(step, x, h0, ...)`` for any user cell: Jacobians from ``torch.func``, every
  Newton step solved by ``nlseq.linear_recurrence``, gradients by the implicit backward of
  docs/spec.md §1.2 (a reverse linear recurrence at the solution, then one VJP of the cell).
- ``pararnn(cell, U, A, P, s0, ...)`` for the built-in cells ("gru", "lstm"; docs/spec.md §1.3) on the
  projected input U = Wx + b; it is what ``nlseq.nn.ParaGRU`` / ``ParaLSTM`` call.

Layers of the built-in path (docs/design.md): ``pararnn`` (checks, defaults) → the ``torch.library``
ops ``nlseq::pararnn`` / ``nlseq::pararnn_backward`` (autograd and fake-tensor rules, one
definition) → per-backend launchers with one contract (below) → kernels.

Launcher contract (every backend; S = 1 for the GRU, 2 for the LSTM; acc = float32, float64 for
float64 U):
    fwd(cell, U [B,T,3,N], A [3,N] acc, P [2,N] acc | None, s0 [B,S,N] | None, max_iters, tol)
        -> (S_all [B,T,S,N] in U's dtype, iters int64 0-dim, residual acc 0-dim)       (Newton)
    bwd(cell, U, A, P, s0, S_all, dS [B,T,S,N], ds_last [B,S,N])
        -> (dU [B,T,3,N], dA [3,N] acc, dP [2,N] acc | None, ds0 [B,S,N])
    seq(cell, U, A, P, s0) -> S_all                                         (exact sequential pass)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .. import registry as _registry
from .._checks import (
    FLOAT_DTYPES,
    check_backend,
    check_bool,
    check_choice,
    check_dims,
    check_float,
    check_int,
    check_same,
    check_shape,
    check_tensor,
)
from ..reference import pararnn as _ref
from ..reference.scan import acc_dtype, linear_recurrence_scan
from .scan import MAX_BLOCK_SIZE, linear_recurrence

log = logging.getLogger("nlseq")

OP = "pararnn"
CELLS = ("gru", "lstm")
STATE_SIZE = _ref.STATE_SIZE
MODES = ("auto", "newton", "sequential")
ON_NONCONVERGENCE = ("raise", "warn", "sequential")
DEFAULT_MAX_ITERS = 10

# Default Newton tolerance on the residual max_t |h_t − f(h_{t−1}, x_t)|, by the dtype of the
# inputs. Built-in cells iterate in float32 (float64 for float64), whose rounding floor for O(1)
# states is ~1e-6; half-precision outputs are rounded to 2^-9 (bf16) / 2^-12 (fp16) anyway.
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def default_tol(dtype: torch.dtype) -> float:
    return DEFAULT_TOL.get(dtype, 1e-5)


@dataclass(frozen=True)
class NewtonInfo:
    """What a Newton solve did: ``iterations`` (linear solves), the final ``residual``
    max_t |h_t − f(h_{t−1}, x_t)| of the Newton iterate, the ``tol`` it was held to, and
    ``fallback`` = True when it did not converge and the result came from a sequential pass
    (on_nonconvergence="sequential"). ``iterations`` is an int and ``residual`` a float, from
    ``nlseq.pararnn``, ``newton_solve`` and the modules' ``last_info`` alike; only inside a
    ``torch.compile`` graph, where a host number would break the graph, ``residual`` (and
    ``iterations`` of the built-in cells) stay 0-dim tensors. With mode="sequential" there is no
    Newton iterate: iterations = 0, residual = 0.
    """

    iterations: Union[int, Tensor]
    residual: Union[float, Tensor]
    tol: float
    mode: str
    on_nonconvergence: str
    # nlseq.nn.ParaGRU / ParaLSTM only: how many forwards of this module so far finished with the
    # sequential fallback (Newton missed tol; on_nonconvergence="sequential", the modules' default)
    fallbacks: int = 0

    @property
    def converged(self) -> bool:
        return bool(float(self.residual) <= self.tol)

    @property
    def fallback(self) -> bool:
        return self.mode == "newton" and self.on_nonconvergence == "sequential" and not self.converged


# ---------------------------------------------------------------- launchers, one set per backend
def _ext_ops():
    _registry._extension()  # loading nlseq._C registers the nlseq_ext ops
    return torch.ops.nlseq_ext


def _fwd_compiled(cell, U, A, P, s0, max_iters, tol):
    return tuple(_ext_ops().pararnn_fwd(cell, U, A, P, s0, max_iters, tol))


def _bwd_compiled(cell, U, A, P, s0, S_all, dS, ds_last):
    dU, dA, dP, ds0 = _ext_ops().pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last)
    return dU, dA, (dP if cell == "lstm" else None), ds0


def _seq_compiled(cell, U, A, P, s0):
    return _ext_ops().pararnn_seq_fwd(cell, U, A, P, s0)


def _triton_module():
    from ..kernels import pararnn as _tk  # written by the fused-kernel work (kernels/pararnn.py)

    return _tk


def _fwd_triton(cell, U, A, P, s0, max_iters, tol):
    return tuple(_triton_module().pararnn_fwd(cell, U, A, P, s0, max_iters, tol))


def _bwd_triton(cell, U, A, P, s0, S_all, dS, ds_last):
    return tuple(_triton_module().pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last))


_FWD = {"cuda": _fwd_compiled, "cpp": _fwd_compiled, "triton": _fwd_triton, "reference": _ref.pararnn_fwd_reference}
_BWD = {"cuda": _bwd_compiled, "cpp": _bwd_compiled, "triton": _bwd_triton, "reference": _ref.pararnn_bwd_reference}
_SEQ = {"cpp": _seq_compiled, "reference": _ref.pararnn_seq_fwd_reference}


@functools.lru_cache(maxsize=None)
def _implemented() -> tuple[str, ...]:
    """Backends that have the built-in cells: cpp and reference always; triton when
    kernels/pararnn.py exists; cuda when nlseq._C registers a CUDA kernel for pararnn_fwd."""
    names = ["cpp", "reference"]
    if importlib.util.find_spec("nlseq.kernels.pararnn") is not None:
        names.insert(0, "triton")
    ext, _ = _registry._extension()
    if ext is not None and torch._C._dispatch_has_kernel_for_dispatch_key("nlseq_ext::pararnn_fwd", "CUDA"):
        names.insert(0, "cuda")
        if torch._C._dispatch_has_kernel_for_dispatch_key("nlseq_ext::pararnn_seq_fwd", "CUDA"):
            _SEQ["cuda"] = _seq_compiled
    return tuple(names)


@_registry.assume_constant_result
def _resolve(backend: str, device: torch.device) -> str:
    return _registry.resolve(backend, device, OP, _implemented())


def _sequential(backend, cell, U, A, P, s0):
    """The exact sequential pass on ``backend`` (the reference loop where it has none)."""
    fn = _SEQ.get(backend)
    if fn is None:
        log.debug("nlseq.pararnn: backend %r has no sequential kernel; using the reference loop", backend)
        fn = _ref.pararnn_seq_fwd_reference
    return fn(cell, U, A, P, s0)


def _nonconvergence_message(where: str, residual: float, tol: float, iters: int, max_iters: int) -> str:
    if not math.isfinite(residual):
        return (
            f"{where}: Newton stopped at iteration {iters}: the residual max_t |h_t - f(h_(t-1), x_t)| is "
            f"{residual} (not finite). Either the inputs (x / U, h0 / s0, the parameters) contain NaN or inf, or "
            f"the iterates overflowed; more iterations cannot fix it. Check the inputs for NaN/inf, or pass "
            f"on_nonconvergence='sequential' (exact sequential pass) or 'warn'."
        )
    return (
        f"{where}: Newton did not converge: residual max_t |h_t - f(h_(t-1), x_t)| = {residual:.3e} > tol = {tol:.1e} "
        f"after {iters} iteration(s) (max_iters = {max_iters}). The cell may not be contracting (large recurrent "
        f"weights); raise max_iters, loosen tol, or pass on_nonconvergence='sequential' (exact sequential pass) "
        f"or 'warn'."
    )


# ---------------------------------------------------------------- registered ops (autograd boundary)
@torch.library.custom_op("nlseq::pararnn", mutates_args=())
def _pararnn_op(
    cell: str,
    U: Tensor,
    A: Tensor,
    P: Optional[Tensor],
    s0: Optional[Tensor],
    max_iters: int,
    tol: float,
    mode: str,
    on_nonconvergence: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    if mode == "sequential":
        S_all = _sequential(backend, cell, U, A, P, s0)
        return (
            S_all,
            torch.zeros((), dtype=torch.int64, device=U.device),
            torch.zeros((), dtype=A.dtype, device=U.device),
        )
    S_all, iters, residual = _FWD[backend](cell, U, A, P, s0, max_iters, tol)
    r = float(residual)
    if math.isfinite(r) and bool(torch.isnan(S_all).any()):
        # the fused kernels measure the residual at chunk boundaries only (inside a chunk the
        # solve is exact), so a NaN born inside a chunk can miss it: the returned solution's
        # residual is NaN wherever it is NaN, and so is the reported one (docs/numerics.md)
        residual = torch.full_like(residual, math.nan)
        r = math.nan
    if not r <= tol:  # NaN counts as not converged
        msg = _nonconvergence_message(f"nlseq.pararnn ({cell}, backend {backend!r})", r, tol, int(iters), max_iters)
        if on_nonconvergence == "raise":
            raise RuntimeError(msg)
        if on_nonconvergence == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        else:
            log.warning("%s Finishing with a sequential pass as requested.", msg)
            S_all = _sequential(backend, cell, U, A, P, s0)
    return S_all, iters.clone(), residual.clone()


@_pararnn_op.register_fake
def _(cell, U, A, P, s0, max_iters, tol, mode, on_nonconvergence, backend):
    B, T, _, N = U.shape
    return (U.new_empty(B, T, STATE_SIZE[cell], N), U.new_empty((), dtype=torch.int64), U.new_empty((), dtype=A.dtype))


@torch.library.custom_op("nlseq::pararnn_backward", mutates_args=())
def _pararnn_backward_op(
    cell: str,
    U: Tensor,
    A: Tensor,
    P: Optional[Tensor],
    s0: Optional[Tensor],
    S_all: Tensor,
    dS: Tensor,
    ds_last: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dU, dA, dP, ds0 = _BWD[backend](cell, U, A, P, s0, S_all, dS, ds_last)
    if dP is None:  # the GRU has no peepholes; the op always returns a [2, N] tensor
        dP = A.new_zeros(2, A.shape[1])
    return dU, dA, dP, ds0


@_pararnn_backward_op.register_fake
def _(cell, U, A, P, s0, S_all, dS, ds_last, backend):
    B, T, _, N = U.shape
    return torch.empty_like(U), torch.empty_like(A), A.new_empty(2, N), U.new_empty(B, STATE_SIZE[cell], N)


def _setup_context(ctx, inputs, output):
    cell, U, A, P, s0, max_iters, tol, mode, on_nonconvergence, backend = inputs
    S_all, iters, residual = output
    ctx.save_for_backward(U, A, P, s0, S_all)
    ctx.cell, ctx.backend = cell, backend
    ctx.mark_non_differentiable(iters, residual)


def _backward(ctx, dS, _diters, _dresidual):
    U, A, P, s0, S_all = ctx.saved_tensors
    B, T, S, N = S_all.shape
    dS = torch.zeros_like(S_all) if dS is None else dS.contiguous()
    ds_last = S_all.new_zeros(B, S, N)  # the final state is a view of S_all: its gradient is in dS
    dU, dA, dP, ds0 = _pararnn_backward_op(ctx.cell, U, A, P, s0, S_all, dS, ds_last, ctx.backend)
    return (None, dU, dA, dP if P is not None else None, ds0 if s0 is not None else None, None, None, None, None, None)


_pararnn_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public function, built-in cells
def _resolve_mode(mode: str, backend: str) -> str:
    if mode == "auto":  # the exact sequential kernel is the fastest solver on a CPU (few cores)
        return "sequential" if backend == "cpp" else "newton"
    return mode


PARARNN_LAYOUT = "(U [B, T, 3, N], A [3, N], P [2, N] (lstm only), s0 [B, S, N], S = 1 gru / 2 lstm)"


def check_pararnn_inputs(op: str, cell, U, A, P, s0, mode, on_nonconvergence, layout: str = PARARNN_LAYOUT) -> None:
    """The checks of ``nlseq.pararnn``'s cell, tensors and choices, shared with nlseq.distributed
    (``op`` names the caller in the messages, ``layout`` its shapes)."""
    check_choice(op, "cell", cell, CELLS)
    S = STATE_SIZE[cell]
    check_tensor("U", U, op=op, ndim=4, layout=layout)
    check_tensor("A", A, op=op, ndim=2, layout=layout, device=U.device, device_of="U")
    if cell == "lstm":
        if P is None:
            raise ValueError(f"nlseq.{op}: the lstm cell needs the peepholes P [2, N], got None")
        check_tensor("P", P, op=op, ndim=2, layout=layout, device=U.device, device_of="U")
    elif P is not None:
        raise ValueError(f"nlseq.{op}: the gru cell has no peepholes; pass P=None, got {type(P).__name__}")
    if s0 is not None:
        check_tensor("s0", s0, op=op, ndim=3, layout=layout)
        check_same(op, "U", U, s0=s0)
    if U.shape[2] != 3:
        raise ValueError(f"nlseq.{op}: U must have shape [B, T, 3, N] (three gates), got {tuple(U.shape)}")
    # U is the data and fixes B, T, N, unless the other tensors agree with each other against it
    # (then U is the odd one: check_dims blames it); otherwise each is checked against U's shape.
    others = {n: (t, d) for n, t, d in (("A", A, "_ N"), ("P", P, "_ N"), ("s0", s0, "B _ N")) if t is not None}
    n_others = {t.shape[-1] for t, _ in others.values()}
    if len(others) >= 2 and len(n_others) == 1 and n_others != {U.shape[-1]}:
        check_dims(op, layout, U=(U, "B T _ N"), **others)
    B, _, _, N = U.shape
    check_shape("A", A, (3, N), op=op, layout=layout)
    if P is not None:
        check_shape("P", P, (2, N), op=op, layout=layout)
    if s0 is not None:
        check_shape("s0", s0, (B, S, N), op=op, layout=layout)
    check_choice(op, "mode", mode, MODES)
    check_choice(op, "on_nonconvergence", on_nonconvergence, ON_NONCONVERGENCE)


def pararnn(
    cell: str,
    U: Tensor,
    A: Tensor,
    P: Optional[Tensor] = None,
    s0: Optional[Tensor] = None,
    *,
    mode: str = "auto",
    max_iters: Optional[int] = None,
    tol: Optional[float] = None,
    on_nonconvergence: str = "raise",
    backend: str = "auto",
    return_info: bool = False,
):
    """Run a built-in ParaRNN cell (docs/spec.md §1.3) over a sequence, from its projected input.

    Args:
        cell: "gru" (state h, S = 1) or "lstm" (state [c, h], S = 2).
        U: [B, T, 3, N] pre-activations Wx + b (gates z, r, c / f, o, c̃); float32, bfloat16,
            float16 or float64 (float64: cpp and reference backends).
        A: [3, N] recurrent weights; P: [2, N] LSTM peepholes (p_f, p_o), None for the GRU.
        s0: [B, S, N] initial state (GRU: h; LSTM: c, h), None for zeros; dtype of U.
        mode: "newton" (parallel Newton, docs/spec.md §1.1), "sequential" (exact sequential pass), or
            "auto": sequential on the cpp backend (the fastest choice on a CPU), newton elsewhere.
        max_iters: most Newton linear solves (default 10); tol: residual bound (default by dtype,
            ``DEFAULT_TOL``: 1e-5 for float32 inputs).
        on_nonconvergence: "raise" (RuntimeError naming the residual), "warn", or "sequential"
            (finish exactly with a sequential pass, logged as a warning on the ``nlseq`` logger).
        backend: "auto", "cuda", "triton", "cpp" or "reference".

    Returns S_all [B, T, S, N] in U's dtype (y = S_all[:, :, -1], final state S_all[:, -1]); with
    ``return_info=True``, ``(S_all, NewtonInfo)``. Differentiable in U, A, P and s0: the backward is
    the exact gradient at the returned solution (docs/spec.md §1.2), never unrolled iterations.
    Precision: every backend carries state and accumulates in float32 (float64 for float64).
    """
    op = OP
    check_pararnn_inputs(op, cell, U, A, P, s0, mode, on_nonconvergence)
    S = STATE_SIZE[cell]
    B, T, _, N = U.shape
    check_bool(op, "return_info", return_info)
    check_backend(op, backend)
    max_iters = DEFAULT_MAX_ITERS if max_iters is None else check_int(op, "max_iters", max_iters, lo=0)
    tol = default_tol(U.dtype) if tol is None else check_float(op, "tol", tol, lo=0.0)

    name = _resolve(backend, U.device)
    if U.dtype == torch.float64 and name in ("cuda", "triton"):
        raise TypeError(
            f"nlseq.{op}: backend {name!r} accepts float32, bfloat16 and float16; float64 runs on "
            f"backend='cpp' or 'reference'"
        )
    mode = _resolve_mode(mode, name)
    acc = acc_dtype(U.dtype)
    A = A.to(acc).contiguous()
    P = None if P is None else P.to(acc).contiguous()
    if T == 0:
        S_all = U.new_zeros(B, 0, S, N)
        iters, residual = U.new_zeros((), dtype=torch.int64), U.new_zeros((), dtype=acc)
    else:
        S_all, iters, residual = _pararnn_op(
            cell,
            U.contiguous(),
            A,
            P,
            None if s0 is None else s0.contiguous(),
            max_iters,
            tol,
            mode,
            on_nonconvergence,
            name,
        )
    if return_info:
        if not torch.compiler.is_compiling():  # Python numbers, as newton_solve's (one read, after the solve)
            iters, residual = int(iters), float(residual)
        return S_all, NewtonInfo(iters, residual, tol, mode, on_nonconvergence)
    return S_all


# ---------------------------------------------------------------- newton_solve: user cells
JACOBIANS = ("diag", "block", "dense")


def _call(step, params, h_prev, x):
    return step(h_prev, x, *params) if params else step(h_prev, x)


def _jacobian(step, params, h_prev, x, structure, K):
    """(f, J) at h_prev for all (b, t): forward-mode JVPs of ``step`` (torch.func.jvp).

    diag: J [B, T, N] from one JVP with a tangent of ones (valid because J is diagonal);
    block: h [B, T, *, K], J [B, T, N, K, K] (N = prod(*)) from K JVPs with one-hot tangents;
    dense: h [B, T, *], J [B, T, D, D] (D = prod(*)) from D JVPs.
    """
    fn = lambda h: _call(step, params, h, x)  # noqa: E731
    if structure == "diag":
        f, col = torch.func.jvp(fn, (h_prev,), (torch.ones_like(h_prev),))
        return f, col.reshape(*col.shape[:2], -1)
    B, T = h_prev.shape[:2]
    D = K if structure == "block" else h_prev[0, 0].numel()
    eye = torch.eye(D, dtype=h_prev.dtype, device=h_prev.device)
    cols = []
    f = None
    for k in range(D):
        if structure == "block":
            tangent = eye[k].expand_as(h_prev)
        else:
            tangent = eye[k].reshape(h_prev.shape[2:]).expand_as(h_prev)
        f, col = torch.func.jvp(fn, (h_prev,), (tangent.contiguous(),))
        cols.append(col.reshape(B, T, -1, K) if structure == "block" else col.reshape(B, T, D))
    J = torch.stack(cols, dim=-1)  # [..., D(row i), D(col k)] = ∂f_i/∂h_k
    return f, J


class _ImplicitGrad(torch.autograd.Function):
    """Identity on y = f(h*_{t−1}, x_t) whose backward turns ∂L/∂h into λ (docs/spec.md §1.2):
    λ_t = g_t + J_{t+1}ᵀ λ_{t+1}, a reverse linear recurrence with the Jacobians at the solution.
    Autograd then carries λ through y's graph: the VJPs of f for x, the parameters and h0."""

    @staticmethod
    def forward(ctx, y, J, structure, backend):
        ctx.save_for_backward(J)
        ctx.structure, ctx.backend = structure, backend
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        (J,) = ctx.saved_tensors
        lam = _solve_adjoint(J, g, ctx.structure, ctx.backend)
        return lam, None, None, None


def _solve_adjoint(J, g, structure, backend):
    shape = g.shape
    B, T = shape[:2]
    zero = torch.zeros_like(J[:, :1])
    if structure == "diag":
        A_next = torch.cat([J[:, 1:], zero], dim=1)
        lam, _ = linear_recurrence(A_next, g.reshape(B, T, -1).contiguous(), reverse=True, backend=backend)
    elif structure == "block":
        A_next = torch.cat([J[:, 1:].transpose(-1, -2), zero], dim=1)
        lam, _ = linear_recurrence(
            A_next.contiguous(), g.reshape(B, T, -1, J.shape[-1]).contiguous(), reverse=True, backend=backend
        )
    else:
        A_next = torch.cat([J[:, 1:].transpose(-1, -2), zero], dim=1)
        lam, _ = linear_recurrence_scan(A_next[:, :, None], g.reshape(B, T, 1, -1), None, True)
    return lam.reshape(shape)


def _newton_step(J, f, h_prev, H, structure, damping, h0_flat, backend):
    """Next iterate: H + ω δ with δ_t = J_t δ_{t−1} − (H_t − f_t), δ_0 = 0 (docs/spec.md §1.1).

    For ω = 1 it solves directly for the new iterate: s_t = J_t s_{t−1} + (f_t − J_t h_prev_t),
    s_0 = h0 (the same thing, one fewer subtraction of nearly equal numbers)."""
    B, T = H.shape[:2]
    if structure == "diag":
        Jf = J.reshape(B, T, -1)
        if damping == 1.0:
            rhs = (f - (J.reshape(h_prev.shape) * h_prev)).reshape(B, T, -1)
            new, _ = linear_recurrence(Jf, rhs.contiguous(), h0_flat, backend=backend)
            return new.reshape(H.shape)
        delta, _ = linear_recurrence(Jf, (f - H).reshape(B, T, -1).contiguous(), backend=backend)
        return H + damping * delta.reshape(H.shape)
    if structure == "block":
        K = J.shape[-1]
        hp = h_prev.reshape(B, T, -1, K)
        if damping == 1.0:
            rhs = f.reshape(B, T, -1, K) - (J @ hp.unsqueeze(-1)).squeeze(-1)
            new, _ = linear_recurrence(J, rhs.contiguous(), h0_flat, backend=backend)
            return new.reshape(H.shape)
        delta, _ = linear_recurrence(J, (f - H).reshape(B, T, -1, K).contiguous(), backend=backend)
        return H + damping * delta.reshape(H.shape)
    D = J.shape[-1]
    Jd = J[:, :, None]  # [B, T, 1, D, D]: the reference scan takes any block size
    hp = h_prev.reshape(B, T, 1, D)
    h0d = None if h0_flat is None else h0_flat.reshape(B, 1, D)
    if damping == 1.0:
        rhs = f.reshape(B, T, 1, D) - (Jd @ hp.unsqueeze(-1)).squeeze(-1)
        new, _ = linear_recurrence_scan(Jd, rhs, h0d)
        return new.reshape(H.shape)
    delta, _ = linear_recurrence_scan(Jd, (f - H).reshape(B, T, 1, D), None)
    return H + damping * delta.reshape(H.shape)


def newton_solve(
    step: Union[Callable[..., Tensor], torch.nn.Module],
    x: Tensor,
    h0: Optional[Tensor] = None,
    *,
    params: Sequence[Tensor] = (),
    jacobian: str = "diag",
    block_size: Optional[int] = None,
    max_iters: Optional[int] = None,
    tol: Optional[float] = None,
    damping: float = 1.0,
    on_nonconvergence: str = "raise",
    backend: str = "auto",
    return_info: bool = False,
):
    """Solve h_t = f(h_{t−1}, x_t), t = 1..T, for all t at once by Newton's method (docs/spec.md §1.1).

    ``step(h_prev, x)`` (or ``step(h_prev, x, *params)`` when ``params`` is given) evaluates the
    cell for all time steps at once: h_prev [B, T, *state] and x [B, T, ...] -> [B, T, *state]. It
    must act independently on each (b, t) and be differentiable (torch.func traces it).

    Parameters and gradients: the backward goes through autograd on one evaluation of ``step`` at
    the solution, so gradients reach every tensor ``step`` uses — x, h0, the parameters of an
    ``nn.Module`` step, tensors closed over by a plain function, and tensors passed in ``params``
    (the explicit form, convenient for ``gradcheck``). The iterations themselves run without
    autograd: the gradient is the implicit one of docs/spec.md §1.2 (λ_t = g_t + J_{t+1}ᵀ λ_{t+1} solved
    by ``nlseq.linear_recurrence`` in reverse, then the VJP of f), never unrolled Newton.

    Args:
        x: [B, T, ...] inputs. h0: [B, *state] initial state (None: zeros).
        jacobian: structure of J_t = ∂f/∂h_{t−1}, which you promise:
            "diag"  — elementwise (state any shape, N = its size); J from one JVP;
            "block" — h [B, T, *, K] with K = ``block_size`` in 1..4, coupling only within the
                      last dim; J from K JVPs;
            "dense" — any coupling; J [D, D] (D = state size) from D JVPs and a reference scan
                      with D×D combines: O(D³) per combine, for small D only (DEER).
        max_iters: most Newton linear solves (default 10). tol: bound on the residual
            max |h_t − f(h_{t−1}, x_t)| (default by dtype: 1e-10 float64, 1e-5 float32, 1e-4 half).
        damping: ω in h ← h + ω δ (1 = plain Newton; 0 < ω <= 1).
        on_nonconvergence: "raise" (RuntimeError naming the residual), "warn", or "sequential"
            (finish exactly with a sequential pass over t, calling ``step`` on [B, 1, ...] slices).
        backend: backend of the linear recurrences ("auto", "cuda", "triton", "cpp",
            "reference"); "dense" always uses the reference scan.

    Returns h [B, T, *state] (h_t for t = 1..T), or ``(h, NewtonInfo)`` with ``return_info``.
    The initial guess is h_t = f(0, x_t) (h0 at t = 1), as in the paper. The returned h is
    f(h*_{t−1}, x_t) evaluated at the final iterate (one more cell evaluation, which also
    carries the autograd graph).
    """
    op = "newton_solve"
    if not callable(step):
        raise TypeError(f"nlseq.{op}: step must be a callable or an nn.Module, got {type(step).__name__}")
    check_tensor("x", x, op=op)
    if x.dim() < 2:
        raise ValueError(f"nlseq.{op}: x must have shape [B, T, ...], got {tuple(x.shape)}")
    if h0 is not None:
        check_tensor("h0", h0, op=op, device=x.device, device_of="x")
        if h0.dim() < 1 or h0.shape[0] != x.shape[0]:
            raise ValueError(
                f"nlseq.{op}: h0 must have shape [B, *state] with B = x.shape[0] = {x.shape[0]}, got {tuple(h0.shape)}"
            )
    check_choice(op, "jacobian", jacobian, JACOBIANS)
    if jacobian == "block":
        if block_size is None:
            raise ValueError(f"nlseq.{op}: jacobian='block' needs block_size in 1..{MAX_BLOCK_SIZE}, got None")
        block_size = check_int(op, "block_size", block_size, lo=1, hi=MAX_BLOCK_SIZE)
    elif block_size is not None:
        raise ValueError(
            f"nlseq.{op}: block_size is only used with jacobian='block', got {block_size!r} with jacobian={jacobian!r}"
        )
    check_choice(op, "on_nonconvergence", on_nonconvergence, ON_NONCONVERGENCE)
    damping = check_float(op, "damping", damping, lo=0.0, hi=1.0, lo_open=True)
    max_iters = None if max_iters is None else check_int(op, "max_iters", max_iters, lo=0)
    tol = None if tol is None else check_float(op, "tol", tol, lo=0.0)
    check_bool(op, "return_info", return_info)
    check_backend(op, backend)
    if isinstance(params, torch.Tensor) or not isinstance(params, (tuple, list)):
        raise TypeError(f"nlseq.{op}: params must be a tuple or list of tensors, got {type(params).__name__}")
    params = tuple(params)
    for i, prm in enumerate(params):
        check_tensor(
            f"params[{i}]",
            prm,
            op=op,
            dtypes=tuple(FLOAT_DTYPES) + (torch.complex64, torch.complex128, torch.int32, torch.int64, torch.bool),
        )
    if isinstance(step, torch.nn.Module) and params:
        raise ValueError(f"nlseq.{op}: pass either an nn.Module step or params, not both")

    B, T = x.shape[:2]
    with torch.no_grad():
        xd = x.detach()
        pd = tuple(p.detach() for p in params)
        # Initial guess f(0, x_t) (h0 at t = 1); the cell's output defines the state's shape.
        state_shape = _state_shape(step, pd, xd, h0)
        zeros_prev = torch.zeros(B, T, *state_shape, dtype=_state_dtype(x, h0), device=x.device)
        if h0 is not None:
            zeros_prev[:, 0] = h0.detach()
        H = _call(step, pd, zeros_prev, xd)
        _check_step_output(H, zeros_prev, op)
        del zeros_prev
    if jacobian == "block" and (len(state_shape) < 1 or state_shape[-1] != block_size):
        raise ValueError(
            f"nlseq.{op}: jacobian='block' needs a state [B, T, ..., K] with K = block_size = "
            f"{block_size}, got state shape {tuple(state_shape)}"
        )
    max_iters = DEFAULT_MAX_ITERS if max_iters is None else max_iters
    tol = default_tol(H.dtype) if tol is None else tol
    name = _registry.resolve(backend, x.device, "linear_recurrence", ("cuda", "triton", "cpp", "reference"))
    h0d = None if h0 is None else h0.detach()
    if h0d is None:
        h0_flat = None
    elif jacobian == "diag":
        h0_flat = h0d.reshape(B, -1)
    elif jacobian == "block":
        h0_flat = h0d.reshape(B, -1, block_size)
    else:
        h0_flat = h0d.reshape(B, -1)

    def shift(Hc):
        first = torch.zeros_like(Hc[:, :1]) if h0d is None else h0d.unsqueeze(1).to(Hc.dtype)
        return torch.cat([first, Hc[:, :-1]], dim=1)

    iters = 0
    if torch.compiler.is_compiling():
        # No host read of the residual inside a graph: max_iters Newton steps (steps past convergence
        # add ~0), the residual checked on the device, NewtonInfo with the residual as a tensor.
        if on_nonconvergence == "sequential":
            raise ValueError(
                f"nlseq.{op}: on_nonconvergence='sequential' needs a host decision and cannot run "
                "under torch.compile; use 'raise' (checked on the device) or 'warn'"
            )
        with torch.no_grad():
            for _ in range(max_iters):
                h_prev = shift(H)
                f, J = _jacobian(step, pd, h_prev, xd, jacobian, block_size)
                H = _newton_step(J, f, h_prev, H, jacobian, damping, h0_flat, name)
            h_prev = shift(H)
            f, J = _jacobian(step, pd, h_prev, xd, jacobian, block_size)
            residual = (H - f).abs().amax() if H.numel() else H.new_zeros(())
            if on_nonconvergence == "raise":  # NaN fails it too
                torch._assert_async(
                    residual <= tol,
                    f"nlseq.{op}: Newton did not reach the residual tol = {tol:g} in "
                    f"max_iters = {max_iters} iterations (or the residual is not finite)",
                )
        iters = max_iters
        return _implicit_output(
            step,
            params,
            x,
            h0,
            H,
            J,
            jacobian,
            name,
            return_info,
            NewtonInfo(iters, residual, tol, "newton", on_nonconvergence),
        )
    with torch.no_grad():
        while True:
            h_prev = shift(H)
            f, J = _jacobian(step, pd, h_prev, xd, jacobian, block_size)
            _check_step_output(f, H, op)
            residual = float((H - f).abs().max()) if H.numel() else 0.0
            # a NaN/inf residual stops at once: no further iteration makes it finite (docs/numerics.md)
            if residual <= tol or iters >= max_iters or not math.isfinite(residual):
                break
            H = _newton_step(J, f, h_prev, H, jacobian, damping, h0_flat, name)
            iters += 1
        converged = residual <= tol
        if not converged:
            msg = _nonconvergence_message(f"nlseq.{op}", residual, tol, iters, max_iters)
            if on_nonconvergence == "raise":
                raise RuntimeError(msg)
            if on_nonconvergence == "warn":
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            else:
                log.warning("%s Finishing with a sequential pass as requested.", msg)
                H = _sequential_user(step, pd, xd, h0d, H)
                h_prev = shift(H)
                _, J = _jacobian(step, pd, h_prev, xd, jacobian, block_size)

    return _implicit_output(
        step,
        params,
        x,
        h0,
        H,
        J,
        jacobian,
        name,
        return_info,
        NewtonInfo(iters, residual, tol, "newton", on_nonconvergence),
    )


def _implicit_output(step, params, x, h0, H, J, jacobian, name, return_info, info):
    # One evaluation at the solution with autograd on: y = f(h*_{t−1}, x_t). h*_{t−1} is detached
    # for t >= 2 (its dependence is what λ accounts for) and is h0 itself at t = 1, so autograd
    # gives ∂L/∂h0 = J_1ᵀ λ_1; _ImplicitGrad turns ∂L/∂h into λ on the way in.
    first = torch.zeros_like(H[:, :1]) if h0 is None else h0.unsqueeze(1).to(H.dtype)
    h_prev = torch.cat([first, H[:, :-1].detach()], dim=1)
    y = _call(step, params, h_prev, x)
    if torch.is_grad_enabled() and y.requires_grad:
        y = _ImplicitGrad.apply(y, J, jacobian, name)
    return (y, info) if return_info else y


def _check_step_output(f, H: Tensor, op: str) -> None:
    """step must keep returning a tensor of the state's shape and dtype: a cell whose output
    shape changes would otherwise be broadcast into a wrong answer."""
    if not isinstance(f, Tensor):
        raise TypeError(f"nlseq.{op}: step must return a tensor [B, T, *state], got {type(f).__name__}")
    if f.shape != H.shape:
        raise ValueError(
            f"nlseq.{op}: step must return the state's shape [B, T, *state] = {tuple(H.shape)} for "
            f"h_prev of that shape, got {tuple(f.shape)}"
        )
    if f.dtype != H.dtype:
        raise TypeError(f"nlseq.{op}: step must return the state's dtype {H.dtype}, got {f.dtype}")


def _state_dtype(x: Tensor, h0: Optional[Tensor]) -> torch.dtype:
    return x.dtype if h0 is None else h0.dtype


def _state_shape(step, params, x, h0):
    """Shape of one state: the cell evaluated on x's first step from h0, or, without h0, from a
    scalar zero that broadcasts (cells that index the state need h0 to be given)."""
    B = x.shape[0]
    if h0 is not None:
        check_tensor("h0", h0, op="newton_solve")
        try:
            out = _call(step, params, h0.detach().unsqueeze(1), x[:, :1])
        except (RuntimeError, IndexError, TypeError, ValueError) as e:
            raise ValueError(
                f"nlseq.newton_solve: h0 must have shape [B, *state] with state the shape of one "
                f"output of step; step(h0[:, None], x[:, :1]) failed for h0 of shape "
                f"{tuple(h0.shape)}"
            ) from e
        if out.dim() < 2 or tuple(out.shape) != (B, 1, *h0.shape[1:]):
            raise ValueError(
                f"nlseq.newton_solve: h0 must have shape [B, *state] = {(B, *out.shape[2:])} "
                f"(step returned {tuple(out.shape)} for one step), got {tuple(h0.shape)}"
            )
        return tuple(h0.shape[1:])
    try:
        out = _call(step, params, torch.zeros((), dtype=x.dtype, device=x.device), x[:, :1])
    except (RuntimeError, IndexError, TypeError, ValueError) as e:  # the cell needs a shaped state
        raise ValueError(
            "nlseq.newton_solve: with h0=None the state shape is found by calling step(h_prev, x) "
            "with a zero scalar h_prev, which failed; pass h0 (zeros for a zero initial state)"
        ) from e
    if out.dim() < 2 or out.shape[:2] != (B, 1):
        raise ValueError(
            "nlseq.newton_solve: step(h_prev, x) must return [B, T, *state]; with h0=None it is "
            f"probed with a zero scalar h_prev and returned shape {tuple(out.shape)}; pass h0"
        )
    return tuple(out.shape[2:])


def _sequential_user(step, params, x, h0, H_like):
    """Exact sequential pass h_t = f(h_{t−1}, x_t), one [B, 1, ...] slice at a time."""
    T = x.shape[1]
    h = torch.zeros_like(H_like[:, :1]) if h0 is None else h0.unsqueeze(1).to(H_like.dtype)
    out = []
    for t in range(T):
        h = _call(step, params, h, x[:, t : t + 1])
        out.append(h)
    return torch.cat(out, dim=1)
