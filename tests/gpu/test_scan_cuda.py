"""CUDA-specific tests of nlseq.linear_recurrence (csrc/cuda/scan.cu): the shapes that pick the
kernel's two modes, every K and dtype, streams and the raw nlseq_ext ops.

tests/test_scan.py already runs the cuda backend through the common cases; this file adds what
only the CUDA kernel has:
- multi-segment mode (B·ceil(N/32) tiles for fewer than 3/4 of the SMs, T long): time is cut into
  segments whose carries cross in three launches. B·ceil(N/32) = 1 or 2 always takes this path.
- single-pass mode (many tiles): one block per 32 channels sweeps all of T.
- partial tiles (N not a multiple of 32), partial rounds (T not a multiple of the round length).

The oracle for long sequences is the cpp backend in float64 (itself checked against the float64
loop by tests/test_scan.py); short ones use the float64 loop directly.
"""

from __future__ import annotations

import pytest
import torch

import nlseq
from _utils import DTYPE_IDS, assert_close_to_oracle
from nlseq.reference.scan import linear_recurrence_loop

_STATUS = nlseq.backends()["cuda"]
pytestmark = pytest.mark.skipif(not _STATUS, reason=f"CUDA tests need the cuda backend: {_STATUS}")

# Same reasoning as tests/test_scan.py: float32 accumulation, one rounding to the output dtype.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=1e-3, rtol=2**-8),
    torch.float16: dict(atol=1e-4, rtol=2**-10),
}
GRAD_TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2**-7),
    torch.float16: dict(atol=2e-3, rtol=2**-9),
}


def make_inputs(B, T, N, K, *, dtype, seed=0, with_h0=True):
    """Contracting recurrence (row sums of |A| <= 0.95), rounded to dtype, on the GPU. K = 0: diagonal."""
    g = torch.Generator().manual_seed(seed)
    if K == 0:
        A = torch.rand(B, T, N, generator=g, dtype=torch.float64) * 1.9 - 0.95
        b = torch.randn(B, T, N, generator=g, dtype=torch.float64)
        h0 = torch.randn(B, N, generator=g, dtype=torch.float64)
    else:
        A = (torch.rand(B, T, N, K, K, generator=g, dtype=torch.float64) * 2 - 1) * (0.95 / K)
        b = torch.randn(B, T, N, K, generator=g, dtype=torch.float64)
        h0 = torch.randn(B, N, K, generator=g, dtype=torch.float64)
    cast = lambda x: x.to(dtype).cuda()  # noqa: E731
    return cast(A), cast(b), (cast(h0) if with_h0 else None)


def oracle(A, b, h0, reverse):
    """float64 on the CPU: the loop for short T, the (loop-tested) cpp backend for long T."""
    A64, b64 = A.detach().double().cpu(), b.detach().double().cpu()
    h064 = None if h0 is None else h0.detach().double().cpu()
    if b.shape[1] <= 256:
        diag = b.dim() == 3
        if diag:
            A64, b64, h064 = A64[..., None, None], b64[..., None], None if h064 is None else h064[..., None]
        h, last = linear_recurrence_loop(A64, b64, h064, reverse)
        return (h[..., 0], last[..., 0]) if diag else (h, last)
    return nlseq.linear_recurrence(A64, b64, h064, reverse=reverse, backend="cpp")


def oracle_grads(A, b, h0, reverse, gh, gl):
    """float64 gradients through the cpp backend (its backward is checked against autograd of the loop)."""
    A64 = A.detach().double().cpu().requires_grad_()
    b64 = b.detach().double().cpu().requires_grad_()
    h064 = None if h0 is None else h0.detach().double().cpu().requires_grad_()
    h, last = nlseq.linear_recurrence(A64, b64, h064, reverse=reverse, backend="cpp")
    ((h * gh.double().cpu()).sum() + (last * gl.double().cpu()).sum()).backward()
    return A64.grad, b64.grad, None if h064 is None else h064.grad


def _id(B, T, N, K):
    return f"B{B}-T{T}-N{N}-" + ("diag" if K == 0 else f"K{K}")


# (B, T, N, K): multi-segment (few tiles, long T, T odd / prime so the last round and segment are
# partial), single-pass (many tiles), partial tiles, and the smallest cases.
SHAPES = [
    (1, 65537, 1, 0),  # one tile, one channel: the longest carry chain over segments
    (2, 100003, 33, 0),  # two tiles per row, the second with 1 live lane; prime T
    (1, 20011, 5, 1),
    (1, 12289, 7, 2),
    (2, 8191, 3, 3),
    (1, 6007, 2, 4),
    (64, 300, 1024, 0),  # 2048 tiles: single pass
    (16, 129, 512, 2),
    (3, 1, 70, 0),  # T = 1
    (2, 2, 1, 4),
]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("B,T,N,K", SHAPES, ids=[_id(*s) for s in SHAPES])
def test_forward_fp32(B, T, N, K, reverse):
    A, b, h0 = make_inputs(B, T, N, K, dtype=torch.float32)
    h, last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend="cuda")
    h_ref, last_ref = oracle(A, b, h0, reverse)
    assert h.device.type == "cuda" and h.dtype == torch.float32
    assert_close_to_oracle(h, h_ref, **TOL[torch.float32], what="h")
    assert_close_to_oracle(last, last_ref, **TOL[torch.float32], what="h_last")


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("B,T,N,K", SHAPES, ids=[_id(*s) for s in SHAPES])
def test_gradients_fp32(B, T, N, K, reverse, with_h0):
    A, b, h0 = make_inputs(B, T, N, K, dtype=torch.float32, with_h0=with_h0)
    leaves = [A.requires_grad_(), b.requires_grad_()] + ([h0.requires_grad_()] if with_h0 else [])
    h, last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend="cuda")
    g = torch.Generator().manual_seed(1)
    gh = torch.randn(h.shape, generator=g).cuda()
    gl = torch.randn(last.shape, generator=g).cuda()
    grads = torch.autograd.grad((h * gh).sum() + (last * gl).sum(), leaves)
    refs = oracle_grads(A, b, h0, reverse, gh, gl)
    for name, got, ref in zip(("dA", "db", "dh0"), grads, refs):
        assert_close_to_oracle(got, ref, **GRAD_TOL[torch.float32], what=name)


