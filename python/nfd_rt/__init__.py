"""nfd_rt: a runtime for Next-Frame-Diffusion video world models.

`nfd_rt.Session` runs a `.nfd` file with the C++ runtime; `nfd_rt.reference` (needs torch) holds the PyTorch
reference model, `ReferenceSession` and the exporter's model class.
"""

from . import configs, rng

__version__ = "0.1.0"

__all__ = ["configs", "rng", "Session", "export", "__version__"]


def __getattr__(name):  # lazy: `export` needs torch, `Session` needs the compiled core
    import importlib

    if name == "export":
        return importlib.import_module(".export", __name__)
    if name == "Session":
        return importlib.import_module(".session", __name__).Session
    raise AttributeError(f"module 'nfd_rt' has no attribute {name!r}")
