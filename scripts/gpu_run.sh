#!/usr/bin/env bash
# On the GPU host (no Rust, no network): runs the GPU checklist of docs/gpu.md with the binary and model staged
# by scripts/gpu_stage.sh, writing every output under $OUT (default ./gpu-out):
#   1. a CUDA shard: `serve --device cuda`, mixed chains (cpu | cuda, cuda | cpu) and an all-CUDA
#      chain generate the single-process CPU text;
#   2. conformance: CUDA against CPU (logits, hidden states, head; recommended audit tolerances);
#   3. throughput: single process on CUDA and on the CPU (16 and 2 threads), chains, `bench runtime`,
#      `bench throughput` of the packaged model and a random 1.1 B Llama (bf16) with GPU memory;
#   4. the prover on 2 and on 16 threads (the same records, timed; `cost` at V = 32,000 and 262,144).
# A step that fails is reported in $OUT/summary.txt and the others still run.
#   scripts/gpu_run.sh [STEP...]      # steps: setup chain conformance throughput prover (default: all)
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$repo/gpu-out}"
mkdir -p "$OUT"
work="${TMPDIR:-/tmp}/zkinfer-gpu"
mkdir -p "$work"
bin="$repo/gpu/bin/zkinfer"
export ZKINFER_MODEL="$work/gemma-3-270m-q4_k_m.gguf"
export ZKINFER_CACHE="$work/cache"
prompt="The quick brown fox jumps over the lazy dog. In the beginning"
cores=$(nproc)
summary="$OUT/summary.txt"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(setup chain conformance throughput prover)

note() { echo "$*" | tee -a "$summary"; }

# The binary was linked against CUDA 13's libcublas, libcublasLt, libcurand, libnvrtc and libcudart
# (candle turns on cudarc's dynamic linking); the host's CUDA 13 toolkit provides them.
libs() {
    for dir in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/targets/x86_64-linux/lib \
               /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -d "$dir" ] && LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
    done
    export LD_LIBRARY_PATH
    if ldd "$bin" | grep -q 'not found'; then
        note "setup: FAILED, libraries missing (install CUDA 13's cuBLAS, cuRAND, NVRTC or set CUDA_HOME):"
        ldd "$bin" | grep 'not found' | tee -a "$summary"
        return 1
    fi
}

setup() {
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    nvcc --version > "$OUT/nvcc.txt" 2>&1
    libs || return 1
    ldd "$bin" > "$OUT/ldd.txt"
    if [ ! -f "$ZKINFER_MODEL" ]; then
        cat "$repo"/gpu/model-0/piece.0 "$repo"/gpu/model-1/piece.1 "$repo"/gpu/model-2/piece.2 \
            "$repo"/gpu/model-3/piece.3 "$repo"/gpu/bin/piece.4 > "$ZKINFER_MODEL.part" || return 1
        mv "$ZKINFER_MODEL.part" "$ZKINFER_MODEL"
    fi
    [ "$(sha256sum "$ZKINFER_MODEL" | cut -d' ' -f1)" = "$(cat "$repo/gpu/bin/model.sha256")" ] ||
        { note "setup: FAILED, the assembled model has the wrong sha256"; rm -f "$ZKINFER_MODEL"; return 1; }
    "$bin" --version > "$OUT/version.txt"
}

# Starts `serve` children on 127.0.0.1:7101.. for "device:layers" specs; their pids in $pids.
start_nodes() {
    pids=()
    : > "$work/nodes.toml"
    local port=7101
    for spec in "$@"; do
        local device=${spec%%@*} layers=${spec##*@}
        "$bin" serve --device "$device" --layers "$layers" --listen "127.0.0.1:$port" \
            > "$OUT/serve-$port.log" 2>&1 &
        pids+=($!)
        printf '[[node]]\naddr = "127.0.0.1:%s"\nlayers = "%s"\n' "$port" "$layers" >> "$work/nodes.toml"
        port=$((port + 1))
    done
    # Loading takes seconds; a node prints "listening" when ready.
    for _ in $(seq 120); do
        local ready=0
        for p in $(seq 7101 $((port - 1))); do grep -q listening "$OUT/serve-$p.log" && ready=$((ready + 1)); done
        [ "$ready" -eq "$#" ] && return 0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || { note "a node exited: see $OUT/serve-*.log"; return 1; }
        done
        sleep 1
    done
    note "nodes did not start: see $OUT/serve-*.log"
    return 1
}

stop_nodes() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done; }

