#!/usr/bin/env bash
# Wheels the GPU machine lacks, for tools/gpu/run.sh (its `wheels` step installs them with --no-deps, offline):
# the build needs nlohmann-json, scipy-openblas32 and nvidia-cutlass, which that machine's image does not have.
# Run here, in the repository root, before the device call; then pass carry [".devcarry"] to it.
#   bash tools/gpu/prepare_carry.sh [more==versions ...]     (e.g. flashinfer-python==0.7.2.post1)
# Versions are those installed here (the ones this build was checked with); the GPU machine runs Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.devcarry/' .gitignore || echo "warning: .devcarry is not ignored by .gitignore"
PY="${PYTHON:-python3}"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .devcarry/wheels
pkgs=("nlohmann-json==$(version nlohmann-json)" "scipy-openblas32==$(version scipy-openblas32)"
      "nvidia-cutlass==$(version nvidia-cutlass)" "$@")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .devcarry/wheels "${pkgs[@]}"
ls -la .devcarry/wheels
du -sh .devcarry
