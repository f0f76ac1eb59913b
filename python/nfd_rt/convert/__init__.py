"""Converters: a publisher's checkpoint files (as they ship them) -> one `.nfd` file, one module per upstream
format, no network.

    nfd_rt.convert.oasis.convert(dit_path, vae_path, out)     Oasis-500M (etched-ai/open-oasis)
    nfd-rt convert oasis --dit oasis500m.safetensors --vae vit-l-20.safetensors -o oasis500m.nfd
    nfd_rt.convert.waypoint.convert(folder, out)              Waypoint-1.5 (Overworld)
    nfd-rt convert waypoint DIR -o waypoint.nfd

Every converter checks each tensor's name and shape before writing anything and names the first problem.
Converters need PyTorch (the `torch` extra) to read `.pt` files and bfloat16 tensors; Waypoint's also PyYAML.
"""

ARCHITECTURES = ("oasis", "waypoint")

__all__ = ["ARCHITECTURES", *ARCHITECTURES]


def __getattr__(name):  # lazy: `nfd_rt.convert.oasis` after `import nfd_rt`, without importing torch up front
    import importlib

    if name in ARCHITECTURES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'nfd_rt.convert' has no attribute {name!r}")
