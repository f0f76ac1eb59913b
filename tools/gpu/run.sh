#!/usr/bin/env bash
# One GPU visit, one command: the figure of record first, then the most verified information a bare H100/H200
# can return in under 9 minutes. Steps, in order (each skipped when its time is gone):
#
#   probe       GPU, driver, toolkit, Python packages, tools (nvidia-smi, nvcc, ncu, compute-sanitizer)
#   wheels      installs .devcarry/wheels/*.whl (what the GPU image lacks; tools/gpu/prepare_carry.sh) and unpacks
#               .devcarry/flashinfer-data.tgz (then the build compiles FlashInfer's attention as a peer)
#   build       CMake + Ninja, CUDA for $ARCH only (default 90a), all targets + the op harness; _core -> python/
#   op_tests    the C++ CUDA checks (tests/cuda/test_ops_cuda.cu: device layer, graph replay, GEMM engine choice)
#   headline    THE FIGURE OF RECORD: benchmarks/fps.py, nfd_rt (+ eager, for first_frame_vs_eager) at a full
#               cache, through tools/gpu/new_paths.py headline: if the run fails or its first frame does not match
#               eager's, it re-runs at once with every new path off (the paths measured before) and bisects by
#               switches to name the one that broke; the rest of the run uses the working switches
#               ($WORK/working_env.sh). Writes $OUT/fps.json.
#   ops         benchmarks/ops.py: every op of a frame at a full cache (each engine/variant), roofline, PyTorch peers
#   sdpa        tools/gpu/sdpa_bench.py: PyTorch SDPA at the frame's shape (cuDNN, FLASH, EFFICIENT; cuDNN and
#               FLASH with the key range split as the batch dimension + log-sum-exp merge), ~20 s
#   baselines   fps.py torch-static and compile-static (reduce-overhead), merged with the headline into fps.json
#               (ratios against the strongest baseline of this run)
#   steps       fps.py nfd_rt and torch-static at 1 and 2 sampler steps (the cost of a distilled model of this
#               architecture), each merged into $WORK/fps_steps{1,2}.json
#   pytest      pytest -m cuda, restricted to the kernels written since the last GPU run (op table rows of the
#               fused norm, RoPE, conv, attention) and the session tests (parity, PSNR, graphs, batching)
#   memcheck    compute-sanitizer memcheck: tools/gpu/memcheck_shapes.py (the new kernels at nfd-310m shapes,
#               both query tiles, D = 1024, the padded conv_out, both engines) and a short tiny session
#   racecheck   compute-sanitizer racecheck on the C++ checks and the op table's bf16 attention, norm, conv rows
#   ncu         Nsight Compute on one full-cache frame: the first $NCU_DIT_KERNELS DiT kernels and one decode
#   models      fps.py nfd_rt alone on the public models at their real shapes (random weights; $MODEL_CONFIGS,
#               default oasis-500m and waypoint-1.5-1b): the absolute figures of their issues (Oasis >= 100 FPS
#               at 10 steps with decode; Waypoint >= 240 RGB frames/s), each in $WORK/fps_<config>.json; no
#               baselines (their compiles take minutes: a later call with STEPS=models and FPS_ARGS can add them)
#   autotune    fps.py compile-static under max-autotune, only with the time that is left, merged into fps.json
#
# Each step runs under its own `timeout` within one deadline (DEADLINE seconds from the start, default 530: the
# device tool allows 600 s a command); a step that would start with under 20 s left is skipped. Output goes to
# $OUT as it happens, in at most 4 files (the device tool returns 8, 2 folders deep):
#   run.log          everything, as it happens; at most $LOG_CAP bytes of each step (the whole log is in the tar)
#   summary.json     each step: status (passed / failed / timeout / skipped), exit code, seconds, reason
#   results.tar.gz   every step's own files (logs, ops.json, sdpa.json, headline.json, ncu CSVs, ...), re-packed
#                    after each step
#   fps.json         the figure of record (rewritten as runners finish and baselines are merged in)
#
# Usage, from the repository root (on the GPU machine through the device tool, with carry [".devcarry"]):
#   NFD_RT_COMMIT=<sha> bash tools/gpu/run.sh
#   STEPS=wheels,build,baselines,autotune bash tools/gpu/run.sh          # a second call, if time is left
#   STEPS=wheels,build,models bash tools/gpu/run.sh                       # or the public models' figures
# Without a GPU (dry run: CUDA steps are skipped, the CPU steps run on `tiny`; BUILD_DIR reuses a CPU build):
#   OUT=/tmp/gpu-dry BUILD_DIR=build/dev bash tools/gpu/run.sh
#   USE_INSTALLED=1 ...  runs the installed nfd_rt (no build, python/ not put on the path): CI's dry run
# Knobs (environment): STEPS, DEADLINE (530), ARCH (90a), BUILD_DIR (build/gpu), CONFIG (nfd-310m; tiny without a
#   GPU), MODEL_CONFIGS (oasis-500m,waypoint-1.5-1b; the tiny ones without a GPU), FPS_FRAMES (30), PYTEST_ARGS,
#   FPS_ARGS (extra fps.py options), CMAKE_ARGS, NCU_DIT_KERNELS (40), LOG_CAP (1000000), PYTHON (python3),
#   NFD_RT_COMMIT (recorded where the tree has no .git), NO_GPU=1 (dry run even with a GPU), USE_INSTALLED=1,
#   WORK (build/gpu-run), NFD_RT_DRY_BREAK=<switch> (test hook: that new path is reported broken, to exercise the
#   fallback without a GPU).
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
WORK=$(cd "$WORK" && pwd)
PY="${PYTHON:-python3}"
DEADLINE="${DEADLINE:-530}"
ARCH="${ARCH:-90a}"
BUILD_DIR="${BUILD_DIR:-build/gpu}"
LOG_CAP="${LOG_CAP:-1000000}"
STEPS="${STEPS:-probe,wheels,build,op_tests,headline,ops,sdpa,baselines,steps,pytest,memcheck,racecheck,ncu,models,autotune}"
if [ "${NO_GPU:-0}" != 1 ] && nvidia-smi -L >/dev/null 2>&1; then GPU=1; DEVICE=cuda; else GPU=0; DEVICE=cpu; fi
CONFIG="${CONFIG:-$([ $GPU = 1 ] && echo nfd-310m || echo tiny)}"
MODEL_CONFIGS="${MODEL_CONFIGS:-$([ $GPU = 1 ] && echo oasis-500m,waypoint-1.5-1b || echo oasis-tiny,waypoint-tiny)}"
DTYPE=$([ $GPU = 1 ] && echo bfloat16 || echo float32)
FPS_FRAMES="${FPS_FRAMES:-30}"
if [ "${USE_INSTALLED:-0}" != 1 ]; then export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"; fi
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
  "$PY" - "$WORK/steps.tsv" "$OUT/summary.json" "$START" "$GPU" "$CONFIG" "$NFD_RT_COMMIT" "$WORK" <<'EOF'
