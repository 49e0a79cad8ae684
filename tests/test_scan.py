"""nlseq.linear_recurrence: every backend against the float64 sequential oracle (docs/spec.md §1.1–1.2)."""

from __future__ import annotations

import pytest
import torch

import nlseq
from _utils import DTYPE_IDS, assert_close_to_oracle, backend_params, device_for
from nlseq.reference.scan import linear_recurrence_loop

ALL = backend_params("cuda", "triton", "cpp", "reference")
COMPILED_CPU = backend_params("cpp", "reference")

# Tolerances against the float64 oracle run on the *same rounded inputs*: outputs are rounded once
# to the output dtype (half an ulp: 2^-9 bf16, 2^-12 fp16) on top of float32 accumulation error.
TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=1e-3, rtol=2**-8),
    torch.float16: dict(atol=1e-4, rtol=2**-10),
}
GRAD_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2**-7),
    torch.float16: dict(atol=2e-3, rtol=2**-9),
}


def make_inputs(B, T, N, K, *, with_h0, dtype, device, seed=0):
    """Contracting random recurrence (row sums of |A| <= 0.95) so states stay O(1) for any T.

    K = 0 means the diagonal layout. Values are rounded to ``dtype`` first; the float64 oracle
    then sees exactly the values the kernel sees.
    """
    g = torch.Generator().manual_seed(seed)
    if K == 0:
        A = torch.rand(B, T, N, generator=g, dtype=torch.float64) * 1.9 - 0.95
        b = torch.randn(B, T, N, generator=g, dtype=torch.float64)
        h0 = torch.randn(B, N, generator=g, dtype=torch.float64) if with_h0 else None
    else:
        A = (torch.rand(B, T, N, K, K, generator=g, dtype=torch.float64) * 2 - 1) * (0.95 / K)
        b = torch.randn(B, T, N, K, generator=g, dtype=torch.float64)
        h0 = torch.randn(B, N, K, generator=g, dtype=torch.float64) if with_h0 else None
    cast = lambda x: None if x is None else x.to(dtype).to(device)  # noqa: E731
    return cast(A), cast(b), cast(h0)


def oracle(A, b, h0, reverse):
    """float64 sequential loop on the CPU, in the layout of the inputs."""
    diag = b.dim() == 3
    A64, b64 = A.detach().double().cpu(), b.detach().double().cpu()
    h064 = None if h0 is None else h0.detach().double().cpu()
    if diag:
        A64, b64 = A64[..., None, None], b64[..., None]
        h064 = None if h064 is None else h064[..., None]
    h, h_last = linear_recurrence_loop(A64, b64, h064, reverse)
    return (h[..., 0], h_last[..., 0]) if diag else (h, h_last)


def _id(B, T, N, K):
    return f"B{B}-T{T}-N{N}-" + ("diag" if K == 0 else f"K{K}")


SHAPES = [(2, T, N, K) for T in (1, 2, 3, 63, 1000, 4099) for (N, K) in ((37, 0), (5, 1), (3, 2), (2, 3), (3, 4))]


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("B,T,N,K", SHAPES, ids=[_id(*s) for s in SHAPES])
@pytest.mark.parametrize("backend", ALL)
def test_forward_fp32(backend, B, T, N, K, reverse, with_h0):
    if backend == "triton" and T > 1000 and device_for(backend).type == "cpu":
        T = 1031  # the interpreter runs programs one by one; 1031 still crosses several chunks
    A, b, h0 = make_inputs(B, T, N, K, with_h0=with_h0, dtype=torch.float32, device=device_for(backend))
    h, h_last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend=backend)
    h_ref, last_ref = oracle(A, b, h0, reverse)
    assert h.dtype == b.dtype and h_last.dtype == b.dtype
    assert_close_to_oracle(h, h_ref, **TOL[torch.float32], what="h")
    assert_close_to_oracle(h_last, last_ref, **TOL[torch.float32], what="h_last")


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=[DTYPE_IDS[d] for d in DTYPES])
@pytest.mark.parametrize("K", [0, 2], ids=["diag", "K2"])
@pytest.mark.parametrize("backend", ALL)
def test_forward_dtypes(backend, dtype, K):
    if dtype == torch.float64 and backend in ("cuda", "triton"):
        pytest.skip("float64 runs on cpp and reference only")
    A, b, h0 = make_inputs(3, 777, 19, K, with_h0=True, dtype=dtype, device=device_for(backend))
    h, h_last = nlseq.linear_recurrence(A, b, h0, backend=backend)
    h_ref, last_ref = oracle(A, b, h0, False)
    assert h.dtype == dtype
    assert_close_to_oracle(h, h_ref, **TOL[dtype], what=f"h ({DTYPE_IDS[dtype]})")
    assert_close_to_oracle(h_last, last_ref, **TOL[dtype], what=f"h_last ({DTYPE_IDS[dtype]})")


