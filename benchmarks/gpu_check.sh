#!/usr/bin/env bash
# One-shot check on a GPU machine (written for an H200 with Python 3.12, torch 2.11 cu130,
# triton 3.6, nvcc 13 and no network): build the extension with the CUDA kernels, run the GPU
# tests, run the benchmarks, and write a JSON report. Every step has a time limit; the whole
# script stays within NLSEQ_GPU_CHECK_BUDGET seconds (default 450, i.e. 7.5 minutes).
#
#   bash benchmarks/gpu_check.sh                 outputs in $OUT (default results/gpu_check)
#
#   OUT                     output folder: gpu_report.json, junit.xml, build.log, pytest.log,
#                           bench.log and bench/ (the bench CLI's JSON and plot)
#   PYTHON                  interpreter with torch (default python3)
#   NLSEQ_CUDA_ARCHS        default "90"; MAX_JOBS default 16; CUDA_HOME default /usr/local/cuda
#   NLSEQ_GPU_CHECK_BUDGET  total seconds (default 450)
#
# Exit status: 0 when the build succeeded and no test failed, 1 otherwise (the report is
# written either way).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
start=$(date +%s)
budget="${NLSEQ_GPU_CHECK_BUDGET:-450}"
OUT="${OUT:-$root/results/gpu_check}"
mkdir -p "$OUT"
py="${PYTHON:-python3}"
export NLSEQ_CUDA_ARCHS="${NLSEQ_CUDA_ARCHS:-90}"
export MAX_JOBS="${MAX_JOBS:-16}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export NLSEQ_FORCE_CUDA=1      # build the CUDA kernels; fail rather than silently build CPU-only
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET         # real Triton on the GPU

left() { echo $((start + budget - $(date +%s))); }
say() { echo "== [$(($(date +%s) - start)) s] $*"; }

# ---------------------------------------------------------------- 1. build (sm_90 only)
command -v ninja >/dev/null || echo "== note: no ninja on PATH: torch falls back to a serial build (slower)"
say "build: setup.py build_ext --inplace (archs $NLSEQ_CUDA_ARCHS, MAX_JOBS=$MAX_JOBS)"
t=$(date +%s)
timeout --kill-after=10 240 "$py" setup.py build_ext --inplace >"$OUT/build.log" 2>&1
build_rc=$?
build_s=$(($(date +%s) - t))
if [ $build_rc -ne 0 ]; then
  say "build FAILED (rc $build_rc, 124 = timed out); last lines of $OUT/build.log:"
  tail -n 30 "$OUT/build.log"
else
  say "build OK in ${build_s} s"
fi

# ---------------------------------------------------------------- 2. tests
# tests/gpu first, then tests/test_scan.py and every other test file that has cuda or triton params.
tests=()
[ -d tests/gpu ] && tests+=(tests/gpu)
[ -f tests/test_scan.py ] && tests+=(tests/test_scan.py)
for f in tests/test_*.py; do
  case "$f" in tests/test_scan.py|tests/test_cuda_emulation.py) continue ;; esac  # emulation: CPU-only check
  grep -qE "[\"'](cuda|triton)[\"']" "$f" && tests+=("$f")
done
test_rc=-1
test_s=0
if [ $build_rc -eq 0 ]; then
  limit=$(( $(left) - 150 ))   # keep about 2.5 minutes for the benchmarks
  [ $limit -gt 240 ] && limit=240
  [ $limit -lt 60 ] && limit=60
  say "tests (limit ${limit} s): ${tests[*]}"
  t=$(date +%s)
  # SIGINT on time-out: pytest stops, prints its summary and still writes the junit XML.
  timeout --signal=INT --kill-after=20 "$limit" "$py" -m pytest -q -p no:cacheprovider -rfE \
    --junitxml="$OUT/junit.xml" "${tests[@]}" >"$OUT/pytest.log" 2>&1
  test_rc=$?
  test_s=$(($(date +%s) - t))
  tail -n 15 "$OUT/pytest.log"
  say "tests rc $test_rc in ${test_s} s"
else
  say "tests skipped: the build failed"
fi

# ---------------------------------------------------------------- 3. benchmarks
bench_status="not run"
bench_s=0
if [ $build_rc -ne 0 ]; then
  bench_status="skipped: the build failed"
