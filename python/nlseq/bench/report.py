"""Machine description, the printed table, the JSON file and the per-family figures of a bench run.

The figure of a family is drawn from plain data (:func:`figure_data`), which is also stored in
the JSON under ``figures``: what a person sees is what a test can read back.
"""

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

SCHEMA = "nlseq-bench/2"


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine(devices: list) -> dict:
    gpus = []
    if any(d.type == "cuda" for d in devices):
        p = torch.cuda.get_device_properties(0)
        gpus.append(
            {
                "name": p.name,
                "memory_bytes": p.total_memory,
                "capability": f"{p.major}.{p.minor}",
                "count": torch.cuda.device_count(),
            }
        )
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
    """Write atomically (a temporary file, then rename): a reader, or a run killed mid-write,
    sees the previous complete file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- table
def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ms(row: dict, mode: str) -> str:
    x = row["ms"].get(mode)
    if x is None:
        return "-"
    text = f"{x:.3g}" if x < 100 else f"{x:.0f}"
    spread = row.get("spread", {}).get(mode)
    return text + (f" ±{50 * spread:.0f}%" if spread is not None and spread == spread else "")


def _num(table: dict, mode: str, spec: str = ".3g") -> str:
    v = table.get(mode)
    return "-" if v is None else format(v, spec)


def _pct(row: dict, mode: str) -> str:
    """% of the ceiling that bounds the row: matmul when the case counts flops, else copy."""
    v = row["pct_matmul"].get(mode, row["pct_copy"].get(mode))
    return "-" if v is None else f"{v:.0f}%" + ("!" if v > 100 else "")


def _speed(row: dict, mode: str) -> str:
    s = row["speedup"].get(mode)
    return "-" if s is None else f"{s:.3g}x"


def _mem(row: dict) -> str:
    b = row["peak_mem_bytes"]
    if b is None:
        return "-"
    return f"{b / 2**20:.0f}" + (
        "*" if row["peak_mem_source"] and row["peak_mem_source"].startswith("estimate") else ""
    )


def _goal(row: dict) -> str:
    goals = row.get("goals") or []
    if not goals:
        return "-"
    if any(g["met"] is False for g in goals):
        return "MISSED"
    if all(g["met"] for g in goals):
        return "met"
    return "n/a"


def _impl(row: dict) -> str:
    return row["impl"] + (" (peer)" if row.get("peer") else "")


COLUMNS = [
    ("impl", _impl),
    ("check", lambda r: r["status"]),
    ("max err", lambda r: _fmt(r["max_abs_err"], ".1e")),
    ("err/tol", lambda r: _fmt(r["max_err_over_tol"], ".2g")),
    ("fwd ms ±IQR/2", lambda r: _ms(r, "fwd")),
    ("bwd ms ±IQR/2", lambda r: _ms(r, "bwd")),
    ("f+b ms ±IQR/2", lambda r: _ms(r, "fwdbwd")),
    ("fwd GB/s", lambda r: _num(r["GBps"], "fwd")),
    ("f+b GB/s", lambda r: _num(r["GBps"], "fwdbwd")),
    ("fwd TFLOP/s", lambda r: _num(r["TFLOPs"], "fwd")),
    ("f+b TFLOP/s", lambda r: _num(r["TFLOPs"], "fwdbwd")),
    ("fwd %ceil", lambda r: _pct(r, "fwd")),
    ("f+b %ceil", lambda r: _pct(r, "fwdbwd")),
    ("speedup fwd", lambda r: _speed(r, "fwd")),
    ("speedup f+b", lambda r: _speed(r, "fwdbwd")),
    ("goal", _goal),
    ("peak MiB", _mem),
    ("warn", lambda r: "!" if r.get("warnings") else ""),
]


def _grid(header: list, lines: list) -> list[str]:
    # drop the columns that say nothing for this case (all "-" or empty), keep impl and check
    keep = [i for i, h in enumerate(header) if i < 2 or any(l[i] not in ("-", "") for l in lines)]
    header = [header[i] for i in keep]
    lines = [[l[i] for i in keep] for l in lines]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines]


def table(doc: dict) -> str:
    """The run as text: a header per case, one line per impl, then reasons, goals and warnings."""
    m = doc["machine"]
    out = [
        f"nlseq bench  {m['date']}  {m['device_name']}  ({m['cpu_model']}, {m['cpu_count']} cores, "
        f"torch {m['torch']}, triton {m['triton']}, commit {(m['git']['commit'] or 'unknown')[:10]}"
        f"{'+dirty' if m['git']['dirty'] else ''})"
    ]
    load = [m.get("loadavg_start"), m.get("loadavg_end")]
    if any(load):
        out.append(
            "load average (1/5/15 min): start "
            + " ".join(map(str, load[0] or []))
            + ", end "
            + " ".join(map(str, load[1] or []))
            + f"  ({m['cpu_count']} cores)"
        )
    for dev, c in doc["ceilings"].items():
        parts = [f"copy {c['copy_GBps']:.1f} GB/s"]
        parts += [f"matmul {k} {v:.2f} TFLOP/s" for k, v in c.get("matmul_TFLOPs", {}).items()]
        out.append(f"ceiling {dev}: " + ", ".join(parts))
    out.append(
        "ms: median ± half the interquartile range (relative); %ceil: of the measured matmul "
        "throughput when the case counts flops, else of the copy bandwidth"
    )
    by_case: dict[str, list] = {}
    for r in doc["rows"]:
        by_case.setdefault(r["id"], []).append(r)
    header = [name for name, _ in COLUMNS]
    notes, goals, warns = [], [], []
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
        for r in rows:
            for g in r.get("goals") or []:
                verdict = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
                value = "" if g["value"] is None else f": {g['value']:.3g}"
                goals.append(
                    f"  {cid} {r['impl']}: {g['target']}{value} {verdict}"
                    + (f"  ({g['text']})" if g.get("text") else "")
                )
            warns += [f"  {cid} {r['impl']}: {w}" for w in r.get("warnings") or []]
    if any(
        r["peak_mem_bytes"] is not None and (r["peak_mem_source"] or "").startswith("estimate") for r in doc["rows"]
    ):
        out.append("\n* peak memory estimated by the case (outputs of fwd+bwd), not measured")
    for title, lines in (("goals:", goals), ("warnings:", warns), ("notes:", notes)):
        if lines:
            out.append("\n" + title)
            out += lines
    if doc.get("cut"):
        out.append(
            f"\ncut ({doc['cut'][0]['reason']}): {len(doc['cut'])} case(s) not run: "
            + ", ".join(c["id"] for c in doc["cut"][:12])
            + (" ..." if len(doc["cut"]) > 12 else "")
        )
    counts = {}
    for r in doc["rows"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out.append("\n" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- figure
# nlseq backends in colour, peers (plain PyTorch, cuDNN, FlexAttention, SDPA) in grey.
BACKEND_COLORS = {"cuda": "#2ca02c", "triton": "#9467bd", "cpp": "#1f77b4", "reference": "#ff7f0e"}
OTHER_NLSEQ_COLOR = "#17becf"
PEER_COLOR = "#9a9a9a"


def _plot_mode(rows: list[dict]) -> Optional[str]:
    """The mode a case is drawn in: forward+backward when the baseline and another row have it,
    else forward (a forward-only baseline such as the sequential loop), else nothing."""
    for mode in ("fwdbwd", "fwd"):
        if sum(1 for r in rows if mode in r["speedup"]) >= 2:
            return mode
    return None


def figure_data(doc: dict, family: str, device: str) -> Optional[dict]:
    """What the family's figure shows, as plain data (None: no case of it has speedups).

    One entry per case with a baseline and at least two timed rows: the mode drawn, and per row
    (impl) its speedup over the baseline with the range from the quartiles, its colour (nlseq
    backend or grey peer), its status, and its % of the measured roofline (matmul throughput when
    the case counts flops, else copy bandwidth); plus the goals as speedups over the baseline.
    """
    by_case: dict[str, list] = {}
    for r in doc["rows"]:
        if r["family"] == family and r["device"] == device:
            by_case.setdefault(r["id"], []).append(r)
    cases = []
    for cid, rows in by_case.items():
        mode = _plot_mode(rows)
        if mode is None:
            continue
        bars = []
        for r in rows:
            if mode not in r["speedup"]:
                continue
            nlseq_row = r["backend"] is not None
            color = BACKEND_COLORS.get(r["impl"], OTHER_NLSEQ_COLOR) if nlseq_row else PEER_COLOR
            roof, kind = r["pct_matmul"].get(mode), "matmul"
            if roof is None:
                roof, kind = r["pct_copy"].get(mode), "copy"
            bars.append(
                {
                    "impl": r["impl"],
                    "nlseq": nlseq_row,
                    "color": color,
                    "status": r["status"],
                    "speedup": r["speedup"][mode],
                    "lo": r["speedup_lo"].get(mode),
                    "hi": r["speedup_hi"].get(mode),
                    "ms": r["ms"][mode],
                    "spread": r["spread"].get(mode),
                    "pct_roofline": roof,
                    "roofline": kind if roof is not None else None,
                    "baseline": r["impl"] == r["baseline"],
                }
            )
        goals = [
            {"impl": r["impl"], "target": g["target"], "as_speedup": g["as_speedup"], "met": g["met"]}
            for r in rows
            for g in r.get("goals") or []
            if g["mode"] == mode and g.get("as_speedup")
        ]
        cases.append(
            {
                "id": cid,
                "label": cid.split("/", 1)[1].rsplit("/", 1)[0],
                "mode": mode,
                "baseline": rows[0]["baseline"],
                "bars": bars,
                "goals": goals,
            }
        )
    if not cases:
        return None
    xs = [v for c in cases for b in c["bars"] for v in (b["speedup"], b["lo"], b["hi"]) if v]
    xs += [g["as_speedup"] for c in cases for g in c["goals"]] + [1.0]
    lo, hi = min(xs), max(xs)
    return {
        "family": family,
        "device": device,
        "machine": doc["machine"]["device_name"],
        "date": doc["machine"]["date"],
        "xlim": [lo / 1.6, hi * 2.2],
        "cases": cases,
    }


def draw(data: dict):
    """The figure of :func:`figure_data`'s output: left, speedup bars on a shared log axis (1x
    line, goal marks, quartile error bars); right, % of the measured roofline. Returns the
    matplotlib Figure (the caller saves and closes it)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "matplotlib is not installed: pip install matplotlib (the bench extra) "
            "to get the figures; the table and the JSON are complete without it"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bars = sum(len(c["bars"]) for c in data["cases"])
    height = 1.2 + 0.26 * n_bars + 0.42 * len(data["cases"])
    fig, (ax, ax_roof) = plt.subplots(1, 2, figsize=(10.5, height), sharey=True, gridspec_kw={"width_ratios": [3, 1.2]})
    y, ticks, labels = 0.0, [], []
    for case in data["cases"]:
        top = y
        ax.text(
            data["xlim"][0],
            y - 0.15,
            f"{case['label']}  ({case['mode']}, vs {case['baseline']})",
            fontsize=7.5,
            fontweight="bold",
            va="bottom",
            ha="left",
        )
        y += 0.55
        for b in case["bars"]:
            xerr = None
            if b["lo"] and b["hi"]:
                xerr = [[max(b["speedup"] - b["lo"], 0)], [max(b["hi"] - b["speedup"], 0)]]
            # bars start at 1x: right of the line = faster than the baseline, left = slower
            ax.barh(
                y,
                b["speedup"] - 1.0,
                height=0.75,
                left=1.0,
                color=b["color"],
                xerr=xerr,
                ecolor="black",
                error_kw={"elinewidth": 0.7, "capsize": 2},
                hatch=None if b["status"] == "PASS" else "xx",
                edgecolor="white" if b["status"] == "PASS" else "black",
                linewidth=0.4,
            )
            if b["baseline"]:
                ax.plot([1.0], [y], marker="|", color=b["color"], markersize=9, markeredgewidth=3)
            right = max(v for v in (b["speedup"], b["hi"], 1.0) if v)
            ax.text(
                right * 1.05,
                y,
                f"{b['speedup']:.3g}x" + (" (baseline)" if b["baseline"] else ""),
                va="center",
                fontsize=6.5,
            )
            if b["pct_roofline"] is not None:
                ax_roof.barh(y, b["pct_roofline"], height=0.75, color=b["color"])
                ax_roof.text(
                    b["pct_roofline"], y, f" {b['pct_roofline']:.0f}% {b['roofline']}", va="center", fontsize=6
                )
            ticks.append(y)
            labels.append(b["impl"] + ("" if b["status"] == "PASS" else f" [{b['status']}]"))
            y += 1.0
        for g in case["goals"]:
            ax.plot([g["as_speedup"]] * 2, [top + 0.35, y - 0.3], color="#d62728", linestyle="--", linewidth=1.2)
        y += 0.35
    ax.axvline(1.0, color="black", linewidth=0.9)
    ax.set_xscale("log")
    ax.set_xlim(*data["xlim"])
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(
        "speedup over the case's baseline (log; error bars: quartiles; black line: 1x, red dashes: goal)", fontsize=7.5
    )
    ax.grid(axis="x", which="both", linewidth=0.3, alpha=0.5)
    ax_roof.axvline(100.0, color="black", linewidth=0.9)
    top_pct = max([b["pct_roofline"] or 0 for c in data["cases"] for b in c["bars"]] + [100.0])
    ax_roof.set_xlim(0, top_pct * 1.35)
    ax_roof.set_xlabel("% of the measured roofline", fontsize=7.5)
    ax_roof.tick_params(labelsize=7)
    ax.tick_params(axis="x", labelsize=7)
    from matplotlib.patches import Patch

    seen = {}
    for c in data["cases"]:
        for b in c["bars"]:
            seen.setdefault("peer (PyTorch, cuDNN, ...)" if not b["nlseq"] else f"nlseq {b['impl']}", b["color"])
    fig.legend(
        handles=[Patch(color=v, label=k) for k, v in seen.items()],
        fontsize=7,
        loc="lower center",
        ncol=len(seen),
        frameon=False,
    )
    fig.suptitle(f"nlseq bench: {data['family']} on {data['machine']} ({data['device']}), {data['date']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.28 / height, 1, 1))  # room for the legend below the axes
    return fig


def plot_families(doc: dict, json_path: Path) -> list[Path]:
    """One PNG per (family, device) with speedups, next to the JSON; stores the drawn data in
    ``doc["figures"]``. Returns the paths written."""
    doc["figures"] = {}
    paths = []
    keys = sorted({(r["family"], r["device"]) for r in doc["rows"] if r["family"] and r["device"]})
    for family, device in keys:
        data = figure_data(doc, family, device)
        if data is None:
            continue
        fig = draw(data)
        path = json_path.with_name(f"{json_path.stem}-{family}-{device}.png")
        fig.savefig(path, dpi=100)
        import matplotlib.pyplot as plt

        plt.close(fig)
        doc["figures"][f"{family}/{device}"] = {**data, "png": path.name}
        paths.append(path)
    return paths
