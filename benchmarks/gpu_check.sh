#!/usr/bin/env bash
# The GPU check: build (sm_90), GPU tests, headline benchmarks, the rest; gpu_report.json always.
# Everything is in benchmarks/gpu_check.py (its docstring lists the phases and the environment
# variables; docs/benchmarks.md explains the report). This wrapper only sets the defaults.
#
#   bash benchmarks/gpu_check.sh                          on the GPU machine; outputs in $OUT
#   NLSEQ_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh    dry run on the CPU (tiny shapes)
#
#   OUT                     output folder (default results/gpu_check): gpu_report.json,
#                           gpu_check.log and up to 6 figures (at most 8 files)
#   PYTHON                  interpreter with torch (default python3)
#   NLSEQ_CUDA_ARCHS        default "90"; MAX_JOBS default 16; CUDA_HOME default /usr/local/cuda
#   NLSEQ_GPU_CHECK_BUDGET  total seconds (default 570, under 10 minutes)
#
# Exit status: 0 when the build, every test and every benchmark check passed and nothing was cut,
# 1 otherwise, 2 for bad settings. The report is written either way (after every phase).
set -uo pipefail
cd "$(dirname "$0")/.."
export NLSEQ_CUDA_ARCHS="${NLSEQ_CUDA_ARCHS:-90}"
export MAX_JOBS="${MAX_JOBS:-16}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
py="${PYTHON:-python3}"
export PYTHON="$py"
exec "$py" benchmarks/gpu_check.py
