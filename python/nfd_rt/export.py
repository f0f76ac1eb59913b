"""`.nfd` files: save an `NFDModel`, load it back (bit-exact), read a file's header without torch.

A `.nfd` file is a safetensors file whose `__metadata__` holds `nfd_format_version` and `config` (JSON of
`NFDConfig`); tensor names are the model's state_dict names, stored as little-endian float32.
See docs/file-format.md.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from .configs import NFDConfig

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024


class NFDFormatError(ValueError):
    """A file is not a valid .nfd file; the message names the first problem found."""


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], NFDConfig]:
    """Parse and check the safetensors header of `path`. Returns (tensor table, config). Needs no torch."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise NFDFormatError(f"{path}: file is {size} bytes, too short for a safetensors header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise NFDFormatError(f"{path}: header length {n} runs past the end of the {size}-byte file")
            raw = f.read(n)
    except OSError as e:
        raise NFDFormatError(f"{path}: cannot read: {e.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NFDFormatError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise NFDFormatError(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or "nfd_format_version" not in meta:
        raise NFDFormatError(f"{path}: not a .nfd file (no nfd_format_version in the safetensors metadata)")
    version = meta["nfd_format_version"]
    if version != str(FORMAT_VERSION):
        raise NFDFormatError(f"{path}: unknown nfd_format_version {version!r}; this nfd_rt reads {FORMAT_VERSION}")
    try:
        cfg = NFDConfig.from_json(meta["config"])
    except KeyError:
        raise NFDFormatError(f"{path}: metadata has no config") from None
    except (ValueError, TypeError) as e:
        raise NFDFormatError(f"{path}: bad config: {e}") from None
    return header, cfg


def save(model, path: str | os.PathLike) -> None:
    """Write `model` (an NFDModel) to `path` as a .nfd file (float32 weights)."""
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {"nfd_format_version": str(FORMAT_VERSION), "config": model.cfg.to_json()}
    save_file(tensors, os.fspath(path), metadata=meta)


def load(path: str | os.PathLike):
    """Load a .nfd file into a new NFDModel, checking every tensor's name, dtype and shape."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .reference.model import NFDModel

    table, cfg = read_header(path)
    model = NFDModel(cfg, init_seed=None)
    expected = model.state_dict()
    for name, ref in expected.items():
        entry = table.get(name)
        if entry is None:
            raise NFDFormatError(f"{path}: missing tensor {name!r}")
        if entry.get("dtype") != "F32":
            raise NFDFormatError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')}, expected F32")
        if list(entry.get("shape", [])) != list(ref.shape):
            raise NFDFormatError(f"{path}: tensor {name!r} has shape {entry.get('shape')}, expected {list(ref.shape)}")
    extra = sorted(set(table) - set(expected))
    if extra:
        raise NFDFormatError(f"{path}: unexpected tensor {extra[0]!r} (not part of a {cfg.name} model)")
    try:
        tensors = load_file(os.fspath(path))
    except (SafetensorError, OSError) as e:
        raise NFDFormatError(f"{path}: cannot read tensor data: {e}") from None
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model.eval()
