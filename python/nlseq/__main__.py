"""``python -m nlseq``: a report of this environment, to paste into a bug report.

Versions (nlseq, Python, torch, triton, CUDA, the C++ compiler), the torch nlseq._C was built
against, each backend's availability and why, and the environment variables nlseq reads.
``--json`` prints the same as one JSON object. Nothing here imports triton unless it is installed,
and nothing launches a kernel.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys

# Every environment variable nlseq reads (documented in README.md and docs/), in report order.
ENV_VARS = {
    "NLSEQ_BACKEND": "replaces backend='auto' for every op",
    "NLSEQ_SKIP_EXT": "do not load nlseq._C (cpp/cuda unavailable)",
    "NLSEQ_POISON": "NaN-fill output buffers before kernels write them",
    "NLSEQ_AUTOTUNE_FIRST": "Triton autotuning keeps the first config",
    "TRITON_INTERPRET": "run Triton kernels in the CPU interpreter",
    "CUDA_VISIBLE_DEVICES": "GPUs visible to torch",
    "OMP_NUM_THREADS": "CPU threads of the cpp backend",
    "CUDA_HOME": "CUDA toolkit used when building",
    "NLSEQ_SKIP_CUDA": "build: CPU kernels only",
    "NLSEQ_FORCE_CUDA": "build: CUDA kernels without a GPU",
    "NLSEQ_CUDA_ARCHS": "build: SM versions",
    "NLSEQ_DEBUG": "build: keep debug symbols",
    "MAX_JOBS": "build: parallel compile jobs",
}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _compiler() -> str | None:
    """First line of ``$CXX --version`` (the compiler a build would use), or None."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return None
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def _nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln for ln in out.splitlines() if "release" in ln]
    return lines[0].strip() if lines else None


def report() -> dict:
    """The environment report as a dict (what ``python -m nlseq --json`` prints)."""
    import torch

    import nlseq
    from nlseq import registry

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(f"{i}: {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)")
    info = registry.build_info()
    return {
        "nlseq": {"version": nlseq.__version__, "path": os.path.dirname(nlseq.__file__)},
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "cxx11_abi": bool(torch.compiled_with_cxx11_abi()),
            "threads": torch.get_num_threads(),
        },
        "triton": _dist_version("triton") if importlib.util.find_spec("triton") else None,
        "gpus": gpus,
        "compiler": _compiler(),
        "nvcc": _nvcc(),
        "extension": {
            "built_against": info,  # None: no record (built before records existed, or not built)
            "has_cuda_kernels": registry.extension_has_cuda(),
        },
        "backends": {
            name: {"available": s.available, "reason": s.reason, "fix": s.fix}
            for name, s in registry.backends().items()
        },
        "auto_order": {dev: list(order) for dev, order in registry.AUTO_ORDER.items()},
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "optional": {name: _dist_version(name) for name in ("numpy", "tqdm", "matplotlib", "transformers")},
    }


def format_report(r: dict) -> str:
    built = r["extension"]["built_against"]
    if built is None:
        built_line = "no build record (nlseq/_C_build.json): not built, or built before records existed"
    else:
        built_line = (
            f"built against torch {built.get('torch')}"
            + (f", CUDA {built['torch_cuda']}" if built.get("torch_cuda") else "")
            + f"; CUDA kernels: {'yes' if built.get('cuda_kernels') else 'no'}"
            + ("; debug symbols" if built.get("debug") else "")
        )
    t = r["torch"]
    lines = [
        f"nlseq {r['nlseq']['version']}  ({r['nlseq']['path']})",
        f"python        {r['python']}",
        f"platform      {r['platform']}",
        f"torch         {t['version']}  (CUDA {t['cuda'] or 'none'}, C++11 ABI {t['cxx11_abi']}, {t['threads']} threads)",
        f"triton        {r['triton'] or 'not installed'}",
        f"GPUs          {'; '.join(r['gpus']) if r['gpus'] else 'none visible to torch'}",
        f"compiler      {r['compiler'] or 'no C++ compiler on PATH'}",
        f"nvcc          {r['nvcc'] or 'not on PATH'}",
        f"nlseq._C      {built_line}",
        "",
        "backends (backend='auto' order: "
        + "; ".join(f"{dev}: {' > '.join(order)}" for dev, order in r["auto_order"].items())
        + ")",
    ]
    for name, s in r["backends"].items():
        if s["available"]:
            lines.append(f"  {name}: available ({s['reason']})")
        else:
            lines.append(f"  {name}: unavailable: {s['reason']}")
            lines.append(f"      fix: {s['fix']}")
    lines += ["", "environment variables read by nlseq"]
    for k, what in ENV_VARS.items():
        value = r["env"].get(k)
        lines.append(f"  {k:<22} {'(unset)' if value is None else repr(value):<12} {what}")
    lines += ["", "optional packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in r["optional"].items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m nlseq", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    r = report()
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
