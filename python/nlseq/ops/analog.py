"""``nlseq.analog_mvm``: one fused pass DAC → crossbar MVM → noise → NL-ADC (docs/spec.md §3.1–3.2).

Layers (docs/design.md): ``analog_mvm`` (checks, defaults, layouts) → the ``torch.library`` custom
ops ``nlseq::analog_mvm`` / ``nlseq::analog_mvm_backward`` (autograd and fake-tensor rules, one
definition) → per-backend launchers in ``_FWD`` → kernels (csrc/cpu, csrc/cuda, kernels/analog.py,
python/nlseq/reference/analog.py). The math of each step is documented in the reference module.

Training goes through the quantisers with a straight-through gradient of the ideal activation
(docs/spec.md §3.2): with u = DAC(x) @ weightᵀ the noiseless pre-activation,
dL/du = dL/dy · f'(u), dL/dx = (dL/du @ weight)·[|x| <= x_max], dL/dweight = (dL/du)ᵀ @ DAC(x).
The backward is two GEMMs and runs in PyTorch on every backend.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import registry as _registry
from .._checks import check_backend, check_float, check_int, check_shape, check_tensor, check_values
from ..reference import analog as _ref

OP = "analog_mvm"
IMPLEMENTED = ("cuda", "triton", "cpp", "reference")
ACTIVATIONS = ("sigmoid", "tanh", "hardtanh", "identity")
MAX_BITS = 16
_F32 = (torch.float32,)
_F32_F64 = (torch.float32, torch.float64)


# ---------------------------------------------------------------- launchers, one per backend
def _fwd_compiled(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset):
    offset = int(offset)
    _registry._extension()  # loading nlseq._C registers the nlseq_ext ops
    return torch.ops.nlseq_ext.analog_mvm_fwd(
        x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset
    )


def _fwd_triton(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset):
    from ..kernels import analog as _tk

    offset = int(offset)
    return _tk.analog_mvm_fwd(
        x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset
    )


def _fwd_reference(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset):
    return _ref.analog_mvm(
        x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, int(offset)
    )


_FWD = {"cuda": _fwd_compiled, "cpp": _fwd_compiled, "triton": _fwd_triton, "reference": _fwd_reference}


def parse_act(act: str) -> list[tuple[str, int]]:
    """ "sigmoid" -> [("sigmoid", -1)] (every column); "sigmoid:256,tanh:128" -> column groups."""
    groups = []
    for part in act.split(","):
        name, _, count = part.partition(":")
        if name not in ACTIVATIONS:
            raise ValueError(f"nlseq.{OP}: act names must be in {ACTIVATIONS}, got {name!r} in {act!r}")
        if count and not (count.isdigit() and int(count) > 0):
            raise ValueError(
                f'nlseq.{OP}: act group counts must be positive ints ("sigmoid:256"), got {count!r} in {act!r}'
            )
        groups.append((name, int(count) if count else -1))
    if len(groups) > 1 and any(c < 0 for _, c in groups):
        raise ValueError(
            f'nlseq.{OP}: act with several groups needs a count for each ("sigmoid:256,tanh:128"), got {act!r}'
        )
    return groups


def _activation_grad(u: Tensor, act: str) -> Tensor:
    """f'(u) of the ideal activation per column (the straight-through estimator of the NL-ADC)."""
    groups = parse_act(act)
    if len(groups) > 1:
        parts, start = [], 0
        for name, count in groups:
            parts.append(_activation_grad(u[:, start : start + count], name))
            start += count
        return torch.cat(parts, dim=1)
    act = groups[0][0]
    if act == "sigmoid":
        s = torch.sigmoid(u)
        return s * (1 - s)
    if act == "tanh":
        return 1 - torch.tanh(u) ** 2
    if act == "hardtanh":
        return ((u >= -1) & (u <= 1)).to(u.dtype)
    return torch.ones_like(u)


def analog_mvm_backward_reference(grad_y, x, weight, in_bits, x_max, act):
    xq = _ref.dac_quantize(x, in_bits, x_max)
    grad_u = grad_y * _activation_grad(xq @ weight.t(), act)
    grad_x = (grad_u @ weight) * (x.abs() <= x_max).to(x.dtype)
    grad_w = grad_u.t() @ xq
    return grad_x, grad_w


