"""Length extrapolation at small scale: softmax vs LSSA vs LSSAR, trained short, evaluated up to 16× longer.

The claim under test (Gao & Spratling, 2025; docs/spec.md §2): a decoder trained at length L with
softplus attention and power re-weighting (LSSAR, p = 15) keeps its validation loss nearly flat
at 2×–8× L, where softmax attention and plain LSSA degrade. Their headline, GPT-2 small + RoPE
trained at 1024 tokens, validation loss at 1×/2×/4×/8×: softmax 3.19/4.17/5.45/6.28, LSSA
3.19/4.13/5.30/5.94, LSSAR p = 15 3.19/3.19/3.23/3.32.

Here: a byte-level decoder (pre-norm, RoPE, GELU MLP) on real English text (Vim's help files,
experiments/_data.py), one model per method and seed, identical data order and initialisation
per seed:

    softmax       torch SDPA (1/√D scaling), RoPE
    lssa          nlseq.nn.SoftplusAttention (QK-norm, ln D · ln N_i scale), RoPE
    lssar15       the same with reweight_p = 15 during training and evaluation
    lssar3        reweight_p = 3
    lssa+rw15     the lssa model evaluated with reweight_p = 15, no retraining

Validation loss (nats/byte) at 1×, 2×, 4×, 8×, 16× the training length, over the whole window
and over the positions past the training length only.

    python experiments/length_extrapolation/run.py            (default: ~10 min on 2 CPU cores)
    python experiments/length_extrapolation/run.py --smoke    (seconds; CI)
    python experiments/length_extrapolation/run.py --preset gpu --device cuda   (L = 512, ≥ 10M params)

Writes results.json, results.md and loss.png into results/ beside this file (``--out`` to
change); ``--publish`` also copies them over the committed ones in this folder.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn as tnn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _data import VOCAB, batches, eval_windows, load_corpus, machine  # noqa: E402
from _report import write_results  # noqa: E402
from nlseq.nn import SoftplusAttention, rotary_embedding  # noqa: E402

PAPER = {
    "lengths": ["1K", "2K", "4K", "8K"],
    "softmax": [3.19, 4.17, 5.45, 6.28],
    "lssa": [3.19, 4.13, 5.30, 5.94],
    "lssar15": [3.19, 3.19, 3.23, 3.32],
}
METHODS = {"softmax": None, "lssa": None, "lssar15": 15.0, "lssar3": 3.0}
PRESETS = {
    "cpu": dict(
        layers=2,
        d=128,
        heads=4,
        train_len=64,
        batch=32,
        steps=600,
        lr=3e-3,
        seeds=2,
        eval_windows=24,
        factors=(1, 2, 4, 8, 16),
    ),
    "gpu": dict(
        layers=6,
        d=384,
        heads=6,
        train_len=512,
        batch=32,
        steps=3000,
        lr=1e-3,
        seeds=2,
        eval_windows=32,
        factors=(1, 2, 4, 8, 16),
    ),
    "smoke": dict(
        layers=1, d=32, heads=2, train_len=16, batch=4, steps=3, lr=3e-3, seeds=1, eval_windows=2, factors=(1, 2)
    ),
}


class SoftmaxAttention(tnn.Module):
    """The softmax baseline with the same projections and RoPE as nlseq.nn.SoftplusAttention."""

    def __init__(self, d: int, heads: int, rope_theta: float):
        super().__init__()
        self.h, self.hd, self.theta = heads, d // heads, rope_theta
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (tnn.Linear(d, d, bias=False) for _ in range(4))
        self.reweight_p = None  # interface parity with SoftplusAttention

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, self.h, self.hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        pos = torch.arange(T, device=x.device)
        q, k = rotary_embedding(q, pos, self.theta), rotary_embedding(k, pos, self.theta)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1)), None


class Block(tnn.Module):
    def __init__(self, d, heads, method, rope_theta, backend):
        super().__init__()
        self.ln1, self.ln2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
        if method == "softmax":
            self.attn = SoftmaxAttention(d, heads, rope_theta)
        else:
            self.attn = SoftplusAttention(d, heads, reweight_p=METHODS[method], rope_theta=rope_theta, backend=backend)
        self.mlp = tnn.Sequential(tnn.Linear(d, 4 * d), tnn.GELU(), tnn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))[0]
        return x + self.mlp(self.ln2(x))


class LM(tnn.Module):
    def __init__(self, cfg, method, backend):
        super().__init__()
        self.embed = tnn.Embedding(VOCAB, cfg["d"])
        self.blocks = tnn.ModuleList(
            Block(cfg["d"], cfg["heads"], method, 10000.0, backend) for _ in range(cfg["layers"])
        )
        self.ln = tnn.LayerNorm(cfg["d"])
        self.head = tnn.Linear(cfg["d"], VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (tnn.Linear, tnn.Embedding)):
            tnn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                tnn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h))

    def set_reweight(self, p):
        for b in self.blocks:
            b.attn.reweight_p = p


def train(cfg, method, seed, corpus, device, backend, log):
    torch.manual_seed(seed)
    model = LM(cfg, method, backend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, cfg["steps"]) / cfg["steps"]))
    )
    data = batches(corpus.train, cfg["batch"], cfg["train_len"], torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for step in range(cfg["steps"]):
        x, y = (t.to(device) for t in next(data))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        if not torch.isfinite(loss):
            raise RuntimeError(f"{method} seed {seed}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, cfg["steps"] // 6) == 0 or step == cfg["steps"] - 1:
            log(f"  {method:8s} seed {seed} step {step:5d} loss {loss.item():.3f}")
    return model, time.perf_counter() - t0


@torch.no_grad()
def evaluate(model, cfg, corpus, device):
    """{factor: (loss over the window, loss past the training length)} in nats/byte."""
    model.eval()
    L = cfg["train_len"]
    out = {}
    for f in cfg["factors"]:
        n = L * f
        w = eval_windows(corpus.valid, n, cfg["eval_windows"], seed=1000 + f).to(device)
        losses = []
        for i in range(0, w.shape[0], 4):
            chunk = w[i : i + 4]
            logits = model(chunk[:, :-1])
            losses.append(
                F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="none").view(
                    chunk.shape[0], n
                )
            )
        per_pos = torch.cat(losses).mean(0)
        out[f] = (per_pos.mean().item(), per_pos[L:].mean().item() if f > 1 else per_pos.mean().item())
    model.train()
    return out


def plot(results, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axp) = plt.subplots(1, 2, figsize=(11, 4.2))
    lengths = [cfg["train_len"] * f for f in cfg["factors"]]
    for name, r in results["methods"].items():
        mean = [r["mean"][str(f)][0] for f in cfg["factors"]]
        ax.plot(lengths, mean, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"evaluation length (bytes; trained at {cfg['train_len']})")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title("nlseq, this run (mean over seeds)")
    ax.legend()
    for name in ("softmax", "lssa", "lssar15"):
        axp.plot([1, 2, 4, 8], PAPER[name], marker="s", label=name)
    axp.set_xscale("log", base=2)
    axp.set_xticks([1, 2, 4, 8], PAPER["lengths"])
    axp.set_xlabel("evaluation length (trained at 1K tokens)")
    axp.set_ylabel("validation loss (nats/token)")
    axp.set_title("paper (GPT-2 small + RoPE)")
    axp.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results, cfg) -> str:
    fs = cfg["factors"]
    head = "| method | " + " | ".join(f"{f}× ({cfg['train_len'] * f})" for f in fs) + " |"
    lines = [head, "|---|" + "---:|" * len(fs)]
    for name, r in results["methods"].items():
        cells = []
        for f in fs:
            m, sd = r["mean"][str(f)], r["std"][str(f)]
            cells.append(f"{m[0]:.3f} ± {sd[0]:.3f}" + (f" / {m[1]:.3f}" if f > 1 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--smoke", action="store_true", help="the smoke preset (seconds), for CI")
    ap.add_argument("--data", default=None, help="folder of text files (default: Vim's help files)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", help="nlseq backend of the softplus attention")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--publish", action="store_true", help="also copy the results over the committed ones here")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS["smoke" if args.smoke else args.preset])
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    if args.steps is not None:
        cfg["steps"] = args.steps
    corpus = load_corpus(args.data, max_bytes=300_000 if args.smoke else None)
    os.makedirs(args.out, exist_ok=True)
    log = print
    log(f"corpus {corpus.describe()}")
    t_start = time.perf_counter()
    raw = {m: [] for m in (*METHODS, "lssa+rw15")}
    times = {m: [] for m in METHODS}
    for seed in range(cfg["seeds"]):
        for method in METHODS:
            model, secs = train(cfg, method, seed, corpus, args.device, args.backend, log)
            times[method].append(secs)
            raw[method].append(evaluate(model, cfg, corpus, args.device))
            if method == "lssa":
                model.set_reweight(15.0)
                raw["lssa+rw15"].append(evaluate(model, cfg, corpus, args.device))
    methods = {}
    for name, runs in raw.items():
        mean, std = {}, {}
        for f in cfg["factors"]:
            vals = torch.tensor([r[f] for r in runs], dtype=torch.float64)
            mean[str(f)] = vals.mean(0).tolist()
            std[str(f)] = (vals.std(0, unbiased=True) if len(runs) > 1 else torch.zeros(2)).tolist()
        methods[name] = {
            "mean": mean,
            "std": std,
            "runs": [{str(f): r[f] for f in r} for r in runs],
            "train_seconds": times.get(name, []),
        }
    params = sum(p.numel() for p in LM(cfg, "lssa", "reference").parameters())
    results = {
        "config": {**cfg, "factors": list(cfg["factors"]), "params": params},
        "corpus": corpus.describe(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - t_start,
        "methods": methods,
        "paper": PAPER,
    }
    md = (
        f"# Length extrapolation: softmax vs LSSA vs LSSAR\n\n{corpus.describe()}; {params / 1e6:.2f}M parameters, "
        f"{cfg['layers']} layers, d = {cfg['d']}, {cfg['heads']} heads, trained at {cfg['train_len']} bytes for "
        f"{cfg['steps']} steps × {cfg['batch']}, {cfg['seeds']} seed(s); {machine()}; "
        f"{results['seconds'] / 60:.1f} min; {results['date']}.\n\n"
        "Validation loss, nats/byte, mean ± std over seeds (whole window / positions past the training length):\n\n"
        + table(results, cfg)
        + "\n"
    )
    write_results(args.out, HERE, results, md, "loss.png", lambda p: plot(results, cfg, p), args.publish)
    return results


if __name__ == "__main__":
    main()