import json, os, sys, time
tsv, out, start, gpu, config, commit, work = sys.argv[1:]
steps = []
for line in open(tsv):
    name, status, rc, seconds, reason = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(seconds), "reason": reason})
summary = {"commit": commit, "gpu": gpu == "1", "config": config, "elapsed_seconds": int(time.time() - int(start)),
           "date": time.strftime("%Y-%m-%d"), "steps": steps}
headline = os.path.join(work, "headline.json")
if os.path.exists(headline):
    h = json.load(open(headline))
    summary["headline"] = {"result": h.get("result"), "working_env": h.get("working_env"),
                           "broken": h.get("bisect", {}).get("broken")}
json.dump(summary, open(out, "w"), indent=2)
EOF
  [ -f "$OUT/fps.json" ] && cp "$OUT/fps.json" "$WORK/"
  tar -czf "$OUT/results.tar.gz.tmp" -C "$WORK" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$WORK/steps.tsv"; pack; }

# step NAME BUDGET NEEDS_GPU COMMAND: runs COMMAND (bash) under timeout min(BUDGET, time left), which it reads as
# $STEP_SECONDS; its whole output goes to $WORK/NAME.log, the first $LOG_CAP bytes of it to run.log as it happens.
step() {
  local name=$1 budget=$2 needs_gpu=$3 cmd=$4
  wanted "$name" || return 0
  if [ "$needs_gpu" = 1 ] && [ $GPU = 0 ]; then log "$name: skipped (no GPU)"; record "$name" skipped 0 0 "no GPU"; return 0; fi
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  if (( left < 20 )); then log "$name: skipped (${left}s left)"; record "$name" skipped 0 0 "deadline"; return 0; fi
  local t=$(( budget < left - 10 ? budget : left - 10 ))
  log "$name (timeout ${t}s)"
  local s=$(date +%s)
  # awk passes the first $LOG_CAP bytes to run.log and reads the rest without printing it: a reader that exits
  # early (head) would kill tee with SIGPIPE.
  STEP_SECONDS=$t timeout --kill-after=10 "$t" bash -c "$cmd" 2>&1 | tee "$WORK/$name.log" |
    awk -v cap="$LOG_CAP" '{ n += length($0) + 1; if (n <= cap) print; fflush() }' >> "$OUT/run.log"
  local rc=${PIPESTATUS[0]}
  local size
  size=$(wc -c < "$WORK/$name.log")
  (( size > LOG_CAP )) && echo "[$name: $size bytes of output, the first $LOG_CAP above; all in results.tar.gz]" >> "$OUT/run.log"
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
  if [ -f .devcarry/cudnn-headers.tgz ]; then
    rm -rf build/cudnn-headers && mkdir -p build/cudnn-headers && tar -xzf .devcarry/cudnn-headers.tgz -C build/cudnn-headers &&
    echo 'cuDNN attention headers in build/cudnn-headers'
  fi
  if [ -f .devcarry/flashinfer-data.tgz ]; then
    rm -rf build/flashinfer-data && mkdir -p build/flashinfer-data && tar -xzf .devcarry/flashinfer-data.tgz -C build/flashinfer-data &&
    echo 'FlashInfer headers in build/flashinfer-data'
  fi
"
# FlashInfer's attention is built as a peer when its headers were carried (prepare_carry.sh --flashinfer), with its
# Hopper attention for sm_90a; cuDNN's when its headers were (prepare_carry.sh's default), else where CMake finds
# them on this machine (AUTO). A build that fails with FlashInfer is redone without it (the headline first).
VENDOR_ARGS=""
FI_RETRY=""
if [ -f .devcarry/flashinfer-data.tgz ]; then
  VENDOR_ARGS="-DNFD_RT_FLASHINFER=ON -DNFD_RT_FLASHINFER_DIR=$ROOT/build/flashinfer-data"
  VENDOR_ARGS="$VENDOR_ARGS -DNFD_RT_CURAND_INCLUDE=$ROOT/build/flashinfer-data/curand/include"
  FI_RETRY=1
fi
if [ -f .devcarry/cudnn-headers.tgz ]; then
  H="$ROOT/build/cudnn-headers"
  # single-quoted inside: BUILD_CMD is parsed again by bash -c, and the list's semicolons must not end the command
  VENDOR_ARGS="$VENDOR_ARGS -DNFD_RT_CUDNN=ON '-DNFD_RT_CUDNN_INCLUDE=$H/frontend/include;$H/cudnn;$H/nvrtc'"
fi

if [ "${USE_INSTALLED:-0}" = 1 ]; then
  BUILD_CMD="$PY -c 'import nfd_rt, nfd_rt._core as c; print(\"installed nfd_rt\", nfd_rt.__version__, c.__file__)'"
elif [ $GPU = 1 ]; then
  CONFIGURE="cmake -S . -B $BUILD_DIR -G Ninja -DCMAKE_BUILD_TYPE=Release -DNFD_RT_CUDA=ON \
    -DNFD_RT_CUDA_ARCHITECTURES=$ARCH -DPython_EXECUTABLE=\$(command -v $PY) $VENDOR_ARGS ${CMAKE_ARGS:-}"
  COMPILE="cmake --build $BUILD_DIR -j\$(nproc) --target all nfd_cuda_op_tests"
  RETRY=""
  [ -n "$FI_RETRY" ] && RETRY="|| { echo 'build: FAILED with FlashInfer; building without it (NFD_RT_FLASHINFER=OFF)';
                                    $CONFIGURE -DNFD_RT_FLASHINFER=OFF && $COMPILE; }"
  BUILD_CMD="
    { $CONFIGURE && $COMPILE; } $RETRY &&
    cp $BUILD_DIR/_core*.so python/nfd_rt/ && ls -la $BUILD_DIR/_core*.so $BUILD_DIR/nfd_cuda_op_tests"
