"""ParaRNN (docs/spec.md §1): built-in cells, modules and newton_solve against float64 sequential oracles."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import nlseq
from _utils import DTYPE_IDS, assert_close_to_oracle, backend_params
from nlseq.nn import ParaGRU, ParaLSTM
from nlseq.reference import pararnn as R

# The fused Triton/CUDA kernels are tested here too once they exist (skipped with the reason).
ALL = backend_params("cuda", "triton", "cpp", "reference")
CPU = backend_params("cpp", "reference")
CELLS = ["gru", "lstm"]
MODULES = {"gru": ParaGRU, "lstm": ParaLSTM}

# float32 against the float64 oracle. Sequential: per-step rounding (~1e-7) of O(1) states, not
# amplified by the contracting recurrence. Newton: the iterate satisfies |residual| <= tol = 1e-5,
# and the error obeys e_t = J_t e_{t-1} + r_t, so |e| <= tol / (1 - ρ), ρ <= 0.9 at these weights.
TOL_SEQ = dict(atol=2e-5, rtol=2e-5)
TOL_NEWTON = dict(atol=1e-4, rtol=1e-4)
TOL64 = dict(atol=1e-9, rtol=1e-9)  # Newton tol 1e-10, same amplification


def _make(cell, B, T, N, *, dtype=torch.float32, with_s0=True, a_scale=0.5, seed=0):
    """Contracting inputs (|a|, |p| <= a_scale/…, docs/spec.md §1.3 clips them at 0.5) rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    S = R.STATE_SIZE[cell]
    U = torch.randn(B, T, 3, N, generator=g, dtype=torch.float64)
    A = (torch.rand(3, N, generator=g, dtype=torch.float64) * 2 - 1) * a_scale
    P = (torch.rand(2, N, generator=g, dtype=torch.float64) * 2 - 1) * a_scale if cell == "lstm" else None
    s0 = torch.randn(B, S, N, generator=g, dtype=torch.float64) * 0.5 if with_s0 else None
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return (U.to(dtype), A.to(acc), None if P is None else P.to(acc), None if s0 is None else s0.to(dtype))


@functools.lru_cache(maxsize=None)
def _oracle_cached(cell, B, T, N, dtype, with_s0, seed):
    U, A, P, s0 = _make(cell, B, T, N, dtype=dtype, with_s0=with_s0, seed=seed)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return R.pararnn_sequential(cell, U.double(), A.double(), d(P), d(s0))


def _oracle(cell, B, T, N, dtype=torch.float32, with_s0=True, seed=0):
    return _oracle_cached(cell, B, T, N, dtype, with_s0, seed)


# ---------------------------------------------------------------- cell math
@pytest.mark.parametrize("cell", CELLS)
def test_cell_jacobian_matches_autograd(cell):
    """The analytic per-channel Jacobian (docs/spec.md §1.3; the same formulas as nlseq/pararnn.h)
    equals torch.func.jacrev of the step, including the LSTM's 2×2 block."""
    U, A, P, s0 = _make(cell, 3, 1, 7, dtype=torch.float64, a_scale=1.5)
    U, s = U[:, 0], s0 * 3  # larger states exercise every term
    _, J = R.cell_step_jac(cell, U, A, P, s)  # [B, N, S, S]
    full = torch.func.vmap(torch.func.jacrev(lambda sp, u: R.cell_step(cell, u, A, P, sp)))(s, U)  # [B, S, N, S, N]
    B, S, N = s.shape
    diag = full.diagonal(dim1=2, dim2=4)  # [B, S, S, N]
    torch.testing.assert_close(J, diag.permute(0, 3, 1, 2), atol=1e-12, rtol=1e-12)
    off = full.clone()
    off.diagonal(dim1=2, dim2=4).zero_()
    assert off.abs().max() == 0, "the built-in cells must be diagonal across channels"


@pytest.mark.parametrize("cell", CELLS)
def test_cell_vjp_matches_autograd(cell):
    U, A, P, s0 = _make(cell, 2, 5, 6, dtype=torch.float64, a_scale=1.5)
    lam = torch.randn(2, 5, R.STATE_SIZE[cell], 6, dtype=torch.float64)
    prev = torch.randn_like(lam)
    dU, dA, dP, dprev = R.cell_vjp(cell, U, A, P, prev, lam)
    leaves = [U.clone().requires_grad_(), A.clone().requires_grad_(), prev.clone().requires_grad_()]
    if P is not None:
        leaves.append(P.clone().requires_grad_())
    out = R.cell_step(cell, leaves[0], leaves[1], leaves[3] if P is not None else None, leaves[2])
    grads = torch.autograd.grad(out, leaves, lam)
    for name, mine, ref in zip(["dU", "dA", "dprev", "dP"], [dU, dA, dprev, dP], grads):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=1e-12, msg=name)


