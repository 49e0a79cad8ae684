"""Thresholds on the compiled code (sm_90 SASS) of the Triton kernels, from benchmarks/sass_report.py.

No GPU is needed: the report compiles every autotune config for sm_90 on the CPU and reads the
cubins with the triton wheel's cuobjdump/nvdisasm (see docs/compiled_code.md). A regression in the
compiled code (a spill, a slower inner loop, an extra matmul) fails here before any GPU run:

  * LSSA forward (bf16, tensor cores): <= 30 SASS instructions per score in the key loop, in
    every config with wgmma-sized tiles (BM >= 64);
  * LSSAR forward, both passes together: <= 60 per score (same configs);
  * no spill in any config that fits the shared memory, D <= 128, of any kernel (attention, scan,
    pararnn, analog), in every config the kernels' autotune lists (and fixed launch configs) hold
    today, float32 attention included: its IEEE dots have their own, smaller tiles;
  * float32 attention stays IEEE float32 (no tensor-core instruction: not silently TF32), and a
    launch autotunes over exactly the configs the report checked (its dtype's list);
  * the attention backward at FlashAttention-2's 5 matmuls per tile pair (LSSAR adds the 2 of its
    Γ pre-pass), on the tensor cores for bf16.

The report runs once per session (a subprocess without TRITON_INTERPRET); a warm Triton cache makes
reruns fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import sass_report  # noqa: E402

LSSA_MAX = 30
LSSAR_MAX = 60


def _nvidia_backend() -> bool:
    import triton.backends

    return "nvidia" in triton.backends.backends


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    if not _nvidia_backend():
        pytest.skip("triton has no nvidia backend here")
    out = tmp_path_factory.mktemp("sass") / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NLSEQ_AUTOTUNE_FIRST")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python")] + [p for p in sys.path if p])
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sass_report.py"), "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.exists(), r.stderr[-4000:]
    data = json.loads(out.read_text())["rows"]
    errors = [f"{x['kernel']}[{x['spec']}]({x['config']}): {x['error']}" for x in data if "error" in x]
    assert not errors, "\n".join(errors)
    return data


def _select(rows, **tags):
    return [r for r in rows if all(r["tags"].get(k) == v for k, v in tags.items())]


def _name(r):
    return f"{r['kernel']}[{r['spec']}]({r['config']})"


def test_every_family_and_config_compiled(rows):
    assert {r["family"] for r in rows} == {"softplus_attention", "scan", "pararnn", "analog"}
    fwd = _select(rows, op="lssa", dtype="bf16", kind="fwd")
    configs = [r["config"] for r in fwd]
    assert len(set(configs)) == len(configs) > 1  # every GPU config (the interpreter has one)


def _wgmma_tiles(r):
    """Configs whose tiles have >= 64 query rows: Hopper's wgmma shape, the ones that can reach the
    speed goal (smaller tiles exist for D = 256 and float32, where the shared memory is short)."""
    return r["config"].startswith(("BM64 ", "BM128 ", "BM256 "))


def test_lssa_forward_instructions_per_score(rows):
    fwd = [r for r in _select(rows, op="lssa", dtype="bf16", kind="fwd") if r["fits"] and _wgmma_tiles(r)]
    assert fwd
    bad = [f"{_name(r)}: {r['per_elem']}" for r in fwd if r["per_elem"] is None or r["per_elem"] > LSSA_MAX]
    assert not bad, f"LSSA forward above {LSSA_MAX} instructions per score:\n" + "\n".join(bad)


def test_lssar_forward_instructions_per_score(rows):
    fwd = [r for r in _select(rows, op="lssar", dtype="bf16", kind="fwd") if r["fits"] and _wgmma_tiles(r)]
    assert fwd
    for r in fwd:
        assert len(r["loops"]) == 2, f"{_name(r)}: expected the two passes as two inner loops, got {r['loops']}"
    bad = [f"{_name(r)}: {r['per_elem']}" for r in fwd if r["per_elem"] > LSSAR_MAX]
    assert not bad, f"LSSAR forward (both passes) above {LSSAR_MAX} instructions per score:\n" + "\n".join(bad)


def _spills(rows, pred):
    checked = [r for r in rows if r["fits"] and r["tags"].get("D", 0) <= 128 and pred(r)]
    assert checked
    return [
        f"{_name(r)}: {r['spill_st']}/{r['spill_ld']} bytes, {r['regs']} registers"
        for r in checked
        if r["spill_st"] or r["spill_ld"]
    ]


def test_no_spills(rows):
    bad = _spills(rows, lambda r: True)
    assert {r["family"] for r in rows} == {"softplus_attention", "scan", "pararnn", "analog"}
    assert not bad, "spilling kernels:\n" + "\n".join(bad)


_ATTENTION_KERNELS = {
    ("_fwd_kernel", "lssa"),
    ("_fwd_kernel", "lssar"),
    ("_fwd_shift_kernel", "lssa"),
    ("_bwd_kernel", "lssa"),
    ("_bwd_kernel", "lssar"),
    ("_bwd_gamma_kernel", "lssar"),
}


_PARTIAL_KERNELS = {(f"_partial_{k}_kernel", op) for k in ("fwd", "dq", "dkv") for op in ("lssa", "lssar")}


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_every_attention_kernel_compiled(rows, dtype):
    """The spill rule covers every attention kernel of both config lists (16-bit and float32), and
    the context-parallel kernels (all IEEE float32 dots, compiled for float32 inputs)."""
    att = [r for r in rows if r["family"] == "softplus_attention" and r["tags"]["dtype"] == dtype]
    got = {(r["kernel"], r["tags"]["op"]) for r in att if r["tags"]["kind"] != "partial"}
    assert got == _ATTENTION_KERNELS
    partial = {(r["kernel"], r["tags"]["op"]) for r in att if r["tags"]["kind"] == "partial"}
    assert partial == (_PARTIAL_KERNELS if dtype == "fp32" else set())
    fwd = [r["config"] for r in _select(rows, op="lssa", dtype=dtype, kind="fwd")]
    assert len(fwd) > 1  # the whole autotune list, not one config


_LAUNCH_CONFIGS = r"""
import json, torch
from nlseq.kernels import softplus_attention as sa

