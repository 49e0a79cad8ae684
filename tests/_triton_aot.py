"""Ahead-of-time compilation of Triton kernels for sm_90 on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python, never their lowering to PTX, so a
kernel can pass every CPU test and still fail to compile on a GPU. ``compile_sm90`` runs a script
in a fresh process without TRITON_INTERPRET, where ``compile_kernel`` compiles for
GPUTarget("cuda", 90, 32) with triton's bundled ptxas (no GPU needed). Used by
tests/test_scan_triton.py and tests/test_triton_sm90.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Imported by the scripts: compile one kernel variant from its pointer dtypes, float scalars and
# constexprs (every other argument an i32).
PRELUDE = r"""
import triton
from triton.backends.compiler import GPUTarget

def compile_kernel(kernel, ptrs, consts, num_warps, num_stages, floats=()):
    fn = kernel.fn if hasattr(kernel, "configs") else kernel
    sig = {}
    for n in fn.arg_names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in ptrs:
            sig[n] = "*" + ptrs[n]
        else:
            sig[n] = "fp32" if n in floats else "i32"
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    assert k.asm["cubin"], fn.__name__
"""


def compile_sm90(script: str, timeout: int = 900) -> None:
    """Run PRELUDE + script in a subprocess without TRITON_INTERPRET; it must print 'compiled'."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no nvidia backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + script], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-4000:]
