"""Benchmark cases of the softplus_attention family: ``nlseq.softplus_attention`` (docs/spec.md §2, §2.1).

GPU (docs/spec.md §2.1 sizes: bf16, causal, B = 4, H = 16, D = 128, N = 4096 and 16384; GPT-2 heads
B = 8, H = 12, D = 64): LSSA and LSSAR (p = 15) on the triton backend against FlexAttention with
score_mod = log softplus (LSSAR: two calls, the first returning the log row sums) and the eager
chunked reference; and, as the speed bar and baseline, PyTorch SDPA's flash kernel in the same case
(softmax attention: a different function, checked against its own float64 softmax oracle).
TFLOP/s use the count of docs/spec.md §2.1: forward 2·B·H·N²·D for causal, forward+backward 3.5× that.
Goals (issue 4): LSSA >= SDPA flash TFLOP/s (>= 342 fwd, >= 318 fwd+bwd at 16384) and >= 2.5×
FlexAttention; LSSAR >= 0.6× SDPA (checked as goals of the triton rows).
Above N = 8192 the oracle checks the forward only (``check_grads=False``): a float64 backward of
the softmax oracle at N = 16384 would keep ~137 GB of probabilities; the gradients are still timed.
Headline: LSSA and LSSAR at B = 4, H = 16, N = 16384, D = 128 on the GPU, LSSA on the CPU.

CPU (N = 4096, fp32, causal, B = 1, H = 4, D = 64): cpp against the chunked reference. Goal: cpp
faster, peak memory < 1/10 of the reference's. The bench reports CPU memory as the case model's
estimate (below); the issue's measured RSS numbers come from a fresh process per call (see the
report of issue 4).
CPU against SDPA (issue 15, ``lssa-vs-sdpa``: fp32, causal, B = 1, H = 4, D = 64 and 128, N = 1024,
4096 and 16384; --quick: N = 1024): the cpp LSSA kernel beside PyTorch's
``F.scaled_dot_product_attention(is_causal=True)`` (softmax; on the CPU it picks its flash kernel),
in the same process, SDPA the baseline so that the table's speedup column is the ratio. Goal: cpp
within 1.5x of SDPA's time (speedup >= 1/1.5), forward and forward+backward. Above N = 4096 the
float64 oracles check the forward only (``CPU_FWD_ONLY_ORACLE_ABOVE``: their chunked backward in
float64 would take minutes on two cores); the gradients are still timed.

Oracle: the chunked reference in float64 (``nlseq.reference.softplus_attention``; the tests check
it against the naive N×N definition), forward and explicit backward, so that large N fits.
"""

from __future__ import annotations

import functools
import math

import torch

import nlseq
from nlseq.bench import Case, Goal, Impl
from nlseq.reference import softplus_attention as ref

FAMILY = "softplus_attention"

# fp32: float32 scores of size <= ln D · ln N (~25) and sums over N keys; outputs are convex
# combinations of v ~ N(0, 1). The test suite's bounds (2e-5; gradients 1e-4, p = 15 2e-3).
# bf16: outputs rounded once (2^-8) and, on the GPU kernels, the weights rounded to bf16 before
# the P·V product: 2e-2 relative plus 2e-2 absolute for values near 0. LSSAR p = 15 amplifies the
# rounding of the scores fifteenfold where N a − 1 is small: 5e-2.
TOL = {
    (torch.float32, None): (2e-5, 2e-5),
    (torch.float32, 15.0): (1e-4, 1e-4),
    (torch.bfloat16, None): (2e-2, 2e-2),
    (torch.bfloat16, 15.0): (5e-2, 5e-2),
}
GRAD_TOL = {
    (torch.float32, None): (1e-4, 1e-4),
    (torch.float32, 15.0): (2e-3, 1e-3),
    (torch.bfloat16, None): (5e-2, 5e-2),
    (torch.bfloat16, 15.0): (1e-1, 1e-1),
}


def inputs(B, H, N, D, dtype, device):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    return {
        "q": q.to(device=device, dtype=dtype),
        "k": k.to(device=device, dtype=dtype),
        "v": v.to(device=device, dtype=dtype),
    }


def _oracle(q, k, v, *, p):
    o, _ = ref.softplus_attention_fwd(q, k, v, True, p, True, 0, None, None)
    return o


def _oracle_grads(inputs64, grad_outputs, *, p):
    q, k, v = inputs64["q"], inputs64["k"], inputs64["v"]
    o, stats = ref.softplus_attention_fwd(q, k, v, True, p, True, 0, None, None)
    dq, dk, dv = ref.softplus_attention_bwd(q, k, v, o, grad_outputs[0], stats, True, p, True, 0, None, None)
    return {"q": ref.norm_backward(q, dq), "k": ref.norm_backward(k, dk), "v": dv}