elif ! "$py" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('nlseq.bench.__main__') else 1)" 2>/dev/null; then
  bench_status="skipped: nlseq.bench is not in this checkout (python -m nlseq.bench missing)"
  say "benchmarks: $bench_status"
else
  limit=$(( $(left) - 20 ))
  if [ $limit -lt 30 ]; then
    bench_status="skipped: only $(left) s of the budget left"
    say "benchmarks: $bench_status"
  else
    say "benchmarks (limit ${limit} s): python -m nlseq.bench --device cuda --out $OUT/bench"
    t=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$py" -m nlseq.bench --device cuda --out "$OUT/bench" >"$OUT/bench.log" 2>&1
    rc=$?
    bench_s=$(($(date +%s) - t))
    if [ $rc -eq 0 ]; then bench_status="ok"; else bench_status="failed (rc $rc, 124/130 = timed out); see bench.log"; fi
    tail -n 40 "$OUT/bench.log"
    say "benchmarks: $bench_status in ${bench_s} s"
  fi
fi

# ---------------------------------------------------------------- 4. report
BUILD_RC=$build_rc BUILD_S=$build_s TEST_RC=$test_rc TEST_S=$test_s BENCH_STATUS="$bench_status" BENCH_S=$bench_s \
TESTS="${tests[*]}" TOTAL_S=$(($(date +%s) - start)) "$py" - "$OUT" <<'EOF'
import json, os, platform, subprocess, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
env = os.environ


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # reported, not hidden
        return f"unavailable ({e})"


report = {"python": platform.python_version(), "host": platform.node()}
try:
    import torch
    report["torch"] = torch.__version__
    report["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        report["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                            "memory_gib": round(p.total_memory / 2**30, 1)}
    else:
        report["device"] = "no CUDA device visible to torch"
except Exception as e:
    report["torch"] = f"import failed: {e}"
try:
    import triton
    report["triton"] = triton.__version__
except Exception as e:
    report["triton"] = f"import failed: {e}"
cuda_home = env.get("CUDA_HOME", "")
nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
report["nvcc"] = (run([nvcc, "--version"]).splitlines() or ["unavailable"])[-1]
report["driver"] = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
report["git_commit"] = run(["git", "rev-parse", "HEAD"]) or "unknown (no .git)"
report["build"] = {"ok": env["BUILD_RC"] == "0", "rc": int(env["BUILD_RC"]), "seconds": int(env["BUILD_S"]),
                   "archs": env.get("NLSEQ_CUDA_ARCHS"), "log": "build.log"}
try:
    import nlseq
    report["backends"] = {k: str(v) for k, v in nlseq.backends().items()}
except Exception as e:
    report["backends"] = f"import nlseq failed: {e}"

tests = {"files": env["TESTS"].split(), "rc": int(env["TEST_RC"]), "seconds": int(env["TEST_S"]), "log": "pytest.log"}
junit = out / "junit.xml"
if junit.exists():
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    for key in ("tests", "failures", "errors", "skipped"):
        tests[key] = sum(int(s.get(key, 0)) for s in suites)
    tests["passed"] = tests["tests"] - tests["failures"] - tests["errors"] - tests["skipped"]
    failed = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": kind,
                               "message": (el.get("message") or "")[:300]})
    tests["failed"] = failed[:50]
    tests["junit"] = "junit.xml"
else:
    tests["summary"] = "no junit.xml (tests not run, or pytest was killed)"
report["tests"] = tests
bench_dir = out / "bench"
report["bench"] = {"status": env["BENCH_STATUS"], "seconds": int(env["BENCH_S"]), "log": "bench.log",
                   "files": sorted(str(p.relative_to(out)) for p in bench_dir.rglob("*") if p.is_file()) if bench_dir.exists() else []}
report["total_seconds"] = int(env["TOTAL_S"])
(out / "gpu_report.json").write_text(json.dumps(report, indent=2))
print(json.dumps({k: report[k] for k in ("device", "torch", "build", "tests", "bench") if k in report}, indent=2)[:4000])
EOF
say "report: $OUT/gpu_report.json"
if [ $build_rc -ne 0 ] || [ $test_rc -ne 0 ]; then exit 1; fi
exit 0
