"""Test setup shared by every test file.

- Triton runs in its CPU interpreter unless a GPU is present: TRITON_INTERPRET must be set
  before triton (or nlseq.kernels) is imported, so it is set here, at collection time.
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
