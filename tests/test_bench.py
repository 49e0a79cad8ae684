"""The benchmark harness itself (nlseq.bench): checks, failure reporting, discovery, CLI outputs.

Timing numbers are never asserted (they depend on the machine); what is asserted is that a wrong
implementation is reported as FAIL, a raising one as ERROR, an unavailable one as SKIP with its
reason, that goals, warnings, peers with their own oracle, the time budget and interrupts are
handled, and that a run writes a JSON file with the documented fields and a figure whose data
(stored in the JSON, and the matplotlib artists) says what it should.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nlseq.bench.cases
from nlseq.bench import Case, Goal, Impl, report
from nlseq.bench.__main__ import main
from nlseq.bench.runner import run_case
from nlseq.bench.timing import Budget

TINY = Budget(cpu_min_s=0.01, cpu_min_reps=1, gpu_warmup_ms=1, gpu_rep_ms=5)


def _inputs():
    return {"x": torch.linspace(-2.0, 3.0, 64)}


class _WrongGrad(torch.autograd.Function):
    """Forward 2x (right), backward 2.5·g (wrong): only the gradient check can catch it."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2.5 * g


def _fake_case(impls, baseline=None, **kw):
    return Case(
        family="fake",
        name="double",
        device="cpu",
        dtype=torch.float32,
        shape={"N": 64},
        inputs=_inputs,
        oracle=lambda x: (2 * x, x.sum()),
        impls=impls,
        grad_inputs=("x",),
        output_names=("y", "s"),
        atol=1e-6,
        rtol=1e-6,
        baseline=baseline,
        bytes={"fwd": 2 * 64 * 4},
        **kw,
    )


def _raise(x):
    raise RuntimeError("kernel exploded")


def test_wrong_impls_fail_and_right_one_passes():
    impls = [
        Impl("right", lambda x: (2 * x, x.sum())),
        Impl("off", lambda x: (2 * x + 1e-3, x.sum())),
        Impl("nan", lambda x: (torch.where(x > 0, torch.nan, 2 * x), x.sum())),
        Impl("wronggrad", lambda x: (_WrongGrad.apply(x), x.sum())),
        Impl("shape", lambda x: (2 * x[:-1], x.sum())),
        Impl("raises", _raise),
        Impl("absent", lambda x: (2 * x, x.sum()), skip="not built here"),
    ]
    rows = {r["impl"]: r for r in run_case(_fake_case(impls, baseline="right"), TINY, {"copy_GBps": 1.0})}
    assert rows["right"]["status"] == "PASS", rows["right"]
    assert rows["right"]["errors"]["y"] == 0.0 and rows["right"]["errors"]["dx"] < 1e-6
    assert set(rows["right"]["errors"]) == {"y", "s", "dx"}
    assert rows["off"]["status"] == "FAIL" and "y" in rows["off"]["reason"]
    assert rows["off"]["max_abs_err"] == pytest.approx(1e-3, rel=1e-3)
    assert rows["nan"]["status"] == "FAIL" and "NaN" in rows["nan"]["reason"]
    assert rows["wronggrad"]["status"] == "FAIL" and "dx" in rows["wronggrad"]["reason"]
    assert rows["wronggrad"]["errors"]["y"] == 0.0
    assert rows["shape"]["status"] == "FAIL" and "shape" in rows["shape"]["reason"]
    assert rows["raises"]["status"] == "ERROR" and "kernel exploded" in rows["raises"]["reason"]
    assert rows["absent"]["status"] == "SKIP" and rows["absent"]["reason"] == "not built here"
    # a FAIL is still timed (a wrong kernel must not hide), and speedups are against the baseline
    for name in ("right", "off"):
        assert set(rows[name]["ms"]) == {"fwd", "bwd", "fwdbwd"}
        assert rows[name]["GBps"]["fwd"] > 0 and rows[name]["pct_copy"]["fwd"] > 0
    assert rows["right"]["speedup"]["fwd"] == 1.0
    assert rows["raises"]["ms"] == {} and rows["absent"]["ms"] == {}
    # the spread: quartiles around the median, and a speedup range that contains the speedup
    for mode in ("fwd", "bwd", "fwdbwd"):
        r = rows["off"]
        assert r["ms_q25"][mode] <= r["ms"][mode] <= r["ms_q75"][mode] and r["spread"][mode] >= 0
        assert r["speedup_lo"][mode] <= r["speedup"][mode] <= r["speedup_hi"][mode]
    assert rows["right"]["warnings"] == [] or all("spread" in w for w in rows["right"]["warnings"])
    assert rows["right"]["peer"] is True and rows["absent"]["peer"] is True  # no nlseq backend


def test_forward_only_and_untimed_impls():
    impls = [
        Impl("fwdonly", lambda x: (2 * x, x.sum()), backward=False),
        Impl("checkonly", lambda x: (2 * x, x.sum()), timed=False),
    ]
    rows = {r["impl"]: r for r in run_case(_fake_case(impls), TINY, {})}
    assert rows["fwdonly"]["status"] == "PASS" and set(rows["fwdonly"]["ms"]) == {"fwd"}
    assert "dx" not in rows["fwdonly"]["errors"]
    assert rows["checkonly"]["status"] == "PASS" and rows["checkonly"]["ms"] == {}
    assert "dx" in rows["checkonly"]["errors"]


def test_non_tensor_inputs_pass_through():
    case = Case(
        family="fake",
        name="scale",
        device="cpu",
        dtype=torch.float32,
        shape={"N": 8},
        inputs=lambda: {"x": torch.arange(8.0), "k": 3},
        oracle=lambda x, k: x * k,
        impls=[Impl("mul", lambda x, k: x * k), Impl("add", lambda x, k: x + k)],
        grad_inputs=("x",),
        atol=1e-6,
        rtol=1e-6,
    )
    status = {r["impl"]: r["status"] for r in run_case(case, TINY, {})}
    assert status == {"mul": "PASS", "add": "FAIL"}


def test_unavailable_backend_is_skipped_with_reason():
    # the cuda backend cannot take CPU tensors: skipped before anything runs
    rows = run_case(_fake_case([Impl("cuda", _raise, backend="cuda")]), TINY, {})
    assert rows[0]["status"] == "SKIP" and rows[0]["reason"]


FAKE_FAMILY = '''
"""A family module written by the test: one right and one wrong implementation."""
import torch
from nlseq.bench import Case, Impl

FAMILY = "fakefam"


def cases(device, quick):
    if device.type != "cpu":
        return []
    return [Case(family=FAMILY, name="square", device=device, dtype=torch.float32, shape={"N": 33},
                 inputs=lambda: {"x": torch.randn(33)}, oracle=lambda x: x * x, impls=[
                     Impl("good", lambda x: x * x), Impl("bad", lambda x: x * x + 0.5)],
                 grad_inputs=("x",), atol=1e-6, rtol=1e-6, baseline="good", flops={"fwd": 33})]
'''


@pytest.fixture
def fake_family(tmp_path, monkeypatch):
    """A case module dropped into an extra folder of nlseq.bench.cases (as a family helper would)."""
    folder = tmp_path / "extra_cases"
    folder.mkdir()
    (folder / "fakefam.py").write_text(textwrap.dedent(FAKE_FAMILY))
    monkeypatch.setattr(nlseq.bench.cases, "__path__", list(nlseq.bench.cases.__path__) + [str(folder)])
    yield "fakefam"
    sys.modules.pop("nlseq.bench.cases.fakefam", None)


