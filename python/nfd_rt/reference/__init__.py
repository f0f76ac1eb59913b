"""PyTorch reference implementation (requires the `torch` extra): the parity oracle for every backend."""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("nfd_rt.reference needs PyTorch: pip install 'nfd_rt[torch]'") from e

from .model import NFDModel
from .oasis import OasisModel, OasisReferenceSession
from .session import KVCache, ReferenceSession

__all__ = ["NFDModel", "ReferenceSession", "KVCache", "OasisModel", "OasisReferenceSession"]
