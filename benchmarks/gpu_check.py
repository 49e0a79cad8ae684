"""The GPU check: build, GPU correctness, headline benchmarks, the rest; one report, always.

    bash benchmarks/gpu_check.sh                    (or: python benchmarks/gpu_check.py)
    NLSEQ_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh    dry run on the CPU (tiny shapes)

Written for a GPU lent for a few minutes (an H200 with Python 3.12, torch 2.11, triton 3.6,
nvcc 13, 16 cores, no network): the whole check stays inside NLSEQ_GPU_CHECK_BUDGET seconds
(default 570, under 10 minutes) and writes ``$OUT/gpu_report.json`` after every phase, so even
a check killed from outside leaves the phases it finished.

Each phase runs in its own process group with its own time limit and its own result file (in a
work folder outside $OUT), so a CUDA fault or a hang in one phase cannot lose the others. On its
time limit a phase gets SIGINT (pytest: stops and reports) or SIGTERM (the bench: writes what it
has), then SIGKILL after a grace period. Phases, in priority order (docs/benchmarks.md):

    build           setup.py build_ext --inplace, sm_90 only (NLSEQ_CUDA_ARCHS=90, MAX_JOBS=16)
    env             versions, GPU, nlseq.backends() (after the build: shows whether _C loaded)
    tests-gpu       pytest tests/gpu
    tests-family    the cuda / triton parameters of the family tests, NLSEQ_AUTOTUNE_FIRST=1
                    (one autotune config per kernel: seconds of compiling, not minutes), with
                    pytest-xdist when installed
    bench-<family>  python -m nlseq.bench --subset headline, one process per family (scan,
                    pararnn, softplus_attention, analog), each with --time-budget
    bench-rest      every other case of every family, with what time is left

The tests' per-test outcomes come from a small pytest plugin in this file (loaded with
``-p gpu_check``): it writes one JSON line per test as it finishes and one when it starts, so a
test that hangs or kills the process is named. A test that leaves CUDA in a sticky error state
ends its process (every later CUDA call would fail too); the driver then reruns the phase
without the tests already reported, while time remains.

$OUT holds at most 8 files: gpu_report.json, gpu_check.log (every phase's output) and up to 6
benchmark figures. Exit status: 0 when the build, every test and every benchmark check passed,
1 otherwise, 2 for bad settings; the report is written either way.

Environment (all optional):
    OUT                          output folder (default results/gpu_check)
    PYTHON                       interpreter with torch (default: this one)
    NLSEQ_GPU_CHECK_DRY=1        dry run on the CPU: no compile, tiny shapes, short limits
    NLSEQ_GPU_CHECK_BUDGET       total seconds (default 570; dry 150)
    NLSEQ_GPU_CHECK_PHASES       comma-separated phases to run (default: all, in order)
    NLSEQ_GPU_CHECK_LIMITS       per-phase limits, e.g. "build=300,tests-family=120"
    NLSEQ_GPU_CHECK_GRACE        seconds between SIGINT/SIGTERM and SIGKILL (default 15; dry 5)
    NLSEQ_GPU_CHECK_HANG         a phase to replace by a process that hangs and ignores SIGINT
                                 and SIGTERM (tests the time-out path)
    NLSEQ_GPU_CHECK_GPU_TESTS    paths for tests-gpu (default tests/gpu)
    NLSEQ_GPU_CHECK_FAMILY_TESTS paths for tests-family (default: the family test files)
    NLSEQ_GPU_CHECK_WORK         work folder for the phases' own files (default: a new temp folder)
    NLSEQ_GPU_CHECK_BENCH_ARGS   extra arguments for every bench phase (e.g. "--backend cuda,triton")

Set by the driver for the plugin (not for users): NLSEQ_GPU_CHECK_RESULTS (the per-test JSON
lines file; the plugin is inactive without it), NLSEQ_GPU_CHECK_SELECT=params (keep the cuda /
triton parameters), NLSEQ_GPU_CHECK_DESELECT (a file of node ids already reported, for a rerun),
NLSEQ_GPU_CHECK_STICKY (inside pytest: the test after which the process ends).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "nlseq-gpu-check/1"
MAX_FILES = 8  # under $OUT, all together
MAX_FIGURES = MAX_FILES - 2
HEADLINE_FAMILIES = ("scan", "pararnn", "softplus_attention", "analog")
# Nominal limits (seconds) on the GPU; a phase never gets more than the budget has left (minus
# REPORT_RESERVE_S), and what an early phase does not use is left to the later ones.
LIMITS = {
    "build": 240,
    "env": 45,
    "tests-gpu": 60,
    "tests-family": 90,
    "bench-scan": 35,
    "bench-pararnn": 45,
    "bench-softplus_attention": 75,
    "bench-analog": 30,
    "bench-rest": 600,
}
DRY_LIMITS = {
    "build": 60,
    "env": 30,
    "tests-gpu": 30,
    "tests-family": 20,
    "bench-scan": 40,
    "bench-pararnn": 40,
    "bench-softplus_attention": 40,
    "bench-analog": 40,
    "bench-rest": 20,
}
PHASES = (
    ("build", "env", "tests-gpu", "tests-family") + tuple(f"bench-{f}" for f in HEADLINE_FAMILIES) + ("bench-rest",)
)
REPORT_RESERVE_S = 10
# Family test files that hold no GPU test (CPU emulation / CPU-only checks) or are not family tests.
NOT_FAMILY_TESTS = {
    "test_bench.py",
    "test_gpu_check.py",
    "test_package.py",
    "test_cuda_emulation.py",
    "test_pararnn_cuda_emulated.py",
    "test_triton_sm90.py",
    "test_hf_integration.py",
}
FAMILY_TEST_ORDER = [
    "test_pararnn.py",
    "test_softplus_attention.py",
    "test_analog.py",
    "test_pararnn_fused.py",
    "test_scan_triton.py",
    "test_scan.py",
]
# CUDA errors after which the context is unusable: every later CUDA call in the process fails.
STICKY_CUDA = re.compile(
    r"illegal memory access|unspecified launch failure|misaligned address|"
    r"device-side assert|illegal instruction|CUDA error: an? .*(fault|exception)",
    re.I,
)


# =============================================================================== pytest plugin
# Loaded in the test phases with ``-p gpu_check`` (benchmarks/ on PYTHONPATH); inactive otherwise.
_plugin_config = None


def _results_file():
    return os.environ.get("NLSEQ_GPU_CHECK_RESULTS")


def _emit(record: dict) -> None:
    with open(_results_file(), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")  # a pytest-xdist worker: the controller writes


def pytest_configure(config):
    global _plugin_config
    _plugin_config = config


def _gpu_param(item) -> bool:
    """A cuda / triton parameter of a family test (id component, e.g. test_x[triton-fp32]), or any
    test of a file named for one of them (test_scan_triton.py)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(part in ("cuda", "triton") for part in re.split(r"[-\[\]]", callspec.id)):
        return True
    stem = Path(str(item.fspath)).stem
    return stem.endswith(("_cuda", "_triton"))


