#!/usr/bin/env bash
# Build the CPU kernels for one x86-64 level only (default x86-64-v3: AVX2 + FMA) and run the CPU op and parity
# tests on it. The release build is multi-versioned and its loader picks the best copy the CPU runs: on an
# AVX-512 machine (such as CI's) the AVX2 copy, which most users' CPUs run, would otherwise never execute.
#
#   tools/ci/cpu_level.sh                # from the repository root
#   LEVEL=x86-64-v4 tools/ci/cpu_level.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
LEVEL=${LEVEL:-x86-64-v3}
BUILD=${BUILD:-build/cpu-$LEVEL}
PY=${PYTHON:-$(command -v python3 || command -v python)}
if ! grep -q -w "$( [ "$LEVEL" = x86-64-v4 ] && echo avx512f || echo avx2 )" /proc/cpuinfo; then
  echo "cpu_level: this CPU cannot run $LEVEL code; skipped"; exit 0
fi
# On a CPU with AVX2 and no AVX-512 the release build's loader already runs its x86-64-v3 copy (nfd-rt env: "CPU
# kernels x86-64-v3"), so the main test run covered it: building and testing it again would only cost CI minutes.
if [ "$LEVEL" = x86-64-v3 ] && ! grep -q -w avx512f /proc/cpuinfo && [ -z "${CPU_LEVEL_ALWAYS:-}" ]; then
  echo "cpu_level: no AVX-512 here, so the main test run already ran the x86-64-v3 copy; skipped" \
       "(CPU_LEVEL_ALWAYS=1 runs it anyway)"
  exit 0
fi
cmake -S . -B "$BUILD" -G Ninja -DNFD_RT_CPU_LEVEL="$LEVEL" -DNFD_RT_CUDA=OFF -DNFD_RT_BLAS=WHEEL -DCMAKE_BUILD_TYPE=Release \
      -DPython_EXECUTABLE="$PY" > /dev/null
cmake --build "$BUILD" -j"${JOBS:-2}" --target _core
if [ "$LEVEL" = x86-64-v3 ] && command -v objdump > /dev/null; then  # really no AVX-512 in this build
  n=$(objdump -d "$BUILD"/_core*.so | grep -c zmm || true)
  if [ "$n" != 0 ]; then echo "cpu_level: $n AVX-512 instructions in an x86-64-v3 build" >&2; exit 1; fi
fi
PKG="$BUILD/py"
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r python/nfd_rt "$PKG/"
rm -f "$PKG"/nfd_rt/_core*.so
cp "$BUILD"/_core*.so "$PKG/nfd_rt/"
PYTHONPATH="$ROOT/$PKG" "$PY" -m pytest -q -p no:cacheprovider tests/ops/test_ops.py tests/runtime/test_parity_cpu.py \
  tests/runtime/test_determinism.py
echo "cpu_level $LEVEL: OK"