out = {}
for kern, lists in [(sa._fwd_kernel, sa._configs), (sa._bwd_kernel, sa._bwd_configs),
                    (sa._bwd_gamma_kernel, sa._bwd_configs)]:
    kern.nargs = {}
    for dt, name in [(torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")]:
        prec = sa._dot_precision(dt)
        got = kern.prune_configs({"DOT_PREC": prec})  # what the autotuner benchmarks at a launch
        own = lists(prec)  # the same configs, in the autotuner's order (triton.Config compares by value)
        assert len(got) == len(own) and all(c in got for c in own), (kern.base_fn.__name__, name)
        out[f"{kern.base_fn.__name__} {name}"] = [f"BM{c.kwargs['BM']} BN{c.kwargs['BN']} w{c.num_warps} s{c.num_stages}"
                                                  for c in got]
print(json.dumps(out))
"""


def test_launches_autotune_over_the_reported_configs(rows):
    """A launch autotunes over its own dtype's list (float32: the small IEEE tiles; bf16 and fp16: the
    tensor-core tiles), and that list is the one the report compiled and checked for spills."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "NLSEQ_AUTOTUNE_FIRST")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python")] + [p for p in sys.path if p])
    r = subprocess.run([sys.executable, "-c", _LAUNCH_CONFIGS], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    launch = json.loads(r.stdout.strip().splitlines()[-1])
    for name, configs in launch.items():
        kernel, dtype = name.split()
        if dtype == "fp16":  # the same list as bf16 (the report compiles bf16)
            assert configs == launch[f"{kernel} bf16"]
            continue
        reported = {r["config"] for r in rows if r["kernel"] == kernel and r["tags"]["dtype"] == dtype}
        assert set(configs) == reported, (name, configs, reported)


def test_float32_attention_is_ieee(rows):
    """float32 inputs keep IEEE float32 dots (FMAs): a TF32 dot would show as HMMA/HGMMA."""
    fp32 = [r for r in rows if r["family"] == "softplus_attention" and r["tags"]["dtype"] == "fp32"]
    assert fp32
    tc = [f"{_name(r)}: {r['hgmma']}/{r['hmma']}" for r in fp32 if r["hgmma"] or r["hmma"]]
    assert not tc, "tensor-core instructions in float32 attention:\n" + "\n".join(tc)


def test_attention_backward_matmuls_per_tile_pair(rows):
    bwd = [r for r in rows if r["kernel"] == "_bwd_kernel"]
    gamma = [r for r in rows if r["kernel"] == "_bwd_gamma_kernel"]
    assert bwd and gamma
    assert all(r["dots"] == [5] for r in bwd), [(_name(r), r["dots"]) for r in bwd if r["dots"] != [5]]
    assert all(r["dots"] == [2] for r in gamma), [(_name(r), r["dots"]) for r in gamma if r["dots"] != [2]]
    assert {r["tags"]["op"] for r in gamma} == {"lssar"}  # LSSA has no Γ pass
    for r in bwd + gamma:  # bf16 runs on the tensor cores (wgmma, or mma.sync for 32-row tiles)
        if r["tags"]["dtype"] == "bf16":
            assert r["hgmma"] + r["hmma"] > 0, _name(r)


# ----------------------------------------------------------------------------- the parsers
_SASS = """
        .text._k:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FFMA R2, R3, R4, R2 ;
        /*0020*/                   STL.64 [R1], R2 ;
.L_x_1:
        /*0030*/                   MUFU.EX2 R5, R5 ;
        /*0040*/                   HGMMA.64x64x16.F32.BF16 R88, gdesc[UR24], R88 ;
        /*0050*/               @P1 BRA `(.L_x_1) ;
        /*0060*/                   LDL R7, [R1+0x8] ;
        /*0070*/               @!P0 BRA `(.L_x_0) ;
        /*0080*/                   EXIT ;
.L_x_2:
        /*0090*/                   BRA `(.L_x_2);
"""


def test_sass_parser_finds_the_innermost_loop_and_spills():
    f = sass_report.parse_sass(_SASS)["_k"]
    a = sass_report.analyse_function(f)
    assert [lp["instrs"] for lp in a["loops"]] == [3]  # .L_x_1 .. its BRA; the outer loop is not innermost
    assert a["loops"][0]["mufu"] == 1 and a["loops"][0]["hgmma"] == 1
    assert (a["spill_st"], a["spill_ld"]) == (8, 4)
    assert a["hgmma"] == 1 and a["instrs"] == 10  # with the trailing self-branch


_TTGIR = """
  tt.func public @k() {
    %0 = scf.for %i = %c0 to %n step %c1 iter_args(%a = %z) -> (tensor<64x64xf32>) : i32 {
      %1 = scf.for %j = %c0 to %n step %c1 iter_args(%b = %a) -> (tensor<64x64xf32>) : i32 {
        %2 = tt.dot %x, %y, %b : tensor<64x64xbf16> * tensor<64x64xbf16> -> tensor<64x64xf32>
        %3 = scf.if %c -> (tensor<64x64xf32>) {
          %4 = ttng.warp_group_dot %x, %y, %2 : tensor<64x64xbf16> * tensor<64x64xbf16> -> tensor<64x64xf32>
          scf.yield %4 : tensor<64x64xf32>
        } else {
          scf.yield %2 : tensor<64x64xf32>
        }
        scf.yield %3 : tensor<64x64xf32>
      }
      %5 = tt.dot %x, %y, %1 : tensor<64x64xbf16> * tensor<64x64xbf16> -> tensor<64x64xf32>
      scf.yield %5 : tensor<64x64xf32>
    }
    %6 = scf.for %j = %c0 to %n step %c1 iter_args(%b = %a) -> (tensor<64x64xf32>) : i32 {
      %7 = tt.dot %x, %y, %b : tensor<64x64xbf16> * tensor<64x64xbf16> -> tensor<64x64xf32>
      scf.yield %7 : tensor<64x64xf32>
    } {tt.num_stages = 2 : i32}
    tt.return
  }
"""


def test_ttgir_dot_counter():
    assert sass_report.ttgir_loop_dots(_TTGIR) == [2, 1]


# ----------------------------------------------------------------------------- fast math accuracy
# For 16-bit inputs the GPU path's log is lg2.approx·ln2 (CUDA's __logf: |error| <= 2^-21.41 for x
# in [0.5, 2]; it is only taken of 1 + e, e in (0, 1]); its exp is ex2.approx, as tl.exp's always was
# (relative error <= 2^-22 taken here). The interpreter cannot run that PTX, so the forward is
# emulated: PyTorch's naive reference on the same 16-bit inputs (float32 inside, output rounded
# to the input dtype) with every softplus weight perturbed by those bounds (all up, all down,
# random signs) must stay within 2x PyTorch's own error against the float64 oracle (the
# FlashAttention rule). float32 inputs keep the accurate log (see docs/compiled_code.md).
LOG_ABS_ERR = 2.0**-21.41
EXP_REL_ERR = 2.0**-22


@pytest.mark.parametrize("p", [None, 15.0], ids=["lssa", "lssar15"])
@pytest.mark.parametrize("sign", ["up", "down", "random"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fast_log_within_twice_torch_error(monkeypatch, p, sign, dtype):
    import torch

    from nlseq.reference import softplus_attention as ref

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(7)
    B, H, T, D = 2, 2, 97, 64
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(dt) for _ in range(3))
    kw = dict(causal=True, reweight_p=p)
    o64 = ref.softplus_attention_naive(q.double(), k.double(), v.double(), **kw)
    err_torch = (ref.softplus_attention_naive(q, k, v, **kw).double() - o64).abs().max().item()

    exact = ref.softplus

    def fast_softplus(x):
        assert x.dtype == torch.float32  # the reference computes 16-bit inputs in float32
        if sign == "random":
            d = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).float() * 2 - 1
        else:
            d = torch.full_like(x, 1.0 if sign == "up" else -1.0)
        e = torch.exp(-x.abs()) * (1 + d * EXP_REL_ERR)
        return torch.clamp_min(x, 0) + (torch.log(1 + e) + d * LOG_ABS_ERR)

    monkeypatch.setattr(ref, "softplus", fast_softplus)
    err_fast = (ref.softplus_attention_naive(q, k, v, **kw).double() - o64).abs().max().item()
    monkeypatch.setattr(ref, "softplus", exact)
    assert err_torch > 0
    assert err_fast <= 2 * err_torch, (err_fast, err_torch)
