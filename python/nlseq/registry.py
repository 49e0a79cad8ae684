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
import json
import logging
import os
import sys
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


_INTERPRET_ENV = "TRITON_INTERPRET"
_interpret_at_load: bool | None = None  # the mode nlseq's Triton kernels were loaded in


def _interpret_env() -> bool:
    return os.environ.get(_INTERPRET_ENV, "0") not in ("", "0")


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1).

    Triton fixes the mode of a kernel when its ``@triton.jit`` runs, that is when nlseq.kernels is
    first imported (on the first Triton call, not by ``import nlseq``). Changing TRITON_INTERPRET
    after that would leave the kernels in the old mode and fail inside Triton, so it raises here,
    naming the variable and the fix.
    """
    global _interpret_at_load
    now = _interpret_env()
    if _interpret_at_load is None:
        if "nlseq.kernels" in sys.modules:
            _interpret_at_load = now
        return now
    if now != _interpret_at_load:
        was, is_ = ("1" if _interpret_at_load else "0"), ("1" if now else "0")
        raise RuntimeError(
            f"nlseq: {_INTERPRET_ENV} changed from {was} to {is_} after nlseq's Triton kernels were loaded "
            f"(they run {'in the CPU interpreter' if _interpret_at_load else 'compiled for the GPU'} for the rest of "
            f"this process). Set {_INTERPRET_ENV} before the first Triton call, e.g. in the shell or at the top of the "
            f"script, and start a new process."
        )
    return now


# The torch nlseq._C was compiled against, as setup.py's build_ext recorded it next to the library.
BUILD_INFO = "_C_build.json"


@functools.lru_cache(maxsize=None)
def build_info() -> dict | None:
    """What setup.py recorded when it built nlseq._C (torch version, CUDA, debug, ...), or None
    when no record is there (an extension built before records existed, or none built)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BUILD_INFO)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_REBUILD_FIX = (
    "rebuild nlseq against the installed torch: `pip install --no-build-isolation --no-deps --force-reinstall .` "
    "from the source tree (editable installs: `pip install --no-build-isolation -e .`), "
    "or reinstall the torch it was built against"
)


def _torch_mismatch() -> str:
    """Why nlseq._C must not be loaded into this torch, or "" when it may.

    A compiled extension is bound to the torch (C++ ABI, operator schemas) it was built against;
    loading it into another fails on missing symbols at best and corrupts memory at worst, so the
    recorded version is compared before importing it.
    """
    info = build_info()
    if info is None or "torch" not in info:
        return ""
    if info["torch"] != torch.__version__:
        return f"nlseq._C was built against torch {info['torch']}, but torch {torch.__version__} is installed"
    return ""


@functools.lru_cache(maxsize=None)
def _load_extension():
    """(module nlseq._C or None, why not, the fix)."""
    if os.environ.get("NLSEQ_SKIP_EXT", "0") not in ("", "0"):
        return None, "NLSEQ_SKIP_EXT is set, so the compiled extension is not loaded", "unset NLSEQ_SKIP_EXT"
    mismatch = _torch_mismatch()
    if mismatch:
        return None, mismatch, _REBUILD_FIX
    try:
        return importlib.import_module("nlseq._C"), "", ""
    except ImportError as e:  # the reason is reported through backends(), not hidden
        return None, f"the compiled extension nlseq._C did not import ({e})", _BUILD_FIX


def _extension():
    """The compiled extension module nlseq._C, or None and why not as a string."""
    return _load_extension()[:2]


def extension_has_cuda() -> bool:
    """True when nlseq._C was built with CUDA kernels (NLSEQ_WITH_CUDA)."""
    ext = _extension()[0]
    return ext is not None and torch._C._dispatch_has_kernel_for_dispatch_key("nlseq_ext::scan_fwd", "CUDA")


_BUILD_FIX = "build it with `pip install --no-build-isolation -e .` (see README, Install)"


@functools.lru_cache(maxsize=None)
def _status_cpp() -> BackendStatus:
    ext, err, fix = _load_extension()
    if ext is None:
        return BackendStatus("cpp", False, err, fix)
    return BackendStatus("cpp", True, "compiled C++ CPU kernels")


@functools.lru_cache(maxsize=None)
def _status_cuda() -> BackendStatus:
    ext, err, fix = _load_extension()
    if ext is None:
        if fix == _BUILD_FIX:
            fix += " on a machine with nvcc and a CUDA build of torch"
        return BackendStatus("cuda", False, err, fix)
    if not extension_has_cuda():
        return BackendStatus(
            "cuda",
            False,
            "nlseq._C was built without CUDA kernels",
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
            "triton",
            False,
            "no CUDA device is visible to torch",
            "run on a machine with a GPU, or set TRITON_INTERPRET=1 before importing nlseq to interpret on the CPU",
        )
    return BackendStatus("triton", True, f"Triton kernels on {torch.cuda.get_device_name()}")


def backend_status(name: str) -> BackendStatus:
    """The status of one backend ("cuda", "triton", "cpp" or "reference") in this process."""
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


def assume_constant_result(fn):
    """What ``torch.compiler.assume_constant_result`` does, without importing torch._dynamo.

    The public decorator imports torch._dynamo (about 1 s, and triton with it) only to set this
    one attribute; doing it here keeps ``import nlseq`` cheap. tests/test_package.py checks that
    the public decorator still marks a function exactly this way, so a torch that changes the
    mechanism fails a test instead of silently recompiling on every call.
    """
    fn._dynamo_marked_constant = True
    return fn


# Under torch.compile the choice is made once, eagerly, and baked into the graph as a constant.
@assume_constant_result
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
        raise RuntimeError(
            f"nlseq.{op}: backend {backend!r}{source} is unavailable: {status.reason}. Fix: {status.fix}"
        )
    if not _runs_on(backend, device):
        where = {
            "cpp": "CPU tensors",
            "cuda": "CUDA tensors",
            "triton": "CUDA tensors (CPU tensors only with TRITON_INTERPRET=1)",
        }[backend]
        raise RuntimeError(
            f"nlseq.{op}: backend {backend!r}{source} runs on {where}, but the inputs are on {device}. "
            f"Move the inputs, or use backend='auto'."
        )
    log.debug("nlseq.%s: running backend %r on %s", op, backend, device)
    return backend
