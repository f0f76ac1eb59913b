"""`.nfd` file I/O: save an `NFDModel` (or an `OasisModel`), load it back (bit-exact), read a file's header without
torch, write tensors (at once or streamed), a random model, a copy with another schedule. The public names are
also in `nfd_rt.export` (the DESIGN's API: `nfd_rt.export.save(model, path)`).

A `.nfd` file is a safetensors file whose `__metadata__` holds `nfd_format_version` and `config` (JSON of
`NFDConfig`, or of `OasisConfig` with `"architecture": "oasis"`); tensor names are the model's state_dict names,
stored as little-endian float32. See docs/file-format.md.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from . import configs
from .configs import ModelConfig, NFDConfig

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024


try:  # one class for the C++ loader's errors and this module's: the extension's, when it is built
    from ._core import NFDFormatError
except ImportError:  # a checkout without the compiled extension: reading headers needs no C++

    class NFDFormatError(ValueError):
        """A file is not a valid .nfd file; the message names the first problem found."""


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], ModelConfig]:
    """Parse and check the safetensors header of `path`. Returns (tensor table, config): an NFDConfig, or an
    OasisConfig for a file whose config says `"architecture": "oasis"`. Needs no torch."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise NFDFormatError(f"{path}: file is {size} bytes, too short for a safetensors header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:  # e.g. a text file renamed .nfd: say what it is not
                raise NFDFormatError(f"{path}: not a .nfd (safetensors) file: its first 8 bytes give a header "
                                     f"length of {n}, over the limit of {MAX_HEADER_BYTES} bytes")
            if 8 + n > size:
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
        cfg = configs.from_json(meta["config"])
    except KeyError:
        raise NFDFormatError(f"{path}: metadata has no config") from None
    except (ValueError, TypeError) as e:
        raise NFDFormatError(f"{path}: bad config: {e}") from None
    return header, cfg


def save(model, path: str | os.PathLike) -> None:
    """Write `model` (an NFDModel or an OasisModel) to `path` as a .nfd file (float32 weights).

    Written by `write_nfd` (sorted tensors, fixed metadata order), so the same weights always give the same
    bytes; safetensors' own writer orders the metadata differently from run to run.
    """
    import torch

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in model.state_dict().items()}
    write_nfd(tensors, model.cfg, path)


def load(path: str | os.PathLike):
    """Load a .nfd file into a new NFDModel (an OasisModel or a WaypointModel for those architectures' files),
    checking every tensor's name, dtype and shape."""
    table, cfg = read_header(path)
    arch = getattr(cfg, "architecture", "nfd")
    if arch == "waypoint":
        from .reference.waypoint import WaypointModel as Model
    elif arch == "oasis":
        from .reference.oasis import OasisModel as Model
    else:
        from .reference.model import NFDModel as Model
    return load_into(Model(cfg, init_seed=None), table, path)


def load_into(model, table: dict, path: str | os.PathLike):
    """The tensors of the .nfd file `path` (its header's tensor table: read_header) into `model`, a fresh model of
    the file's config; every tensor's name, dtype and shape is checked against the model first."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
        raise NFDFormatError(f"{path}: unexpected tensor {extra[0]!r} (not part of a {model.cfg.name} model)")
    try:
        tensors = load_file(os.fspath(path))
    except (SafetensorError, OSError) as e:
        raise NFDFormatError(f"{path}: cannot read tensor data: {e}") from None
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model.eval()


def write_nfd(tensors: dict, cfg: ModelConfig, path: str | os.PathLike) -> None:
    """Write numpy float32 arrays as a .nfd file (pure Python, no torch): the safetensors layout by hand.

    A value may also be a lazy array-like (a `shape` attribute and `__array__`): each is materialised in its turn
    (write_nfd_stream), so a converter holds one tensor at a time."""
    write_nfd_stream({name: t.shape for name, t in tensors.items()}, tensors.__getitem__, cfg, path)


def write_nfd_stream(shapes: dict, produce, cfg: ModelConfig, path: str | os.PathLike) -> None:
    """Write a .nfd file one tensor at a time: `shapes` maps every name to its shape (the header is written
    first), `produce(name)` returns that tensor's values (anything numpy converts to float32) when its turn comes.
    The same bytes as `write_nfd` for the same tensors; peak memory is one tensor, whatever the model's size."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"nfd_format_version": str(FORMAT_VERSION), "config": cfg.to_json()}}
    offset, order = 0, sorted(shapes)
    for name in order:
        shape = [int(d) for d in shapes[name]]
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned, as safetensors does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            a = np.ascontiguousarray(produce(name), dtype="<f4")
            if list(a.shape) != header[name]["shape"]:
                raise ValueError(f"tensor {name!r} has shape {list(a.shape)}, announced {header[name]['shape']}")
            f.write(a.tobytes())


def uniform_schedule(steps: int) -> tuple[float, ...]:
    """Euler times of an evenly spaced `steps`-step schedule from t=1: 4 -> (1.0, 0.75, 0.5, 0.25)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return tuple(1.0 - k / steps for k in range(int(steps)))


def with_schedule(src: str | os.PathLike, dst: str | os.PathLike, schedule) -> str:
    """Copy the .nfd file `src` to `dst` with another sampling schedule in its config (same weights, bytes copied
    as they are). The runtime samples whatever schedule the file stores, so this runs a model at another number
    of steps, e.g. a 4-step model at 1 step to compare with a distilled one. Returns `dst`. No torch."""
    table, cfg = read_header(src)
    if not isinstance(cfg, NFDConfig):
        raise ValueError(f"{src}: with_schedule rewrites an NFD flow-matching schedule; this is an "
                         f"{cfg.architecture} model (its DDIM levels are the config's `timesteps`)")
    cfg = cfg.replace(schedule=tuple(float(t) for t in schedule))  # validated by NFDConfig
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        data = f.read()
    header: dict[str, Any] = {"__metadata__": {"nfd_format_version": str(FORMAT_VERSION), "config": cfg.to_json()}}
    header.update({name: table[name] for name in sorted(table)})
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(data)
    return os.fspath(dst)


def save_random(cfg: NFDConfig, path: str | os.PathLike, seed: int = 0) -> None:
    """A randomly initialised model as a .nfd file, without torch (for demos and benchmarks).

    Tensor names and shapes come from the C++ runtime's `expected_tensors`; the values follow the spirit of
    NFDModel.init_random (normal / sqrt(fan_in), small biases, GroupNorm near identity), not its exact draws.
    """
    import numpy as np

    from ._native import core

    _core = core()
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in _core.expected_tensors(cfg.to_json()):
        shape = tuple(shape)
        if len(shape) == 1 and "norm" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            tensors[name] = base + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif len(shape) == 1:
            tensors[name] = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in, dtype=np.float32)
    write_nfd(tensors, cfg, path)
