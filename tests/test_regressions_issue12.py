"""Regression tests for every example of issue 12 (bad input never gives a wrong answer or a hang;
NaN, inf and overflow behave the same on every backend). The rules are in docs/numerics.md."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import nlseq
from _utils import backend_params
from nlseq._checks import MAX_POSITION
from nlseq.analog import NLADC, CrossbarConfig
from nlseq.reference.softplus_attention import softplus_attention_naive

CPU_BACKENDS = backend_params("reference", "cpp", "triton")
NAN = float("nan")
INF = float("inf")


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ NaN through Newton
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_pararnn_newton_nan_input_is_reported_not_residual_zero(backend, cell):
    # the cpp max `if (!(d <= m)) m = d;` let the element after a NaN overwrite it: residual 0
    N = 16
    U = torch.randn(2, 12, 3, N, generator=_g(0))
    U[0, 3, 1, 5] = NAN
    A = torch.randn(3, N, generator=_g(1)) * 0.3
    P = torch.randn(2, N, generator=_g(2)) * 0.3 if cell == "lstm" else None
    with pytest.raises(RuntimeError, match="not finite"):
        nlseq.pararnn(cell, U, A, P, mode="newton", backend=backend)
    with pytest.warns(RuntimeWarning, match="not finite"):
        S, info = nlseq.pararnn(
            cell, U, A, P, mode="newton", backend=backend, on_nonconvergence="warn", max_iters=1000, return_info=True
        )
    assert math.isnan(float(info.residual)), f"residual {float(info.residual)} hides the NaN"
    assert int(info.iterations) <= 1, "Newton kept iterating on a NaN residual"
    assert torch.isnan(S[0]).any(), "the NaN disappeared from the output"
    assert not info.converged


@pytest.mark.parametrize("backend", backend_params("reference", "cpp"))
def test_newton_solve_nan_stops_at_once(backend):
    x = torch.randn(2, 40, 8, generator=_g(3))
    x[1, 7, 2] = NAN
    with pytest.raises(RuntimeError, match="not finite"):
        nlseq.newton_solve(lambda h, x: torch.tanh(0.5 * h + x), x, torch.zeros(2, 8), max_iters=10**6, backend=backend)
    with pytest.warns(RuntimeWarning, match="not finite"):
        h, info = nlseq.newton_solve(
            lambda h, x: torch.tanh(0.5 * h + x),
            x,
            torch.zeros(2, 8),
            max_iters=10**6,
            on_nonconvergence="warn",
            return_info=True,
            backend=backend,
        )
    assert info.iterations == 0 and math.isnan(info.residual)
    assert torch.isnan(h).any()


def test_nonconvergence_message_still_names_contraction_for_finite_residuals():
    x = torch.randn(1, 30, 4, generator=_g(4))
    with pytest.raises(RuntimeError, match="contracting"):
        nlseq.newton_solve(lambda h, x: torch.tanh(3.0 * h + x), x, torch.zeros(1, 4), max_iters=1)


# ------------------------------------------------------------------ NaN through attention
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("p", [None, 15.0])
def test_nan_key_gives_nan_rows_lssa_and_lssar(backend, p):
    q = torch.randn(1, 2, 8, 16, generator=_g(5))
    k = torch.randn(1, 1, 8, 16, generator=_g(6))
    v = torch.randn(1, 1, 8, 16, generator=_g(7))
    k[0, 0, 3, 4] = NAN
    o = nlseq.softplus_attention(q, k, v, reweight_p=p, backend=backend)
    assert torch.isnan(o[:, :, 3:]).all(), "a row that sees the NaN key must be NaN"
    assert torch.isfinite(o[:, :, :3]).all(), "rows before the NaN key must stay finite"
    ref = softplus_attention_naive(q[:, :, :3].double(), k[:, :, :3].double(), v[:, :, :3].double(), reweight_p=p)
    torch.testing.assert_close(o[:, :, :3].double(), ref, atol=2e-5, rtol=2e-5)
    # gradients: NaN where the math is undefined, never a finite value for the NaN rows
    qg = q.clone().requires_grad_()
    nlseq.softplus_attention(qg, k, v, reweight_p=p, backend=backend).sum().backward()
    assert torch.isnan(qg.grad[:, :, 3:]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kv_offset_overflow_is_rejected_and_the_bound_works(backend):
    q = torch.randn(1, 1, 3, 8, generator=_g(8))
    k = torch.randn(1, 1, 5, 8, generator=_g(9))
    v = torch.randn(1, 1, 5, 8, generator=_g(10))
    for bad in (2**63 - 1, 2**31, MAX_POSITION - 2):
        with pytest.raises(ValueError, match="kv_offset"):
            nlseq.softplus_attention(q, k, v, kv_offset=bad, backend=backend)
    # the largest accepted offset: every row sees every key (no index wrapped around)
    o = nlseq.softplus_attention(q, k, v, kv_offset=MAX_POSITION - 3, backend=backend)
    ref = softplus_attention_naive(q.double(), k.double(), v.double(), causal=False)
    torch.testing.assert_close(o.double(), ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("p", [None, 2.0])
@pytest.mark.parametrize("causal", [True, False])
def test_very_negative_scores_do_not_underflow(backend, p, causal):
    # qk_norm=False with every visible score below -104: fp32 softplus underflows to 0; the row
    # must still be its proper weighted mean (and the gradient finite)
    B, H, T, D = 1, 2, 9, 4
    k = torch.rand(B, 1, T, D, generator=_g(11)) + 1
    k[..., 0] += torch.linspace(0, 1, T)
    q = -(torch.rand(B, H, T, D, generator=_g(12)) + 1) * 12  # scores ~ -100 .. -400
    v = torch.randn(B, 1, T, D, generator=_g(13))
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref = softplus_attention_naive(qd, kd, vd, qk_norm=False, reweight_p=p, causal=causal)
    ref.sum().backward()
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o = nlseq.softplus_attention(qg, kg, vg, qk_norm=False, reweight_p=p, causal=causal, backend=backend)
    o.sum().backward()
    assert (o.abs().amax(-1) > 0).all(), "a row came back all zero"
    # fp32 scores of magnitude ~300 carry ~2.4e-5 absolute rounding (ulp(300)·c), so every weight
    # has that relative error: 1e-4 on o. dk sums Tq terms c·a·(dP − Δ)·q of magnitude ~50 that
    # cancel to ~1e-2, so its absolute error is up to ~9·50·2.4e-5 ≈ 1e-2 (the formulas
    # themselves are checked to 1e-9 in float64 below).
    torch.testing.assert_close(o.double(), ref, atol=1e-4, rtol=1e-4)
    for got, want, name, atol in (
        (qg.grad, qd.grad, "dq", 1e-3),
        (kg.grad, kd.grad, "dk", 1.5e-2),
        (vg.grad, vd.grad, "dv", 1e-3),
    ):
        assert torch.isfinite(got).all(), f"{name} not finite"
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=1e-3, msg=name)
    if backend == "triton":
        return  # float64 is not a Triton dtype
    # float64: every score is below SHIFT_BELOW = -40, so the shifted form runs; exact to rounding
    qg, kg, vg = (t.double().requires_grad_() for t in (q, k, v))
    o = nlseq.softplus_attention(qg, kg, vg, qk_norm=False, reweight_p=p, causal=causal, backend=backend)
    o.sum().backward()
    torch.testing.assert_close(o, ref, atol=1e-10, rtol=1e-10)
    for got, want, name in ((qg.grad, qd.grad, "dq"), (kg.grad, kd.grad, "dk"), (vg.grad, vd.grad, "dv")):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9, msg=name)


def test_very_negative_scores_float64_gradcheck():
    k = torch.rand(1, 1, 6, 4, generator=_g(14), dtype=torch.float64) + 1
    k[..., 0] += torch.linspace(0, 1, 6, dtype=torch.float64)
    q = -(torch.rand(1, 2, 6, 4, generator=_g(15), dtype=torch.float64) + 1) * 12
    v = torch.randn(1, 1, 6, 4, generator=_g(16), dtype=torch.float64)
    for backend in ("reference", "cpp"):
        for p in (None, 2.0):
            f = lambda a, b, c: nlseq.softplus_attention(a, b, c, qk_norm=False, reweight_p=p, backend=backend)  # noqa
            assert torch.autograd.gradcheck(f, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_()))


# ------------------------------------------------------------------ analog
@pytest.mark.parametrize("cls", ["AnalogLSTM", "AnalogGRU"])
def test_analog_rnn_triton_backend_runs_in_eval(cls):
    torch.manual_seed(0)
    cfg = CrossbarConfig.ideal(x_max=8.0)
    m_t = getattr(nlseq.nn, cls)(3, 4, config=cfg, backend="triton").eval()
    m_r = getattr(nlseq.nn, cls)(3, 4, config=cfg, backend="reference").eval()
    m_r.load_state_dict(m_t.state_dict())
    x = torch.randn(5, 2, 3, generator=_g(17))
    with torch.no_grad():
        y_t, _ = m_t(x)
        y_r, _ = m_r(x)
    torch.testing.assert_close(y_t, y_r)


def test_analog_thresholds_noise_and_params_are_validated():
    adc = NLADC("tanh", 2)
    x = torch.randn(5, 4, generator=_g(18))
    w = torch.randn(3, 4, generator=_g(19))
    thr = adc.thresholds.float().expand(3, 3).contiguous()
    lev = adc.levels.float().expand(3, 4).contiguous()
    args = (x, w, torch.ones(3))
    with pytest.raises(ValueError, match="thresholds.*non-decreasing"):
        nlseq.analog_mvm(*args, thr.flip(-1).contiguous(), lev)
    bad = thr.clone()
    bad[1, 0] = NAN
    with pytest.raises(ValueError, match="thresholds.*finite"):
        nlseq.analog_mvm(*args, bad, lev)
    with pytest.raises(ValueError, match="noise must have shape"):
        nlseq.analog_mvm(*args, thr, lev, noise=torch.zeros(3, 5))  # [N, M] has M·N elements too
    with pytest.raises(ValueError, match="noise_a"):
        nlseq.analog_mvm(*args, thr, lev, noise_a=INF)
    for kw in (dict(cmp_noise=INF), dict(cmp_offset=INF), dict(cmp_noise=NAN)):
        with pytest.raises(ValueError, match="cmp_"):
            NLADC("tanh", 3, **kw)
    with pytest.raises(ValueError, match="read_noise"):
        CrossbarConfig(read_noise=INF)
    with pytest.raises(ValueError, match="in_range"):
        NLADC("identity", 3, (0.0, 1.0, 2.0))
    with pytest.raises(TypeError, match="in_bits"):
        CrossbarConfig(in_bits=7.9)  # was int()-truncated to 7
    with pytest.raises(TypeError, match="seed"):
        nlseq.nn.AnalogLinear(4, 3, seed=1.7)


def test_pcm_noise_sigma_is_never_negative():
    cfg = CrossbarConfig(prog_noise_model="pcm", prog_noise=1.0)
    G = torch.linspace(-10.0, 100.0, 1001, dtype=torch.float64)  # targets far outside [0, g_max]
    sigma = cfg.prog_sigma(G)
    assert (sigma >= 0).all()
    inside = torch.linspace(0.0, cfg.g_max, 11, dtype=torch.float64)  # unchanged on [0, g_max]
    g = inside / cfg.g_max
    want = (0.26348 + 1.9650 * g - 1.1731 * g * g) * (cfg.g_max / 25.0)
    torch.testing.assert_close(cfg.prog_sigma(inside), want)


def test_nladc_rejects_integer_and_complex_inputs():
    adc = NLADC("tanh", 3)
    with pytest.raises(TypeError, match="u"):
        adc(torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="u"):
        adc(torch.tensor([0.5 + 1.0j]))
    y = adc(torch.tensor([0.0, 1.0, 2.0]))  # the explicit conversion works
    assert y.dtype == torch.float32


def test_analog_lstm_state_for_other_layer_count_rejected():
    m = nlseq.nn.AnalogLSTM(3, 4, num_layers=1, config=CrossbarConfig.ideal())
    x = torch.randn(5, 2, 3, generator=_g(20))
    two = (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="num_layers"):
        m(x, two)
    with pytest.raises(TypeError, match="hx"):
        nlseq.nn.AnalogGRU(3, 4)(x, torch.zeros(1, 2, 4, dtype=torch.complex64))


# ------------------------------------------------------------------ silent coercions
def test_complex_and_bool_initial_states_rejected():
    U = torch.randn(2, 5, 3, 4, generator=_g(21))
    A = torch.randn(3, 4, generator=_g(22)) * 0.3
    for dt in (torch.complex64, torch.bool):
        with pytest.raises(TypeError, match="s0"):
            nlseq.pararnn("gru", U, A, None, torch.zeros(2, 1, 4, dtype=dt))
        with pytest.raises(TypeError, match="h0"):
            nlseq.nn.ParaGRU(4, 4)(torch.randn(2, 5, 4), torch.zeros(1, 2, 4, dtype=dt))
        with pytest.raises(TypeError, match="h0"):
            nlseq.newton_solve(lambda h, x: torch.tanh(h + x), torch.randn(2, 5, 3), torch.zeros(2, 3, dtype=dt))


def test_newton_step_returning_wrong_shape_rejected():
    x = torch.randn(2, 6, 3, generator=_g(23))
    with pytest.raises(ValueError, match="step"):
        nlseq.newton_solve(lambda h, x: torch.tanh(h + x).mean(-1, keepdim=True), x, torch.zeros(2, 3))


@pytest.mark.parametrize("backend", backend_params("reference", "cpp"))
def test_unclear_messages_now_name_the_argument(backend):
    A, b = torch.rand(2, 5, 3), torch.rand(2, 5, 3)
    with pytest.raises(TypeError, match="linear_recurrence: h0 must be a torch.Tensor"):
        nlseq.linear_recurrence(A, b, 0.0, backend=backend)
    with pytest.raises(
        ValueError, match=r"b must have shape \(2, 5, 3\) \(N = 3, as A and h0 give\)"
    ):  # b is the odd one: A and h0 agree on N = 3
        nlseq.linear_recurrence(A, torch.rand(2, 5, 4), torch.rand(2, 3), backend=backend)
    with pytest.raises(ValueError, match="num_heads"):
        nlseq.nn.SoftplusAttention(8, 0)
    attn = nlseq.nn.SoftplusAttention(8, 2, backend=backend)
    x = torch.randn(1, 3, 8)
    for cache in ((torch.zeros(1, 2, 2, 4),), (torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 3)), "kv"):
        with pytest.raises(ValueError, match="kv_cache"):
            attn(x, cache)
    with pytest.raises(TypeError, match="damping"):
        nlseq.newton_solve(lambda h, x: torch.tanh(h + x), torch.randn(1, 4, 2), damping="0.5", backend=backend)


# ------------------------------------------------------------------ training default
def test_modules_fall_back_to_sequential_and_count_it(caplog):
    torch.manual_seed(0)
    gru = nlseq.nn.ParaGRU(4, 8, heads=2, backend="reference", mode="newton", max_iters=1)
    assert gru.on_nonconvergence == "sequential"
    with torch.no_grad():
        gru.weight_hh.mul_(20.0)  # far from contracting: one Newton step cannot converge
    x = torch.randn(2, 30, 4, generator=_g(24))
    with caplog.at_level(logging.WARNING, logger="nlseq"):
        y, _ = gru(x)
        y2, _ = gru(x)
    assert gru.last_info.fallback and gru.last_info.fallbacks == 2 and gru.fallback_count == 2
    assert any("sequential" in r.message for r in caplog.records)
    exact = nlseq.nn.ParaGRU(4, 8, heads=2, backend="reference", mode="sequential")
    exact.load_state_dict(gru.state_dict())
    torch.testing.assert_close(y, exact(x)[0])
    strict = nlseq.nn.ParaGRU(4, 8, heads=2, backend="reference", mode="newton", max_iters=1, on_nonconvergence="raise")
    strict.load_state_dict(gru.state_dict())
    with pytest.raises(RuntimeError, match="did not converge"):
        strict(x)
    # the functional op keeps "raise" as its default
    with pytest.raises(RuntimeError, match="did not converge"):
        nlseq.pararnn(
            "gru",
            torch.randn(2, 30, 3, 8, generator=_g(25)),
            gru.weight_hh.detach(),
            mode="newton",
            max_iters=1,
            backend="reference",
        )
