"""ParaRNN's claim at small scale: training with parallel Newton equals training with the exact sequential pass.

The claim under test (Danieli et al., 2025; docs/spec.md §1): Newton's method on the whole
sequence (every step a parallel scan) reaches the sequential recurrence's solution in a few
iterations, so a model trained with it is the model trained sequentially. Here two byte-level
language models of ParaGRU (or ParaLSTM) blocks (nlseq.integrations.pararnn_lm, pre-norm
residual blocks with a SwiGLU MLP) start from identical weights and see identical batches; one
runs its recurrences with ``mode="newton"``, the other with ``mode="sequential"``. Reported: both
loss curves and their largest difference, the Newton iterations of every layer at every step (a
histogram), validation loss, and the time per training step of each, and of the same model with
torch.nn.GRU/LSTM (cuDNN on a GPU) as the recurrence.

    python experiments/pararnn_lm/run.py             (default: ~10 min on 2 CPU cores)
    python experiments/pararnn_lm/run.py --smoke     (seconds; CI)
    python experiments/pararnn_lm/run.py --preset gpu --device cuda

Writes results.json, results.md and curves.png into results/ beside this file (``--out``);
``--publish`` copies them over the committed ones in this folder.
"""

from __future__ import annotations

import argparse
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
from nlseq.integrations import pararnn_lm  # noqa: E402

PRESETS = {
    "cpu": dict(
        layers=2,
        d=128,
        heads=2,
        seq=128,
        batch=16,
        steps=500,
        lr=2e-3,
        cells=("gru", "lstm"),
        eval_windows=32,
        time_steps=20,
    ),
    "gpu": dict(
        layers=6,
        d=512,
        heads=2,
        seq=1024,
        batch=32,
        steps=2000,
        lr=1e-3,
        cells=("gru", "lstm"),
        eval_windows=64,
        time_steps=20,
    ),
    "smoke": dict(
        layers=1, d=16, heads=2, seq=24, batch=4, steps=3, lr=2e-3, cells=("gru", "lstm"), eval_windows=2, time_steps=1
    ),
}


def make(cfg, cell, mode, device, backend):
    config = pararnn_lm.ParaRNNConfig(
        vocab_size=VOCAB,
        hidden_size=cfg["d"],
        num_hidden_layers=cfg["layers"],
        cell=cell,
        heads=cfg["heads"],
        mode=mode,
        backend=backend,
        on_nonconvergence="raise",
        use_cache=False,
    )
    torch.manual_seed(0)
    return pararnn_lm.ParaRNNForCausalLM(config).to(device)


class TorchRNNLM(tnn.Module):
    """The same model with torch.nn.GRU / LSTM as the recurrence (dense recurrent weights; cuDNN on a GPU)."""

    def __init__(self, cfg, cell):
        super().__init__()
        d = cfg["d"]
        self.embed = tnn.Embedding(VOCAB, d)
        self.rnns = tnn.ModuleList(
            (tnn.GRU if cell == "gru" else tnn.LSTM)(d, d, batch_first=True) for _ in range(cfg["layers"])
        )
        self.out = tnn.ModuleList(tnn.Linear(d, d, bias=False) for _ in range(cfg["layers"]))
        self.mlp = tnn.ModuleList(
            tnn.Sequential(tnn.LayerNorm(d), tnn.Linear(d, 4 * d), tnn.SiLU(), tnn.Linear(4 * d, d))
            for _ in range(cfg["layers"])
        )
        self.norms = tnn.ModuleList(tnn.LayerNorm(d) for _ in range(cfg["layers"]))
        self.head = tnn.Linear(d, VOCAB, bias=False)

    def forward(self, x):
        h = self.embed(x)
        for rnn, out, mlp, norm in zip(self.rnns, self.out, self.mlp, self.norms):
            h = h + out(rnn(norm(h))[0])
            h = h + mlp(h)
        return self.head(h)


def newton_iterations(model) -> list[int]:
    return [int(layer.cell.last_info.iterations) for layer in model.model.layers]