def test_float64_rejected_on_gpu_backends():
    A, b, _ = make_inputs(1, 4, 3, 0, with_h0=False, dtype=torch.float64, device="cpu")
    for backend in ("cuda", "triton"):
        if nlseq.backends()[backend] and device_for(backend).type == "cpu":
            with pytest.raises(TypeError, match="float64"):
                nlseq.linear_recurrence(A, b, backend=backend)


def _oracle_grads(A, b, h0, reverse, gh, gl):
    A64 = A.detach().double().cpu().requires_grad_()
    b64 = b.detach().double().cpu().requires_grad_()
    h064 = None if h0 is None else h0.detach().double().cpu().requires_grad_()
    diag = b.dim() == 3
    Ab = (A64[..., None, None], b64[..., None], None if h064 is None else h064[..., None]) if diag else (A64, b64, h064)
    h, h_last = linear_recurrence_loop(*Ab, reverse)
    if diag:
        h, h_last = h[..., 0], h_last[..., 0]
    ((h * gh.double().cpu()).sum() + (h_last * gl.double().cpu()).sum()).backward()
    return A64.grad, b64.grad, None if h064 is None else h064.grad


GRAD_SHAPES = [(2, T, N, K) for T in (1, 63, 1000) for (N, K) in ((37, 0), (3, 1), (3, 2), (2, 3), (2, 4))]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("B,T,N,K", GRAD_SHAPES, ids=[_id(*s) for s in GRAD_SHAPES])
@pytest.mark.parametrize("backend", ALL)
def test_gradients_against_oracle(backend, B, T, N, K, reverse):
    dev = device_for(backend)
    A, b, h0 = make_inputs(B, T, N, K, with_h0=True, dtype=torch.float32, device=dev)
    A.requires_grad_(), b.requires_grad_(), h0.requires_grad_()
    h, h_last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend=backend)
    g = torch.Generator().manual_seed(1)
    gh = torch.randn(h.shape, generator=g).to(dev)
    gl = torch.randn(h_last.shape, generator=g).to(dev)
    dA, db, dh0 = torch.autograd.grad((h * gh).sum() + (h_last * gl).sum(), (A, b, h0))
    rA, rb, rh0 = _oracle_grads(A, b, h0, reverse, gh, gl)
    tol = GRAD_TOL[torch.float32]
    assert_close_to_oracle(dA, rA, **tol, what="dA")
    assert_close_to_oracle(db, rb, **tol, what="db")
    assert_close_to_oracle(dh0, rh0, **tol, what="dh0")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ALL)
def test_gradients_low_precision(backend, dtype):
    dev = device_for(backend)
    A, b, h0 = make_inputs(2, 129, 9, 2, with_h0=True, dtype=dtype, device=dev)
    A.requires_grad_(), b.requires_grad_(), h0.requires_grad_()
    h, h_last = nlseq.linear_recurrence(A, b, h0, backend=backend)
    gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(2)).to(dtype).to(dev)
    gl = torch.zeros(h_last.shape, dtype=dtype, device=dev)
    dA, db, dh0 = torch.autograd.grad((h * gh).sum() + (h_last * gl).sum(), (A, b, h0))
    assert dA.dtype == dtype
    rA, rb, rh0 = _oracle_grads(A, b, h0, False, gh, gl)
    # dA also sees h rounded to the I/O dtype (it is saved in that dtype), hence 2 ulps.
    tol = GRAD_TOL[dtype]
    assert_close_to_oracle(db, rb, **tol, what="db")
    assert_close_to_oracle(dA, rA, atol=tol["atol"], rtol=2 * tol["rtol"], what="dA")
    assert_close_to_oracle(dh0, rh0, **tol, what="dh0")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("K", [0, 1, 2, 3, 4], ids=["diag", "K1", "K2", "K3", "K4"])
