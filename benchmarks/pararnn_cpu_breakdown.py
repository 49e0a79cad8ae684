"""Where the time of a ParaGRU forward goes on the CPU: the fused recurrence from U against the eager
loop, and the whole module (input projection GEMM included) against the eager module.

    PYTHONPATH=python python benchmarks/pararnn_cpu_breakdown.py [--B 4 --T 4096 --N 256 --heads 2 --runs 10]

Rows (fp32, I = N, torch's default thread count):
    projection         nlseq.ops.pararnn_projection.input_projection (the C++ row-split GEMMs, the module's)
    projection-ref     nlseq.reference.pararnn.input_projection (G baddbmm into U's gate views)
    projection-einsum  the einsum formulation, for comparison
    bmm peer           torch.bmm of the same block-diagonal product ([heads, M, I/heads] @ [heads, I/heads, 3N/heads],
                       the same FLOPs), allocating its output as the projection must
    bmm peer (out=)    the same into a preallocated output (no allocation: the GEMM alone)
    op fwd             nlseq.pararnn("gru", U, A, mode="sequential", backend="cpp") from a given U
    op fwd+bwd         the same, then backward of y = S_all[..., -1] into U and A
    loop fwd           nlseq.reference.pararnn.pararnn_sequential from the same U (eager, one step per t)
    module fwd         ParaGRU(backend="cpp", mode="auto") under no_grad (projection + fused recurrence)
    module fwd+bwd     the same with autograd, backward into x and every parameter
    eager module fwd   reference projection + eager loop under no_grad
    eager module fwd+bwd  the same with autograd through the loop (--eager-bwd; slow)
The ratios at the end are of medians measured here, in this process.
Each row: median and interquartile range of --runs timed calls after one warm-up call
(time.perf_counter around the call). Before timing, the op's and module's y are checked against
a float64 run of the eager loop, so a wrong kernel cannot post a time. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import nlseq
from nlseq.nn import ParaGRU
from nlseq.ops.pararnn_projection import input_projection
from nlseq.reference import pararnn as ref


def _einsum_projection(x, W, b):
    heads, ih, G, nh = W.shape
    B, T, _ = x.shape
    return torch.einsum("bthi,higj->btghj", x.reshape(B, T, heads, ih), W).reshape(B, T, G, heads * nh) + b


def _time(fn, runs):
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    q = statistics.quantiles(ts, n=4)
    return statistics.median(ts) * 1e3, (q[2] - q[0]) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--eager-bwd", action="store_true", help="also time the eager module's forward+backward")
    args = ap.parse_args()
    B, T, N, runs = args.B, args.T, args.N, args.runs

    torch.manual_seed(0)
    m = ParaGRU(N, N, heads=args.heads, backend="cpp", mode="auto")
    x = torch.randn(B, T, N)
    W, b, A = m.weight_ih.detach(), m.bias.detach(), m.weight_hh.detach()
    U = ref.input_projection(x, W, b)

    y64 = ref.pararnn_sequential("gru", U.double(), A.double(), None, None)[..., -1, :]
    y_op = nlseq.pararnn("gru", U, A, mode="sequential", backend="cpp")[..., -1, :]
    with torch.no_grad():
        y_mod, _ = m(x)
    y_mod64 = ref.pararnn_sequential(
        "gru", ref.input_projection(x.double(), W.double(), b.double()), A.double(), None, None
    )[..., -1, :]
    err_op = (y_op.double() - y64).abs().max().item()
    err_mod = (y_mod.double() - y_mod64).abs().max().item()
    assert err_op < 1e-4 and err_mod < 1e-4, f"wrong result: op error {err_op:.2e}, module error {err_mod:.2e}"

    Ug = U.clone().requires_grad_()
    Ag = A.clone().requires_grad_()
    gy = torch.randn(B, T, N)
    xg = x.clone().requires_grad_()

    def op_fwdbwd():
        y = nlseq.pararnn("gru", Ug, Ag, mode="sequential", backend="cpp")[..., -1, :]
        torch.autograd.grad(y, (Ug, Ag), gy)

    def module_fwd():
        with torch.no_grad():
            m(x)

    def module_fwdbwd():
        y, _ = m(xg)
        torch.autograd.grad(y, (xg, *m.parameters()), gy)

    def eager_module():
        with torch.no_grad():
            ref.pararnn_sequential("gru", ref.input_projection(x, W, b), A, None, None)

    Wg, bg, Ag = (t.clone().requires_grad_() for t in (W, b, A))

    def eager_module_fwdbwd():
        y = ref.pararnn_sequential("gru", ref.input_projection(xg, Wg, bg), Ag, None, None)[..., -1, :]
        torch.autograd.grad(y, (xg, Wg, bg, Ag), gy)

    heads, ih, G, nh = W.shape
    xh = x.reshape(B * T, heads, ih).transpose(0, 1)
    Wh = W.reshape(heads, ih, G * nh)
    out = torch.empty(heads, B * T, G * nh)
    assert (
        input_projection(x, W, b).double() - ref.input_projection(x.double(), W.double(), b.double())
    ).abs().max() < 1e-4

    rows = [
        ("projection", lambda: input_projection(x, W, b)),
        ("projection-ref", lambda: ref.input_projection(x, W, b)),
        ("projection-einsum", lambda: _einsum_projection(x, W, b)),
        ("bmm peer", lambda: torch.bmm(xh, Wh)),
        ("bmm peer (out=)", lambda: torch.bmm(xh, Wh, out=out)),
        ("op fwd", lambda: nlseq.pararnn("gru", U, A, mode="sequential", backend="cpp")),
        ("op fwd+bwd", op_fwdbwd),
        ("loop fwd", lambda: ref.pararnn_sequential("gru", U, A, None, None)),
        ("module fwd", module_fwd),
        ("module fwd+bwd", module_fwdbwd),
        ("eager module fwd", eager_module),
    ]
    if args.eager_bwd:
        rows.append(("eager module fwd+bwd", eager_module_fwdbwd))
    print(
        f"ParaGRU B={B} T={T} N=I={N} heads={args.heads} fp32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median (IQR) of {runs} runs; max |y - y64|: op {err_op:.1e}, "
        f"module {err_mod:.1e}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    med = {}
    for name, fn in rows:
        med[name], iqr = _time(fn, runs)
        print(f"{name:20s} {med[name]:9.2f} ms  ({iqr:.2f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ratios = [
        ("projection / bmm peer", med["projection"] / med["bmm peer"]),
        ("projection / bmm peer (out=)", med["projection"] / med["bmm peer (out=)"]),
        ("loop fwd / op fwd", med["loop fwd"] / med["op fwd"]),
        ("eager module fwd / module fwd", med["eager module fwd"] / med["module fwd"]),
    ]
    if args.eager_bwd:
        ratios.append(("eager module fwd+bwd / module fwd+bwd", med["eager module fwd+bwd"] / med["module fwd+bwd"]))
    for name, r in ratios:
        print(f"{name:40s} {r:6.2f}x")


if __name__ == "__main__":
    main()
