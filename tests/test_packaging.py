"""The package as pip builds and installs it: sdist → wheel → install in a fresh venv → import.

A fresh virtual environment (no access to this one's packages) gets the pinned CPU torch of
requirements.txt and the build tools; the sdist is built from the checkout, the wheel from the
sdist with ``--no-build-isolation`` (the documented way), and the installed package is imported
from a folder outside the source tree. Compiling nlseq._C again takes minutes, so the test is
marked ``packaging`` (deselected by the default ``pytest`` run, see pyproject.toml) and .ci/run
runs it as its own step: ``pytest -m packaging tests/test_packaging.py``.

Environment: NLSEQ_PACKAGING_TORCH (default: the torch pin of requirements.txt), MAX_JOBS,
NLSEQ_PACKAGING_TIMEOUT (seconds per step, default 3600: a loaded 2-core machine needs over 30
minutes for the compile).
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# A release _C is about 1.5 MB (CPU kernels); with -g it was 21 MB. The bound leaves room for the
# CUDA kernels of a CUDA build, never for debug info.
MAX_EXTENSION_BYTES = 8 * 2**20


def _pinned(name: str) -> str:
    m = re.search(rf"^{re.escape(name)}==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert m, f"requirements.txt pins no {name}"
    return m.group(1)


def _clean_env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "NLSEQ_SKIP_EXT", "NLSEQ_BACKEND", "TRITON_INTERPRET", "VIRTUAL_ENV")
    }
    env.update(extra)
    return env


STEP_TIMEOUT = int(os.environ.get("NLSEQ_PACKAGING_TIMEOUT", "3600"))


def _run(cmd, cwd, timeout=STEP_TIMEOUT, check=True, **env) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_clean_env(**env)
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        )
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(venv python, sdist path, wheel path, outside folder) after building and installing."""
    tmp = tmp_path_factory.mktemp("packaging")
    dist, egg, outside = tmp / "dist", tmp / "egg", tmp / "outside"
    for d in (dist, egg, outside):
        d.mkdir()
    # 1. The sdist, from the checkout (needs no torch; metadata goes to tmp, not the checkout).
    _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", egg, "sdist", "--dist-dir", dist], cwd=ROOT)
    (sdist,) = dist.glob("nlseq-*.tar.gz")
    # 2. A fresh venv with the pinned CPU torch and the build tools only.
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp)
    py = venv / "bin" / "python"
    torch_pin = os.environ.get("NLSEQ_PACKAGING_TORCH", _pinned("torch"))
    _run(
        [py, "-m", "pip", "install", "-q", f"torch=={torch_pin}", "numpy", "setuptools>=64", "wheel", "ninja"], cwd=tmp
    )
    # 3. The wheel from the sdist, against that torch.
    _run(
        [py, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", dist, sdist],
        cwd=outside,
        MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)),
    )
    (wheel,) = dist.glob("nlseq-*.whl")
    # 4. Install it with its dependencies: they must be met by the torch already there.
    _run([py, "-m", "pip", "install", "-q", wheel], cwd=outside)
    return py, sdist, wheel, outside


def test_sdist_has_the_sources_a_build_needs(built):
    _, sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in (
        "LICENSE",
        "CITATION.cff",
        "README.md",
        "setup.py",
        "pyproject.toml",
        "MANIFEST.in",
        "python/nlseq/_version.py",
        "python/nlseq/py.typed",
        "csrc/include/nlseq/scan.h",
        "csrc/cpu/pararnn.h",
        "csrc/cuda/common.cuh",
        "csrc/cuda/scan.cu",
        "csrc/torch/module.cpp",
        "python/nlseq/kernels/scan.py",
        "docs/spec.md",
    ):
        assert required in names, f"sdist lacks {required}"
    assert not [n for n in names if n.endswith(".so") or n.endswith("_C_build.json")], "sdist holds build outputs"


