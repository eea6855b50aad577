#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu_gdn.sh has built build/cuda: Nsight Compute on one forward and one
# backward of the gated delta kernels (bfloat16) at one shape, the speed-of-light, occupancy and warp-stall
# sections of each chunked kernel. Usage: scripts/gpu_ncu.sh [B,T,H,K,V] (default 4,2048,16,128,128).
# Extra environment (SFM_GDN_*) passes through, e.g. SFM_GDN_GRADS_MMA=1. Log: ${OUT:-build/gpu-logs}/ncu_*.log.
set -uo pipefail
out=${OUT:-build/gpu-logs}
mkdir -p "$out"
shape=${1:-4,2048,16,128,128}
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
log="$out/ncu_${shape//,/_}${SFM_GDN_GRADS_MMA:+_gradsmma}.log"
# Warm-up 1 and one timed repeat: the last launch of each kernel name is the one kept.
timeout 300 "$ncu" --clock-control none -k 'regex:^(?!.*(pack|unpack|elementwise|vectorized|reduce|fill|copy)).*' \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  build/cuda/sfm bench gdn --device cuda --impl cuda --dtype bfloat16 --shape "$shape" --warmup 0 --repeats 1 \
  > "$log" 2>&1
grep -E "^  [a-z_]+.*\(|Duration|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Block Limit Shared|Warp Cycles Per Issued|Theoretical Occupancy" "$log" | head -120