chain() {
    libs || return 1
    "$bin" generate --prompt "$prompt" --max-tokens 32 > "$OUT/single-cpu.txt" 2> "$OUT/single-cpu.err" || return 1
    local ok=0
    for layout in "cpu@0..9 cuda@9..18" "cuda@0..9 cpu@9..18" "cuda@0..9 cuda:0@9..18"; do
        local name=${layout// /_}
        # shellcheck disable=SC2086
        start_nodes $layout || { stop_nodes; ok=1; continue; }
        "$bin" generate --nodes "$work/nodes.toml" --prompt "$prompt" --max-tokens 32 \
            > "$OUT/chain-$name.txt" 2> "$OUT/chain-$name.err"
        stop_nodes
        if cmp -s "$OUT/single-cpu.txt" "$OUT/chain-$name.txt"; then
            note "chain $layout: same text as the single CPU process ($(tail -n1 "$OUT/chain-$name.err"))"
        else
            note "chain $layout: DIFFERENT text (see $OUT/chain-$name.txt)"; ok=1
        fi
    done
    return $ok
}

conformance() {
    libs || return 1
    "$bin" bench conformance --candidate cuda --tokens 32 > "$OUT/conformance.txt" 2>&1
    local rc=$?
    "$bin" bench conformance --candidate cuda --tokens 32 --json > "$OUT/conformance.json" 2>/dev/null
    cat "$OUT/conformance.txt" >> "$summary"
    return $rc
}

throughput() {
    libs || return 1
    for run in "cuda" "cpu $cores" "cpu 2"; do
        set -- $run
        local args=(--device "$1") name="$1"
        [ $# -gt 1 ] && { args+=(--threads "$2"); name="$1-$2"; }
        "$bin" generate "${args[@]}" --prompt "$prompt" --max-tokens 128 \
            > "$OUT/generate-$name.txt" 2> "$OUT/generate-$name.err"
        note "single process $name: $(tail -n1 "$OUT/generate-$name.err")"
    done
    start_nodes cuda@0..9 cuda@9..18 && {
        "$bin" generate --nodes "$work/nodes.toml" --prompt "$prompt" --max-tokens 128 \
            > "$OUT/generate-chain-cuda.txt" 2> "$OUT/generate-chain-cuda.err"
        note "2-shard CUDA chain: $(tail -n1 "$OUT/generate-chain-cuda.err")"
    }
    stop_nodes
    "$bin" bench runtime --json > "$OUT/bench-runtime.json" 2> "$OUT/bench-runtime.err"
    note "bench runtime (CPU, rc $?): $OUT/bench-runtime.json"
    # The packaged model and a 1.1 B random Llama (bf16, built in memory) on each device, with the
    # GPU memory nvidia-smi sees sampled every 0.2 s during each run.
    for model in "" "--random"; do
        for run in "cuda" "cpu $cores"; do
            set -- $run
            local args=(--device "$1") name="$1${model:+-random}"
            [ $# -gt 1 ] && args+=(--threads "$2")
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
                > "$OUT/gpu-mem-$name.txt" 2>/dev/null &
            local sampler=$!
            "$bin" bench throughput $model "${args[@]}" --tokens 64 --json \
                > "$OUT/throughput-$name.json" 2> "$OUT/throughput-$name.err"
            kill "$sampler" 2>/dev/null
            note "bench throughput $name: $(cat "$OUT/throughput-$name.json") peak GPU MiB $(sort -n "$OUT/gpu-mem-$name.txt" | tail -n1)"
        done
    done
}

prover() {
    "$bin" generate --prompt "$prompt" --max-tokens 8 --records "$work/records.json" > /dev/null 2>&1 || return 1
    # Keys and public parameters once, untimed (cached under $ZKINFER_CACHE).
    "$bin" prove --records "$work/records.json" --out "$work/warm.zkp" --batch 4 --quiet > /dev/null 2>&1
    for threads in 2 "$cores"; do
        local start end
        start=$(date +%s%N)
        RAYON_NUM_THREADS=$threads "$bin" prove --records "$work/records.json" \
            --out "$OUT/prove-$threads.zkp" --batch 4 --quiet > "$OUT/prove-$threads.txt" 2>&1 || return 1
        end=$(date +%s%N)
        note "prove 8 tokens (V = 262144, batch 4) on $threads threads: $(( (end - start) / 1000000 )) ms"
    done
    "$bin" verify "$OUT/prove-$cores.zkp" --json > "$OUT/verify.json"
    # Batches of 4 steps at V = 32,000 and 262,144: keygen, prove and verify time per thread count.
    for threads in 2 "$cores"; do
        RAYON_NUM_THREADS=$threads "$bin" cost --vocab 32000,262144 --batch 4 --json \
            > "$OUT/cost-$threads.json" 2> "$OUT/cost-$threads.err"
        note "cost V = 32000, 262144, batch 4 on $threads threads (rc $?): $OUT/cost-$threads.json"
    done
}

status=0
for step in "${steps[@]}"; do
    echo "== $step" | tee -a "$summary"
    if "$step"; then note "$step: ok"; else note "$step: FAILED"; status=1; fi
done
exit $status
