"""Run one case: check every implementation against the oracle, then time it; returns JSON rows.

A row is one (case, impl). Status: PASS / FAIL (outside the tolerance, NaN, wrong shape or
count) / ERROR (it raised; the exception is in ``reason``) / SKIP (unavailable here; the reason
says why and how to fix it) / CUT (not run: the run's time budget was spent). Failures are
reported, never hidden; timing still runs after a FAIL so that a wrong kernel cannot look fast
unnoticed. Each row also carries its goals (met / missed) and warnings (above 100 % of a measured
ceiling, or a spread too wide to trust the median).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .. import registry as nlseq_registry
from ..registry import triton_interpret
from .case import MODES, Case, Goal, Impl, dtype_name
from .timing import Budget, peak_memory, time_fn

# A row whose interquartile range exceeds this fraction of its median gets a warning: its median
# (and every speedup computed from it) is not to be trusted to better than that.
SPREAD_WARN = 0.25


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _error(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" ({frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def runs_on(backend: str, device: torch.device) -> bool:
    """Whether an nlseq backend takes tensors on ``device`` in this process."""
    if backend == "cpp":
        return device.type == "cpu"
    if backend == "cuda":
        return device.type == "cuda"
    if backend == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpret())
    return True  # reference


def skip_reason(impl: Impl, device: torch.device) -> str:
    """Why ``impl`` cannot run on ``device`` here ("" when it can)."""
    if impl.skip:
        return impl.skip
    if impl.backend is None:
        return ""
    status = nlseq_registry.backend_status(impl.backend)
    if not status:
        return f"{status.reason}. Fix: {status.fix}"
    if not runs_on(impl.backend, device):
        if impl.backend == "triton" and device.type == "cpu":
            return "Triton takes CPU tensors only in its interpreter: set TRITON_INTERPRET=1 (correctness only)"
        return f"backend {impl.backend!r} does not run on {device.type} tensors"
    return ""


def _compare(actual: Tensor, oracle: Tensor, atol: float, rtol: float) -> tuple[bool, float, float, str]:
    """(ok, max |err|, max err / (atol + rtol |oracle|), problem) for one output."""
    if not isinstance(actual, Tensor):
        return False, float("nan"), float("nan"), f"got {type(actual).__name__}, expected a tensor"
    if tuple(actual.shape) != tuple(oracle.shape):
        return False, float("nan"), float("nan"), f"shape {tuple(actual.shape)} != oracle {tuple(oracle.shape)}"
    a = actual.detach().to(device=oracle.device, dtype=torch.float64)
    if a.numel() == 0:
        return True, 0.0, 0.0, ""
    nan = bool(torch.isnan(a).any()) and not bool(torch.isnan(oracle).any())
    err = (a - oracle).abs()
    bound = atol + rtol * oracle.abs()
    # err / bound, with 0 where both are 0 (an exact-match tolerance met exactly)
    ratio = float(torch.where(err == 0, torch.zeros_like(err), err / bound).max())
    max_err = float(err.max())
    ok = not nan and bool((err <= bound).all())
    return ok, max_err, ratio, "NaN in output" if nan else ""


class _Prepared:
    """Inputs, upstream gradients and oracle results of one case, built once for all impls."""

    def __init__(self, case: Case, needs_backward: bool):
        torch.manual_seed(0)
        inputs = case.inputs()
        if not isinstance(inputs, dict):
            raise TypeError(f"{case.id}: inputs() must return a dict (name -> tensor or other argument)")
        missing = [n for n in case.grad_inputs if n not in inputs]
        if missing:
            raise KeyError(f"{case.id}: grad_inputs {missing} are not among the inputs {list(inputs)}")
        self.inputs = inputs
        self.leaves = [inputs[n] for n in case.grad_inputs] if needs_backward else []
        inputs64 = {
            k: (v.detach().to(torch.float64) if isinstance(v, Tensor) and v.is_floating_point() else v)
            for k, v in inputs.items()
        }
        with torch.no_grad():
            self.out64 = tuple(o.to(torch.float64) for o in _as_tuple(case.oracle(**inputs64)))
        self.grad_out: tuple = ()
        self.grads64: dict = {}
        if needs_backward and not case.check_grads:
            # gradients timed, not compared: draw the upstream gradients only (no float64 backward)
            gen = torch.Generator(device=case.device).manual_seed(1)
            self.grad_out = tuple(
                torch.randn(o.shape, generator=gen, device=o.device, dtype=torch.float64).to(case.dtype)
                for o in self.out64
            )
            for leaf in self.leaves:
                leaf.requires_grad_(True)
        elif needs_backward:
            gen = torch.Generator(device=case.device).manual_seed(1)
            # drawn in float64, rounded to the case dtype; the oracle sees exactly those values
            self.grad_out = tuple(
                torch.randn(o.shape, generator=gen, device=o.device, dtype=torch.float64).to(case.dtype)
                for o in self.out64
            )
            grad_out64 = tuple(g.to(torch.float64) for g in self.grad_out)
            if case.oracle_grads is not None:
                with torch.no_grad():
                    self.grads64 = dict(case.oracle_grads(inputs64, grad_out64))
            else:
                leaves64 = {n: inputs64[n].clone().requires_grad_() for n in case.grad_inputs}
                outs = _as_tuple(case.oracle(**{**inputs64, **leaves64}))
                grads = torch.autograd.grad(outs, list(leaves64.values()), grad_out64, allow_unused=True)
                self.grads64 = {n: g for n, g in zip(leaves64, grads) if g is not None}
            for leaf in self.leaves:
                leaf.requires_grad_(True)

    def grad_outputs_for(self, outs: Sequence) -> tuple[list, list]:
        """The outputs that carry gradient and their upstream gradients (in each output's dtype)."""
        pairs = [(o, g.to(o.dtype)) for o, g in zip(outs, self.grad_out) if isinstance(o, Tensor) and o.requires_grad]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def reset(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None


def empty_row(**fields) -> dict:
    """A row with every key present (None / empty), updated with ``fields``."""
    row = {
        "family": None,
        "case": None,
        "id": None,
        "device": None,
        "dtype": None,
        "shape": {},
        "impl": None,
        "backend": None,
        "baseline": None,
        "status": None,
        "reason": "",
        "atol": None,
        "rtol": None,
        "grad_atol": None,
        "grad_rtol": None,
        "max_abs_err": None,
        "max_err_over_tol": None,
        "errors": {},
        "ms": {},
        "ms_q25": {},
        "ms_q75": {},
        "spread": {},
        "GBps": {},
        "pct_copy": {},
        "TFLOPs": {},
        "pct_matmul": {},
        "speedup": {},
        "speedup_lo": {},
        "speedup_hi": {},
        "peer": False,
        "own_oracle": False,
        "grads_checked": None,
        "goals": [],
        "warnings": [],
        "peak_mem_bytes": None,
        "peak_mem_source": None,
        "timer": "",
        "note": "",
    }
    row.update(fields)
    return row


def problem_of(case: Case, impl: Impl) -> Case:
    """The case as ``impl`` is checked: the case itself, or a copy with the peer's own inputs,
    oracle and tolerances (a peer computing another function at the same size)."""
    if not impl.own_problem and impl.tol is None and impl.grad_tol is None:
        return case
    atol, rtol = impl.tol if impl.tol is not None else (case.atol, case.rtol)
    return dataclasses.replace(
        case,
        inputs=impl.inputs or case.inputs,
        oracle=impl.oracle or case.oracle,
        oracle_grads=impl.oracle_grads if impl.own_problem else case.oracle_grads,
        atol=atol,
        rtol=rtol,
        grad_inputs=impl.grad_inputs if impl.grad_inputs is not None else case.grad_inputs,
        grad_tol=impl.grad_tol if impl.grad_tol is not None else (impl.tol if impl.tol is not None else case.grad_tol),
    )


def _base_row(case: Case, impl: Impl) -> dict:
    problem = problem_of(case, impl)
    gatol, grtol = problem.grad_atol_rtol
    return empty_row(
        family=case.family,
        case=case.name,
        id=case.id,
        device=case.device.type,
        dtype=dtype_name(case.dtype),
        shape=dict(case.shape),
        impl=impl.name,
        backend=impl.backend,
        baseline=case.baseline,
        atol=problem.atol,
        rtol=problem.rtol,
        grad_atol=gatol,
        grad_rtol=grtol,
        note=impl.note,
        peer=impl.backend is None,
        own_oracle=impl.own_problem,
    )


def _check(case: Case, impl: Impl, prep: _Prepared, row: dict) -> bool:
    """Fill the check fields of ``row``; returns whether the outputs have the oracle's shapes."""
    names = list(case.output_names) or [f"out{i}" for i in range(len(prep.out64))]
    ctx = contextlib.nullcontext() if impl.backward and prep.leaves else torch.no_grad()
    with ctx:
        outs = _as_tuple(impl.fn(**prep.inputs))
    results, problems = {}, []
    if len(outs) != len(prep.out64):
        problems.append(f"{len(outs)} outputs, oracle has {len(prep.out64)}")
    for name, out, ref in zip(names, outs, prep.out64):
        results[name] = _compare(out, ref, case.atol, case.rtol)
    shapes_ok = len(outs) == len(prep.out64) and all(
        isinstance(o, Tensor) and o.shape == r.shape for o, r in zip(outs, prep.out64)
    )
    if impl.backward and prep.leaves and shapes_ok:  # (wrong shapes: already a FAIL, no backward)
        prep.reset()
        gatol, grtol = case.grad_atol_rtol
        outs_g, grads = prep.grad_outputs_for(outs)
        if not outs_g:
            problems.append("no output requires grad")
        else:
            torch.autograd.backward(outs_g, grads)
            for name in case.grad_inputs:
                if name in prep.grads64:
                    got = prep.inputs[name].grad
                    results[f"d{name}"] = (
                        _compare(got, prep.grads64[name], gatol, grtol)
                        if got is not None
                        else (False, float("nan"), float("nan"), "no gradient")
                    )
        prep.reset()
    row["errors"] = {k: v[1] for k, v in results.items()}
    if results:  # NaN (no comparison possible) counts as the worst
        worst = lambda x: float("inf") if x != x else x  # noqa: E731
        row["max_abs_err"] = max(worst(v[1]) for v in results.values())
        row["max_err_over_tol"] = max(worst(v[2]) for v in results.values())
    problems += [f"{k}: {v[3]}" for k, v in results.items() if v[3]]
    failed = [k for k, v in results.items() if not v[0]]
    beyond = [k for k in failed if not results[k][3]]  # plain tolerance misses (no other problem)
    if beyond:
        problems.append(f"outside the tolerance (atol + rtol·|oracle|) in {', '.join(beyond)}")
    row["status"] = "FAIL" if (failed or problems) else "PASS"
    row["reason"] = "; ".join(problems)
    if impl.backward and prep.leaves:
        row["grads_checked"] = bool(case.check_grads)
        if not case.check_grads:
            row["warnings"].append(
                "gradients timed but not checked (the float64 backward oracle would not fit "
                "in memory at this size; the forward is checked)"
            )
    return shapes_ok


def _time(case: Case, impl: Impl, prep: _Prepared, row: dict, budget: Budget, ceilings: dict, shapes_ok: bool) -> None:
    dev = case.device
    backward = impl.backward and bool(prep.leaves) and shapes_ok  # wrong shapes: forward only
    grad_ctx = contextlib.nullcontext if backward else torch.no_grad

    def fwd():
        with grad_ctx():
            return impl.fn(**prep.inputs)

    fns: dict[str, Callable[[], object]] = {"fwd": fwd}
    if backward:
        outs_g, grads = prep.grad_outputs_for(_as_tuple(fwd()))

        def bwd():
            torch.autograd.backward(outs_g, grads, retain_graph=True)

        def fwdbwd():
            o, g = prep.grad_outputs_for(_as_tuple(fwd()))
            torch.autograd.backward(o, g)

        fns.update(bwd=bwd, fwdbwd=fwdbwd)
    how = []
    for mode in MODES:
        if mode not in fns:
            continue
        prep.reset()
        t = time_fn(dev, fns[mode], budget, reset=prep.leaves)
        prep.reset()
        seconds = t.median
        row["ms"][mode] = seconds * 1e3
        row["ms_q25"][mode], row["ms_q75"][mode] = t.q25 * 1e3, t.q75 * 1e3
        row["spread"][mode] = t.spread
        how.append(t.how)
        if mode in case.bytes:
            row["GBps"][mode] = case.bytes[mode] / seconds / 1e9
            copy = ceilings.get("copy_GBps")
            if copy:
                row["pct_copy"][mode] = 100.0 * row["GBps"][mode] / copy
        if mode in case.flops:
            row["TFLOPs"][mode] = case.flops[mode] / seconds / 1e12
            mm = ceilings.get("matmul_TFLOPs", {}).get(dtype_name(case.dtype))
            if mm:
                row["pct_matmul"][mode] = 100.0 * row["TFLOPs"][mode] / mm
    if backward:
        del outs_g, grads
    row["timer"] = how[0] if len(set(how)) == 1 else "; ".join(how)
    if dev.type == "cuda":
        row["peak_mem_bytes"] = peak_memory(dev, fns["fwdbwd" if backward else "fwd"])
        prep.reset()
        row["peak_mem_source"] = (
            "torch.cuda.max_memory_allocated (one fwd+bwd)" if backward else "torch.cuda.max_memory_allocated (one fwd)"
        )
    elif impl.name in case.mem_estimate:
        row["peak_mem_bytes"] = int(case.mem_estimate[impl.name])
        row["peak_mem_source"] = "estimate (case model)"


def _speedups(case: Case, rows: list[dict]) -> None:
    """Speedups over the baseline, with a range from the quartiles (slowest base / fastest row ..)."""
    base = next((r for r in rows if r["impl"] == case.baseline and r["ms"]), None)
    if base is None:
        return
    for r in rows:
        for mode, ms in r["ms"].items():
            if mode in base["ms"] and ms > 0:
                r["speedup"][mode] = base["ms"][mode] / ms
                lo_b, hi_b = base["ms_q25"].get(mode, base["ms"][mode]), base["ms_q75"].get(mode, base["ms"][mode])
                lo_r, hi_r = r["ms_q25"].get(mode, ms), r["ms_q75"].get(mode, ms)
                r["speedup_lo"][mode] = lo_b / hi_r if hi_r > 0 else None
                r["speedup_hi"][mode] = hi_b / lo_r if lo_r > 0 else None


def goal_speedup(goal: Goal, case: Case, rows: list[dict]) -> Optional[float]:
    """The goal as a speedup over the case's baseline (where the figure draws it), or None."""
    base = next((r for r in rows if r["impl"] == case.baseline and goal.mode in r["ms"]), None)
    if base is None:
        return None
    base_ms = base["ms"][goal.mode]
    if goal.speedup is not None:
        if goal.over in (None, case.baseline):
            return goal.speedup
        over = next((r for r in rows if r["impl"] == goal.over and goal.mode in r["ms"]), None)
        return goal.speedup * base_ms / over["ms"][goal.mode] if over else None
    if goal.max_ms is not None:
        return base_ms / goal.max_ms
    flops = case.flops.get(goal.mode)
    return base_ms / (flops / (goal.min_tflops * 1e12) * 1e3) if flops else None


def _goals(case: Case, rows: list[dict]) -> None:
    """Judge every goal on every row it names: met (True), missed (False) or not measured (None)."""
    by_impl = {r["impl"]: r for r in rows}
    for goal in case.goals:
        for name in goal.impls:
            r = by_impl.get(name)
            if r is None or r["status"] in ("SKIP", "CUT"):
                continue
            ms = r["ms"].get(goal.mode)
            value, target, met = None, "", None
            if goal.speedup is not None:
                over = goal.over or case.baseline
                target = f">= {goal.speedup:g}x {over} ({goal.mode})"
                o = by_impl.get(over)
                if ms and o is not None and goal.mode in o["ms"]:
                    value = o["ms"][goal.mode] / ms
                    met = value >= goal.speedup
            elif goal.max_ms is not None:
                target = f"<= {goal.max_ms:g} ms ({goal.mode})"
                if ms:
                    value, met = ms, ms <= goal.max_ms
            else:
                target = f">= {goal.min_tflops:g} TFLOP/s ({goal.mode})"
                tf = r["TFLOPs"].get(goal.mode)
                if tf is not None:
                    value, met = tf, tf >= goal.min_tflops
            if r["status"] != "PASS" and met:
                met = False  # a wrong result meets no speed goal
            r["goals"].append(
                {
                    "target": target,
                    "mode": goal.mode,
                    "value": value,
                    "met": met,
                    "text": goal.text,
                    "as_speedup": goal_speedup(goal, case, rows),
                }
            )


def _warnings(rows: list[dict]) -> None:
    for r in rows:
        for mode in r["ms"]:
            for key, what in (("pct_copy", "copy bandwidth"), ("pct_matmul", "matmul throughput")):
                pct = r[key].get(mode)
                if pct is not None and pct > 100:
                    r["warnings"].append(
                        f"{mode}: {pct:.0f}% of the measured {what}: above the ceiling, so the "
                        "byte/flop model overcounts, the data sat in cache, or the ceiling was "
                        "measured under load"
                    )
            spread = r["spread"].get(mode)
            if spread is not None and spread > SPREAD_WARN:
                r["warnings"].append(
                    f"{mode}: spread (IQR) {100 * spread:.0f}% of the median: noisy, rerun on an "
                    "idle machine before trusting it"
                )


def run_case(
    case: Case,
    budget: Budget,
    ceilings: dict,
    only: Optional[set] = None,
    on_impl: Callable[[str], None] = lambda label: None,
    deadline: Optional[float] = None,
    on_row: Callable[[list], None] = lambda rows: None,
) -> list[dict]:
    """Check and time the impls of ``case`` (those named in ``only``, when given); one row each.

    ``deadline`` (``time.monotonic()`` seconds): impls not started by then become CUT rows.
    ``on_row(rows)`` is called with the case's rows so far each time one is finished (the CLI
    writes its JSON there, so an interrupted run keeps every finished row).
    """
    impls = [i for i in case.impls if only is None or i.name in only]
    rows, todo = [], []
    for impl in impls:
        row = _base_row(case, impl)
        rows.append(row)
        reason = skip_reason(impl, case.device)
        if reason:
            row.update(status="SKIP", reason=reason)
            on_impl(f"{case.id} {impl.name}")
        else:
            todo.append((impl, row))
    if not todo:
        on_row(rows)
        return rows
    preps: dict = {}  # one per problem (the case's, and each peer's own)

    def prepared(impl: Impl):
        key = id(impl) if impl.own_problem else None
        if key not in preps:
            problem = problem_of(case, impl)
            users = [i for i, _ in todo if (id(i) if i.own_problem else None) == key]
            try:
                preps[key] = _Prepared(
                    problem, needs_backward=any(i.backward for i in users) and bool(problem.grad_inputs)
                )
            except Exception as e:
                preps[key] = e
        return preps[key]

    # the baseline first: when the time budget cuts the case short, the rows that did run can
    # still be compared (the rows keep the case's order in the report)
    todo.sort(key=lambda pair: pair[0].name != case.baseline)
    for impl, row in todo:
        if deadline is not None and time.monotonic() > deadline:
            row.update(status="CUT", reason="not run: the time budget (--time-budget) was spent")
            on_impl(f"{case.id} {impl.name}")
            continue
        prep = prepared(impl)
        if isinstance(prep, Exception):
            row.update(status="ERROR", reason=f"building inputs/oracle: {_error(prep)}")
            on_impl(f"{case.id} {impl.name}")
            on_row(rows)
            continue
        problem = problem_of(case, impl)
        shapes_ok = False
        try:
            shapes_ok = _check(problem, impl, prep, row)
        except Exception as e:
            row.update(status="ERROR", reason=f"check: {_error(e)}")
        if row["status"] != "ERROR" and impl.timed:
            try:
                _time(problem, impl, prep, row, budget, ceilings, shapes_ok)
            except Exception as e:
                row.update(status="ERROR", reason=f"timing: {_error(e)}")
        elif not impl.timed:
            row["timer"] = "not timed (correctness check only)"
        prep.reset()
        on_impl(f"{case.id} {impl.name}")
        on_row(rows)
    _speedups(case, rows)
    _goals(case, rows)
    _warnings(rows)
    on_row(rows)
    preps.clear()
    if case.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows
