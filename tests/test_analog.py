"""Analog crossbar + NL-ADC family (docs/spec.md §3): converters, device model, fused op, modules."""

from __future__ import annotations

import math

import pytest
import torch

import nlseq
from _utils import backend_params, device_for
from nlseq.analog import NLADC, CrossbarConfig, program_weights
from nlseq.nn import AnalogGRU, AnalogLinear, AnalogLSTM
from nlseq.reference.analog import analog_mvm as ref_mvm
from nlseq.reference.analog import dac_quantize, philox4x32, philox_normal

ALL = backend_params("cuda", "triton", "cpp", "reference")
KERNELS = backend_params("cuda", "triton", "cpp")


# ---------------------------------------------------------------- NL-ADC (docs/spec.md §3.2)
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8], ids=lambda b: f"bits{b}")
@pytest.mark.parametrize("fn", ["sigmoid", "tanh", "hardtanh"])
def test_nladc_ideal_within_half_lsb(fn, bits):
    adc = NLADC(fn, bits)
    assert adc.thresholds.shape == (adc.L - 1,) and adc.levels.shape == (adc.L,)
    u = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    err = (adc(u) - adc.ideal(u)).abs().max().item()
    # Level k is the midpoint of [f(T_k), f(T_{k+1})], so |y_D − f(u)| <= LSB/2 (+ rounding).
    assert err <= adc.lsb / 2 + 1e-12, f"max |adc(u) − f(u)| = {err} > LSB/2 = {adc.lsb / 2}"
    assert err >= adc.lsb / 2 * 0.9  # a quantiser, not f itself: the bound is attained


def test_nladc_formulas_match_spec():
    adc = NLADC("sigmoid", 3)
    k = torch.arange(1, 8, dtype=torch.float64)
    assert torch.allclose(adc.thresholds, torch.log((k / 8) / (1 - k / 8)), atol=1e-14)
    assert torch.allclose(adc.levels, (torch.arange(8, dtype=torch.float64) + 0.5) / 8, atol=1e-15)
    adc = NLADC("tanh", 4, in_range=(-2.0, 2.0))
    lo, hi = math.tanh(-2), math.tanh(2)
    k = torch.arange(1, 16, dtype=torch.float64)
    assert torch.allclose(adc.thresholds, torch.atanh(lo + k * (hi - lo) / 16), atol=1e-13)
    # codes: D = #{k : u > T_k}, so u exactly at a threshold stays below it
    assert adc.codes(adc.thresholds).tolist() == list(range(15))


def test_nladc_user_pair_and_decreasing():
    adc = NLADC((lambda u: u**3, lambda y: torch.sign(y) * y.abs() ** (1 / 3)), 4, in_range=(-1.0, 1.0))
    u = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    assert (adc(u) - u**3).abs().max() <= adc.lsb / 2 + 1e-12
    dec = NLADC((lambda u: -u, lambda y: -y), 3, in_range=(0.0, 1.0))
    assert (dec(u.clamp(0, 1)) + u.clamp(0, 1)).abs().max() <= dec.lsb / 2 + 1e-12


@pytest.mark.parametrize("fn", ["gelu", "silu"])
def test_nladc_rejects_non_monotonic_names(fn):
    with pytest.raises(ValueError, match="not monotonic"):
        NLADC(fn, 5)


def test_nladc_rejects_non_monotonic_pair():
    gelu = (lambda u: torch.nn.functional.gelu(u), lambda y: y)
    with pytest.raises(ValueError, match="not strictly monotonic"):
        NLADC(gelu, 5, in_range=(-4.0, 4.0))
    with pytest.raises(ValueError, match="inverse"):
        NLADC((torch.exp, lambda y: y), 3, in_range=(0.0, 1.0))


def test_ramp_programming_error_accumulates():
    """One ramp step device off target moves every later threshold by the same amount."""
    adc = NLADC("sigmoid", 5)
    cfg = CrossbarConfig(prog_noise=0.05)
    p = adc.program(4, cfg, torch.Generator().manual_seed(0))
    err = p.thresholds - adc.thresholds
    steps_err = torch.diff(err, prepend=err.new_zeros(1))
    # the threshold error is the running sum of per-step errors (a random walk)
    assert torch.allclose(torch.cumsum(steps_err, 0), err)
    assert err.abs().max() > 0
    ideal = adc.program(4, CrossbarConfig.ideal(), torch.Generator().manual_seed(0))
    assert torch.allclose(ideal.thresholds, adc.thresholds, atol=1e-12)
    # offset calibration leaves at most half a calibration step
    adc = NLADC("sigmoid", 5, cmp_offset=1.0, calib_bits=5)
    p = adc.program(1000, CrossbarConfig.ideal(), torch.Generator().manual_seed(1))
    raw = NLADC("sigmoid", 5, cmp_offset=1.0, offset_calibration=False).program(
        1000, CrossbarConfig.ideal(), torch.Generator().manual_seed(1)
    )
    assert p.offsets.abs().max() <= 8.0 / 32 / 2 + 1e-12 < raw.offsets.abs().max()


# ---------------------------------------------------------------- device model (docs/spec.md §3.1)
def test_programming_replays_and_stuck_devices():
    W = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    cfg = CrossbarConfig(prog_noise=0.03, p_stuck_off=0.2)
    a = program_weights(W, cfg, seed=3)
    b = program_weights(W, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.weight, b.weight)
    ideal = program_weights(W, CrossbarConfig.ideal())
    assert torch.allclose(ideal.weight, W, atol=1e-6)
    # stuck-at-OFF without programming noise: each weight lives on one device of its pair (the other
    # is at 0), so a weight reads 0 exactly when that device is stuck (p = 0.3; 3072 pairs, 5σ band)
    stuck = program_weights(W, CrossbarConfig.ideal(p_stuck_off=0.3), seed=1)
    zero = stuck.weight == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.04
    assert torch.allclose(stuck.weight[~zero], W[~zero], atol=1e-6)


def test_pcm_noise_polynomial():
    cfg = CrossbarConfig(prog_noise=1.0, prog_noise_model="pcm")
    G = torch.tensor([0.0, 12.5, 25.0], dtype=torch.float64)
    expected = torch.tensor(
        [0.26348, 0.26348 + 1.9650 / 2 - 1.1731 / 4, 0.26348 + 1.9650 - 1.1731], dtype=torch.float64
    )
    assert torch.allclose(cfg.prog_sigma(G), expected)
    g = torch.Generator().manual_seed(0)
    from nlseq.analog import program_conductances

    G = torch.full((200000,), 12.5, dtype=torch.float64)
    out = program_conductances(G, cfg, g)
    assert abs(out.std().item() - expected[1].item()) < 0.01


def test_drift_scales_conductances():
    W = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    cfg = CrossbarConfig.ideal(drift_nu=0.05, t_eval=3600.0)
    prog = program_weights(W, cfg)
    assert torch.allclose(prog.weight, W * (3600.0 / 20.0) ** -0.05, atol=1e-6)


# ---------------------------------------------------------------- fused op: every backend
def _grid_problem(M, K, N, bits, device, seed=0):
    """Inputs on exact binary grids: x on the DAC grid (Δ = 2⁻⁴), weights multiples of 2⁻³,
    col_scale a power of two, so every product and sum is exact in float32 in any order, and the
    codes of all backends must agree exactly with the bucketize reference."""
    g = torch.Generator().manual_seed(seed)
    L = 1 << bits
    x = torch.randint(-127, 128, (M, K), generator=g).float() / 16  # x_max = 127/16, in_bits 8
    w = torch.randint(-16, 17, (N, K), generator=g).float() / 8
    cs = torch.full((N,), 0.5)
    thr = torch.sort(torch.randn(N, L - 1, generator=g) * 4 * math.sqrt(K), dim=1).values
    lev = torch.sort(torch.randn(N, L, generator=g), dim=1).values
    noise = torch.randn(M, N, generator=g)
    to = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    return to(x, w, cs, thr, lev, noise)


SHAPES = [(1, 1, 1, 3), (5, 17, 3, 4), (37, 53, 29, 5), (64, 100, 33, 8), (3, 200, 70, 1)]


def _shape_id(s):
    return "M{}-K{}-N{}-bits{}".format(*s)


@pytest.mark.parametrize("M,K,N,bits", SHAPES, ids=[_shape_id(s) for s in SHAPES])
@pytest.mark.parametrize("backend", ALL)
def test_codes_equal_bucketize_with_supplied_noise(backend, M, K, N, bits):
    dev = device_for(backend)
    x, w, cs, thr, lev, noise = _grid_problem(M, K, N, bits, dev)
    kw = dict(in_bits=8, x_max=127 / 16, noise_a=0.25, noise_b=4.0, seed=1, offset=2)
    y = nlseq.analog_mvm(x, w, cs, thr, lev, noise=noise, backend=backend, **kw)
    # bucketize oracle written out independently of the reference module
    xq = x.cpu().double()
    cur = (xq @ w.cpu().double().t()) * 0.5
    sigma = torch.sqrt((xq * xq).sum(1, keepdim=True).float() * 0.25 + 4.0).double()
    cur = (cur.float() + (sigma.float() * noise.cpu())).double()
    codes = torch.stack(
        [torch.bucketize(cur[:, n].contiguous(), thr[n].cpu().double(), right=False) for n in range(N)], 1
    )
    expected = torch.gather(lev.cpu(), 1, codes.t()).t()
    assert not torch.isnan(y).any()
    assert torch.equal(y.cpu(), expected), f"{(y.cpu() != expected).sum().item()} of {M * N} levels differ"


@pytest.mark.parametrize("backend", KERNELS)
def test_non_finite_inputs_match_reference(backend):
    """±inf saturates the DAC; a NaN input makes its row's currents NaN, and a NaN current gives
    NaN out (never a valid-looking level), on every backend as in the reference."""
    dev = device_for(backend)
    x, w, cs, thr, lev, _ = _grid_problem(6, 17, 29, 5, dev, seed=3)
    x[0, 3], x[2, 0], x[4, 16] = float("nan"), float("inf"), -float("inf")
    kw = dict(in_bits=8, x_max=127 / 16, noise_a=0.25, noise_b=4.0, seed=1, offset=2)
    y = nlseq.analog_mvm(x, w, cs, thr, lev, backend=backend, **kw)
    ref = nlseq.analog_mvm(x.cpu(), w.cpu(), cs.cpu(), thr.cpu(), lev.cpu(), backend="reference", **kw)
    assert torch.isnan(ref[0]).all() and not torch.isnan(ref[1:]).any()
    torch.testing.assert_close(y.cpu(), ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not nlseq.backends()["cpp"], reason="needs the compiled cpp backend")
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_nan_input_gives_nan_in_every_adc(kind):
    """A NaN reaches the cell's tanh NL-ADC too: NLADC, the per-step path and the whole-layer
    kernel all give NaN for it, and the rows without a NaN agree bit for bit."""
    adc = NLADC("tanh", 5)
    y = adc(torch.tensor([float("nan"), 0.3]))
    assert torch.isnan(y[0]) and torch.equal(y[1:], adc(torch.tensor([0.3])))
    torch.manual_seed(0)
    digital = getattr(torch.nn, kind)(6, 8)
    with torch.no_grad():
        for p in digital.parameters():
            p.copy_(torch.randint(-8, 9, p.shape) / 8.0)
    x = torch.randint(-100, 101, (5, 3, 6)) / 128.0
    x[2, 1, 4] = float("nan")
    cfg = CrossbarConfig(prog_noise=0.0, read_noise=0.02, out_noise=0.01, in_bits=8, x_max=127 / 128)
    outs = []
    for backend in ("cpp", "reference"):
        m = (
            (AnalogLSTM if kind == "LSTM" else AnalogGRU)
            .from_digital(digital, config=cfg, adc_bits=5, backend=backend)
            .eval()
        )
        with torch.no_grad():
            outs.append(m(x)[0])
    assert torch.isnan(outs[0][2:, 1]).all() and not torch.isnan(outs[0][:, [0, 2]]).any()
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("M,K,N,bits", SHAPES, ids=[_shape_id(s) for s in SHAPES])
@pytest.mark.parametrize("backend", KERNELS)
def test_in_kernel_noise_matches_reference(backend, M, K, N, bits):
    """The Philox + Box–Muller stream is shared bit for bit: the kernels' codes equal the reference's."""
    dev = device_for(backend)
    x, w, cs, thr, lev, _ = _grid_problem(M, K, N, bits, dev, seed=1)
    seed, offset = 0x5EADBEEFCAFEBABE, 0x0000000180000005  # words >= 2^31 on purpose (unsigned handling)
    kw = dict(in_bits=8, x_max=127 / 16, noise_a=0.25, noise_b=4.0, seed=seed, offset=offset)
    y = nlseq.analog_mvm(x, w, cs, thr, lev, backend=backend, **kw)
    y_ref = ref_mvm(x.cpu(), w.cpu(), cs.cpu(), thr.cpu(), lev.cpu(), None, 8, 127 / 16, 0.25, 4.0, seed, offset)
    diff = y.cpu() != y_ref
    if backend == "cuda":
        # nvcc builds with --use_fast_math (approximate division and sqrt): a code may move by one
        # level where the current lies within ~1e-6 of a threshold, so allow 0.1% of the elements
        assert diff.float().mean().item() <= 1e-3, f"{diff.sum().item()} of {M * N} levels differ"
    else:
        # the portable log/sin/cos polynomials perform the same roundings in C++, Triton and torch
        assert not diff.any(), f"{diff.sum().item()} of {M * N} levels differ"


@pytest.mark.parametrize("backend", ALL)
def test_noise_statistics(backend):
    """z from Philox is N(0, 1) and the column current's std is sqrt(noise_a·Σxq² + noise_b)."""
    dev = device_for(backend)
    M, K, N, L = 64, 8, 512 if backend != "triton" else 128, 1 << 12
    x = torch.full((M, K), 0.5, device=dev)
    w = torch.zeros(N, K, device=dev)
    cs = torch.ones(N, device=dev)
    thr = torch.linspace(-8, 8, L - 1, device=dev).expand(N, L - 1).contiguous()
    mid = torch.cat([thr[0, :1] - 1 / 256, (thr[0, 1:] + thr[0, :-1]) / 2, thr[0, -1:] + 1 / 256])
    lev = mid.expand(N, L).contiguous()
    noise_a, noise_b = 0.5, 0.5  # σ² = 0.5·(8·0.25) + 0.5 = 1.5
    y = (
        nlseq.analog_mvm(
            x,
            w,
            cs,
            thr,
            lev,
            in_bits=0,
            x_max=1.0,
            noise_a=noise_a,
            noise_b=noise_b,
            seed=11,
            offset=0,
            backend=backend,
        )
        .double()
        .cpu()
    )
    n = y.numel()
    sigma = math.sqrt(1.5)
    # quantisation (LSB 1/256) adds 1/12 LSB² of variance: negligible against the sampling error
    assert abs(y.mean().item()) < 4 * sigma / math.sqrt(n)
    assert abs(y.std().item() / sigma - 1) < 4 * math.sqrt(0.5 / n) + 1e-3
    z = (y / sigma).flatten()
    assert abs((z.abs() < 1).double().mean().item() - 0.6827) < 4 * math.sqrt(0.22 / n)
    y2 = (
        nlseq.analog_mvm(
            x,
            w,
            cs,
            thr,
            lev,
            in_bits=0,
            x_max=1.0,
            noise_a=noise_a,
            noise_b=noise_b,
            seed=11,
            offset=1,
            backend=backend,
        )
        .double()
        .cpu()
    )
    y3 = (
        nlseq.analog_mvm(
            x,
            w,
            cs,
            thr,
            lev,
            in_bits=0,
            x_max=1.0,
            noise_a=noise_a,
            noise_b=noise_b,
            seed=11,
            offset=0,
            backend=backend,
        )
        .double()
        .cpu()
    )
    assert torch.equal(y, y3), "the same (seed, offset) must replay exactly"
    assert abs(torch.corrcoef(torch.stack([y.flatten(), y2.flatten()]))[0, 1].item()) < 4 / math.sqrt(n)


def test_philox_known_answers():
    """Random123 known-answer vectors for Philox4x32-10."""
    t = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    out = philox4x32(t(0), t(0), t(0), t(0), 0)
    assert [int(v) for v in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    out = philox4x32(t(m), t(m), t(m), t(m), 2**64 - 1)
    assert [int(v) for v in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    z = philox_normal(300, 301, 5, 9)
    assert torch.equal(z, philox_normal(300, 301, 5, 9)) and not torch.equal(z, philox_normal(300, 301, 5, 10))


@pytest.mark.parametrize("in_bits", [0, 4, 8])
def test_dac(in_bits):
    x = torch.linspace(-3, 3, 1001)
    q = dac_quantize(x, in_bits, 2.0)
    assert q.abs().max() <= 2.0
    if in_bits:
        delta = 2.0 / (2 ** (in_bits - 1) - 1)
        inside = x.abs() <= 2.0
        assert (q - x)[inside].abs().max() <= delta / 2 + 1e-6
        assert len(torch.unique(q)) == 2**in_bits - 1


# ---------------------------------------------------------------- V_read invariance, bits, modules
def _linear(config, bits, seed=0, cmp_noise=0.0, cmp_offset=0.0):
    torch.manual_seed(0)
    adc = NLADC("sigmoid", bits, cmp_noise=cmp_noise, cmp_offset=cmp_offset)
    return AnalogLinear(40, 24, config=config, adc=adc, seed=seed).eval()


@pytest.mark.parametrize("backend", backend_params("cpp", "reference"))
def test_v_read_scaling_leaves_codes_unchanged(backend):
    x = torch.rand(32, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noisy = CrossbarConfig(prog_noise=0.05, p_stuck_off=0.05, read_noise=0.02, out_noise=0.02, v_read=0.2)
    outs = []
    for v in (0.2, 0.05, 0.8):  # ratios of powers of two: the float arithmetic scales exactly too
        m = _linear(noisy.replace(v_read=v), 5)
        m.backend = backend
        outs.append(m(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # a non-conductance noise source (comparator noise in µA) breaks the invariance
    outs = []
    for v in (0.2, 0.05):
        m = _linear(noisy.replace(v_read=v), 5, cmp_noise=2.0)
        m.backend = backend
        outs.append(m(x))
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8], ids=lambda b: f"bits{b}")
def test_analog_linear_ideal_equals_adc_of_digital(bits):
    m = _linear(CrossbarConfig.ideal(), bits)
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(2))
    u = (x @ m.weight.t() + m.bias).double().detach()
    expected = m.adc(u).float()
    y = m(x).detach()
    mismatch = y != expected
    # float32 vs float64 rounding can move u across a threshold only within ~1e-6 of it
    near = (u[..., None] - m.adc.thresholds).abs().min(-1).values < 1e-4
    assert not (mismatch & ~near).any()
    assert (y - torch.sigmoid(u).float()).abs().max() <= m.adc.lsb / 2 + 1e-6


def test_stuck_devices_change_outputs_and_replay():
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(3))
    clean = _linear(CrossbarConfig.ideal(), 8)(x)
    stuck_cfg = CrossbarConfig.ideal(p_stuck_off=0.3)
    a = _linear(stuck_cfg, 8, seed=4)
    b = _linear(stuck_cfg, 8, seed=4)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), clean)
    # a different programming draws other stuck devices
    assert not torch.equal(_linear(stuck_cfg, 8, seed=5)(x), a(x))
    # every device stuck (the ramp's too): the ramp collapses to its start, every code is the top
    allstuck = _linear(CrossbarConfig.ideal(p_stuck_off=1.0), 8)(x)
    assert torch.equal(allstuck, torch.full_like(allstuck, 1 - 0.5 / 256))


def test_read_noise_is_fresh_and_replayable():
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(3))
    m = _linear(CrossbarConfig(read_noise=0.05), 8)
    y1, y2 = m(x), m(x)
    assert not torch.equal(y1, y2)
    m.reset_noise()
    assert torch.equal(m(x), y1)


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_ideal_limit_matches_digital(kind, batch_first):
    torch.manual_seed(0)
    digital = getattr(torch.nn, kind)(7, 16, num_layers=2, batch_first=batch_first)
    analog = (AnalogLSTM if kind == "LSTM" else AnalogGRU).from_digital(
        digital, config=CrossbarConfig.ideal(), adc_bits=14
    )
    analog.eval()
    x = torch.randn(3, 13, 7) if batch_first else torch.randn(13, 3, 7)
    with torch.no_grad():
        out_d, st_d = digital(x)
        out_a, st_a = analog(x)
    assert (out_a - out_d).abs().max().item() < 5e-3
    if kind == "LSTM":
        assert (st_a[0] - st_d[0]).abs().max() < 5e-3 and (st_a[1] - st_d[1]).abs().max() < 5e-3
    else:
        assert (st_a - st_d).abs().max() < 5e-3


# (T, B, I, H): B = 3 runs the kernel's one-row GEMM path; B = 9 and B = 16 its 4-row register
# tiles (per thread) plus a remainder row; H = 8 gives 4H = 32 (one column tile), H = 9 and
# H = 17 leave columns over; I = 6 and 13 odd input widths.
LSTM_SHAPES = [(9, 3, 6, 8), (5, 9, 13, 9), (4, 16, 6, 17)]


