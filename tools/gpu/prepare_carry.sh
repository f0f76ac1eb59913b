#!/usr/bin/env bash
# What the GPU machine lacks, for tools/gpu/run.sh, in .devcarry/ (ignored by git; pass carry [".devcarry"]):
#   wheels/      nlohmann-json, scipy-openblas32 and nvidia-cutlass (the build needs them; the GPU image has none
#                of them), plus any NAME==VERSION given; run.sh's `wheels` step installs them offline, --no-deps
#   flashinfer-data.tgz   with --flashinfer: FlashInfer's headers and its bundled CCCL (3.5 MB compressed instead
#                of a 62 MB wheel); run.sh then builds with -DNFD_RT_FLASHINFER=ON
# Run here, in the repository root, before the device call:
#   bash tools/gpu/prepare_carry.sh [--flashinfer] [more==versions ...]
# Versions are those installed for $PYTHON here (the ones this build was checked with); the GPU machine runs
# Python 3.12 (the wheels above are pure Python or py3-none). The device tool carries at most 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.devcarry/' .gitignore || echo "warning: .devcarry is not ignored by .gitignore"
PY="${PYTHON:-python3}"
flashinfer=0
extra=()
for a in "$@"; do
  if [ "$a" = --flashinfer ]; then flashinfer=1; else extra+=("$a"); fi
done
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .devcarry/wheels
pkgs=("nlohmann-json==$(version nlohmann-json)" "scipy-openblas32==$(version scipy-openblas32)"
      "nvidia-cutlass==$(version nvidia-cutlass)" ${extra[@]+"${extra[@]}"})
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .devcarry/wheels "${pkgs[@]}"

if [ $flashinfer = 1 ]; then
  data=$("$PY" -c "import importlib.util as u, os; s = u.find_spec('flashinfer'); print(os.path.join(s.submodule_search_locations[0], 'data') if s else '')")
  tmp=""
  if [ -z "$data" ] || [ ! -f "$data/include/flashinfer/attention/prefill.cuh" ]; then  # not installed: its wheel
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "flashinfer-python${FLASHINFER_VERSION:+==$FLASHINFER_VERSION}"
    (cd "$tmp" && unzip -q ./*.whl 'flashinfer/data/include/*' 'flashinfer/data/cccl/*')
    data="$tmp/flashinfer/data"
  fi
  tar -czf .devcarry/flashinfer-data.tgz -C "$data" include cccl/cub cccl/libcudacxx/include cccl/thrust
  [ -n "$tmp" ] && rm -rf "$tmp"
fi
ls -la .devcarry .devcarry/wheels
du -sh .devcarry