else  # dry run: a CPU build (reused from BUILD_DIR if it has one)
  BUILD_CMD="
    if ! ls $BUILD_DIR/_core*.so >/dev/null 2>&1; then
      cmake -S . -B $BUILD_DIR -G Ninja -DCMAKE_BUILD_TYPE=Release -DNFD_RT_CUDA=OFF -DPython_EXECUTABLE=\$(command -v $PY) &&
      cmake --build $BUILD_DIR -j\$(nproc) || exit 1
    fi
    cp $BUILD_DIR/_core*.so python/nfd_rt/ && echo 'CPU build (no GPU): $BUILD_DIR'"
fi
step build 300 0 "$BUILD_CMD"

step op_tests 60 1 "$BUILD_DIR/nfd_cuda_op_tests"
# FlashInfer's Hopper attention failed in the op harness, or the harness stopped inside it (a kernel that hangs; the
# harness prints each group's name first, line-buffered): leave it out of the sessions' choice from here on, before
# the headline spends time finding that out.
fi90_broke() {
  local f="$WORK/op_tests.log" last
  [ -f "$f" ] || return 1
  grep -qiE "^FAIL .*flashinfer[- ]sm90" "$f" && return 0
  grep -qE "^[0-9]+ passed, [0-9]+ failed" "$f" && return 1
  last=$(grep -v '^[[:space:]]*$' "$f" | tail -n 1)
  grep -qiE "flashinfer[- ]sm90" <<< "$last"
}
if fi90_broke; then
  export NFD_RT_FLASHINFER_SM90=off
  log "op_tests: FlashInfer's Hopper attention failed or hung there: NFD_RT_FLASHINFER_SM90=off for the rest of the run"