def pytest_collection_modifyitems(config, items):
    if not _results_file():
        return
    skip = set()
    if os.environ.get("NLSEQ_GPU_CHECK_DESELECT"):
        skip = set(Path(os.environ["NLSEQ_GPU_CHECK_DESELECT"]).read_text().split("\n"))
    keep, drop = [], []
    for item in items:
        wanted = os.environ.get("NLSEQ_GPU_CHECK_SELECT") != "params" or _gpu_param(item)
        (keep if wanted and item.nodeid not in skip else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if not _is_worker(config):
        _emit({"event": "collected", "n": len(keep), "deselected": len(drop)})


def pytest_runtest_logstart(nodeid, location):
    if _results_file() and _plugin_config is not None and not _is_worker(_plugin_config):
        _emit({"event": "start", "nodeid": nodeid})


def _message(report) -> str:
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:300]
    text = getattr(report, "longreprtext", "") or str(report.longrepr or "")
    lines = [l for l in text.splitlines() if l.startswith("E ")] or text.splitlines()[-3:]
    return "\n".join(lines)[:600]


def pytest_runtest_logreport(report):
    if not _results_file() or _plugin_config is None:
        return
    if report.failed and STICKY_CUDA.search(getattr(report, "longreprtext", "") or str(report.longrepr)):
        # every later CUDA call in this process would fail too: end it after this test's report
        # is out (pytest_runtest_logfinish); the driver (or xdist) goes on in a fresh process
        os.environ["NLSEQ_GPU_CHECK_STICKY"] = report.nodeid
    if _is_worker(_plugin_config):
        return
    if report.when == "call" or report.failed or (report.when == "setup" and report.skipped):
        _emit(
            {
                "event": "result",
                "nodeid": report.nodeid,
                "when": report.when,
                "outcome": report.outcome,
                "duration": round(report.duration, 3),
                "message": _message(report),
            }
        )


