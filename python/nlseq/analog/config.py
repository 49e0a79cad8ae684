"""Crossbar device model (SPEC.md §3.1): configuration and weight programming."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

PROG_NOISE_MODELS = ("constant", "pcm")
# PCM programming-noise polynomial of SPEC.md §3.1, in µS for g_max = 25 µS (IBM aihwkit figures).
PCM_POLY = (0.26348, 1.9650, -1.1731)
PCM_G_MAX = 25.0


@dataclass(frozen=True)
class CrossbarConfig:
    """Device and periphery model of one crossbar (SPEC.md §3.1). Units: µS, V, µA, seconds.

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
        if self.prog_noise_model not in PROG_NOISE_MODELS:
            raise ValueError(f"CrossbarConfig: prog_noise_model must be one of {PROG_NOISE_MODELS}, got {self.prog_noise_model!r}")
        for name in ("g_max", "x_max", "v_read", "t_eval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CrossbarConfig: {name} must be > 0, got {getattr(self, name)}")
        for name in ("prog_noise", "read_noise", "out_noise", "drift_nu"):
            if getattr(self, name) < 0:
                raise ValueError(f"CrossbarConfig: {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.p_stuck_off <= 1.0:
            raise ValueError(f"CrossbarConfig: p_stuck_off must be in [0, 1], got {self.p_stuck_off}")
        if not (self.in_bits == 0 or 2 <= self.in_bits <= 24):
            raise ValueError(f"CrossbarConfig: in_bits must be 0 (ideal) or in 2..24, got {self.in_bits}")
        if self.tile_rows < 1:
            raise ValueError(f"CrossbarConfig: tile_rows must be >= 1, got {self.tile_rows}")

    @classmethod
    def ideal(cls, x_max: float = 64.0, **overrides) -> "CrossbarConfig":
        """Every noise source off, an ideal DAC over [−x_max, x_max] (default wide enough that
        nothing clips): the crossbar then computes x @ Wᵀ up to float32 rounding."""
        base = cls(prog_noise=0.0, p_stuck_off=0.0, drift_nu=0.0, read_noise=0.0, out_noise=0.0,
                   in_bits=0, x_max=x_max)
        return replace(base, **overrides)

    def replace(self, **changes) -> "CrossbarConfig":
        return replace(self, **changes)

    # ------------------------------------------------------------------ derived quantities
    def prog_sigma(self, G: Tensor) -> Tensor:
        """Programming-noise std (µS) for target conductances G (µS)."""
        if self.prog_noise_model == "constant":
            return torch.full_like(G, self.prog_noise * self.g_max)
        g = G / self.g_max
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
        tile_sq = full * self.tile_rows ** 2 + rest ** 2
        noise_b = (self.out_noise * scale) ** 2 * tile_sq + cmp_noise ** 2
        return noise_a, noise_b


def _generator(generator: Optional[torch.Generator], seed: Optional[int]) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def program_conductances(G: Tensor, config: CrossbarConfig, generator: torch.Generator) -> Tensor:
    """One programming of target conductances G (µS, float64, CPU): programming noise, clip to
    [0, g_max], stuck-at-OFF devices, drift to t_eval. Draws 2 numbers per device from
    ``generator`` (always, so that the stream does not depend on which knobs are on)."""
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


def program_weights(W: Tensor, config: CrossbarConfig, *, generator: Optional[torch.Generator] = None,
                    seed: Optional[int] = None) -> ProgrammedWeights:
    """Map W [N, K] (out × in) to differential pairs G⁺ = g_max·max(W,0)/w_max,
    G⁻ = g_max·max(−W,0)/w_max (w_max per output column), program both (programming noise,
    stuck devices, drift; SPEC.md §3.1) and return them in digital units."""
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
    return ProgrammedWeights(weight.to(dev, torch.float32), col_scale.to(dev, torch.float32), w_max.to(dev, torch.float32))


__all__ = ["CrossbarConfig", "ProgrammedWeights", "program_weights", "program_conductances", "PCM_POLY"]