# ---------------------------------------------------------------- registered ops (autograd boundary)
@torch.library.custom_op("nlseq::analog_mvm", mutates_args=())
def _analog_mvm_op(
    x: Tensor,
    weight: Tensor,
    col_scale: Tensor,
    thresholds: Tensor,
    levels: Tensor,
    noise: Optional[Tensor],
    in_bits: int,
    x_max: float,
    noise_a: float,
    noise_b: float,
    seed: int,
    offset: Tensor,
    act: str,
    backend: str,
) -> Tensor:
    # offset: 0-dim int64 tensor (a module's noise counter stays a tensor, so torch.compile neither
    # reads it on the host nor recompiles when it moves)
    return _FWD[backend](
        x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset
    )


@_analog_mvm_op.register_fake
def _(x, weight, col_scale, thresholds, levels, noise, in_bits, x_max, noise_a, noise_b, seed, offset, act, backend):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("nlseq::analog_mvm_backward", mutates_args=())
def _analog_mvm_backward_op(
    grad_y: Tensor, x: Tensor, weight: Tensor, in_bits: int, x_max: float, act: str
) -> tuple[Tensor, Tensor]:
    return analog_mvm_backward_reference(grad_y, x, weight, in_bits, x_max, act)


@_analog_mvm_backward_op.register_fake
def _(grad_y, x, weight, in_bits, x_max, act):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight = inputs[0], inputs[1]
    ctx.save_for_backward(x, weight)
    ctx.in_bits, ctx.x_max, ctx.act = inputs[6], inputs[7], inputs[12]


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x, grad_w = _analog_mvm_backward_op(grad_y.contiguous(), x, weight, ctx.in_bits, ctx.x_max, ctx.act)
    return grad_x, grad_w, None, None, None, None, None, None, None, None, None, None, None, None


_analog_mvm_op.register_autograd(_backward, setup_context=_setup_context)


def _offset_tensor(offset) -> Tensor:
    """The Philox offset as a 0-dim int64 CPU tensor: an int in [0, 2^63), or such a tensor (a module's counter)."""
    if isinstance(offset, Tensor):
        if offset.dim() != 0 or offset.dtype != torch.int64:
            raise ValueError(
                f"nlseq.{OP}: offset must be an int or a 0-dim int64 tensor, got a {offset.dtype} tensor "
                f"of shape {tuple(offset.shape)}"
            )
        return offset.cpu() if offset.device.type != "cpu" else offset
    return torch.tensor(check_int(OP, "offset", offset, lo=0, hi=2**63 - 1), dtype=torch.int64)


# ---------------------------------------------------------------- public function
_LAYOUT = "(x [M, K], weight [N, K], col_scale [N], thresholds [N, L-1] or [L-1], levels [N, L] or [L], noise [M, N])"