@pytest.mark.skipif(not nlseq.backends()["cpp"], reason="needs the compiled cpp backend")
@pytest.mark.parametrize("T,B,I,H", LSTM_SHAPES, ids=["T{}-B{}-I{}-H{}".format(*s) for s in LSTM_SHAPES])
@pytest.mark.parametrize("bits", [3, 5, 7], ids=lambda b: f"bits{b}")  # 7: binary search, not counting
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_whole_layer_kernel_equals_step_path(kind, bits, T, B, I, H):
    """The C++ whole-layer LSTM / GRU kernel (inference) against the per-step analog_mvm path, noise on.

    Weights on a 2⁻³ grid and x_max = 127/128 (DAC step 2⁻⁷) make every sum exact in float32
    whatever its order, so the two paths must agree bit for bit, noise and codes included."""
    torch.manual_seed(0)
    cfg = CrossbarConfig(prog_noise=0.0, read_noise=0.02, out_noise=0.01, in_bits=8, x_max=127 / 128)
    digital = getattr(torch.nn, kind)(I, H, num_layers=2)
    with torch.no_grad():
        for p in digital.parameters():
            p.copy_(torch.randint(-8, 9, p.shape) / 8.0)
    x = torch.randint(-100, 101, (T, B, I)) / 128.0
    h0 = torch.randint(-100, 101, (2, B, H)) / 128.0
    c0 = torch.randint(-100, 101, (2, B, H)) / 128.0
    outs = []
    for backend in ("cpp", "reference"):
        m = (
            (AnalogLSTM if kind == "LSTM" else AnalogGRU)
            .from_digital(digital, config=cfg, adc_bits=bits, backend=backend)
            .eval()
        )
        assert m._fused_sequence(x) == (backend == "cpp")
        with torch.no_grad():
            y, state = m(x, (h0, c0) if kind == "LSTM" else h0)
            y2, _ = m(x, (h0, c0) if kind == "LSTM" else h0)  # a second call draws fresh noise
        assert not torch.equal(y, y2)
        outs.append((y, state))
    (o1, s1), (o2, s2) = outs
    assert torch.equal(o1, o2)
    for a, b in zip(s1 if kind == "LSTM" else [s1], s2 if kind == "LSTM" else [s2]):
        assert torch.equal(a, b)


def test_rnn_unbatched_and_initial_state():
    torch.manual_seed(0)
    digital = torch.nn.LSTM(5, 8)
    analog = AnalogLSTM.from_digital(digital, config=CrossbarConfig.ideal(), adc_bits=14).eval()
    x, h0, c0 = torch.randn(6, 5), torch.randn(1, 8) * 0.5, torch.randn(1, 8) * 0.5
    with torch.no_grad():
        out_d, (h_d, c_d) = digital(x, (h0, c0))
        out_a, (h_a, c_a) = analog(x, (h0, c0))
    assert out_a.shape == out_d.shape and h_a.shape == h_d.shape
    assert (out_a - out_d).abs().max() < 5e-3


# ---------------------------------------------------------------- straight-through gradients
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "hardtanh", "identity"])
def test_straight_through_gradient(act):
    g = torch.Generator().manual_seed(0)
    M, K, N = 6, 9, 5
    x = (torch.rand(M, K, generator=g) * 3 - 1.5).requires_grad_()
    w = torch.randn(N, K, generator=g).requires_grad_()
    adc = NLADC(act, 6, (-2.0, 2.0) if act == "identity" else None)
    thr, lev = adc.thresholds.float(), adc.levels.float()
    y = nlseq.analog_mvm(x, w, torch.ones(N), thr, lev, in_bits=0, x_max=1.0, act=act, backend="reference")
    gy = torch.randn(M, N, generator=g)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    # expected: the gradient of f(clamp(x) @ wᵀ) with f the ideal activation
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    u = torch.clamp(x2, -1.0, 1.0) @ w2.t()
    f = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "hardtanh": torch.nn.functional.hardtanh,
        "identity": lambda v: v,
    }[act]
    ex, ew = torch.autograd.grad(f(u), (x2, w2), gy)
    assert torch.allclose(gx, ex, atol=1e-5) and torch.allclose(gw, ew, atol=1e-5)


