#!/usr/bin/env bash
# Everything that needs a GPU, in one go: build with CUDA, GPU tests, compute-sanitizer, benchmarks.
# Usage (on a machine with an NVIDIA GPU, from the repository root):  OUT=/some/dir bash tools/gpu/check.sh
# Wheels for packages the GPU machine lacks may be put in .devcarry/wheels (installed with --no-deps).
# The whole run takes longer than one 10-minute device command; run it in parts, the build is kept between calls:
#   BENCH=0 SANITIZE=0 bash tools/gpu/check.sh       # build, op harness, GPU pytest, timing split (~8 min)
#   BENCH=0 bash tools/gpu/check.sh                  # + compute-sanitizer
#   BENCH_CONFIGS=nfd-310m BENCH_STEPS=4 bash tools/gpu/check.sh   # one benchmark (torch.compile: minutes)
set -uo pipefail
OUT="${OUT:-gpu-results}"; mkdir -p "$OUT"
ARCH="${NFD_RT_CUDA_ARCHITECTURES:-90}"
PY="${PYTHON:-python3}"
log() { echo "=== [$(date +%H:%M:%S)] $*"; }
if compgen -G ".devcarry/wheels/*.whl" >/dev/null; then $PY -m pip install -q --no-deps .devcarry/wheels/*.whl; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

log "build (CUDA $ARCH)"
cmake -S . -B build/gpu -G Ninja -DNFD_RT_CUDA=ON -DNFD_RT_CUDA_ARCHITECTURES="$ARCH" \
  -DPython_EXECUTABLE="$(command -v $PY)" > "$OUT/build.log" 2>&1 &&
cmake --build build/gpu -j16 --target all nfd_cuda_op_tests >> "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
cp build/gpu/_core*.so python/nfd_rt/
export PYTHONPATH="$PWD/python"

log "GPU op harness"
if [ -x build/gpu/nfd_cuda_op_tests ]; then build/gpu/nfd_cuda_op_tests 2>&1 | tee "$OUT/op_tests.txt" | tail -20; fi

log "pytest (cuda marker + CPU parity)"
$PY -m pytest -q -s -m cuda tests -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -30

if [ "${SANITIZE:-1}" = 1 ]; then
  log "compute-sanitizer memcheck / racecheck"
  if [ -x build/gpu/nfd_cuda_op_tests ]; then
    compute-sanitizer --tool memcheck --error-exitcode 9 build/gpu/nfd_cuda_op_tests > "$OUT/memcheck_ops.txt" 2>&1; echo "memcheck ops rc=$?" | tee -a "$OUT/sanitizer.txt"
    compute-sanitizer --tool racecheck --error-exitcode 9 build/gpu/nfd_cuda_op_tests > "$OUT/racecheck_ops.txt" 2>&1; echo "racecheck ops rc=$?" | tee -a "$OUT/sanitizer.txt"
  fi
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY tools/gpu/session_smoke.py > "$OUT/memcheck_session.txt" 2>&1; echo "memcheck session rc=$?" | tee -a "$OUT/sanitizer.txt"
  tail -3 "$OUT"/memcheck_*.txt "$OUT"/racecheck_*.txt 2>/dev/null
fi

log "timing split: step vs step_latent + decode (the ~88 ms seen in session 1)"
$PY tools/gpu/timing_split.py nfd-310m bfloat16 2>&1 | tee "$OUT/timing_split.txt"

if [ "${BENCH:-1}" = 1 ]; then
  log "benchmarks"
  # torch.compile (minutes of autotuning) only at 4 steps; 1 and 2 steps time nfd_rt and eager.
  for cfg in ${BENCH_CONFIGS:-nfd-310m nfd-130m}; do
    for steps in ${BENCH_STEPS:-4 2 1}; do
      mode="${COMPILE_MODE:-max-autotune}"; [ "$steps" = 4 ] || mode=none
      $PY benchmarks/fps.py --config "$cfg" --device cuda --steps "$steps" ${BENCH_ARGS:-} --frames "${BENCH_FRAMES:-100}" \
        --threads 16 --compile-mode "$mode" --out "$OUT/fps_${cfg}_cuda_s${steps}.json" --markdown --no-progress 2>&1 | tail -15
    done
  done
fi
log "done"