def test_wheel_contents_and_size(built):
    _, _, wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
    names = set(infos)
    for mod in ("__init__", "scan", "pararnn", "softplus_attention", "analog"):
        assert f"nlseq/kernels/{mod}.py" in names, f"wheel lacks the Triton kernels (nlseq/kernels/{mod}.py)"
    for required in ("nlseq/py.typed", "nlseq/_version.py", "nlseq/__main__.py", "nlseq/_C_build.json"):
        assert required in names, f"wheel lacks {required}"
    (ext,) = [n for n in names if re.fullmatch(r"nlseq/_C\.[^/]*\.so", n)]
    size = infos[ext].file_size
    assert size < MAX_EXTENSION_BYTES, f"{ext} is {size / 2**20:.1f} MiB: built with debug info?"
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


def test_wheel_metadata(built):
    _, _, wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    version = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "python/nlseq/_version.py").read_text(), re.M).group(1)
    assert msg["Name"] == "nlseq" and msg["Version"] == version
    assert "Apache-2.0" in (msg["License-Expression"] or msg["License"] or "")
    assert msg["Summary"] and msg["Requires-Python"] == ">=3.10"
    assert msg["Description-Content-Type"] == "text/markdown" and "nlseq" in msg.get_payload()
    assert msg["Home-page"] or msg.get_all("Project-URL")
    assert any(c.startswith("Programming Language :: Python :: 3") for c in msg.get_all("Classifier"))
    requires = msg.get_all("Requires-Dist")
    torch_pin = os.environ.get("NLSEQ_PACKAGING_TORCH", _pinned("torch"))
    # The wheel's _C is bound to the torch it was compiled against, and says so.
    assert f"torch=={torch_pin}" in requires, requires
    assert "bench" in msg.get_all("Provides-Extra")


def test_installed_package_imports_and_runs_outside_the_tree(built):
    py, _, _, outside = built
    code = (
        "import json, torch, nlseq\n"
        "from nlseq import registry\n"
        "s = nlseq.backends()\n"
        "A, b = torch.rand(2, 37, 5, dtype=torch.float64) * 0.9, torch.randn(2, 37, 5, dtype=torch.float64)\n"
        "h = nlseq.linear_recurrence(A, b, backend='cpp')[0]\n"
        "r = nlseq.linear_recurrence(A, b, backend='reference')[0]\n"
        "print(json.dumps({'file': nlseq.__file__, 'version': nlseq.__version__, 'cpp': bool(s['cpp']),\n"
        "                  'reason': s['cpp'].reason, 'err': (h - r).abs().max().item(),\n"
        "                  'built': registry.build_info(), 'torch': torch.__version__}))\n"
    )
    r = _run([py, "-c", code], cwd=outside)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "site-packages" in out["file"] and str(ROOT) not in out["file"], out
    assert out["cpp"], out["reason"]
    assert out["err"] < 1e-12, out
    assert out["built"]["torch"] == out["torch"] and out["built"]["debug"] is False, out


def test_python_m_nlseq_reports_from_the_install(built):
    py, _, _, outside = built
    r = _run([py, "-m", "nlseq"], cwd=outside)
    assert "nlseq " in r.stdout and "cpp: available" in r.stdout, r.stdout
    # triton is not installed in the fresh venv: reported, with the fix.
    assert "triton: unavailable" in r.stdout and "pip install triton" in r.stdout, r.stdout


def test_bench_without_its_extra_says_what_to_install(built):
    py, _, _, outside = built
    # the fresh venv has no matplotlib (the figure needs it; tqdm is optional): the bench says what to install
    r = _run([py, "-m", "nlseq.bench", "--quick", "--family", "scan"], cwd=outside, check=False)
    assert r.returncode == 2 and "pip install 'nlseq[bench]'" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert "matplotlib" in r.stderr, r.stderr[-2000:]


def test_isolated_build_stops_at_once_with_the_fix(built):
    # pip's default (isolated) build cannot see the installed torch: it must stop before compiling
    # anything and say what to do, not fetch a torch of its own.
    py, sdist, _, outside = built
    r = _run(
        [py, "-m", "pip", "wheel", "--no-deps", "-w", outside / "iso", sdist], cwd=outside, check=False, timeout=600
    )
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-3000:]
    if "install torch first" not in text and ("No matching distribution" in text or "Could not find a version" in text):
        pytest.skip("pip cannot fetch setuptools/wheel/ninja for an isolated build here (no package index)")
    assert "--no-build-isolation" in text and "install torch first" in text, text[-3000:]
