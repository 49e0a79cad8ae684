"""Build of nlseq: the Python package plus one compiled extension, nlseq._C.

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   (or a CUDA build)
    pip install --no-build-isolation .             (torch must already be installed)
    pip install --no-build-isolation -e .          (editable, what scripts/setup.sh does)
    python setup.py build_ext --inplace            (build in the source tree; use PYTHONPATH=python)

nlseq._C is compiled against the torch installed in the environment that builds it and only works
with that torch, so the build never installs a torch of its own: pyproject.toml does not list torch
in build-system.requires, and a build that cannot import torch (pip's default isolated build) stops
at once and says to install torch first and pass --no-build-isolation, as flash-attn and mamba do.
Building the sdist needs no torch.

nlseq._C always holds the C++ CPU kernels (csrc/cpu, csrc/torch). It also holds the CUDA kernels
(csrc/cuda, defines NLSEQ_WITH_CUDA) when torch is a CUDA build and nvcc is found, or when
NLSEQ_FORCE_CUDA=1. Environment variables:

    NLSEQ_SKIP_EXT=1     build nothing: a pure-Python install (triton and reference backends)
    NLSEQ_SKIP_CUDA=1    build the CPU kernels only
    NLSEQ_FORCE_CUDA=1   build the CUDA kernels even if this machine has no GPU (needs nvcc)
    NLSEQ_CUDA_ARCHS     semicolon-separated SM versions, default "80;90" (-gencode for each)
    NLSEQ_DEBUG=1        keep debug symbols (-g; nvcc -G is never used); release builds have none
    CUDA_HOME            the CUDA toolkit (else found from nvcc on PATH, through its real path)
    MAX_JOBS             parallel compile jobs (ninja)

The availability of a GPU is never consulted: a build machine without one builds the same
binary as one with it. The build writes nlseq/_C_build.json next to the extension: the torch it
was built against, which nlseq.registry compares with the running torch before loading _C.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext as _setuptools_build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = "_C_build.json"  # written next to nlseq/_C*.so; read by nlseq.registry


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _version() -> str:
    # Read as text: importing nlseq would import torch.
    m = re.search(r'^__version__ = "([^"]+)"$', _read("python/nlseq/_version.py"), re.M)
    if m is None:
        raise RuntimeError('python/nlseq/_version.py has no line __version__ = "..."')
    return m.group(1)


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


NO_TORCH_MESSAGE = """
nlseq: torch is not importable in this build environment{detail}.

nlseq's compiled extension (nlseq._C) is built against the torch that is already installed and
works only with that torch, so the build must see it: install torch first, then build without
pip's build isolation:

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu    # or your CUDA build
    pip install --no-build-isolation .            # or: pip install --no-build-isolation git+<url>

