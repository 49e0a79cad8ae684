#!/usr/bin/env bash
# Creates .venv (Python 3.10+) with the pinned CPU stack of requirements.txt and installs nlseq
# into it in editable mode, building the C++ extension nlseq._C. Safe to re-run: an existing
# .venv is reused and only changed sources are recompiled.
#   NLSEQ_VENV   where the venv goes (default .venv in the checkout)
#   PYTHON       the interpreter that creates it (default python3)
#   MAX_JOBS     parallel compile jobs (default: number of cores)
# With internet access, PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu makes the
# torch==2.13.0 pin resolve to the CPU wheel (PyPI's torch for Linux is the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${NLSEQ_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r requirements.txt
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
"$venv/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$venv/bin/python" -c "import nlseq; [print(' ', s) for s in nlseq.backends().values()]"
echo "  (python -m nlseq: the full environment report)"
