"""Benchmark cases of the analog family: crossbar + NL-ADC simulation (SPEC.md §3.3).

CPU, ``lstm`` and ``gru``: ``nlseq.nn.AnalogLSTM`` / ``AnalogGRU`` forward, T = 64, B = 8,
I = H = 128, 5-bit NL-ADCs, read and output noise on (fresh Philox draws every step). Impls: ``cpp``
(the whole-layer C++ kernel) and ``reference`` (the per-step PyTorch path, bucketize comparator). Goal: cpp <= 2.5 ms
(SPEC §3.3: IBM aihwkit 25.3 ms, torch.nn.LSTM 1.19 ms on the 2-core CPU). The digital peers run
in their own cases, ``lstm-digital`` and ``gru-digital`` (their outputs are not the analog ones, so they cannot share the
analog case's oracle).
GPU, ``linear``: the fused op at M×K×N = 65536×1024×4096 (8-bit sigmoid NL-ADC, noise on) for
cuda / triton / reference, and ``linear-digital``: torch matmul + sigmoid at the same size.
Goal: fused within 1.15× of the digital row (eager PyTorch simulation: 1.58×, SPEC §3.3).

Oracle: the ``reference`` path on the same inputs (float32; the analog result is a set of ADC
levels, not a float64 quantity). Inputs sit on exact binary grids (weights multiples of 2⁻³,
inputs on the DAC grid, programming noise off, read/output noise on), so every sum is exact in
float32 in any order and a correct kernel agrees with the oracle level for level: tolerance 0 on
the CPU. On the GPU the Triton/CUDA polynomials may fuse multiply-adds (one ulp on a normal), so a
current within ~1e-6 of a threshold may move one level: tolerance one LSB of the 8-bit ADC.
"""
from __future__ import annotations

import functools

import torch

import nlseq
from nlseq.analog import NLADC, CrossbarConfig
from nlseq.bench import Case, Impl
from nlseq.nn import AnalogGRU, AnalogLSTM

FAMILY = "analog"

T, B, H = 64, 8, 128
# Read and output noise on, programming noise off (keeps the programmed weights on the 2^-3 grid).
BENCH_CONFIG = CrossbarConfig(prog_noise=0.0, read_noise=0.01, out_noise=0.002, in_bits=8, x_max=127 / 128)


def _grid(shape, scale, lo, hi, g):
    return torch.randint(lo, hi + 1, shape, generator=g).float() * scale


# ---------------------------------------------------------------- CPU: analog LSTM and GRU
@functools.lru_cache(maxsize=None)
def _rnn_modules(kind):
    g = torch.Generator().manual_seed(0)
    digital = getattr(torch.nn, kind)(H, H)
    with torch.no_grad():
        for p in digital.parameters():
            p.copy_(_grid(p.shape, 2.0 ** -3, -2, 2, g))  # |w| <= 1/4
    cls = AnalogLSTM if kind == "LSTM" else AnalogGRU
    analog = {b: cls.from_digital(digital, config=BENCH_CONFIG, adc_bits=5, backend=b).eval().program()
              for b in ("cpp", "reference")}
    return digital.eval(), analog


def lstm_inputs():
    g = torch.Generator().manual_seed(1)
    return {"x": _grid((T, B, H), 2.0 ** -7, -127, 127, g)}


def _rnn_analog(kind, backend, x):
    m = _rnn_modules(kind)[1][backend]
    m.reset_noise()  # same noise stream on every call and for every impl
    with torch.no_grad():
        return m(x.float())[0]


def _rnn_oracle(kind, x):
    return _rnn_analog(kind, "reference", x).double()


def _rnn_digital(kind, x):
    with torch.no_grad():
        return _rnn_modules(kind)[0](x)[0]


def _rnn_digital_oracle(kind, x):
    digital = _rnn_modules(kind)[0]
    ref = getattr(torch.nn, kind)(H, H).double()
    ref.load_state_dict({k: v.double() for k, v in digital.state_dict().items()})
    with torch.no_grad():
        return ref(x)[0]


def _rnn_flops():  # both crossbars have 4H columns on [x; h; 1]
    return 2 * T * B * 4 * H * (2 * H + 1)


# ---------------------------------------------------------------- GPU: fused AnalogLinear-sized op
M_GPU, K_GPU, N_GPU = 65536, 1024, 4096


