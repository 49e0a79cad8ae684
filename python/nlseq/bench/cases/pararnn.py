"""Benchmark cases of the pararnn family: ParaGRU / ParaLSTM forward and forward+backward (docs/spec.md §1.4).

Each case runs the module's computation functionally on the same inputs x [B, T, I] and
parameters W [heads, I/heads, 3, N/heads], b [3, N], A [3, N] (and P [2, N] for the LSTM), drawn
from the modules' default initialisation (docs/spec.md §1.3) with I = N, heads = 2; the output is
y [B, T, N]. The input projection U = Wx + b is the modules' (``nlseq.ops.pararnn_projection``: the
C++ row-split GEMMs on the cpp backend, the reference function elsewhere and in the loop), so the
rows differ in the projection's implementation and in how the recurrence is solved:

    cpp           mode="auto" on the CPU: the exact fused sequential kernel (and its fused backward)
    cpp-newton    Newton iterations with the C++ scan (mode="newton")
    cuda, triton  the fused Newton kernels (GPU)
    reference     Newton in PyTorch (Hillis–Steele scan)
    loop          the eager sequential loop of the same cell in PyTorch (one step per time step),
                  the "sequential" column of docs/spec.md §1.4 (on the GPU only at the smallest size,
                  forward only: seconds per call above it)
    nn.GRU/LSTM   torch.nn.GRU / LSTM (cuDNN on the GPU) at the same sizes, in the same case: a
                  different (dense) recurrence with its own weights, checked against its own
                  float64 run, shown as the reference point users know

Baselines: the loop on the CPU; nn.GRU / nn.LSTM (cuDNN) on the GPU. Goals (issue 15): CPU, ParaGRU
forward (cpp: C++ projection + fused recurrence) >= 5x the eager module (reference projection +
loop) at B=4, T=4096, N=256; ``ParaGRU-recurrence`` (from a given U) cpp >= 10x the loop;
``ParaGRU-projection`` cpp within 1.1x (fwd) / 1.25x (fwd+bwd) of ``bmm``, torch.bmm of the same
block-diagonal product in the same process. GPU: H200 (fp32): ParaGRU 8×2048×1024 forward <= 1.2 ms and
forward+backward <= 4.0 ms (½ and ⅓ of the reference code's fused 2.38 / 12.06 ms).
Headline: ParaGRU and ParaLSTM 8×2048×1024 fp32 on the GPU, the goal case on the CPU.
Oracle: the sequential loop in float64 (autograd through it for the gradients).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

import nlseq
from nlseq.bench import Case, Goal, Impl
from nlseq.nn import ParaGRU, ParaLSTM
from nlseq.ops.pararnn_projection import input_projection
from nlseq.reference import pararnn as ref

FAMILY = "pararnn"

# Tolerances against the float64 oracle. fp32: Newton stops at a residual <= 1e-5 and the error
# obeys e_t = J_t e_{t-1} + r_t (|e| <= 1e-5/(1-ρ)), sequential paths are ~1e-6; gradients are
# sums over B·T steps (values up to ~1e3 for dW), float32 summation order differs between impls.
# bf16: x, W, U and y are rounded to bf16 (u = 2^-8); 4u on outputs, gradients pass through
# several bf16 roundings.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 2**-6)}
GRAD_TOL = {torch.float32: (1e-3, 1e-3), torch.bfloat16: (1e-1, 2**-4)}
TOL_NOTE = {
    torch.float32: "Newton residual tol 1e-5 amplified by 1/(1-rho); grads are sums over B*T steps",
    torch.bfloat16: "bf16 rounding of x, W, U and y (u = 2^-8): 4u on outputs",
}

# docs/spec.md §1.4: (cell, B, T, N); the loop is omitted at T = 65536 (minutes per call, as in docs/spec.md).
GPU_SIZES = [("gru", 8, 2048, 1024), ("gru", 16, 4096, 512), ("gru", 2, 65536, 256), ("lstm", 8, 2048, 1024)]
MODULES = {"gru": ParaGRU, "lstm": ParaLSTM}
TORCH_RNN = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}


def _inputs(cell, B, T, N, dtype, device):
    torch.manual_seed(0)
    m = MODULES[cell](N, N, heads=2)
    x = torch.randn(B, T, N)
    d = {"x": x, "W": m.weight_ih.detach(), "b": m.bias.detach(), "A": m.weight_hh.detach()}
    if cell == "lstm":
        d["P"] = m.peephole.detach()
    return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in d.items()}


def _y(cell, S_all):
    return S_all[:, :, -1]


def oracle(cell, x, W, b, A, P=None):
    """float64 sequential loop of the cell on U = Wx + b: y [B, T, N]."""
    U = ref.input_projection(x, W, b)
    return _y(cell, ref.pararnn_sequential(cell, U, A, P, None))


def _nlseq(cell, backend, mode, x, W, b, A, P=None):
    U = input_projection(x, W, b, backend=backend)  # the modules' projection (C++ on the cpp backend)
    return _y(cell, nlseq.pararnn(cell, U, A, P, mode=mode, backend=backend))


def _loop(cell, x, W, b, A, P=None):
    """The eager sequential loop in the input dtype (float32 state for bf16 inputs)."""
    U = ref.input_projection(x, W, b)
    acc = torch.float32 if x.dtype != torch.float64 else x.dtype
    S_all = ref.pararnn_sequential(cell, U.to(acc), A.to(acc), None if P is None else P.to(acc), None)
    return _y(cell, S_all).to(x.dtype)


def _triton_skip() -> str:
    if importlib.util.find_spec("nlseq.kernels.pararnn") is None:
        return "nlseq.kernels.pararnn (kernels/pararnn.py) is not in this tree"
    return ""


def _cuda_skip() -> str:
    from nlseq.ops.pararnn import _implemented

    return "" if "cuda" in _implemented() else "nlseq._C has no CUDA kernel for pararnn_fwd"


def _impls(cell, device, dtype, B, T, N, *, loop=True, time_reference=True, loop_backward=True, torch_backward=True):
    p = functools.partial
    if device.type == "cuda":
        impls = [
            Impl("cuda", p(_nlseq, cell, "cuda", "newton"), backend="cuda", skip=_cuda_skip()),
            Impl("triton", p(_nlseq, cell, "triton", "newton"), backend="triton", skip=_triton_skip()),
        ]
    else:
        impls = [
            Impl(
                "cpp",
                p(_nlseq, cell, "cpp", "auto"),
                backend="cpp",
                note="mode=auto on the CPU: fused exact sequential kernel + fused backward",
            ),
            Impl(
                "cpp-newton",
                p(_nlseq, cell, "cpp", "newton"),
                backend="cpp",
                note="Newton iterations solved by the C++ scan",
            ),
        ]
    impls.append(
        Impl(
            "reference",
            p(_nlseq, cell, "reference", "newton"),
            backend="reference",
            timed=time_reference,
            note="" if time_reference else "--quick: checked, not timed (Newton in PyTorch)",
        )
    )
    if loop:
        impls.append(
            Impl(
                "loop",
                p(_loop, cell),
                backward=loop_backward,
                note="eager sequential loop of the same cell (PyTorch)" + ("" if loop_backward else "; forward only"),
            )
        )
    impls.append(_torch_impl(cell, device, dtype, B, T, N, backward=torch_backward))
    return impls


def _case(cell, device, dtype, B, T, N, *, impls, note="", baseline=None, goals=(), headline=False, suffix=""):
    s = torch.tensor([], dtype=dtype).element_size()
    btn = B * T * N * s
    fwd = btn + 3 * btn * 2 + btn  # read x, write + read U, write y (x is [B, T, I], I = N)
    bwd = btn * (1 + 3 + 1 + 3 + 1)  # read dy, U, y; write dU; write dx
    grad_inputs = ("x", "W", "b", "A") + (("P",) if cell == "lstm" else ())
    atol, rtol = TOL[dtype]
    name = ("ParaGRU" if cell == "gru" else "ParaLSTM") + suffix
    return Case(
        family=FAMILY,
        name=name,
        device=device,
        dtype=dtype,
        shape={"B": B, "T": T, "N": N},
        inputs=functools.partial(_inputs, cell, B, T, N, dtype, device),
        oracle=functools.partial(oracle, cell),
        impls=impls,
        grad_inputs=grad_inputs,
        output_names=("y",),
        atol=atol,
        rtol=rtol,
        grad_tol=GRAD_TOL[dtype],
        tolerance_note=TOL_NOTE[dtype],
        baseline=baseline,
        bytes={"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd},
        note=note,
        goals=goals,
        headline=headline,
        # the float64 oracle is a Python loop over T steps; its autograd backward at T = 65536 on
        # the GPU costs minutes: there the gradients are timed, the forward checked
        check_grads=not (device.type == "cuda" and T > 8192),
    )


# ---------------------------------------------------------------- CPU: the two halves of the module
# The module is the input projection plus the recurrence; each half has its own case with its
# own peer in the same process (issue 15): the recurrence from U against the eager loop from the
# same U, and the projection against torch.bmm of the same block-diagonal product.
def _u_inputs(B, T, N, dtype, device):
    d = _inputs("gru", B, T, N, dtype, device)
    return {"U": ref.input_projection(d["x"], d["W"], d["b"]).contiguous(), "A": d["A"]}


def _recurrence_cpp(U, A):
    return nlseq.pararnn("gru", U, A, mode="sequential", backend="cpp")[:, :, -1]


def _recurrence_loop(U, A):
    return ref.pararnn_sequential("gru", U, A, None, None)[:, :, -1]


def _recurrence_case(device, B, T, N, quick):
    s = 4
    goals = () if quick else (Goal(("cpp",), "fwd", speedup=10.0, text="issue 15: recurrence >= 10x the eager loop"),)
    return Case(
        family=FAMILY,
        name="ParaGRU-recurrence",
        device=device,
        dtype=torch.float32,
        shape={"B": B, "T": T, "N": N},
        inputs=functools.partial(_u_inputs, B, T, N, torch.float32, device),
        oracle=_recurrence_loop,
        impls=[
            Impl("cpp", _recurrence_cpp, backend="cpp", note="fused exact sequential kernel from U"),
            Impl("loop", _recurrence_loop, backward=False, note="eager sequential loop from the same U; forward only"),
        ],
        grad_inputs=("U", "A"),
        output_names=("y",),
        atol=TOL[torch.float32][0],
        rtol=TOL[torch.float32][1],
        grad_tol=GRAD_TOL[torch.float32],
        tolerance_note=TOL_NOTE[torch.float32],
        baseline="loop",
        bytes={"fwd": B * T * N * s * 4},  # read U (3 gates), write y
        goals=goals,
        note="the recurrence alone, from a given U: goal cpp >= 10x the eager loop",
    )


def _proj_inputs(B, T, N, dtype, device):
    d = _inputs("gru", B, T, N, dtype, device)
    return {"x": d["x"], "W": d["W"], "b": d["b"]}


def _projection_cpp(x, W, b):
    return input_projection(x, W, b, backend="cpp")


def _projection_oracle(x, W, b):
    return ref.input_projection(x, W, b)


def _bmm_inputs(B, T, N, dtype, device, heads=2):
    """The same block-diagonal product as one torch.bmm: xh [heads, B·T, I/heads], Wh [heads, I/heads, 3N/heads]."""
    d = _proj_inputs(B, T, N, dtype, device)
    hs, ih, G, nh = d["W"].shape
    return {
        "xh": d["x"].reshape(B * T, hs, ih).transpose(0, 1).contiguous(),
        "Wh": d["W"].reshape(hs, ih, G * nh).contiguous(),
    }


def _bmm(xh, Wh):
    return torch.bmm(xh, Wh)


def _projection_case(device, B, T, N, heads=2):
    s = 4
    M = B * T
    flops = 2 * M * N * 3 * N // heads
    return Case(
        family=FAMILY,
        name="ParaGRU-projection",
        device=device,
        dtype=torch.float32,
        shape={"B": B, "T": T, "N": N},
        inputs=functools.partial(_proj_inputs, B, T, N, torch.float32, device),
        oracle=_projection_oracle,
        impls=[
            Impl("cpp", _projection_cpp, backend="cpp", note="row-split GEMMs straight into U (C++)"),
            Impl(
                "reference",
                functools.partial(input_projection, backend="reference"),
                backend="reference",
                note="G baddbmm into U's gate views",
            ),
            Impl(
                "bmm",
                _bmm,
                inputs=functools.partial(_bmm_inputs, B, T, N, torch.float32, device, heads),
                oracle=_bmm,
                grad_inputs=("xh", "Wh"),
                tol=(1e-4, 1e-4),
                grad_tol=GRAD_TOL[torch.float32],
                note="peer: torch.bmm of the same block-diagonal product (same FLOPs, its own [heads, M, 3N/heads] "
                "output layout, allocated per call)",
            ),
        ],
        grad_inputs=("x", "W", "b"),
        output_names=("U",),
        atol=1e-4,
        rtol=1e-4,
        grad_tol=GRAD_TOL[torch.float32],
        tolerance_note="fp32 GEMM over I/heads = 128 terms; gradients sum over B*T rows",
        baseline="bmm",
        flops={"fwd": flops, "bwd": 2 * flops, "fwdbwd": 3 * flops},
        bytes={"fwd": (M * N + M * 3 * N) * s},
        goals=(
            Goal(
                ("cpp",), "fwd", speedup=1 / 1.1, text="issue 15: projection within 1.1x of one bmm of the same FLOPs"
            ),
            Goal(("cpp",), "fwdbwd", speedup=1 / 1.25, text="issue 15: projection fwd+bwd within 1.25x of bmm's"),
        ),
        note="the input projection alone against torch.bmm of the same FLOPs",
    )


# ---------------------------------------------------------------- torch.nn.GRU / LSTM reference points
def _torch_inputs(cell, B, T, N, dtype, device):
    torch.manual_seed(0)
    m = TORCH_RNN[cell](N, N, batch_first=True)
    d = {"x": torch.randn(B, T, N)}
    d.update({k: v.detach() for k, v in m.named_parameters()})
    return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in d.items()}


def _torch_rnn(cell, x, **params):
    """nn.GRU / nn.LSTM (cuDNN on the GPU) with the given weights: y [B, T, N]."""
    N = x.shape[-1]
    m = TORCH_RNN[cell](N, N, batch_first=True, device="meta")
    return torch.func.functional_call(m, params, (x,))[0]


def _torch_impl(cell, device, dtype, B, T, N, *, backward=True):
    """nn.GRU / nn.LSTM as a peer in the ParaGRU / ParaLSTM case: its own weights and float64 oracle."""
    name = "nn.GRU" if cell == "gru" else "nn.LSTM"
    inputs = functools.partial(_torch_inputs, cell, B, T, N, dtype, device)
    return Impl(
        name,
        functools.partial(_torch_rnn, cell),
        backward=backward,
        inputs=inputs,
        oracle=functools.partial(_torch_rnn, cell),
        grad_inputs=("x",),
        tol=TOL[dtype],
        grad_tol=GRAD_TOL[dtype],
        note=f"torch.nn.{name[3:]} ({'cuDNN' if device.type == 'cuda' else 'ATen'}): dense recurrence, "
        "own weights, checked against its own float64 run" + ("" if backward else "; forward only"),
    )


def cases(device: torch.device, quick: bool) -> list[Case]:
    f32, bf16 = torch.float32, torch.bfloat16
    if device.type == "cuda":
        out = []
        sizes = GPU_SIZES[:1] if quick else GPU_SIZES
        smallest = min(B * T * N for _, B, T, N in GPU_SIZES)
        for cell, B, T, N in sizes:
            # the eager loop only at the smallest size, forward only (seconds per call beyond)
            loop = B * T * N == smallest
            goals = ()
            if (cell, B, T, N) == ("gru", 8, 2048, 1024):
                goals = (
                    Goal(
                        ("cuda", "triton"),
                        "fwd",
                        max_ms=1.2,
                        text="1/2 of the reference code's fused 2.38 ms (docs/spec.md §1.4)",
                    ),
                    Goal(
                        ("cuda", "triton"),
                        "fwdbwd",
                        max_ms=4.0,
                        text="1/3 of the reference code's fused 12.06 ms (docs/spec.md §1.4)",
                    ),
                )
            out.append(
                _case(
                    cell,
                    device,
                    f32,
                    B,
                    T,
                    N,
                    impls=_impls(cell, device, f32, B, T, N, loop=loop, loop_backward=False),
                    baseline="nn.GRU" if cell == "gru" else "nn.LSTM",
                    goals=goals,
                    headline=(B, T, N) == (8, 2048, 1024),
                    note="docs/spec.md §1.4 reference code fused CUDA: see the module docstring for the goals",
                )
            )
        for cell, B, T, N in sizes:
            out.append(
                _case(
                    cell,
                    device,
                    bf16,
                    B,
                    T,
                    N,
                    impls=_impls(cell, device, bf16, B, T, N, loop=False),
                    baseline="nn.GRU" if cell == "gru" else "nn.LSTM",
                )
            )
        return out
    # CPU: the goal size in the full run; in --quick a short sequence and nn.GRU forward only. The
    # loop is timed forward only (its autograd over 4096 steps takes minutes per call on 2 cores).
    B, T, N = (4, 256, 256) if quick else (4, 4096, 256)
    goals = () if quick else (Goal(("cpp",), "fwd", speedup=5.0, text="issue 15: module >= 5x the eager module"),)
    out = [
        _case(
            "gru",
            device,
            f32,
            B,
            T,
            N,
            impls=_impls(
                "gru", device, f32, B, T, N, time_reference=not quick, loop_backward=False, torch_backward=not quick
            ),
            baseline="loop",
            goals=goals,
            headline=True,
            note="goal: cpp forward (projection + recurrence) >= 5x the eager module (reference projection + "
            "eager loop) at B=4, T=4096, N=256",
        ),
        _recurrence_case(device, B, T, N, quick),
        _projection_case(device, B, T, N),
    ]
    if not quick:
        out.append(
            _case(
                "lstm",
                device,
                f32,
                2,
                2048,
                128,
                impls=_impls("lstm", device, f32, 2, 2048, 128, loop_backward=False),
                baseline="loop",
            )
        )
    # tiny (T prime): cheap, timed; the GPU check's dry run uses it
    out.append(
        _case(
            "gru",
            device,
            f32,
            2,
            37,
            16,
            impls=_impls("gru", device, f32, 2, 37, 16, loop_backward=False),
            baseline="loop",
            suffix="-tiny",
        )
    )
    return out
