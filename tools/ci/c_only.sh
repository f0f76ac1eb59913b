#!/usr/bin/env bash
# The C library alone, built the way a game engine would: Debian's CMake, OpenBLAS and nlohmann-json, no Python
# packages (the configure runs with a PATH that has only the system's python3, which has none of them), then
# CTest and the C example against the installed library.
#
#   tools/ci/c_only.sh            # from the repository root; installs the Debian packages when run as root
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BUILD=${BUILD:-build/c-only}
PY=${PYTHON:-$(command -v python3)}
PKGS="cmake make g++ libopenblas-dev nlohmann-json3-dev"
if ! dpkg -s $PKGS > /dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "c_only: needs the Debian packages $PKGS (run as root to install them)"; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PKGS > /dev/null
fi
rm -rf "$BUILD"
# No virtual environment, no pip packages: only /usr/bin and /bin on the PATH. The hot loops once, not in three
# x86-64 levels (NFD_RT_MULTIVERSION=OFF: 100 s of build instead of 150; the multi-versioned build is the pip
# build's, tested before this step).
env -i HOME="$HOME" PATH=/usr/bin:/bin /usr/bin/cmake -S . -B "$BUILD" -DNFD_RT_PYTHON=OFF -DNFD_RT_CUDA=OFF \
  -DNFD_RT_BLAS=SYSTEM -DNFD_RT_MULTIVERSION=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD.log" 2>&1 ||
  { cat "$BUILD.log"; exit 1; }
grep "nfd_rt:" "$BUILD.log"
env -i HOME="$HOME" PATH=/usr/bin:/bin /usr/bin/cmake --build "$BUILD" -j"${JOBS:-2}" > /dev/null
(cd "$BUILD" && env -i PATH=/usr/bin:/bin /usr/bin/ctest --output-on-failure)
env -i HOME="$HOME" PATH=/usr/bin:/bin /usr/bin/cmake --install "$BUILD" --prefix "$BUILD/prefix" > /dev/null
env -i HOME="$HOME" PATH=/usr/bin:/bin /usr/bin/cmake -S examples/c -B "$BUILD/example" \
  -Dnfd_rt_DIR="$ROOT/$BUILD/prefix/lib/cmake/nfd_rt" > /dev/null
env -i HOME="$HOME" PATH=/usr/bin:/bin /usr/bin/cmake --build "$BUILD/example" > /dev/null
# A small model file, written with the test helpers (numpy only), for the example to run.
"$PY" - "$BUILD/micro.nfd" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from nfd_testfiles import MICRO, random_nfd
open(sys.argv[1], "wb").write(random_nfd(MICRO))
PYEOF
mkdir -p "$BUILD/frames"
env -i PATH=/usr/bin:/bin "$BUILD/example/nfd_example" "$BUILD/micro.nfd" "$BUILD/frames" 4
# ldd's output is captured first: `ldd ... | grep -q` fails at random under pipefail (grep exits at the first
# match and ldd may then die of SIGPIPE).
libs=$(ldd "$BUILD/prefix/lib/libnfd_rt.so")
grep -q "libopenblas" <<< "$libs" || { echo "c_only: not linked to the system OpenBLAS"; exit 1; }
echo "c_only: OK"