def _only_json(folder: Path) -> dict:
    files = sorted(folder.glob("nlseq-bench-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_discovered_family_fail_sets_exit_status(fake_family, tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["--quick", "--family", fake_family, "--device", "cpu", "--out", str(out), "--no-plot"])
    assert rc == 1  # a FAIL makes the run fail
    doc = _only_json(out)
    status = {r["impl"]: r["status"] for r in doc["rows"]}
    assert status == {"good": "PASS", "bad": "FAIL"}
    assert not list(out.glob("*.png"))
    assert "matmul_TFLOPs" in doc["ceilings"]["cpu"]  # the case declares flops
    good = next(r for r in doc["rows"] if r["impl"] == "good")
    assert good["TFLOPs"]["fwd"] > 0 and good["pct_matmul"]["fwd"] > 0
    text = capsys.readouterr().out
    assert "fakefam/square/N33/fp32/cpu" in text and "FAIL" in text


def test_broken_family_module_is_an_error_row(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "broken_cases"
    folder.mkdir()
    (folder / "brokenfam.py").write_text("raise ImportError('missing dependency xyz')\n")
    monkeypatch.setattr(nlseq.bench.cases, "__path__", list(nlseq.bench.cases.__path__) + [str(folder)])
    rc = main(["--quick", "--family", "brokenfam", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-plot"])
    sys.modules.pop("nlseq.bench.cases.brokenfam", None)
    assert rc == 1
    rows = _only_json(tmp_path / "r")["rows"]
    assert len(rows) == 1 and rows[0]["status"] == "ERROR" and "missing dependency xyz" in rows[0]["reason"]


def test_cli_quick_scan_writes_json_and_png(tmp_path, capsys):
    rc = main(
        [
            "--quick",
            "--family",
            "scan",
            "--case",
            "/bf16/",
            "--backend",
            "cpp,loop",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0, capsys.readouterr().out
    doc = _only_json(tmp_path)
    assert doc["schema"] == "nlseq-bench/2"
    m = doc["machine"]
    for key in ("device_name", "cpu_model", "cpu_count", "torch", "triton", "python", "git", "date"):
        assert key in m, key
    assert m["torch"] == torch.__version__ and m["cpu_count"] >= 1
    assert doc["ceilings"]["cpu"]["copy_GBps"] > 0
    assert doc["options"]["quick"] is True and doc["options"]["backend"] == ["cpp", "loop"]
    assert doc["options"]["case"] == ["/bf16/"]
    assert doc["complete"] is True and doc["cut"] == [] and doc["interrupted"] is None
    assert len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    rows = doc["rows"]
    assert rows and {r["impl"] for r in rows} == {"cpp", "loop"} and {r["family"] for r in rows} == {"scan"}
    for r in rows:
        assert r["status"] == "PASS", r
        assert r["dtype"] == "bf16" and r["shape"]["T"] > 0
        assert r["GBps"]["fwd"] > 0 and r["case"] == "diagonal" and r["id"] in doc["cases"]
    cpp = next(r for r in rows if r["impl"] == "cpp")
    assert set(cpp["ms"]) == {"fwd", "bwd", "fwdbwd"} and cpp["grads_checked"] is True
    pngs = list(tmp_path.glob("nlseq-bench-*-scan-cpu.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure's data, as stored in the JSON: cpp in colour against the grey loop baseline (fwd)
    fig = doc["figures"]["scan/cpu"]
    assert fig["png"] == pngs[0].name and len(fig["cases"]) == 1
    case = fig["cases"][0]
    assert case["mode"] == "fwd" and case["baseline"] == "loop"
    bars = {b["impl"]: b for b in case["bars"]}
    assert bars["loop"]["color"] == report.PEER_COLOR and bars["loop"]["speedup"] == 1.0 and bars["loop"]["baseline"]
    assert bars["cpp"]["color"] == report.BACKEND_COLORS["cpp"] and bars["cpp"]["nlseq"]
    assert bars["cpp"]["speedup"] == pytest.approx(cpp["speedup"]["fwd"])
    assert bars["cpp"]["pct_roofline"] == pytest.approx(cpp["pct_copy"]["fwd"]) and bars["cpp"]["roofline"] == "copy"
    out = capsys.readouterr().out
    assert all(r["id"] in out for r in rows)  # the table names every case it ran
    assert "GB/s" in out and "err/tol" in out and "load average" in out


def test_bad_options_exit_2(capsys, tmp_path):
    assert main(["--family", "nosuchfamily", "--no-plot"]) == 2
    assert main(["--family", "scan", "--backend", "nosuchimpl", "--no-plot"]) == 2
    assert main(["--family", "scan", "--device", "cpu", "--case", "nosuchcase", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "nosuchfamily" in err and "nosuchimpl" in err and "nosuchcase" in err
    if not torch.cuda.is_available():
        assert main(["--family", "scan", "--device", "cuda", "--no-plot"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_module_entry_point_lists_cases():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "nlseq.bench", "--list", "--family", "scan", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root / "python")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "scan/diagonal/B4xT4096xN256/fp32/cpu" in proc.stdout and "cpp" in proc.stdout


@pytest.mark.parametrize("call_s", [0.0, 0.06], ids=["fast-call", "slow-call"])
def test_cpu_timing_runs_on_torch_thread_count(call_s):
    """Fast calls (torch.utils.benchmark) and slow ones (perf_counter) are timed with the same
    thread count, torch's: Timer alone would drop to one thread and skew fast rows against slow."""
    import time

    from nlseq.bench.timing import Budget, time_cpu

    outer = torch.get_num_threads()
    seen = []

    def fn():
        seen.append(torch.get_num_threads())
        if call_s:
            time.sleep(call_s)

    t = time_cpu(fn, Budget(0.05, 2, 10, 40))
    assert t.median > 0 and seen and set(seen) == {outer}, (t.how, set(seen), outer)
    assert t.q25 <= t.median <= t.q75 and t.n >= 2


def test_goals_met_missed_and_wrong_rows_meet_none():
    impls = [
        Impl("base", lambda x: (2 * x, x.sum())),
        Impl("fast", lambda x: (2 * x, x.sum())),
        Impl("wrong", lambda x: (2 * x + 1, x.sum())),
    ]
    goals = (
        Goal(("fast", "wrong"), "fwd", speedup=1e-6, text="any speed"),
        Goal(("fast",), "fwd", max_ms=1e-9, text="impossible"),
    )
    rows = {r["impl"]: r for r in run_case(_fake_case(impls, baseline="base", goals=goals), TINY, {})}
    fast = rows["fast"]["goals"]
    assert [g["met"] for g in fast] == [True, False]
    assert fast[0]["value"] == pytest.approx(rows["fast"]["speedup"]["fwd"])
    assert fast[0]["as_speedup"] == pytest.approx(1e-6)
    base_ms = rows["base"]["ms"]["fwd"]
    assert fast[1]["as_speedup"] == pytest.approx(base_ms / 1e-9)  # where the figure draws the goal
    assert rows["wrong"]["status"] == "FAIL" and rows["wrong"]["goals"][0]["met"] is False
    assert rows["base"]["goals"] == []
    with pytest.raises(ValueError, match="goal names"):
        _fake_case(impls, goals=(Goal(("absent",), "fwd", speedup=2.0),))
    with pytest.raises(ValueError, match="exactly one"):
        Goal(("fast",), "fwd")


def test_peer_with_its_own_oracle_in_the_same_case():
    """A peer computing another function (as nn.GRU beside ParaGRU) is checked against its own oracle."""
    own = dict(
        inputs=lambda: {"y": torch.linspace(0.0, 1.0, 16)}, oracle=lambda y: 3 * y, grad_inputs=("y",), tol=(1e-6, 1e-6)
    )
    impls = [
        Impl("mine", lambda x: (2 * x, x.sum())),
        Impl("peer", lambda y: 3 * y, **own),
        Impl("badpeer", lambda y: 3 * y + 0.1, **own),
    ]
    rows = {r["impl"]: r for r in run_case(_fake_case(impls, baseline="peer"), TINY, {})}
    assert rows["mine"]["status"] == "PASS" and rows["peer"]["status"] == "PASS", rows
    assert rows["badpeer"]["status"] == "FAIL" and rows["peer"]["own_oracle"] and not rows["mine"]["own_oracle"]
    assert set(rows["peer"]["errors"]) == {"y", "dy"}  # named as the case names its outputs
    assert rows["mine"]["speedup"]["fwd"] > 0  # compared with the peer in the same case


def test_forward_only_oracle_times_but_does_not_check_gradients():
    impls = [Impl("wronggrad", lambda x: (_WrongGrad.apply(x), x.sum()))]
    rows = run_case(_fake_case(impls, check_grads=False), TINY, {})
    r = rows[0]
    assert r["status"] == "PASS" and r["grads_checked"] is False and "dx" not in r["errors"]
    assert set(r["ms"]) == {"fwd", "bwd", "fwdbwd"}
    assert any("not checked" in w for w in r["warnings"])


def test_warning_above_the_ceiling():
    rows = run_case(_fake_case([Impl("right", lambda x: (2 * x, x.sum()))]), TINY, {"copy_GBps": 1e-12})
    assert rows[0]["pct_copy"]["fwd"] > 100
    assert any("above the ceiling" in w for w in rows[0]["warnings"])


def test_deadline_cuts_impls():
    import time

    rows = run_case(_fake_case([Impl("a", lambda x: (2 * x, x.sum()))]), TINY, {}, deadline=time.monotonic() - 1)
    assert rows[0]["status"] == "CUT" and "time budget" in rows[0]["reason"] and rows[0]["ms"] == {}


SLOW_FAMILY = """
import os, signal, time
import torch
from nlseq.bench import Case, Impl

FAMILY = "slowfam"


def _sigterm(x):
    if os.environ.get("SLOWFAM_SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)  # as a driver's time limit would
    time.sleep(0.3)
    return x * 1


def cases(device, quick):
    if device.type != "cpu":
        return []
    make = lambda name, **kw: Case(family=FAMILY, name=name, device=device, dtype=torch.float32, shape={"N": 4},
                                   inputs=lambda: {"x": torch.ones(4)}, oracle=lambda x: x, atol=0.0, rtol=0.0,
                                   baseline="fast", **kw)
    return [make("first", impls=[Impl("fast", lambda x: x * 1), Impl("slow", _sigterm)]),
            make("second", impls=[Impl("fast", lambda x: x * 1)]),
            make("third", impls=[Impl("fast", lambda x: x * 1)], headline=True)]
"""


@pytest.fixture
def slow_family(tmp_path, monkeypatch):
    folder = tmp_path / "slow_cases"
    folder.mkdir()
    (folder / "slowfam.py").write_text(textwrap.dedent(SLOW_FAMILY))
    monkeypatch.setattr(nlseq.bench.cases, "__path__", list(nlseq.bench.cases.__path__) + [str(folder)])
    yield "slowfam"
    sys.modules.pop("nlseq.bench.cases.slowfam", None)


def test_time_budget_cuts_and_reports(slow_family, tmp_path, capsys):
    rc = main(
        [
            "--quick",
            "--family",
            slow_family,
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--time-budget",
            "0.001",
        ]
    )
    assert rc == 0  # cut by the budget: reported, not a failure
    doc = _only_json(tmp_path)
    assert doc["complete"] is False and doc["interrupted"] is None
    cut = {c["id"].split("/")[1] for c in doc["cut"]}
    assert cut and cut <= {"first", "second", "third"} and all("budget" in c["reason"] for c in doc["cut"])
    assert "cut (time budget spent)" in capsys.readouterr().out


def test_sigterm_keeps_finished_rows(slow_family, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLOWFAM_SIGTERM", "1")
    handler = signal.getsignal(signal.SIGTERM)
    rc = main(["--quick", "--family", slow_family, "--device", "cpu", "--out", str(tmp_path), "--no-plot"])
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert rc == 128 + signal.SIGTERM
    doc = _only_json(tmp_path)
    assert doc["interrupted"] == "SIGTERM" and doc["complete"] is False
    status = {(r["case"], r["impl"]): r["status"] for r in doc["rows"]}
    assert status == {("first", "fast"): "PASS", ("first", "slow"): "CUT"}, status
    assert doc["rows"][0]["ms"]["fwd"] > 0  # the finished row kept its timing
    assert {c["id"].split("/")[1] for c in doc["cut"]} == {"second", "third"}


def test_subset_selects_headline_cases(slow_family, tmp_path):
    rc = main(
        [
            "--quick",
            "--family",
            slow_family,
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--subset",
            "headline",
        ]
    )
    assert rc == 0
    assert {r["case"] for r in _only_json(tmp_path)["rows"]} == {"third"}
    assert (
        main(
            [
                "--quick",
                "--family",
                slow_family,
                "--device",
                "cpu",
                "--subset",
                "headline",
                "--case",
                "first",
                "--no-plot",
                "--out",
                str(tmp_path / "none"),
            ]
        )
        == 2
    )


def _figure_doc():
    """A bench document with one case: an nlseq row, a peer, the baseline, a goal."""

    def row(impl, backend, ms, q25, q75, base=(1.0, 0.9, 1.2), pct=None, goals=()):
        return {
            "family": "fam",
            "device": "cpu",
            "id": "fam/c/N8/fp32/cpu",
            "impl": impl,
            "backend": backend,
            "baseline": "base",
            "status": "PASS",
            "ms": {"fwd": ms},
            "ms_q25": {"fwd": q25},
            "ms_q75": {"fwd": q75},
            "spread": {"fwd": (q75 - q25) / ms},
            "speedup": {"fwd": base[0] / ms},
            "speedup_lo": {"fwd": base[1] / q75},
            "speedup_hi": {"fwd": base[2] / q25},
            "pct_copy": {"fwd": pct} if pct else {},
            "pct_matmul": {},
            "goals": list(goals),
        }

    goal = {"target": ">= 3x base (fwd)", "mode": "fwd", "value": 4.0, "met": True, "text": "", "as_speedup": 3.0}
    rows = [
        row("cpp", "cpp", 0.25, 0.2, 0.3, pct=40.0, goals=[goal]),
        row("torch", None, 2.0, 1.8, 2.5),
        row("base", None, 1.0, 0.9, 1.2),
    ]
    return {"rows": rows, "machine": {"device_name": "test cpu", "date": "2026-01-01"}}


def test_figure_data_and_artists():
    data = report.figure_data(_figure_doc(), "fam", "cpu")
    assert report.figure_data(_figure_doc(), "other", "cpu") is None
    (case,) = data["cases"]
    bars = {b["impl"]: b for b in case["bars"]}
    assert [b["impl"] for b in case["bars"]] == ["cpp", "torch", "base"]
    assert bars["cpp"]["speedup"] == 4.0 and bars["cpp"]["color"] == report.BACKEND_COLORS["cpp"]
    assert bars["cpp"]["lo"] == pytest.approx(0.9 / 0.3) and bars["cpp"]["hi"] == pytest.approx(1.2 / 0.2)
    assert bars["torch"]["color"] == bars["base"]["color"] == report.PEER_COLOR  # peers in grey
    assert bars["torch"]["speedup"] == 0.5 and bars["base"]["baseline"]
    assert case["goals"] == [{"impl": "cpp", "target": ">= 3x base (fwd)", "as_speedup": 3.0, "met": True}]
    assert data["xlim"][0] < 0.5 and data["xlim"][1] > 6.0  # every bar and error bar fits
    fig = report.draw(data)
    try:
        ax, ax_roof = fig.axes[:2]
        assert ax.get_xscale() == "log"
        # one horizontal bar per row, from 1x to its speedup (left of 1x: slower than the baseline)
        rects = [p for p in ax.patches if p.get_height() > 0.5]
        assert len(rects) == 3
        spans = sorted((round(r.get_x(), 6), round(r.get_x() + r.get_width(), 6)) for r in rects)
        assert spans == [(1.0, 0.5), (1.0, 1.0), (1.0, 4.0)]
        colours = {round(r.get_x() + r.get_width(), 6): r.get_facecolor()[:3] for r in rects}
        import matplotlib.colors as mcolors

        assert colours[4.0] == pytest.approx(mcolors.to_rgb(report.BACKEND_COLORS["cpp"]))
        assert colours[0.5] == pytest.approx(mcolors.to_rgb(report.PEER_COLOR))
        # the 1x line and the goal (dashed, at 3x)
        xs = [tuple(l.get_xdata()) for l in ax.get_lines()]
        assert (1.0, 1.0) in xs and (3.0, 3.0) in xs
        roof = [p.get_width() for p in ax_roof.patches if p.get_height() > 0.5]
        assert roof == [40.0]
        assert math.isclose(ax_roof.get_lines()[0].get_xdata()[0], 100.0)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_softmax_oracle_chunked_backward_matches_autograd():
    """The SDPA peer's float64 oracle gradients (explicit, one chunk of probabilities at a time)
    equal autograd through the chunked forward; N spans two chunks and is not a multiple of one."""
    from nlseq.bench.cases import softplus_attention as sa

    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 2, 1100, 8, generator=g, dtype=torch.float64) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sa._softmax_oracle(*leaves)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, sdpa, atol=1e-12, rtol=0)
    expected = torch.autograd.grad(out, leaves, do)
    got = sa._softmax_oracle_grads({"q": q, "k": k, "v": v}, (do,))
    for name, e in zip("qkv", expected):
        assert torch.allclose(got[name], e, atol=1e-12, rtol=0), name
