"""The GPU check's dry run (benchmarks/gpu_check.py, NLSEQ_GPU_CHECK_DRY=1) on the CPU.

One run of the driver with small limits exercises what a GPU run depends on: phases in their own
processes, per-test results from the pytest plugin (including a test that leaves a sticky CUDA
error, after which the phase continues in a fresh process, and a test that hangs past the time
limit), the cuda/triton parameter selection, a bench phase whose rows and figure data land in
the report, a phase that hangs and ignores SIGINT/SIGTERM (cut by SIGKILL and reported), and the
report itself: always written, at most 8 files under $OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

GPU_TESTS = """
import pytest


def test_a_passes():
    assert 1 + 1 == 2


def test_b_sticky_cuda_error():
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_c_fails():
    assert 2 + 2 == 5, "two and two"


def test_d_skips():
    pytest.skip("no GPU here")
"""

FAMILY_TESTS = """
import time

import pytest


@pytest.mark.parametrize("backend", ["cuda", "triton", "cpp", "reference"])
def test_op(backend):
    assert backend in ("cuda", "triton")  # cpp/reference must be deselected, or this fails


@pytest.mark.parametrize("backend", ["triton"])
def test_zz_hangs(backend):
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "gpu").mkdir()
    (tmp / "gpu" / "test_fake_gpu.py").write_text(textwrap.dedent(GPU_TESTS))
    (tmp / "test_fake_family.py").write_text(textwrap.dedent(FAMILY_TESTS))
    out = tmp / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "NLSEQ_GPU_CHECK_DRY": "1",
        "NLSEQ_GPU_CHECK_WORK": str(tmp / "work"),
        "NLSEQ_GPU_CHECK_PHASES": "build,env,tests-gpu,tests-family,bench-scan,bench-rest",
        "NLSEQ_GPU_CHECK_GPU_TESTS": str(tmp / "gpu"),
        "NLSEQ_GPU_CHECK_FAMILY_TESTS": str(tmp / "test_fake_family.py"),
        "NLSEQ_GPU_CHECK_HANG": "bench-rest",
        "NLSEQ_GPU_CHECK_LIMITS": "tests-family=12,bench-rest=4",
        "NLSEQ_GPU_CHECK_GRACE": "3",
        # the cpp and reference rows only: the Triton interpreter rows are slow and tested elsewhere
        "NLSEQ_GPU_CHECK_BENCH_ARGS": "--backend cpp,reference",
    }
    env.pop("TRITON_INTERPRET", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    seconds = time.monotonic() - start
    report = json.loads((out / "gpu_report.json").read_text())
    return proc, report, out, seconds


def test_report_is_written_with_versions_and_phases(dry_run):
    proc, report, out, seconds = dry_run
    assert report["schema"] == "nlseq-gpu-check/1" and report["dry_run"] is True
    assert report["finished"] and report["build"]["ok"] and report["build"]["dry"]
    v = report["versions"]
    assert v["torch"] and v["python"] and "backends" in v and "cpp" in v["backends"]
    assert list(report["phases"]) == ["build", "env", "tests-gpu", "tests-family", "bench-scan", "bench-rest"]
    assert report["ok"] is False and proc.returncode == 1  # a failing test and a cut phase: not ok
    assert seconds < report["budget_s"] + 30, seconds
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 2 <= len(files) <= 8, files
    assert sorted(report["files"]) == sorted(p.name for p in files)
    assert "gpu_check.log" in report["files"]


def test_tests_phase_survives_a_sticky_cuda_error(dry_run):
    _, report, _, _ = dry_run
    tests = report["tests"]["tests-gpu"]
    outcome = {r["nodeid"].rsplit("::", 1)[1]: r["outcome"] for r in tests["results"]}
    # the sticky error ends the process; the driver reruns the tests not reported yet
    assert outcome == {
        "test_a_passes": "passed",
        "test_b_sticky_cuda_error": "failed",
        "test_c_fails": "failed",
        "test_d_skips": "skipped",
    }, outcome
    assert tests["processes"] == 2
    msg = next(r["message"] for r in tests["results"] if r["nodeid"].endswith("test_c_fails"))
    assert "two and two" in msg
    assert report["phases"]["tests-gpu"]["status"] == "tests failed"


def test_family_phase_selects_gpu_params_and_cuts_a_hanging_test(dry_run):
    _, report, _, _ = dry_run
    tests = report["tests"]["tests-family"]
    outcome = {r["nodeid"].rsplit("::", 1)[1]: r["outcome"] for r in tests["results"]}
    assert outcome == {
        "test_op[cuda]": "passed",
        "test_op[triton]": "passed",
        "test_zz_hangs[triton]": "not finished",
    }, outcome
    assert tests["running"].endswith("test_zz_hangs[triton]")
    assert tests["autotune_first"] is True
    phase = report["phases"]["tests-family"]
    assert phase["timed_out"] and phase["status"] == "timed_out"
    assert any(c["what"] == "tests-family" and "test_zz_hangs" in c["reason"] for c in report["cut"])


def test_bench_phase_rows_and_figure_in_report(dry_run):
    _, report, out, _ = dry_run
    bench = report["bench"]["bench-scan"]
    assert bench["status"] == "ok", report["phases"]["bench-scan"]["log_tail"]
    doc = bench["json"]
    assert doc["complete"] and doc["options"]["device"] == "cpu"
    rows = doc["rows"]
    assert rows and {r["family"] for r in rows} == {"scan"} and all(r["status"] == "PASS" for r in rows)
    assert all("-tiny" in r["case"] for r in rows) and {r["impl"] for r in rows} == {"cpp", "reference"}
    assert all(r["ms"]["fwd"] > 0 for r in rows)
    fig = doc["figures"]["scan/cpu"]
    assert {c["label"].split("/")[0] for c in fig["cases"]} == {"diagonal-tiny", "block-tiny"}
    assert f"bench-scan-{fig['png'].split('-', 4)[-1]}" in report["files"]
    assert (out / f"bench-scan-{fig['png'].split('-', 4)[-1]}").read_bytes()[:4] == b"\x89PNG"


def test_hanging_phase_is_killed_and_reported(dry_run):
    _, report, _, _ = dry_run
    phase = report["phases"]["bench-rest"]
    # the forced hang ignores SIGTERM: it is killed after the grace period
    assert phase["timed_out"] and phase["killed"] and phase["status"] == "timed_out"
    assert phase["seconds"] < phase["limit_s"] + 3 + 10
    assert "forced hang" in phase["log_tail"]
    assert any(c["what"] == "bench-rest" for c in report["cut"])


def test_bad_settings_exit_2(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "NLSEQ_GPU_CHECK_PHASES": "build,nosuchphase"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nosuchphase" in proc.stderr
