"""Exporting models: to a `.nfd` file for nfd_rt (`save`, from a training checkpoint `from_checkpoint`, `nfd-rt
export`) and to ONNX for ONNX Runtime and TensorRT users (`to_onnx`, `nfd-rt export-onnx`).

The `.nfd` file I/O itself is `nfd_rt.nfd_file`; its names are re-exported here, where the public API has always
had them (`nfd_rt.export.save`, `load`, `read_header`, `NFDFormatError`, ...).
"""

from __future__ import annotations

import os

from .nfd_file import (FORMAT_VERSION, MAX_HEADER_BYTES, NFDFormatError, load, read_header, save,  # noqa: F401
                       save_random, uniform_schedule, with_schedule, write_nfd, write_nfd_stream)


def from_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, config=None) -> tuple[str, int]:
    """A trained NFD model's PyTorch checkpoint -> a `.nfd` file (needs torch). Returns (config name, parameters).

    `checkpoint` is a plain state_dict or a checkpoint dict holding the state_dict under "model" or "state_dict"
    and, optionally, the config under "config" (a name or a dict of NFDConfig fields); `config` (a config name or
    an NFDConfig) overrides it. The output loads bit-exactly with `load` and runs with nfd_rt.Session.
    Raises ValueError naming what is missing or does not match.
    """
    import torch

    from . import configs
    from .configs import NFDConfig
    from .reference import NFDModel

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state, cfg = ckpt, None
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
        c = ckpt.get("config")
        cfg = configs.get(c) if isinstance(c, str) else NFDConfig.from_dict(c) if isinstance(c, dict) else None
    if config is not None:
        cfg = configs.get(config) if isinstance(config, str) else config
    if cfg is None:
        raise ValueError(f"{checkpoint}: the checkpoint carries no config; name one (config=..., or --config on "
                         "the command line: tiny, nfd-130m, nfd-310m)")
    model = NFDModel(cfg, init_seed=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{checkpoint}: the checkpoint does not match config {cfg.name!r}: "
                         f"{' '.join(line.strip() for line in first[:3])}") from None
    save(model, output)
    return cfg.name, sum(t.numel() for t in state.values())


def to_onnx(model_or_path, out_dir: str | os.PathLike, opset: int = 17, vae_output: str = "uint8",
            encoder: bool = True, batch: int | None = None) -> dict:
    """Export a model (NFDModel or .nfd path) to ONNX for ONNX Runtime and TensorRT (needs torch).

    Writes `dit_pass.onnx` (one DiT pass of one frame against the KV cache), `vae_decoder.onnx`,
    `vae_encoder.onnx` (unless encoder=False) and `nfd_onnx.json` (shapes, schedule and the host loop) into
    `out_dir`; returns that JSON's content. `nfd_rt.onnx_runtime.OnnxSession(out_dir)` runs them. See docs/onnx.md.
    batch=None gives every graph a dynamic batch axis; an int fixes it (all shapes static).
    Raises ValueError for a config or option the exporter cannot express.
    """
    from ._onnx_export import to_onnx as _to_onnx

    return _to_onnx(model_or_path, out_dir, opset=opset, vae_output=vae_output, encoder=encoder, batch=batch)
