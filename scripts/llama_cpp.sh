#!/usr/bin/env bash
# llama-cpp-python (the oracle of docs/model.md and the llama.cpp rows of `zkinfer bench runtime`) in a
# virtual environment under ~/.cache. It builds llama.cpp from source: about 15 minutes on 2 cores, once.
# Idempotent; prints the environment's interpreter.
set -euo pipefail
VENV="${ZKINFER_LLAMA_VENV:-$HOME/.cache/zkinfer-llama-venv}"
VERSION=0.3.36
if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 keeps venv in its own package.
    apt-get install -y --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  command -v c++ >/dev/null || apt-get install -y --no-install-recommends g++ >/dev/null
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check cmake ninja
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "llama-cpp-python==$VERSION" >&2
fi
echo "$VENV/bin/python"
