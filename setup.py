"""Build of nlseq: the Python package plus one compiled extension, nlseq._C.

    pip install --no-build-isolation -e .          (torch must already be installed)
    python setup.py build_ext --inplace            (build in the source tree; use PYTHONPATH=python)

nlseq._C always holds the C++ CPU kernels (csrc/cpu, csrc/torch). It also holds the CUDA kernels
(csrc/cuda, defines NLSEQ_WITH_CUDA) when torch is a CUDA build and nvcc is found, or when
NLSEQ_FORCE_CUDA=1. Environment variables:

    NLSEQ_SKIP_EXT=1     build nothing: a pure-Python install (triton and reference backends)
    NLSEQ_SKIP_CUDA=1    build the CPU kernels only
    NLSEQ_FORCE_CUDA=1   build the CUDA kernels even if this machine has no GPU (needs nvcc)
    NLSEQ_CUDA_ARCHS     semicolon-separated SM versions, default "80;90" (-gencode for each)
    CUDA_HOME            the CUDA toolkit (else found from nvcc on PATH)
    MAX_JOBS             parallel compile jobs (ninja)

The availability of a GPU is never consulted: a build machine without one builds the same
binary as one with it.
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda(torch) -> bool:
    if _flag("NLSEQ_SKIP_CUDA"):
        return False
    if _flag("NLSEQ_FORCE_CUDA"):
        return True
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc") is not None)


def _gencode_flags() -> list[str]:
    archs = [a.strip().replace(".", "") for a in os.environ.get("NLSEQ_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def _extensions():
    if _flag("NLSEQ_SKIP_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = _rel("csrc/cpu/*.cpp") + _rel("csrc/torch/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -fopenmp: at::parallel_for is OpenMP in torch's headers. -fno-math-errno and -fno-trapping-math
    # let loops with sqrtf and float selects vectorise; -ffp-contract=off keeps a * b + c two roundings
    # in every clone (csrc/cpu/simd.h). None of the three changes a result.
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unused-function", "-fno-math-errno", "-fno-trapping-math",
           "-ffp-contract=off"]
    link = ["-fopenmp"]
    if _want_cuda(torch):
        if torch.version.cuda is None:
            raise RuntimeError("NLSEQ_FORCE_CUDA=1 needs a CUDA build of torch (torch.version.cuda is None)")
        # Our explicit -gencode flags make torch skip its own arch guess (TORCH_CUDA_ARCH_LIST).
        nvcc = ["-O3", "--use_fast_math", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"] + _gencode_flags()
        ext = CUDAExtension(
            "nlseq._C",
            sources + _rel("csrc/cuda/*.cu"),
            include_dirs=include_dirs,
            define_macros=[("NLSEQ_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = CppExtension("nlseq._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="nlseq",
    version="0.1.0",
    description="Kernels for nonlinear sequence models: ParaRNN, softplus attention, analog crossbars",
    package_dir={"": "python"},
    packages=find_packages("python"),  # nlseq.kernels is python/nlseq/kernels -> kernels/
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton"],
        "bench": ["tqdm", "matplotlib"],
        "test": ["pytest", "pytest-benchmark", "expecttest"],
        "hf": ["transformers"],
    },
    entry_points={"console_scripts": ["nlseq-bench=nlseq.bench.__main__:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