def pytest_runtest_logfinish(nodeid, location):
    if os.environ.get("NLSEQ_GPU_CHECK_STICKY") == nodeid:
        sys.stderr.write(f"gpu_check: sticky CUDA error in {nodeid}; ending this process (rc 3)\n")
        sys.stderr.flush()
        os._exit(3)


# ===================================================================================== driver
def _now() -> float:
    return time.monotonic()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode("utf-8", "replace")


HANG = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "print('forced hang (NLSEQ_GPU_CHECK_HANG): ignoring SIGINT and SIGTERM', flush=True)\n"
    "time.sleep(10 ** 6)\n"
)

ENV_PROBE = r"""
import json, os, platform, shutil, subprocess, sys
def run(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout.strip() or p.stderr.strip()).splitlines()[-1] if (p.stdout or p.stderr) else ""
    except Exception as e:
        return f"unavailable ({type(e).__name__}: {e})"
out = {"python": platform.python_version(), "host": platform.node(), "cpu_count": os.cpu_count()}
try:
    out["loadavg"] = list(os.getloadavg())
except OSError:
    pass
import torch
out["torch"] = torch.__version__
out["torch_cuda"] = torch.version.cuda
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                  "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
else:
    out["gpu"] = None
try:
    import triton
    out["triton"] = triton.__version__
except Exception as e:
    out["triton"] = f"import failed: {e}"
cuda_home = os.environ.get("CUDA_HOME", "")
nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else (shutil.which("nvcc") or "nvcc")
out["nvcc"] = run([nvcc, "--version"])
out["driver"] = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
for mod in ("xdist", "matplotlib", "tqdm"):
    import importlib.util
    out.setdefault("optional", {})[mod] = importlib.util.find_spec(mod) is not None
import nlseq
out["nlseq"] = nlseq.__version__
out["backends"] = {k: str(v) for k, v in nlseq.backends().items()}
print("ENV_JSON " + json.dumps(out))
"""


class Stopped(BaseException):
    """SIGINT / SIGTERM to the check itself: stop the running phase, write the report, exit."""


def _stop(signum, frame):
    raise Stopped(signal.Signals(signum).name)