(For a pure-Python install without the cpp/cuda backends: NLSEQ_SKIP_EXT=1 pip install .)
"""


def _import_torch():
    """(torch, None) for the torch of the environment that runs the build, or (None, why not)."""
    try:
        import torch
    except ImportError as e:
        return None, f" ({e})"
    # A torch that pip installed into an isolated build environment (torch in build requirements,
    # PIP_BUILD_ISOLATION, ...) is not the torch the package will run with.
    if "pip-build-env-" in (torch.__file__ or ""):
        return None, f" (the torch found, {torch.__file__}, lives in pip's isolated build env)"
    return torch, None


def _cuda_home() -> str | None:
    """The CUDA toolkit: $CUDA_HOME, else the toolkit of the nvcc on PATH, else None.

    torch.utils.cpp_extension guesses CUDA_HOME as the parent of the folder of the first nvcc on
    PATH; a wrapper such as /usr/local/bin/nvcc then gives /usr/local, which has no CUDA headers.
    So: follow nvcc's real path (symbolic links), and if that folder still has no
    include/cuda_runtime_api.h, ask nvcc where it really lives (a wrapper script that execs it).
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc is not None:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            out = subprocess.run(
                [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                capture_output=True,
                text=True,
                timeout=60,
            ).stderr
            m = re.search(r"^#\$ _HERE_=(.+)$", out, re.M)
            if m:
                candidates.append(os.path.dirname(os.path.realpath(m.group(1).strip())))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return None


def _want_cuda(torch) -> bool:
    if _flag("NLSEQ_SKIP_CUDA"):
        return False
    if _flag("NLSEQ_FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and _cuda_home() is not None


def _gencode_flags() -> list[str]:
    archs = [a.strip().replace(".", "") for a in os.environ.get("NLSEQ_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def _torch_extension(torch):
    """The nlseq._C Extension against the importable torch (CPU kernels, plus CUDA when wanted)."""
    sources = _rel("csrc/cpu/*.cpp") + _rel("csrc/torch/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -fopenmp: at::parallel_for is OpenMP in torch's headers. -fno-math-errno and -fno-trapping-math
    # let loops with sqrtf and float selects vectorise; -ffp-contract=off keeps a * b + c two roundings
    # in every clone (csrc/cpu/simd.h). None of the three changes a result.
    # Python's own CFLAGS carry -g (a 21 MB _C instead of 1.4 MB): -g0, last, drops it unless
    # NLSEQ_DEBUG=1 asks for debug symbols.
    debug = ["-g"] if _flag("NLSEQ_DEBUG") else ["-g0"]
    cxx = [
        "-O3",
        "-fopenmp",
        "-Wall",
        "-Wno-unused-function",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-ffp-contract=off",
    ] + debug
    link = ["-fopenmp"] + ([] if _flag("NLSEQ_DEBUG") else ["-Wl,--strip-debug"])
    if _want_cuda(torch):
        if torch.version.cuda is None:
            raise RuntimeError("NLSEQ_FORCE_CUDA=1 needs a CUDA build of torch (torch.version.cuda is None)")
        from torch.utils.cpp_extension import CUDAExtension

        # Our explicit -gencode flags make torch skip its own arch guess (TORCH_CUDA_ARCH_LIST).
        # -lineinfo (line tables for profilers) is not debug info and costs little.
        nvcc = ["-O3", "--use_fast_math", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"] + _gencode_flags()
        return CUDAExtension(
            "nlseq._C",
            sources + _rel("csrc/cuda/*.cu"),
            include_dirs=include_dirs,
            define_macros=[("NLSEQ_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    from torch.utils.cpp_extension import CppExtension

    return CppExtension(
        "nlseq._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx}, extra_link_args=link
    )


def _build_info(torch, ext, path: str) -> dict:
    return {
        "nlseq": _version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": "NLSEQ_WITH_CUDA" in dict(ext.define_macros or []),
        "cxx11_abi": bool(torch.compiled_with_cxx11_abi()),
        "debug": _flag("NLSEQ_DEBUG"),
        "python": ".".join(map(str, sys.version_info[:3])),
        "extension": os.path.basename(path),
    }


class _NoTorchBuildExt(_setuptools_build_ext):
    """build_ext where torch cannot be imported: stop before compiling anything, with the fix."""

    def run(self):
        sys.exit(NO_TORCH_MESSAGE.format(detail=_NO_TORCH_DETAIL))


def _cmdclass_and_extensions():
    if _flag("NLSEQ_SKIP_EXT"):
        return {}, []
    global _NO_TORCH_DETAIL
    torch, _NO_TORCH_DETAIL = _import_torch()
    if torch is None:
        # Stop at the first step that can only lead to a wheel (pip's prepare_metadata_for_build_wheel
        # runs dist_info right after installing the build requirements), before anything is built.
        if any(cmd in sys.argv for cmd in _WHEEL_COMMANDS):
            sys.exit(NO_TORCH_MESSAGE.format(detail=_NO_TORCH_DETAIL))
        # The placeholder keeps the wheel platform-specific and makes build_ext run (and stop);
        # the sdist and its metadata (egg_info) need no torch.
        return {"build_ext": _NoTorchBuildExt}, [Extension("nlseq._C", sources=[])]
    wants_cuda_toolkit = torch.version.cuda is not None or _flag("NLSEQ_FORCE_CUDA")
    if wants_cuda_toolkit and not _flag("NLSEQ_SKIP_CUDA") and not os.environ.get("CUDA_HOME"):
        home = _cuda_home()
        if home is not None:
            os.environ["CUDA_HOME"] = home  # read when torch.utils.cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    class build_ext(BuildExtension):
        """torch's BuildExtension (ninja), which also records the torch _C was built against."""

        def build_extension(self, ext):
            super().build_extension(ext)
            path = self.get_ext_fullpath(ext.name)
            with open(os.path.join(os.path.dirname(path), BUILD_INFO), "w", encoding="utf-8") as f:
                json.dump(_build_info(torch, ext, path), f, indent=1, sort_keys=True)
                f.write("\n")

        def get_outputs(self):
            outs = super().get_outputs()
            return outs + [os.path.join(os.path.dirname(p), BUILD_INFO) for p in outs]

        # --inplace and editable installs build in build/ and copy the library into the source
        # tree; the record must travel with it.
        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
                src = os.path.join(os.path.dirname(regular_file), BUILD_INFO)
                if os.path.exists(src):
                    self.copy_file(src, os.path.join(os.path.dirname(inplace_file), BUILD_INFO), level=self.verbose)

        def _get_output_mapping(self):
            yield from super()._get_output_mapping()
            if self.inplace:
                build_py = self.get_finalized_command("build_py")
                for ext in self.extensions:
                    inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
                    yield (
                        os.path.join(os.path.dirname(regular_file), BUILD_INFO),
                        os.path.join(os.path.dirname(inplace_file), BUILD_INFO),
                    )

    return {"build_ext": build_ext.with_options(use_ninja=True)}, [_torch_extension(torch)]


_NO_TORCH_DETAIL = None
_WHEEL_COMMANDS = ("dist_info", "bdist_wheel", "editable_wheel", "build_ext", "build", "develop", "install")


def _install_requires() -> list[str]:
    # A wheel with nlseq._C works only with the torch it was compiled against: say so in its
    # Requires-Dist (torch==X.Y.Z matches X.Y.Z+cpu / +cu130). A pure-Python install works with any
    # torch >= 2.4. The sdist's metadata (no torch at hand) carries the loose bound; a wheel built
    # from it recomputes it.
    if not _flag("NLSEQ_SKIP_EXT") and any(
        c in sys.argv for c in ("bdist_wheel", "build_ext", "develop", "install", "editable_wheel", "dist_info")
    ):
        torch, _ = _import_torch()
        if torch is not None:
            return [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
    return ["torch>=2.4", "numpy"]


cmdclass, ext_modules = _cmdclass_and_extensions()

setup(
    name="nlseq",
    version=_version(),
    description="Kernels for nonlinear sequence models: ParaRNN, softplus attention (LSSA/LSSAR), "
    "analog crossbars with a nonlinear ADC",
    long_description=_read("README.md"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    url="https://github.com/nlseq/nlseq",
    project_urls={
        "Documentation": "https://github.com/nlseq/nlseq/blob/main/docs/index.md",
        "Changelog": "https://github.com/nlseq/nlseq/blob/main/CHANGELOG.md",
    },
    keywords=["pytorch", "kernels", "rnn", "attention", "parallel scan", "triton", "cuda", "analog computing"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Environment :: GPU :: NVIDIA CUDA",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    package_dir={"": "python"},
    packages=find_packages("python"),  # nlseq.kernels is python/nlseq/kernels -> kernels/
    package_data={"nlseq": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=_install_requires(),
    extras_require={
        "triton": ["triton"],
        "bench": ["tqdm", "matplotlib"],
        "test": ["pytest", "pytest-benchmark", "expecttest"],
        "hf": ["transformers"],
        "dev": ["ruff", "pre-commit", "build"],
    },
    entry_points={"console_scripts": ["nlseq-bench=nlseq.bench.__main__:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
