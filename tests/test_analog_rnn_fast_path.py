"""The analog LSTM / GRU inference fast path on the CPU (nn.analog ``_layer_fused`` outside torch.compile).

Outside torch.compile the modules call the whole-layer kernel directly (no registered-op
wrapper). Checked here, with read and output noise on and fixed seeds: its codes equal the
per-step ``analog_mvm`` path's bit for bit at odd shapes (T = 1, primes, H not a multiple of the
kernel's 32-column tiles, unbatched input), it equals the registered op ``nlseq::analog_rnn`` that
the compiled graph runs, and both move the noise counter by T per layer. Weights on a 2⁻³ grid
and x_max = 127/128 make every sum exact in float32 in any order (as in tests/test_analog.py).
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from nlseq.analog import CrossbarConfig
from nlseq.nn import AnalogGRU, AnalogLSTM

pytestmark = pytest.mark.skipif(not nlseq.backends()["cpp"], reason="needs the compiled cpp backend")

CFG = CrossbarConfig(prog_noise=0.0, read_noise=0.02, out_noise=0.01, in_bits=8, x_max=127 / 128)
SHAPES = [(1, 1, 3, 5), (7, 3, 5, 11), (13, 2, 17, 37)]  # (T, B, I, H)


def _modules(kind, I, H, layers, backend, seed=0):
    torch.manual_seed(seed)
    digital = getattr(torch.nn, kind)(I, H, num_layers=layers)
    with torch.no_grad():
        for p in digital.parameters():
            p.copy_(torch.randint(-8, 9, p.shape) / 8.0)
    cls = AnalogLSTM if kind == "LSTM" else AnalogGRU
    return cls.from_digital(digital, config=CFG, adc_bits=5, backend=backend, seed=seed + 11).eval()


def _state(kind, layers, B, H, g):
    h0 = torch.randint(-100, 101, (layers, B, H), generator=g) / 128.0
    c0 = torch.randint(-100, 101, (layers, B, H), generator=g) / 128.0
    return (h0, c0) if kind == "LSTM" else h0


@pytest.mark.parametrize("T,B,I,H", SHAPES, ids=["T{}-B{}-I{}-H{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fast_path_codes_equal_step_path(kind, T, B, I, H):
    g = torch.Generator().manual_seed(T * 100 + H)
    x = torch.randint(-100, 101, (T, B, I), generator=g) / 128.0
    hx = _state(kind, 2, B, H, g)
    outs = []
    for backend in ("cpp", "reference"):
        m = _modules(kind, I, H, 2, backend)
        assert m._fused_sequence(x) == (backend == "cpp")
        with torch.no_grad():
            outs.append(m(x, hx))
        assert m._draws == 2 * T  # one draw per step and layer on both paths
    (y1, s1), (y2, s2) = outs
    assert torch.equal(y1, y2)
    for a, b in zip(s1 if kind == "LSTM" else [s1], s2 if kind == "LSTM" else [s2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fast_path_unbatched_equals_step_path(kind):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-100, 101, (11, 7), generator=g) / 128.0  # [T, I] unbatched
    ys = []
    for backend in ("cpp", "reference"):
        m = _modules(kind, 7, 13, 1, backend)
        with torch.no_grad():
            ys.append(m(x)[0])
    assert ys[0].shape == (11, 13)
    assert torch.equal(ys[0], ys[1])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fast_path_equals_registered_op(kind):
    """The direct kernel call and the registered op (what torch.compile runs) give the same
    outputs and leave the same noise counter."""
    g = torch.Generator().manual_seed(9)
    x = torch.randint(-100, 101, (6, 3, 5), generator=g) / 128.0
    hx = _state(kind, 1, 3, 11, g)
    m = _modules(kind, 5, 11, 1, "cpp").program()
    p, thr = m._programmed[0], m._cell_adc_state[0]
    h = hx[0][0] if kind == "LSTM" else hx[0]
    c = hx[1][0] if kind == "LSTM" else None
    m.reset_noise(3)
    fast = m._layer_fused(x, h, c, p, thr)  # outside a graph: the direct call
    assert m._draws == 3 + 6
    m.reset_noise(3)
    orig = torch.compiler.is_compiling
    try:  # take _layer_fused's registered-op branch, as inside a compiled graph
        torch.compiler.is_compiling = lambda: True
        op = m._layer_fused(x, h, c, p, thr)
    finally:
        torch.compiler.is_compiling = orig
    assert m._draws == 3 + 6
    for a, b in zip(fast, op):
        assert (a is None and b is None) or torch.equal(a, b)


# Batches of 8 and 9 rows give each of two threads 4 or 5 rows: the kernel's 4-row comparator
# blocks (AVX-512 where the CPU has it) and its single-row remainder; 4H·rows normals reach the
# 64-group Philox passes, the 16-group ones and the scalar tail (H = 37: 148 columns, not a
# multiple of 16, so the column tails run too).
WIDE = [(3, 9, 7, 37), (2, 8, 16, 64)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,B,I,H", WIDE, ids=["T{}-B{}-I{}-H{}".format(*s) for s in WIDE])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fast_path_row_blocks_equal_step_path(kind, T, B, I, H, threads):
    g = torch.Generator().manual_seed(B * 1000 + H)
    x = torch.randint(-100, 101, (T, B, I), generator=g) / 128.0
    hx = _state(kind, 1, B, H, g)
    before = torch.get_num_threads()
    outs = []
    try:
        torch.set_num_threads(threads)
        for backend in ("cpp", "reference"):
            m = _modules(kind, I, H, 1, backend)
            assert m._fused_sequence(x) == (backend == "cpp")
            with torch.no_grad():
                outs.append(m(x, hx))
    finally:
        torch.set_num_threads(before)
    (y1, s1), (y2, s2) = outs
    assert y1.abs().sum() > 0  # the layer produced levels, not an all-zero output
    assert torch.equal(y1, y2)
    for a, b in zip(s1 if kind == "LSTM" else [s1], s2 if kind == "LSTM" else [s2]):
        assert torch.equal(a, b)