LOW = [torch.bfloat16, torch.float16]
LOW_SHAPES = [(1, 30011, 4, 0), (1, 5003, 3, 2), (8, 200, 640, 0), (4, 77, 96, 4)]


@pytest.mark.parametrize("dtype", LOW, ids=[DTYPE_IDS[d] for d in LOW])
@pytest.mark.parametrize("B,T,N,K", LOW_SHAPES, ids=[_id(*s) for s in LOW_SHAPES])
def test_low_precision(B, T, N, K, dtype):
    A, b, h0 = make_inputs(B, T, N, K, dtype=dtype)
    A.requires_grad_(), b.requires_grad_(), h0.requires_grad_()
    h, last = nlseq.linear_recurrence(A, b, h0, backend="cuda")
    assert h.dtype == dtype and last.dtype == dtype
    h_ref, last_ref = oracle(A, b, h0, False)
    assert_close_to_oracle(h, h_ref, **TOL[dtype], what=f"h ({DTYPE_IDS[dtype]})")
    assert_close_to_oracle(last, last_ref, **TOL[dtype], what=f"h_last ({DTYPE_IDS[dtype]})")
    gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(2)).to(dtype).cuda()
    gl = torch.randn(last.shape, generator=torch.Generator().manual_seed(3)).to(dtype).cuda()
    dA, db, dh0 = torch.autograd.grad((h * gh).sum() + (last * gl).sum(), (A, b, h0))
    rA, rb, rh0 = oracle_grads(A, b, h0, False, gh, gl)
    tol = GRAD_TOL[dtype]
    # dA also sees h rounded to the I/O dtype (saved in that dtype), hence 2 ulps (as tests/test_scan.py).
    assert_close_to_oracle(db, rb, **tol, what="db")
    assert_close_to_oracle(dA, rA, atol=tol["atol"], rtol=2 * tol["rtol"], what="dA")
    assert_close_to_oracle(dh0, rh0, **tol, what="dh0")


def test_counting_recurrence_is_exact():
    """A = 1, b = 1 counts steps exactly in float32 (integers < 2^24): any lost or doubled step
    across rounds, warps or segments shows as an off-by-one somewhere."""
    B, T, N = 2, 70001, 40
    A = torch.ones(B, T, N, device="cuda")
    b = torch.ones(B, T, N, device="cuda")
    h, last = nlseq.linear_recurrence(A, b, backend="cuda")
    expect = torch.arange(1, T + 1, device="cuda", dtype=torch.float32)[None, :, None].expand(B, T, N)
    assert torch.equal(h, expect)
    assert torch.equal(last, torch.full((B, N), float(T), device="cuda"))
    h, last = nlseq.linear_recurrence(A, b, reverse=True, backend="cuda")
    assert torch.equal(h, expect.flip(1))
    assert torch.equal(last, torch.full((B, N), float(T), device="cuda"))


def test_non_contiguous_and_side_stream():
    A, b, h0 = make_inputs(3, 4099, 37, 2, dtype=torch.float32)
    # channel-major storage viewed in the [B, T, N, K] layout; h0 a strided slice
    At = A.permute(2, 1, 0, 3, 4).contiguous().permute(2, 1, 0, 3, 4)
    bt = b.permute(2, 1, 0, 3).contiguous().permute(2, 1, 0, 3)
    h0w = torch.stack([h0, h0], dim=-1)[..., 0]
    assert not At.is_contiguous() and not bt.is_contiguous() and not h0w.is_contiguous()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        h, last = nlseq.linear_recurrence(At, bt, h0w, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    h_ref, last_ref = oracle(A, b, h0, False)
    assert_close_to_oracle(h, h_ref, **TOL[torch.float32], what="h")
    assert_close_to_oracle(last, last_ref, **TOL[torch.float32], what="h_last")


@pytest.mark.parametrize("T", [5, 40000], ids=["single", "segments"])
def test_opcheck_raw_ops(T):
    # The raw nlseq_ext ops have no fake (meta) kernel: the nlseq:: custom ops wrapping them do
    # (opcheck'd by tests/test_scan.py), so only the schema and autograd registration are checked.
    utils = ("test_schema", "test_autograd_registration")
    A, b, h0 = make_inputs(1, T, 3, 2, dtype=torch.float32)
    for rev in (False, True):
        torch.library.opcheck(torch.ops.nlseq_ext.scan_fwd.default, (A, b, h0, rev), test_utils=utils)
        torch.library.opcheck(torch.ops.nlseq_ext.scan_fwd.default, (A, b, None, rev), test_utils=utils)
        h, _ = torch.ops.nlseq_ext.scan_fwd(A, b, h0, rev)
        g, gl = torch.randn_like(h), torch.randn_like(h0)
        torch.library.opcheck(torch.ops.nlseq_ext.scan_bwd.default, (A, h, h0, g, gl, rev), test_utils=utils)


def test_raw_op_rejects_float64_and_mixed_devices():
    A, b, h0 = make_inputs(1, 8, 3, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.nlseq_ext.scan_fwd(A, b, h0, False)
    A, b, h0 = make_inputs(1, 8, 3, 1, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.nlseq_ext.scan_fwd(A, b, h0.cpu(), False)