@pytest.mark.parametrize("backend", COMPILED_CPU)
@pytest.mark.slow
def test_gradcheck_float64(backend, K, reverse):
    A, b, h0 = make_inputs(2, 9, 3, K, with_h0=True, dtype=torch.float64, device="cpu")
    inputs = tuple(x.requires_grad_() for x in (A, b, h0))
    fn = lambda A, b, h0: nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("cpu_threads", [2], indirect=True)
@pytest.mark.parametrize("backend", COMPILED_CPU)
def test_gradcheck_long_chunked_cpp(backend, cpu_threads):
    # B = 1, N = 1, two threads and B*T*N*K*K >= 2^15 elements of A (the kernel's minimum for a
    # parallel run) force the cpp kernel's three-phase chunked path over T (chunks of ~2500 steps).
    A, b, h0 = make_inputs(1, 8209, 1, 2, with_h0=True, dtype=torch.float64, device="cpu")
    inputs = tuple(x.requires_grad_() for x in (A, b, h0))
    fn = lambda A, b, h0: nlseq.linear_recurrence(A, b, h0, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def _oracle_grads_linear(A, b, h0, reverse, gh, gl):
    """float64 gradients via the reference backward (docs/spec.md §1.2) with the sequential loop as
    its scan: O(T), for lengths where autograd through the loop (O(T^2) slice writes) is too slow."""
    from nlseq.reference.scan import linear_recurrence_backward

    diag = b.dim() == 3
    d = lambda x: None if x is None else x.detach().double().cpu()  # noqa: E731
    A64, b64, h064, gh64, gl64 = d(A), d(b), d(h0), d(gh), d(gl)
    if diag:
        A64, b64, gh64, gl64 = A64[..., None, None], b64[..., None], gh64[..., None], gl64[..., None]
        h064 = None if h064 is None else h064[..., None]
    h, _ = linear_recurrence_loop(A64, b64, h064, reverse)
    dA, db, dh0 = linear_recurrence_backward(A64, h, h064, gh64, gl64, reverse, scan_fn=linear_recurrence_loop)
    if diag:
        dA, db, dh0 = dA[..., 0, 0], db[..., 0], None if dh0 is None else dh0[..., 0]
    return dA, db, dh0


# Shapes that reach each of the cpp kernel's work splits (B*T*N*K*K >= 2^15 so that it runs in
# parallel at all): time chunks with 2 threads (B = 1, N = 3: one channel block), with 4 threads
# (one item: 4 phase-1 jobs and 12 re-run chunks; two batches: 2 threads per item), N = 37 over
# 2 threads: whole rows in time chunks for K = 1 (rows under 1 KiB are not split, see
# run_scan), channel blocks of unequal width (32 + 5) for K = 3. T is prime. More splits (few
# channels, fallbacks when T is short, 3 threads): tests/test_scan_cpu_split.py.
SPLIT_SHAPES = [
    (2, (1, 11003, 3, 0)),
    (4, (1, 3761, 5, 2)),
    (4, (2, 3761, 9, 0)),
    (2, (1, 907, 37, 0)),
    (2, (1, 907, 37, 3)),
]


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(
    "cpu_threads,shape", SPLIT_SHAPES, ids=[f"threads{n}-{_id(*s)}" for n, s in SPLIT_SHAPES], indirect=["cpu_threads"]
)
@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_work_splits(backend, cpu_threads, shape, reverse, with_h0):
    check_float32_against_oracle(backend, shape, reverse=reverse, with_h0=with_h0, seed=3, grad_seed=4)


def check_float32_against_oracle(backend, shape, *, reverse, with_h0, seed, grad_seed):
    """One float32 scan (B, T, N, K) = shape, outputs and gradients, against the float64 oracle."""
    B, T, N, K = shape
    A, b, h0 = make_inputs(B, T, N, K, with_h0=with_h0, dtype=torch.float32, device="cpu", seed=seed)
    A.requires_grad_(), b.requires_grad_()
    if h0 is not None:
        h0.requires_grad_()
    h, h_last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend=backend)
    h_ref, last_ref = oracle(A, b, h0, reverse)
    assert_close_to_oracle(h, h_ref, **TOL[torch.float32], what="h")
    assert_close_to_oracle(h_last, last_ref, **TOL[torch.float32], what="h_last")
    # h_last is the state the last step wrote, not a second computation of it
    assert torch.equal(h_last, h[:, 0] if reverse else h[:, -1])
    g = torch.Generator().manual_seed(grad_seed)
    gh, gl = torch.randn(h.shape, generator=g), torch.randn(h_last.shape, generator=g)
    leaves = (A, b) if h0 is None else (A, b, h0)
    grads = torch.autograd.grad((h * gh).sum() + (h_last * gl).sum(), leaves)
    refs = _oracle_grads_linear(A, b, h0, reverse, gh, gl)
    for name, got, want in zip(("dA", "db", "dh0"), grads, refs):
        assert_close_to_oracle(got, want, **GRAD_TOL[torch.float32], what=name)


