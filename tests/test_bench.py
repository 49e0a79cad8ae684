"""The benchmark harness itself (nlseq.bench): checks, failure reporting, discovery, CLI outputs.

Timing numbers are never asserted (they depend on the machine); what is asserted is that a wrong
implementation is reported as FAIL, a raising one as ERROR, an unavailable one as SKIP with its
reason, and that a run writes a JSON file with the documented fields and a PNG.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nlseq.bench.cases
from nlseq.bench import Case, Impl
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


def _fake_case(impls, baseline=None):
    return Case(family="fake", name="double", device="cpu", dtype=torch.float32, shape={"N": 64}, inputs=_inputs,
                oracle=lambda x: (2 * x, x.sum()), impls=impls, grad_inputs=("x",), output_names=("y", "s"),
                atol=1e-6, rtol=1e-6, baseline=baseline, bytes={"fwd": 2 * 64 * 4})


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


def test_forward_only_and_untimed_impls():
    impls = [Impl("fwdonly", lambda x: (2 * x, x.sum()), backward=False),
             Impl("checkonly", lambda x: (2 * x, x.sum()), timed=False)]
    rows = {r["impl"]: r for r in run_case(_fake_case(impls), TINY, {})}
    assert rows["fwdonly"]["status"] == "PASS" and set(rows["fwdonly"]["ms"]) == {"fwd"}
    assert "dx" not in rows["fwdonly"]["errors"]
    assert rows["checkonly"]["status"] == "PASS" and rows["checkonly"]["ms"] == {}
    assert "dx" in rows["checkonly"]["errors"]


def test_non_tensor_inputs_pass_through():
    case = Case(family="fake", name="scale", device="cpu", dtype=torch.float32, shape={"N": 8},
                inputs=lambda: {"x": torch.arange(8.0), "k": 3}, oracle=lambda x, k: x * k,
                impls=[Impl("mul", lambda x, k: x * k), Impl("add", lambda x, k: x + k)], grad_inputs=("x",),
                atol=1e-6, rtol=1e-6)
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
    rc = main(["--quick", "--family", "scan", "--case", "/bf16/", "--backend", "cpp", "--device", "cpu",
               "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    doc = _only_json(tmp_path)
    assert doc["schema"] == "nlseq-bench/1"
    m = doc["machine"]
    for key in ("device_name", "cpu_model", "cpu_count", "torch", "triton", "python", "git", "date"):
        assert key in m, key
    assert m["torch"] == torch.__version__ and m["cpu_count"] >= 1
    assert doc["ceilings"]["cpu"]["copy_GBps"] > 0
    assert doc["options"]["quick"] is True and doc["options"]["backend"] == ["cpp"]
    assert doc["options"]["case"] == ["/bf16/"]
    rows = doc["rows"]
    assert rows and {r["impl"] for r in rows} == {"cpp"} and {r["family"] for r in rows} == {"scan"}
    for r in rows:
        assert r["status"] == "PASS", r
        assert r["dtype"] == "bf16" and r["shape"]["T"] > 0
        assert set(r["ms"]) == {"fwd", "bwd", "fwdbwd"} and r["GBps"]["fwd"] > 0
        assert r["case"] == "diagonal" and r["id"] in doc["cases"]
    pngs = list(tmp_path.glob("nlseq-bench-*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert all(r["id"] in out for r in rows)  # the table names every case it ran


def test_bad_options_exit_2(capsys):
    assert main(["--family", "nosuchfamily", "--no-plot"]) == 2
    assert main(["--family", "scan", "--backend", "nosuchimpl", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "nosuchfamily" in err and "nosuchimpl" in err


def test_module_entry_point_lists_cases():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "nlseq.bench", "--list", "--family", "scan", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root / "python")})
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

    seconds, how = time_cpu(fn, Budget(0.05, 2, 10, 40))
    assert seconds > 0 and seen and set(seen) == {outer}, (how, set(seen), outer)
