"""What the config dataclass of every architecture shares (nfd_rt.configs, nfd_rt.configs_waypoint): the JSON of
a `.nfd` file's `config` entry both ways, with unknown fields refused by name, and the DiT's patch geometry."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the frozen dataclasses hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


class ConfigBase:
    """Mixed into a frozen config dataclass. `_kind` words its errors ("unknown Oasis config fields: [...]");
    `_nested` maps a field holding a nested config dataclass to (that class, its words)."""

    _kind = "config"
    _nested: dict[str, tuple[type, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls._kind} fields: {sorted(unknown)}")
        nested = {}
        for name, (sub_cls, kind) in cls._nested.items():
            sub = d.pop(name, {})
            if not isinstance(sub, dict):
                raise ValueError(f"{cls._kind} field {name!r} must be an object")
            unknown = set(sub) - {f.name for f in dataclasses.fields(sub_cls)}
            if unknown:
                raise ValueError(f"unknown {kind} fields: {sorted(unknown)}")
            nested[name] = sub_cls(**_tuples(sub))
        return cls(**nested, **_tuples(d))

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    # What a session's step returns: frames_per_step video frames of video_size (the NFD and Oasis models: one frame
    # of frame_height x frame_width; Waypoint overrides both: 4 frames of its output size).
    @property
    def frames_per_step(self) -> int:
        return 1

    @property
    def video_size(self) -> tuple[int, int]:
        """(height, width) of the frames a session returns and takes."""
        return self.frame_height, self.frame_width

    # The DiT's patches of a latent frame (the class has latent_height, latent_width, latent_channels, patch_size).
    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of one latent frame."""
        return self.latent_height // self.patch_size, self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size**2
