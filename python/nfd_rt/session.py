"""`nfd_rt.Model` and `nfd_rt.Session`: the C++ runtime behind exactly the API of
`nfd_rt.reference.ReferenceSession`, plus many worlds over one copy of the weights (`Model.session`,
`step_batch`, `Session.fork`) and speculative sampling.

Inputs are validated here with the same code and messages as the reference (`_checks.py`); the extension
checks buffers again before handing them to C++. Torch tensors are accepted (converted through numpy).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np

from . import _checks, configs
from ._native import core
from .configs import ModelConfig

_SPECULATE_MODES = ("exact", "parallel")


def resolve_dtype(device: Any = "cpu", dtype: Any = "auto") -> str:
    """The dtype a session of `device` computes in for `dtype`: "auto" (or None) is "bfloat16" on a CPU with
    AVX512-BF16 or AMX (oneDNN's bf16 products, docs/cpu-backend.md) and "float32" on other CPUs and on CUDA; any
    other name is returned as given (the runtime refuses what the device cannot compute)."""
    device, dtype = _names(device, dtype)
    return core().default_dtype(device.split(":")[0]) if dtype == "auto" else dtype


def _names(device: Any, dtype: Any) -> tuple[str, str]:
    if not isinstance(device, str):
        device = str(device)  # e.g. torch.device("cuda")
    if dtype is None:
        dtype = "auto"
    elif not isinstance(dtype, str):
        dtype = str(dtype).removeprefix("torch.")  # e.g. torch.bfloat16; the runtime parses the name
    return device, dtype


def _memory_limit(max_memory_bytes: Any) -> int:
    if max_memory_bytes is None:
        return 0
    if not isinstance(max_memory_bytes, (int, np.integer)) or isinstance(max_memory_bytes, bool) or max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be a positive integer or None, got {max_memory_bytes!r}")
    return int(max_memory_bytes)


def _threads(threads: Any, stacklevel: int = 3) -> int:
    threads = _checks.threads(threads, core().max_threads())
    if threads > (os.cpu_count() or 1):
        warnings.warn(f"threads={threads} is more than the {os.cpu_count()} CPUs of this machine: the extra "
                      "threads only wait for one another (the result is the same at any thread count)",
                      RuntimeWarning, stacklevel=stacklevel)
    return threads


def _seed_and_snapshot(seed: Any, snapshot: Any) -> int:
    """The seed to open with: a snapshot brings its own (the noise of later frames follows from it), so passing
    both is refused rather than one silently ignored."""
    if snapshot is not None and seed is not None:
        raise ValueError("seed and snapshot are exclusive: a restored session continues with the snapshot's seed")
    return _checks.seed(0 if seed is None else seed)


def _speculation(speculate: Any, mode: Any) -> tuple[int, str]:
    if isinstance(speculate, bool) or not isinstance(speculate, (int, np.integer)) or not 0 <= speculate <= 64:
        raise ValueError(f"speculate must be an integer from 0 (off) to 64 frames ahead, got {speculate!r}")
    if mode not in _SPECULATE_MODES:
        raise ValueError(f"speculate_mode must be one of {list(_SPECULATE_MODES)}, got {mode!r}")
    return int(speculate), mode


class Model:
    """A `.nfd` file's weights, loaded and validated once on one device, shared by every session made from it.

    `m.session(seed=...)` makes a session over these weights (16 sessions of a model hold one copy of the
    weights plus 16 KV caches). A model lives as long as its last session: dropping the `Model` object never
    pulls the weights from under a session.

    Args:
        path: the model file.
        device, dtype: as for `Session`.
        threads: CPU threads used while loading and the default of the sessions (0 = physical cores).
        max_memory_bytes: refuse to load (MemoryError) when the weights would need more than this.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: str = "auto", threads: int = 0,
                 max_memory_bytes: int | None = None):
        dtype = resolve_dtype(device, dtype)
        device, dtype = _names(device, dtype)
        self.threads = _threads(threads)
        self._m = core().Model(os.fspath(path), device, dtype, self.threads, _memory_limit(max_memory_bytes))
        self._cfg = configs.from_json(self._m.config_json)
        self.path = os.fspath(path)
        self.device = self._m.device
        self.dtype = dtype

    @property
    def config(self) -> ModelConfig:
        return self._cfg

    def memory_bytes(self) -> int:
        """Bytes of the weights on the device (shared by every session of the model)."""
        return self._m.weight_bytes()

    def session(self, seed: int | None = None, threads: int | None = None, speculate: int = 0,
                speculate_mode: str = "exact", cuda_graphs: bool = True,
                max_memory_bytes: int | None = None, snapshot: Any = None) -> "Session":
        """A new session (its own KV cache, frame index and noise stream) over this model's weights; seed None
        means 0.

        snapshot: a blob from `Session.snapshot()` of a session of this model (same config and weights) and
        dtype: the new session continues from it, with its seed (so `seed` must be left out), and on the CPU
        produces bitwise the frames the snapshotted session would have produced. Speculation and threads may
        differ from the original's. A bad blob raises ValueError naming what is wrong or differs
        (docs/snapshots.md)."""
        return Session._over(self, seed=seed, threads=self.threads if threads is None else threads,
                             speculate=speculate, speculate_mode=speculate_mode, cuda_graphs=cuda_graphs,
                             max_memory_bytes=max_memory_bytes, snapshot=snapshot)

    def __copy__(self) -> "Model":
        return self  # immutable: a copy would be the same weights (Gymnasium deep-copies its make() arguments)

    def __deepcopy__(self, memo: dict) -> "Model":
        return self

    def __repr__(self) -> str:
        return f"nfd_rt.Model({self._cfg.name}, device={self.device!r}, dtype={self.dtype!r})"


