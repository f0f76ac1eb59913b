"""nfd_rt: a runtime for Next-Frame-Diffusion video world models.

`nfd_rt.Session` runs a `.nfd` file with the C++ runtime; `nfd_rt.reference` (needs torch) holds the PyTorch
reference models, `ReferenceSession` and the exporter's model class; `nfd_rt.convert` turns published checkpoints
(Oasis-500M) into `.nfd` files; `nfd_rt.gym` (needs gymnasium) the Gymnasium environments.
"""

from . import _native, configs, rng  # noqa: F401 (_native: points the CUDA loaders at pip's NVIDIA libraries)

__all__ = ["configs", "rng", "Model", "Session", "step_batch", "step_latent_batch", "snapshot_info", "resolve_dtype", "export",
           "convert", "__version__", "include_dir", "cmake_dir", "lib_dir"]


def _installed_dir(*parts: str) -> str:
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), *parts)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path} does not exist: the C library, header and CMake package are installed with the wheel "
            "(`pip install .`), not present in a source checkout"
        )
    return path


def include_dir() -> str:
    """Folder holding nfd_rt/nfd_rt.h (the C ABI), for compiling C/C++ programs against the runtime."""
    return _installed_dir("include")


def lib_dir() -> str:
    """Folder holding libnfd_rt.so."""
    return _installed_dir("lib")


def cmake_dir() -> str:
    """Folder of nfd_rtConfig.cmake: `cmake -Dnfd_rt_DIR=$(python -c 'import nfd_rt; print(nfd_rt.cmake_dir())')`."""
    return _installed_dir("lib", "cmake", "nfd_rt")


def __getattr__(name):  # lazy: `export` needs torch, `Session` needs the compiled core
    import importlib

    if name in ("export", "convert", "gym"):  # `gym` needs gymnasium (the `gym` extra)
        return importlib.import_module("." + name, __name__)
    if name in ("Session", "Model", "step_batch", "step_latent_batch", "snapshot_info", "resolve_dtype"):
        return getattr(importlib.import_module(".session", __name__), name)
    if name == "__version__":  # one source: project(VERSION) in CMakeLists.txt, compiled into the runtime
        try:
            return importlib.import_module("._core", __name__).version()
        except ImportError:
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version("nfd_rt")
            except PackageNotFoundError:
                return "unknown"
    raise AttributeError(f"module 'nfd_rt' has no attribute {name!r}")
