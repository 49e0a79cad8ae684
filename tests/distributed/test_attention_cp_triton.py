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
