"""Counter-based Philox4x32-10 noise, identical in Python, C++ and CUDA (see docs/rng.md).

The noise for element `e` of the latent of frame `frame` at sampler slot `step` under `seed` is a pure function
of those four numbers, so any backend can produce any element in any order and get the same value.
"""

from __future__ import annotations

import numpy as np

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)
PHILOX_W1 = np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32 with 10 rounds (Random123). counter uint32[..., 4], key uint32[..., 2] -> uint32[..., 4]."""
    counter = np.asarray(counter, dtype=np.uint32)
    key = np.asarray(key, dtype=np.uint32)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError(f"expected counter [..., 4] and key [..., 2], got {counter.shape} and {key.shape}")
    shape = np.broadcast_shapes(counter.shape, key.shape[:-1] + (4,))
    c = [np.broadcast_to(counter[..., i], shape[:-1]).astype(np.uint64) for i in range(4)]
    k0 = np.broadcast_to(key[..., 0], shape[:-1]).astype(np.uint64)
    k1 = np.broadcast_to(key[..., 1], shape[:-1]).astype(np.uint64)
    for round_ in range(10):
        if round_:  # the key schedule adds the Weyl constants modulo 2**32
            k0 = (k0 + np.uint64(PHILOX_W0)) & _MASK32
            k1 = (k1 + np.uint64(PHILOX_W1)) & _MASK32
        p0 = PHILOX_M0 * c[0]
        p1 = PHILOX_M1 * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c = [
            hi1 ^ c[1] ^ k0,
            lo1,
            hi0 ^ c[3] ^ k1,
            lo0,
        ]
    return np.stack([x.astype(np.uint32) for x in c], axis=-1)


def seed_to_key(seed: int) -> np.ndarray:
    """64-bit seed -> Philox key (low word, high word)."""
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    seed = int(seed)
    return np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)


def uniform_pair_to_normal(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box-Muller on two uint32 words, computed in float64, returned as float32.

    u1 = ((a >> 8) + 1) / 2**24 in (0, 1], u2 = (b >> 8) / 2**24 in [0, 1);
    r = sqrt(-2 ln u1); (r cos 2 pi u2, r sin 2 pi u2).
    """
    u1 = ((a >> np.uint32(8)).astype(np.float64) + 1.0) * (1.0 / 16777216.0)
    u2 = (b >> np.uint32(8)).astype(np.float64) * (1.0 / 16777216.0)
    r = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return (r * np.cos(angle)).astype(np.float32), (r * np.sin(angle)).astype(np.float32)


def normal(seed: int, frame: int, step: int, count: int) -> np.ndarray:
    """`count` standard normals for (seed, frame, step): element e uses counter (e // 4, frame, step, 0), lane e % 4."""
    if frame < 0 or step < 0 or frame >= 2**32 or step >= 2**32:
        raise ValueError(f"frame and step must be in [0, 2**32), got {frame}, {step}")
    groups = (count + 3) // 4
    counter = np.zeros((groups, 4), dtype=np.uint32)
    counter[:, 0] = np.arange(groups, dtype=np.uint32)
    counter[:, 1] = frame
    counter[:, 2] = step
    words = philox4x32_10(counter, seed_to_key(seed))
    z0, z1 = uniform_pair_to_normal(words[:, 0], words[:, 1])
    z2, z3 = uniform_pair_to_normal(words[:, 2], words[:, 3])
    return np.stack([z0, z1, z2, z3], axis=-1).reshape(-1)[:count]


def latent_noise(seed: int, frame: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Noise of a latent of `shape` (row-major element order)."""
    return normal(seed, frame, step, int(np.prod(shape))).reshape(shape)
