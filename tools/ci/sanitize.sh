#!/usr/bin/env bash
# Build nfd_rt with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only) in build/asan and run the loader,
# C ABI, session API and CPU op tests plus the C example under it; optionally a short atheris fuzz run
# (FUZZ_RUNS=N). Built without multi-versioning, so the op tests also run the baseline x86-64 copies of the CPU
# loops (the release build picks the AVX-512 or AVX2 copy wherever the CPU has it).
#
#   tools/ci/sanitize.sh                 # from the repository root
#   FUZZ_RUNS=20000 tools/ci/sanitize.sh
#   PYTEST_ARGS="--deselect tests/x.py::test_y" tools/ci/sanitize.sh
#   BUILD_ONLY=1 tools/ci/sanitize.sh    # the build alone (.ci/run starts it in the background beside the tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BUILD=${BUILD:-build/asan}
PY=${PYTHON:-$(command -v python3 || command -v python)}
JOBS=${JOBS:-2}

# No C++ test programs (NFD_RT_BUILD_TESTS=OFF): only the pytest files below run under the sanitizers. -O1 -g1
# (ASan's advice: -O1 keeps its reports exact; line tables are what stack traces need): half the build time of
# -O2 -g, and the tests ran no slower (50 s against 57 s).
cmake -S . -B "$BUILD" -G Ninja -DNFD_RT_SANITIZE=ON -DNFD_RT_MULTIVERSION=OFF -DNFD_RT_CUDA=OFF -DNFD_RT_BLAS=WHEEL -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" -DNFD_RT_BUILD_TESTS=OFF -DPython_EXECUTABLE="$PY"
cmake --build "$BUILD" -j"$JOBS"
if [ "${BUILD_ONLY:-0}" = 1 ]; then echo "sanitize: built $BUILD"; exit 0; fi

# A private copy of the Python package with the sanitized extension (never touches python/nfd_rt).
PKG="$BUILD/py"
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r python/nfd_rt "$PKG/"
rm -f "$PKG"/nfd_rt/_core*.so
cp "$BUILD"/_core*.so "$PKG/nfd_rt/"

# Python itself is not instrumented: libasan must be loaded first, and libstdc++ with it (ASan's __cxa_throw
# interceptor resolves the real one at start-up; without it every C++ throw aborts). No leak checks for Python.
LIBASAN="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export NFD_RT_LIB="$ROOT/$BUILD/libnfd_rt.so"
export NFD_RT_BUILD_DIR="$ROOT/$BUILD"

echo "== pytest under ASan/UBSan"
# The allocation-failure test is left out: ASan's allocator aborts on a failed allocation instead of returning NULL.
LD_PRELOAD="$LIBASAN" PYTHONPATH="$ROOT/$PKG" "$PY" -m pytest -q -p no:cacheprovider \
  tests/runtime/test_loader.py tests/api/test_session_api.py tests/api/test_c_api.py tests/ops/test_ops.py \
  tests/runtime/test_determinism.py tests/runtime/test_memory.py \
  --deselect tests/runtime/test_memory.py::test_allocation_failure_is_memory_error ${PYTEST_ARGS:-}

echo "== C example under ASan/UBSan (leak checking on)"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PYTHONPATH="$ROOT/$PKG" LD_PRELOAD="$LIBASAN" "$PY" - "$TMP/micro.nfd" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from nfd_testfiles import MICRO, random_nfd
open(sys.argv[1], "wb").write(random_nfd(MICRO))
PYEOF
cmake --install "$BUILD" --prefix "$TMP/prefix" > /dev/null
cmake -S examples/c -B "$TMP/example" -G Ninja -Dnfd_rt_DIR="$TMP/prefix/lib/cmake/nfd_rt" \
      -DCMAKE_C_FLAGS="-fsanitize=address,undefined" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" > /dev/null
cmake --build "$TMP/example" > /dev/null
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$TMP/example/nfd_example" "$TMP/micro.nfd" "$TMP" 4
head -c 40 "$TMP/micro.nfd" > "$TMP/bad.nfd"
if ASAN_OPTIONS=detect_leaks=1 "$TMP/example/nfd_example" "$TMP/bad.nfd" "$TMP" 1; then
  echo "the example accepted a truncated file" >&2; exit 1
fi

if [[ "${FUZZ_RUNS:-0}" -gt 0 ]]; then
  echo "== atheris fuzzing of the loader ($FUZZ_RUNS runs)"
  "$PY" -m pip install --quiet atheris
  LD_PRELOAD="$LIBASAN" PYTHONPATH="$ROOT/$PKG" "$PY" tests/fuzz/fuzz_loader.py -atheris_runs="$FUZZ_RUNS" ${FUZZ_SECONDS:+-max_total_time=$FUZZ_SECONDS}
fi
echo "sanitize: OK"