fi

# fps.py's common options: a full cache (fps.py warms up sink + window + 1 frames by default), this machine's
# threads, no progress lines.
FPS_COMMON="--frames $FPS_FRAMES --threads $(nproc) --no-progress ${FPS_ARGS:-}"
step headline 240 0 "$PY tools/gpu/new_paths.py headline --config $CONFIG --device $DEVICE --dtype $DTYPE \
  --out $OUT/fps.json --work $WORK --first-share ${HEADLINE_FIRST_SHARE:-0.6} \
  --seconds \$(( STEP_SECONDS > 60 ? STEP_SECONDS - 20 : STEP_SECONDS * 2 / 3 )) \
  -- --steps 4 --runners nfd_rt,eager $FPS_COMMON"
# The rest of the run uses the switches the headline found to work (none set when every new path works).
if [ -f "$WORK/working_env.sh" ]; then
  # shellcheck disable=SC1091
  . "$WORK/working_env.sh"
  log "switches for the rest of the run: $(grep '^export' "$WORK/working_env.sh" | sed 's/^export //' | tr '\n' ' ')"
fi

step ops 100 0 "$PY benchmarks/ops.py --config $CONFIG --device $DEVICE --threads \$(nproc) --samples 5 --out $WORK/ops.json --overwrite"

step sdpa 40 0 "$PY tools/gpu/sdpa_bench.py --config $CONFIG --device $DEVICE --seconds $([ $GPU = 1 ] && echo 20 || echo 2) \
  --out $WORK/sdpa.json"

# A GPU compiles the whole frame with CUDA graphs (reduce-overhead); a dry run has no time for Inductor on a CPU.
BASELINES=$([ $GPU = 1 ] && echo torch-static,compile-static || echo torch-static)
step baselines 200 0 "
  $PY benchmarks/fps.py --config $CONFIG --device $DEVICE --dtype $DTYPE --steps 4 --runners $BASELINES \
    --compile-mode reduce-overhead $FPS_COMMON --out $WORK/fps_baselines.json --overwrite &&
  if [ -f $OUT/fps.json ]; then
    $PY benchmarks/fps.py --merge $OUT/fps.json $WORK/fps_baselines.json --out $WORK/fps_merged.json --markdown &&
      mv $WORK/fps_merged.json $OUT/fps.json
  fi"

step steps 120 0 "
  for n in 1 2; do
    $PY benchmarks/fps.py --config $CONFIG --device $DEVICE --dtype $DTYPE --steps \$n --runners nfd_rt,torch-static \
      $FPS_COMMON --no-profile --out $WORK/fps_steps\$n.json --overwrite || exit 1
  done"

