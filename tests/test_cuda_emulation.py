"""The CUDA kernels of csrc/cuda, run on the CPU under a small emulation (tests/cuda_emulation/emu.h).

No GPU reaches this test suite's CI, so this is where the CUDA code itself executes: each .cu file
is rewritten (`kernel<<<...>>>(args)` -> `::emu::launch(kernel, ..., args)`), compiled with g++
against the CUDA headers, and run against float64 loops by the drivers in tests/cuda_emulation/.
It checks indexing, bounds, barriers and the multi-block logic; it says nothing about speed, and
tests/gpu/ remains the real test on a GPU. Skipped without g++ or the CUDA headers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "cuda_emulation"
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
CXX = shutil.which(os.environ.get("CXX", "g++"))

pytestmark = pytest.mark.skipif(
    CXX is None or not (CUDA_INCLUDE / "cuda_bf16.h").exists(),
    reason=f"needs a C++20 compiler (g++) and the CUDA headers ({CUDA_INCLUDE}); set CUDA_HOME",
)

LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(.*?)>>>\(")


def rewrite(cu: Path, out: Path) -> None:
    src = cu.read_text()
    src, n = LAUNCH.subn(r"::emu::launch(\1, \2, ", src)
    assert n > 0, f"no kernel launch found in {cu}"
    src = src.replace("extern __shared__ float smem[];", "float* smem = ::emu::dyn_smem.data();")
    assert "<<<" not in src, f"a launch in {cu} was not rewritten"
    out.write_text(src)


@pytest.mark.parametrize(
    "cu,driver,inc,defines",
    [
        ("scan.cu", "scan_main.cpp", "scan_emu.inc", []),
        ("softplus_attention_decode.cu", "decode_main.cpp", "decode_emu.inc", []),
        # gridDim.y limit lowered to 2 row tiles so that M is tiled over launches at a small size
        ("analog.cu", "analog_main.cpp", "analog_emu.inc", ["-DNLSEQ_ANALOG_MAX_GRID_Y=2"]),
    ],
    ids=["scan", "softplus_attention_decode", "analog"],
)
def test_cuda_kernel_under_emulation(tmp_path, cu, driver, inc, defines):
    rewrite(ROOT / "csrc" / "cuda" / cu, tmp_path / inc)
    exe = tmp_path / "run"
    cmd = [
        CXX,
        "-std=c++20",
        "-O1",
        "-pthread",
        f"-I{CUDA_INCLUDE}",
        f"-I{ROOT / 'csrc' / 'include'}",
        f"-I{ROOT / 'csrc' / 'cuda'}",
        f"-I{tmp_path}",
        f"-I{HARNESS}",
        "-ffp-contract=off",
        *defines,
        "-include",
        str(HARNESS / "emu.h"),
        str(HARNESS / driver),
        "-o",
        str(exe),
    ]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"compile failed:\n{build.stderr[-4000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env={**os.environ, "EMU_SMS": "4"})
    print(run.stdout)
    assert run.returncode == 0, f"emulated kernel outside tolerance:\n{run.stdout[-6000:]}{run.stderr[-2000:]}"
