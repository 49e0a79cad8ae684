"""The package as a user meets it: the public API, backend reporting, pure-Python mode."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import nlseq


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_public_api_is_importable_from_the_top():
    for name in nlseq.__all__:
        assert getattr(nlseq, name) is not None, name


def test_pure_python_mode_keeps_reference_and_explains_cpp():
    # NLSEQ_SKIP_EXT=1 is also what a pure-Python install looks like: no nlseq._C.
    code = (
        "import torch, nlseq\n"
        "s = nlseq.backends()\n"
        "assert not s['cpp'] and 'NLSEQ_SKIP_EXT' in s['cpp'].reason, s['cpp']\n"
        "assert not s['cuda']\n"
        "h, last = nlseq.linear_recurrence(torch.ones(1, 3, 2), torch.ones(1, 3, 2))\n"
        "assert h[0, :, 0].tolist() == [1.0, 2.0, 3.0], h\n"
        "try:\n"
        "    nlseq.linear_recurrence(torch.ones(1, 3, 2), torch.ones(1, 3, 2), backend='cpp')\n"
        "except RuntimeError as e:\n"
        "    assert 'unavailable' in str(e) and 'Fix:' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=cpp must raise without the extension')\n"
        "print('ok')\n"
    )
    r = _run(code, NLSEQ_SKIP_EXT="1")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_auto_prefers_cpp_on_cpu_when_built():
    import torch

    from nlseq import registry

    expected = "cpp" if nlseq.backends()["cpp"] else "reference"
    assert registry.resolve("auto", torch.device("cpu"), "linear_recurrence") == expected


# ------------------------------------------------------------------ import cost and lazy loading
def test_import_is_lazy():
    # import nlseq must not pull in torch._dynamo, triton, transformers or the Triton kernels
    # (about 1 s); they load on first use. The time itself is measured in benchmarks, not here.
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import nlseq\n"
        "new = set(sys.modules) - before\n"
        "heavy = ('torch._dynamo', 'triton', 'transformers', 'nlseq.kernels', 'nlseq._C', 'matplotlib', 'sympy')\n"
        "print(sorted(m for m in new if m.split('.')[0] in heavy or any(m.startswith(h) for h in heavy)))\n"
    )
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


def test_assume_constant_result_marks_like_torch():
    # registry.assume_constant_result stands in for torch.compiler.assume_constant_result without
    # importing torch._dynamo; if torch changes how the public decorator marks a function, this
    # fails instead of the backend choice silently becoming a traced call.
    from nlseq import registry

    def ours():
        return 1

    def theirs():
        return 1

    registry.assume_constant_result(ours)
    torch.compiler.assume_constant_result(theirs)
    marks = lambda f: {k: v for k, v in vars(f).items() if not k.startswith("__")}  # noqa: E731
    assert marks(ours) == marks(theirs) == {"_dynamo_marked_constant": True}


def test_resolve_under_compile_is_a_constant():
    # The backend choice still works under torch.compile (fullgraph: no graph break on resolve).
    f = torch.compile(lambda A, b: nlseq.linear_recurrence(A, b)[0], backend="eager", fullgraph=True)
    A, b = torch.rand(2, 5, 3) * 0.5, torch.randn(2, 5, 3)
    torch.testing.assert_close(f(A, b), nlseq.linear_recurrence(A, b, backend="reference")[0])


# ------------------------------------------------------------------ TRITON_INTERPRET after loading
def test_triton_interpret_change_after_kernels_loaded_is_an_error():
    pytest.importorskip("triton")
    code = (
        "import os\n"
        "os.environ['TRITON_INTERPRET'] = '0'\n"
        "import nlseq\n"
        "from nlseq import registry\n"
        "os.environ['TRITON_INTERPRET'] = '1'   # before the kernels load: fine, it takes effect\n"
        "assert registry.triton_interpret() is True\n"
        "import nlseq.kernels.scan             # the kernels are now fixed to the interpreter\n"
        "assert registry.triton_interpret() is True\n"
        "os.environ['TRITON_INTERPRET'] = '0'\n"
        "try:\n"
        "    nlseq.linear_recurrence(torch.ones(1, 3, 2), torch.ones(1, 3, 2), backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET changed from 1 to 0' in str(e) and 'new process' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('changing TRITON_INTERPRET after loading must raise')\n"
        "print('ok')\n"
    )
    r = _run("import torch\n" + code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


# ------------------------------------------------------------------ _C built against another torch
def test_extension_built_for_another_torch_is_reported_not_loaded():
    code = (
        "import sys, torch\n"
        "from nlseq import registry\n"
        "registry.build_info = lambda: {'torch': '1.0.0+cpu'}   # what a stale _C_build.json says\n"
        "import nlseq\n"
        "s = nlseq.backends()\n"
        "for name in ('cpp', 'cuda'):\n"
        "    assert not s[name], s[name]\n"
        "    assert 'built against torch 1.0.0+cpu' in s[name].reason and torch.__version__ in s[name].reason, s[name]\n"
        "    assert '--no-build-isolation' in s[name].fix, s[name]\n"
        "assert 'nlseq._C' not in sys.modules, 'the mismatched library must not be loaded'\n"
        "try:\n"
        "    nlseq.linear_recurrence(torch.ones(1, 3, 2), torch.ones(1, 3, 2), backend='cpp')\n"
        "except RuntimeError as e:\n"
        "    assert 'built against torch 1.0.0+cpu' in str(e) and 'Fix:' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=cpp must raise')\n"
        "assert nlseq.linear_recurrence(torch.ones(1, 3, 2), torch.ones(1, 3, 2))[0][0, -1, 0] == 3.0\n"
        "print('ok')\n"
    )
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_build_info_matches_the_running_torch_when_recorded():
    from nlseq import registry

    info = registry.build_info()
    if info is None:
        pytest.skip("nlseq._C has no build record (built before records existed); rebuild to get one")
    assert info["torch"] == torch.__version__ and info["nlseq"] == nlseq.__version__


# ------------------------------------------------------------------ python -m nlseq
def test_environment_report_lists_everything(monkeypatch, capsys):
    from nlseq.__main__ import main

    monkeypatch.setenv("NLSEQ_BACKEND", "reference")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"nlseq {nlseq.__version__}")
    for label in ("python", "torch", "triton", "compiler", "nvcc", "nlseq._C"):
        assert f"\n{label}" in out, label
    for name, status in nlseq.backends().items():
        assert f"  {name}: {'available' if status else 'unavailable'}" in out, name
        if not status:
            assert f"fix: {status.fix}" in out
    assert "NLSEQ_BACKEND          'reference'" in out  # the env var in effect, with its value
    assert "TRITON_INTERPRET" in out and "NLSEQ_SKIP_EXT" in out


def test_python_m_nlseq_json():
    import json

    r = subprocess.run([sys.executable, "-m", "nlseq", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["nlseq"]["version"] == nlseq.__version__ and doc["torch"]["version"] == torch.__version__
    assert set(doc["backends"]) == {"cuda", "triton", "cpp", "reference"}
    assert all({"available", "reason", "fix"} <= set(v) for v in doc["backends"].values())


# ------------------------------------------------------------------ one version, extras
def test_version_has_one_source():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "python" / "nlseq" / "_version.py").read_text()
    assert re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1) == nlseq.__version__
    setup_py = (root / "setup.py").read_text()
    assert not re.search(r'version="\d', setup_py), "setup.py must read the version from _version.py"


def test_bench_without_its_extra_says_what_to_install(monkeypatch, capsys):
    from nlseq.bench.__main__ import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed (tqdm is optional)
    assert main(["--quick", "--family", "scan"]) == 2
    assert "pip install 'nlseq[bench]'" in capsys.readouterr().err