def _nlseq(backend, q, k, v, *, p):
    return nlseq.softplus_attention(q, k, v, reweight_p=p, backend=backend)


# ---------------------------------------------------------------- GPU peers
@functools.lru_cache(maxsize=None)
def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def _causal_block_mask(N, device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, N, N, device=device)


def _softplus(x):
    return torch.nn.functional.softplus(x, beta=1.0, threshold=20.0)


def _flex_lssa(q, k, v, *, p=None):
    """FlexAttention with score_mod = log softplus(c_i q̂·k̂): LSSA (docs/spec.md §2 identity)."""
    D, N = q.shape[-1], q.shape[2]
    log_d = math.log(D)
    qh, kh = ref.normalize(q), ref.normalize(k)

    def log_softplus(score, b, h, qi, ki):
        c = log_d * torch.log((qi + 1).to(torch.float32))
        return torch.log(_softplus(score * c))

    mask = _causal_block_mask(N, q.device)
    if p is None:
        return _flex()(qh, kh, v, score_mod=log_softplus, block_mask=mask, scale=1.0)
    # LSSAR: two calls; the first returns log L_i (the logsumexp of log softplus)
    _, lse = _flex()(qh, kh, v, score_mod=log_softplus, block_mask=mask, scale=1.0, return_lse=True)
    L = lse.exp()

    def reweight(score, b, h, qi, ki):
        n = (qi + 1).to(torch.float32)
        c = log_d * torch.log(n)
        base = n * _softplus(score * c) / L[b, h, qi] - (qi >= 3).to(torch.float32)
        return torch.where(base > 0, p * torch.log(base.clamp_min(1e-30)), -float("inf"))

    return _flex()(qh, kh, v, score_mod=reweight, block_mask=mask, scale=1.0)


def _sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _softmax_oracle(q, k, v):
    """float64 causal softmax attention, chunked over queries (the SDPA case's oracle)."""
    N, D = q.shape[2], q.shape[3]
    out = torch.empty_like(q)
    j = torch.arange(N, device=q.device)
    for s in range(0, N, 1024):
        i = torch.arange(s, min(s + 1024, N), device=q.device)
        sc = (q[:, :, i] @ k.transpose(-1, -2)) / math.sqrt(D)
        sc = sc.masked_fill(j[None, :] > i[:, None], -math.inf)
        out[:, :, i] = torch.softmax(sc, -1) @ v
    return out


def _softmax_oracle_grads(inputs64, grad_outputs):
    """dq, dk, dv of :func:`_softmax_oracle`, chunk by chunk, recomputing the probabilities: autograd
    through the chunks would keep every chunk's [B, H, 1024, N] float64 probabilities (52 GB at
    B = 8, H = 12, N = 8192), this keeps one chunk's."""
    q, k, v = inputs64["q"], inputs64["k"], inputs64["v"]
    (do,) = grad_outputs
    N, D = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(D)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    j = torch.arange(N, device=q.device)
    for s in range(0, N, 1024):
        i = torch.arange(s, min(s + 1024, N), device=q.device)
        sc = (q[:, :, i] @ k.transpose(-1, -2)) * scale
        P = torch.softmax(sc.masked_fill(j[None, :] > i[:, None], -math.inf), -1)
        dv += P.transpose(-1, -2) @ do[:, :, i]
        dP = do[:, :, i] @ v.transpose(-1, -2)
        dS = P * (dP - (dP * P).sum(-1, keepdim=True)) * scale
        dq[:, :, i] = dS @ k
        dk += dS.transpose(-1, -2) @ q[:, :, i]
    return {"q": dq, "k": dk, "v": dv}


def _flex_skip() -> str:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError as e:
        return f"FlexAttention is not in this torch ({e})"
    return ""


def _flops(B, H, N, D):
    fwd = 2 * B * H * N * N * D  # docs/spec.md §2.1: causal forward
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwdbwd": 3.5 * fwd}


FWD_ONLY_ORACLE_ABOVE = 8192  # N above which the float64 oracle checks the forward only
CPU_FWD_ONLY_ORACLE_ABOVE = 4096  # the same on the CPU (the float64 backward at 16384 takes minutes)
CPU_SDPA_RATIO = 1.5  # issue 15: cpp LSSA at most 1.5x SDPA's time on the CPU


