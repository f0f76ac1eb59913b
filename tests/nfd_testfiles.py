"""Helpers for the loader / API tests: build .nfd files (valid or broken) with numpy alone, find the C library."""

from __future__ import annotations

import glob
import json
import math
import os
import struct

import numpy as np

from nfd_rt.configs import NFDConfig, VAEConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra) -> dict:
    """The environment for a child `python`/`nfd-rt`: it imports the same nfd_rt as these tests (the installed
    package under CI, the source tree with a dev build here), and finds this interpreter's scripts first."""
    import sys

    import nfd_rt

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nfd_rt.__file__)))
    return dict(os.environ, PYTHONPATH=package_parent + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **extra)

# A very small valid config (a few thousand parameters): quick to write, mutate and fuzz.
MICRO = NFDConfig(
    name="micro", frame_height=16, frame_width=16, latent_channels=2, patch_size=2, hidden_size=16, depth=1,
    num_heads=2, rope_dims=(2, 2, 4), time_embed_dim=8, action_dim=3, window=2, sink_frames=1,
    vae=VAEConfig(channels=(4, 4), num_res_blocks=1, norm_groups=2),
)


def split(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file -> (header dict including __metadata__, data section)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    """(header, data section) -> safetensors bytes, header padded with spaces to a multiple of 8 like safetensors."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def random_nfd(cfg: NFDConfig, seed: int = 0) -> bytes:
    """A valid .nfd file for `cfg` with random weights (fan-in scaled like NFDModel.init_random), no torch."""
    from nfd_rt import _core

    rng = np.random.default_rng(seed)
    header: dict = {"__metadata__": {"nfd_format_version": "1", "config": cfg.to_json()}}
    chunks, offset = [], 0
    for name, shape in _core.expected_tensors(cfg.to_json()):
        if len(shape) == 1:
            base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            a = base + 0.05 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / math.sqrt(int(np.prod(shape[1:])))
        b = a.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    return join(header, b"".join(chunks))


def find_c_library() -> str | None:
    """libnfd_rt.so: $NFD_RT_LIB, else build/dev's, else the newest non-sanitizer one under build/, else the wheel's.

    (A sanitizer build cannot be loaded without LD_PRELOAD of libasan: tools/ci/sanitize.sh sets NFD_RT_LIB.)
    """
    if os.environ.get("NFD_RT_LIB"):
        return os.environ["NFD_RT_LIB"]
    dev = os.path.join(REPO, "build", "dev", "libnfd_rt.so")
    if os.path.exists(dev):
        return dev
    found = [p for p in glob.glob(os.path.join(REPO, "build", "*", "libnfd_rt.so")) if "san" not in p.split(os.sep)[-2]]
    if found:
        return max(found, key=os.path.getmtime)
    try:
        import nfd_rt

        path = os.path.join(nfd_rt.lib_dir(), "libnfd_rt.so")
        return path if os.path.exists(path) else None
    except (FileNotFoundError, ImportError):
        return None


def tiny_config(**changes):
    """The `tiny` config (window 8, 1 sink frame), with `changes`."""
    import nfd_rt

    return nfd_rt.configs.get("tiny").replace(**changes)


def random_actions(count, dim, seed=0):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)


def snippet(doc: str, name: str) -> str:
    """The bash block of docs/<doc> marked `<!-- test: name -->` (the docs' commands, run by tests as written)."""
    import re

    text = open(os.path.join(REPO, "docs", doc)).read()
    m = re.search(r"<!-- test: " + re.escape(name) + r" -->\s*```bash\n(.*?)```", text, re.S)
    assert m, f"docs/{doc} has no bash block marked <!-- test: {name} -->"
    return m.group(1)
