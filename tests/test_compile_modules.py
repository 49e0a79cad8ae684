"""Every nlseq module under torch.compile(fullgraph=True): forward and backward equal eager, no recompiles.

Compiled with the "aot_eager" backend: dynamo traces the whole forward (any graph break fails
fullgraph), AOTAutograd runs every op on fake tensors (so every registered op needs its fake
kernel) and builds the joint forward/backward graph, without spending minutes in a C++ compiler.
"""

from __future__ import annotations

import copy

import pytest
import torch

import nlseq
from _utils import backend_params
from nlseq.analog import CrossbarConfig
from nlseq.nn import AnalogGRU, AnalogLinear, AnalogLSTM, ParaGRU, ParaLSTM, SoftplusAttention

NOISY = CrossbarConfig(prog_noise=0.02, read_noise=0.02, out_noise=0.01)


class Counter:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, example_inputs)


def _modules(backend):
    torch.manual_seed(0)
    return {
        "ParaGRU": (ParaGRU(8, 8, backend=backend, mode="newton"), (2, 5, 8)),
        "ParaLSTM": (ParaLSTM(8, 8, backend=backend, mode="sequential"), (2, 5, 8)),
        "SoftplusAttention": (SoftplusAttention(16, 2, rope_theta=1e4, reweight_p=3.0, backend=backend), (2, 5, 16)),
        "AnalogLinear": (AnalogLinear(8, 4, config=NOISY, backend=backend), (3, 8)),
        "AnalogLSTM": (AnalogLSTM(8, 4, config=NOISY, backend=backend), (2, 5, 8)),
        "AnalogGRU": (AnalogGRU(8, 4, config=NOISY, cmp_noise=0.5, backend=backend), (2, 5, 8)),
    }


NAMES = list(_modules("reference"))


def _outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    flat = []
    for o in out:
        flat += _outputs(o) if isinstance(o, (tuple, list)) else [o]
    return [o for o in flat if isinstance(o, torch.Tensor)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", backend_params("cpp", "reference"))
def test_module_compiles_fullgraph_and_matches_eager(backend, name, training):
    torch._dynamo.reset()
    module, shape = _modules(backend)[name]
    module.train(training)
    if not training and hasattr(module, "program"):
        module.program()  # an eval forward reads crossbars programmed beforehand
    eager, compiled_module = module, copy.deepcopy(module)
    counter = Counter()
    compiled = torch.compile(compiled_module, fullgraph=True, backend=counter)
    g = torch.Generator().manual_seed(1)
    for _call in range(3):  # noise streams advance alike; no recompilation as the counters move
        x = torch.randn(shape, generator=g)
        xe, xc = x.clone().requires_grad_(training), x.clone().requires_grad_(training)
        with torch.set_grad_enabled(training):
            ye, yc = _outputs(eager(xe)), _outputs(compiled(xc))
        for a, b in zip(ye, yc):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
        if training:
            w = [torch.randn(a.shape, generator=g) for a in ye]
            sum((a * wi).sum() for a, wi in zip(ye, w)).backward()
            sum((b * wi).sum() for b, wi in zip(yc, w)).backward()
            torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-5)
            for (n, pe), (_, pc) in zip(eager.named_parameters(), compiled_module.named_parameters()):
                torch.testing.assert_close(pc.grad, pe.grad, atol=1e-5, rtol=1e-5, msg=f"grad of {n}")
                pe.grad = pc.grad = None
    assert counter.graphs == 1, f"{name} compiled {counter.graphs} graphs in 3 calls"


def test_uncompiled_eval_forward_needs_programmed_crossbars_under_compile():
    torch._dynamo.reset()
    m = AnalogLinear(4, 3).eval()
    with pytest.raises(Exception, match="program the crossbars before compiling"):
        torch.compile(m, fullgraph=True, backend="eager")(torch.randn(2, 4))


def _cell(h, x, w):
    return torch.tanh(w * h + x)


def test_newton_solve_user_cell_compiles_fullgraph_with_a_device_side_check():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 11, 5, generator=g, dtype=torch.float64)
    w = (torch.rand(5, generator=g, dtype=torch.float64) * 0.8).requires_grad_()

    def solve(x, w):
        return nlseq.newton_solve(_cell, x, params=(w,), max_iters=8, return_info=True)

    y_e, info_e = solve(x, w)
    counter = Counter()
    y_c, info_c = torch.compile(solve, fullgraph=True, backend=counter)(x, w)
    torch.testing.assert_close(y_c, y_e, atol=1e-12, rtol=1e-12)
    assert isinstance(info_e.residual, float) and isinstance(info_e.iterations, int)
    assert isinstance(info_c.residual, torch.Tensor) and info_c.iterations == 8 and float(info_c.residual) <= 1e-10
    (ge,) = torch.autograd.grad(y_e.sum(), w)
    (gc,) = torch.autograd.grad(y_c.sum(), w)
    torch.testing.assert_close(gc, ge, atol=1e-12, rtol=1e-12)
    assert counter.graphs == 1

    def diverges(x):  # one Newton step cannot reach tol = 1e-14 for this cell
        return nlseq.newton_solve(
            _cell, x * 3, params=(torch.full((5,), 0.99, dtype=torch.float64),), max_iters=1, tol=1e-14
        )

    with pytest.raises(RuntimeError, match="did not reach the residual"):
        torch.compile(diverges, fullgraph=True, backend="aot_eager")(x)


def test_newton_info_holds_python_numbers_in_eager():
    m = ParaGRU(4, 6, heads=1, backend="reference", mode="newton")
    m(torch.randn(2, 7, 4))
    assert isinstance(m.last_info.iterations, int) and isinstance(m.last_info.residual, float)
    _, info = nlseq.pararnn(
        "gru", torch.randn(1, 3, 3, 4), torch.zeros(3, 4), return_info=True, backend="reference", mode="newton"
    )
    assert isinstance(info.iterations, int) and isinstance(info.residual, float)
