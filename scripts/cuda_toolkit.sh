#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolkit (nvcc, headers, link-time libraries) from NVIDIA's PyPI wheels into
# $ZKINFER_CUDA_HOME (default ~/.cache/zkinfer-cuda) and prints the environment that
# `cargo build --features cuda` needs. Idempotent: a second run only prints the environment.
#
#   eval "$(scripts/cuda_toolkit.sh)"      # then: cargo build --release --features cuda
#
# Why these choices (docs/gpu.md has the long version):
# - CUDA 13.0, the oldest 13.x: candle's kernels ship as PTX that the GPU host's driver JIT-compiles, and
#   a driver only accepts PTX from a toolkit no newer than itself; every CUDA 13 driver accepts 13.0.
# - candle-core's `cuda` feature turns on cudarc's `dynamic-linking`, so the binary is linked against
#   libcuda, libcublas, libcublasLt, libcurand, libnvrtc and libcudart. The wheels ship the versioned
#   libraries (libcublas.so.13, ...) but not the unversioned names the linker asks for, nor libcuda (that
#   comes with the driver), so this script adds the symlinks and a stub libcuda.so.1 generated from the
#   driver API names cudarc declares. At run time the GPU host's driver and CUDA 13 libraries are used.
# - No GPU here, so the target architecture is given: CUDA_COMPUTE_CAP=90 (H100).
set -euo pipefail

home="${ZKINFER_CUDA_HOME:-$HOME/.cache/zkinfer-cuda}"
cap="${CUDA_COMPUTE_CAP:-90}"
python="${PYTHON:-python3}"

log() { echo "cuda_toolkit: $*" >&2; }

if [ ! -x "$home/venv/bin/pip" ]; then
    log "creating $home/venv"
    "$python" -m venv "$home/venv" >&2
fi
pip="$home/venv/bin/pip"
# Every component pinned to the CUDA 13.0 release line (pip would otherwise mix in newer crt/nvvm).
packages=(
    'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*'
    'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*' 'nvidia-cuda-nvrtc==13.0.*'
    'nvidia-cublas==13.0.*' 'nvidia-curand==10.4.0.*'
)
if ! "$pip" show -q nvidia-cuda-nvcc nvidia-cublas nvidia-curand nvidia-cuda-nvrtc >/dev/null 2>&1; then
    log "installing ${packages[*]}"
    "$pip" install -q --disable-pip-version-check "${packages[@]}" >&2
fi

site=$("$home/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
root="$site/nvidia/cu13"
[ -x "$root/bin/nvcc" ] || { log "no nvcc under $root: the wheel layout changed; see docs/gpu.md"; exit 1; }

# Link-time names: cudarc's build script searches $CUDA_ROOT/lib/stubs among others.
stubs="$root/lib/stubs"
mkdir -p "$stubs"
for lib in cublas cublasLt curand nvrtc cudart; do
    versioned=$(cd "$root/lib" && ls lib$lib.so.* 2>/dev/null | grep -v alt | sort | head -n1 || true)
    [ -n "$versioned" ] || { log "lib$lib.so.* missing under $root/lib"; exit 1; }
    ln -sf "../$versioned" "$stubs/lib$lib.so"
done
if [ ! -e "$stubs/libcuda.so" ] || [ "$0" -nt "$stubs/libcuda.so" ]; then
    cudarc_sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$cudarc_sys" ] || { log "cudarc sources not found: run 'cargo fetch' in the repository first"; exit 1; }
    # The binary only needs the names to link; on the GPU host the driver's libcuda.so.1 is loaded
    # instead. Run against this stub (LD_LIBRARY_PATH), every call fails as on a machine without a
    # GPU (100 = CUDA_ERROR_NO_DEVICE), which lets the no-GPU error path be tested here.
    {
        echo '#include <stddef.h>'
        echo 'int cuGetErrorString(int e, const char **s) { (void)e; *s = "no CUDA driver (zkinfer build stub)"; return 0; }'
        echo 'int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_NO_DEVICE"; return 0; }'
        grep -oE 'fn cu[A-Za-z0-9_]+\(' "$cudarc_sys" | sed 's/^fn //; s/($//' | sort -u |
            grep -vx 'cuGetErrorString\|cuGetErrorName' | sed 's/.*/int &(void) { return 100; }/'
    } > "$stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
    log "stub libcuda.so ($(grep -c "^int " "$stubs/libcuda_stub.c") driver entry points from $cudarc_sys)"
fi

version=$("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
log "nvcc $version at $root/bin/nvcc; target sm_$cap"
cat <<ENV
export CUDA_ROOT='$root'
export CUDA_HOME='$root'
export CUDA_PATH='$root'
export PATH='$root/bin':"\$PATH"
export LIBRARY_PATH='$stubs':"\${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP='$cap'
ENV
