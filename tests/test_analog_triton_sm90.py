"""The analog Triton kernel's compiled code for sm_90 (AOT, no GPU: tests/_triton_aot.py).

Its codes must stay bit-identical to the cpp kernel's on a GPU, where the interpreter's numpy
arithmetic says nothing: so this reads the PTX of every launch variant (tile_config, noise modes,
IEEE and TF32 GEMM) and checks that divisions and square roots are the IEEE ones (div.rn.f32,
sqrt.rn.f32; never div.full / div.approx / sqrt.approx), that no elementwise a * b + c was
contracted into an FMA (the TF32 variant has no fma at all; the IEEE variant has exactly the
dot's BM·BN·BK/threads per K step), and, from the cubin, that no variant spills.
"""

from __future__ import annotations

from _triton_aot import compile_sm90

_SCRIPT = r"""
import os, re, subprocess, tempfile
from nlseq.kernels import analog as ak

CUOBJDUMP = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "cuobjdump")
fn = ak.analog_mvm_fwd_kernel
ptrs = {n: "fp32" for n in ("x", "w", "col_scale", "thr", "lev", "noise", "y")}
floats = ("x_max", "inv_delta", "delta", "qmax", "noise_a", "noise_b")
for noisy, supplied in [(True, False), (True, True), (False, False)]:
    for ieee in (True, False):
        BM, BN, BK, warps, stages = ak.tile_config(noisy, ieee)
        consts = dict(QUANTIZE=True, NOISY=noisy, SUPPLIED=supplied, BITS=8, BM=BM, BN=BN, BK=BK, IEEE=ieee)
        sig = {n: "constexpr" if n in consts else "*" + ptrs[n] if n in ptrs else "fp32" if n in floats else "i32"
               for n in fn.arg_names}
        k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, "num_stages": stages, "enable_fp_fusion": False})
        ptx = k.asm["ptx"]
        n = lambda pat: len(re.findall(pat, ptx))  # noqa: E731
        what = f"noisy={noisy} supplied={supplied} ieee={ieee}"
        assert n(r"div\.(full|approx)") == 0 and n(r"sqrt\.approx") == 0, what + ": approximate div/sqrt in the PTX"
        if noisy and not supplied:  # the Philox normals: (m - 1)/(m + 1) in the log, sqrt in Box-Muller
            assert n(r"div\.rn\.f32") > 0 and n(r"sqrt\.rn\.f32") > 0, what
        if noisy:  # sigma = sqrt(noise_a * ssq + noise_b)
            assert n(r"sqrt\.rn\.f32") > 0, what
        dot_fmas = BM * BN * BK // (32 * warps)
        expect = dot_fmas if ieee else 0
        assert n(r"\bfma\.rn\.f32") == expect, f"{what}: {n(r'fma.rn.f32')} fma, expected {expect} (the dot's)"
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", res)
        assert m, res
        print(what, "registers", m.group(1), "stack", m.group(2), "local", m.group(3))
        assert int(m.group(2)) == 0 and int(m.group(3)) == 0, f"{what}: spills ({res.strip()})"
print("compiled")
"""


def test_analog_kernel_exact_ieee_and_no_spills_sm90():
    compile_sm90(_SCRIPT)
