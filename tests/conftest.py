"""Test setup shared by every test file.

- Triton runs in its CPU interpreter unless a GPU is present: TRITON_INTERPRET must be set
  before triton (or nlseq.kernels) is imported, so it is set here, at collection time.
- The fast loop is ``pytest -m "not slow"``: the hook below marks ``slow`` every test that runs
  Triton kernels in the CPU interpreter (a ``triton`` parameter without a GPU, or a module of
  SLOW_MODULES), compiles CUDA sources for the CPU stand-in, compiles Triton kernels for sm_90,
  starts distributed ranks (calls ``run_ranks``), or takes a sequence parameter T >= LONG_T;
  mark any other test that takes seconds with ``@pytest.mark.slow``. CI runs everything.
- Outputs are NaN-poisoned: NLSEQ_POISON=1 makes the compiled kernels' output buffers NaN before
  they are written, and torch.empty / torch.empty_like are patched to do the same for the Python
  and Triton launchers, so a kernel that skips an element fails loudly.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("NLSEQ_POISON", "1")

_empty, _empty_like = torch.empty, torch.empty_like

# Whole modules that are slow on a CPU-only machine: the Triton interpreter, the CUDA emulation
# (g++ builds of the .cu sources) and ahead-of-time Triton compiles for sm_90.
SLOW_MODULES = {
    "test_scan_triton.py",  # Triton interpreter
    "test_pararnn_fused.py",  # Triton interpreter
    "test_triton_sm90.py",  # Triton AOT compiles
    "test_cuda_emulation.py",  # CUDA kernels built with g++ and run on the CPU
    "test_pararnn_cuda_emulated.py",  # same
    "test_softplus_attention_partial_triton.py",  # Triton interpreter and sm_90 compiles
    "test_analog_triton_sm90.py",  # Triton AOT compiles
    "test_sass_report.py",  # sm_90 compiles of every kernel and config
    "test_pararnn_host_sync.py",  # Triton interpreter
    "test_gpu_check.py",  # the GPU check's dry run: several phases in their own processes
    "test_compile_modules.py",  # torch.compile (dynamo + AOTAutograd) of every module
    "test_experiments.py",  # the experiments' smoke runs, each in its own process
}


def _runs_triton_interpreter(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return (
        callspec is not None
        and not torch.cuda.is_available()
        and any(v == "triton" for v in callspec.params.values() if isinstance(v, str))
    )


def _spawns_ranks(item) -> bool:
    # tests/distributed: a test that calls run_ranks starts one process per rank, each importing
    # torch (seconds per test).
    code = getattr(getattr(item, "obj", None), "__code__", None)
    return code is not None and "run_ranks" in code.co_names


# Sequences this long make the float64 oracles (Python loops over t, autograd through them) take
# seconds per case; the short cases of the same tests stay in the fast loop.
LONG_T = 1000


def _long_sequence(item) -> bool:
    callspec = getattr(item, "callspec", None)
    T = callspec.params.get("T") if callspec is not None else None
    return isinstance(T, int) and T >= LONG_T


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (
            item.path.name in SLOW_MODULES
            or item.path.parent.name == "distributed"  # tests/distributed: spawned ranks (module-level spawns too)
            or _runs_triton_interpreter(item)
            or _spawns_ranks(item)
            or _long_sequence(item)
        ):
            item.add_marker(pytest.mark.slow)


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() and t.numel() > 0 and not isinstance(t, torch._subclasses.FakeTensor):
        t.fill_(float("nan"))
    return t


def _poisoned_empty(*args, **kwargs):
    return _poison(_empty(*args, **kwargs))


def _poisoned_empty_like(*args, **kwargs):
    return _poison(_empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def _nan_poison(monkeypatch):
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    yield


@pytest.fixture
def cpu_threads(request):
    """Run the test with ``request.param`` intra-op threads (the cpp kernel picks its work split,
    channel blocks or time chunks, from the thread count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)
