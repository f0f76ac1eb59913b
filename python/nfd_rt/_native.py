"""Loads the compiled extension `nfd_rt._core` with a clear message when it is missing."""

from __future__ import annotations


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
