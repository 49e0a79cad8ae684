"""The Triton kernels of the pararnn, softplus_attention and analog families compile for sm_90.

Every CPU test runs them under the interpreter, which never lowers them; this compiles the
variants a GPU run launches (dtypes, constexpr branches, the first GPU autotune config) ahead of
time, without a GPU (tests/_triton_aot.py; the scan family's kernels: tests/test_scan_triton.py).
"""

from __future__ import annotations

from _triton_aot import compile_sm90

_SOFTPLUS = r"""
from nlseq.kernels import softplus_attention as sa

cfg_f, cfg_b = sa._configs()[0], sa._bwd_configs()[0]
for dtype, causal, reweight, varlen in [("bf16", True, False, False), ("fp16", True, True, True),
                                        ("fp32", False, True, False)]:
    prec = "ieee" if dtype == "fp32" else "tf32"
    consts = dict(CAUSAL=causal, REWEIGHT=reweight, IS_VARLEN=varlen, DOT_PREC=prec, BD=128,
                  P_INT=15 if reweight and dtype != "fp32" else 0)  # fp32: the non-integer p path
    # fp32 at D = 128 fits the shared memory with the smallest tiles (the autotuner skips the others)
    wf = cfg_f if dtype != "fp32" else sa._configs()[-1]
    wb = cfg_b if dtype != "fp32" else sa._bwd_configs()[-1]
    ptrs = dict(q=dtype, k=dtype, v=dtype, o=dtype, do=dtype, rq="fp32", rk="fp32", stats="fp32", delta="fp32",
                gamma="fp32", dq="fp32", dk="fp32", dv="fp32", cu_q="i32", cu_k="i32")
    floats = ("log_d", "p", "zero_tol")
    compile_kernel(sa._fwd_kernel, ptrs, dict(consts, **wf.kwargs), wf.num_warps, wf.num_stages, floats)
    if reweight:
        compile_kernel(sa._bwd_gamma_kernel, ptrs, dict(consts, **wb.kwargs), wb.num_warps, wb.num_stages, floats)
    compile_kernel(sa._bwd_kernel, ptrs, dict(consts, **wb.kwargs), wb.num_warps, wb.num_stages, floats)
print("compiled")
"""

_PARARNN = r"""
from nlseq.kernels import pararnn as pk

for dtype, lstm in [("bf16", False), ("fp32", True)]:
    io = {n: dtype for n in ("U", "S0", "S", "DS", "DU", "DS0")}
    f32 = {n: "fp32" for n in ("A", "P", "X", "PHI", "MT", "MU", "QQ", "PA", "PP", "DSL")}
    ptrs = dict(io, **f32, RES="i32")
    BN, warps = pk._block_n(1024)
    cell = dict(IS_LSTM=lstm, HAS_P=lstm, BN=BN)
    compile_kernel(pk.pararnn_fwd_sweep_kernel, ptrs, dict(cell, HAS_S0=True, FIRST=False), warps, 1, ("tol",))
    compile_kernel(pk.pararnn_fwd_boundary_kernel, ptrs, dict(cell, CHECK=True), warps, 1, ("tol",))
    for final in (False, True):
        compile_kernel(pk.pararnn_bwd_chunk_kernel, ptrs, dict(cell, HAS_S0=True, FINAL=final), warps, 1)
    compile_kernel(pk.pararnn_bwd_carry_kernel, ptrs, dict(IS_LSTM=lstm, BN=BN), warps, 1)
print("compiled")
"""

_ANALOG = r"""
from nlseq.kernels import analog as ak

ptrs = {n: "fp32" for n in ("x", "w", "col_scale", "thr", "lev", "noise", "y")}
floats = ("x_max", "inv_delta", "delta", "qmax", "noise_a", "noise_b")
for quantize, noisy, supplied, ieee in [(True, True, False, True), (False, True, True, False)]:
    consts = dict(QUANTIZE=quantize, NOISY=noisy, SUPPLIED=supplied, BITS=8, BM=128, BN=128, BK=32, IEEE=ieee)
    compile_kernel(ak.analog_mvm_fwd_kernel, ptrs, consts, 8, 3, floats)
print("compiled")
"""


def test_softplus_attention_kernels_compile_for_sm90():
    compile_sm90(_SOFTPLUS)


def test_pararnn_kernels_compile_for_sm90():
    compile_sm90(_PARARNN)


def test_analog_kernel_compiles_for_sm90():
    compile_sm90(_ANALOG)
