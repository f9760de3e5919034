#!/usr/bin/env bash
# One device call of the prepared GPU sequence (bench/GPU_RUN.md is the checklist):
#     bash scripts/gpu_sequence.sh STEP [--seconds S] [--gpu-seconds G]
# Step STEP stages bench/gpu_assets/partSTEP (carried by the call), then runs what the parts so far allow
# (scripts/gpu_kit.py step). Everything it prints also goes to $OUT/stepSTEP.log; results land in $OUT.
# GPUKIT_PYTHON (default python3) and GPUKIT_STATE (default /tmp/gpukit) change the interpreter and the state folder.
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
step=${1:?usage: bash scripts/gpu_sequence.sh STEP [--seconds S] [--gpu-seconds G]}
shift
out=${OUT:-$PWD/gpu_out}
mkdir -p "$out" || exit 2
export PYTHONUNBUFFERED=1
"${GPUKIT_PYTHON:-python3}" scripts/gpu_kit.py step "$step" --out "$out" "$@" 2>&1 | tee "$out/step$step.log"