def analog_mvm(
    x: Tensor,
    weight: Tensor,
    col_scale: Tensor,
    thresholds: Tensor,
    levels: Tensor,
    *,
    in_bits: int = 0,
    x_max: float = 1.0,
    noise_a: float = 0.0,
    noise_b: float = 0.0,
    seed: int = 0,
    offset: "int | Tensor" = 0,
    noise: Optional[Tensor] = None,
    act: str = "identity",
    backend: str = "auto",
) -> Tensor:
    """Fused analog crossbar MVM with an NL-ADC on every output column (docs/spec.md §3).

    For each row m and column n (see python/nlseq/reference/analog.py for the exact definition):
    xq = DAC(x) (``in_bits`` over [−x_max, x_max], 0 = ideal), I = (xq @ weightᵀ)·col_scale (µA),
    I += sqrt(noise_a·Σ_k xq² + noise_b)·z with z ~ N(0, 1) from Philox keyed by (``seed``,
    ``offset``; an int or a 0-dim int64 tensor) (or the supplied ``noise`` [M, N]), code = #{k : I > thresholds[n, k]} found by
    binary search, y = levels[n, code].

    Shapes: x [..., K] (leading dims flattened), weight [N, K] (programmed weights, digital units),
    col_scale [N] (µA per digital unit), thresholds [N, L−1] or [L−1] (µA, non-decreasing along
    the last dim), levels [N, L] or [L], L = 2^bits with 1 <= bits <= 16; thresholds and levels
    may be float64 (``NLADC.thresholds`` / ``.levels`` as they are) and are rounded to float32. Returns y [..., N] in
    x's dtype. All math in float32 (inputs of other dtypes are converted). ``act`` names the
    ideal activation whose derivative is the straight-through gradient ("sigmoid", "tanh",
    "hardtanh", "identity"), or column groups "sigmoid:256,tanh:128,..." summing to N;
    differentiable in x and weight. ``backend``: "auto", "cuda",
    "triton", "cpp" or "reference".
    """
    check_tensor("x", x, op=OP, layout=_LAYOUT)
    if x.dim() < 1:
        raise ValueError(f"nlseq.{OP}: x must have at least 1 dimension {_LAYOUT}, got a scalar")
    check_tensor("weight", weight, op=OP, ndim=2, dtypes=_F32, layout=_LAYOUT)
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(
            f"nlseq.{OP}: x must have K = weight.shape[1] = {K} features in its last dim {_LAYOUT}, got shape {tuple(x.shape)}"
        )
    check_tensor("col_scale", col_scale, op=OP, ndim=1, dtypes=_F32, layout=_LAYOUT)
    check_shape("col_scale", col_scale, (N,), op=OP, layout=_LAYOUT)
    # thresholds/levels: float32, or float64 as nlseq.analog.NLADC keeps them (rounded to float32 here: the
    # comparisons run in float32 on every backend)
    check_tensor("levels", levels, op=OP, ndim=(1, 2), dtypes=_F32_F64, layout=_LAYOUT)
    L = levels.shape[-1]
    if L < 2 or L & (L - 1) or L > (1 << MAX_BITS):
        raise ValueError(f"nlseq.{OP}: levels must have L = 2^bits entries with 1 <= bits <= {MAX_BITS}, got L = {L}")
    check_tensor("thresholds", thresholds, op=OP, ndim=(1, 2), dtypes=_F32_F64, layout=_LAYOUT)
    check_shape("thresholds", thresholds, ((N,) if thresholds.dim() == 2 else ()) + (L - 1,), op=OP, layout=_LAYOUT)
    if levels.dim() == 2:
        check_shape("levels", levels, (N, L), op=OP, layout=_LAYOUT)
    for name, t in (("weight", weight), ("col_scale", col_scale), ("thresholds", thresholds), ("levels", levels)):
        if t.device != x.device:
            raise ValueError(f"nlseq.{OP}: {name} must be on the device of x ({x.device}), got {t.device}")
    in_bits = check_int(OP, "in_bits", in_bits, lo=0, hi=24, what="(0 = ideal DAC, else 2..24)")
    if in_bits == 1:
        raise ValueError(f"nlseq.{OP}: in_bits must be 0 (ideal DAC) or an int in 2..24, got 1")
    x_max = check_float(OP, "x_max", x_max, lo=0.0, lo_open=True)
    # variances' coefficients: an infinite one would saturate every code into a valid-looking level
    noise_a = check_float(OP, "noise_a", noise_a, lo=0.0, what="(read-noise variance coefficient)")
    noise_b = check_float(OP, "noise_b", noise_b, lo=0.0, what="(output-noise variance)")
    seed = check_int(OP, "seed", seed, lo=0, hi=2**63 - 1)
    offset = _offset_tensor(offset)
    check_backend(OP, backend)
    # a NaN or decreasing threshold makes the binary search of each backend count differently
    # (the backends would disagree): thresholds must be finite and non-decreasing (equal
    # neighbours are allowed: a stuck-at-OFF ramp device programs a zero step)
    check_values(OP, "thresholds", thresholds, finite=True, nondecreasing=True)
    check_values(OP, "col_scale", col_scale, finite=True)
    if not isinstance(act, str):
        raise TypeError(f"nlseq.{OP}: act must be a string, got {type(act).__name__}")
    groups = parse_act(act)
    if len(groups) > 1 and sum(c for _, c in groups) != N:
        raise ValueError(f"nlseq.{OP}: the column groups of act={act!r} must add up to N = {N}")

    lead = x.shape[:-1]
    x2 = x.reshape(-1, K).to(torch.float32).contiguous()
    M = x2.shape[0]
    if noise is not None:
        # exactly [..., N] with x's leading dims, or the flattened [M, N]: never another shape
        # with the same element count ([N, M] would silently pair noise with the wrong outputs)
        check_tensor("noise", noise, op=OP, dtypes=_F32, layout=_LAYOUT, device=x.device, device_of="x")
        if tuple(noise.shape) not in (tuple(lead) + (N,), (M, N)):
            raise ValueError(
                f"nlseq.{OP}: noise must have shape {tuple(lead) + (N,)} (x's leading dims, N) or "
                f"{(M, N)} {_LAYOUT}, got {tuple(noise.shape)}"
            )
        check_values(OP, "noise", noise, finite=True)
        noise = noise.reshape(M, N).contiguous()
    thr = thresholds.to(torch.float32).expand(N, L - 1).contiguous()
    lev = levels.to(torch.float32).expand(N, L).contiguous()
    name = _registry.resolve(backend, x.device, OP, IMPLEMENTED)
    if M == 0:
        y = x2.new_zeros(0, N)
    else:
        y = _analog_mvm_op(
            x2,
            weight.contiguous(),
            col_scale.contiguous(),
            thr,
            lev,
            noise,
            in_bits,
            float(x_max),
            float(noise_a),
            float(noise_b),
            seed,
            offset,
            act,
            name,
        )
    return y.reshape(*lead, N).to(x.dtype)


