"""Bad and odd inputs for every public op and module, on every CPU backend (issue 12).

Two halves, both generated from tables (deterministic, no random search):
- ``BAD``: one wrong thing per case (type, dtype, device-free rank/shape, value, string, tuple);
  every case must raise TypeError/ValueError/KeyError whose message names the op and the
  argument, before any kernel runs.
- ``ODD``: valid but unusual inputs (non-contiguous, stride 0 from expand, zero sizes, T = 1)
  that must agree with the float64 reference.
"""

from __future__ import annotations

import math

import pytest
import torch

import nlseq
from _utils import backend_params
from nlseq.analog import NLADC, CrossbarConfig, program_conductances, program_weights

CPU_BACKENDS = backend_params("reference", "cpp", "triton")
NAN = float("nan")
INF = float("inf")


def _t(*shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------ ops
def _scan(backend, **over):
    args = dict(A=_t(2, 5, 3) * 0.5, b=_t(2, 5, 3), h0=None, reverse=False)
    args.update(over)
    return nlseq.linear_recurrence(args["A"], args["b"], args["h0"], reverse=args["reverse"], backend=backend)


def _pararnn(backend, cell="gru", **over):
    N = 4
    args = dict(U=_t(2, 6, 3, N), A=_t(3, N) * 0.3, P=_t(2, N) * 0.3 if cell == "lstm" else None, s0=None)
    kw = dict(mode="newton")
    for k in list(over):
        if k in args:
            args[k] = over.pop(k)
    kw.update(over)
    return nlseq.pararnn(cell, args["U"], args["A"], args["P"], args["s0"], backend=backend, **kw)


def _elman(h, x):
    return torch.tanh(0.5 * h + x)


def _newton(backend, **over):
    args = dict(step=_elman, x=_t(2, 6, 3), h0=torch.zeros(2, 3))
    for k in list(over):
        if k in args:
            args[k] = over.pop(k)
    return nlseq.newton_solve(args["step"], args["x"], args["h0"], backend=backend, **over)


def _attn(backend, **over):
    args = dict(q=_t(1, 2, 5, 4), k=_t(1, 1, 5, 4), v=_t(1, 1, 5, 4))
    for k in list(over):
        if k in args:
            args[k] = over.pop(k)
    return nlseq.softplus_attention(args["q"], args["k"], args["v"], backend=backend, **over)


def _mvm_args(N=3, K=4, bits=2):
    adc = NLADC("tanh", bits)
    L = 1 << bits
    return dict(
        x=_t(5, K),
        weight=_t(N, K),
        col_scale=torch.ones(N),
        thresholds=adc.thresholds.float().expand(N, L - 1).contiguous(),
        levels=adc.levels.float().expand(N, L).contiguous(),
    )


def _mvm(backend, **over):
    args = _mvm_args()
    pos = {k: over.pop(k) for k in list(over) if k in args}
    args.update(pos)
    return nlseq.analog_mvm(
        args["x"], args["weight"], args["col_scale"], args["thresholds"], args["levels"], backend=backend, **over
    )


def _decreasing_thresholds():
    a = _mvm_args()
    thr = a["thresholds"].clone()
    thr[1] = thr[1].flip(-1)
    return thr


def _nan_thresholds():
    thr = _mvm_args()["thresholds"].clone()
    thr[0, 1] = NAN
    return thr


# (id, call(backend), exception type, words the message must contain)
BAD = [
    # linear_recurrence
    ("scan-h0-float", lambda be: _scan(be, h0=0.0), TypeError, ["linear_recurrence", "h0"]),
    ("scan-A-list", lambda be: _scan(be, A=[1.0]), TypeError, ["linear_recurrence", "A"]),
    ("scan-b-int", lambda be: _scan(be, b=torch.ones(2, 5, 3, dtype=torch.int64)), TypeError, ["b", "dtype"]),
    ("scan-b-complex", lambda be: _scan(be, b=torch.ones(2, 5, 3, dtype=torch.complex64)), TypeError, ["b", "dtype"]),
    (
        "scan-b-odd-N",
        lambda be: _scan(be, b=_t(2, 5, 4), h0=_t(2, 3)),
        ValueError,
        ["b must have shape (2, 5, 3)", "N = 3, as A and h0 give", "got (2, 5, 4)"],
    ),
    ("scan-h0-odd-N", lambda be: _scan(be, h0=_t(2, 4)), ValueError, ["h0 must have shape (2, 3)", "as A and b give"]),
    ("scan-A-odd-T", lambda be: _scan(be, A=_t(2, 4, 3), h0=_t(2, 3)), ValueError, ["disagree on T", "A", "b"]),
    ("scan-rank-b", lambda be: _scan(be, b=_t(2, 5, 3, 1), h0=_t(2, 3)), ValueError, ["b has the rank"]),
    ("scan-rank-1", lambda be: _scan(be, A=_t(5), b=_t(5)), ValueError, ["A", "dimensions"]),
    ("scan-block-nonsquare", lambda be: _scan(be, A=_t(2, 5, 3, 2, 3), b=_t(2, 5, 3, 2)), ValueError, ["A", "square"]),
    ("scan-block-K5", lambda be: _scan(be, A=_t(2, 5, 3, 5, 5), b=_t(2, 5, 3, 5)), ValueError, ["block size"]),
    ("scan-dtype-mix", lambda be: _scan(be, b=_t(2, 5, 3, dtype=torch.float64)), TypeError, ["dtype"]),
    ("scan-reverse-int", lambda be: _scan(be, reverse=1), TypeError, ["reverse", "bool"]),
    (
        "scan-backend-int",
        lambda be: nlseq.linear_recurrence(_t(2, 5, 3), _t(2, 5, 3), backend=3),
        TypeError,
        ["backend"],
    ),
    # pararnn
    ("pararnn-cell", lambda be: _pararnn(be, cell="rnn"), ValueError, ["cell"]),
    ("pararnn-cell-type", lambda be: _pararnn(be, cell=None), TypeError, ["cell"]),
    ("pararnn-U-rank", lambda be: _pararnn(be, U=_t(2, 6, 12)), ValueError, ["U", "dimensions"]),
    ("pararnn-U-gates", lambda be: _pararnn(be, U=_t(2, 6, 4, 4)), ValueError, ["U", "three gates"]),
    ("pararnn-A-odd-N", lambda be: _pararnn(be, A=_t(3, 5)), ValueError, ["A must have shape (3, 4)", "(3, 5)"]),
    (
        "pararnn-A-odd-N-lstm",
        lambda be: _pararnn(be, cell="lstm", A=_t(3, 5)),
        ValueError,
        ["A must have shape (3, 4)"],
    ),
    (
        "pararnn-U-odd-N-lstm",
        lambda be: _pararnn(be, cell="lstm", A=_t(3, 5), P=_t(2, 5)),
        ValueError,
        ["U must have shape (2, 6, 3, 5)", "as A and P give"],
    ),
    (
        "pararnn-s0-odd-B",
        lambda be: _pararnn(be, s0=_t(3, 1, 4)),
        ValueError,
        ["s0 must have shape (2, 1, 4)", "(3, 1, 4)"],
    ),
    (
        "pararnn-s0-complex",
        lambda be: _pararnn(be, s0=torch.zeros(2, 1, 4, dtype=torch.complex64)),
        TypeError,
        ["s0", "dtype"],
    ),
    ("pararnn-s0-bool", lambda be: _pararnn(be, s0=torch.zeros(2, 1, 4, dtype=torch.bool)), TypeError, ["s0"]),
    ("pararnn-lstm-noP", lambda be: _pararnn(be, cell="lstm", P=None), ValueError, ["peepholes", "P"]),
    ("pararnn-gru-P", lambda be: _pararnn(be, P=_t(2, 4)), ValueError, ["P=None"]),
    ("pararnn-mode", lambda be: _pararnn(be, mode="fast"), ValueError, ["mode"]),
    ("pararnn-onnc", lambda be: _pararnn(be, on_nonconvergence="ignore"), ValueError, ["on_nonconvergence"]),
    ("pararnn-max-iters-float", lambda be: _pararnn(be, max_iters=2.5), TypeError, ["max_iters", "int"]),
    ("pararnn-max-iters-bool", lambda be: _pararnn(be, max_iters=True), TypeError, ["max_iters"]),
    ("pararnn-max-iters-neg", lambda be: _pararnn(be, max_iters=-1), ValueError, ["max_iters"]),
    ("pararnn-tol-nan", lambda be: _pararnn(be, tol=NAN), ValueError, ["tol", "finite"]),
    ("pararnn-tol-str", lambda be: _pararnn(be, tol="1e-5"), TypeError, ["tol"]),
    # newton_solve
    ("newton-step", lambda be: _newton(be, step=3), TypeError, ["step"]),
    ("newton-x-rank", lambda be: _newton(be, x=_t(6)), ValueError, ["x"]),
    ("newton-x-int", lambda be: _newton(be, x=torch.ones(2, 6, 3, dtype=torch.int32)), TypeError, ["x", "dtype"]),
    ("newton-h0-complex", lambda be: _newton(be, h0=torch.zeros(2, 3, dtype=torch.complex64)), TypeError, ["h0"]),
    ("newton-h0-batch", lambda be: _newton(be, h0=torch.zeros(3, 3)), ValueError, ["h0"]),
    ("newton-jacobian", lambda be: _newton(be, jacobian="full"), ValueError, ["jacobian"]),
    ("newton-block-size-float", lambda be: _newton(be, jacobian="block", block_size=3.0), TypeError, ["block_size"]),
    ("newton-block-size-diag", lambda be: _newton(be, block_size=2), ValueError, ["block_size"]),
    ("newton-damping-str", lambda be: _newton(be, damping="0.5"), TypeError, ["damping"]),
    ("newton-damping-0", lambda be: _newton(be, damping=0.0), ValueError, ["damping"]),
    ("newton-damping-nan", lambda be: _newton(be, damping=NAN), ValueError, ["damping"]),
    ("newton-max-iters-float", lambda be: _newton(be, max_iters=3.0), TypeError, ["max_iters"]),
    ("newton-tol-neg", lambda be: _newton(be, tol=-1.0), ValueError, ["tol"]),
    ("newton-onnc", lambda be: _newton(be, on_nonconvergence=None), TypeError, ["on_nonconvergence"]),
    ("newton-params-tensor", lambda be: _newton(be, params=torch.ones(3)), TypeError, ["params"]),
    (
        "newton-step-shape",
        lambda be: _newton(be, step=lambda h, x: torch.tanh(h + x).sum(-1, keepdim=True)),
        ValueError,
        ["step"],
    ),
    # softplus_attention
    ("attn-q-rank", lambda be: _attn(be, q=_t(2, 5, 4)), ValueError, ["q", "dimensions"]),
    ("attn-k-int", lambda be: _attn(be, k=torch.ones(1, 1, 5, 4, dtype=torch.int64)), TypeError, ["k", "dtype"]),
    (
        "attn-v-odd-Tk",
        lambda be: _attn(be, v=_t(1, 1, 6, 4)),
        ValueError,
        ["v (1, 1, 6, 4) has Tk = 6", "k (1, 1, 5, 4) has Tk = 5"],
    ),
    (
        "attn-k-odd-D",
        lambda be: _attn(be, k=_t(1, 1, 5, 3)),
        ValueError,
        ["k must have shape (1, 1, 5, 4)", "D = 4, as q and v give"],
    ),
    ("attn-heads", lambda be: _attn(be, k=_t(1, 3, 5, 4), v=_t(1, 3, 5, 4)), ValueError, ["Hkv"]),
    ("attn-causal-int", lambda be: _attn(be, causal=1), TypeError, ["causal", "bool"]),
    ("attn-qknorm-str", lambda be: _attn(be, qk_norm="yes"), TypeError, ["qk_norm"]),
    ("attn-kv-offset-huge", lambda be: _attn(be, kv_offset=2**63 - 1), ValueError, ["kv_offset"]),
    ("attn-kv-offset-neg", lambda be: _attn(be, kv_offset=-1), ValueError, ["kv_offset"]),
    ("attn-kv-offset-float", lambda be: _attn(be, kv_offset=2.0), TypeError, ["kv_offset"]),
    ("attn-kv-offset-bool", lambda be: _attn(be, kv_offset=True), TypeError, ["kv_offset"]),
    ("attn-p-zero", lambda be: _attn(be, reweight_p=0), ValueError, ["reweight_p"]),
    ("attn-p-inf", lambda be: _attn(be, reweight_p=INF), ValueError, ["reweight_p"]),
    ("attn-p-str", lambda be: _attn(be, reweight_p="15"), TypeError, ["reweight_p"]),
    ("attn-cu-one", lambda be: _attn(be, cu_seqlens_q=torch.tensor([0, 5])), ValueError, ["cu_seqlens"]),
    (
        "attn-cu-float",
        lambda be: _attn(be, cu_seqlens_q=torch.tensor([0.0, 5.0]), cu_seqlens_k=torch.tensor([0, 5])),
        TypeError,
        ["cu_seqlens_q"],
    ),
    (
        "attn-cu-end",
        lambda be: _attn(be, cu_seqlens_q=torch.tensor([0, 4]), cu_seqlens_k=torch.tensor([0, 5])),
        ValueError,
        ["cu_seqlens_q"],
    ),
    # analog_mvm
    ("mvm-x-int", lambda be: _mvm(be, x=torch.ones(5, 4, dtype=torch.int32)), TypeError, ["x", "dtype"]),
    ("mvm-weight-K", lambda be: _mvm(be, weight=_t(3, 5)), ValueError, ["x", "K"]),
    ("mvm-col-scale", lambda be: _mvm(be, col_scale=torch.ones(4)), ValueError, ["col_scale"]),
    (
        "mvm-thr-decreasing",
        lambda be: _mvm(be, thresholds=_decreasing_thresholds()),
        ValueError,
        ["thresholds", "non-decreasing"],
    ),
    ("mvm-thr-nan", lambda be: _mvm(be, thresholds=_nan_thresholds()), ValueError, ["thresholds", "finite"]),
    ("mvm-levels-L", lambda be: _mvm(be, levels=torch.zeros(3, 3)), ValueError, ["levels"]),
    ("mvm-noise-transposed", lambda be: _mvm(be, noise=torch.zeros(3, 5)), ValueError, ["noise", "(5, 3)"]),
    ("mvm-noise-inf", lambda be: _mvm(be, noise=torch.full((5, 3), INF)), ValueError, ["noise", "finite"]),
    ("mvm-noise-a-inf", lambda be: _mvm(be, noise_a=INF), ValueError, ["noise_a"]),
    ("mvm-noise-b-nan", lambda be: _mvm(be, noise_b=NAN), ValueError, ["noise_b"]),
    ("mvm-noise-b-neg", lambda be: _mvm(be, noise_b=-1.0), ValueError, ["noise_b"]),
    ("mvm-in-bits-float", lambda be: _mvm(be, in_bits=8.0), TypeError, ["in_bits"]),
    ("mvm-in-bits-1", lambda be: _mvm(be, in_bits=1), ValueError, ["in_bits"]),
    ("mvm-x-max-inf", lambda be: _mvm(be, x_max=INF), ValueError, ["x_max"]),
    ("mvm-seed-float", lambda be: _mvm(be, seed=1.5), TypeError, ["seed"]),
    ("mvm-offset-neg", lambda be: _mvm(be, offset=-1), ValueError, ["offset"]),
    ("mvm-act", lambda be: _mvm(be, act="relu"), ValueError, ["act"]),
    ("mvm-act-count", lambda be: _mvm(be, act="tanh:x,sigmoid:1"), ValueError, ["act"]),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in BAD])