# ---------------------------------------------------------------- forward of the registered op
SHAPES = [(2, 1, 5), (2, 63, 33), (2, 4099, 5)]


@pytest.mark.parametrize("B,T,N", SHAPES, ids=[f"B{b}-T{t}-N{n}" for b, t, n in SHAPES])
@pytest.mark.parametrize("with_s0", [False, True], ids=["zero_s0", "s0"])
@pytest.mark.parametrize("mode", ["newton", "sequential"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_forward_fp32(backend, cell, mode, with_s0, B, T, N):
    U, A, P, s0 = _make(cell, B, T, N, with_s0=with_s0)
    S_all, info = nlseq.pararnn(cell, U, A, P, s0, mode=mode, backend=backend, return_info=True)
    ref = _oracle(cell, B, T, N, with_s0=with_s0)
    assert S_all.dtype == U.dtype and S_all.shape == ref.shape
    assert_close_to_oracle(S_all, ref, **(TOL_NEWTON if mode == "newton" else TOL_SEQ), what="S_all")
    if mode == "newton":
        assert float(info.residual) <= info.tol and info.converged
        assert 0 <= int(info.iterations) <= 10
    else:
        assert int(info.iterations) == 0


@pytest.mark.parametrize("mode", ["newton", "sequential"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_forward_fp64(backend, cell, mode):
    U, A, P, s0 = _make(cell, 2, 63, 9, dtype=torch.float64)
    S_all = nlseq.pararnn(cell, U, A, P, s0, mode=mode, backend=backend)
    ref = R.pararnn_sequential(cell, U, A, P, s0)
    assert_close_to_oracle(S_all, ref, **TOL64, what="S_all")


@pytest.mark.parametrize("mode", ["newton", "sequential"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", backend_params("cpp", "reference"))
@pytest.mark.slow
def test_long_sequence(backend, cell, mode):
    """T = 16384: states stay accurate over a long horizon (no drift in the carried state)."""
    B, T, N = 1, 16384, 8
    U, A, P, s0 = _make(cell, B, T, N, seed=3)
    S_all = nlseq.pararnn(cell, U, A, P, s0, mode=mode, backend=backend)
    assert_close_to_oracle(
        S_all, _oracle(cell, B, T, N, seed=3), **(TOL_NEWTON if mode == "newton" else TOL_SEQ), what="S_all"
    )


def test_auto_mode_on_cpu_is_sequential():
    U, A, P, s0 = _make("gru", 1, 8, 4)
    _, info = nlseq.pararnn("gru", U, A, P, s0, backend="cpp", return_info=True)
    assert info.mode == "sequential"
    _, info = nlseq.pararnn("gru", U, A, P, s0, backend="reference", return_info=True)
    assert info.mode == "newton"


# ---------------------------------------------------------------- backward of the registered op
@pytest.mark.parametrize("T", [1, 63])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_op_gradients_fp64(backend, cell, T):
    """dU, dA, dP, ds0 of the implicit backward equal autograd through the float64 loop."""
    U, A, P, s0 = _make(cell, 2, T, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(2, T, R.STATE_SIZE[cell], 6, generator=g, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (U, A, s0)] + ([P.clone().requires_grad_()] if P is not None else [])
    Ui, Ai, s0i = inputs[:3]
    Pi = inputs[3] if P is not None else None
    out = nlseq.pararnn(cell, Ui, Ai, Pi, s0i, mode="newton", backend=backend)
    got = torch.autograd.grad((out * w).sum() + out[:, -1].pow(2).sum(), inputs)
    leaves = [t.clone().requires_grad_() for t in inputs]
    ref_out = R.pararnn_sequential(cell, leaves[0], leaves[1], leaves[3] if P is not None else None, leaves[2])
    ref = torch.autograd.grad((ref_out * w).sum() + ref_out[:, -1].pow(2).sum(), leaves)
    for name, a, b in zip(["dU", "dA", "ds0", "dP"], got, ref):
        assert_close_to_oracle(a, b, atol=1e-9, rtol=1e-9, what=name)


def test_op_gradcheck_fp64():
    U, A, P, s0 = _make("lstm", 1, 5, 3, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (U, A, P, s0)]
    fn = lambda u, a, p, s: nlseq.pararnn("lstm", u, a, p, s, mode="sequential", backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


# ---------------------------------------------------------------- input projection
def _projection_by_spec(x, W, b):
    """docs/spec.md §1.3 literally: gate g of head h is x[.., h-th slice] @ W[h, :, g, :] + its slice of b."""
    heads, ih, G, nh = W.shape
    gates = []
    for g in range(G):
        gates.append(
            torch.cat(
                [x[..., h * ih : (h + 1) * ih] @ W[h, :, g, :] + b[g, h * nh : (h + 1) * nh] for h in range(heads)],
                dim=-1,
            )
        )
    return torch.stack(gates, dim=-2)


def _projection_case(heads, *, transposed, seed=0):
    """x [2, 5, 12] (a transposed, non-contiguous view when asked), W [heads, 12/heads, 3, 20/heads], b [3, 20]."""
    g = torch.Generator().manual_seed(seed)
    I, N = 12, 20
    x = (
        torch.randn(5, 2, I, generator=g, dtype=torch.float64).transpose(0, 1)
        if transposed
        else torch.randn(2, 5, I, generator=g, dtype=torch.float64)
    )
    W = torch.randn(heads, I // heads, 3, N // heads, generator=g, dtype=torch.float64) / I**0.5
    b = torch.randn(3, N, generator=g, dtype=torch.float64)
    dU = torch.randn(2, 5, 3, N, generator=g, dtype=torch.float64)
    return x, W, b, dU


def _value_and_grads(fn, x, W, b, dU):
    x, W, b = (t.detach().requires_grad_() for t in (x, W, b))
    U = fn(x, W, b)
    return (U, *torch.autograd.grad(U, (x, W, b), dU.to(U.dtype)))


PROJ_HEADS = [1, 2, 4]


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("heads", PROJ_HEADS, ids=[f"heads{h}" for h in PROJ_HEADS])
def test_input_projection_fp64(heads, transposed):
    """U and the gradients of x, W, b against the per-head, per-gate formula of docs/spec.md §1.3."""
    x, W, b, dU = _projection_case(heads, transposed=transposed)
    ours = _value_and_grads(R.input_projection, x, W, b, dU)
    oracle = _value_and_grads(_projection_by_spec, x, W, b, dU)
    for name, a, o in zip(("U", "dx", "dW", "db"), ours, oracle):
        assert_close_to_oracle(a, o, atol=1e-12, rtol=1e-12, what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("heads", PROJ_HEADS, ids=[f"heads{h}" for h in PROJ_HEADS])
def test_input_projection_low_precision(heads, dtype):
    """FA's rule: error against the float64 oracle at most 2x that of the plain formula in dtype."""
    x, W, b, dU = _projection_case(heads, transposed=True)
    oracle = _value_and_grads(_projection_by_spec, x, W, b, dU)
    low = [t.to(dtype) for t in (x, W, b, dU)]
    ours = _value_and_grads(R.input_projection, *low)
    plain = _value_and_grads(_projection_by_spec, *low)
    for name, a, p, o in zip(("U", "dx", "dW", "db"), ours, plain, oracle):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        err = (a.double() - o).abs().max().item()
        base = (p.double() - o).abs().max().item()
        assert err <= 2 * base + torch.finfo(dtype).eps, f"{name}: error {err:.3e} > 2 x plain {dtype} error {base:.3e}"


def test_input_projection_checks_shapes():
    x, W, b, _ = _projection_case(2, transposed=False)
    with pytest.raises(ValueError, match="x's last dim must be heads \\* I/heads = 12"):
        R.input_projection(x[..., :10], W, b)
    with pytest.raises(ValueError, match="b must have shape"):
        R.input_projection(x, W, b[:, :10])


# ---------------------------------------------------------------- modules
def _module_pair(cell, I, N, heads, *, backend, mode, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = MODULES[cell](I, N, heads=heads, backend=backend, mode=mode, dtype=dtype)
    return m


def _module_oracle(m, x, state):
    """float64 autograd through the sequential loop, with the module's parameters."""
    W, b, A = m.weight_ih.double(), m.bias.double(), m.weight_hh.double()
    P = m.peephole.double() if m.cell == "lstm" else None
    U = R.input_projection(x.double(), W, b)
    s0 = None
    if state is not None:
        s0 = torch.stack([s.double().reshape(x.shape[0], -1) for s in state], dim=1)
    return R.pararnn_sequential(m.cell, U, A, P, s0)


MOD_CASES = [(1, 1), (2, 63), (4, 63)]


@pytest.mark.parametrize("heads,T", MOD_CASES, ids=[f"heads{h}-T{t}" for h, t in MOD_CASES])
@pytest.mark.parametrize("mode", ["newton", "sequential"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_module_outputs_and_gradients_fp64(backend, cell, mode, heads, T):
    """y, the final state and the gradients of x, the initial state and every parameter."""
    B, I, N = 2, 8, 12
    m = _module_pair(cell, I, N, heads, backend=backend, mode=mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64, requires_grad=True)
    S = R.STATE_SIZE[cell]
    state = [(torch.randn(1, B, N, generator=g, dtype=torch.float64) * 0.5).requires_grad_() for _ in range(S)]
    wy = torch.randn(B, T, N, generator=g, dtype=torch.float64)
    if cell == "gru":
        y, h_n = m(x, state[0])
        finals = [h_n]
    else:
        y, (h_n, c_n) = m(x, (state[1], state[0]))  # torch.nn.LSTM's (h, c); `state` is in kernel order [c, h]
        finals = [c_n, h_n]
    loss = (y * wy).sum() + sum((f * (k + 1)).sum() for k, f in enumerate(finals))
    params = dict(m.named_parameters())
    got = torch.autograd.grad(loss, [x, *state, *params.values()])

    leaves = [x.detach().clone().requires_grad_()] + [s.detach().clone().requires_grad_() for s in state]
    S_ref = _module_oracle(m, leaves[0], leaves[1:])
    y_ref = S_ref[:, :, -1]
    finals_ref = [S_ref[:, -1, k].unsqueeze(0) for k in range(S)]
    loss_ref = (y_ref * wy).sum() + sum((f * (k + 1)).sum() for k, f in enumerate(finals_ref))
    ref = torch.autograd.grad(loss_ref, leaves + list(params.values()))

    assert_close_to_oracle(y, y_ref, **TOL64, what="y")
    for k, (f, fr) in enumerate(zip(finals, finals_ref)):
        assert f.shape == (1, B, N)
        assert_close_to_oracle(f, fr, **TOL64, what=f"final state {k}")
    names = ["x"] + [f"state{k}" for k in range(S)] + list(params)
    for name, a, b in zip(names, got, ref):
        assert_close_to_oracle(a, b, atol=1e-8, rtol=1e-8, what=f"grad {name}")


LONG_B, LONG_T, LONG_I, LONG_N = 2, 4099, 4, 6


@functools.lru_cache(maxsize=None)
def _long_module_oracle(cell):
    """float64 y and gradients for the T = 4099 module case. Autograd through a 4099-step Python
    loop is too slow for CI, so the oracle is the float64 *reference* backend: the sequential loop
    forward and the implicit backward (vectorised PyTorch, a different code path from the cpp
    kernels; it matches autograd through the loop to 1e-9 in test_module_outputs_and_gradients_fp64)."""
    m = _module_pair(cell, LONG_I, LONG_N, 2, backend="reference", mode="sequential")
    x = torch.randn(LONG_B, LONG_T, LONG_I, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x.requires_grad_()
    y = m(x)[0]
    grads = torch.autograd.grad(y.sum(), [x, *m.parameters()])
    return m.state_dict(), x.detach(), y.detach(), grads


@pytest.mark.parametrize("mode", ["newton", "sequential"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
@pytest.mark.slow
def test_module_gradients_fp32_long(backend, cell, mode):
    """float32, T = 4099: y and the gradients of x and every parameter (sums over 4099 steps,
    compared within 1e-4 of their largest entry)."""
    sd, x64, y64, ref = _long_module_oracle(cell)
    m = _module_pair(cell, LONG_I, LONG_N, 2, backend=backend, mode=mode, dtype=torch.float32)
    m.load_state_dict({k: v.float() for k, v in sd.items()})
    x = x64.float().requires_grad_()
    y = m(x)[0]
    got = torch.autograd.grad(y.sum(), [x, *m.parameters()])
    assert_close_to_oracle(y, y64, **(TOL_NEWTON if mode == "newton" else TOL_SEQ), what="y")
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], got, ref):
        scale = b.abs().max().item()
        assert_close_to_oracle(a, b, atol=1e-4 * scale, rtol=1e-4, what=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_module_bf16(backend, cell):
    """bf16 inputs and parameters, float32 inside: error against the float64 oracle (on the same
    bf16 values) at most 2× that of PyTorch's own bf16 sequential loop, + 2^-9 for the rounding of
    the output (docs/design.md)."""
    B, T, I, N = 2, 257, 8, 16
    m = _module_pair(cell, I, N, 2, backend=backend, mode="newton", dtype=torch.bfloat16)
    x = torch.randn(B, T, I, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    y = m(x)[0]
    assert y.dtype == torch.bfloat16
    y64 = _module_oracle(m, x, None)[:, :, -1]
    P = m.peephole if cell == "lstm" else None
    with torch.no_grad():
        y_torch = R.pararnn_sequential(cell, R.input_projection(x, m.weight_ih, m.bias), m.weight_hh, P, None)[:, :, -1]
    err = (y.double() - y64).abs().max().item()
    err_torch = (y_torch.double() - y64).abs().max().item()
    assert err <= 2 * err_torch + 2**-9, f"bf16 error {err:.3e} vs PyTorch bf16 loop {err_torch:.3e}"


@pytest.mark.parametrize("cell", CELLS)
def test_module_batch_first_false(cell):
    m = _module_pair(cell, 4, 6, 2, backend="cpp", mode="sequential", dtype=torch.float32)
    m2 = MODULES[cell](4, 6, heads=2, batch_first=False, backend="cpp")
    m2.load_state_dict(m.state_dict())
    x = torch.randn(3, 11, 4)
    y, st = m(x)
    y2, st2 = m2(x.transpose(0, 1))
    assert y2.shape == (11, 3, 6)
    torch.testing.assert_close(y2.transpose(0, 1), y)
    torch.testing.assert_close(st2, st)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_state_dict_round_trip(cell):
    m = _module_pair(cell, 6, 8, 2, backend="cpp", mode="sequential", dtype=torch.float32)
    sd = m.reference_state_dict()
    assert set(sd) == ({"A", "B", "b", "C"} if cell == "lstm" else {"A", "B", "b"})
    assert sd["B"].shape == (2, 3, 3, 4) and sd["A"].shape == (3, 8) and sd["b"].shape == (3, 8)
    other = MODULES[cell](6, 8, heads=2, backend="cpp")
    other.load_reference_state_dict(sd)
    x = torch.randn(2, 9, 6)
    torch.testing.assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)
    bad = dict(sd)
    bad["A"] = bad["A"][:, :4]
    with pytest.raises(ValueError, match="A must have shape"):
        other.load_reference_state_dict(bad)
    with pytest.raises(KeyError, match="missing"):
        other.load_reference_state_dict({k: v for k, v in sd.items() if k != "b"})


@pytest.mark.parametrize("cell", CELLS)
def test_module_init_follows_spec(cell):
    m = MODULES[cell](64, 96, heads=4)
    torch.testing.assert_close(m.bias[0], -torch.linspace(0, 1, 96))
    assert m.bias[1:].abs().max() == 0
    bound = (6 / (16 + 96)) ** 0.5
    assert m.weight_ih.abs().max() <= bound
    assert m.weight_ih.shape == (4, 16, 3, 24)
    assert abs(m.weight_hh.std().item() - 2 / (5 * 96) ** 0.5) < 0.05  # 288 samples of N(0, (2/√(5N))²)


@pytest.mark.slow
def test_module_default_init_converges():
    """Newton with the defaults converges at the paper's initialisation (T = 2048, N = 64)."""
    for cls in (ParaGRU, ParaLSTM):
        torch.manual_seed(0)
        m = cls(32, 64, backend="reference", mode="newton")
        with torch.no_grad():
            m(torch.randn(2, 2048, 32))
        assert m.last_info.converged and int(m.last_info.iterations) <= 6


@pytest.mark.parametrize("cell", CELLS)
def test_module_errors(cell):
    with pytest.raises(ValueError, match="divisible by heads"):
        MODULES[cell](6, 8, heads=4)
    with pytest.raises(ValueError, match="divisible by heads"):
        MODULES[cell](8, 6, heads=4)
    m = MODULES[cell](4, 6, heads=2)
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="must have shape"):
        m(torch.randn(2, 3, 4), torch.zeros(3, 6) if cell == "gru" else (torch.zeros(3, 6), torch.zeros(3, 6)))


def test_module_empty_sequence():
    m = ParaGRU(4, 6, heads=2, backend="cpp")
    h0 = torch.randn(1, 2, 6)
    y, h_n = m(torch.randn(2, 0, 4), h0)
    assert y.shape == (2, 0, 6)
    torch.testing.assert_close(h_n, h0)


def test_op_input_errors():
    U, A, P, s0 = _make("lstm", 2, 5, 4)
    with pytest.raises(ValueError, match="peepholes"):
        nlseq.pararnn("lstm", U, A, None, s0)
    with pytest.raises(ValueError, match="no peepholes"):
        nlseq.pararnn("gru", U, A, P)
    with pytest.raises(ValueError, match=r"s0 must have shape \(2, 2, 4\)"):
        nlseq.pararnn("lstm", U, A, P, s0[:, :1])
    with pytest.raises(ValueError, match="cell must be"):
        nlseq.pararnn("rnn", U, A)
    with pytest.raises(ValueError, match=r"A must have shape \(3, 4\)"):
        nlseq.pararnn("gru", U, A[:, :3])


# ---------------------------------------------------------------- non-convergence
def _hard(cell):
    """A non-contracting cell (|a| = 3) over T = 63 with max_iters = 1: Newton cannot finish."""
    U, A, P, s0 = _make(cell, 2, 63, 5, a_scale=3.0, seed=5)
    return U, A.sign() * 3.0, None if P is None else P.sign() * 3.0, s0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_nonconvergence(backend, cell):
    U, A, P, s0 = _hard(cell)
    kw = dict(mode="newton", max_iters=1, backend=backend)
    with pytest.raises(RuntimeError, match=r"did not converge: residual .* > tol"):
        nlseq.pararnn(cell, U, A, P, s0, **kw)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        S_warn, info = nlseq.pararnn(cell, U, A, P, s0, on_nonconvergence="warn", return_info=True, **kw)
    assert not info.converged and not info.fallback and int(info.iterations) == 1
    ref = R.pararnn_sequential(cell, U.double(), A.double(), None if P is None else P.double(), s0.double())
    assert (S_warn.double() - ref).abs().max() > 1e-3  # the unconverged iterate, as warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback logs; it does not warn
        S_seq, info = nlseq.pararnn(cell, U, A, P, s0, on_nonconvergence="sequential", return_info=True, **kw)
    assert info.fallback
    assert_close_to_oracle(S_seq, ref, **TOL_SEQ, what="S_all after the sequential fallback")


# ---------------------------------------------------------------- registered ops
@pytest.mark.parametrize("with_s0", [False, True], ids=["zero_s0", "s0"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", CPU)
def test_opcheck(backend, cell, with_s0):
    from nlseq.ops.pararnn import _pararnn_backward_op, _pararnn_op

    U, A, P, s0 = _make(cell, 2, 9, 5, with_s0=with_s0)
    for mode in ("newton", "sequential"):
        args = (
            cell,
            U.requires_grad_(),
            A.requires_grad_(),
            None if P is None else P.requires_grad_(),
            s0,
            10,
            1e-5,
            mode,
            "raise",
            backend,
        )
        torch.library.opcheck(_pararnn_op, args)
    S_all = nlseq.pararnn(cell, U.detach(), A.detach(), None if P is None else P.detach(), s0, backend=backend)
    dS = torch.randn_like(S_all)
    ds_last = torch.randn_like(S_all[:, -1])
    torch.library.opcheck(
        _pararnn_backward_op,
        (cell, U.detach(), A.detach(), None if P is None else P.detach(), s0, S_all, dS, ds_last, backend),
    )


@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_binding_rejects_bad_inputs(backend):
    """The C++ checks (csrc/torch/pararnn_checks.h, shared with the CUDA binding) name the op and argument."""
    ops = torch.ops.nlseq_ext
    U, A, P, s0 = _make("lstm", 2, 5, 4)
    with pytest.raises(RuntimeError, match=r'pararnn_fwd: cell must be "gru" or "lstm", got "elman"'):
        ops.pararnn_fwd("elman", U, A, P, s0, 3, 1e-6)
    with pytest.raises(RuntimeError, match="pararnn_seq_fwd: the lstm cell needs the peepholes P"):
        ops.pararnn_seq_fwd("lstm", U, A, None, s0)
    with pytest.raises(RuntimeError, match="the gru cell has no peepholes"):
        ops.pararnn_seq_fwd("gru", U, A, P, s0[:, :1].contiguous())
    with pytest.raises(
        RuntimeError, match=r"A must have dtype Float \(the accumulation dtype of U, Float\), got Double"
    ):
        ops.pararnn_seq_fwd("lstm", U, A.double(), P, s0)
    with pytest.raises(RuntimeError, match=r"A must have shape \[3, 4\], got \[3, 3\]"):
        ops.pararnn_seq_fwd("lstm", U, A[:, :3].contiguous(), P, s0)
    with pytest.raises(RuntimeError, match=r"s0\) must have shape \[2, 2, 4\]"):
        ops.pararnn_seq_fwd("lstm", U, A, P, s0[:, :1].contiguous())
    with pytest.raises(RuntimeError, match="max_iters must be >= 0, got -1"):
        ops.pararnn_fwd("lstm", U, A, P, s0, -1, 1e-6)
    S_all = ops.pararnn_seq_fwd("lstm", U, A, P, s0)
    with pytest.raises(RuntimeError, match=r"pararnn_bwd: dS must have shape \[2, 5, 2, 4\]"):
        ops.pararnn_bwd("lstm", U, A, P, s0, S_all, S_all[:, :4], S_all[:, -1])


@pytest.mark.parametrize("cell", CELLS)
def test_modules_under_torch_compile(cell):
    torch._dynamo.reset()
    m = _module_pair(cell, 4, 6, 2, backend="cpp", mode="auto", dtype=torch.float32)
    x = torch.randn(2, 17, 4, requires_grad=True)
    y, _ = m(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    yc, _ = compiled(x)
    (gxc,) = torch.autograd.grad(yc.square().sum(), x)
    torch.testing.assert_close(yc, y)
    torch.testing.assert_close(gxc, gx)


# ---------------------------------------------------------------- newton_solve: user cells
def _elman(h, x, a, W, b):
    """Diagonal Elman cell: h = tanh(a ⊙ h₋ + x W + b); J = diag(a (1 − h²))."""
    return torch.tanh(a * h + x @ W + b)


def _rot(h, x, M, W):
    """A 2×2 block cell: per channel n, h_n = tanh(M_n h₋,n + x W_n); h [B, T, N, 2]."""
    return torch.tanh(torch.einsum("nij,btnj->btni", M, h) + torch.einsum("bti,inj->btnj", x, W))


def _loop(step, x, h0, params):
    h = h0.unsqueeze(1)
    out = []
    for t in range(x.shape[1]):
        h = step(h, x[:, t : t + 1], *params)
        out.append(h)
    return torch.cat(out, dim=1)


def _elman_params(N=4, I=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    a = ((torch.rand(N, generator=g, dtype=torch.float64) * 2 - 1) * 0.9).to(dtype)
    W = (torch.randn(I, N, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    b = (torch.randn(N, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    return a, W, b


@pytest.mark.parametrize("backend", CPU)
def test_newton_solve_elman_forward(backend):
    a, W, b = _elman_params()
    x = torch.randn(2, 300, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64)
    h, info = nlseq.newton_solve(_elman, x, h0, params=(a, W, b), backend=backend, return_info=True)
    assert info.converged and info.residual <= 1e-10
    assert_close_to_oracle(h, _loop(_elman, x, h0, (a, W, b)), **TOL64, what="h")


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.slow
def test_newton_solve_elman_gradcheck(backend):
    a, W, b = _elman_params()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, h0, a, W, b)]
    fn = lambda x, h0, a, W, b: nlseq.newton_solve(_elman, x, h0, params=(a, W, b), backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.slow
def test_newton_solve_block_cell_gradcheck(backend):
    g = torch.Generator().manual_seed(12)
    N, I = 3, 2
    M = (torch.rand(N, 2, 2, generator=g, dtype=torch.float64) * 2 - 1) * 0.6
    W = torch.randn(I, N, 2, generator=g, dtype=torch.float64) * 0.5
    x = torch.randn(2, 6, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, N, 2, generator=g, dtype=torch.float64)
    h = nlseq.newton_solve(_rot, x, h0, params=(M, W), jacobian="block", block_size=2, backend=backend)
    assert_close_to_oracle(h, _loop(_rot, x, h0, (M, W)), **TOL64, what="h")
    args = [t.clone().requires_grad_() for t in (x, h0, M, W)]
    fn = lambda x, h0, M, W: nlseq.newton_solve(
        _rot,
        x,
        h0,
        params=(M, W),
        jacobian="block",
        block_size=2,  # noqa
        backend=backend,
    )
    assert torch.autograd.gradcheck(fn, args)


def test_newton_solve_dense_gradcheck():
    g = torch.Generator().manual_seed(13)
    D = 3
    Wh = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.3
    Wx = torch.randn(2, D, generator=g, dtype=torch.float64)
    step = lambda h, x, Wh, Wx: torch.tanh(h @ Wh + x @ Wx)  # noqa: E731
    x = torch.randn(2, 9, 2, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, D, generator=g, dtype=torch.float64)
    h = nlseq.newton_solve(step, x, h0, params=(Wh, Wx), jacobian="dense")
    assert_close_to_oracle(h, _loop(step, x, h0, (Wh, Wx)), **TOL64, what="h")
    args = [t.clone().requires_grad_() for t in (x, h0, Wh, Wx)]
    assert torch.autograd.gradcheck(
        lambda x, h0, Wh, Wx: nlseq.newton_solve(step, x, h0, params=(Wh, Wx), jacobian="dense"), args
    )


class _ElmanModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        a, W, b = _elman_params()
        self.a, self.W, self.b = (torch.nn.Parameter(t) for t in (a, W, b))

    def forward(self, h, x):
        return _elman(h, x, self.a, self.W, self.b)


@pytest.mark.parametrize("damping", [1.0, 0.7])
def test_newton_solve_module_and_closure_gradients(damping):
    """Parameters of an nn.Module step and tensors closed over by a function get gradients."""
    mod = _ElmanModule()
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    h = nlseq.newton_solve(mod, x, damping=damping, max_iters=40)  # h0 = None: state shape probed
    h.sum().backward()
    got = [p.grad.clone() for p in mod.parameters()]
    ref_mod = _ElmanModule()
    _loop(ref_mod, x, torch.zeros(2, 4, dtype=torch.float64), ()).sum().backward()
    for name, a, b in zip(["a", "W", "b"], got, [p.grad for p in ref_mod.parameters()]):
        assert_close_to_oracle(a, b, atol=1e-9, rtol=1e-9, what=f"module grad {name}")
    a, W, b = (t.clone().requires_grad_() for t in _elman_params())
    closure = lambda h, x: _elman(h, x, a, W, b)  # noqa: E731
    nlseq.newton_solve(closure, x).sum().backward()
    for name, p, ref in zip(["a", "W", "b"], (a, W, b), [p.grad for p in ref_mod.parameters()]):
        assert_close_to_oracle(p.grad, ref, atol=1e-9, rtol=1e-9, what=f"closure grad {name}")


def test_newton_solve_nonconvergence():
    a, W, b = _elman_params()
    a = a.sign() * 4.0  # |J| up to 4: not contracting
    x = torch.randn(2, 63, 3, dtype=torch.float64)
    h0 = torch.zeros(2, 4, dtype=torch.float64)
    kw = dict(params=(a, W, b), max_iters=1)
    with pytest.raises(RuntimeError, match=r"did not converge: residual"):
        nlseq.newton_solve(_elman, x, h0, **kw)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        _, info = nlseq.newton_solve(_elman, x, h0, on_nonconvergence="warn", return_info=True, **kw)
    assert not info.converged
    h, info = nlseq.newton_solve(_elman, x, h0, on_nonconvergence="sequential", return_info=True, **kw)
    assert info.fallback
    assert_close_to_oracle(h, _loop(_elman, x, h0, (a, W, b)), **TOL64, what="h after the sequential fallback")


def test_newton_solve_argument_errors():
    a, W, b = _elman_params()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="block_size"):
        nlseq.newton_solve(_elman, x, params=(a, W, b), jacobian="block")
    with pytest.raises(ValueError, match="jacobian must be"):
        nlseq.newton_solve(_elman, x, params=(a, W, b), jacobian="full")
    with pytest.raises(ValueError, match="h0 must have shape"):
        nlseq.newton_solve(_elman, x, torch.zeros(2, 5, dtype=torch.float64), params=(a, W, b))
    with pytest.raises(ValueError, match="damping"):
        nlseq.newton_solve(_elman, x, params=(a, W, b), damping=0.0)


# ---------------------------------------------------------------- fused backends (when present)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", backend_params("cuda", "triton"))
def test_fused_backends_match_cpp(backend, cell, dtype):
    """Forward and backward of the fused kernels against the cpp backend on the same inputs."""
    from nlseq.ops.pararnn import _implemented

    if backend not in _implemented():
        pytest.skip(f"backend {backend!r} has no pararnn kernels in this build")
    from _utils import device_for

    dev = device_for(backend)
    B, T, N = 2, 63 if dev.type == "cpu" else 1031, 33
    U, A, P, s0 = _make(cell, B, T, N, dtype=dtype)
    ins = [t for t in (U, A, P, s0) if t is not None]
    leaves_cpu = [t.clone().requires_grad_() for t in ins]
    leaves_dev = [t.to(dev).requires_grad_() for t in ins]

    def run(leaves, be):
        U_, A_ = leaves[0], leaves[1]
        P_ = leaves[2] if cell == "lstm" else None
        s0_ = leaves[-1]
        out = nlseq.pararnn(cell, U_, A_, P_, s0_, mode="newton", backend=be)
        return out, torch.autograd.grad(out.float().square().sum(), leaves)

    out, grads = run(leaves_dev, backend)
    out_ref, grads_ref = run(leaves_cpu, "cpp")
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    assert_close_to_oracle(out.cpu(), out_ref, **tol, what="S_all")
    for k, (a, b) in enumerate(zip(grads, grads_ref)):
        scale = b.abs().max().item()
        assert_close_to_oracle(a.cpu(), b, atol=tol["atol"] * max(1.0, scale), rtol=tol["rtol"], what=f"grad {k}")
