"""NL-ADC: a ramp ADC whose pre-distorted ramp makes the code the activation (docs/spec.md §3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .._checks import check_bool, check_float, check_int, check_range_pair, check_tensor
from .config import CrossbarConfig, program_conductances

_OP = "analog.NLADC"

BUILTIN = ("sigmoid", "tanh", "hardtanh", "identity")
_NON_MONOTONIC = ("gelu", "silu", "swish", "mish", "softplus_gelu")
_MONOTONIC_CHECK_POINTS = 4097


def _logit(y: Tensor) -> Tensor:
    return torch.log(y) - torch.log1p(-y)


# name -> (f, f_inverse, natural input range when in_range is None)
_FUNCS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], tuple[float, float]]] = {
    "sigmoid": (torch.sigmoid, _logit, (-math.inf, math.inf)),
    "tanh": (torch.tanh, torch.atanh, (-math.inf, math.inf)),
    "hardtanh": (lambda u: torch.clamp(u, -1.0, 1.0), lambda y: y, (-1.0, 1.0)),
    "identity": (lambda u: u, lambda y: y, (math.nan, math.nan)),
}


@dataclass
class ProgrammedADC:
    """One programming of an NL-ADC bank: the shared ramp and each column's comparator.

    thresholds [L−1] (float64): the programmed ramp thresholds T'_k in input units (cumulative sums
    of programmed step conductances); offsets [n_columns] (float64, µA): each comparator's offset
    left after calibration.
    """

    thresholds: Tensor
    offsets: Tensor


class NLADC:
    """Ramp ADC with ``bits`` bits whose code selects the level y_D of a monotonic function f.

    ``fn``: "sigmoid", "tanh", "hardtanh", "identity", or a pair (f, f_inverse) of callables on
    tensors. ``in_range`` (u_min, u_max): the input range mapped onto the L = 2^bits levels; when
    None, the function's natural range (sigmoid, tanh: the whole real line, so the levels tile
    the open output interval (0, 1) / (−1, 1); hardtanh: [−1, 1]); "identity" and user pairs
    need it. With f_lo = f(u_min), f_hi = f(u_max) (docs/spec.md §3.2):

        levels[k]      = f_lo + (k + ½)(f_hi − f_lo)/L,     k = 0..L−1
        thresholds[k−1] = f⁻¹(f_lo + k (f_hi − f_lo)/L),     k = 1..L−1

    and the code is D = #{k : u > thresholds[k]}; calling the ADC on a tensor returns levels[D]
    (ideal ramp, no noise). Non-monotonic functions have no single-ramp form and are rejected.

    The physical ramp starts at T_0 (one mean step below T_1) and rises by ΔT_k = T_k − T_{k−1}
    per clock, each step set by one programmed memristor G_k = g_max·ΔT_k/max ΔT; ``program``
    applies the CrossbarConfig's programming noise, stuck devices and drift to G_k, so an error in
    G_k shifts every later threshold. Comparators: a per-column offset of std ``cmp_offset`` µA,
    removed by an offset calibration with ``calib_bits`` bits over ±4·cmp_offset (the residual
    remains), and conversion noise of std ``cmp_noise`` µA. Both are in absolute current units,
    so unlike conductance-domain noise they are not scaled away by V_read.
    """

    def __init__(
        self,
        fn: Union[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]],
        bits: int,
        in_range: Optional[tuple[float, float]] = None,
        *,
        cmp_offset: float = 0.0,
        cmp_noise: float = 0.0,
        offset_calibration: bool = True,
        calib_bits: int = 5,
    ):
        check_int(_OP, "bits", bits, lo=1, hi=16)
        # comparator offset and noise (µA): finite and >= 0 (inf would saturate every code)
        cmp_offset = check_float(_OP, "cmp_offset", cmp_offset, lo=0.0)
        cmp_noise = check_float(_OP, "cmp_noise", cmp_noise, lo=0.0)
        check_bool(_OP, "offset_calibration", offset_calibration)
        check_int(_OP, "calib_bits", calib_bits, lo=1, hi=24)
        if in_range is not None:
            in_range = check_range_pair(_OP, "in_range", in_range)
        self.bits, self.L = bits, 1 << bits
        self.cmp_offset, self.cmp_noise = float(cmp_offset), float(cmp_noise)
        self.offset_calibration, self.calib_bits = offset_calibration, calib_bits

        if isinstance(fn, str):
            name = fn.lower()
            if name in _NON_MONOTONIC:
                raise ValueError(
                    f"NLADC: {fn!r} is not monotonic, so no single ramp can produce it (the code counts "
                    f"thresholds passed, docs/spec.md §3.2); split it into monotonic pieces with separate ADCs"
                )
            if name not in _FUNCS:
                raise ValueError(f"NLADC: fn must be one of {BUILTIN} or a pair (f, f_inverse), got {fn!r}")
            f, f_inv, natural = _FUNCS[name]
            if in_range is None:
                if name == "identity":
                    raise ValueError("NLADC: fn='identity' needs a finite in_range=(u_min, u_max)")
                in_range = natural
            self.name: Optional[str] = name
        else:
            if not (isinstance(fn, tuple) and len(fn) == 2 and all(callable(g) for g in fn)):
                raise TypeError(
                    f"NLADC: fn must be a name in {BUILTIN} or a pair (f, f_inverse) of callables, got {fn!r}"
                )
            f, f_inv = fn
            if in_range is None:
                raise ValueError("NLADC: a user function (f, f_inverse) needs a finite in_range=(u_min, u_max)")
            self.name = None
        u_min, u_max = float(in_range[0]), float(in_range[1])
        if not u_min < u_max:
            raise ValueError(f"NLADC: in_range must satisfy u_min < u_max, got {in_range}")
        self.f, self.f_inverse, self.in_range = f, f_inv, (u_min, u_max)
        if self.name is None:
            self._check_monotonic()

        lo = f(torch.tensor(u_min, dtype=torch.float64))
        hi = f(torch.tensor(u_max, dtype=torch.float64))
        self.out_range = (float(lo), float(hi))
        k = torch.arange(self.L, dtype=torch.float64)
        span = hi - lo
        self.levels = lo + (k + 0.5) * span / self.L  # [L]
        self.thresholds = f_inv(lo + k[1:] * span / self.L)  # [L−1]
        if not bool(torch.isfinite(self.thresholds).all()):
            raise ValueError(f"NLADC: thresholds are not finite for {fn!r} on {in_range}; check f_inverse")
        if not bool((self.thresholds[1:] > self.thresholds[:-1]).all()):
            raise ValueError(
                "nlseq.analog.NLADC: f_inverse does not give strictly increasing thresholds (two levels "
                "would share a threshold, or f_inverse is not the inverse of f)"
            )
        self.lsb = abs(float(span)) / self.L

        # The physical ramp: start T_0 and step sizes ΔT_k, k = 1..L−1 (docs/spec.md §3.2).
        T = self.thresholds
        mean_step = float(T[-1] - T[0]) / (self.L - 2) if self.L > 2 else 1.0
        self.ramp_start = float(T[0]) - (mean_step if mean_step > 0 else 1.0)
        self.ramp_steps = torch.diff(T, prepend=T.new_tensor([self.ramp_start]))  # [L−1], > 0

    # ------------------------------------------------------------------ checks
    def _check_monotonic(self) -> None:
        u_min, u_max = self.in_range
        u = torch.linspace(u_min, u_max, _MONOTONIC_CHECK_POINTS, dtype=torch.float64)
        y = self.f(u)
        if not isinstance(y, Tensor) or y.shape != u.shape:
            raise TypeError("NLADC: f must map a tensor to a tensor of the same shape")
        d = torch.diff(y)
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise ValueError(
                f"NLADC: the function is not strictly monotonic on in_range={self.in_range}, so no single "
                f"ramp can produce it (docs/spec.md §3.2); split it into monotonic pieces with separate ADCs"
            )
        back = self.f_inverse(y[1:-1])
        if not bool(torch.allclose(back, u[1:-1], atol=1e-6 * (u_max - u_min), rtol=1e-6)):
            raise ValueError("NLADC: f_inverse(f(u)) != u on in_range; pass the inverse of f")

    # ------------------------------------------------------------------ use
    def codes(self, u: Tensor, thresholds: Optional[Tensor] = None) -> Tensor:
        """Comparator counts D = #{k : u > thresholds[k]} (int64), ideal thresholds by default."""
        self._check_input(u, "codes")
        if thresholds is None:
            thr = self.thresholds
        else:
            check_tensor("thresholds", thresholds, op=f"{_OP}.codes", ndim=1, layout=f"([L - 1] = [{self.L - 1}])")
            if thresholds.shape[0] != self.L - 1:
                raise ValueError(
                    f"nlseq.{_OP}.codes: thresholds must have shape ({self.L - 1},), got {tuple(thresholds.shape)}"
                )
            from .._checks import check_values

            check_values(f"{_OP}.codes", "thresholds", thresholds, finite=True, nondecreasing=True)
            thr = thresholds
        return torch.bucketize(u.detach().to(torch.float64), thr.to(u.device, torch.float64), right=False)

    @staticmethod
    def _check_input(u, what: str) -> None:
        # integer inputs would come back as integer levels (truncated) and complex ones without
        # their imaginary part: only real floating tensors are accepted (convert explicitly)
        check_tensor(
            "u", u, op=f"{_OP}.{what}", layout="(a real floating tensor; convert integer inputs with .float())"
        )

    def __call__(self, u: Tensor) -> Tensor:
        """The levels the ideal ADC selects for u (same dtype and shape as u); NaN where u is NaN
        (it has no comparator count), as in every kernel (nlseq/analog.h adc_level). u must be a
        floating tensor (integer and complex inputs are rejected, not truncated)."""
        self._check_input(u, "__call__")
        y = self.levels.to(u.device)[self.codes(u)].to(u.dtype)
        return torch.where(torch.isnan(u), u, y)

    def ideal(self, u: Tensor) -> Tensor:
        """f(u) itself (what the ADC approximates to within half an LSB on in_range)."""
        return self.f(u)

    @property
    def ramp_conductances(self) -> Tensor:
        """Target step conductances G_k / g_max = ΔT_k / max ΔT (fractions of g_max), [L−1]."""
        return self.ramp_steps / self.ramp_steps.max()

    def program(self, n_columns: int, config: CrossbarConfig, generator: torch.Generator) -> ProgrammedADC:
        """Program the ramp devices and draw the comparators' offsets (docs/spec.md §3.2).

        Draws from ``generator`` in a fixed order (ramp devices, then offsets), so one generator
        state replays one programming.
        """
        check_int(f"{_OP}.program", "n_columns", n_columns, lo=0)
        if not isinstance(config, CrossbarConfig):
            raise TypeError(f"nlseq.{_OP}.program: config must be a CrossbarConfig, got {type(config).__name__}")
        unit = float(self.ramp_steps.max())  # input units per g_max of step conductance
        G = program_conductances(self.ramp_conductances * config.g_max, config, generator)
        thresholds = self.ramp_start + torch.cumsum(G, 0) * (unit / config.g_max)
        raw = torch.randn(n_columns, generator=generator, dtype=torch.float64) * self.cmp_offset
        offsets = raw
        if self.offset_calibration and self.cmp_offset > 0:
            half = 1 << (self.calib_bits - 1)
            q = 8.0 * self.cmp_offset / (1 << self.calib_bits)  # calibration step over ±4σ
            offsets = raw - torch.clamp(torch.round(raw / q), -half, half - 1) * q
        return ProgrammedADC(thresholds, offsets)

    def __repr__(self) -> str:
        fn = self.name if self.name is not None else "user"
        return f"NLADC(fn={fn!r}, bits={self.bits}, in_range={self.in_range}, cmp_offset={self.cmp_offset}, cmp_noise={self.cmp_noise})"