def test_bad_input_named(case, backend):
    _, call, exc, words = case
    with pytest.raises(exc) as info:
        call(backend)
    msg = str(info.value)
    assert msg.startswith("nlseq."), f"the message does not name the op: {msg}"
    for w in words:
        assert w in msg, f"{w!r} not in the message: {msg}"


# ------------------------------------------------------------------- constructors and modules
def _gru(**kw):
    return nlseq.nn.ParaGRU(4, 4, heads=2, **kw)


def _alstm(**kw):
    return nlseq.nn.AnalogLSTM(3, 4, **kw)


MODULE_BAD = [
    ("paragru-size-float", lambda: nlseq.nn.ParaGRU(4.0, 4), TypeError, ["nn.ParaGRU", "input_size"]),
    ("paragru-heads-0", lambda: nlseq.nn.ParaGRU(4, 4, heads=0), ValueError, ["heads"]),
    ("paragru-batch-first", lambda: nlseq.nn.ParaGRU(4, 4, batch_first=1), TypeError, ["batch_first"]),
    ("paragru-mode", lambda: _gru(mode="x"), ValueError, ["mode"]),
    ("paragru-onnc", lambda: _gru(on_nonconvergence="x"), ValueError, ["on_nonconvergence"]),
    ("paragru-max-iters", lambda: _gru(max_iters=2.0), TypeError, ["max_iters"]),
    ("paragru-x-rank", lambda: _gru()(_t(2, 4)), ValueError, ["x"]),
    ("paragru-x-int", lambda: _gru()(torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, ["x"]),
    ("paragru-h0-complex", lambda: _gru()(_t(2, 3, 4), torch.zeros(1, 2, 4, dtype=torch.complex64)), TypeError, ["h0"]),
    ("paragru-h0-layers", lambda: _gru()(_t(2, 3, 4), torch.zeros(2, 2, 4)), ValueError, ["h0"]),
    ("paralstm-state-1", lambda: nlseq.nn.ParaLSTM(4, 4)(_t(2, 3, 4), (torch.zeros(2, 4),)), ValueError, ["state"]),
    (
        "paralstm-c0-bool",
        lambda: nlseq.nn.ParaLSTM(4, 4)(
            _t(2, 3, 4),
            (
                torch.zeros(2, 4),  # state = (h0, c0)
                torch.zeros(2, 4, dtype=torch.bool),
            ),
        ),
        TypeError,
        ["c0"],
    ),
    ("attnmod-heads-0", lambda: nlseq.nn.SoftplusAttention(8, 0), ValueError, ["num_heads"]),
    ("attnmod-embed-float", lambda: nlseq.nn.SoftplusAttention(8.0, 2), TypeError, ["embed_dim"]),
    ("attnmod-kv-heads", lambda: nlseq.nn.SoftplusAttention(8, 2, 3), ValueError, ["num_kv_heads"]),
    ("attnmod-p", lambda: nlseq.nn.SoftplusAttention(8, 2, reweight_p=-1.0), ValueError, ["reweight_p"]),
    ("attnmod-causal", lambda: nlseq.nn.SoftplusAttention(8, 2, causal="yes"), TypeError, ["causal"]),
    ("attnmod-x", lambda: nlseq.nn.SoftplusAttention(8, 2)(_t(1, 3, 7)), ValueError, ["x"]),
    (
        "attnmod-cache-1",
        lambda: nlseq.nn.SoftplusAttention(8, 2)(_t(1, 3, 8), (torch.zeros(1, 2, 2, 4),)),
        ValueError,
        ["kv_cache"],
    ),
    (
        "attnmod-cache-heads",
        lambda: nlseq.nn.SoftplusAttention(8, 2)(_t(1, 3, 8), (torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))),
        ValueError,
        ["kv_cache[0]"],
    ),
    (
        "attnmod-cache-len",
        lambda: nlseq.nn.SoftplusAttention(8, 2)(_t(1, 3, 8), (torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 3, 4))),
        ValueError,
        ["kv_cache"],
    ),
    (
        "attnmod-cache-dtype",
        lambda: nlseq.nn.SoftplusAttention(8, 2)(_t(1, 3, 8), (torch.zeros(1, 2, 2, 4, dtype=torch.float64),) * 2),
        TypeError,
        ["kv_cache[0]"],
    ),
    ("config-in-bits-float", lambda: CrossbarConfig(in_bits=8.0), TypeError, ["CrossbarConfig", "in_bits"]),
    ("config-tile-rows-bool", lambda: CrossbarConfig(tile_rows=True), TypeError, ["tile_rows"]),
    ("config-p-stuck", lambda: CrossbarConfig(p_stuck_off=1.5), ValueError, ["p_stuck_off"]),
    ("config-read-noise-inf", lambda: CrossbarConfig(read_noise=INF), ValueError, ["read_noise"]),
    ("config-drift-nan", lambda: CrossbarConfig(drift_nu=NAN), ValueError, ["drift_nu"]),
    ("config-prog-neg", lambda: CrossbarConfig(prog_noise=-0.1), ValueError, ["prog_noise"]),
    ("config-g-max-inf", lambda: CrossbarConfig(g_max=INF), ValueError, ["g_max"]),
    ("config-model", lambda: CrossbarConfig(prog_noise_model="rram"), ValueError, ["prog_noise_model"]),
    ("nladc-bits-float", lambda: NLADC("tanh", 4.0), TypeError, ["NLADC", "bits"]),
    ("nladc-cmp-noise-inf", lambda: NLADC("tanh", 4, cmp_noise=INF), ValueError, ["cmp_noise"]),
    ("nladc-cmp-offset-nan", lambda: NLADC("tanh", 4, cmp_offset=NAN), ValueError, ["cmp_offset"]),
    ("nladc-range-3", lambda: NLADC("identity", 4, (0.0, 1.0, 2.0)), ValueError, ["in_range"]),
    ("nladc-range-nan", lambda: NLADC("identity", 4, (NAN, 1.0)), ValueError, ["in_range"]),
    ("nladc-calib-bool", lambda: NLADC("tanh", 4, offset_calibration=1), TypeError, ["offset_calibration"]),
    ("nladc-call-int", lambda: NLADC("tanh", 4)(torch.tensor([1, 2])), TypeError, ["u", "dtype"]),
    ("nladc-call-complex", lambda: NLADC("tanh", 4)(torch.tensor([1 + 1j])), TypeError, ["u", "dtype"]),
    ("program-weights-seed", lambda: program_weights(_t(3, 4), CrossbarConfig(), seed=1.5), TypeError, ["seed"]),
    ("program-weights-W", lambda: program_weights(_t(3), CrossbarConfig()), ValueError, ["W"]),
    (
        "program-conductances-G",
        lambda: program_conductances(torch.ones(3), CrossbarConfig(), torch.Generator()),
        TypeError,
        ["G"],
    ),
    ("analoglinear-seed", lambda: nlseq.nn.AnalogLinear(4, 3, seed=2.0), TypeError, ["seed"]),
    ("analoglinear-config", lambda: nlseq.nn.AnalogLinear(4, 3, config={}), TypeError, ["config"]),
    ("analoglinear-x", lambda: nlseq.nn.AnalogLinear(4, 3)(_t(2, 5)), ValueError, ["x"]),
    ("analoglstm-layers-float", lambda: nlseq.nn.AnalogLSTM(3, 4, 1.0), TypeError, ["num_layers"]),
    ("analoglstm-input", lambda: _alstm()(_t(5, 2, 4)), ValueError, ["input"]),
    (
        "analoglstm-hx-layers",
        lambda: _alstm()(_t(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4))),
        ValueError,
        ["hx[0]", "num_layers"],
    ),
    ("analoglstm-hx-single", lambda: _alstm()(_t(5, 2, 3), torch.zeros(1, 2, 4)), ValueError, ["hx"]),
    (
        "analoggru-hx-complex",
        lambda: nlseq.nn.AnalogGRU(3, 4)(_t(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.complex64)),
        TypeError,
        ["hx"],
    ),
    ("analog-reset-noise", lambda: _alstm().reset_noise(1.5), TypeError, ["offset"]),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in MODULE_BAD])
