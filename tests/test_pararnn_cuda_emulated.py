"""The fused ParaRNN CUDA kernels (csrc/cuda/pararnn.cu, .cuh), emulated on the CPU, against the
float64 sequential oracle.

No GPU is needed: the test rewrites every ``kernel<<<grid, block, 0, stream>>>(args)`` launch of
pararnn.cu into ``::emu::launch(grid, block, [&] { kernel(args); })``, compiles it with g++ against
tests/cuda_emu/shim (a CPU stand-in for the CUDA runtime, bf16/fp16 storage types and
blockIdx/threadIdx; threads run one after the other) and drives the launchers through
tests/cuda_emu/driver.cpp. It checks the kernels' indexing, chunking, Newton iteration sequence,
device-side convergence test and backward passes, i.e. everything but GPU execution itself
(the warp-shuffle block reduction is replaced by its sequential equivalent; tests/gpu covers the
rest on a GPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from _pararnn_oracle import BWD_TOL, FWD_TOL, S_OF, make_inputs, oracle_grads, oracle_states, residual_of
from _utils import DTYPE_IDS, assert_close_to_oracle

ROOT = Path(__file__).resolve().parents[1]
IO = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CPU = torch.device("cpu")


def _split_top_level(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "(<[{"
        depth -= ch in ")>]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _emulated_source() -> str:
    src = (ROOT / "csrc" / "cuda" / "pararnn.cu").read_text()
    launch = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>]*>)?)<<<([^;]*?)>>>\(([^;]*?)\);")

    def rewrite(m):
        grid, block = (a.strip() for a in _split_top_level(m.group(2))[:2])
        return f"::emu::launch({grid}, {block}, [&] {{ {m.group(1)}({m.group(3)}); }});"

    out, n = launch.subn(rewrite, src)
    assert n >= 8 and "<<<" not in out, "pararnn.cu launches changed shape; update the rewrite"
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CUDA-kernel emulation")
    d = tmp_path_factory.mktemp("cuda_emu")
    (d / "pararnn_emu.cpp").write_text(_emulated_source())
    exe = d / "driver"
    shim = ROOT / "tests" / "cuda_emu" / "shim"
    cmd = [
        cxx,
        "-std=c++17",
        "-O1",
        "-Wall",
        "-Wno-unknown-pragmas",
        "-Wno-unused-function",
        "-include",
        str(shim / "emu.h"),
        f"-I{shim}",
        f"-I{ROOT / 'csrc'}",
        f"-I{ROOT / 'csrc' / 'include'}",
        f"-I{ROOT / 'csrc' / 'cuda'}",
        str(d / "pararnn_emu.cpp"),
        str(ROOT / "tests" / "cuda_emu" / "driver.cpp"),
        "-o",
        str(exe),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"emulation build failed:\n{res.stderr[-4000:]}"
    return exe


def run_emulated(driver, tmp_path, cell, U, A, P, s0, dS, ds_last, *, L, max_iters=50, tol=1e-6):
    """pararnn_fwd then pararnn_bwd of the emulated CUDA launchers; outputs as float32 tensors
    (values exactly those of the I/O dtype)."""
    B, T, _, N = U.shape
    S = S_OF[cell]
    for name, t in dict(U=U, A=A, P=P, s0=s0, dS=dS, ds_last=ds_last).items():
        if t is not None:
            t.detach().float().contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    io = IO[U.dtype]
    args = [
        str(driver),
        str(tmp_path),
        cell,
        io,
        str(B),
        str(T),
        str(N),
        str(L),
        str(max_iters),
        repr(tol),
        str(int(P is not None)),
        str(int(s0 is not None)),
    ]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, f"driver failed ({res.returncode}): {res.stderr}"

    def load(name, *shape):
        return torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32).reshape(shape))

    return dict(
        S_all=load("S_all", B, T, S, N),
        iters=int(load("iters", 1)[0]),
        residual=float(load("residual", 1)[0]),
        dU=load("dU", B, T, 3, N),
        dA=load("dA", 3, N),
        dP=load("dP", 2, N),
        ds0=load("ds0", B, S, N),
    )


def _grads_inputs(cell, B, T, N, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    dS = torch.randn(B, T, S_OF[cell], N, generator=g).to(dtype)
    ds_last = torch.randn(B, S_OF[cell], N, generator=g).to(dtype)
    return dS, ds_last


# (B, T, N, chunk length L; 0 = the launcher's default for a 132-SM device)
SHAPES = [
    pytest.param(2, 1, 5, 1, id="T1"),
    pytest.param(2, 63, 7, 63, id="T63-1chunk"),
    pytest.param(2, 63, 7, 8, id="T63-L8"),
    pytest.param(1, 37, 133, 10, id="T37-N133-L10"),
    pytest.param(3, 6, 3, 1, id="T6-L1"),
    pytest.param(1, 300, 9, 0, id="T300-default"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("with_s0", [False, True], ids=["zero_s0", "s0"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("B,T,N,L", SHAPES)
def test_emulated_cuda_matches_oracle(driver, tmp_path, cell, with_s0, dtype, B, T, N, L):
    U, A, P, s0 = make_inputs(cell, B, T, N, dtype=dtype, with_s0=with_s0, device=CPU)
    dS, ds_last = _grads_inputs(cell, B, T, N, dtype)
    out = run_emulated(driver, tmp_path, cell, U, A, P, s0, dS, ds_last, L=L)
    assert out["residual"] <= 1e-6
    assert_close_to_oracle(out["S_all"], oracle_states(cell, U, A, P, s0), **FWD_TOL[dtype], what=f"{cell} S_all")
    # (the driver ran the backward at the kernel's own S_all)
    gU, gA, gP, gs0 = oracle_grads(cell, U, A, P, s0, dS, ds_last)
    tol = BWD_TOL[dtype]
    assert_close_to_oracle(out["dU"], gU, **tol, what=f"{cell} dU")
    assert_close_to_oracle(out["ds0"], gs0, **tol, what=f"{cell} ds0")
    sum_tol = dict(atol=tol["atol"] * (B * T) ** 0.5, rtol=tol["rtol"])  # dA, dP: sums of B·T terms
    assert_close_to_oracle(out["dA"], gA, **sum_tol, what=f"{cell} dA")
    if cell == "lstm":
        assert_close_to_oracle(out["dP"], gP, **sum_tol, what=f"{cell} dP")
    else:
        assert torch.equal(out["dP"], torch.zeros(2, N)), "the GRU's dP must be written as zeros"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_emulated_iteration_semantics(driver, tmp_path, cell):
    B, T, N = 2, 48, 6
    U, A, P, s0 = make_inputs(cell, B, T, N, dtype=torch.float32, with_s0=True, device=CPU, scale_a=3.0)
    dS, ds_last = _grads_inputs(cell, B, T, N, torch.float32)
    # stopped early (0 or 1 update, tol < 0 never met): the residual is that of the returned states
    for max_iters in (0, 1):
        out = run_emulated(driver, tmp_path, cell, U, A, P, s0, dS, ds_last, L=6, max_iters=max_iters, tol=-1.0)
        assert out["iters"] == max_iters
        expect = residual_of(cell, out["S_all"], U, A, P, s0)
        assert expect > 1e-5, "test needs an unconverged state"
        assert abs(out["residual"] - expect) <= 1e-6 + 1e-5 * expect, (out["residual"], expect)
    # tol < 0 and max_iters >= C − 1: exactly C − 1 updates, after which every boundary is exact
    out = run_emulated(driver, tmp_path, cell, U, A, P, s0, dS, ds_last, L=6, max_iters=100, tol=-1.0)
    assert out["iters"] == 7 and out["residual"] == 0.0
    assert_close_to_oracle(out["S_all"], oracle_states(cell, U, A, P, s0), atol=1e-5, rtol=1e-5, what=f"{cell} S_all")
    # a NaN input: NaN residual, and the device-side test stops at once
    U[1, 20, 2, 4] = float("nan")
    out = run_emulated(driver, tmp_path, cell, U, A, P, s0, dS, ds_last, L=6, max_iters=10, tol=1e-6)
    assert np.isnan(out["residual"]) and out["iters"] == 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_emulated_newton_converges_quadratically(driver, tmp_path, cell):
    """48 two-step chunks of a weakly contracting cell: Newton on the boundary states takes <= 6
    updates to reach 1e-6 (the fixed-point iteration without the tangent correction needs 20+)."""
    U, A, P, s0 = make_inputs(cell, 2, 96, 6, dtype=torch.float32, with_s0=True, device=CPU, scale_a=3.0)
    dS, ds_last = _grads_inputs(cell, 2, 96, 6, torch.float32)
    out = run_emulated(driver, tmp_path, cell, U, A, P, s0, dS, ds_last, L=2, max_iters=100, tol=1e-6)
    assert out["iters"] <= 6 and out["residual"] <= 1e-6, (out["iters"], out["residual"])


def test_emulated_lstm_without_peepholes(driver, tmp_path):
    """The launcher also takes P = null for the LSTM (no peepholes; dP written as zeros)."""
    U, A, _, s0 = make_inputs("lstm", 2, 30, 5, dtype=torch.float32, with_s0=True, device=CPU, peepholes=False)
    dS, ds_last = _grads_inputs("lstm", 2, 30, 5, torch.float32)
    out = run_emulated(driver, tmp_path, "lstm", U, A, None, s0, dS, ds_last, L=7)
    assert_close_to_oracle(
        out["S_all"], oracle_states("lstm", U, A, None, s0), **FWD_TOL[torch.float32], what="lstm S_all"
    )
    gU, gA, _, gs0 = oracle_grads("lstm", U, A, None, s0, dS, ds_last)
    assert_close_to_oracle(out["dU"], gU, **BWD_TOL[torch.float32], what="dU")
    assert torch.equal(out["dP"], torch.zeros(2, 5))
