#!/usr/bin/env bash
# GPU rows of BENCHMARKS.md: gradscope on wgpu beside PyTorch CUDA on the same
# GPU, the probe's overhead there, and a flex-vs-wgpu parity check.
#
#   bench/gpu.sh [GRADSCOPE_BINARY] [OUT_DIR]
#
# Needs an NVIDIA driver with Vulkan (wgpu) and a python3 with torch+numpy.
set -uo pipefail
gs=${1:-target/release/gradscope}
out=${2:-bench-gpu}
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/log.txt"; }

log "machine"
{ nvidia-smi -L; nproc; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; } 2>&1 | tee -a "$out/log.txt"

# The probe's statistics on the GPU: the default (`auto`: host reads for small
# steps, device reductions for large ones) against each path forced.
for r in auto host device; do
    log "probe overhead on wgpu, $r reductions (blocks)"
    timeout 300 "$gs" bench --backends wgpu --steps 40 --reps 3 --skip-idx --probe --probe-reductions "$r" \
        --presets mlp-sigmoid-8x256,resnet20-residual --out "$out/probe-$r.md" 2>&1 | tee -a "$out/log.txt"
done


log "throughput, wgpu vs PyTorch CUDA"
timeout 170 "$gs" bench --backends wgpu --steps 20 --reps 5 --skip-idx --pytorch \
    --presets mlp-sigmoid-8x256,mlp-relu-bn-8x256,mlp-relu-4x512,resnet20-plain,resnet20-residual \
    --out "$out/throughput.md" 2>&1 | tee -a "$out/log.txt"

log "parity flex vs wgpu"
timeout 40 "$gs" parity --preset mlp-sigmoid-8x256 --backends flex,wgpu 2>&1 | tee "$out/parity.txt" | tee -a "$out/log.txt"