@pytest.mark.parametrize("cpu_threads", [2], indirect=True)
@pytest.mark.parametrize("backend", backend_params("cpp"))
def test_cpp_chunked_float64(backend, cpu_threads):
    # The chunked path in float64 keeps float64 accuracy (composed maps, carried states in float64).
    A, b, h0 = make_inputs(1, 11003, 3, 0, with_h0=True, dtype=torch.float64, device="cpu", seed=5)
    for reverse in (False, True):
        h, h_last = nlseq.linear_recurrence(A, b, h0, reverse=reverse, backend=backend)
        h_ref, last_ref = oracle(A, b, h0, reverse)
        assert_close_to_oracle(h, h_ref, **TOL[torch.float64], what="h")
        assert_close_to_oracle(h_last, last_ref, **TOL[torch.float64], what="h_last")


@pytest.mark.parametrize("backend", ALL)
def test_zero_length(backend):
    dev = device_for(backend)
    A, b, h0 = make_inputs(2, 0, 5, 0, with_h0=True, dtype=torch.float32, device=dev)
    h, h_last = nlseq.linear_recurrence(A, b, h0, backend=backend)
    assert h.shape == (2, 0, 5) and torch.equal(h_last, h0)
    h, h_last = nlseq.linear_recurrence(A, b, backend=backend)
    assert torch.equal(h_last, torch.zeros(2, 5, device=dev))


@pytest.mark.parametrize("backend", ALL)
def test_non_contiguous_inputs(backend):
    dev = device_for(backend)
    A, b, h0 = make_inputs(3, 70, 11, 0, with_h0=True, dtype=torch.float32, device=dev)
    # [N, T, B] storage viewed as [B, T, N], and a strided slice of h0
    At, bt = A.permute(2, 1, 0).contiguous().permute(2, 1, 0), b.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    h0_wide = torch.stack([h0, h0], dim=-1)[..., 0]
    assert not At.is_contiguous() and not h0_wide.is_contiguous()
    h, h_last = nlseq.linear_recurrence(At, bt, h0_wide, backend=backend)
    h_ref, last_ref = oracle(A, b, h0, False)
    assert_close_to_oracle(h, h_ref, **TOL[torch.float32], what="h")
    assert_close_to_oracle(h_last, last_ref, **TOL[torch.float32], what="h_last")