def linear_inputs(M, K, N, device):
    g = torch.Generator().manual_seed(0)
    adc = NLADC("sigmoid", 8)
    x = _grid((M, K), 1 / 16, -127, 127, g)  # DAC grid of x_max = 127/16, in_bits 8
    w = _grid((N, K), 2.0 ** -3, -2, 2, g)
    col_scale = torch.full((N,), 2.0 ** -6)  # current in units where the ramp spans ~±0.1 µA
    thr = (adc.thresholds.float() * 16.0)[None, :].expand(N, -1).contiguous() * 2.0 ** -6
    lev = adc.levels.float()[None, :].expand(N, -1).contiguous()
    to = lambda t: t.to(device)  # noqa: E731
    return {"x": to(x), "w": to(w), "col_scale": to(col_scale), "thr": to(thr), "lev": to(lev)}


_LINEAR_KW = dict(in_bits=8, x_max=127 / 16, noise_a=2.0 ** -28, noise_b=2.0 ** -24, seed=3, offset=0)


def _linear_analog(backend, x, w, col_scale, thr, lev):
    return nlseq.analog_mvm(x, w, col_scale, thr, lev, act="sigmoid", backend=backend, **_LINEAR_KW)


def _linear_oracle(x, w, col_scale, thr, lev):
    return _linear_analog("reference", x.float(), w.float(), col_scale.float(), thr.float(), lev.float()).double()


def _linear_digital(x, w, col_scale, thr, lev):
    return torch.sigmoid(x @ w.t())


def _linear_digital_oracle(x, w, col_scale, thr, lev):
    return torch.sigmoid(x @ w.t())


def cases(device: torch.device, quick: bool) -> list[Case]:
    f32 = torch.float32
    if device.type == "cuda":
        M = M_GPU // 4 if quick else M_GPU
        shape = {"M": M, "K": K_GPU, "N": N_GPU}
        inputs = functools.partial(linear_inputs, M, K_GPU, N_GPU, device)
        flops = {"fwd": 2 * M * K_GPU * N_GPU}
        byt = {"fwd": 4 * (M * K_GPU + N_GPU * K_GPU + M * N_GPU)}
        impls = [Impl(b, functools.partial(_linear_analog, b), backend=b, backward=False)
                 for b in ("cuda", "triton", "reference")]
        return [
            Case(family=FAMILY, name="linear", device=device, dtype=f32, shape=shape, inputs=inputs,
                 oracle=_linear_oracle, impls=impls, output_names=("y",), atol=1 / 256 + 1e-6, rtol=0.0,
                 tolerance_note="one LSB of the 8-bit ADC: fused multiply-adds in the GPU polynomials may move "
                                "a current within ~1e-6 of a threshold by one level",
                 baseline="reference", flops=flops, bytes=byt,
                 note="goal: fused (cuda/triton) <= 1.15x the linear-digital row; eager simulation 1.58x (SPEC §3.3)"),
            Case(family=FAMILY, name="linear-digital", device=device, dtype=f32, shape=shape, inputs=inputs,
                 oracle=_linear_digital_oracle, impls=[Impl("torch", _linear_digital, backward=False)],
                 output_names=("y",), atol=1e-4, rtol=1e-4, tolerance_note="fp32 GEMM vs float64, K = 1024",
                 flops=flops, bytes=byt, note="peer of analog/linear: digital matmul + sigmoid"),
        ]
    shape = {"T": T, "B": B, "H": H}
    flops = {"fwd": _rnn_flops()}
    out = []
    for kind in ("LSTM", "GRU"):
        name = kind.lower()
        goal = ("goal: cpp <= 2.5 ms (torch.nn.LSTM 1.19 ms, aihwkit 25.3 ms; SPEC §3.3); compare lstm-digital"
                if kind == "LSTM" else "no goal set; compare gru-digital")
        out += [
            Case(family=FAMILY, name=name, device=device, dtype=f32, shape=shape, inputs=lstm_inputs,
                 oracle=functools.partial(_rnn_oracle, kind),
                 impls=[Impl("cpp", functools.partial(_rnn_analog, kind, "cpp"), backend="cpp", backward=False),
                        Impl("reference", functools.partial(_rnn_analog, kind, "reference"), backend="reference",
                             backward=False, timed=not quick,
                             note="" if not quick else "--quick: checked, not timed (per-step Python path)")],
                 output_names=("out",), atol=0.0, rtol=0.0,
                 tolerance_note="exact: binary-grid weights and inputs make every float32 sum order-independent",
                 baseline=None if quick else "reference", flops=flops, note=goal),
            Case(family=FAMILY, name=f"{name}-digital", device=device, dtype=f32, shape=shape, inputs=lstm_inputs,
                 oracle=functools.partial(_rnn_digital_oracle, kind),
                 impls=[Impl("torch", functools.partial(_rnn_digital, kind), backward=False)],
                 output_names=("out",), atol=1e-5, rtol=1e-5, tolerance_note=f"fp32 {kind} vs float64, T = 64",
                 flops=flops, note=f"peer of analog/{name}: torch.nn.{kind}, same weights and inputs"),
        ]
    return out
