"""``python -m nlseq.bench`` / ``nlseq-bench``: check and time every op family on this machine.

    python -m nlseq.bench                     every family, every device present, full sizes
    python -m nlseq.bench --quick             small budget (under 2 minutes on a 2-core CPU)
    python -m nlseq.bench --family scan --backend cpp,loop --out results/ --no-plot
    python -m nlseq.bench --case bf16 --device cpu        cases whose id contains "bf16"
    python -m nlseq.bench --list              what would run, and why anything is skipped

Exit status: 0 when every check passed (or was skipped), 1 when a check FAILed or anything raised
an ERROR, 2 for bad options.
"""
from __future__ import annotations

import argparse
import datetime as _dt
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
                    "copy bandwidth and matmul throughput). Writes a table, a JSON file and a PNG plot.")
    p.add_argument("--quick", action="store_true", help="smaller sizes and timing budget (under 2 minutes on 2 CPU cores)")
    p.add_argument("--family", action="append", metavar="NAME[,NAME]",
                   help=f"op families to run (default: all of {', '.join(registry.family_names())})")
    p.add_argument("--case", action="append", metavar="TEXT",
                   help="only cases whose id (family/name/shape/dtype/device, as printed) contains TEXT")
    p.add_argument("--backend", action="append", metavar="NAME[,NAME]",
                   help="implementations to run, by row name: cuda, triton, cpp, reference, or a peer such as loop "
                        "(default: all)")
    p.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                   help="devices to run on (default: all present: the CPU, and the GPU when one is visible)")
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON and PNG (default: results/)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--list", action="store_true", help="list the cases and implementations with their availability, run nothing")
    return p.parse_args(argv)


def _devices(choice: str) -> list[torch.device]:
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise SystemExit("nlseq-bench: --device cuda, but torch sees no CUDA device")
    if choice == "cpu":
        return [torch.device("cpu")]
    if choice == "cuda":
        return [torch.device("cuda")]
    return [torch.device("cpu")] + ([torch.device("cuda")] if has_cuda else [])


def _family_error_row(family: str, device: torch.device, reason: str) -> dict:
    return runner.empty_row(family=family, case="-", id=f"{family}/-/{device.type}", device=device.type, impl="-",
                            status="ERROR", reason=reason)


def _case_info(case) -> dict:
    return {"family": case.family, "name": case.name, "device": case.device.type, "dtype": dtype_name(case.dtype),
            "shape": dict(case.shape), "baseline": case.baseline, "atol": case.atol, "rtol": case.rtol,
            "grad_atol": case.grad_atol_rtol[0], "grad_rtol": case.grad_atol_rtol[1],
            "tolerance_note": case.tolerance_note, "bytes": dict(case.bytes), "flops": dict(case.flops),
            "note": case.note, "impls": [i.name for i in case.impls]}


def _missing_extras(args) -> list:
    """The optional packages this run needs (the nlseq[bench] extra) that are not installed."""
    import importlib.util

    needed = [] if args.list else ["tqdm"] + ([] if args.no_plot else ["matplotlib"])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    missing = _missing_extras(args)
    if missing:
        hint = " (or pass --no-plot to run without matplotlib)" if missing == ["matplotlib"] else ""
        print(f"nlseq-bench: {' and '.join(missing)} not installed; install the bench extra: "
              f"pip install 'nlseq[bench]'{hint}", file=sys.stderr)
        return 2
    families_wanted, only = _split(args.family), _split(args.backend)
    try:
        families = registry.discover(families_wanted)
    except ValueError as e:
        print(f"nlseq-bench: {e}", file=sys.stderr)
        return 2
    devices = _devices(args.device)

    cases, error_rows = [], []
    for dev in devices:
        for fam in families:
            found, err = registry.collect(fam, dev, args.quick)
            if err:
                error_rows.append(_family_error_row(fam.name, dev, err))
            cases += found
    if args.case:
        cases = [c for c in cases if any(text in c.id for text in args.case)]
    if only is not None:
        known = {i.name for c in cases for i in c.impls}
        unknown = sorted(set(only) - known)
        if unknown:
            print(f"nlseq-bench: --backend {', '.join(unknown)} matches no implementation; "
                  f"known: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
        cases = [c for c in cases if any(i.name in only for i in c.impls)]

    if args.list:
        for c in cases:
            print(f"{c.id}  baseline={c.baseline}")
            for impl in c.impls:
                if only is not None and impl.name not in only:
                    continue
                why = runner.skip_reason(impl, c.device)
                what = f"SKIP: {why}" if why else ("check only" if not impl.timed else "check + time")
                print(f"    {impl.name:<10} {what}")
        for r in error_rows:
            print(f"{r['id']}  ERROR: {r['reason']}")
        return 1 if error_rows else 0

    budget = Budget.for_run(args.quick)
    ceilings: dict = {}
    for dev in devices:
        dev_cases = [c for c in cases if c.device.type == dev.type]
        if not dev_cases:
            continue
        ceilings[dev.type] = copy_bandwidth(dev, args.quick)
        for dtype in sorted({c.dtype for c in dev_cases if c.flops}, key=str):
            ceilings[dev.type].setdefault("matmul_TFLOPs", {})[dtype_name(dtype)] = \
                matmul_tflops(dev, dtype, args.quick)["matmul_TFLOPs"]

    from tqdm import tqdm

    rows = list(error_rows)
    total = sum(1 for c in cases for i in c.impls if only is None or i.name in only)
    with tqdm(total=total, desc="nlseq bench", unit="impl", file=sys.stderr, dynamic_ncols=True) as bar:
        def step(label):
            bar.set_postfix_str(label[-60:], refresh=False)
            bar.update(1)

        for case in cases:
            rows += runner.run_case(case, budget, ceilings.get(case.device.type, {}), only, on_impl=step)

    doc = {
        "schema": report.SCHEMA,
        "machine": report.machine(devices),
        "options": {"quick": args.quick, "family": families_wanted, "case": args.case, "backend": only,
                    "device": args.device},
        "ceilings": ceilings,
        "cases": {c.id: _case_info(c) for c in cases},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"nlseq-bench-{stamp}.json"
    doc["wall_s"] = time.perf_counter() - t_start
    text = report.table(doc)
    print(text)
    report.write_json(json_path, doc)
    print(f"\nwrote {json_path}")
    if not args.no_plot:
        png_path = json_path.with_suffix(".png")
        if report.plot(doc, png_path):
            print(f"wrote {png_path}")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 1 if any(r["status"] in ("FAIL", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
