#!/usr/bin/env bash
# CI step: compile and link the CUDA extension (csrc/cuda + csrc/torch with NLSEQ_WITH_CUDA)
# against the CUDA build of torch, on a machine without a GPU, then load it and check that every
# op with a CUDA kernel is registered. Fails on any compile, link or load error.
#
#   NLSEQ_CI_CACHE    cache folder outside the checkout (default ~/.cache/nlseq-ci); the CUDA
#                     venv lives in $NLSEQ_CI_CACHE/venv-cu and is reused between runs
#   CUDA_HOME         CUDA toolkit with nvcc (default /usr/local/cuda)
#   NLSEQ_CUDA_ARCHS  SM versions (default "80;90")
#   MAX_JOBS          parallel compile jobs (default: number of cores)
#   PYTHON            interpreter that creates the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

TORCH_VERSION=2.14.1  # the CUDA (cu130) wheel; the CPU test venv pins its own torch
cache="${NLSEQ_CI_CACHE:-$HOME/.cache/nlseq-ci}"
venv="$cache/venv-cu"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export NLSEQ_CUDA_ARCHS="${NLSEQ_CUDA_ARCHS:-80;90}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
t0=$(date +%s)

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda_build_check: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi
"$CUDA_HOME/bin/nvcc" --version | tail -n 2

# 1. The CUDA venv (cached): torch==$TORCH_VERSION with CUDA, plus the build tools.
mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' and torch.version.cuda else 1)" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy ninja setuptools wheel
fi
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
t1=$(date +%s)
echo "cuda_build_check: venv ready in $((t1 - t0)) s"

# 2. Build into a temporary folder: the checkout's own (CPU) build stays untouched.
work=$(mktemp -d "${TMPDIR:-/tmp}/nlseq-cuda-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
NLSEQ_FORCE_CUDA=1 "$venv/bin/python" setup.py -q build_ext --build-temp "$work/temp" --build-lib "$work/lib"
so=$(ls "$work"/lib/nlseq/_C*.so)
t2=$(date +%s)
echo "cuda_build_check: compiled and linked $(basename "$so") in $((t2 - t1)) s"

# 3. Load it (no GPU needed) and list the ops with a CUDA kernel; the ones below must be there.
"$venv/bin/python" - "$so" "$root/python" <<'EOF'
import importlib.util
import sys

so, pkg = sys.argv[1], sys.argv[2]
sys.path.insert(0, pkg)
import torch  # noqa: E402

import nlseq  # noqa: E402  (the package from the checkout; its _C comes from the CUDA build)

spec = importlib.util.spec_from_file_location("nlseq._C", so)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)  # runs the TORCH_LIBRARY registrations
sys.modules["nlseq._C"] = mod
ops = sorted(n for n in torch._C._dispatch_get_registrations_for_dispatch_key("CUDA") if n.startswith("nlseq_ext::"))
print("cuda_build_check: ops with a CUDA kernel:", ", ".join(ops) or "none")
required = ("nlseq_ext::scan_fwd", "nlseq_ext::scan_bwd", "nlseq_ext::softplus_attention_decode",
            "nlseq_ext::pararnn_fwd", "nlseq_ext::pararnn_bwd", "nlseq_ext::pararnn_seq_fwd",
            "nlseq_ext::pararnn_cuda_fwd_chunked", "nlseq_ext::pararnn_cuda_bwd_chunked")
missing = [op for op in required if op not in ops]
if missing:
    sys.exit(f"cuda_build_check: FAILED: no CUDA kernel registered for {missing}")
EOF
echo "cuda_build_check: OK in $(($(date +%s) - t0)) s"