class Session:
    """Frame-step session over a `.nfd` file (its own copy of the weights) or over a shared `Model`.

    Args:
        path: the model file.
        device: "cpu" or "cuda".
        dtype: compute dtype: "auto" (the default: "bfloat16" on a CPU with AVX512-BF16 or AMX, else "float32";
            `nfd_rt.resolve_dtype`), "float32" (CPU and CUDA), "bfloat16" (CUDA, and CPUs with AVX512-BF16 or
            AMX), "float16" (CUDA). The session's `dtype` attribute names the one it computes in.
        seed: noise seed (Philox); the same seed gives the same video on every backend.
        threads: CPU threads, 0 = number of physical cores. The result does not depend on it (bitwise).
        max_memory_bytes: refuse to open (MemoryError) when the session would need more than this on its
            device. The memory the device has available is always checked: a session that cannot fit raises
            MemoryError naming the bytes needed and available, before allocating anything.
        speculate: generate up to this many frames ahead under the last action (0 = off). With
            speculate_mode="exact" (the default) they are computed in the background between calls and are
            exactly the frames plain stepping would give, so a repeated action is answered at once and the video
            never changes; a different action discards them (`speculation_stats()` counts both).
        snapshot: continue from a blob of `Session.snapshot()` (see `Model.session`); seed must then be left
            out (None means 0 otherwise).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: str = "auto", seed: int | None = None,
                 threads: int = 0, cuda_graphs: bool = True, max_memory_bytes: int | None = None,
                 speculate: int = 0, speculate_mode: str = "exact", snapshot: Any = None):
        dtype = resolve_dtype(device, dtype)
        device, dtype = _names(device, dtype)
        limit = _memory_limit(max_memory_bytes)
        self._s = None
        seed = _seed_and_snapshot(seed, snapshot)
        threads = _threads(threads)
        speculate, speculate_mode = _speculation(speculate, speculate_mode)
        self._s = core().Session(os.fspath(path), device, dtype, seed, threads, bool(cuda_graphs), limit,
                                 speculate, speculate_mode, snapshot)
        self._finish(None, dtype)

    @classmethod
    def _over(cls, model: Model, seed: int | None, threads: int, speculate: int, speculate_mode: str,
              cuda_graphs: bool, max_memory_bytes: int | None, snapshot: Any = None) -> "Session":
        self = cls.__new__(cls)
        self._s = None
        seed = _seed_and_snapshot(seed, snapshot)
        threads = _threads(threads, stacklevel=4)
        speculate, speculate_mode = _speculation(speculate, speculate_mode)
        self._s = core().Session(model._m, seed, threads, bool(cuda_graphs), _memory_limit(max_memory_bytes),
                                 speculate, speculate_mode, snapshot)
        self._finish(model, model.dtype)
        return self

    def _finish(self, model: Model | None, dtype: str) -> None:
        self._cfg = configs.from_json(self._s.config_json)  # any architecture's config
        self.seed = self._s.seed  # a restored session's is the snapshot's
        self.model = model  # None when the session opened its own copy of the file
        self.device = self._s.device
        self.dtype = dtype

    # -- public API (same as ReferenceSession) --------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self._cfg

    @property
    def frame_index(self) -> int:
        return self._open().frame_index

    def reset(self, frames: Any = None, latents: Any = None, actions: Any = None) -> None:
        """Forget everything; then write the given context frames (uint8 [T,H,W,3]) or latents into the cache.

        A model whose latent stands for several frames (`config.frames_per_step` = F, Waypoint: 4) takes T a
        multiple of F, encoded F at a time, and one action per latent: actions [T / F, action_dim]. reset also
        clears a streaming decoder's state (the next decode is the first of a stream)."""
        s = self._open()
        if frames is not None and latents is not None:
            raise ValueError("pass either frames or latents to reset, not both")
        if frames is not None:
            f = _checks.frames(frames, self._cfg)
            s.reset_frames(f, _checks.actions(actions, f.shape[0] // self._cfg.frames_per_step, self._cfg))
        elif latents is not None:
            z = _checks.latents(latents, self._cfg)
            s.reset_latents(z, _checks.actions(actions, z.shape[0], self._cfg))
        else:
            a = _checks.actions(actions, 0, self._cfg)
            s.reset_latents(np.zeros((0, self._cfg.latent_channels, self._cfg.latent_height,
                                      self._cfg.latent_width), np.float32), a)

    def step_latent(self, action: Any) -> np.ndarray:
        """Generate the next frame's latent (float32 [C, h, w]) for `action` and append it to the context."""
        s = self._open()
        latent, _ = s.step(_checks.action(action, self._cfg), False)
        return latent

    def step(self, action: Any) -> np.ndarray:
        """Generate and decode the next frame: uint8 [H, W, 3]. A model whose latent stands for several frames
        (`config.frames_per_step` = F > 1, Waypoint-1.5: 4) returns them all, uint8 [F, H, W, 3] in time order."""
        s = self._open()
        _, frame = s.step(_checks.action(action, self._cfg), True)
        return frame

    def decode(self, latent: Any) -> np.ndarray:
        """Decode one latent [C, h, w] to uint8 [H, W, 3] ([F, H, W, 3] when config.frames_per_step = F > 1).
        The session's state is untouched, except a streaming decoder's (Waypoint's TAEHV keeps memory between
        latents, as `WaypointSession.decode`): decode each latent of `step_latent` once, in order."""
        s = self._open()
        z = _checks.latents(latent, self._cfg)
        if z.shape[0] != 1:
            raise ValueError(f"decode takes one latent [C, h, w], got {z.shape[0]} latents")
        return s.decode(z[0])

    def memory_bytes(self) -> int:
        """Bytes the session holds on its device: weights + KV cache + activation buffers."""
        return self._open().memory_bytes()

    def kv_cache_bytes(self) -> int:
        return self._open().kv_cache_bytes()

    def fork(self) -> "Session":
        """An independent session that continues from this one's state (KV cache, frame index, noise position),
        sharing the model. Stepping either never changes the other; a fork stepped with actions A equals a fresh
        session replayed through the same history and then A."""
        s = self._open()
        f = Session.__new__(Session)
        f._s = None
        f._s = s.fork()
        f._finish(self.model, self.dtype)
        return f

    def snapshot(self) -> bytes:
        """Everything this world's future depends on, as bytes: the KV cache of the frames a later frame can still
        see, which frames they are, the frame index and the seed, with the model's config, a fingerprint of its
        weights, the dtype, a format version and a CRC-32C. `model.session(snapshot=blob)` (or
        `Session(path, snapshot=blob)`) continues from it, in this process or another; on the CPU it produces
        bitwise the frames this session would produce next. Frames generated ahead by speculation are not saved:
        like `fork()`, the snapshot is the state after the last frame returned (docs/snapshots.md)."""
        return self._open().snapshot()

    def speculation_stats(self) -> dict:
        """{"served": frames returned from speculation, "discarded": frames generated ahead and thrown away}."""
        return dict(self._open().speculation_stats())

    def wait_speculation(self) -> int:
        """Wait until the background worker of exact speculation has generated every frame it can ahead (up to
        `speculate` under the last action) and return how many are ahead; 0 without exact speculation. For tests
        and benchmarks: a player who paused long enough, without guessing how long that is on a busy machine."""
        return int(self._open().wait_speculation())

    def close(self) -> None:
        """Free the session's memory now. Any later call raises RuntimeError("session is closed")."""
        if self._s is not None:
            self._s.close()
            self._s = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._s is None else f"frame_index={self._s.frame_index}"
        return f"nfd_rt.Session({self._cfg.name}, device={self.device!r}, dtype={self.dtype!r}, {state})"

    # -- internals --------------------------------------------------------------------------------------------
    def _open(self):
        if self._s is None:
            raise RuntimeError("session is closed")
        return self._s


def _batch(sessions: Sequence[Session], actions: Any, decode: bool):
    sessions = list(sessions)
    if not sessions:
        raise ValueError("step_batch needs at least one session")
    for i, s in enumerate(sessions):
        if not isinstance(s, Session):
            raise ValueError(f"step_batch: sessions[{i}] is a {type(s).__name__}, not an nfd_rt.Session")
    cfg = sessions[0].config
    a = _checks._as_numpy(actions, "actions")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"actions must be numeric, got dtype {a.dtype}")
    if a.shape != (len(sessions), cfg.action_dim):
        raise ValueError(f"actions must have shape ({len(sessions)}, {cfg.action_dim}) (one per session), "
                         f"got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    _checks._check_finite(a, "actions")
    return core().step_batch([s._open() for s in sessions], a, decode)


def step_batch(sessions: Sequence[Session], actions: Any) -> np.ndarray:
    """Step several sessions of one `Model` as one batched forward (GEMMs over all their tokens, attention per
    session over its own cache): actions [n, action_dim] -> frames uint8 [n, H, W, 3] ([n, F, H, W, 3] for a model
    of config.frames_per_step = F > 1). The same frames as stepping
    each session alone (CPU float32: within 1e-5). Sessions must share a model, appear once and not speculate;
    anything else raises ValueError."""
    return _batch(sessions, actions, True)[1]


def step_latent_batch(sessions: Sequence[Session], actions: Any) -> np.ndarray:
    """`step_batch` without decoding: latents float32 [n, C, h, w]."""
    return _batch(sessions, actions, False)[0]


def snapshot_info(snapshot: Any) -> dict:
    """The metadata of a snapshot blob, after checking its format (magic bytes, version, size, CRC-32C): the
    architecture, config, weights fingerprint, dtype, seed, frame_index, the saved frames, state_bytes, the
    nfd_rt version that wrote it, plus format_version and size. Raises ValueError for a blob that is not an intact
    snapshot. It does not check the blob against a model: restoring does."""
    return dict(core().snapshot_info(snapshot))
