"""Converters: a publisher's checkpoint files -> one `.nfd` file, one module per upstream format.

    nfd_rt.convert.oasis.convert(dit_path, vae_path, out)     Oasis-500M (etched-ai/open-oasis)
    nfd-rt convert oasis --dit oasis500m.safetensors --vae vit-l-20.safetensors -o oasis500m.nfd

Every converter checks each tensor's name and shape before writing anything and names the first problem; none
touches the network. Converters need PyTorch (the `torch` extra) to read `.pt` files and bfloat16 tensors.
"""

ARCHITECTURES = ("oasis",)

__all__ = ["ARCHITECTURES", "oasis"]


def __getattr__(name):  # lazy: `nfd_rt.convert.oasis` after `import nfd_rt`, without importing torch up front
    import importlib

    if name in ARCHITECTURES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'nfd_rt.convert' has no attribute {name!r}")
