#!/usr/bin/env bash
# One GPU visit, one command: the most verified information a bare H100/H200 can return in under 9 minutes.
#
#   probe       GPU, driver, toolkit, Python packages, tools (nvidia-smi, nvcc, ncu, compute-sanitizer)
#   wheels      installs .devcarry/wheels/*.whl (packages the GPU machine lacks; tools/gpu/prepare_carry.sh) and
#               unpacks .devcarry/flashinfer-data.tgz (then the build compiles FlashInfer's attention as a peer)
#   build       CMake + Ninja, CUDA for $ARCH only (default 90a), all targets + the op harness; _core -> python/
#   op_tests    the C++ CUDA checks (tests/cuda/test_ops_cuda.cu: device layer, graph replay, GEMM engine choice)
#   pytest      pytest -m cuda: the op table on CUDA (tests/test_ops.py: every op in f32/f16/bf16 against PyTorch,
#               its contract, the kernel each switch runs), fp32 session parity with the CPU over 64 frames,
#               bf16/fp16 PSNR, graph replay == direct, the static PyTorch baseline under CUDA graphs
#   memcheck    compute-sanitizer memcheck on a short session (tools/gpu/session_smoke.py)
#   ops         benchmarks/ops.py: every op of a frame at a full cache, time / TFLOP/s / GB/s / roofline,
#               PyTorch peers
#   ncu         Nsight Compute (SpeedOfLight, launch stats, occupancy) on one full-cache frame: the first
#               $NCU_DIT_KERNELS kernels of the DiT and every kernel of one decode
#   fps         benchmarks/fps.py at a full cache, every runner, torch.compile last; with --curve for nfd_rt
#               and torch-static (time against visible frames); writes $OUT/fps.json after every runner
#   racecheck   (not in the default STEPS) compute-sanitizer racecheck on the C++ checks and the op table's bf16
#               attention, norm and conv rows
#
# Each step runs under its own `timeout` and within one deadline (DEADLINE seconds from the start, default 530:
# the device tool allows 600 s a command); a step that would start with under 20 s left is skipped. Output goes
# to $OUT as it happens, in at most 4 files (the device tool returns 8, 2 folders deep):
#   run.log          everything, as it happens
#   summary.json     each step: status (passed / failed / timeout / skipped), exit code, seconds, reason
#   results.tar.gz   every step's own files (logs, ops.json, ncu CSVs, ...), re-packed after each step
#   fps.json         the benchmark result (rewritten after each runner, so a killed compile keeps the others)
#
# Usage, from the repository root (on the GPU machine through the device tool, with carry [".devcarry"]):
#   NFD_RT_COMMIT=<sha> bash tools/gpu/run.sh
#   STEPS=wheels,build,fps FPS_RUNNERS=nfd_rt,torch-static,compile-static bash tools/gpu/run.sh   # a 2nd call
# Without a GPU (dry run: CUDA steps are skipped, CPU steps run on `tiny`; BUILD_DIR reuses a CPU build):
#   OUT=/tmp/gpu-dry BUILD_DIR=build/dev bash tools/gpu/run.sh
# Knobs (environment): STEPS (comma list, default "probe,wheels,build,op_tests,pytest,memcheck,ops,ncu,fps"),
#   DEADLINE (530), ARCH (90a), BUILD_DIR (build/gpu), CONFIG (nfd-310m; tiny without a GPU), FPS_FRAMES (30),
#   FPS_RUNNERS (all), PYTEST_ARGS (extra pytest options), COMPILE_MODE (max-autotune; none skips compile-static),
#   FPS_ARGS (extra fps.py options), CMAKE_ARGS (extra -D options of the build), NCU_DIT_KERNELS (40),
#   PYTHON (python3), NFD_RT_COMMIT (recorded where the tree has no .git), NO_GPU=1 (dry run even with a GPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
START=$(date +%s)
OUT="${OUT:-$ROOT/gpu-results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK="${WORK:-$ROOT/build/gpu-run}"          # each step's files; packed into $OUT/results.tar.gz
rm -rf "$WORK"
mkdir -p "$WORK"
PY="${PYTHON:-python3}"
DEADLINE="${DEADLINE:-530}"
ARCH="${ARCH:-90a}"
BUILD_DIR="${BUILD_DIR:-build/gpu}"
STEPS="${STEPS:-probe,wheels,build,op_tests,pytest,memcheck,ops,ncu,fps}"
if [ "${NO_GPU:-0}" != 1 ] && nvidia-smi -L >/dev/null 2>&1; then GPU=1; DEVICE=cuda; else GPU=0; DEVICE=cpu; fi
CONFIG="${CONFIG:-$([ $GPU = 1 ] && echo nfd-310m || echo tiny)}"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export NFD_RT_COMMIT="${NFD_RT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
: > "$OUT/run.log"
: > "$WORK/steps.tsv"

