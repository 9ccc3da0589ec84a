#!/usr/bin/env bash
# The Python packages the API tests drive `zkinfer api` with (the official `openai` client), in a
# virtual environment under ~/.cache. Idempotent; prints the environment's interpreter.
set -euo pipefail
VENV="${ZKINFER_VENV:-$HOME/.cache/zkinfer-venv}"
OPENAI=3.57.0
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI')" 2>/dev/null; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 keeps venv in its own package.
    apt-get install -y --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI"
fi
echo "$VENV/bin/python"