def _case(
    name,
    device,
    dtype,
    B,
    H,
    N,
    D,
    *,
    p,
    impls,
    baseline,
    note="",
    mem_estimate=None,
    goals=(),
    headline=False,
    check_grads=None,
):
    atol, rtol = TOL[(dtype, p)]
    return Case(
        family=FAMILY,
        name=name,
        device=device,
        dtype=dtype,
        shape={"B": B, "H": H, "N": N, "D": D},
        inputs=functools.partial(inputs, B, H, N, D, dtype, device),
        oracle=functools.partial(_oracle, p=p),
        oracle_grads=functools.partial(_oracle_grads, p=p),
        impls=impls,
        grad_inputs=("q", "k", "v"),
        output_names=("o",),
        atol=atol,
        rtol=rtol,
        grad_tol=GRAD_TOL[(dtype, p)],
        tolerance_note="float32 scores and sums; bf16: output and P rounded to bf16 (see module docstring)",
        baseline=baseline,
        flops=_flops(B, H, N, D),
        mem_estimate=mem_estimate or {},
        note=note,
        goals=goals,
        check_grads=N <= FWD_ONLY_ORACLE_ABOVE if check_grads is None else check_grads,
        headline=headline,
    )


def _sdpa_impl(B, H, N, D, dtype, device, *, name="sdpa-flash", fn=_sdpa_flash, tol=(2e-2, 2e-2), note=""):
    """SDPA (softmax attention) as the speed bar inside the LSSA / LSSAR case: the flash kernel on
    the GPU; on the CPU whatever ``is_causal=True`` picks (``fn=_sdpa``)."""
    return Impl(
        name,
        fn,
        inputs=functools.partial(inputs, B, H, N, D, dtype, device),
        oracle=_softmax_oracle,
        oracle_grads=_softmax_oracle_grads,
        grad_inputs=("q", "k", "v"),
        tol=tol,
        note=note or "softmax attention (the speed bar, not LSSA): checked against float64 softmax attention",
    )


def _gpu_cases(device, quick):
    bf16 = torch.bfloat16
    out = []
    sizes = (
        [(4, 16, 4096, 128)]
        if quick
        else [(4, 16, 16384, 128), (4, 16, 4096, 128), (8, 12, 1024, 64), (8, 12, 8192, 64)]
    )
    for B, H, N, D in sizes:
        for p in (None, 15.0):
            ref_ok = N <= 4096  # the eager reference: timed up to 4096, forward-checked only above
            impls = [
                Impl("triton", functools.partial(_nlseq, "triton", p=p), backend="triton"),
                Impl(
                    "flex",
                    functools.partial(_flex_lssa, p=p),
                    skip=_flex_skip(),
                    note="FlexAttention, score_mod = log softplus" + ("; two calls (LSSAR)" if p else ""),
                ),
                Impl(
                    "reference",
                    functools.partial(_nlseq, "reference", p=p),
                    backend="reference",
                    timed=ref_ok,
                    backward=N <= FWD_ONLY_ORACLE_ABOVE,
                    note="" if ref_ok else "checked (forward), not timed at this N",
                ),
                _sdpa_impl(B, H, N, D, bf16, device),
            ]
            if p is None:
                goals = tuple(
                    Goal(
                        ("triton",), m, speedup=1.0, over="sdpa-flash", text="issue 4: LSSA at least SDPA flash's speed"
                    )
                    for m in ("fwd", "fwdbwd")
                )
                goals += tuple(
                    Goal(("triton",), m, speedup=2.5, over="flex", text="issue 4: >= 2.5x FlexAttention")
                    for m in ("fwd", "fwdbwd")
                )
            else:
                goals = tuple(
                    Goal(("triton",), m, speedup=0.6, over="sdpa-flash", text="issue 4: LSSAR >= 0.6x SDPA flash")
                    for m in ("fwd", "fwdbwd")
                )
            out.append(
                _case(
                    "lssa" if p is None else "lssar-p15",
                    device,
                    bf16,
                    B,
                    H,
                    N,
                    D,
                    p=p,
                    impls=impls,
                    baseline="sdpa-flash",
                    goals=goals,
                    headline=(B, H, N, D) == (4, 16, 16384, 128),
                    note="docs/spec.md §2.1 anchor for SDPA flash: 307/256 TFLOP/s at 4096, 342/318 at 16384 "
                    "(fwd / fwd+bwd)",
                )
            )
    return out


