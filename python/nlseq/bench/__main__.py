"""``python -m nlseq.bench`` / ``nlseq-bench``: check and time every op family on this machine.

    python -m nlseq.bench                     every family, every device present, full sizes
    python -m nlseq.bench --quick             small budget (under 2 minutes on a 2-core CPU)
    python -m nlseq.bench --family scan --backend cpp,loop --out results/ --no-plot
    python -m nlseq.bench --case bf16 --device cpu        cases whose id contains "bf16"
    python -m nlseq.bench --list              what would run, and why anything is skipped
    python -m nlseq.bench --device cuda --subset headline --time-budget 120

The JSON file is rewritten (atomically) after every row, so a run stopped by --time-budget, Ctrl-C
(SIGINT) or SIGTERM keeps every finished row; the table and figures are then written for what ran,
and the cases not reached are listed under "cut". See docs/benchmarks.md.

Exit status: 0 when every check passed (or was skipped or cut by the time budget), 1 when a check
FAILed or anything raised an ERROR, 2 for bad options (including a filter that selects nothing and
--device cuda without a GPU), 130 / 143 when interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from . import registry, report, runner
from .case import dtype_name
from .timing import Budget, copy_bandwidth, matmul_tflops


def _split(values: Optional[list]) -> Optional[list]:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nlseq-bench",
        description="Check every nlseq implementation against its float64 oracle and time it against its peers "
        "(forward, backward, forward+backward medians; GB/s and TFLOP/s against this machine's measured "
        "copy bandwidth and matmul throughput). Writes a table, a JSON file and a PNG plot.",
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller sizes and timing budget (under 2 minutes on 2 CPU cores)"
    )
    p.add_argument(
        "--family",
        action="append",
        metavar="NAME[,NAME]",
        help=f"op families to run (default: all of {', '.join(registry.family_names())})",
    )
    p.add_argument(
        "--case",
        action="append",
        metavar="TEXT",
        help="only cases whose id (family/name/shape/dtype/device, as printed) contains TEXT",
    )
    p.add_argument(
        "--backend",
        action="append",
        metavar="NAME[,NAME]",
        help="implementations to run, by row name: cuda, triton, cpp, reference, or a peer such as loop (default: all)",
    )
    p.add_argument(
        "--device",
        choices=("all", "cpu", "cuda"),
        default="all",
        help="devices to run on (default: all present: the CPU, and the GPU when one is visible)",
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON and PNG (default: results/)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument(
        "--subset",
        choices=("all", "headline", "rest"),
        default="all",
        help="headline: only the cases marked headline (the first ones a short GPU check times); "
        "rest: all the others (default: all)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting new implementations after SECONDS (wall clock from the start); what was "
        "not reached is reported as cut, and the results so far are written",
    )
    p.add_argument(
        "--list", action="store_true", help="list the cases and implementations with their availability, run nothing"
    )
    args = p.parse_args(argv)
    if args.time_budget is not None and args.time_budget <= 0:
        p.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    return args


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT / SIGTERM: stop, keep what was measured, report.
    A BaseException (as KeyboardInterrupt), so the runner's per-impl ``except Exception`` that
    turns a raising kernel into an ERROR row lets it through."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _devices(choice: str) -> list[torch.device]:
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise ValueError(
            "--device cuda, but torch sees no CUDA device (torch "
            f"{torch.__version__}, built with CUDA {torch.version.cuda})"
        )
    if choice == "cpu":
        return [torch.device("cpu")]
    if choice == "cuda":
        return [torch.device("cuda")]
    return [torch.device("cpu")] + ([torch.device("cuda")] if has_cuda else [])


def _family_error_row(family: str, device: torch.device, reason: str) -> dict:
    return runner.empty_row(
        family=family,
        case="-",
        id=f"{family}/-/{device.type}",
        device=device.type,
        impl="-",
        status="ERROR",
        reason=reason,
    )


def _case_info(case) -> dict:
    return {
        "family": case.family,
        "name": case.name,
        "device": case.device.type,
        "dtype": dtype_name(case.dtype),
        "shape": dict(case.shape),
        "baseline": case.baseline,
        "atol": case.atol,
        "rtol": case.rtol,
        "grad_atol": case.grad_atol_rtol[0],
        "grad_rtol": case.grad_atol_rtol[1],
        "tolerance_note": case.tolerance_note,
        "bytes": dict(case.bytes),
        "flops": dict(case.flops),
        "note": case.note,
        "impls": [i.name for i in case.impls],
    }


def _missing_extras(args) -> list:
    """The optional packages this run needs (the nlseq[bench] extra) that are not installed
    (tqdm is optional: without it the progress is a plain line per implementation)."""
    import importlib.util

    needed = [] if args.list or args.no_plot else ["matplotlib"]
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _progress(total: int):
    """tqdm's bar when tqdm is installed; otherwise a plain line per finished implementation."""
    try:
        from tqdm import tqdm
    except ImportError:

        class _Plain:
            def __init__(self):
                self.n = 0

            def step(self, label):
                self.n += 1
                print(f"[{self.n}/{total}] {label}", file=sys.stderr, flush=True)

            def close(self):
                pass

        return _Plain()
    bar = tqdm(total=total, desc="nlseq bench", unit="impl", file=sys.stderr, dynamic_ncols=True)

    def step(label):
        bar.set_postfix_str(label[-60:], refresh=False)
        bar.update(1)

    bar.step = step
    return bar


