#!/usr/bin/env bash
# What the GPU machine lacks, for tools/gpu/run.sh, in .devcarry/ (ignored by git; pass carry [".devcarry"]):
#   wheels/      the pinned wheels of tools/gpu/carry-requirements.txt (nlohmann-json, scipy-openblas32,
#                nvidia-cutlass: the build needs them, the GPU image has none of them), plus any NAME==VERSION
#                given; run.sh's `wheels` step installs them offline, --no-deps
#   cudnn-headers.tgz   cuDNN attention's headers (1 MB compressed instead of 620 MB of wheels): frontend/ from
#                nvidia-cudnn-frontend (its include/ folder), cudnn/ from nvidia-cudnn-cu13, nvrtc/ from nvidia-cuda-nvrtc (cudnn-frontend
#                includes nvrtc.h); run.sh builds ops/attention_cuda_cudnn.cc with them (the library itself is the
#                GPU image's, PyTorch's libcudnn.so.9). --no-cudnn leaves them out.
#   flashinfer-data.tgz   with --flashinfer: FlashInfer's headers, its bundled CCCL and CUTLASS (cute, for its
#                Hopper attention), and cuRAND's headers (which CUTLASS's utility headers include; from
#                nvidia-curand==$CURAND_VERSION): ~8 MB compressed instead of 139 MB of wheels
#                (flashinfer-python==$FLASHINFER_VERSION); run.sh then builds with -DNFD_RT_FLASHINFER=ON, which
#                for sm_90a adds FlashInfer's Hopper attention (NFD_RT_ATTENTION=flashinfer-sm90, timed at open)
# Run here, in the repository root, before the device call:
#   bash tools/gpu/prepare_carry.sh [--flashinfer] [--no-cudnn] [more==versions ...]
# It needs only `python3 -m pip` and the package registry: no package has to be installed here (versions are
# pinned, never read from this machine's Python). The GPU machine runs Python 3.12 (the wheels above are pure
# Python or py3-none). The device tool carries at most 64 MiB: the script fails if .devcarry is larger.
# Knobs: CARRY_DIR (default .devcarry), PYTHON (default python3), FLASHINFER_VERSION (default 0.7.2.post1),
# CUDNN_FRONTEND_VERSION (1.32.0), CUDNN_VERSION (9.28.1.4), NVRTC_VERSION (13.0.88), CURAND_VERSION (10.4.5.25).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
CARRY="${CARRY_DIR:-.devcarry}"
FLASHINFER_VERSION="${FLASHINFER_VERSION:-0.7.2.post1}"
CUDNN_FRONTEND_VERSION="${CUDNN_FRONTEND_VERSION:-1.32.0}"
CUDNN_VERSION="${CUDNN_VERSION:-9.28.1.4}"
NVRTC_VERSION="${NVRTC_VERSION:-13.0.88}"
CURAND_VERSION="${CURAND_VERSION:-10.4.5.25}"
if [ "$CARRY" = .devcarry ]; then
  ignored=$(grep -cx '/.devcarry/' .gitignore || true)
  [ "$ignored" != 0 ] || echo "warning: .devcarry is not ignored by .gitignore"
fi
flashinfer=0
cudnn=1
extra=()
for a in "$@"; do
  case "$a" in
    --flashinfer) flashinfer=1 ;;
    --no-cudnn) cudnn=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "prepare_carry.sh: unknown option $a" >&2; exit 2 ;;
    *) extra+=("$a") ;;
  esac
done
mapfile -t pins < <(grep -vE '^\s*(#|$)' tools/gpu/carry-requirements.txt)
pkgs=("${pins[@]}" ${extra[@]+"${extra[@]}"})

# Python 3.12 wheels for the GPU machine, whatever this machine's Python is.
download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$@"
}
rm -rf "$CARRY/wheels"
mkdir -p "$CARRY/wheels"
echo "prepare_carry: downloading ${pkgs[*]}"
download -d "$CARRY/wheels" "${pkgs[@]}"
# One wheel per pin, or the offline install on the GPU machine would stop at a missing build requirement.
for p in "${pkgs[@]}"; do
  stem=$(echo "${p%%==*}" | tr '-' '_')
  compgen -G "$CARRY/wheels/${stem}-*.whl" >/dev/null || { echo "prepare_carry: no wheel for $p" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f "$CARRY/cudnn-headers.tgz"
if [ $cudnn = 1 ]; then
  echo "prepare_carry: cuDNN attention headers (nvidia-cudnn-frontend==$CUDNN_FRONTEND_VERSION," \
       "nvidia-cudnn-cu13==$CUDNN_VERSION, nvidia-cuda-nvrtc==$NVRTC_VERSION)"
  download -d "$tmp/cudnn-wheels" "nvidia-cudnn-frontend==$CUDNN_FRONTEND_VERSION" "nvidia-cudnn-cu13==$CUDNN_VERSION" \
    "nvidia-cuda-nvrtc==$NVRTC_VERSION"
  h="$tmp/cudnn-headers"
  mkdir -p "$h/frontend" "$h/cudnn" "$h/nvrtc"
  # frontend/include/: the frontend's headers include each other as ../include/NAME
  (cd "$h/frontend" && unzip -q "$tmp"/cudnn-wheels/nvidia_cudnn_frontend-*.whl 'include/*')
  (cd "$h/cudnn" && unzip -q -j "$tmp"/cudnn-wheels/nvidia_cudnn_cu13-*.whl 'nvidia/cudnn/include/*')
  (cd "$h/nvrtc" && unzip -q -j "$tmp"/cudnn-wheels/nvidia_cuda_nvrtc-*.whl 'nvidia/cu13/include/nvrtc.h')
  for f in frontend/include/cudnn_frontend.h cudnn/cudnn.h nvrtc/nvrtc.h; do
    [ -f "$h/$f" ] || { echo "prepare_carry: $f missing from the downloaded wheels" >&2; exit 1; }
  done
  tar -czf "$CARRY/cudnn-headers.tgz" -C "$h" frontend cudnn nvrtc
fi

if [ $flashinfer = 1 ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp/fi" "flashinfer-python==$FLASHINFER_VERSION"
  (cd "$tmp/fi" && unzip -q ./*.whl 'flashinfer/data/include/*' 'flashinfer/data/cccl/*' \
     'flashinfer/data/cutlass/include/*' 'flashinfer/data/cutlass/tools/util/include/*')
  data="$tmp/fi/flashinfer/data"
  download -d "$tmp/curand" "nvidia-curand==$CURAND_VERSION"
  (cd "$tmp/curand" && unzip -q ./*.whl 'nvidia/cu13/include/*')
  mkdir -p "$data/curand" && cp -r "$tmp/curand/nvidia/cu13/include" "$data/curand/include"
  for f in include/flashinfer/attention/hopper/prefill_sm90.cuh cutlass/include/cute/tensor.hpp \
           cutlass/tools/util/include/cutlass/util/command_line.h curand/include/curand.h; do
    [ -f "$data/$f" ] || { echo "prepare_carry: $f missing from the downloaded wheels" >&2; exit 1; }
  done
  tar -czf "$CARRY/flashinfer-data.tgz" -C "$data" include cccl/cub cccl/libcudacxx/include cccl/thrust \
    cutlass/include cutlass/tools/util/include curand/include
fi
ls -la "$CARRY" "$CARRY/wheels"
size=$(du -sm "$CARRY" | cut -f1)
echo "prepare_carry: $CARRY is ${size} MiB"
if (( size >= 60 )); then
  echo "prepare_carry: $CARRY is over the device tool's 64 MiB carry limit (with the tree)" >&2
  exit 1
fi