def _cpu_cases(quick):
    f32 = torch.float32
    cpu = torch.device("cpu")
    B, H, D = 1, 4, 64
    N = 1024 if quick else 4096
    out = []
    for p in (None, 15.0):
        # Peak extra bytes of one fwd+bwd (model): cpp keeps O(T·D): o, stats, the float32 dq̂, dk̂, dv
        # (turned into the gradients in place), ~5·B·H·N·D·4, plus per-thread tiles of 64x256 scores.
        # The reference keeps ~8 float32 [B, H, 256, N] temporaries per chunk of 256 query rows.
        est = {
            "cpp": 5 * B * H * N * D * 4 + 2 * 4 * 64 * 256 * 4,
            "reference": 8 * B * H * 256 * N * 4 + 8 * B * H * N * D * 4,
        }
        impls = [
            Impl("cpp", functools.partial(_nlseq, "cpp", p=p), backend="cpp"),
            Impl(
                "reference",
                functools.partial(_nlseq, "reference", p=p),
                backend="reference",
                timed=not quick,
                note="" if not quick else "--quick: checked, not timed",
            ),
        ]
        out.append(
            _case(
                "lssa" if p is None else "lssar-p15",
                cpu,
                f32,
                B,
                H,
                N,
                D,
                p=p,
                impls=impls,
                baseline="reference",
                mem_estimate=est,
                headline=p is None,
                goals=()
                if quick
                else (Goal(("cpp",), "fwdbwd", speedup=1.0, text="issue 4: cpp faster than the reference"),),
                note="goal: cpp faster than the reference, peak memory < 1/10 of it",
            )
        )
    out += _cpu_sdpa_cases(quick)
    # Triton interpreter: correctness only, tiny (T prime, D not a power of two); cpp timed against
    # the reference there too (cheap: the GPU check's dry run times it).
    out.append(
        _case(
            "lssar-p15-tiny",
            cpu,
            f32,
            1,
            2,
            37,
            24,
            p=15.0,
            baseline="reference",
            impls=[
                Impl("cpp", functools.partial(_nlseq, "cpp", p=15.0), backend="cpp"),
                Impl("reference", functools.partial(_nlseq, "reference", p=15.0), backend="reference"),
                Impl(
                    "triton",
                    functools.partial(_nlseq, "triton", p=15.0),
                    backend="triton",
                    timed=False,
                    note="Triton interpreter on the CPU: correctness only",
                ),
            ],
        )
    )
    return out


def _cpu_sdpa_cases(quick):
    """Issue 15: cpp LSSA beside SDPA on the CPU, fp32, causal, B = 1, H = 4 (module docstring)."""
    f32 = torch.float32
    cpu = torch.device("cpu")
    B, H = 1, 4
    out = []
    for D in (64, 128):
        for N in (1024,) if quick else (1024, 4096, 16384):
            # Peak extra bytes of one fwd+bwd (model): o and stats, the float32 dq̂, dk̂, dv, and
            # per thread two 128x256 score tiles and a few [tile, D] buffers.
            est = {"cpp": 5 * B * H * N * D * 4 + 2 * (2 * 128 * 256 + 8 * 256 * D) * 4}
            goals = tuple(
                Goal(
                    ("cpp",),
                    m,
                    speedup=1 / CPU_SDPA_RATIO,
                    over="sdpa",
                    text=f"issue 15: cpp LSSA at most {CPU_SDPA_RATIO}x SDPA's time on the CPU",
                )
                for m in ("fwd", "fwdbwd")
            )
            check_grads = N <= CPU_FWD_ONLY_ORACLE_ABOVE
            impls = [
                Impl("cpp", functools.partial(_nlseq, "cpp", p=None), backend="cpp"),
                _sdpa_impl(
                    B,
                    H,
                    N,
                    D,
                    f32,
                    cpu,
                    name="sdpa",
                    fn=_sdpa,
                    # float32 softmax attention: rounding of O(1e-6) in o, a few 1e-6 in the
                    # gradients summed over N rows; an indexing or masking error is O(1)
                    tol=(1e-4, 1e-4),
                    note="F.scaled_dot_product_attention(is_causal=True), softmax (the speed bar, not "
                    "LSSA): checked against float64 softmax attention",
                ),
            ]
            out.append(
                _case(
                    "lssa-vs-sdpa",
                    cpu,
                    f32,
                    B,
                    H,
                    N,
                    D,
                    p=None,
                    impls=impls,
                    baseline="sdpa",
                    mem_estimate=est,
                    goals=goals,
                    check_grads=check_grads,
                    note=f"goal: cpp <= {CPU_SDPA_RATIO}x SDPA's time (speedup >= {1 / CPU_SDPA_RATIO:.2f}), fwd and "
                    "fwd+bwd"
                    + ("" if check_grads else f"; N > {CPU_FWD_ONLY_ORACLE_ABOVE}: oracle checks the forward only"),
                )
            )
    return out


def cases(device: torch.device, quick: bool) -> list[Case]:
    if device.type == "cuda":
        return _gpu_cases(device, quick)
    return _cpu_cases(quick)
