"""Helpers shared by the test files (imported as `_utils`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import pytest
import torch

import nlseq

DTYPE_IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def backend_params(*names: str):
    """pytest params for backends, each skipped with its reason when it cannot run here."""
    status = nlseq.backends()
    return [
        pytest.param(name, id=name, marks=[] if status[name] else [pytest.mark.skip(reason=str(status[name]))])
        for name in names
    ]


def device_for(backend: str) -> torch.device:
    """The device a backend's inputs live on in this process (triton: CPU when interpreted)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def assert_close_to_oracle(actual: torch.Tensor, oracle: torch.Tensor, *, atol: float, rtol: float, what: str):
    """|actual - oracle| <= atol + rtol |oracle| elementwise (oracle in float64), no NaN allowed."""
    a = actual.detach().double().cpu()
    o = oracle.detach().double().cpu()
    assert a.shape == o.shape, f"{what}: shape {tuple(a.shape)} != oracle {tuple(o.shape)}"
    assert not torch.isnan(a).any(), f"{what}: NaN in output (an element was not written?)"
    err = (a - o).abs()
    bound = atol + rtol * o.abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"{what}: max error {err.max().item():.3e} exceeds atol={atol:g} + rtol={rtol:g}·|oracle| "
        f"at flat index {worst.item()} (got {a.flatten()[worst].item():.6g}, oracle {o.flatten()[worst].item():.6g})"
    )