def train_pair(cfg, cell, corpus, device, backend, log):
    models = {mode: make(cfg, cell, mode, device, backend) for mode in ("newton", "sequential")}
    models["sequential"].load_state_dict(models["newton"].state_dict())
    opts = {m: torch.optim.AdamW(models[m].parameters(), lr=cfg["lr"], weight_decay=0.01) for m in models}
    data = batches(corpus.train, cfg["batch"], cfg["seq"], torch.Generator().manual_seed(1))
    curves = {m: [] for m in models}
    iters, secs = [], {m: 0.0 for m in models}
    for step in range(cfg["steps"]):
        x, y = (t.to(device) for t in next(data))
        for mode, model in models.items():
            t0 = time.perf_counter()
            logits = model(x).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opts[mode].zero_grad(set_to_none=True)
            loss.backward()
            opts[mode].step()
            if device != "cpu":
                torch.cuda.synchronize()
            secs[mode] += time.perf_counter() - t0
            curves[mode].append(loss.item())
            if mode == "newton":
                iters.append(newton_iterations(model))
        if step % max(1, cfg["steps"] // 5) == 0 or step == cfg["steps"] - 1:
            log(
                f"  {cell} step {step:4d} loss newton {curves['newton'][-1]:.4f} sequential "
                f"{curves['sequential'][-1]:.4f} iterations {iters[-1]}"
            )
    return models, curves, iters, {m: secs[m] / cfg["steps"] for m in secs}


def time_torch_rnn(cfg, cell, corpus, device):
    steps = cfg["time_steps"]
    torch.manual_seed(0)
    model = TorchRNNLM(cfg, cell).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    data = batches(corpus.train, cfg["batch"], cfg["seq"], torch.Generator().manual_seed(1))
    total = 0.0
    for step in range(steps + 2):  # two warm-up steps
        x, y = (t.to(device) for t in next(data))
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        if step >= 2:
            total += time.perf_counter() - t0
    return total / steps


@torch.no_grad()
def validation_loss(model, cfg, corpus, device):
    model.eval()
    w = eval_windows(corpus.valid, cfg["seq"], cfg["eval_windows"]).to(device)
    logits = model(w[:, :-1]).logits
    model.train()
    return F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()).item()


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(results["cells"])
    fig, axes = plt.subplots(len(cells), 3, figsize=(13, 3.6 * len(cells)), squeeze=False)
    for row, cell in zip(axes, cells):
        r = results["cells"][cell]
        row[0].plot(r["loss_newton"], label="newton")
        row[0].plot(r["loss_sequential"], "--", label="sequential")
        row[0].set_title(f"Para{cell.upper()}: training loss")
        row[0].set_xlabel("step")
        row[0].legend()
        diff = [abs(a - b) for a, b in zip(r["loss_newton"], r["loss_sequential"])]
        row[1].semilogy([max(d, 1e-12) for d in diff])
        row[1].set_title("|loss newton − loss sequential| (floor 1e-12)")
        row[1].set_xlabel("step")
        hist = r["iteration_histogram"]
        row[2].bar([int(k) for k in hist], list(hist.values()))
        row[2].set_title("Newton iterations per layer solve")
        row[2].set_xlabel("iterations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--publish", action="store_true")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS["smoke" if args.smoke else args.preset])
    if args.steps is not None:
        cfg["steps"] = args.steps
    corpus = load_corpus(args.data, max_bytes=200_000 if args.smoke else None)
    os.makedirs(args.out, exist_ok=True)
    print(f"corpus {corpus.describe()}")
    t_start = time.perf_counter()
    out = {}
    for cell in cfg["cells"]:
        models, curves, iters, per_step = train_pair(cfg, cell, corpus, args.device, args.backend, print)
        flat = [i for step in iters for i in step]
        hist = {str(k): flat.count(k) for k in sorted(set(flat))}
        diffs = [abs(a - b) for a, b in zip(curves["newton"], curves["sequential"])]
        out[cell] = {
            "loss_newton": curves["newton"],
            "loss_sequential": curves["sequential"],
            "max_abs_loss_difference": max(diffs),
            "final_loss_difference": diffs[-1],
            "iteration_histogram": hist,
            "mean_iterations": sum(flat) / len(flat),
            "valid_loss": {m: validation_loss(models[m], cfg, corpus, args.device) for m in models},
            "seconds_per_step": {
                **per_step,
                f"torch.nn.{cell.upper()}": time_torch_rnn(cfg, cell, corpus, args.device),
            },
        }
    params = sum(p.numel() for p in make(cfg, "gru", "newton", "cpu", "reference").parameters())
    results = {
        "config": {**cfg, "cells": list(cfg["cells"]), "params_gru": params},
        "corpus": corpus.describe(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - t_start,
        "cells": out,
    }
    lines = [
        "# ParaRNN: Newton training equals sequential training\n",
        f"{corpus.describe()}; {cfg['layers']} blocks, d = {cfg['d']}, heads = {cfg['heads']}, sequences of "
        f"{cfg['seq']} bytes, batch {cfg['batch']}, {cfg['steps']} steps, identical weights and batches for both "
        f"modes; {machine()}; {results['seconds'] / 60:.1f} min; {results['date']}.\n",
        "| cell | max abs loss difference | final loss (newton / sequential) | valid loss (newton / sequential) "
        "| Newton iterations (mean; histogram) | s/step newton / sequential / torch.nn |",
        "|---|---:|---|---|---|---|",
    ]
    for cell, r in out.items():
        sps = list(r["seconds_per_step"].values())
        lines.append(
            f"| Para{cell.upper()} | {r['max_abs_loss_difference']:.2e} | {r['loss_newton'][-1]:.4f} / "
            f"{r['loss_sequential'][-1]:.4f} | {r['valid_loss']['newton']:.4f} / "
            f"{r['valid_loss']['sequential']:.4f} | {r['mean_iterations']:.2f}; {r['iteration_histogram']} | "
            + " / ".join(f"{s:.3f}" for s in sps)
            + " |"
        )
    md = "\n".join(lines) + "\n"
    write_results(args.out, HERE, results, md, "curves.png", lambda p: plot(results, p), args.publish)
    return results


if __name__ == "__main__":
    main()
