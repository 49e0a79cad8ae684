"""Machine description, the printed table, the JSON file and the PNG plot of a bench run."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

import nlseq

SCHEMA = "nlseq-bench/1"


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict:
    """Commit of the source tree nlseq was imported from (None outside a git checkout)."""
    root = Path(nlseq.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine(devices: list) -> dict:
    gpus = []
    if any(d.type == "cuda" for d in devices):
        p = torch.cuda.get_device_properties(0)
        gpus.append({"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}",
                     "count": torch.cuda.device_count()})
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "devices": [d.type for d in devices],
        "device_name": gpus[0]["name"] if gpus else cpu_model(),
        "gpu": gpus[0] if gpus else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "nlseq": nlseq.__version__,
        "git": git_commit(),
        "backends": {k: str(v) for k, v in nlseq.backends().items()},
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "NLSEQ_BACKEND", "OMP_NUM_THREADS") if k in os.environ},
        "platform": platform.platform(),
        "argv": sys.argv,
    }


# ------------------------------------------------------------------------------------------ JSON
def _finite(x):
    """JSON has no inf/NaN: they become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------- table
def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _rate(row: dict, mode: str) -> str:
    if mode in row["GBps"]:
        pct = row["pct_copy"].get(mode)
        return f"{row['GBps'][mode]:.3g}" + (f" ({pct:.0f}%)" if pct is not None else "")
    if mode in row["TFLOPs"]:
        pct = row["pct_matmul"].get(mode)
        return f"{row['TFLOPs'][mode]:.3g}T" + (f" ({pct:.0f}%)" if pct is not None else "")
    return "-"


def _speed(row: dict, mode: str) -> str:
    s = row["speedup"].get(mode)
    return "-" if s is None else f"{s:.3g}x"


def _mem(row: dict) -> str:
    b = row["peak_mem_bytes"]
    if b is None:
        return "-"
    return f"{b / 2**20:.0f}" + ("*" if row["peak_mem_source"] and row["peak_mem_source"].startswith("estimate") else "")


COLUMNS = [
    ("impl", lambda r: r["impl"]),
    ("check", lambda r: r["status"]),
    ("max err", lambda r: _fmt(r["max_abs_err"], ".1e")),
    ("fwd ms", lambda r: _ms(r["ms"].get("fwd"))),
    ("bwd ms", lambda r: _ms(r["ms"].get("bwd"))),
    ("f+b ms", lambda r: _ms(r["ms"].get("fwdbwd"))),
    ("fwd GB/s (%copy)", lambda r: _rate(r, "fwd")),
    ("f+b GB/s (%copy)", lambda r: _rate(r, "fwdbwd")),
    ("speedup fwd", lambda r: _speed(r, "fwd")),
    ("speedup f+b", lambda r: _speed(r, "fwdbwd")),
    ("peak MiB", _mem),
]


def _grid(header: list, lines: list) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines]


def table(doc: dict) -> str:
    """The run as text: a header per case, one line per impl, then skip/fail reasons."""
    m = doc["machine"]
    out = [f"nlseq bench  {m['date']}  {m['device_name']}  ({m['cpu_model']}, {m['cpu_count']} cores, "
           f"torch {m['torch']}, triton {m['triton']}, commit {(m['git']['commit'] or 'unknown')[:10]}"
           f"{'+dirty' if m['git']['dirty'] else ''})"]
    for dev, c in doc["ceilings"].items():
        parts = [f"copy {c['copy_GBps']:.1f} GB/s"]
        parts += [f"matmul {k} {v:.2f} TFLOP/s" for k, v in c.get("matmul_TFLOPs", {}).items()]
        out.append(f"ceiling {dev}: " + ", ".join(parts))
    by_case: dict[str, list] = {}
    for r in doc["rows"]:
        by_case.setdefault(r["id"], []).append(r)
    header = [name for name, _ in COLUMNS]
    notes = []
    for cid, rows in by_case.items():
        r0 = rows[0]
        info = doc["cases"].get(cid, {})
        out.append("")
        tol = ""
        if r0.get("atol") is not None:
            tol = f"tol atol={r0['atol']:g} rtol={r0['rtol']:g}"
            if (r0["grad_atol"], r0["grad_rtol"]) != (r0["atol"], r0["rtol"]):
                tol += f" (grads atol={r0['grad_atol']:g} rtol={r0['grad_rtol']:g})"
        out.append(f"== {cid}  {tol}" + (f"  baseline {r0['baseline']}" if r0.get("baseline") else ""))
        if info.get("note"):
            out.append(f"   {info['note']}")
        out += _grid(header, [[f(r) for _, f in COLUMNS] for r in rows])
        notes += [f"  {cid} {r['impl']}: {r['status']}: {r['reason']}" for r in rows if r["reason"]]
        notes += [f"  {cid} {r['impl']}: {r['note']}" for r in rows if r["note"] and not r["reason"]]
    if any(r["peak_mem_bytes"] is not None and (r["peak_mem_source"] or "").startswith("estimate")
           for r in doc["rows"]):
        out.append("\n* peak memory estimated by the case (outputs of fwd+bwd), not measured")
    if notes:
        out.append("\nnotes:")
        out += notes
    counts = {}
    for r in doc["rows"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out.append("\n" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ plot
def plot(doc: dict, path: Path) -> bool:
    """One panel per timed case: median ms per impl for each mode (log scale). False: nothing timed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_case: dict[str, list] = {}
    for r in doc["rows"]:
        if r["ms"]:
            by_case.setdefault(r["id"], []).append(r)
    if not by_case:
        return False
    n = len(by_case)
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    modes = [("fwd", "fwd"), ("bwd", "bwd"), ("fwdbwd", "fwd+bwd")]
    colors = {"fwd": "tab:blue", "bwd": "tab:orange", "fwdbwd": "tab:green"}
    width = 0.8 / len(modes)
    for ax, (cid, rows) in zip(axes.flat, by_case.items()):
        labelled = set()
        for i, r in enumerate(rows):
            present = [(m, label) for m, label in modes if m in r["ms"]]
            for j, (mode, label) in enumerate(present):  # the bars of one impl, centred on its tick
                x = i + (j - (len(present) - 1) / 2) * width
                ax.bar(x, r["ms"][mode], width, color=colors[mode], label=None if mode in labelled else label)
                labelled.add(mode)
                gb = r["GBps"].get(mode)
                if gb is not None:
                    ax.annotate(f"{gb:.3g}", (x, r["ms"][mode]), ha="center", va="bottom", fontsize=6)
        times = [v for r in rows for v in r["ms"].values() if v > 0]
        if times:  # log-scale bars need a floor below the shortest bar
            ax.set_ylim(bottom=10 ** math.floor(math.log10(min(times)) - 0.3))
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['impl']}\n{r['status']}" for r in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median ms (labels: GB/s)")
        ax.set_title(cid, fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    m = doc["machine"]
    fig.suptitle(f"nlseq bench  {m['device_name']}  {m['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