# -v: each test's result is logged as it ends, so a step cut off by its timeout still says which passed and failed.
# The session tests (14) before the op table (about 1100 rows); a module that did not load CUDA fails the step
# instead of skipping every test.
PYTEST_COMMON="-v -m cuda -p no:cacheprovider --tb=line --maxfail=50 -rfE"
step pytest 150 1 "
  $PY -c 'import sys, nfd_rt._core as c; sys.exit(0 if c.cuda_available() else 3)' ||
    { echo 'nfd_rt._core did not load with a CUDA device: every CUDA test would skip'; exit 3; }
  NFD_CUDA_OP_TESTS=$ROOT/$BUILD_DIR/nfd_cuda_op_tests $PY -m pytest $PYTEST_COMMON tests/runtime/test_parity_cpu.py \
    tests/runtime/test_many_worlds.py tests/runtime/test_snapshot.py tests/models/test_static_baseline.py ${PYTEST_ARGS:-}; a=\$?
  $PY -m pytest $PYTEST_COMMON tests/ops/test_ops.py \
    -k 'gated_add_layernorm_modulate or rope_qkv_split or conv2d or attention or upsample' ${PYTEST_ARGS:-}; b=\$?
  exit \$(( a || b ))"

SANITIZER="--error-exitcode 9 --print-limit 20"
step memcheck 120 1 "
  \$(tool compute-sanitizer) --tool memcheck $SANITIZER $PY tools/gpu/memcheck_shapes.py --config $CONFIG; a=\$?
  \$(tool compute-sanitizer) --tool memcheck $SANITIZER $PY tools/gpu/session_smoke.py; b=\$?
  exit \$(( a || b ))"

# racecheck slows kernels by 100x or more: the op table's small bf16 rows of each kernel family (about 65), not all.
# The harness as op_tests ran it, without the switches working_env.sh set (its checked-choice cases expect every
# path on); then the op table's rows under the run's switches, whatever the harness gave.
UNSET_NEW_PATHS=$("$PY" -c 'import sys; sys.path.insert(0, "tools/gpu"); import new_paths; print(" ".join("-u " + k for k in new_paths.NEW_PATHS))')
step racecheck 90 1 "env $UNSET_NEW_PATHS \$(tool compute-sanitizer) --tool racecheck $SANITIZER $BUILD_DIR/nfd_cuda_op_tests; a=\$?
  \$(tool compute-sanitizer) --tool racecheck $SANITIZER $PY -m pytest -q -x -m cuda -p no:cacheprovider --tb=line \
    tests/ops/test_ops.py -k 'bf16 and ((attention and 37 and not prepare) or norm or (conv2d and 13x12)) and not contract'; b=\$?
  exit \$(( a || b ))"

NCU_ARGS="--clock-control none --nvtx --nvtx-include profiled/ --section SpeedOfLight --section LaunchStats --section Occupancy --csv --page details"
step ncu 90 1 "
  NCU=\$(tool ncu)
  \$NCU $NCU_ARGS --launch-count ${NCU_DIT_KERNELS:-40} $PY tools/gpu/ncu_frame.py dit $CONFIG bfloat16 > $WORK/ncu_dit.csv; echo \"dit rc \$?\"
  \$NCU $NCU_ARGS --launch-count 200 $PY tools/gpu/ncu_frame.py vae $CONFIG bfloat16 > $WORK/ncu_vae.csv; echo \"vae rc \$?\"
  wc -l $WORK/ncu_*.csv
"

# Each config in its own fps.py (a failure of one still leaves the other's figure); the step fails if either does.
step models 180 0 "
  s=0
  for c in \$(echo $MODEL_CONFIGS | tr , ' '); do
    $PY benchmarks/fps.py --config \$c --device $DEVICE --dtype $DTYPE --skip-baselines \
      $FPS_COMMON --no-profile --out $WORK/fps_\$c.json --overwrite || s=1
  done
  exit \$s"

step autotune 300 1 "
  $PY benchmarks/fps.py --config $CONFIG --device $DEVICE --dtype $DTYPE --steps 4 --runners compile-static \
    --compile-mode max-autotune $FPS_COMMON --no-profile --out $WORK/fps_autotune.json --overwrite &&
  $PY benchmarks/fps.py --merge $OUT/fps.json $WORK/fps_autotune.json --out $WORK/fps_merged.json --markdown &&
    mv $WORK/fps_merged.json $OUT/fps.json"

pack
log "done in $(( $(date +%s) - START ))s"
tee -a "$OUT/run.log" < "$OUT/summary.json"
[ -f "$OUT/fps.json" ] && $PY benchmarks/fps.py --markdown-from "$OUT/fps.json" | tee -a "$OUT/run.log"
exit 0