def test_analog_lstm_trains_straight_through():
    torch.manual_seed(0)
    m = AnalogLSTM(4, 6, config=CrossbarConfig(), adc_bits=5).train()
    x = torch.randn(5, 2, 4)
    out, _ = m(x)
    out.sum().backward()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
        grad = getattr(m, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("backend", backend_params("cpp", "reference"))
def test_opcheck(backend):
    from nlseq.ops.analog import _analog_mvm_op

    x, w, cs, thr, lev, noise = _grid_problem(4, 6, 5, 3, torch.device("cpu"))
    for nz in (None, noise):
        args = (
            x.requires_grad_(),
            w.requires_grad_(),
            cs,
            thr,
            lev,
            nz,
            8,
            127 / 16,
            0.25,
            4.0,
            1,
            torch.tensor(2),
            "sigmoid",
            backend,
        )
        torch.library.opcheck(_analog_mvm_op, args)


def test_bad_inputs_are_rejected():
    x, w, cs, thr, lev, _ = _grid_problem(4, 6, 5, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="weight.shape"):
        nlseq.analog_mvm(x[:, :5], w, cs, thr, lev)
    with pytest.raises(ValueError, match="2\\^bits"):
        nlseq.analog_mvm(x, w, cs, thr[:, :6], lev[:, :7])
    with pytest.raises(ValueError, match="thresholds"):
        nlseq.analog_mvm(x, w, cs, thr[:, :5], lev)
    with pytest.raises(ValueError, match="act"):
        nlseq.analog_mvm(x, w, cs, thr, lev, act="gelu")
    with pytest.raises(ValueError, match="in_bits"):
        nlseq.analog_mvm(x, w, cs, thr, lev, in_bits=1)


@pytest.mark.skipif(not nlseq.backends()["cpp"], reason="needs the compiled cpp backend")
def test_whole_layer_op_rejects_bad_inputs():
    """The whole-layer op names the argument and what it expected (it is called by the modules,
    but it is a registered op that anyone can call)."""
    from nlseq import registry

    registry._extension()
    op = torch.ops.nlseq_ext.analog_rnn_fwd
    T, B, I, H, L = 3, 2, 5, 4, 8
    args = dict(
        x=torch.zeros(T, B, I),
        weight=torch.zeros(4 * H, I + H + 1),
        col_scale=torch.ones(4 * H),
        thr=torch.zeros(4 * H, L - 1),
        lev=torch.zeros(4 * H, L),
        cthr=torch.zeros(H, L - 1),
        clev=torch.zeros(L),
        h0=torch.zeros(B, H),
        c0=torch.zeros(B, H),
    )

    def call(cell="lstm", in_bits=8, x_max=1.0, **over):
        a = dict(args, **over)
        return op(
            cell,
            a["x"],
            a["weight"],
            a["col_scale"],
            a["thr"],
            a["lev"],
            a["cthr"],
            a["clev"],
            a["h0"],
            a["c0"],
            in_bits,
            x_max,
            0.0,
            0.0,
            0,
            0,
        )

    out, h_n, c_n = call()
    assert out.shape == (T, B, H) and h_n.shape == (B, H) and c_n.shape == (B, H)
    out, h_n, c_n = call("gru", c0=None)
    assert out.shape == (T, B, H) and h_n.shape == (B, H) and c_n.numel() == 0
    with pytest.raises(RuntimeError, match='cell must be "lstm" or "gru"'):
        call("rnn")
    with pytest.raises(RuntimeError, match="c0 .* required for the lstm"):
        call(c0=None)
    with pytest.raises(RuntimeError, match="must be None for the gru"):
        call("gru")
    with pytest.raises(RuntimeError, match=r"weight must have shape \[4H, I\+H\+1\]"):
        call(weight=torch.zeros(4 * H, I + H))
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        call(h0=torch.zeros(B + 1, H))
    with pytest.raises(RuntimeError, match="cell_thresholds must have shape"):
        call(cthr=torch.zeros(H, L))
    with pytest.raises(RuntimeError, match="float32, contiguous, on the CPU"):
        call(x=torch.zeros(T, B, I, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"cell_levels must have L = 2\^bits"):
        call(clev=torch.zeros(L - 1))
    with pytest.raises(RuntimeError, match="in_bits must be 0 or in 2..24, got 1"):
        call(in_bits=1)
    with pytest.raises(RuntimeError, match="x_max must be > 0"):
        call(x_max=0.0)
