#!/usr/bin/env bash
# Builds `zkinfer` with CUDA shards: `scripts/build_cuda.sh [extra cargo args]`.
# Needs no GPU: nvcc comes from scripts/cuda_toolkit.sh and compiles candle's kernels for sm_90 (H100; set
# CUDA_COMPUTE_CAP for another card). The binary is stripped of debug info so that it stays well under the
# 64 MiB a carried file may weigh; docs/gpu.md says how to run it on the GPU host.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
eval "$("$repo/scripts/cuda_toolkit.sh")"
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
# nvcc runs inside build scripts; keep it to the cores cargo was given.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
cd "$repo"
cargo build --release --features cuda "$@"
bin="${CARGO_TARGET_DIR:-$repo/target}/release/zkinfer"
echo "built $bin ($(du -m "$bin" | cut -f1) MiB)" >&2
