"""Loads the compiled extension `nfd_rt._core` with a clear message when it is missing."""

from __future__ import annotations

import glob
import importlib.util
import os

# The NVIDIA libraries the CUDA backend opens at run time (csrc/ops/linear_cuda_cublaslt.cu,
# csrc/ops/attention_cuda_cudnn.cc), where pip installs them: the variable each loader reads, and the file under
# any `nvidia` package folder on sys.path.
_VENDOR_LIBS = {"NFD_RT_CUBLASLT_LIB": ("cu13/lib/libcublasLt.so.13", "cublas/lib/libcublasLt.so.13"),
                "NFD_RT_CUDNN_LIB": ("cudnn/lib/libcudnn.so.9",)}


def _point_at_vendor_libs() -> None:
    """Tells the C++ loaders where pip put cuBLASLt and cuDNN (any site-packages folder of this Python, e.g.
    the ones PyTorch installed), unless the variables are set already; the loaders also search beside the
    binary and the loader's path."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return
    roots = list(spec.submodule_search_locations or []) if spec else []
    for var, rels in _VENDOR_LIBS.items():
        if os.environ.get(var):
            continue
        for root in roots:
            hits = [p for rel in rels for p in glob.glob(os.path.join(root, rel))]
            if hits:
                os.environ[var] = hits[0]
                break


_point_at_vendor_libs()  # at import: before anything loads _core and, through it, the CUDA loaders


def core():
    try:
        from . import _core
    except ImportError as e:
        raise ImportError(
            "nfd_rt's compiled extension (nfd_rt._core) is missing or failed to load: "
            f"{e}. Install the package with `pip install .` (builds the C++ runtime), or for a development build "
            "run `cmake -S . -B build/dev -G Ninja && cmake --build build/dev` and copy build/dev/_core*.so into "
            "python/nfd_rt/."
        ) from e
    return _core
