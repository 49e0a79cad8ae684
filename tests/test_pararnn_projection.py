"""nlseq.reference.pararnn.input_projection writes U in place (issue: no ``stack`` copy of U).

Values and gradients against the float64 formula are in tests/test_pararnn.py
(test_input_projection_*); here: the multi-head path builds U without torch.stack or any copy
into it (G baddbmm calls write U's strided gate views), its gradients still match the plain-op
form exactly in float64, gradients are skipped for inputs that do not need them, and under
torch.compile the plain-op form is traced.
"""

from __future__ import annotations

import pytest
import torch

from nlseq.reference import pararnn as R


def _case(heads, B=2, T=5, ih=3, G=3, nh=4, requires_grad=True):
    g = torch.Generator().manual_seed(heads)
    x = torch.randn(B, T, heads * ih, generator=g, dtype=torch.float64)
    W = torch.randn(heads, ih, G, nh, generator=g, dtype=torch.float64)
    b = torch.randn(G, heads * nh, generator=g, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (x, W, b)]


def _plain(x, W, b):
    heads, ih, G, nh = W.shape
    x2 = x.reshape(-1, heads * ih)
    U = torch.stack(
        [
            torch.addmm(
                b[:, h * nh : (h + 1) * nh].reshape(G * nh), x2[:, h * ih : (h + 1) * ih], W[h].reshape(ih, G * nh)
            ).view(-1, G, nh)
            for h in range(heads)
        ],
        dim=2,
    )
    return U.reshape(*x.shape[:-1], G, heads * nh)


@pytest.mark.parametrize("heads", [2, 4])
def test_multi_head_projection_writes_in_place(heads, monkeypatch):
    x, W, b = _case(heads)
    expect = _plain(x, W, b)
    dU = torch.randn_like(expect)
    grads = torch.autograd.grad(expect, (x, W, b), dU)

    def no_stack(*args, **kwargs):
        raise AssertionError("input_projection must not stack per-head outputs")

    monkeypatch.setattr(torch, "stack", no_stack)
    monkeypatch.setattr(torch, "cat", no_stack)
    U = R.input_projection(x, W, b)
    assert U.is_contiguous() and U.shape == expect.shape
    # the same GEMMs over the same terms: equal to the plain form to float64 rounding
    torch.testing.assert_close(U, expect, atol=1e-12, rtol=1e-12)
    ours = torch.autograd.grad(U, (x, W, b), dU)
    for name, a, e in zip(("dx", "dW", "db"), ours, grads):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12, msg=name)


def test_gradients_only_where_needed():
    x, W, b = _case(2)
    W.requires_grad_(False)
    b.requires_grad_(False)
    U = R.input_projection(x, W, b)
    (dx,) = torch.autograd.grad(U.sum(), (x,))
    (expect,) = torch.autograd.grad(_plain(x, W, b).sum(), (x,))
    torch.testing.assert_close(dx, expect, atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(R.input_projection(x, W, b), _plain(x, W, b), atol=1e-12, rtol=1e-12)


def test_non_contiguous_x():
    x, W, b = _case(2, requires_grad=False)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # [B, T, I] with T outermost in memory
    torch.testing.assert_close(R.input_projection(xt, W, b), _plain(x, W, b), atol=1e-12, rtol=1e-12)


def test_compiled_projection_matches():
    torch._dynamo.reset()
    x, W, b = _case(2)
    f = torch.compile(R.input_projection, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(x, W, b), _plain(x, W, b), atol=1e-12, rtol=1e-12)
