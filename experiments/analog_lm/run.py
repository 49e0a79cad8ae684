"""Analog LSTM language model: bits per character against NL-ADC bits, before and after hardware-aware training.

The claim under test (Yang et al., 2024/2025; docs/spec.md §3): an LSTM whose gate activations
come straight out of nonlinear ramp ADCs (NL-ADC) on noisy memristor crossbars keeps its accuracy
at 5 bits; their language task is character-level Penn Treebank (1.349 bits per character), with
results reported for 8/5/4/3-bit NL-ADCs.

Here the task has the same form on real English text (Vim's help files, byte tokens;
experiments/_data.py): an embedding, one LSTM and a linear read-out are trained digitally; the
LSTM is then put on simulated crossbars (``nlseq.analog.convert``: gates from one crossbar on
[x; h; 1], σ/tanh and tanh(c) through NL-ADCs; embedding and read-out stay digital) at 8, 5, 4
and 3 bits, with PCM programming noise, read noise and an 8-bit DAC, and evaluated over several
programmings (mean ± std); then fine-tuned hardware-aware (fresh programming noise every step,
straight-through gradients) and evaluated again.

    python experiments/analog_lm/run.py            (default: ~10 min on 2 CPU cores)
    python experiments/analog_lm/run.py --smoke    (seconds; CI)

Writes results.json, results.md and bpc.png into results/ beside this file (``--out``);
``--publish`` copies them over the committed ones in this folder.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import torch
import torch.nn as tnn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import nlseq  # noqa: E402
from _data import VOCAB, batches, eval_windows, load_corpus, machine  # noqa: E402
from _report import write_results  # noqa: E402
from nlseq.analog import CrossbarConfig  # noqa: E402

PAPER_BPC = 1.349  # character-level Penn Treebank, the paper's analog LSTM
PRESETS = {
    "cpu": dict(
        embed=32,
        hidden=128,
        seq=64,
        batch=32,
        steps=1500,
        lr=3e-3,
        bits=(8, 5, 4, 3),
        programmings=5,
        hwa_steps=100,
        hwa_lr=5e-4,
        eval_windows=48,
    ),
    "smoke": dict(
        embed=8,
        hidden=16,
        seq=16,
        batch=4,
        steps=3,
        lr=3e-3,
        bits=(5, 3),
        programmings=2,
        hwa_steps=2,
        hwa_lr=5e-4,
        eval_windows=2,
    ),
}
NOISE = CrossbarConfig(prog_noise=1.0, prog_noise_model="pcm", read_noise=0.01, out_noise=0.0, in_bits=8, x_max=4.0)


class CharLM(tnn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = tnn.Embedding(VOCAB, cfg["embed"])
        self.rnn = tnn.LSTM(cfg["embed"], cfg["hidden"], batch_first=True)
        self.head = tnn.Linear(cfg["hidden"], VOCAB)

    def forward(self, x):
        return self.head(self.rnn(self.embed(x))[0])


def train(model, cfg, corpus, steps, lr, seed, log, what):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = batches(corpus.train, cfg["batch"], cfg["seq"], torch.Generator().manual_seed(seed))
    model.train()
    for step in range(steps):
        x, y = next(data)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            log(f"  {what} step {step:5d} bpc {loss.item() / math.log(2):.3f}")
    model.eval()
    return model


@torch.no_grad()
def bpc(model, cfg, corpus):
    model.eval()
    w = eval_windows(corpus.valid, cfg["seq"], cfg["eval_windows"])
    return F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()).item() / math.log(2)


def analog_bpc(model, cfg, corpus, bits, seeds):
    vals = []
    for s in seeds:
        nlseq.analog.program(model, seed=1000 * bits + s)  # a fresh programming of every crossbar
        nlseq.analog.reset_noise(model)
        vals.append(bpc(model, cfg, corpus))
    t = torch.tensor(vals, dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std(unbiased=True).item() if len(vals) > 1 else 0.0, "runs": vals}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = [int(b) for b in results["analog"]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, label in (("noise", "NL-ADC, PCM + read noise"), ("hwa", "after hardware-aware fine-tuning")):
        m = [results["analog"][str(b)][key]["mean"] for b in bits]
        s = [results["analog"][str(b)][key]["std"] for b in bits]
        ax.errorbar(bits, m, yerr=s, marker="o", capsize=3, label=label)
    ax.axhline(results["digital_bpc"], color="k", linestyle="--", label="digital LSTM")
    ax.set_xticks(bits)
    ax.invert_xaxis()
    ax.set_xlabel("NL-ADC bits")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Analog LSTM LM on Vim's help text")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--publish", action="store_true")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS["smoke" if args.smoke else args.preset])
    corpus = load_corpus(args.data, max_bytes=200_000 if args.smoke else None)
    os.makedirs(args.out, exist_ok=True)
    print(f"corpus {corpus.describe()}")
    t_start = time.perf_counter()
    torch.manual_seed(0)
    digital = train(CharLM(cfg), cfg, corpus, cfg["steps"], cfg["lr"], 0, print, "digital")
    digital_bpc = bpc(digital, cfg, corpus)
    seeds = range(cfg["programmings"])
    analog = {}
    for bits in cfg["bits"]:
        model = nlseq.analog.convert(digital, NOISE, adc_bits=bits, exclude=["embed", "head"], seed=bits)
        before = analog_bpc(model, cfg, corpus, bits, seeds)
        ideal = nlseq.analog.convert(digital, CrossbarConfig.ideal(x_max=4.0), adc_bits=bits, exclude=["embed", "head"])
        hwa = train(copy.deepcopy(model), cfg, corpus, cfg["hwa_steps"], cfg["hwa_lr"], 1, print, f"HWA {bits}-bit")
        analog[str(bits)] = {
            "ideal_crossbar": bpc(ideal, cfg, corpus),
            "noise": before,
            "hwa": analog_bpc(hwa, cfg, corpus, bits, seeds),
        }
        print(
            f"  {bits}-bit: ideal crossbar {analog[str(bits)]['ideal_crossbar']:.3f}, noise {before['mean']:.3f} ± "
            f"{before['std']:.3f}, after HWA {analog[str(bits)]['hwa']['mean']:.3f}"
        )
    results = {
        "config": {**cfg, "bits": list(cfg["bits"])},
        "noise_config": repr(NOISE),
        "corpus": corpus.describe(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - t_start,
        "digital_bpc": digital_bpc,
        "analog": analog,
        "paper_bpc_ptb": PAPER_BPC,
    }
    lines = [
        "# Analog LSTM language model (NL-ADC)\n",
        f"{corpus.describe()}; embedding {cfg['embed']}, LSTM H = {cfg['hidden']}, {cfg['steps']} digital steps "
        f"(batch {cfg['batch']} × {cfg['seq']} bytes), {cfg['hwa_steps']} HWA steps; noise: PCM programming noise, "
        f"1% read noise, 8-bit DAC; mean ± std over {cfg['programmings']} programmings; {machine()}; "
        f"{results['seconds'] / 60:.1f} min; {results['date']}.\n",
        f"Digital LSTM: **{digital_bpc:.3f}** bits per character (validation).\n",
        "| NL-ADC bits | ideal crossbar (ADC only) | noise on | noise on, after HWA |",
        "|---:|---:|---:|---:|",
    ]
    for b, r in analog.items():
        lines.append(
            f"| {b} | {r['ideal_crossbar']:.3f} | {r['noise']['mean']:.3f} ± {r['noise']['std']:.3f} | "
            f"{r['hwa']['mean']:.3f} ± {r['hwa']['std']:.3f} |"
        )
    md = "\n".join(lines) + "\n"
    write_results(args.out, HERE, results, md, "bpc.png", lambda p: plot(results, p), args.publish)
    return results


if __name__ == "__main__":
    main()
