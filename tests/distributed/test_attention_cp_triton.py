"""The ring strategy of nlseq.distributed.softplus_attention on the Triton backend (its key-block
kernels kernels/softplus_attention_partial.py, interpreted on CPU: tests/conftest.py) over two gloo
ranks, against the single-process op on Triton, float32. The case runner, tolerances (float32:
relative 1e-5) and collective counts are those of test_attention_cp.py."""

from __future__ import annotations

import pytest
import torch
from test_attention_cp import _check

from nlseq import registry

pytestmark = pytest.mark.skipif(not registry.backend_status("triton"), reason="triton is not installed")


def test_two_ranks_ring_on_triton():
    P = 2
    base = dict(strategy="ring", H=4, Hkv=2, dtype=torch.float32, backend="triton")
    cases = [
        dict(base, name="ring/triton/causal/zigzag/LSSA", T=9, layout="zigzag", p=None),
        dict(base, name="ring/triton/causal/zigzag/p=15", T=9, layout="zigzag", p=15.0),
        dict(base, name="ring/triton/full/contiguous/p=2", T=7, causal=False, p=2.0),
        dict(base, name="ring/triton/MQA/uneven/p=1", T=8, Hkv=1, split=[3, 5], p=1.0),
        dict(base, name="ring/triton/varlen/p=15", T=8, cu=[0, 1, 3, 5, 8], p=15.0),
    ]
    _check(P, cases, [])


def _float64_on_triton(rank, P):
    from nlseq.distributed import softplus_attention as cp_attention

    q = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    try:
        cp_attention(q, q, q, strategy="ring", backend="triton")
    except TypeError as e:
        return [] if "backend 'triton' accepts float32" in str(e) else [f"rank {rank}: {e}"]
    return [f"rank {rank}: float64 on the triton ring did not raise"]


def test_float64_on_the_triton_ring_is_refused_on_every_rank():
    from _harness import run_ranks

    failures = [f for r in run_ranks(_float64_on_triton, 2, timeout=120.0) for f in r]
    assert not failures, "\n".join(failures)