class TestBadInput:
    def _ok(self):
        return make_inputs(2, 5, 3, 0, with_h0=True, dtype=torch.float32, device="cpu")

    def test_shape_mismatch(self):
        A, b, h0 = self._ok()
        # two tensors that disagree on T: both are named (no majority says which one is wrong)
        with pytest.raises(ValueError, match=r"disagree on T: A \(2, 4, 3\) has T = 4, b \(2, 5, 3\) has T = 5"):
            nlseq.linear_recurrence(A[:, :4], b, backend="reference")
        with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3\)"):
            nlseq.linear_recurrence(A, b, h0[:1], backend="reference")

    def test_wrong_rank(self):
        A, b, _ = self._ok()
        with pytest.raises(ValueError, match="b must have 3 or 4 dimensions"):
            nlseq.linear_recurrence(A, b[0], backend="reference")
        with pytest.raises(ValueError, match="A must have 3 or 5 dimensions"):
            nlseq.linear_recurrence(A[..., None], b, backend="reference")

    def test_block_size_out_of_range(self):
        b = torch.zeros(1, 4, 2, 5)
        with pytest.raises(ValueError, match=r"block size K = b.shape\[-1\] must be in 1..4, got 5"):
            nlseq.linear_recurrence(torch.zeros(1, 4, 2, 5, 5), b, backend="reference")

    def test_dtype_mismatch(self):
        A, b, h0 = self._ok()
        with pytest.raises(TypeError, match="A must have the dtype of b"):
            nlseq.linear_recurrence(A.double(), b, backend="reference")
        with pytest.raises(TypeError, match="h0 must have the dtype of b"):
            nlseq.linear_recurrence(A, b, h0.half(), backend="reference")
        with pytest.raises(TypeError, match="b must have dtype in"):
            nlseq.linear_recurrence(A.int(), b.int(), backend="reference")

    def test_device_mismatch(self):
        A, b, _ = self._ok()
        with pytest.raises(ValueError, match="A must be on the device of b"):
            nlseq.linear_recurrence(A.to("meta"), b, backend="reference")

    def test_not_a_tensor(self):
        _, b, _ = self._ok()
        with pytest.raises(TypeError, match="A must be a torch.Tensor"):
            nlseq.linear_recurrence([1.0], b, backend="reference")

    def test_unknown_and_unavailable_backend(self, monkeypatch):
        A, b, _ = self._ok()
        with pytest.raises(ValueError, match="backend must be one of"):
            nlseq.linear_recurrence(A, b, backend="fortran")
        with pytest.raises(RuntimeError, match="backend 'cuda'"):
            nlseq.linear_recurrence(A, b, backend="cuda")  # CPU tensors: either unavailable or wrong device
        monkeypatch.setenv("NLSEQ_BACKEND", "cuda")
        with pytest.raises(RuntimeError, match=r"\(from NLSEQ_BACKEND\)"):
            nlseq.linear_recurrence(A, b)

    def test_env_override_selects_backend(self, monkeypatch, caplog):
        A, b, _ = self._ok()
        monkeypatch.setenv("NLSEQ_BACKEND", "reference")
        with caplog.at_level("DEBUG", logger="nlseq"):
            nlseq.linear_recurrence(A, b)
        assert "running backend 'reference'" in caplog.text


def test_backends_report():
    status = nlseq.backends()
    assert set(status) == {"cuda", "triton", "cpp", "reference"}
    assert status["reference"].available
    for name, s in status.items():
        assert s.name == name
        if not s.available:
            assert s.reason and s.fix, f"{name}: an unavailable backend must say why and how to fix it"


@pytest.mark.parametrize("K", [0, 2], ids=["diag", "K2"])
@pytest.mark.parametrize("backend", ALL)
def test_opcheck(backend, K):
    dev = device_for(backend)
    A, b, h0 = make_inputs(2, 17, 3, K, with_h0=True, dtype=torch.float32, device=dev)
    if K == 0:
        A, b, h0 = A[..., None, None], b[..., None], h0[..., None]
    A.requires_grad_(), b.requires_grad_(), h0.requires_grad_()
    for rev in (False, True):
        torch.library.opcheck(torch.ops.nlseq.linear_recurrence, (A, b, h0, rev, backend))
        torch.library.opcheck(torch.ops.nlseq.linear_recurrence, (A, b, None, rev, backend))


def test_torch_compile_matches_eager():
    A, b, h0 = make_inputs(2, 50, 4, 2, with_h0=True, dtype=torch.float32, device="cpu")

    def f(A, b, h0):
        h, last = nlseq.linear_recurrence(A, b, h0)
        return h.sum(-1) * 2 + last.sum()

    eager = f(A, b, h0)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(A, b, h0)
    torch.testing.assert_close(compiled, eager)