def test_bad_module_input_named(case):
    _, call, exc, words = case
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert msg.startswith("nlseq."), f"the message does not name the op/module: {msg}"
    for w in words:
        assert w in msg, f"{w!r} not in the message: {msg}"


def test_hf_entry_points_check_arguments():
    from nlseq.integrations import transformers as hf

    with pytest.raises(ValueError, match="register.*p"):
        hf.register(p=0.0)
    with pytest.raises(TypeError, match="backend"):
        hf.register(p=15.0, backend=None)
    q = _t(1, 2, 3, 4)
    with pytest.raises(ValueError, match="attention_mask"):
        hf.lssa_attention_forward(object(), q, q, q, torch.ones(1, 1, 3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="dropout"):
        hf.lssa_attention_forward(object(), q, q, q, None, dropout="0.1")


# ------------------------------------------------------------------ valid odd inputs: agreement
def _odd_views(t: torch.Tensor):
    """The same values as non-contiguous (transposed storage) and as stride-0 (expanded) views."""
    yield "contiguous", t
    yield "noncontig", t.transpose(0, -1).contiguous().transpose(0, -1)
    if t.shape[0] > 1:
        yield "stride0", t[:1].expand_as(t)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_scan_odd_layouts_match_float64(backend):
    for T in (0, 1, 7):
        A, b, h0 = _t(2, T, 3) * 0.5, _t(2, T, 3), _t(2, 3)
        for (na, Av), (nb, bv) in zip(_odd_views(A), _odd_views(b)):
            h, last = nlseq.linear_recurrence(Av, bv, h0, backend=backend)
            ref, ref_last = nlseq.linear_recurrence(Av.double(), bv.double(), h0.double(), backend="reference")
            assert h.shape == (2, T, 3), (na, nb, T)
            torch.testing.assert_close(h.double(), ref, atol=1e-5, rtol=1e-5, msg=f"{na}/{nb} T={T}")
            torch.testing.assert_close(last.double(), ref_last, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_odd_layouts_match_float64(backend):
    for Tq in (0, 1, 5):
        q, k, v = _t(2, 2, Tq, 4), _t(2, 1, 5, 4), _t(2, 1, 5, 4)
        for (nq, qv), (nk, kv) in zip(_odd_views(q), _odd_views(k)):
            for p in (None, 3.0):
                o = nlseq.softplus_attention(qv, kv, v, reweight_p=p, kv_offset=5 - Tq if Tq else 0, backend=backend)
                ref = nlseq.reference.softplus_attention.softplus_attention_naive(
                    qv.double(), kv.double(), v.double(), reweight_p=p, kv_offset=5 - Tq if Tq else 0
                )
                torch.testing.assert_close(o.double(), ref, atol=2e-5, rtol=2e-5, msg=f"{nq}/{nk} Tq={Tq} p={p}")


@pytest.mark.parametrize("backend", backend_params("reference", "cpp"))
def test_pararnn_odd_layouts_match_float64(backend):
    for T in (0, 1, 6):
        U, A = _t(2, T, 3, 4), _t(3, 4) * 0.3
        for name, Uv in _odd_views(U):
            S = nlseq.pararnn("gru", Uv, A, mode="sequential", backend=backend)
            ref = nlseq.pararnn("gru", Uv.double(), A.double(), mode="sequential", backend="reference")
            torch.testing.assert_close(S.double(), ref, atol=1e-5, rtol=1e-5, msg=f"{name} T={T}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_analog_mvm_odd_layouts_match_reference(backend):
    a = _mvm_args()
    x = a.pop("x")
    for name, xv in _odd_views(x):
        y = nlseq.analog_mvm(xv, **a, backend=backend)
        ref = nlseq.analog_mvm(xv.contiguous(), **a, backend="reference")
        torch.testing.assert_close(y, ref, msg=name)
    empty = nlseq.analog_mvm(x[:0], **a, backend=backend)
    assert empty.shape == (0, 3)
    # thresholds shared by all columns ([L-1]) and a noise tensor in x's leading layout
    x3 = _t(2, 2, 4)
    noise = _t(2, 2, 3)
    y = nlseq.analog_mvm(
        x3, a["weight"], a["col_scale"], a["thresholds"][0], a["levels"][0], noise=noise, noise_b=1.0, backend=backend
    )
    ref = nlseq.analog_mvm(
        x3.reshape(4, 4),
        a["weight"],
        a["col_scale"],
        a["thresholds"][0],
        a["levels"][0],
        noise=noise.reshape(4, 3),
        noise_b=1.0,
        backend="reference",
    )
    torch.testing.assert_close(y.reshape(4, 3), ref)
    assert not math.isnan(float(y.sum()))
