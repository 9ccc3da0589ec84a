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

cargo build --release --bin zkinfer --examples
# Prove and verify synthetic decode steps (first run: ~1.5 min to generate public parameters).
cargo run --release --example prove_verify
