"""The analog Triton kernel on a GPU: codes bit-identical to the cpp kernel (IEEE div/sqrt, no FMA
contraction: kernels/analog.py) and int64 offsets past M·N = 2^31."""

from __future__ import annotations

import pytest
import torch

import nlseq

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)


def _problem(M, K, N, L=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 9, (M, K), generator=g).float() / 4  # small dyadic values: an exact GEMM
    w = torch.randint(-4, 5, (N, K), generator=g).float() / 8
    cs = torch.ones(N)
    thr = torch.linspace(-6, 6, L - 1).expand(N, L - 1).contiguous()
    lev = torch.linspace(-1, 1, L).expand(N, L).contiguous()
    return x, w, cs, thr, lev


def test_in_kernel_noise_codes_match_cpp_bit_for_bit():
    x, w, cs, thr, lev = _problem(192, 40, 320)
    # in_bits = 0 (clamp only, x_max above every x): dyadic x and w, so the GEMM is exact in any order
    kw = dict(in_bits=0, x_max=4.0, noise_a=0.25, noise_b=0.5, seed=0x5EADBEEFCAFEBABE, offset=7)
    y_cpp = nlseq.analog_mvm(x, w, cs, thr, lev, backend="cpp", **kw)
    y_tri = nlseq.analog_mvm(*(t.cuda() for t in (x, w, cs, thr, lev)), backend="triton", **kw).cpu()
    assert torch.equal(y_tri, y_cpp), f"{(y_tri != y_cpp).sum().item()} codes differ"


def test_int64_offsets_past_2_31():
    M, K, N = 131075, 8, 16385  # M·N = 2,147,713,875 > 2^31
    if torch.cuda.get_device_properties(0).total_memory < 12 * 2**30:
        pytest.skip("needs ~9 GB of GPU memory")
    x, w, cs, thr, lev = _problem(M, K, N, L=16)
    y = nlseq.analog_mvm(
        *(t.cuda() for t in (x, w, cs, thr, lev)),
        in_bits=0,
        x_max=4.0,
        noise_a=0.0,
        noise_b=0.0,
        seed=0,
        offset=0,
        backend="triton",
    )
    rows = torch.tensor([0, M // 2, M - 2, M - 1])  # the last rows lie past 2^31 elements
    y_cpp = nlseq.analog_mvm(
        x[rows], w, cs, thr, lev, in_bits=0, x_max=4.0, noise_a=0.0, noise_b=0.0, seed=0, offset=0, backend="cpp"
    )
    assert torch.equal(y[rows.cuda()].cpu(), y_cpp)
