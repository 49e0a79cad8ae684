"""Benchmark cases of the scan family: ``nlseq.linear_recurrence`` (docs/spec.md §1.1, §1.4).

CPU: the C++ kernel against the PyTorch reference (Hillis–Steele, ``backend="reference"``) and the
sequential loop ``nlseq.reference.scan.linear_recurrence_loop`` (forward only: autograd through
its per-step slice writes is O(T²)). Goal: cpp at least 5× faster than the loop, forward.
The scan is memory-bound, so the fp32 cases of issue 15 (4×4096×256 and 1×65536×64, diagonal and
block K = 2) also hold a ``copy`` peer: a clone that moves exactly the bytes of the case's model
(forward: read A, b, write h; backward: read A, h, dh, write dA, db) in the same process, right
next to the kernel, so its time is the copy bandwidth at this size under the same load. Goals:
cpp forward >= 60 % and backward >= 45 % of that bandwidth (speedup 0.6 / 0.45 over ``copy``).
GPU: cuda / triton / reference at the docs/spec.md §1.4 sizes; GB/s over the measured copy bandwidth
(docs/spec.md §1.4 anchor: 2.04–2.17 TB/s for the reference CUDA reduction, copy ≈ 4 TB/s on an H200).
The Triton interpreter (TRITON_INTERPRET=1) is checked on the CPU at a tiny size, never timed; the
same tiny cases time cpp against the reference (the GPU check's dry run uses them).
Headline (``--subset headline``): the docs/spec.md §1.4 sizes in fp32 on the GPU, the goal case on the CPU.

Inputs: diagonal A ~ U(0.5, 0.99) (decays as in gated linear RNNs; states stay O(10)); block A
with entries U(-0.9/K, 0.9/K), so every K×K block has row sums of |A| below 0.9; b ~ N(0, 1);
h0 = 0. In --quick on the CPU the reference (Hillis–Steele, seconds per call there) is checked but
not timed. The bf16 case's loop peer accumulates in float32 (a bf16-arithmetic loop would fail the
check by design, not by accident).
Oracle: the sequential loop in float64, and its backward (docs/spec.md §1.2) with the loop as the scan;
on the GPU above T = 4096 the reference scan in float64 instead (a loop of 65536 Python steps
costs seconds).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

import nlseq
from nlseq.bench import Case, Goal, Impl
from nlseq.reference import scan as ref

FAMILY = "scan"

# Tolerances (atol, rtol) against the float64 oracle on the same (rounded) inputs; gradients apart.
# fp32: float32 accumulation over memories of ~1/(1-0.99) = 100 steps: measured errors are ~1e-6
# of values up to ~30 (h) and ~10³ (dA = λ·h); the bounds (the test suite's) leave a wide margin
# while an off-by-one step or a dropped term errs by O(1).
# bf16: the unit roundoff is u = 2^-8. Outputs are rounded once (u): rtol 2u. dA = λ·h uses the
# saved bf16 h and is rounded again (2u): rtol 4u. atol covers the float32 accumulation near 0.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (1e-3, 2**-7)}
GRAD_TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (1e-3, 2**-6)}
TOL_NOTE = {
    torch.float32: "float32 accumulation (~1e-6 measured) with margin; an off-by-one step errs O(1)",
    torch.bfloat16: "2x the bf16 roundings: one for outputs (2^-8), two for dA = lambda*h (2^-7)",
}

GPU_SIZES = [(16, 4096, 512), (4, 16384, 1024), (64, 2048, 1024), (2, 65536, 256)]  # docs/spec.md §1.4


def diag_inputs(B, T, N, dtype, device):
    g = torch.Generator().manual_seed(0)
    A = torch.rand(B, T, N, generator=g) * 0.49 + 0.5
    b = torch.randn(B, T, N, generator=g)
    return {"A": A.to(device=device, dtype=dtype), "b": b.to(device=device, dtype=dtype)}


def block_inputs(B, T, N, K, dtype, device):
    g = torch.Generator().manual_seed(0)
    A = (torch.rand(B, T, N, K, K, generator=g) * 2 - 1) * (0.9 / K)
    b = torch.randn(B, T, N, K, generator=g)
    return {"A": A.to(device=device, dtype=dtype), "b": b.to(device=device, dtype=dtype)}


def _to_block(A, b):
    """Diagonal layout as the block layout with K = 1 (views)."""
    return (A[..., None, None], b[..., None]) if b.dim() == 3 else (A, b)


def _from_block(diagonal, *xs):
    return tuple(x[..., 0] for x in xs) if diagonal else xs


# On the GPU a Python loop over T steps costs seconds at T = 16384 and 65536 (three launches per
# step, forward and backward): there the oracle solves the same recurrence in float64 with the
# reference scan (Hillis-Steele, O(log T) launches; tests/test_scan.py checks it against the loop).
LOOP_ORACLE_MAX_T_GPU = 4096


def _oracle_scan(A):
    if A.is_cuda and A.shape[1] > LOOP_ORACLE_MAX_T_GPU:
        return ref.linear_recurrence_scan
    return ref.linear_recurrence_loop


def oracle(A, b):
    """float64 sequential loop (reference scan on the GPU for long T): (h, h_last)."""
    Ab, bb = _to_block(A, b)
    h, h_last = _oracle_scan(A)(Ab, bb)
    return _from_block(b.dim() == 3, h, h_last)


def oracle_grads(inputs, grad_outputs):
    """dA, db of docs/spec.md §1.2 in float64, with the sequential loop as the (reverse) scan."""
    A, b = inputs["A"], inputs["b"]
    diagonal = b.dim() == 3
    Ab, bb = _to_block(A, b)
    scan = _oracle_scan(A)
    h, _ = scan(Ab, bb)
    g, g_last = grad_outputs
    if diagonal:
        g, g_last = g[..., None], g_last[..., None]
    dA, db, _ = ref.linear_recurrence_backward(Ab, h, None, g, g_last, False, scan_fn=scan)
    if diagonal:
        dA, db = dA[..., 0, 0], db[..., 0]
    return {"A": dA, "b": db}


def _nlseq(backend, A, b):
    return nlseq.linear_recurrence(A, b, backend=backend)


def _loop(A, b):
    """The sequential loop in the input dtype: the plain-PyTorch peer."""
    Ab, bb = _to_block(A, b)
    h, h_last = ref.linear_recurrence_loop(Ab, bb)
    return _from_block(b.dim() == 3, h, h_last)


def _loop_fp32(A, b):
    """The sequential loop accumulating in float32 (low-precision inputs upcast, outputs rounded)."""
    h, h_last = _loop(A.float(), b.float())
    return h.to(b.dtype), h_last.to(b.dtype)


class _CopyPeer(torch.autograd.Function):
    """out = x.clone(); the backward returns ``y.clone()`` as y's gradient (a pseudo-gradient:
    it exists to move the backward's bytes at copy speed, allocating like the kernel does)."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(y)
        return x.clone()

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        return None, y.clone()


