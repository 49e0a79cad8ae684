"""Crossbar device model (docs/spec.md §3.1): configuration and weight programming."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from .._checks import check_choice, check_float, check_int, check_prob, check_tensor

PROG_NOISE_MODELS = ("constant", "pcm")
# PCM programming-noise polynomial of docs/spec.md §3.1, in µS for g_max = 25 µS (IBM aihwkit figures).
PCM_POLY = (0.26348, 1.9650, -1.1731)
PCM_G_MAX = 25.0


@dataclass(frozen=True)
class CrossbarConfig:
    """Device and periphery model of one crossbar (docs/spec.md §3.1). Units: µS, V, µA, seconds.

    Fields:
        g_max: largest device conductance (µS).
        prog_noise: programming noise. ``prog_noise_model="constant"``: σ = prog_noise·g_max.
            ``"pcm"``: σ(G) = prog_noise·(0.26348 + 1.9650·G̃ − 1.1731·G̃²)·(g_max/25) µS with
            G̃ = G/g_max (the PCM polynomial, defined for g_max = 25 µS, scaled to this g_max).
            Applied once per programming: G ← clip(G + σ(G)·ξ, 0, g_max).
        p_stuck_off: probability that a device is stuck at G = 0.
        drift_nu, t_eval: conductance drift G(t_eval) = G(t0)·(t_eval/t0)^(−drift_nu), t0 = 20 s
            after programming (the reference time of the PCM drift model). ``drift_nu = 0``: off.
            The ramp step devices of the NL-ADCs drift by the same factor, so the drift of the
            products is matched by the ramp's steps; only the ramp's start (a reference voltage,
            no device) does not drift, which leaves a residual shift of the thresholds.
        read_noise: per-device read noise, std relative to g_max, fresh on every read.
        out_noise: output noise of each tile's periphery, std relative to its full-scale current
            V_read·g_max·rows.
        in_bits, x_max: the input DAC, 2^(in_bits−1) − 1 levels per side over [−x_max, x_max];
            ``in_bits = 0`` is an ideal DAC (clamp only). Voltage V = V_read·x/x_max.
        tile_rows: inputs per physical tile; partial sums of tiles are added (each tile adds its
            own output noise).
        v_read: read voltage amplitude (V).
    """

    g_max: float = 25.0
    prog_noise: float = 0.02
    prog_noise_model: str = "constant"
    p_stuck_off: float = 0.0
    drift_nu: float = 0.0
    t_eval: float = 20.0
    read_noise: float = 0.01
    out_noise: float = 0.01
    in_bits: int = 8
    x_max: float = 1.0
    tile_rows: int = 512
    v_read: float = 0.2

    T0 = 20.0  # drift reference time t0 (s), class constant

    def __post_init__(self):
        op = "analog.CrossbarConfig"
        check_choice(op, "prog_noise_model", self.prog_noise_model, PROG_NOISE_MODELS)
        for name in ("g_max", "x_max", "v_read", "t_eval"):  # finite and > 0
            check_float(op, name, getattr(self, name), lo=0.0, lo_open=True)
        # noise and drift: finite and >= 0 (an infinite std saturates every code into a level
        # that looks valid)
        for name in ("prog_noise", "read_noise", "out_noise", "drift_nu"):
            check_float(op, name, getattr(self, name), lo=0.0)
        check_prob(op, "p_stuck_off", self.p_stuck_off)
        check_int(op, "in_bits", self.in_bits, lo=0, hi=24, what="(0 = ideal DAC, else 2..24)")
        if self.in_bits == 1:
            raise ValueError(f"nlseq.{op}: in_bits must be 0 (ideal) or in 2..24, got 1")
        check_int(op, "tile_rows", self.tile_rows, lo=1)

    @classmethod
    def ideal(cls, x_max: float = 64.0, **overrides) -> "CrossbarConfig":
        """Every noise source off, an ideal DAC over [−x_max, x_max] (default wide enough that
        nothing clips): the crossbar then computes x @ Wᵀ up to float32 rounding."""
        base = cls(prog_noise=0.0, p_stuck_off=0.0, drift_nu=0.0, read_noise=0.0, out_noise=0.0, in_bits=0, x_max=x_max)
        return replace(base, **overrides)

    def replace(self, **changes) -> "CrossbarConfig":
        return replace(self, **changes)

    # ------------------------------------------------------------------ derived quantities
    def prog_sigma(self, G: Tensor) -> Tensor:
        """Programming-noise std (µS) for target conductances G (µS)."""
        if self.prog_noise_model == "constant":
            return torch.full_like(G, self.prog_noise * self.g_max)
        # The polynomial is a fit on [0, g_max] (positive there); outside it (targets that the
        # programming then clips anyway) it turns negative for G > ~1.8 g_max, so it is evaluated at
        # G clamped to [0, g_max]: a std is never negative (docs/numerics.md).
        g = torch.clamp(G / self.g_max, 0.0, 1.0)
        c0, c1, c2 = PCM_POLY
        return self.prog_noise * (c0 + c1 * g + c2 * g * g) * (self.g_max / PCM_G_MAX)

    def drift_factor(self) -> float:
        if self.drift_nu == 0.0:
            return 1.0
        return (self.t_eval / self.T0) ** (-self.drift_nu)

    def noise_coefficients(self, rows: int, cmp_noise: float = 0.0) -> tuple[float, float]:
        """(noise_a, noise_b) of the fused op for a crossbar with ``rows`` inputs: the variance of
        the column current (µA²) is noise_a·Σ xq² + noise_b.

        Read noise: 2 devices per row, std read_noise·g_max each, at voltage V_read·xq/x_max:
        noise_a = 2 (read_noise·g_max·V_read/x_max)². Output noise: one periphery per tile of at
        most tile_rows rows, std out_noise·V_read·g_max·rows_t; comparator noise cmp_noise (µA):
        noise_b = Σ_t (out_noise·V_read·g_max·rows_t)² + cmp_noise².
        """
        scale = self.v_read * self.g_max
        noise_a = 2.0 * (self.read_noise * scale / self.x_max) ** 2
        full, rest = divmod(rows, self.tile_rows)
        tile_sq = full * self.tile_rows**2 + rest**2
        noise_b = (self.out_noise * scale) ** 2 * tile_sq + cmp_noise**2
        return noise_a, noise_b


def _generator(generator: Optional[torch.Generator], seed: Optional[int]) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"nlseq.analog.program_weights: generator must be a torch.Generator, got {type(generator).__name__}"
            )
        return generator
    if seed is not None:
        check_int("analog.program_weights", "seed", seed, lo=0, hi=2**64 - 1)
    return torch.Generator().manual_seed(0 if seed is None else seed)


def program_conductances(G: Tensor, config: CrossbarConfig, generator: torch.Generator) -> Tensor:
    """One programming of target conductances G (µS, float64, CPU): programming noise, clip to
    [0, g_max], stuck-at-OFF devices, drift to t_eval. Draws 2 numbers per device from
    ``generator`` (always, so that the stream does not depend on which knobs are on)."""
    op = "analog.program_conductances"
    check_tensor("G", G, op=op, dtypes=(torch.float64,), layout="(target conductances in µS, float64, CPU)")
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"nlseq.{op}: config must be a CrossbarConfig, got {type(config).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"nlseq.{op}: generator must be a torch.Generator, got {type(generator).__name__}")
    xi = torch.randn(G.shape, generator=generator, dtype=torch.float64)
    stuck = torch.rand(G.shape, generator=generator, dtype=torch.float64) < config.p_stuck_off
    G = torch.clamp(G + config.prog_sigma(G) * xi, 0.0, config.g_max)
    G = torch.where(stuck, torch.zeros_like(G), G)
    return G * config.drift_factor()


@dataclass
class ProgrammedWeights:
    """A weight matrix as programmed on a crossbar.

    weight [N, K]: (G⁺ − G⁻)·w_max/g_max, the programmed weights in digital units (float32);
    col_scale [N]: V_read·g_max/(x_max·w_max[n]), µA of column current per digital unit;
    w_max [N]: the per-column weight scale (largest |W| of the column, 1 for an all-zero column).
    """

    weight: Tensor
    col_scale: Tensor
    w_max: Tensor


def program_weights(
    W: Tensor, config: CrossbarConfig, *, generator: Optional[torch.Generator] = None, seed: Optional[int] = None
) -> ProgrammedWeights:
    """Map W [N, K] (out × in) to differential pairs G⁺ = g_max·max(W,0)/w_max,
    G⁻ = g_max·max(−W,0)/w_max (w_max per output column), program both (programming noise,
    stuck devices, drift; docs/spec.md §3.1) and return them in digital units."""
    op = "analog.program_weights"
    check_tensor("W", W, op=op, ndim=2, layout="([N, K], out × in)")
    if not isinstance(config, CrossbarConfig):
        raise TypeError(f"nlseq.{op}: config must be a CrossbarConfig, got {type(config).__name__}")
    W64 = W.detach().to("cpu", torch.float64)
    w_max = W64.abs().amax(dim=1)
    w_max = torch.where(w_max > 0, w_max, torch.ones_like(w_max))
    scale = (config.g_max / w_max)[:, None]
    g = _generator(generator, seed)
    Gp = program_conductances(torch.clamp(W64, min=0.0) * scale, config, g)
    Gm = program_conductances(torch.clamp(-W64, min=0.0) * scale, config, g)
    weight = (Gp - Gm) / scale
    col_scale = config.v_read * config.g_max / (config.x_max * w_max)
    dev = W.device
    return ProgrammedWeights(
        weight.to(dev, torch.float32), col_scale.to(dev, torch.float32), w_max.to(dev, torch.float32)
    )


__all__ = ["CrossbarConfig", "ProgrammedWeights", "program_weights", "program_conductances", "PCM_POLY"]
