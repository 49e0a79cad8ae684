"""Paired CPU ratios of issue 15 (ParaRNN and the analog LSTM / GRU against their peers), robust
to a shared machine: every repetition runs the nlseq call and its peer back to back, in this
process, and the figures are the ratio of the two minima (the closest to a quiet machine) and the
median of the per-pair time ratios (a burst of load that hits one pair hits both of its calls;
under load, code with more parallel regions per call suffers more), with the load average.

    PYTHONPATH=python python benchmarks/rnn_cpu_paired.py [--pairs 9] [--only pararnn|analog]

Pairs (fp32, torch's thread count):
    projection          nlseq.ops.pararnn_projection.input_projection   vs torch.bmm of the same
                        block-diagonal product (allocating its output, as the projection does)
    recurrence          nlseq.pararnn("gru", U, A, mode="sequential", backend="cpp")
                        vs the eager loop nlseq.reference.pararnn.pararnn_sequential from the same U
    module fwd          ParaGRU(backend="cpp") under no_grad   vs the eager module (reference
                        projection + eager loop) under no_grad
    module fwd+bwd      the same with autograd into x and every parameter (the eager one through the
                        loop's graph); T = --bwd-T (default 1024: the eager graph over 4096 steps
                        takes seconds per call)
    analog lstm / gru   nlseq.nn.AnalogLSTM / AnalogGRU (cpp, noise on; the bench case's modules)
                        vs torch.nn.LSTM / GRU with the same weights, T64 B8 H128
Results are checked before timing (the bench cases check them against float64 oracles).
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


def _paired(ours, peer, pairs):
    ours()
    peer()
    t_o, t_p, ratio = [], [], []
    for i in range(pairs):
        order = (ours, peer) if i % 2 == 0 else (peer, ours)  # alternate who goes first
        ts = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            ts[fn] = time.perf_counter() - t0
        t_o.append(ts[ours])
        t_p.append(ts[peer])
        ratio.append(ts[peer] / ts[ours])
    return min(t_o) * 1e3, min(t_p) * 1e3, statistics.median(ratio)


def _report(name, pairs, ours, peer):
    la = os.getloadavg()[0]
    mo, mp, r = _paired(ours, peer, pairs)
    print(
        f"{name:18s} ours min {mo:9.3f} ms  peer min {mp:9.3f} ms  peer/ours: of the minima {mp / mo:6.2f}x, "
        f"median of pairs {r:6.2f}x  "
        f"(load {la:.2f} -> {os.getloadavg()[0]:.2f})",
        flush=True,
    )


def pararnn_pairs(args):
    torch.manual_seed(0)
    B, T, N, heads = 4, args.T, 256, 2
    m = ParaGRU(N, N, heads=heads, backend="cpp")
    x = torch.randn(B, T, N)
    W, b, A = m.weight_ih.detach(), m.bias.detach(), m.weight_hh.detach()
    heads_, ih, G, nh = W.shape
    xh = x.reshape(B * T, heads_, ih).transpose(0, 1)
    Wh = W.reshape(heads_, ih, G * nh)
    U = ref.input_projection(x, W, b)
    assert (input_projection(x, W, b) - U).abs().max() < 1e-4
    with torch.no_grad():
        y = m(x)[0]
        y_eager = ref.pararnn_sequential("gru", U, A, None, None)[:, :, -1]
    assert (y - y_eager).abs().max() < 1e-4

    def eager_fwd():
        with torch.no_grad():
            ref.pararnn_sequential("gru", ref.input_projection(x, W, b), A, None, None)

    def module_fwd():
        with torch.no_grad():
            m(x)

    print(f"ParaGRU B={B} T={T} N=I={N} heads={heads} fp32, {torch.get_num_threads()} threads, {args.pairs} pairs")
    _report("projection", args.pairs, lambda: input_projection(x, W, b), lambda: torch.bmm(xh, Wh))
    _report(
        "recurrence",
        max(3, args.pairs // 3),
        lambda: nlseq.pararnn("gru", U, A, mode="sequential", backend="cpp"),
        lambda: ref.pararnn_sequential("gru", U, A, None, None),
    )
    _report("module fwd", max(3, args.pairs // 3), module_fwd, eager_fwd)

    Tb = args.bwd_T
    xb = x[:, :Tb].clone().requires_grad_()
    gy = torch.randn(B, Tb, N)
    Wg, bg, Ag = (t.clone().requires_grad_() for t in (W, b, A))

    def module_fwdbwd():
        yb, _ = m(xb)
        torch.autograd.grad(yb, (xb, *m.parameters()), gy)

    def eager_fwdbwd():
        S = ref.pararnn_sequential("gru", ref.input_projection(xb, Wg, bg), Ag, None, None)
        torch.autograd.grad(S[:, :, -1], (xb, Wg, bg, Ag), gy)

    print(f"fwd+bwd at T={Tb}")
    _report("module fwd+bwd", max(3, args.pairs // 3), module_fwdbwd, eager_fwdbwd)


def analog_pairs(args):
    from nlseq.bench.cases import analog as A

    x = A.lstm_inputs()["x"]
    print(f"analog T64 B8 H128, 5-bit NL-ADCs, read/output noise on, {torch.get_num_threads()} threads")
    for kind in ("LSTM", "GRU"):
        digital, analog = A._rnn_modules(kind)
        m = analog["cpp"]

        def ours(m=m):
            m.reset_noise()
            with torch.no_grad():
                m(x)

        def peer(d=digital):
            with torch.no_grad():
                d(x)

        _report(f"analog {kind.lower()}", args.pairs * 5, ours, peer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--bwd-T", type=int, default=1024)
    ap.add_argument("--only", choices=("pararnn", "analog"))
    args = ap.parse_args()
    print(f"torch {torch.__version__}; the machine may be shared: load averages beside each row")
    if args.only != "analog":
        pararnn_pairs(args)
    if args.only != "pararnn":
        analog_pairs(args)


if __name__ == "__main__":
    main()