class Check:
    """Runs the phases in order and keeps the report current."""

    def __init__(self, out: Path):
        self.dry = _env_flag("NLSEQ_GPU_CHECK_DRY")
        self.out = out
        self.py = os.environ.get("PYTHON") or sys.executable
        self.budget = float(os.environ.get("NLSEQ_GPU_CHECK_BUDGET", 150 if self.dry else 570))
        self.grace = float(os.environ.get("NLSEQ_GPU_CHECK_GRACE", 5 if self.dry else 15))
        self.limits = dict(DRY_LIMITS if self.dry else LIMITS)
        for item in filter(None, os.environ.get("NLSEQ_GPU_CHECK_LIMITS", "").split(",")):
            name, _, value = item.partition("=")
            if name.strip() not in PHASES:
                raise ValueError(f"NLSEQ_GPU_CHECK_LIMITS: unknown phase {name.strip()!r}; phases: {', '.join(PHASES)}")
            self.limits[name.strip()] = float(value)
        wanted = [p.strip() for p in os.environ.get("NLSEQ_GPU_CHECK_PHASES", "").split(",") if p.strip()]
        unknown = sorted(set(wanted) - set(PHASES))
        if unknown:
            raise ValueError(f"NLSEQ_GPU_CHECK_PHASES: unknown {', '.join(unknown)}; phases: {', '.join(PHASES)}")
        self.phases = [p for p in PHASES if not wanted or p in wanted]
        self.hang = os.environ.get("NLSEQ_GPU_CHECK_HANG", "")
        if self.hang and self.hang not in PHASES:
            raise ValueError(f"NLSEQ_GPU_CHECK_HANG: unknown phase {self.hang!r}; phases: {', '.join(PHASES)}")
        self.work = Path(os.environ.get("NLSEQ_GPU_CHECK_WORK") or tempfile.mkdtemp(prefix="nlseq-gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = _now()
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "python")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        )
        self.env.setdefault("NLSEQ_CUDA_ARCHS", "90")
        self.env.setdefault("MAX_JOBS", "16")
        if not self.env.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
            self.env["CUDA_HOME"] = "/usr/local/cuda"
        if self.dry:
            self.env["TRITON_INTERPRET"] = "1"  # the Triton rows run (checked) in the interpreter
        else:
            self.env.pop("TRITON_INTERPRET", None)  # real Triton on the GPU
        self.report = {
            "schema": SCHEMA,
            "dry_run": self.dry,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": self.budget,
            "phases_planned": self.phases,
            "phases": {},
            "versions": None,
            "build": None,
            "tests": {},
            "bench": {},
            "cut": [],
            "files": [],
            "finished": None,
            "ok": None,
            "git_commit": self._git(),
            "work_dir": str(self.work),
        }
        self.log = self.work / "gpu_check.log"

    # ------------------------------------------------------------------ helpers
    def _git(self):
        try:
            p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return p.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    def left(self) -> float:
        return self.budget - (_now() - self.t0)

    def say(self, text: str) -> None:
        line = f"== [{_now() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def run(self, name: str, cmd: list, limit: float, soft=signal.SIGTERM, env=None) -> dict:
        """Run ``cmd`` in its own process group; on ``limit``: ``soft``, then SIGKILL after grace."""
        if self.hang == name:
            cmd = [self.py, "-c", HANG]
        log = self.work / f"{name}.log"
        start = _now()
        with open(log, "ab") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n".encode())
            f.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env or self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            timed_out = killed = False
            try:
                rc = proc.wait(timeout=max(limit, 1))
            except Stopped:  # the check itself is being stopped: take the phase down with it
                self._signal(proc, signal.SIGKILL)
                raise
            except subprocess.TimeoutExpired:
                timed_out = True
                self.say(
                    f"{name}: time limit {limit:.0f} s reached: {signal.Signals(soft).name}, "
                    f"SIGKILL after {self.grace:.0f} s"
                )
                self._signal(proc, soft)
                try:
                    rc = proc.wait(timeout=self.grace)
                except subprocess.TimeoutExpired:
                    killed = True
                    self._signal(proc, signal.SIGKILL)
                    rc = proc.wait()
            self._signal(proc, signal.SIGKILL)  # stragglers of the group (compilers, xdist workers)
        seconds = _now() - start
        return {
            "rc": rc,
            "timed_out": timed_out,
            "killed": killed,
            "seconds": round(seconds, 1),
            "limit_s": round(limit, 1),
            "command": " ".join(map(str, cmd)),
            "log": log,
        }

    @staticmethod
    def _signal(proc, sig) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def limit_for(self, name: str) -> float:
        return min(self.limits[name], self.left() - REPORT_RESERVE_S)

    def record(self, name: str, res: dict, status: str, **extra) -> dict:
        entry = {k: v for k, v in res.items() if k != "log"}
        entry.update(status=status, log_tail=_tail(res["log"], 2000), **extra)
        self.report["phases"][name] = entry
        self.say(f"{name}: {status} (rc {res['rc']}, {res['seconds']:.0f} s of {res['limit_s']:.0f} s)")
        with open(self.log, "a") as f:
            f.write(_tail(res["log"], 200_000) + "\n")
        self.save()
        return entry

    @staticmethod
    def status_of(res: dict, ok_rcs=(0,)) -> str:
        if res["timed_out"]:
            return "timed_out"
        if res["rc"] < 0:
            return f"crashed ({signal.Signals(-res['rc']).name})"
        return "ok" if res["rc"] in ok_rcs else "failed"

    # ------------------------------------------------------------------ phases
    def phase_build(self, name: str) -> None:
        if self.dry:
            cmd = [
                self.py,
                "-c",
                "import nlseq; print('dry run: compile skipped; nlseq', nlseq.__version__, "
                "'imports with backends', {k: bool(v) for k, v in nlseq.backends().items()})",
            ]
        else:
            cmd = [self.py, "setup.py", "build_ext", "--inplace"]
        env = dict(self.env, NLSEQ_FORCE_CUDA="1")  # fail rather than build CPU-only in silence
        if not self.dry and shutil.which("ninja") is None:
            self.say("build: no ninja on PATH: torch falls back to a serial build (slower)")
        res = self.run(name, cmd, self.limit_for(name), soft=signal.SIGTERM, env=env)
        entry = self.record(name, res, self.status_of(res))
        self.report["build"] = {
            "ok": entry["status"] == "ok",
            "dry": self.dry,
            "seconds": res["seconds"],
            "archs": self.env["NLSEQ_CUDA_ARCHS"],
            "max_jobs": self.env["MAX_JOBS"],
            "status": entry["status"],
        }

    def phase_env(self, name: str) -> None:
        res = self.run(name, [self.py, "-c", ENV_PROBE], self.limit_for(name))
        versions = None
        for line in _tail(res["log"], 20000).splitlines():
            if line.startswith("ENV_JSON "):
                versions = json.loads(line[len("ENV_JSON ") :])
        self.report["versions"] = versions
        self.record(name, res, self.status_of(res) if versions else "failed")

    def _test_paths(self, name: str) -> list[str]:
        var = "NLSEQ_GPU_CHECK_GPU_TESTS" if name == "tests-gpu" else "NLSEQ_GPU_CHECK_FAMILY_TESTS"
        if os.environ.get(var):
            return os.environ[var].split()
        if name == "tests-gpu":
            return ["tests/gpu"] if (ROOT / "tests" / "gpu").is_dir() else []
        # the files with few GPU parameters first, so that a phase cut by its limit has still run
        # every family's kernels on the GPU (test_scan.py alone has ~300 of them)
        names = sorted(p.name for p in (ROOT / "tests").glob("test_*.py") if p.name not in NOT_FAMILY_TESTS)
        names.sort(key=lambda n: FAMILY_TEST_ORDER.index(n) if n in FAMILY_TEST_ORDER else len(FAMILY_TEST_ORDER))
        return [f"tests/{n}" for n in names]

    def phase_tests(self, name: str) -> None:
        paths = self._test_paths(name)
        if not paths:  # (pytest without paths would run its default test paths: everything)
            self.cut(name, "no test paths (no tests/gpu folder in this checkout?)")
            return
        results = self.work / f"{name}.jsonl"
        results.write_text("")
        env = dict(
            self.env,
            NLSEQ_GPU_CHECK_RESULTS=str(results),
            NLSEQ_AUTOTUNE_FIRST="1",
            PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), self.env["PYTHONPATH"]]),
        )  # -p gpu_check
        if name == "tests-family":
            env["NLSEQ_GPU_CHECK_SELECT"] = "params"
        xdist = not self.dry and self._has("xdist")
        base = [self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_check", "-rfE"]
        if xdist:
            base += ["-n", str(min(8, os.cpu_count() or 1)), "--max-worker-restart", "8"]
        runs = []
        while True:
            limit = self.limit_for(name) - sum(r["seconds"] for r in runs)
            if limit < 5:
                break
            deselect = self.work / f"{name}.deselect"
            seen = self._seen(results)
            deselect.write_text("\n".join(seen))
            env["NLSEQ_GPU_CHECK_DESELECT"] = str(deselect)
            res = self.run(name, base + paths, limit, soft=signal.SIGINT, env=env)
            runs.append(res)
            # rc 3 from the plugin: a sticky CUDA error ended the process; a negative rc: a crash.
            # Either way the tests not yet reported get a fresh process, if time remains.
            if res["timed_out"] or not (res["rc"] == 3 or res["rc"] < 0) or self._seen(results) == seen:
                break
            self.say(
                f"{name}: process ended by a crash or a sticky CUDA error (rc {res['rc']}); rerunning "
                "the tests not yet reported"
            )
        if not runs:
            self.cut(name, "no time left in the budget")
            return
        res = dict(runs[-1], seconds=round(sum(r["seconds"] for r in runs), 1))
        tests = self._parse_results(results)
        tests.update(
            paths=paths,
            xdist=xdist,
            processes=len(runs),
            autotune_first=True,
            selection="cuda/triton parameters" if name == "tests-family" else "all",
        )
        self.report["tests"][name] = tests
        # pytest: 0 all passed, 1 some failed, 5 nothing collected (e.g. no GPU test here)
        status = self.status_of(res, ok_rcs=(0, 5))
        if status == "failed" and tests["counts"].get("failed", 0):
            status = "tests failed"
        if res["timed_out"] and tests.get("running"):
            self.cut(name, f"time limit: test {tests['running']} was running, later tests not run")
        elif res["timed_out"]:
            self.cut(name, "time limit: later tests not run")
        self.record(name, res, status, counts=tests["counts"])

    @staticmethod
    def _has(module: str) -> bool:
        import importlib.util

        return importlib.util.find_spec(module) is not None

    @staticmethod
    def _records(results: Path) -> list:
        out = []
        for line in results.read_text().splitlines() if results.exists() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return out

    def _seen(self, results: Path) -> list:
        return sorted({r["nodeid"] for r in self._records(results) if r["event"] in ("start", "result")})

    def _parse_results(self, results: Path) -> dict:
        recs = self._records(results)
        per_test: dict = {}
        started = []
        for r in recs:
            if r["event"] == "start":
                started.append(r["nodeid"])
            elif r["event"] == "result":
                prev = per_test.get(r["nodeid"])
                if prev is None or prev["outcome"] != "failed":  # a setup/teardown failure is kept
                    per_test[r["nodeid"]] = {k: r[k] for k in ("outcome", "when", "duration", "message")}
        running = [n for n in started if n not in per_test]
        for n in running:
            per_test[n] = {
                "outcome": "not finished",
                "when": "call",
                "duration": None,
                "message": "started, no result: the process hung, crashed or was stopped",
            }
        counts: dict = {}
        for t in per_test.values():
            counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
        collected = max([r["n"] for r in recs if r["event"] == "collected"] or [0])
        return {
            "counts": counts,
            "collected": collected,
            "running": running[-1] if running else None,
            "results": [{"nodeid": k, **v} for k, v in per_test.items()],
        }

    def phase_bench(self, name: str) -> None:
        family = name[len("bench-") :]
        folder = self.work / name
        folder.mkdir(exist_ok=True)
        limit = self.limit_for(name)
        if limit < 3:
            self.cut(name, "no time left in the budget")
            return
        # the bench stops starting new work at its --time-budget and writes its table and figures
        # before the hard limit; a hang past that is cut by SIGTERM / SIGKILL (its JSON is
        # rewritten after every row, so every finished row survives either way)
        bench_budget = max(limit - max(10.0, 0.15 * limit), 0.5 * limit)
        cmd = [self.py, "-m", "nlseq.bench", "--out", str(folder), "--time-budget", f"{bench_budget:.0f}"]
        if self.dry:
            cmd += ["--device", "cpu", "--quick", "--case=-tiny/"]
        else:
            cmd += ["--device", "cuda"]
        cmd += ["--subset", "rest"] if family == "rest" else ["--family", family]
        if not self.dry and family != "rest":
            cmd += ["--subset", "headline"]
        cmd += os.environ.get("NLSEQ_GPU_CHECK_BENCH_ARGS", "").split()
        res = self.run(name, cmd, limit, soft=signal.SIGTERM)
        found = sorted(folder.glob("nlseq-bench-*.json"))
        doc = None
        if found:
            try:
                doc = json.loads(found[-1].read_text())
            except json.JSONDecodeError as e:
                doc = {"error": f"unreadable bench JSON: {e}"}
        rows = (doc or {}).get("rows", [])
        if doc and "rows" in doc:
            status = {0: "ok", 1: "checks failed", 2: "nothing selected"}.get(res["rc"], self.status_of(res))
            if res["timed_out"]:
                status = "timed_out"
        elif res["rc"] == 2:
            status = "nothing run (rc 2: bad options, nothing selected or no GPU; see its log)"
        else:
            status = self.status_of(res) if res["rc"] != 0 else "failed (no JSON)"
        for c in (doc or {}).get("cut", []):
            self.cut(f"{name}: {c['id']}", c["reason"])
        if doc and doc.get("rows") is not None and not doc.get("complete") and res["timed_out"]:
            self.cut(name, "time limit: the bench was stopped; rows up to then are kept")
        elif not doc:
            self.cut(name, f"no result file ({status})")
        self.report["bench"][name] = {
            "status": status,
            "json": doc,
            "figures": [p.name for p in sorted(folder.glob("*.png"))],
        }
        counts: dict = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        self.record(name, res, status, counts=counts)

    def cut(self, what: str, reason: str) -> None:
        self.report["cut"].append({"what": what, "reason": reason})

    # ------------------------------------------------------------------ report
    def save(self) -> None:
        self.report["elapsed_s"] = round(_now() - self.t0, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(self.out / "gpu_report.json", self.report)

    def finish(self) -> int:
        files = ["gpu_report.json", "gpu_check.log"]
        figures = []
        for name in self.phases:
            folder = self.work / name
            if name.startswith("bench-") and folder.is_dir():
                figures += [(name, p) for p in sorted(folder.glob("*.png"))]
        for name, p in figures[:MAX_FIGURES]:
            # nlseq-bench-<date>-<time>-<family>-<device>.png -> bench-<phase>-<family>-<device>.png
            target = f"{name}-{p.name.split('-', 4)[-1]}"
            shutil.copyfile(p, self.out / target)
            files.append(target)
        if len(figures) > MAX_FIGURES:
            self.cut(
                "figures",
                f"{len(figures) - MAX_FIGURES} figure(s) left out of $OUT (at most {MAX_FILES} "
                f"files): {', '.join(p.name for _, p in figures[MAX_FIGURES:])}; their data is in this report",
            )
        shutil.copyfile(self.log, self.out / "gpu_check.log")
        self.report["files"] = files
        build_ok = bool(self.report["build"] and self.report["build"]["ok"]) or "build" not in self.phases
        tests_ok = all(
            not t["counts"].get("failed") and not t["counts"].get("not finished") for t in self.report["tests"].values()
        )
        bench_ok = all(b["status"] in ("ok",) for b in self.report["bench"].values())
        phases_ok = all(p["status"] in ("ok", "tests failed", "checks failed") for p in self.report["phases"].values())
        self.report["ok"] = build_ok and tests_ok and bench_ok and phases_ok
        self.report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save()
        self.say(
            f"report: {self.out / 'gpu_report.json'} ({'ok' if self.report['ok'] else 'NOT ok'}; "
            f"{len(self.report['cut'])} cut)"
        )
        return 0 if self.report["ok"] else 1

    def main(self) -> int:
        self.say(
            f"GPU check{' (DRY RUN on the CPU)' if self.dry else ''}: budget {self.budget:.0f} s, "
            f"phases {', '.join(self.phases)}; work folder {self.work}; report {self.out}/gpu_report.json"
        )
        self.save()
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self._run_phases()
        except Stopped as e:
            done = set(self.report["phases"])
            for name in self.phases:
                if name not in done:
                    self.cut(name, f"not run or not finished: the check itself was stopped ({e.args[0]})")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        return self.finish()

    def _run_phases(self) -> None:
        for name in self.phases:
            if self.left() - REPORT_RESERVE_S < 5:
                self.cut(name, "not started: the budget was spent")
                continue
            if (
                name != "build"
                and name != "env"
                and self.report["build"] is not None
                and not self.report["build"]["ok"]
            ):
                self.cut(name, "not started: the build failed")
                continue
            self.say(f"{name}: start (limit {self.limit_for(name):.0f} s)")
            if name == "build":
                self.phase_build(name)
            elif name == "env":
                self.phase_env(name)
            elif name.startswith("tests-"):
                self.phase_tests(name)
            else:
                self.phase_bench(name)


def main() -> int:
    out = Path(os.environ.get("OUT") or ROOT / "results" / "gpu_check")
    try:
        check = Check(out)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    if out.is_dir():  # this script's files from an earlier run would break the 8-file limit
        for p in out.iterdir():
            if p.is_file() and (
                p.name in ("gpu_report.json", "gpu_check.log") or (p.name.startswith("bench-") and p.suffix == ".png")
            ):
                p.unlink()
    return check.main()


if __name__ == "__main__":
    sys.exit(main())
