"""Triton-specific paths of nlseq.linear_recurrence (kernels/scan.py), against the float64 oracle.

tests/test_scan.py runs the triton backend through its default config: on a GPU the autotuned
configs, under TRITON_INTERPRET=1 the single interpreter config (tiles scanned with DOT_SCAN).
Here the launchers are called with explicit meta-parameters and chunk lengths, so that the paths
the GPU configs take (tl.associative_scan tiles for K = 1, one step per iteration for K > 1)
also run on the CPU, on small shapes, together with chunk boundaries that do not fall on tile
boundaries, several channel blocks, and one chunk per step.
"""

from __future__ import annotations

import pytest
import torch

from _utils import assert_close_to_oracle, backend_params, device_for
from nlseq.reference.scan import linear_recurrence_backward, linear_recurrence_loop

pytestmark = backend_params("triton")[0].marks

# float32 against float64: a few ulps of accumulated rounding per step on O(1) states
TOL = dict(atol=2e-5, rtol=2e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)

# (id, K, meta): the meta-parameters of one kernel path
PATHS = [
    ("diag-assoc-BT8", 1, {"BT": 8, "BN": 8, "DOT_SCAN": False}),  # the GPU configs' K = 1 path
    ("diag-step", 1, {"BT": 1, "BN": 8, "DOT_SCAN": False}),
    ("diag-dot-BT16", 1, {"BT": 16, "BN": 4, "DOT_SCAN": True}),  # the interpreter config's path
    ("K2-step", 2, {"BT": 1, "BN": 4, "DOT_SCAN": False}),  # the GPU configs' K > 1 path
    ("K3-step", 3, {"BT": 1, "BN": 4, "DOT_SCAN": False}),
    ("K4-step", 4, {"BT": 1, "BN": 8, "DOT_SCAN": False}),
    ("K3-dot-BT8", 3, {"BT": 8, "BN": 4, "DOT_SCAN": True}),
]
# (reverse, with_h0)
DIRECTIONS = [(False, True), (True, False), (False, False), (True, True)]


