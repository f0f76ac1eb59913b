"""Named model configurations.

A config fully describes an NFD model: the DiT, the VAE, the sampler and the KV-cache window. It is stored
as JSON in every `.nfd` file (`to_json` / `from_json`), so the C++ runtime reads the same fields by name.
See docs/models.md for the reasoning behind the dimensions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VAEConfig:
    """Convolutional VAE, 8x spatial downsampling (len(channels) - 1 == 3 resolution changes)."""

    channels: tuple[int, ...] = (32, 32, 64, 64)  # per level, highest resolution first
    num_res_blocks: int = 1  # ResNet blocks per level
    norm_groups: int = 8  # GroupNorm groups (divides every entry of `channels`)
    norm_eps: float = 1e-6

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class NFDConfig:
    name: str = "tiny"
    # Frames and latents.
    frame_height: int = 64
    frame_width: int = 64
    latent_channels: int = 4
    patch_size: int = 2
    # DiT.
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    rope_dims: tuple[int, int, int] = (8, 12, 12)  # (time, height, width) parts of head_dim, each even
    rope_theta: float = 10000.0
    time_embed_dim: int = 256  # sinusoidal features of the timestep before the MLP
    action_dim: int = 8
    norm_eps: float = 1e-6
    # KV cache: a frame sees the `sink_frames` first frames, the `window` frames before it, and itself.
    window: int = 8
    sink_frames: int = 1
    # Sampler: Euler flow matching from t=1 through `schedule` to t=0, then one cache-write pass.
    schedule: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    context_noise: float = 0.02
    vae: VAEConfig = field(default_factory=VAEConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        elif sum(self.rope_dims) != self.head_dim:
            problems.append(f"rope_dims {self.rope_dims} must sum to head_dim {self.head_dim}")
        if any(d % 2 for d in self.rope_dims):
            problems.append(f"rope_dims {self.rope_dims} must all be even")
        ds = self.vae.downsample
        if self.frame_height % ds or self.frame_width % ds:
            problems.append(f"frame {self.frame_height}x{self.frame_width} is not divisible by the VAE factor {ds}")
        elif self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            problems.append(
                f"latent {self.latent_height}x{self.latent_width} is not divisible by patch_size {self.patch_size}"
            )
        if not self.schedule or self.schedule[0] != 1.0 or list(self.schedule) != sorted(self.schedule, reverse=True):
            problems.append(f"schedule {self.schedule} must start at 1.0 and decrease")
        elif self.schedule[-1] <= 0.0:
            problems.append(f"schedule {self.schedule} must stay above 0 (the last Euler step goes to t=0)")
        if not 0.0 <= self.context_noise < 1.0:
            problems.append(f"context_noise {self.context_noise} must be in [0, 1)")
        if self.window < 0 or self.sink_frames < 0:
            problems.append("window and sink_frames must be >= 0")
        if any(c % self.vae.norm_groups for c in self.vae.channels):
            problems.append(f"VAE channels {self.vae.channels} must be divisible by norm_groups {self.vae.norm_groups}")
        if self.action_dim < 1:
            problems.append("action_dim must be >= 1")
        if problems:
            raise ValueError("invalid NFD config: " + "; ".join(problems))

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_height(self) -> int:
        return self.frame_height // self.vae.downsample

    @property
    def latent_width(self) -> int:
        return self.frame_width // self.vae.downsample

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of one frame."""
        return self.latent_height // self.patch_size, self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    @property
    def cache_frames(self) -> int:
        """Frames held in the KV cache: sink frames + rolling window (the current frame is not cached)."""
        return self.sink_frames + self.window

    @property
    def num_steps(self) -> int:
        return len(self.schedule)

    # Serialisation (the `config` entry of a .nfd file).
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NFDConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        vae = d.pop("vae", {})
        vae_known = {f.name for f in dataclasses.fields(VAEConfig)}
        if set(vae) - vae_known:
            raise ValueError(f"unknown VAE config fields: {sorted(set(vae) - vae_known)}")
        vae = {k: tuple(v) if isinstance(v, list) else v for k, v in vae.items()}
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(vae=VAEConfig(**vae), **d)

    @classmethod
    def from_json(cls, text: str) -> "NFDConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "NFDConfig":
        return dataclasses.replace(self, **changes)


_CONFIGS: dict[str, NFDConfig] = {
    "tiny": NFDConfig(),
    # 384x224 frames -> 48x28 latents (8x VAE), patch 2 -> 24x14 = 336 tokens per frame, 32-frame context.
    "nfd-130m": NFDConfig(
        name="nfd-130m",
        frame_height=224,
        frame_width=384,
        latent_channels=16,
        patch_size=2,
        hidden_size=768,
        depth=12,
        num_heads=12,
        rope_dims=(16, 24, 24),
        action_dim=32,
        window=30,
        sink_frames=2,
        vae=VAEConfig(channels=(64, 128, 128, 256), num_res_blocks=1, norm_groups=32),
    ),
    "nfd-310m": NFDConfig(
        name="nfd-310m",
        frame_height=224,
        frame_width=384,
        latent_channels=16,
        patch_size=2,
        hidden_size=1024,
        depth=16,
        num_heads=16,
        rope_dims=(16, 24, 24),
        action_dim=32,
        window=30,
        sink_frames=2,
        vae=VAEConfig(channels=(64, 128, 128, 256), num_res_blocks=1, norm_groups=32),
    ),
}


# Other model architectures (DESIGN.md, "Model architectures"): the module of each one's config class and named
# configs. A .nfd config JSON names its architecture; without the field it is today's "nfd".
_ARCHITECTURES = {"waypoint": "nfd_rt.configs_waypoint"}


def _arch_module(architecture: str):
    import importlib

    if architecture not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: nfd, {', '.join(_ARCHITECTURES)}")
    return importlib.import_module(_ARCHITECTURES[architecture])


def names(architecture: str = "nfd") -> list[str]:
    """Named configs of one architecture (today's NFD DiT by default)."""
    return list(_CONFIGS) if architecture == "nfd" else _arch_module(architecture).names()


def get(name: str):
    """Return the named config ("tiny", "nfd-130m", "nfd-310m"; other architectures' names, e.g. "waypoint-tiny")."""
    if name in _CONFIGS:
        return _CONFIGS[name]
    for arch in _ARCHITECTURES:
        if name in _arch_module(arch).names():
            return _arch_module(arch).get(name)
    known = list(_CONFIGS) + [n for arch in _ARCHITECTURES for n in _arch_module(arch).names()]
    raise ValueError(f"unknown config {name!r}; known: {', '.join(known)}")


def from_json(text: str):
    """The config of a .nfd file, of the architecture its JSON names ("nfd" when it names none)."""
    d = json.loads(text)
    if not isinstance(d, dict):
        raise ValueError("config JSON is not an object")
    arch = d.get("architecture", "nfd")
    if arch == "nfd":
        return NFDConfig.from_dict({k: v for k, v in d.items() if k != "architecture"})
    return _arch_module(arch).config_from_dict(d)