def _loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on this platform
        return []


def _select(cases: list, args, only: Optional[list]) -> tuple[list, str]:
    """The cases the filters select, or ([], why nothing was selected)."""
    if args.subset != "all":
        want = args.subset == "headline"
        cases = [c for c in cases if c.headline == want]
        if not cases:
            return [], f"--subset {args.subset} selects no case"
    if args.case:
        kept = [c for c in cases if any(text in c.id for text in args.case)]
        if not kept:
            ids = ", ".join(c.id for c in cases[:8]) + (" ..." if len(cases) > 8 else "")
            return [], f"--case {' '.join(args.case)} matches no case id; ids look like: {ids or '(none)'}"
        cases = kept
    if only is not None:
        known = {i.name for c in cases for i in c.impls}
        unknown = sorted(set(only) - known)
        if unknown:
            return [], (f"--backend {', '.join(unknown)} matches no implementation; known: {', '.join(sorted(known))}")
        cases = [c for c in cases if any(i.name in only for i in c.impls)]
    return cases, ""


def main(argv=None) -> int:
    t_start = time.perf_counter()
    deadline_mono = time.monotonic()
    args = parse_args(argv)
    missing = _missing_extras(args)
    if missing:
        print(
            f"nlseq-bench: {' and '.join(missing)} not installed; install the bench extra: "
            f"pip install 'nlseq[bench]' (or pass --no-plot to run without matplotlib)",
            file=sys.stderr,
        )
        return 2
    if args.time_budget is not None:
        deadline_mono += args.time_budget
    families_wanted, only = _split(args.family), _split(args.backend)
    try:
        families = registry.discover(families_wanted)
        devices = _devices(args.device)
    except ValueError as e:
        print(f"nlseq-bench: {e}", file=sys.stderr)
        return 2

    cases, error_rows = [], []
    for dev in devices:
        for fam in families:
            found, err = registry.collect(fam, dev, args.quick)
            if err:
                error_rows.append(_family_error_row(fam.name, dev, err))
            cases += found
    cases, why = _select(cases, args, only)
    if why and not (error_rows and not cases and args.case is None and only is None and args.subset == "all"):
        # a filter selected nothing (a family whose module failed still gets its ERROR row when
        # no filter was given: then the run reports that error instead)
        print(f"nlseq-bench: {why}", file=sys.stderr)
        return 2
    if not cases and not error_rows:
        print(
            f"nlseq-bench: family {', '.join(f.name for f in families)} has no case on "
            f"{', '.join(d.type for d in devices)}",
            file=sys.stderr,
        )
        return 2

    if args.list:
        for c in cases:
            print(f"{c.id}  baseline={c.baseline}" + ("  [headline]" if c.headline else ""))
            for impl in c.impls:
                if only is not None and impl.name not in only:
                    continue
                why = runner.skip_reason(impl, c.device)
                what = f"SKIP: {why}" if why else ("check only" if not impl.timed else "check + time")
                print(f"    {impl.name:<10} {what}")
        for r in error_rows:
            print(f"{r['id']}  ERROR: {r['reason']}")
        return 1 if error_rows else 0

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"nlseq-bench-{stamp}.json"
    doc = {
        "schema": report.SCHEMA,
        "machine": report.machine(devices),
        "options": {
            "quick": args.quick,
            "family": families_wanted,
            "case": args.case,
            "backend": only,
            "device": args.device,
            "subset": args.subset,
            "time_budget_s": args.time_budget,
        },
        "ceilings": {},
        "cases": {c.id: _case_info(c) for c in cases},
        "rows": list(error_rows),
        "cut": [],
        "interrupted": None,
        "complete": False,
    }
    doc["machine"]["loadavg_start"] = _loadavg()
    done_rows: list = list(error_rows)
    current: list = []

    def save() -> None:
        doc["rows"] = done_rows + current
        doc["wall_s"] = time.perf_counter() - t_start
        report.write_json(json_path, doc)

    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    budget = Budget.for_run(args.quick)
    deadline = deadline_mono if args.time_budget is not None else None
    todo = list(cases)
    bar = None
    try:
        save()  # a file exists from the first second on
        for dev in devices:
            dev_cases = [c for c in cases if c.device.type == dev.type]
            if not dev_cases:
                continue
            doc["ceilings"][dev.type] = copy_bandwidth(dev, args.quick)
            for dtype in sorted({c.dtype for c in dev_cases if c.flops}, key=str):
                doc["ceilings"][dev.type].setdefault("matmul_TFLOPs", {})[dtype_name(dtype)] = matmul_tflops(
                    dev, dtype, args.quick
                )["matmul_TFLOPs"]
            save()
        bar = _progress(sum(1 for c in cases for i in c.impls if only is None or i.name in only))
        while todo:
            case = todo[0]
            if deadline is not None and time.monotonic() > deadline:
                break

            def on_row(rows, _case=case):
                current[:] = rows
                save()

            rows = runner.run_case(
                case,
                budget,
                doc["ceilings"].get(case.device.type, {}),
                only,
                on_impl=bar.step,
                deadline=deadline,
                on_row=on_row,
            )
            done_rows.extend(rows)
            current.clear()
            todo.pop(0)
            save()
    except Interrupted as e:
        doc["interrupted"] = e.args[0]
        for r in current:  # the case in progress: its unfinished rows
            if r["status"] is None:
                r.update(status="CUT", reason=f"not finished: interrupted by {e.args[0]}")
        done_rows.extend(current)
        current.clear()
        if todo:
            todo.pop(0)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if bar is not None:
            bar.close()
    why_cut = f"interrupted by {doc['interrupted']}" if doc["interrupted"] else "time budget spent"
    doc["cut"] = [{"id": c.id, "reason": why_cut} for c in todo]
    doc["complete"] = not todo and not doc["interrupted"]
    doc["machine"]["loadavg_end"] = _loadavg()
    save()
    try:
        text = report.table(doc)
        print(text)
        print(f"\nwrote {json_path}")
        if not args.no_plot:
            for path in report.plot_families(doc, json_path):
                print(f"wrote {path}")
            save()  # with the figures' data
    except ImportError as e:
        print(f"nlseq-bench: no figure: {e}", file=sys.stderr)
    print(f"total {time.perf_counter() - t_start:.1f} s")
    if doc["interrupted"]:
        return 128 + int(getattr(signal, doc["interrupted"]))
    return 1 if any(r["status"] in ("FAIL", "ERROR") for r in doc["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