def _inputs(B, T, N, K, with_h0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = (torch.rand(B, T, N, K, K, generator=g, dtype=torch.float64) * 2 - 1) * (0.95 / K)
    b = torch.randn(B, T, N, K, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, N, K, generator=g, dtype=torch.float64) if with_h0 else None
    dev = device_for("triton")
    cast = lambda x: None if x is None else x.to(dtype).to(dev)  # noqa: E731
    return cast(A), cast(b), cast(h0)


def _check(K, meta, chunk, reverse, with_h0, B=2, T=23, N=11):
    from nlseq.kernels import scan as tk

    A, b, h0 = _inputs(B, T, N, K, with_h0)
    h, h_last = tk.linear_recurrence_fwd(A, b, h0, reverse, chunk=chunk, meta=meta)
    A64, b64 = A.double().cpu(), b.double().cpu()
    h064 = torch.zeros(B, N, K, dtype=torch.float64) if h0 is None else h0.double().cpu()
    h_ref, last_ref = linear_recurrence_loop(A64, b64, h064, reverse)
    assert_close_to_oracle(h, h_ref, **TOL, what="h")
    assert_close_to_oracle(h_last, last_ref, **TOL, what="h_last")

    g = torch.Generator().manual_seed(1)
    gh = torch.randn(h.shape, generator=g).to(h.device)
    gl = torch.randn(h_last.shape, generator=g).to(h.device)
    dA, db, dh0 = tk.linear_recurrence_bwd(A, h, h0, gh, gl, reverse, chunk=chunk, meta=meta)
    # with h0 = None the kernel still returns dh0 = A_firstᵀ λ_first: the oracle's dh0 for h0 = 0
    rA, rb, rh0 = linear_recurrence_backward(
        A64,
        h_ref,
        h064,
        gh.double().cpu(),
        gl.double().cpu(),
        reverse,
        scan_fn=lambda A, b, h0, rev: linear_recurrence_loop(A, b, h0, rev),
    )
    assert_close_to_oracle(dA, rA, **GRAD_TOL, what="dA")
    assert_close_to_oracle(db, rb, **GRAD_TOL, what="db")
    assert_close_to_oracle(dh0, rh0, **GRAD_TOL, what="dh0")


@pytest.mark.parametrize("reverse,with_h0", DIRECTIONS, ids=["fwd-h0", "rev", "fwd", "rev-h0"])
@pytest.mark.parametrize("chunk", [None, 7], ids=["one-chunk", "chunk7"])
@pytest.mark.parametrize("K,meta", [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_kernel_paths(K, meta, chunk, reverse, with_h0):
    # T = 23 is prime; chunk 7 cuts it into 4 chunks (the last one short), off the tile grid of
    # BT = 8 and 16; N = 11 spans 2-3 channel blocks.
    _check(K, meta, chunk, reverse, with_h0)


@pytest.mark.parametrize("K,meta", [PATHS[0][1:], PATHS[3][1:]], ids=[PATHS[0][0], PATHS[3][0]])
def test_one_step_per_chunk(K, meta):
    # NC = T: every chunk summary is one step, the combine walks all of them
    _check(K, meta, 1, False, True, T=9, N=5)
    _check(K, meta, 1, True, True, T=9, N=5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_assoc_path(dtype):
    # outputs are rounded once from the float32 state: half an ulp of the output dtype
    from nlseq.kernels import scan as tk

    A, b, h0 = _inputs(2, 40, 9, 1, True, dtype=dtype)
    h, h_last = tk.linear_recurrence_fwd(A, b, h0, False, chunk=13, meta=PATHS[0][2])
    h_ref, last_ref = linear_recurrence_loop(A.double().cpu(), b.double().cpu(), h0.double().cpu(), False)
    rtol = 2**-8 if dtype == torch.bfloat16 else 2**-10
    assert h.dtype == dtype and h_last.dtype == dtype
    assert_close_to_oracle(h, h_ref, atol=1e-3, rtol=rtol, what="h")
    assert_close_to_oracle(h_last, last_ref, atol=1e-3, rtol=rtol, what="h_last")


def test_interpreter_has_one_config():
    from nlseq import registry
    from nlseq.kernels import scan as tk

    if not registry.triton_interpret():
        pytest.skip("autotuning with several configs is the GPU behaviour")
    assert len(tk._diag_chunk_kernel.configs) == 1
    assert len(tk._block_chunk_kernel.configs) == 1


def test_chunk_length_heuristic(monkeypatch):
    # the launcher's choice of chunk length, with the GPU rule (132 SMs, as on an H200): a single
    # pass only with at least 4 programs per SM (528) at the narrowest block width (32 for K = 1)
    from nlseq.kernels import scan as tk

    monkeypatch.setattr(tk, "_INTERPRET", False)
    monkeypatch.setattr(tk, "_num_sms", lambda index: 132)
    dev = torch.device("cuda", 0)
    assert tk._PROGRAMS_PER_SM == 4
    # B·N fills a wave: one chunk, a single pass (64·32 = 2048 and 32·32 = 1024 programs >= 528)
    assert tk._chunk_length(64, 2048, 1024, 1, dev) == 2048
    assert tk._chunk_length(32, 4096, 1024, 1, dev) == 4096
    # 16×512 gives 256 programs, under one wave: 3..6 chunks are the candidates, 4 fills 1024 of
    # 1056 slots (two whole waves, 97 %), 3 only 768 (73 %): 4 chunks of 1024 steps
    assert tk._chunk_length(16, 4096, 512, 1, dev) == 1024
    # the SM count is the device's: on a 16-SM part the same call fills a wave in one pass
    monkeypatch.setattr(tk, "_num_sms", lambda index: 16)
    assert tk._chunk_length(16, 4096, 512, 1, dev) == 4096
    monkeypatch.setattr(tk, "_num_sms", lambda index: 132)
    # few channels, long T: several chunks of whole tiles, each at least min_chunk long, and at
    # least one wave of programs
    L = tk._chunk_length(2, 65536, 256, 1, dev)
    nc = -(-65536 // L)
    assert L % 128 == 0 and 512 <= L < 65536 and 2 * 8 * nc >= 528
    # short T is never split below min_chunk
    assert tk._chunk_length(1, 300, 4, 1, dev) == 300
    # K > 1: narrowest block 16 channels, chunks of at least 128 steps; 4·4 programs would want
    # 33 chunks, min_chunk caps them at 16
    assert tk._chunk_length(4, 2048, 64, 3, dev) == 128
    L = tk._chunk_length(4, 65536, 64, 3, dev)
    assert L % 128 == 0 and L >= 128 and 4 * 4 * (-(-65536 // L)) >= 528


def test_default_sm_count_off_gpu():
    # under the interpreter (and on a CPU tensor) the rule uses the documented default
    from nlseq.kernels import scan as tk

    assert tk._sm_count(torch.device("cpu")) == tk._DEFAULT_SMS == 132


def _named(B, T, N, L, dtype=torch.float32):
    return {"X": torch.zeros(B, 1, 1, 1, dtype=dtype), "N": N, "T": T, "L": L}


def test_prune_keeps_whole_waves():
    # early_config_prune of both chunk kernels, on the GPU config lists (wave = 4 · 132 = 528)
    import triton

    from nlseq.kernels import scan as tk

    configs = [triton.Config({"BT": BT, "BN": BN}, num_warps=w) for BT, BN, w in tk._DIAG_GPU]
    # B·N = 64·1024: BN 64 -> 1024 programs (97 %), 128 -> 512 (< one wave), 32 -> 2048 (97 %)
    kept = tk._prune_configs(configs, _named(64, 2048, 1024, 2048))
    assert {c.kwargs["BN"] for c in kept} == {32, 64}
    # B·N = 8·1024 in 4 chunks: BN 32 -> 1024 programs, 64 -> 512 (< wave), 128 -> 256
    kept = tk._prune_configs(configs, _named(8, 4096, 1024, 1024))
    assert {c.kwargs["BN"] for c in kept} == {32}
    # nothing fills a wave: the narrowest blocks (most programs) are kept
    kept = tk._prune_configs(configs, _named(1, 512, 64, 512))
    assert {c.kwargs["BN"] for c in kept} == {32} and len(kept) == 1
    # 132·4·128 channels: every width gives whole waves, all configs stay
    assert len(tk._prune_configs(configs, _named(4, 512, 132 * 128, 512))) == len(configs)
    # K > 1 configs prune the same way
    bconfigs = [triton.Config({"BT": 1, "BN": BN}, num_warps=w, num_stages=s) for BN, w, s in tk._BLOCK_GPU]
    kept = tk._prune_configs(bconfigs, _named(1, 256, 100, 128))
    assert {c.kwargs["BN"] for c in kept} == {16}


def test_wave_efficiency_and_buckets():
    from nlseq.kernels import scan as tk

    assert tk._wave_efficiency(528, 528) == 1.0
    assert tk._wave_efficiency(529, 528) == pytest.approx(529 / 1056)
    assert [tk._bucket(x) for x in (0, 1, 2, 3, 4, 5, 1024, 1025)] == [0, 0, 1, 2, 2, 3, 10, 11]


def test_autotune_key_and_prune_are_wired():
    # the autotuner of both kernels keys on the B·N and T buckets and prunes with the wave rule
    from nlseq.kernels import scan as tk

    for kernel in (tk._diag_chunk_kernel, tk._block_chunk_kernel):
        assert list(kernel.keys) == ["N", "K", "BWD", "SUMMARY", "LOG2_BXN", "LOG2_T"]
        assert kernel.early_config_prune is tk._prune_configs
        assert {"LOG2_BXN", "LOG2_T"} <= set(kernel.arg_names)


def test_autotune_first_keeps_the_first_gpu_config(monkeypatch):
    # NLSEQ_AUTOTUNE_FIRST=1 (kernels/_autotune.py) keeps only the first config of each GPU list
    from nlseq.kernels import scan as tk

    monkeypatch.setattr(tk, "_INTERPRET", False)
    monkeypatch.delenv("NLSEQ_AUTOTUNE_FIRST", raising=False)
    full_d, full_b = tk._diag_configs(), tk._block_configs()
    assert len(full_d) == len(tk._DIAG_GPU) and len(full_b) == len(tk._BLOCK_GPU)
    monkeypatch.setenv("NLSEQ_AUTOTUNE_FIRST", "1")
    first_d, first_b = tk._diag_configs(), tk._block_configs()
    assert [c.kwargs for c in first_d] == [full_d[0].kwargs]
    assert [c.kwargs for c in first_b] == [full_b[0].kwargs]
    monkeypatch.setenv("NLSEQ_AUTOTUNE_FIRST", "0")
    assert len(tk._diag_configs()) == len(full_d)


_AOT_SCRIPT = r"""
from nlseq.kernels import scan as tk

def compile_one(kernel, dtype, consts, num_warps, num_stages):
    ptrs = {n: dtype for n in ("A", "X", "S0", "H", "FIN", "HF", "H0", "DA")}
    ptrs.update({n: "fp32" for n in ("SIN", "AS", "XS")})
    compile_kernel(kernel, ptrs, consts, num_warps, num_stages)

cfg = tk._diag_configs()[0]
for rev, bwd, summ in [(False, False, False), (True, True, False), (False, True, True)]:
    consts = dict(K=1, REV=rev, BWD=bwd, SUMMARY=summ, HAS_S0=True, HAS_SIN=not summ, HAS_H0=bwd, **cfg.kwargs)
    compile_one(tk._diag_chunk_kernel, "bf16", consts, cfg.num_warps, cfg.num_stages)
cfg = tk._block_configs()[0]
for K, bwd, summ in [(3, True, False), (4, False, True)]:
    consts = dict(K=K, REV=False, BWD=bwd, SUMMARY=summ, HAS_S0=True, HAS_SIN=not summ, HAS_H0=bwd,
                  KP=triton.next_power_of_2(K), **cfg.kwargs)
    compile_one(tk._block_chunk_kernel, "fp32", consts, cfg.num_warps, cfg.num_stages)
compile_one(tk._combine_kernel, "fp32", dict(K=3, HAS_S0=True, KP=4, BN=64), 4, 1)
print("compiled")
"""


def test_gpu_configs_compile_for_sm90():
    # The interpreter never lowers the kernels; this compiles the GPU configs' variants ahead of
    # time for sm_90 (tests/_triton_aot.py).
    from _triton_aot import compile_sm90

    compile_sm90(_AOT_SCRIPT)