log() { echo "=== [$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/run.log"; }
wanted() { [[ ",$STEPS," == *",$1,"* ]]; }
tool() {  # first of: on PATH, in the CUDA toolkit, in an Nsight Compute install
  command -v "$1" 2>/dev/null || ls /usr/local/cuda/bin/"$1" 2>/dev/null ||
    ls /opt/nvidia/nsight-compute/*/"$1" 2>/dev/null | tail -1 || true
}
export -f tool  # the steps run in child shells

pack() {  # summary.json + results.tar.gz from what the steps left so far
  "$PY" - "$WORK/steps.tsv" "$OUT/summary.json" "$START" "$GPU" "$CONFIG" "$NFD_RT_COMMIT" <<'EOF'
import json, sys, time
tsv, out, start, gpu, config, commit = sys.argv[1:]
steps = []
for line in open(tsv):
    name, status, rc, seconds, reason = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(seconds), "reason": reason})
json.dump({"commit": commit, "gpu": gpu == "1", "config": config, "elapsed_seconds": int(time.time() - int(start)),
           "steps": steps}, open(out, "w"), indent=2)
EOF
  [ -f "$OUT/fps.json" ] && cp "$OUT/fps.json" "$WORK/"
  tar -czf "$OUT/results.tar.gz.tmp" -C "$WORK" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$WORK/steps.tsv"; pack; }

# step NAME BUDGET NEEDS_GPU COMMAND: runs COMMAND (bash) under timeout min(BUDGET, time left), output to
# $WORK/NAME.log and run.log.
step() {
  local name=$1 budget=$2 needs_gpu=$3 cmd=$4
  wanted "$name" || return 0
  if [ "$needs_gpu" = 1 ] && [ $GPU = 0 ]; then log "$name: skipped (no GPU)"; record "$name" skipped 0 0 "no GPU"; return 0; fi
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  if (( left < 20 )); then log "$name: skipped (${left}s left)"; record "$name" skipped 0 0 "deadline"; return 0; fi
  local t=$(( budget < left - 10 ? budget : left - 10 ))
  log "$name (timeout ${t}s)"
  local s=$(date +%s)
  timeout --kill-after=10 "$t" bash -c "$cmd" 2>&1 | tee "$WORK/$name.log" >> "$OUT/run.log"
  local rc=${PIPESTATUS[0]}
  local status=passed
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=failed; fi
  log "$name: $status (rc $rc, $(( $(date +%s) - s ))s)"
  record "$name" "$status" "$rc" "$(( $(date +%s) - s ))" ""
  return 0
}

log "nfd_rt GPU run: commit $NFD_RT_COMMIT, device $DEVICE, config $CONFIG, steps $STEPS, deadline ${DEADLINE}s"

step probe 30 0 "
  nvidia-smi || echo 'no nvidia-smi'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv || true
  nvcc --version | tail -2 || true
  echo ncu: \$(tool ncu) compute-sanitizer: \$(tool compute-sanitizer)
  nproc; free -g; df -h . | tail -1; uname -r
  $PY -c 'import sys, platform; print(sys.version); print(platform.platform())'
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available());
[print(torch.cuda.get_device_properties(0)) for _ in [0] if torch.cuda.is_available()]' || true
  $PY -m pip list 2>/dev/null | grep -iE 'torch|triton|cutlass|openblas|nlohmann|pybind|scikit-build|cmake|ninja|pytest|hypothesis|cudnn|cublas|flashinfer' || true
"

step wheels 60 0 "
  if compgen -G '.devcarry/wheels/*.whl' >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile .devcarry/wheels/*.whl && $PY -m pip list 2>/dev/null | grep -iE 'cutlass|openblas|nlohmann|flashinfer|cudnn'
  else echo 'no .devcarry/wheels: nothing to install'; fi
  if [ -f .devcarry/flashinfer-data.tgz ]; then
    rm -rf build/flashinfer-data && mkdir -p build/flashinfer-data && tar -xzf .devcarry/flashinfer-data.tgz -C build/flashinfer-data &&
    echo 'FlashInfer headers in build/flashinfer-data'
  fi
"
# FlashInfer's attention is built as a peer when its headers were carried (prepare_carry.sh --flashinfer).
FLASHINFER_ARGS=""
if [ -f .devcarry/flashinfer-data.tgz ]; then
  FLASHINFER_ARGS="-DNFD_RT_FLASHINFER=ON -DNFD_RT_FLASHINFER_DIR=$ROOT/build/flashinfer-data"
fi

if [ $GPU = 1 ]; then
  BUILD_CMD="
    cmake -S . -B $BUILD_DIR -G Ninja -DCMAKE_BUILD_TYPE=Release -DNFD_RT_CUDA=ON -DNFD_RT_CUDA_ARCHITECTURES=$ARCH \
      -DPython_EXECUTABLE=\$(command -v $PY) $FLASHINFER_ARGS ${CMAKE_ARGS:-} &&
    cmake --build $BUILD_DIR -j\$(nproc) --target all nfd_cuda_op_tests &&
    cp $BUILD_DIR/_core*.so python/nfd_rt/ && ls -la $BUILD_DIR/_core*.so $BUILD_DIR/nfd_cuda_op_tests"
else  # dry run: a CPU build (reused from BUILD_DIR if it has one)
  BUILD_CMD="
    if ! ls $BUILD_DIR/_core*.so >/dev/null 2>&1; then
      cmake -S . -B $BUILD_DIR -G Ninja -DCMAKE_BUILD_TYPE=Release -DNFD_RT_CUDA=OFF -DPython_EXECUTABLE=\$(command -v $PY) &&
      cmake --build $BUILD_DIR -j\$(nproc) || exit 1
    fi
    cp $BUILD_DIR/_core*.so python/nfd_rt/ && echo 'CPU build (no GPU): $BUILD_DIR'"
fi
step build 240 0 "$BUILD_CMD"

step op_tests 60 1 "$BUILD_DIR/nfd_cuda_op_tests"

# The C++ checks already ran as their own step: pytest skips their wrapper unless op_tests was left out.
PYTEST_DESELECT=$(wanted op_tests && echo "--deselect tests/test_cuda_ops.py::test_cuda_ops" || echo "")
step pytest 300 1 "NFD_CUDA_OP_TESTS=$ROOT/$BUILD_DIR/nfd_cuda_op_tests $PY -m pytest -q -m cuda -rA -p no:cacheprovider \
  $PYTEST_DESELECT ${PYTEST_ARGS:-} tests"

step memcheck 120 1 "\$(tool compute-sanitizer) --tool memcheck --error-exitcode 9 $PY tools/gpu/session_smoke.py"

step ops 100 0 "$PY benchmarks/ops.py --config $CONFIG --device $DEVICE --threads \$(nproc) --samples 5 --out $WORK/ops.json"

NCU_ARGS="--clock-control none --nvtx --nvtx-include profiled/ --section SpeedOfLight --section LaunchStats --section Occupancy --csv --page details"
step ncu 90 1 "
  NCU=\$(tool ncu)
  \$NCU $NCU_ARGS --launch-count ${NCU_DIT_KERNELS:-40} $PY tools/gpu/ncu_frame.py dit $CONFIG bfloat16 > $WORK/ncu_dit.csv; echo \"dit rc \$?\"
  \$NCU $NCU_ARGS --launch-count 200 $PY tools/gpu/ncu_frame.py vae $CONFIG bfloat16 > $WORK/ncu_vae.csv; echo \"vae rc \$?\"
  wc -l $WORK/ncu_*.csv
"

FPS_DTYPE=$([ $GPU = 1 ] && echo "--dtype bfloat16" || echo "")
# Without a GPU (dry run) compile-static is skipped unless COMPILE_MODE is set: Inductor takes minutes on a CPU.
COMPILE_MODE="${COMPILE_MODE:-$([ $GPU = 1 ] && echo max-autotune || echo none)}"
step fps 600 0 "$PY benchmarks/fps.py --config $CONFIG --device $DEVICE $FPS_DTYPE --steps 4 --frames ${FPS_FRAMES:-30} \
  --threads \$(nproc) --compile-mode $COMPILE_MODE ${FPS_RUNNERS:+--runners $FPS_RUNNERS} \
  --curve --curve-runners nfd_rt,torch-static --out $OUT/fps.json --overwrite --markdown --no-progress ${FPS_ARGS:-}"

step racecheck 120 1 "\$(tool compute-sanitizer) --tool racecheck --error-exitcode 9 $BUILD_DIR/nfd_cuda_op_tests &&
  \$(tool compute-sanitizer) --tool racecheck --error-exitcode 9 $PY -m pytest -q -x -m cuda -p no:cacheprovider \
    tests/test_ops.py -k 'bf16 and (attention or norm or conv)'"

pack
log "done in $(( $(date +%s) - START ))s"
cat "$OUT/summary.json" | tee -a "$OUT/run.log"
[ -f "$OUT/fps.json" ] && $PY benchmarks/fps.py --markdown-from "$OUT/fps.json" | tee -a "$OUT/run.log"
exit 0
