"""Backend registry: which implementations exist, which are usable, and which one runs.

Four backends, one name each in every layer:

    cuda       compiled CUDA kernels (csrc/cuda), CUDA tensors
    triton     Triton kernels (kernels/), CUDA tensors, or CPU tensors under TRITON_INTERPRET=1
    cpp        compiled C++ CPU kernels (csrc/cpu), CPU tensors
    reference  PyTorch (python/nlseq/reference), any device; the definition of correct

``backend="auto"`` picks, for the device of the inputs, the first usable backend in
``AUTO_ORDER[device type]`` that the op implements. The environment variable ``NLSEQ_BACKEND``
replaces the automatic choice (an explicit ``backend=`` argument still wins). Asking for a
backend that cannot run raises ``RuntimeError`` saying why and how to fix it; nothing falls back
silently. The chosen backend is logged at debug level on the ``nlseq`` logger.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("nlseq")

BACKENDS = ("cuda", "triton", "cpp", "reference")

# Explicit selection order for backend="auto", per device type. The Triton interpreter is never
# chosen automatically on the CPU: it is a correctness tool, orders of magnitude slower.
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run in this process, and if not, why and how to fix it."""

    name: str
    available: bool
    reason: str  # what it is when available; why not when unavailable
    fix: str = ""

    def __bool__(self) -> bool:
        return self.available

    def __str__(self) -> str:
        if self.available:
            return f"{self.name}: available ({self.reason})"
        return f"{self.name}: unavailable: {self.reason}. Fix: {self.fix}"


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _extension():
    """The compiled extension module nlseq._C, or the import error as a string."""
    if os.environ.get("NLSEQ_SKIP_EXT", "0") not in ("", "0"):
        return None, "NLSEQ_SKIP_EXT is set, so the compiled extension is not loaded"
    try:
        return importlib.import_module("nlseq._C"), ""
    except ImportError as e:  # the reason is reported through backends(), not hidden
        return None, f"the compiled extension nlseq._C did not import ({e})"


def extension_has_cuda() -> bool:
    """True when nlseq._C was built with CUDA kernels (NLSEQ_WITH_CUDA)."""
    ext, _ = _extension()
    return ext is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "nlseq_ext::scan_fwd", "CUDA"
    )


_BUILD_FIX = "build it with `pip install --no-build-isolation -e .` (see README, Install)"


@functools.lru_cache(maxsize=None)
def _status_cpp() -> BackendStatus:
    ext, err = _extension()
    if ext is None:
        return BackendStatus("cpp", False, err, _BUILD_FIX)
    return BackendStatus("cpp", True, "compiled C++ CPU kernels")


@functools.lru_cache(maxsize=None)
def _status_cuda() -> BackendStatus:
    ext, err = _extension()
    if ext is None:
        return BackendStatus("cuda", False, err, _BUILD_FIX + " on a machine with nvcc and a CUDA build of torch")
    if not extension_has_cuda():
        return BackendStatus(
            "cuda", False, "nlseq._C was built without CUDA kernels",
            "rebuild with a CUDA build of torch and nvcc on PATH (or NLSEQ_FORCE_CUDA=1, CUDA_HOME set)",
        )
    if not torch.cuda.is_available():
        return BackendStatus("cuda", False, "no CUDA device is visible to torch", "run on a machine with an NVIDIA GPU")
    return BackendStatus("cuda", True, f"CUDA kernels on {torch.cuda.get_device_name()}")


@functools.lru_cache(maxsize=None)
def _status_triton(interpret: bool) -> BackendStatus:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return BackendStatus("triton", False, f"triton is not installed ({e})", "pip install triton")
    if interpret:
        return BackendStatus("triton", True, "Triton interpreter on the CPU (TRITON_INTERPRET=1)")
    if not torch.cuda.is_available():
        return BackendStatus(
            "triton", False, "no CUDA device is visible to torch",
            "run on a machine with a GPU, or set TRITON_INTERPRET=1 before importing nlseq to interpret on the CPU",
        )
    return BackendStatus("triton", True, f"Triton kernels on {torch.cuda.get_device_name()}")


def backend_status(name: str) -> BackendStatus:
    if name == "cuda":
        return _status_cuda()
    if name == "triton":
        return _status_triton(triton_interpret())
    if name == "cpp":
        return _status_cpp()
    if name == "reference":
        return BackendStatus("reference", True, "PyTorch reference")
    raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")


def backends() -> dict[str, BackendStatus]:
    """Every backend name mapped to its status in this process (available or why not)."""
    return {name: backend_status(name) for name in BACKENDS}


# Device types each backend accepts; triton accepts CPU tensors only in the interpreter.
def _runs_on(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpp":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpret())
    return False


# Under torch.compile the choice is made once, eagerly, and baked into the graph as a constant.
@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device, op: str, implemented: tuple[str, ...] = BACKENDS) -> str:
    """Turn ``backend`` ("auto" or a name) into the name of a backend that can run ``op`` here.

    ``implemented`` lists the backends that ``op`` has. Raises RuntimeError with the reason and
    the fix when the request cannot be served.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    source = ""
    if backend == "auto":
        env = os.environ.get("NLSEQ_BACKEND", "").strip()
        if env and env != "auto":
            backend, source = env, " (from NLSEQ_BACKEND)"
    if backend == "auto":
        order = AUTO_ORDER.get(device.type, ("reference",))
        for name in order:
            if name in implemented and backend_status(name) and _runs_on(name, device):
                log.debug("nlseq.%s: backend=auto chose %r on %s", op, name, device)
                return name
        raise RuntimeError(f"nlseq.{op}: no backend can run on device {device}")  # reference always can
    if backend not in BACKENDS:
        raise ValueError(f"nlseq.{op}: backend must be one of {BACKENDS + ('auto',)}, got {backend!r}{source}")
    if backend not in implemented:
        raise RuntimeError(
            f"nlseq.{op}: backend {backend!r}{source} is not implemented for this op; "
            f"it has {', '.join(implemented)}. Use backend='auto' or one of those."
        )
    status = backend_status(backend)
    if not status:
        raise RuntimeError(f"nlseq.{op}: backend {backend!r}{source} is unavailable: {status.reason}. Fix: {status.fix}")
    if not _runs_on(backend, device):
        where = {"cpp": "CPU tensors", "cuda": "CUDA tensors",
                 "triton": "CUDA tensors (CPU tensors only with TRITON_INTERPRET=1)"}[backend]
        raise RuntimeError(
            f"nlseq.{op}: backend {backend!r}{source} runs on {where}, but the inputs are on {device}. "
            f"Move the inputs, or use backend='auto'."
        )
    log.debug("nlseq.%s: running backend %r on %s", op, backend, device)
    return backend