def _copy_peer(device, dtype, fwd_bytes, bwd_bytes) -> Impl:
    """A copy moving the case's fwd bytes forward and its bwd bytes backward (half read, half written)."""
    s = torch.tensor([], dtype=dtype).element_size()

    def inputs():
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(fwd_bytes // (2 * s), generator=g).to(device=device, dtype=dtype),
            "y": torch.randn(bwd_bytes // (2 * s), generator=g).to(device=device, dtype=dtype),
        }

    return Impl(
        "copy",
        _CopyPeer.apply,
        inputs=inputs,
        oracle=lambda x, y: x.clone(),
        oracle_grads=lambda inputs64, grads64: {"y": inputs64["y"]},
        grad_inputs=("y",),
        tol=(0.0, 0.0),
        grad_tol=(0.0, 0.0),
        note="clone of the case's byte model: fwd bytes/2 read + written forward, bwd bytes/2 "
        "backward (its gradient is a copy, not a derivative): the copy bandwidth at this size",
    )


def _copy_goals(fwd=0.6, bwd=0.45):
    return (
        Goal(("cpp",), "fwd", speedup=fwd, over="copy", text=f"issue 15: forward >= {fwd:.0%} of copy bandwidth"),
        Goal(("cpp",), "bwd", speedup=bwd, over="copy", text=f"issue 15: backward >= {bwd:.0%} of copy bandwidth"),
    )


def _triton_skip() -> str:
    if importlib.util.find_spec("nlseq.kernels.scan") is None:
        return "nlseq.kernels.scan (kernels/scan.py) is not in this tree"
    return ""


def _impls(device, *, loop=False, time_reference=True):
    names = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpp", "reference")
    impls = []
    for n in names:
        timed = time_reference or n != "reference"
        impls.append(
            Impl(
                n,
                functools.partial(_nlseq, n),
                backend=n,
                timed=timed,
                skip=_triton_skip() if n == "triton" else "",
                note="" if timed else "checked, not timed (seconds per call on the CPU)",
            )
        )
    if loop == "fp32":  # low-precision inputs: a loop in bf16 arithmetic would not be a fair peer
        impls.append(
            Impl(
                "loop",
                _loop_fp32,
                backward=False,
                note="sequential loop accumulating in float32, outputs rounded; forward only",
            )
        )
    elif loop:
        impls.append(
            Impl(
                "loop",
                _loop,
                backward=False,
                note="sequential loop in the input dtype; forward only (its autograd is O(T^2))",
            )
        )
    return impls


def _case(name, device, dtype, B, T, N, K=None, *, impls, baseline, note="", goals=(), headline=False, copy=False):
    """A diagonal (K None) or block-K case with the 3/5/8·BTN-style byte model."""
    s = torch.tensor([], dtype=dtype).element_size()
    if K is None:
        shape = {"B": B, "T": T, "N": N}
        inputs = functools.partial(diag_inputs, B, T, N, dtype, device)
        a, v = 1, 1  # elements of A and of b/h per (t, channel)
    else:
        shape = {"B": B, "T": T, "N": N, "K": K}
        inputs = functools.partial(block_inputs, B, T, N, K, dtype, device)
        a, v = K * K, K
    btn = B * T * N * s
    fwd = (a + 2 * v) * btn  # read A, b; write h
    bwd = (2 * a + 3 * v) * btn  # read A, h, dh; write dA, db
    outputs = (v + a + v) * btn + 2 * B * N * v * s  # h, dA, db, h_last, dh0
    atol, rtol = TOL[dtype]
    if copy:
        impls = [*impls, _copy_peer(device, dtype, fwd, bwd)]
        goals = (*goals, *_copy_goals())
    return Case(
        family=FAMILY,
        name=name,
        device=device,
        dtype=dtype,
        shape=shape,
        inputs=inputs,
        oracle=oracle,
        oracle_grads=oracle_grads,
        impls=impls,
        grad_inputs=("A", "b"),
        output_names=("h", "h_last"),
        atol=atol,
        rtol=rtol,
        grad_tol=GRAD_TOL[dtype],
        tolerance_note=TOL_NOTE[dtype],
        baseline=baseline,
        bytes={"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd},
        mem_estimate={"cpp": outputs},
        note=note,
        goals=goals,
        headline=headline,
    )


def cases(device: torch.device, quick: bool) -> list[Case]:
    f32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cuda":
        sizes = GPU_SIZES[:2] if quick else GPU_SIZES
        out = [
            _case(
                "diagonal",
                device,
                f32,
                *bts,
                impls=_impls(device),
                baseline="reference",
                note="docs/spec.md §1.4: reference CUDA reduction 2.04-2.17 TB/s; bytes = 3·B·T·N·4 (fwd)",
                headline=True,
            )
            for bts in sizes
        ]
        out.append(_case("diagonal", device, bf16, 16, 4096, 512, impls=_impls(device), baseline="reference"))
        out.append(_case("block", device, f32, 8, 2048, 1024, K=2, impls=_impls(device), baseline="reference"))
        return out
    big, long = (4, 4096, 256), (1, 65536, 64)  # issue 15: many channels; few channels, long T
    copy_note = "goals: cpp >= 60% (fwd) / 45% (bwd) of the copy peer's bandwidth (issue 15)"
    return [
        _case(
            "diagonal",
            device,
            f32,
            *big,
            impls=_impls(device, loop=True, time_reference=not quick),
            baseline="loop",
            note="goal: cpp >= 5x faster than the sequential loop (fwd); " + copy_note,
            headline=True,
            copy=True,
            goals=(Goal(("cpp",), "fwd", speedup=5.0, text="docs/spec.md §1.4: CPU kernel vs the loop"),),
        ),
        # Long T: no loop peer (65536 Python steps per call); the reference is checked, not timed.
        _case(
            "diagonal",
            device,
            f32,
            *long,
            impls=_impls(device, time_reference=False),
            baseline="copy",
            note=copy_note,
            copy=True,
        ),
        _case(
            "block",
            device,
            f32,
            *big,
            K=2,
            impls=_impls(device, loop=True, time_reference=not quick),
            baseline="loop",
            note=copy_note,
            copy=True,
        ),
        _case(
            "block",
            device,
            f32,
            *long,
            K=2,
            impls=_impls(device, time_reference=False),
            baseline="copy",
            note=copy_note,
            copy=True,
        ),
        _case(
            "diagonal",
            device,
            bf16,
            *((2, 1024, 256) if quick else big),
            impls=_impls(device, loop="fp32", time_reference=not quick),
            baseline="loop",
        ),
        # Triton interpreter: correctness only, tiny (T prime, past one block of 16 channels); cpp
        # timed against the reference there too (cheap: the GPU check's dry run times these).
        _case("diagonal-tiny", device, f32, 2, 37, 19, impls=_impls_tiny(device), baseline="reference"),
        _case("block-tiny", device, f32, 2, 37, 5, K=2, impls=_impls_tiny(device), baseline="reference"),
    ]


def _impls_tiny(device):
    return _impls(device) + [
        Impl(
            "triton",
            functools.partial(_nlseq, "triton"),
            backend="triton",
            timed=False,
            skip=_triton_skip(),
            note="Triton interpreter on the CPU: correctness only",
        )
    ]