# ---------------------------------------------------------------- ops the analog modules call (torch.compile-able)
@torch.library.custom_op("nlseq::analog_rnn", mutates_args=())
def analog_rnn_op(
    cell: str,
    x: Tensor,
    weight: Tensor,
    col_scale: Tensor,
    thresholds: Tensor,
    levels: Tensor,
    cell_thresholds: Tensor,
    cell_levels: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],
    in_bits: int,
    x_max: float,
    noise_a: float,
    noise_b: float,
    seed: int,
    offset: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One whole analog LSTM/GRU layer (the C++ kernel ``nlseq_ext::analog_rnn_fwd``), inference only.

    x [T, B, I] float32; returns (out [T, B, H], h_n [B, H], c_n [B, H]; c_n is empty [0] for "gru").
    Step t draws its noise at offset + t.
    """
    _registry._extension()
    out, h_n, c_n = torch.ops.nlseq_ext.analog_rnn_fwd(
        cell,
        x,
        weight,
        col_scale,
        thresholds,
        levels,
        cell_thresholds,
        cell_levels,
        h0,
        c0,
        in_bits,
        x_max,
        noise_a,
        noise_b,
        seed,
        int(offset),
    )
    return out, h_n, (c_n if c0 is not None else h_n.new_empty(0))


@analog_rnn_op.register_fake
def _(
    cell,
    x,
    weight,
    col_scale,
    thresholds,
    levels,
    cell_thresholds,
    cell_levels,
    h0,
    c0,
    in_bits,
    x_max,
    noise_a,
    noise_b,
    seed,
    offset,
):
    T, B = x.shape[0], x.shape[1]
    H = h0.shape[1]
    return x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H) if c0 is not None else x.new_empty(0)


@torch.library.custom_op("nlseq::analog_normals", mutates_args=())
def analog_normals_op(like: Tensor, seed: int, offset: Tensor) -> Tensor:
    """Standard normals shaped like ``like`` [M, N] (float32, its device) from Philox keyed by (seed, offset)."""
    M, N = like.shape
    return _ref.philox_normal(M, N, seed, int(offset), like.device)


@analog_normals_op.register_fake
def _(like, seed, offset):
    return like.new_empty(like.shape, dtype=torch.float32)
