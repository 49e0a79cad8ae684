"""Compiled-code report: every Triton and CUDA kernel of nlseq compiled for sm_90 on the CPU.

No GPU is needed. Triton kernels are compiled with ``triton.compile`` for GPUTarget("cuda", 90, 32)
(TRITON_INTERPRET is dropped in this process); the CUDA sources under csrc/cuda are compiled with
nvcc -cubin (they are torch-free). Each cubin is read with the tools shipped in the triton wheel
(``cuobjdump -res-usage``, ``nvdisasm``) and reported per kernel and per autotune config:

    regs      registers per thread (cuobjdump REG)
    spill     spill bytes, stores/loads: the bytes of the STL/LDL instructions in the SASS (what
              ``ptxas -v`` reports as "bytes spill stores/loads"; Triton kernels use no local arrays)
    smem      shared memory per block in bytes (Triton's allocation; static .shared for CUDA)
    fits      smem <= 227 KiB, the sm_90 per-block limit: a config that does not fit is skipped
              by the autotuner and never runs (so it is exempt from the spill rule)
    tc        tensor-core instructions in the whole kernel: HGMMA (wgmma) / HMMA (mma.sync)
    loop      instructions of each innermost loop (a back-edge in the SASS, body = branch target
              .. branch), then ``per elem``: their sum divided by the elements one thread handles
              per iteration (attention: BM·BN/threads scores; scan/pararnn: step·channels)
    dots      tl.dot per innermost loop in the TTGIR (attention: matmuls per tile pair)

Usage (from the repository root):

    PYTHONPATH=python python benchmarks/sass_report.py             # what the CI test checks
    PYTHONPATH=python python benchmarks/sass_report.py --full      # every config, D = 64/128, CUDA
    ... --json out.json --md out.md --jobs 2 --families softplus_attention,scan

Compiled artifacts are cached by Triton (TRITON_CACHE_DIR) and, for CUDA, under
NLSEQ_SASS_CACHE (default ~/.cache/nlseq/sass); a warm rerun takes seconds.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # as a script only: a test that imports the parsers keeps its own environment
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, never interpret
    os.environ.pop("NLSEQ_AUTOTUNE_FIRST", None)  # report every config
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMEM_LIMIT = 227 * 1024  # sm_90 opt-in shared memory per block


# ----------------------------------------------------------------------------------- variants
@dataclasses.dataclass
class Variant:
    family: str
    kernel: str  # module attribute of the Triton kernel, or the CUDA file
    spec: str  # the specialisation: dtype, D, constexpr flags
    config: str  # the autotune config
    elems: float  # elements one thread processes per iteration of the hot loop(s)
    unit: str  # what an element is
    tags: dict  # for the thresholds: dtype, D, op, ...
    args: dict = dataclasses.field(default_factory=dict)  # compile arguments (Triton)

    def key(self) -> str:
        return f"{self.family}/{self.kernel}[{self.spec}]({self.config})"


def _cfg_str(c) -> str:
    kw = " ".join(f"{k}{v}" for k, v in c.kwargs.items() if not isinstance(v, bool))
    return f"{kw} w{c.num_warps} s{c.num_stages}"


def _attention_kernels(sa, prec):
    """(kernel, configs, kind) of the attention kernels present in the module, with the configs
    their launches use for DOT_PREC ``prec`` (float32 inputs have their own lists)."""
    import triton

    out = [("_fwd_kernel", sa._configs(prec), "fwd")]
    for name in ("_bwd_kernel", "_bwd_gamma_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"):
        if hasattr(sa, name):
            out.append((name, sa._bwd_configs(prec), "bwd"))
    if hasattr(sa, "_shift_config"):  # LSSA's redo of underflowing rows: one launch config
        sc = dict(sa._shift_config(prec))
        w, s = sc.pop("num_warps"), sc.pop("num_stages")
        out.append(("_fwd_shift_kernel", [triton.Config(sc, num_warps=w, num_stages=s)], "shift"))
    return out


HEAD_DIMS = None  # --head-dims: the attention head dims to compile (default: 128, with --full 64 and 128)


def _attention_variants(full: bool):
    from nlseq.kernels import softplus_attention as sa

    dims = HEAD_DIMS or ((64, 128) if full else (128,))
    dtypes = ("bf16", "fp32")
    out = []
    import torch

    for dtype in dtypes:
        prec = sa._dot_precision(torch.float32 if dtype == "fp32" else torch.bfloat16)  # as the launcher
        ptrs = dict(
            q=dtype,
            k=dtype,
            v=dtype,
            o=dtype,
            do=dtype,
            rq="fp32",
            rk="fp32",
            stats="fp32",
            delta="fp32",
            gamma="fp32",
            dq="fp32",
            dk="fp32",
            dv="fp32",
            cu_q="i32",
            cu_k="i32",
        )
        for D in dims:
            for reweight in (False, True):
                op = "lssar" if reweight else "lssa"
                consts = dict(CAUSAL=True, REWEIGHT=reweight, IS_VARLEN=False, DOT_PREC=prec, BD=D)
                if "P_INT" in sa._fwd_kernel.fn.arg_names:
                    consts["P_INT"] = 15 if reweight else 0  # the default p, a compile-time integer
                spec = f"{dtype} D={D} {op.upper()} causal"
                for name, configs, kind in _attention_kernels(sa, prec):
                    if name == "_bwd_gamma_kernel" and not reweight:
                        continue  # LSSA has no Γ pass
                    if name == "_fwd_shift_kernel" and reweight:
                        continue  # LSSAR has no shift pass
                    kern = getattr(sa, name)
                    params = set((kern.fn if hasattr(kern, "configs") else kern).arg_names)
                    for c in configs:
                        threads = 32 * c.num_warps
                        bm, bn = c.kwargs["BM"], c.kwargs["BN"]
                        out.append(
                            Variant(
                                "softplus_attention",
                                name,
                                spec,
                                _cfg_str(c),
                                bm * bn / threads,
                                "score",
                                dict(dtype=dtype, D=D, op=op, kind=kind),
                                dict(
                                    ptrs=ptrs,
                                    consts={n: x for n, x in dict(consts, **c.kwargs).items() if n in params},
                                    warps=c.num_warps,
                                    stages=c.num_stages,
                                    floats=("log_d", "p", "zero_tol"),
                                    div16=("Tq", "Tk", "D", "plane", "H"),
                                ),
                            )
                        )
    return out


def _attention_partial_variants(full: bool):
    """The context-parallel kernels (kernels/softplus_attention_partial.py): every dot is IEEE float32
    whatever the input dtype (inputs are converted on load), so float32 inputs only, bf16 with --full."""
    from nlseq.kernels import softplus_attention_partial as kp

    kinds = [("_partial_fwd_kernel", "lssa", "MODE=0", dict(MODE=0))]
    kinds += [("_partial_fwd_kernel", "lssar", f"MODE={m}", dict(MODE=m)) for m in (1, 2)]
    kinds += [("_partial_dq_kernel", "lssa", "dq", dict(REWEIGHT=False, GAMMA=False))]
    kinds += [("_partial_dq_kernel", "lssar", "dq", dict(REWEIGHT=True, GAMMA=False))]
    kinds += [("_partial_dq_kernel", "lssar", "gamma", dict(REWEIGHT=True, GAMMA=True))]
    kinds += [("_partial_dkv_kernel", op, "dkv", dict(REWEIGHT=op == "lssar")) for op in ("lssa", "lssar")]
    out = []
    for dtype in ("fp32", "bf16") if full else ("fp32",):
        ptrs = {n: dtype for n in ("q_ptr", "k_ptr", "v_ptr", "do_ptr")}
        ptrs.update({n: "fp32" for n in ("rq_ptr", "rk_ptr", "u_ptr", "st_ptr", "sin_ptr", "dl_ptr", "gam_ptr")})
        ptrs.update(dq_ptr="fp32", dk_ptr="fp32", dv_ptr="fp32")
        for D in HEAD_DIMS or ((64, 128) if full else (128,)):
            for name, op, what, flags in kinds:
                for c in kp._configs():
                    out.append(
                        Variant(
                            "softplus_attention",
                            name,
                            f"{dtype} D={D} {op.upper()} causal {what}",
                            _cfg_str(c),
                            c.kwargs["BM"] * c.kwargs["BN"] / (32 * c.num_warps),
                            "score",
                            dict(dtype=dtype, D=D, op=op, kind="partial"),
                            dict(
                                ptrs=ptrs,
                                consts=dict(flags, CAUSAL=True, BD=D, **c.kwargs),
                                warps=c.num_warps,
                                stages=c.num_stages,
                                floats=("logD", "p"),
                                div16=("Tq", "Tk", "D", "H"),
                                module="softplus_attention_partial",
                            ),
                        )
                    )
    return out


def _scan_variants(full: bool):
    from nlseq.kernels import scan as sk

    names = ("A", "X", "S0", "SIN", "AS", "XS", "H", "FIN", "HF", "H0", "DA")
    out = []
    modes = [
        ("fwd", dict(REV=False, BWD=False, SUMMARY=False, HAS_S0=True, HAS_SIN=False, HAS_H0=False)),
        ("bwd", dict(REV=True, BWD=True, SUMMARY=False, HAS_S0=True, HAS_SIN=False, HAS_H0=True)),
        ("summary", dict(REV=False, BWD=False, SUMMARY=True, HAS_S0=False, HAS_SIN=False, HAS_H0=False)),
    ]
    for dtype in ("fp32", "bf16") if full else ("bf16",):
        ptrs = {n: dtype for n in names}
        ptrs.update(AS="fp32", XS="fp32", SIN="fp32")
        for K, kern, configs in [
            (1, "_diag_chunk_kernel", sk._diag_configs()),
            (2, "_block_chunk_kernel", sk._block_configs()),
        ]:
            for mode, flags in modes:
                if mode == "summary" and not full:
                    continue
                consts = dict(flags, K=K)
                if K > 1:
                    consts["KP"] = 2
                for c in configs:
                    threads = 32 * c.num_warps
                    bt = c.kwargs.get("BT", 1)
                    out.append(
                        Variant(
                            "scan",
                            kern,
                            f"{dtype} K={K} {mode}",
                            _cfg_str(c),
                            bt * c.kwargs["BN"] / threads,
                            "step·channel",
                            dict(dtype=dtype, D=0, op=f"scan_{mode}", kind=mode),
                            dict(
                                ptrs=ptrs,
                                consts=dict(consts, **c.kwargs),
                                warps=c.num_warps,
                                stages=c.num_stages,
                                floats=(),
                                div16=("T", "N", "L"),
                            ),
                        )
                    )
    return out


def _pararnn_variants(full: bool):
    from nlseq.kernels import pararnn as pk

    out = []
    for dtype in ("bf16", "fp32") if full else ("bf16",):
        io = {n: dtype for n in ("U", "S0", "S", "DS", "DU", "DS0")}
        f32 = {n: "fp32" for n in ("A", "P", "X", "PHI", "MT", "MU", "QQ", "PA", "PP", "DSL")}
        ptrs = dict(io, **f32, RES="i32")
        for lstm in (False, True):
            cellname = "lstm" if lstm else "gru"
            BN, warps = pk._block_n(1024)
            threads = 32 * warps
            cell = dict(IS_LSTM=lstm, HAS_P=lstm, BN=BN)
            per_step = BN / threads
            for kern, consts, unit in [
                ("pararnn_fwd_sweep_kernel", dict(cell, HAS_S0=True, FIRST=False), "step·channel"),
                ("pararnn_fwd_boundary_kernel", dict(cell, CHECK=True), "chunk·channel"),
                ("pararnn_bwd_chunk_kernel", dict(cell, HAS_S0=True, FINAL=False), "step·channel"),
                ("pararnn_bwd_carry_kernel", dict(IS_LSTM=lstm, BN=BN), "chunk·channel"),
            ]:
                out.append(
                    Variant(
                        "pararnn",
                        kern,
                        f"{dtype} {cellname} N=1024",
                        f"BN{BN} w{warps} s1",
                        per_step,
                        unit,
                        dict(dtype=dtype, D=0, op=f"pararnn_{cellname}", kind=kern),
                        dict(ptrs=ptrs, consts=consts, warps=warps, stages=1, floats=("tol",), div16=("T", "N", "L")),
                    )
                )
    return out


def _analog_variants(full: bool):
    """Every launch variant of the analog kernel: the tiles of its launcher (kernels/analog.py
    tile_config, per noise mode and GEMM precision), compiled without FP contraction as it launches."""
    from nlseq.kernels import analog as ak

    ptrs = {n: "fp32" for n in ("x", "w", "col_scale", "thr", "lev", "noise", "y")}
    floats = ("x_max", "inv_delta", "delta", "qmax", "noise_a", "noise_b")
    out = []
    for noisy, supplied in [(True, False), (True, True), (False, False)]:
        for ieee in (True, False):
            BM, BN, BK, warps, stages = ak.tile_config(noisy, ieee)
            meta = dict(BM=BM, BN=BN, BK=BK)
            consts = dict(QUANTIZE=True, NOISY=noisy, SUPPLIED=supplied, BITS=8, IEEE=ieee, **meta)
            noise = ("philox" if not supplied else "supplied") if noisy else "noiseless"
            out.append(
                Variant(
                    "analog",
                    "analog_mvm_fwd_kernel",
                    f"fp32 quantized {noise} {'ieee' if ieee else 'tf32'}",
                    " ".join(f"{k}{v}" for k, v in meta.items()) + f" w{warps} s{stages}",
                    BM * BN * BK / (32 * warps),
                    "MAC",
                    dict(dtype="fp32", D=0, op="analog", kind="fwd"),
                    dict(
                        ptrs=ptrs,
                        consts=consts,
                        warps=warps,
                        stages=stages,
                        floats=floats,
                        div16=("M", "N", "K"),
                        options=dict(enable_fp_fusion=False),  # as analog_mvm_fwd launches it
                    ),
                )
            )
    return out


FAMILIES = {
    "softplus_attention": lambda full: _attention_variants(full) + _attention_partial_variants(full),
    "scan": _scan_variants,
    "pararnn": _pararnn_variants,
    "analog": _analog_variants,
}
MODULES = {"softplus_attention": "softplus_attention", "scan": "scan", "pararnn": "pararnn", "analog": "analog"}


# ----------------------------------------------------------------------------------- SASS parsing
def _tool(name: str) -> str:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"sass_report: {name} not found in the triton wheel or on PATH")
    return found


_INSTR = re.compile(r"/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?(.*?);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+|\.L_\w+):")
_BRANCH_TARGET = re.compile(r"`\((\.L\w+)\)")


def parse_sass(text: str) -> dict:
    """Per function: instructions [(addr, opcode, suffix, operands)], labels {name: addr}."""
    funcs, cur = {}, None
    pending = []
    for line in text.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line)
        if m:
            cur = funcs.setdefault(m.group(1), {"ins": [], "labels": {}})
            continue
        if cur is None:
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.search(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                cur["labels"][lab] = addr
            pending = []
            cur["ins"].append((addr, m.group(2), m.group(3) or "", m.group(4)))
    return funcs


def analyse_function(fn: dict) -> dict:
    ins = fn["ins"]
    # stop at the end of the code (trailing self-branch and NOPs)
    loops = []
    for addr, op, _suf, rest in ins:
        if op == "BRA":
            t = _BRANCH_TARGET.search(rest)
            if t and t.group(1) in fn["labels"]:
                target = fn["labels"][t.group(1)]
                if target < addr:
                    loops.append((target, addr))
                elif target == addr:
                    continue  # the trailing `BRA .` after EXIT
    loops = sorted(set(loops))
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    body = lambda lp: [i for i in ins if lp[0] <= i[0] <= lp[1] and i[1] != "NOP"]  # noqa: E731
    spill_st = spill_ld = 0
    width = lambda suf: {".64": 8, ".128": 16, ".U8": 1, ".S8": 1, ".U16": 2, ".S16": 2}.get(  # noqa: E731
        next((s for s in (".128", ".64", ".U16", ".S16", ".U8", ".S8") if s in suf), ""), 4
    )
    hgmma = hmma = 0
    for _a, op, suf, _r in ins:
        if op == "STL":
            spill_st += width(suf)
        elif op == "LDL":
            spill_ld += width(suf)
        elif op == "HGMMA":
            hgmma += 1
        elif op == "HMMA":
            hmma += 1
    loop_info = []
    for lp in inner:
        b = body(lp)
        loop_info.append(
            dict(
                instrs=len(b),
                hgmma=sum(1 for i in b if i[1] == "HGMMA"),
                hmma=sum(1 for i in b if i[1] == "HMMA"),
                mufu=sum(1 for i in b if i[1] == "MUFU"),
                spill=sum(1 for i in b if i[1] in ("STL", "LDL")),
            )
        )
    return dict(
        instrs=sum(1 for i in ins if i[1] != "NOP"),
        spill_st=spill_st,
        spill_ld=spill_ld,
        hgmma=hgmma,
        hmma=hmma,
        loops=loop_info,
    )


def res_usage(cubin: Path) -> dict:
    out = subprocess.run(
        [_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    res, name = {}, None
    for line in out.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            res[name] = dict(regs=int(m.group(1)), stack=int(m.group(2)), shared=int(m.group(3)), local=int(m.group(4)))
    return res


def disasm_text(cubin: Path) -> str:
    return subprocess.run([_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout


def disasm(cubin: Path) -> dict:
    return parse_sass(disasm_text(cubin))


_DOT = re.compile(r"\b(tt\.dot|ttng\.warp_group_dot|tt\.dot_scaled)\b")


def ttgir_loop_dots(ttgir: str) -> list[int]:
    """tl.dot count of each innermost scf.for of the TTGIR (regions tracked by their braces)."""
    stack, result = [], []  # frames: [is_for, dots, innermost]
    for line in ttgir.splitlines():
        s = line.strip()
        if s.startswith("}"):
            top = stack.pop() if stack else None
            if top and top[0]:
                if top[2]:
                    result.append(top[1])
                for fr in reversed(stack):
                    if fr[0]:
                        fr[2] = False
                        break
        n = len(_DOT.findall(s))
        if n:
            for fr in reversed(stack):
                if fr[0]:
                    fr[1] += n
                    break
        if s.endswith("{"):
            stack.append(["scf.for" in s, 0, True])
    return result


# ----------------------------------------------------------------------------------- compiling
def _compile_triton(v: Variant) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    mod = importlib.import_module(f"nlseq.kernels.{v.args.get('module', MODULES[v.family])}")
    kernel = getattr(mod, v.kernel)
    fn = kernel.fn if hasattr(kernel, "configs") else kernel
    a = v.args
    sig, consts = {}, dict(a["consts"])
    for p in fn.params:
        n = p.name
        if n in consts:
            sig[n] = "constexpr"
        elif p.is_constexpr:
            if p.has_default:
                consts[n] = p.default
                sig[n] = "constexpr"
            else:
                raise ValueError(f"sass_report: {v.kernel} has a new constexpr {n!r}: add it to its variants")
        elif n in a["ptrs"]:
            sig[n] = "*" + a["ptrs"][n]
        else:
            sig[n] = "fp32" if n in a["floats"] else "i32"
    # What the launcher's specialisation gives at run time: pointers (torch allocations) and the
    # integer arguments named in div16 are multiples of 16, which lets loads vectorise.
    div = [["tt.divisibility", 16]]
    attrs = {(i,): div for i, p in enumerate(fn.params) if sig[p.name].startswith("*") or p.name in a.get("div16", ())}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    t0 = time.time()
    k = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": a["warps"], "num_stages": a["stages"], **a.get("options", {})},
    )
    with tempfile.TemporaryDirectory() as d:
        cub = Path(d) / "k.cubin"
        cub.write_bytes(k.asm["cubin"])
        res = res_usage(cub)
        sass_text = disasm_text(cub)
    funcs = parse_sass(sass_text)
    dump = os.environ.get("NLSEQ_SASS_DUMP")
    if dump:  # --dump: keep the SASS and TTGIR of every variant
        stem = Path(dump) / re.sub(r"[^\w.=-]+", "_", v.key())
        stem.with_suffix(".sass").write_text(sass_text)
        stem.with_suffix(".ttgir").write_text(k.asm["ttgir"])
    name = k.metadata.name
    r = dict(res.get(name, next(iter(res.values()))))
    r["shared"] = max(r["shared"], int(k.metadata.shared))
    r.update(analyse_function(funcs.get(name) or next(iter(funcs.values()))))
    r["dots"] = ttgir_loop_dots(k.asm["ttgir"])
    r["compile_s"] = round(time.time() - t0, 2)
    return r


def _finish(v: Variant, r: dict) -> dict:
    per = sum(lp["instrs"] for lp in r["loops"]) / v.elems if r.get("loops") else None
    return dict(
        family=v.family,
        kernel=v.kernel,
        spec=v.spec,
        config=v.config,
        tags=v.tags,
        unit=v.unit,
        elems_per_iter=v.elems,
        regs=r["regs"],
        spill_st=r["spill_st"],
        spill_ld=r["spill_ld"],
        stack=r.get("stack", 0),
        shared=r["shared"],
        fits=r["shared"] <= SMEM_LIMIT,
        hgmma=r["hgmma"],
        hmma=r["hmma"],
        loops=[lp["instrs"] for lp in r["loops"]],
        loop_mufu=[lp["mufu"] for lp in r["loops"]],
        per_elem=None if per is None else round(per, 2),
        dots=r.get("dots"),
        instrs=r["instrs"],
        compile_s=r.get("compile_s"),
    )


def _run_one(v: Variant) -> dict:
    try:
        return _finish(v, _compile_triton(v))
    except Exception as e:  # reported as a row with the error, so one bad variant keeps the rest
        return dict(
            family=v.family,
            kernel=v.kernel,
            spec=v.spec,
            config=v.config,
            tags=v.tags,
            error=f"{type(e).__name__}: {str(e)[:400]}",
        )


# ----------------------------------------------------------------------------------- CUDA
NVCC_FLAGS = [
    "-O3",
    "--use_fast_math",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "-std=c++17",
    "-gencode=arch=compute_90,code=sm_90",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]  # CMakeLists.txt's flags for the kernels


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME")
    for c in ([f"{home}/bin/nvcc"] if home else []) + ["/usr/local/cuda/bin/nvcc", shutil.which("nvcc") or ""]:
        if c and Path(c).exists():
            return c
    return None


def _compile_cuda(src: str) -> list[dict]:
    nvcc = _nvcc()
    path = ROOT / "csrc" / "cuda" / src
    h = hashlib.sha256()
    for f in sorted((ROOT / "csrc").rglob("*")):
        if f.suffix in (".cu", ".cuh", ".h") and ("cuda" in f.parts or "include" in f.parts):
            h.update(f.read_bytes())
    h.update(" ".join(NVCC_FLAGS).encode() + src.encode())
    cache = Path(os.environ.get("NLSEQ_SASS_CACHE", Path.home() / ".cache" / "nlseq" / "sass"))
    cache.mkdir(parents=True, exist_ok=True)
    cub = cache / f"{src}.{h.hexdigest()[:16]}.cubin"
    if not cub.exists():
        tmp = cub.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            [
                nvcc,
                "-cubin",
                *NVCC_FLAGS,
                f"-I{ROOT / 'csrc' / 'include'}",
                f"-I{ROOT / 'csrc'}",
                f"-I{ROOT / 'csrc' / 'cuda'}",
                str(path),
                "-o",
                str(tmp),
            ],
            check=True,
            capture_output=True,
        )
        tmp.rename(cub)
    res = res_usage(cub)
    funcs = disasm(cub)
    rows = []
    for name, f in funcs.items():
        r = dict(res.get(name, dict(regs=0, stack=0, shared=0, local=0)))
        r.update(analyse_function(f))
        demangled = name
        if shutil.which("c++filt"):
            demangled = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
        demangled = demangled.replace("nlseq::cuda::", "").replace("(anonymous namespace)::", "")
        rows.append(
            dict(
                family=src.split(".")[0] if not src.startswith("softplus") else "softplus_attention",
                kernel=f"cuda:{demangled[:140]}",
                spec="sm_90",
                config="-",
                tags=dict(dtype="", D=0, op="cuda"),
                unit="iteration",
                elems_per_iter=1,
                regs=r["regs"],
                spill_st=r["spill_st"],
                spill_ld=r["spill_ld"],
                stack=r["stack"],
                shared=r["shared"],
                fits=r["shared"] <= SMEM_LIMIT,
                hgmma=r["hgmma"],
                hmma=r["hmma"],
                loops=[lp["instrs"] for lp in r["loops"]],
                loop_mufu=[lp["mufu"] for lp in r["loops"]],
                per_elem=None,
                dots=None,
                instrs=r["instrs"],
            )
        )
    return rows


def cuda_rows() -> list[dict]:
    if _nvcc() is None:
        return []
    rows = []
    for src in sorted(p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu")):
        try:
            rows += _compile_cuda(src)
        except subprocess.CalledProcessError as e:
            rows.append(
                dict(
                    family="cuda",
                    kernel=src,
                    spec="sm_90",
                    config="-",
                    tags={},
                    error=(e.stderr or b"").decode()[-400:],
                )
            )
    return rows


# ----------------------------------------------------------------------------------- driver
def collect(families=None, full=False, jobs=None, cuda=None, match=None) -> list[dict]:
    families = families or list(FAMILIES)
    variants = [v for f in families for v in FAMILIES[f](full)]
    if match:
        variants = [v for v in variants if re.search(match, v.key())]
    jobs = max(1, jobs or min(len(variants), os.cpu_count() or 1))
    rows = []
    if jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as ex:
            fut_cuda = ex.submit(cuda_rows) if (full if cuda is None else cuda) else None
            rows = list(ex.map(_run_one, variants, chunksize=1))
            if fut_cuda is not None:
                rows += fut_cuda.result()
    else:
        rows = [_run_one(v) for v in variants]
        if full if cuda is None else cuda:
            rows += cuda_rows()
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| family | kernel | specialisation | config | regs | spill st/ld (B) | smem (KiB) | HGMMA/HMMA "
        "| inner loops (instr) | instr / elem | dots / loop |\n"
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['family']} | {r['kernel']} | {r['spec']} | {r['config']} | error: "
                f"{r['error'][:80].replace('|', '/')} | | | | | | |"
            )
            continue
        smem = f"{r['shared'] / 1024:.1f}" + ("" if r["fits"] else " (no fit)")
        per = "" if r["per_elem"] is None else f"{r['per_elem']:.1f} / {r['unit']}"
        dots = "" if not r.get("dots") else "+".join(str(d) for d in r["dots"])
        lines.append(
            f"| {r['family']} | {r['kernel']} | {r['spec']} | {r['config']} | {r['regs']} | "
            f"{r['spill_st']}/{r['spill_ld']} | {smem} | {r['hgmma']}/{r['hmma']} | "
            f"{'+'.join(str(n) for n in r['loops'])} | {per} | {dots} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="every config and specialisation, and the CUDA kernels")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ",".join(FAMILIES))
    ap.add_argument(
        "--cuda",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the CUDA kernels with nvcc (default: with --full)",
    )
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument(
        "--match", default=None, help="only the variants whose family/kernel[spec](config) matches this regex"
    )
    ap.add_argument(
        "--head-dims", default=None, help="comma-separated attention head dims (default: 128; with --full 64,128)"
    )
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--md", type=Path, help="write the Markdown table here")
    ap.add_argument("--dump", type=Path, help="write each variant's SASS and TTGIR into this folder")
    a = ap.parse_args(argv)
    if a.dump:
        a.dump.mkdir(parents=True, exist_ok=True)
        os.environ["NLSEQ_SASS_DUMP"] = str(a.dump)
    t0 = time.time()
    if a.head_dims:
        global HEAD_DIMS
        HEAD_DIMS = tuple(int(d) for d in a.head_dims.split(","))
    fams = [f for f in a.families.split(",") if f]
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        ap.error(f"unknown families {bad}: expected some of {list(FAMILIES)}")
    rows = collect(fams, a.full, a.jobs, a.cuda, a.match)
    md = markdown(rows)
    if a.json:
        a.json.write_text(json.dumps(dict(target="sm_90", rows=rows, seconds=round(time.time() - t0, 1)), indent=1))
    if a.md:
        a.md.write_text(md)
    if not a.json and not a.md:
        sys.stdout.write(md)
    print(f"sass_report: {len(rows)} rows in {time.time() - t0:.0f} s", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
