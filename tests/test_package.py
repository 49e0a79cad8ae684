"""The package as a user meets it: the public API, backend reporting, pure-Python mode."""
from __future__ import annotations

import os
import subprocess
import sys

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
    from nlseq import registry

    import torch

    expected = "cpp" if nlseq.backends()["cpp"] else "reference"
    assert registry.resolve("auto", torch.device("cpu"), "linear_recurrence") == expected
