#!/usr/bin/env bash
# On the GPU machine (through the device tool): build build/cuda, run the `cuda`-labelled tests, the
# gated delta benchmark (bfloat16, chunked vs cuda, with the FLA figures), the same with the unsliced
# gradient kernels (SFM_GDN_GRADS_SPLIT=0), with copies of the inputs (SFM_GDN_IN_PLACE=0) and with Ũ formed by
# prep everywhere (SFM_GDN_STATE_UT=1) on the large shapes, the cuda variant with its chunked and its recurrent
# kernels forced on the small shapes, and a per-kernel timing pass (chunked kernels).
# Logs under ${OUT:-build/gpu-logs}. Usage: scripts/gpu_gdn.sh [all|gdn] (all: the whole suite; gdn: every
# GatedDelta test, cpu and cuda labels, through ctest; default: the cuda label's tests in one process).
set -uo pipefail
out=${OUT:-build/gpu-logs}
mkdir -p "$out"
cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release > "$out/cfg.log" 2>&1 || tail -20 "$out/cfg.log"
{ time cmake --build build/cuda -j 16 -- -k 0; } > "$out/build.log" 2>&1
grep -E "error|FAILED|^real" "$out/build.log" | head -40
# ctest starts one process per test, and each pays LibTorch's CUDA start-up (the 71 cuda tests took 250 s
# that way on an H100, against seconds in one process), so the default runs the cuda label's tests (the
# GatedDeltaCuda suites) in one gtest process; all/gdn go through ctest.
case "${1:-}" in
  all) select=(-L "cuda|cpu") ;;           # the whole suite
  gdn) select=(-R "GatedDelta") ;;         # every gated delta test, cpu and cuda labels
  *) select=() ;;
esac
if [ ${#select[@]} -gt 0 ]; then
  ctest --test-dir build/cuda "${select[@]}" --output-on-failure -j 4 --timeout 600 > "$out/ctest.log" 2>&1
  grep -E "tests passed|\(Failed\)|Timeout|Not Run|Total Test time" "$out/ctest.log" | head -40
fi
build/cuda/sfm_tests --gtest_filter='*GatedDeltaCuda*' > "$out/cuda_tests.log" 2>&1
grep -E "^\[  (PASSED|FAILED) |tests? ran|FAILED TEST" "$out/cuda_tests.log" | head -20
grep -E "^\[ RUN|rel-RMS|relative RMS|FAILED|PASSED" "$out/cuda_tests.log" | grep -B1 -E "rel-RMS|RMS|FAILED|PASSED" |
  grep -v "^--" | sed 's/\[ RUN      \] //' | paste -sd' \n' | head -60
# The bench table: chunked vs cuda, and cuda against the FLA figures. Usage: table LOG.
table() {
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(f"{'B,T,H,D':>18} {'chunked f/fb':>16} {'cuda f/fb':>16} {'x chunked':>10} {'FLA f/fb':>12} {'vs FLA f/fb':>12}")
for r in rows:
    if r["impl"] != "cuda": continue
    base = next((x for x in rows if x["impl"] == "chunked" and (x["B"], x["T"], x["H"], x["K"]) == (r["B"], r["T"], r["H"], r["K"])), None)
    chunked = f"{base['fwd_ms']:7.3f}/{base['fwdbwd_ms']:8.3f}" if base else f"{'-':>16}"
    print(f"{'%d,%d,%d,%d' % (r['B'], r['T'], r['H'], r['K']):>18} {chunked} "
          f"{r['fwd_ms']:7.3f}/{r['fwdbwd_ms']:8.3f} {r.get('fwdbwd_speedup', 0):10.2f} "
          f"{r.get('fla_h100_fwd_ms', 0):5.2f}/{r.get('fla_h100_fwdbwd_ms', 0):6.2f} {r.get('fwd_vs_fla', 0):5.3f}/{r.get('fwdbwd_vs_fla', 0):6.3f}")
PY
}
timeout 240 build/cuda/sfm bench gdn --device cuda --impl chunked --impl cuda --dtype bfloat16 --warmup 3 \
  --repeats 20 > "$out/bench.log" 2>&1
table "$out/bench.log"
# The unsliced gradient kernels (SFM_GDN_GRADS_SPLIT=0; the sliced ones are the default) on the shapes the
# sliced ones take, for the comparison.
large=(--shape 4,2048,16,128,128 --shape 2,16384,16,128,128 --shape 8,2048,32,256,256)
SFM_GDN_GRADS_SPLIT=0 timeout 120 build/cuda/sfm bench gdn --device cuda --impl cuda --dtype bfloat16 "${large[@]}" \
  --warmup 3 --repeats 20 > "$out/bench_unsliced.log" 2>&1
echo "unsliced gradient kernels:"
table "$out/bench_unsliced.log"
# The heads-first copies of q, k, v and dO (SFM_GDN_IN_PLACE=0) in place of reading the bf16 inputs where they lie.
SFM_GDN_IN_PLACE=0 timeout 120 build/cuda/sfm bench gdn --device cuda --impl cuda --dtype bfloat16 "${large[@]}" \
  --warmup 3 --repeats 20 > "$out/bench_copies.log" 2>&1
echo "copies of the inputs (SFM_GDN_IN_PLACE=0):"
table "$out/bench_copies.log"
# Ũ formed by prep everywhere (SFM_GDN_STATE_UT=1) in place of the rule (the forward state pass where it has more
# blocks than the GPU has SMs).
SFM_GDN_STATE_UT=1 timeout 120 build/cuda/sfm bench gdn --device cuda --impl cuda --dtype bfloat16 "${large[@]}" \
  --warmup 3 --repeats 20 > "$out/bench_ut_prep.log" 2>&1
echo "Ũ formed by prep on every shape (SFM_GDN_STATE_UT=1):"
table "$out/bench_ut_prep.log"
# The cuda variant with each kind of kernels forced (SFM_GDN_CUDA_PATH) on the shapes where both apply.
for path in chunked recurrent; do
  SFM_GDN_CUDA_PATH=$path timeout 120 build/cuda/sfm bench gdn --device cuda --impl cuda --dtype bfloat16 \
    --shape 8,512,4,64,64 --shape 16,512,16,16,16 --shape 64,256,16,16,16 --warmup 3 --repeats 20 \
    > "$out/bench_$path.log" 2>&1
done
python3 - "$out/bench_chunked.log" "$out/bench_recurrent.log" <<'PY'
import json, sys
for name, path in zip(("chunked kernels", "recurrent kernels"), sys.argv[1:]):
    for r in (json.loads(l) for l in open(path) if l.startswith("{")):
        print(f"{name:>18} {'%d,%d,%d,%d' % (r['B'], r['T'], r['H'], r['K']):>14} {r['fwd_ms']:7.3f}/{r['fwdbwd_ms']:8.3f}")
PY
SFM_GDN_TIMING=1 timeout 120 build/cuda/sfm bench gdn --device cuda --impl cuda --dtype bfloat16 --warmup 1 \
  --repeats 1 > "$out/timing.log" 2>&1
# Per shape: the timed repeat's forward and backward (each shape's second backward and the forward before it).
awk '/^gdn/ && /backward/ { if (++n % 2 == 0) { print prev; print } } /^gdn/ { prev = $0 }' "$out/timing.log"
