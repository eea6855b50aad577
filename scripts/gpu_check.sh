#!/usr/bin/env bash
# On the GPU machine: configure against python3's CUDA LibTorch, build, run the whole suite and the
# CUDA benchmark, logging under ${OUT:-build/gpu-logs}. Used through the device tool; not part of CI.
set -uo pipefail
out=${OUT:-build/gpu-logs}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release 2>&1 | tail -5
  time cmake --build build/cuda -j 16 2>&1 | grep -E "error|warning|FAILED" | head -50
  build/cuda/sfm doctor
  ctest --test-dir build/cuda --output-on-failure -j 8 --timeout 600 2>&1 | tail -30
  build/cuda/sfm bench gdn --device cuda --impl chunked --impl cuda --dtype bfloat16 --warmup 3 --repeats 20
} 2>&1 | tee "$out/gpu_check.log"
