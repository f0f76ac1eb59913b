"""Same seed, same video — whatever the thread count and whatever else runs beside it (CPU, bitwise).

The CPU ops cut their work into chunks fixed by the shapes alone (backends/cpu/parallel.h), so every element is
computed by the same code on the same sub-problem however many threads there are or how many are free; in bf16 too
(each oneDNN product runs on one chunk, on the thread that holds it).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nfd_rt
from nfd_rt.configs import NFDConfig, VAEConfig
from nfd_testfiles import MICRO, random_nfd

_core = pytest.importorskip("nfd_rt._core", reason="the compiled extension nfd_rt._core is not built")

# Shapes that take each CPU kernel path: micro (register attention, im2col convs on small images) and a wider
# frame with 96 tokens (sgemm attention), Winograd convs at 64x96 and a stride-2 encoder (banded im2col).
CONFIGS = {
    "micro": MICRO,
    "wide": NFDConfig(
        name="wide", frame_height=64, frame_width=96, latent_channels=4, patch_size=2, hidden_size=64, depth=2,
        num_heads=4, rope_dims=(4, 6, 6), time_embed_dim=32, action_dim=5, window=3, sink_frames=1,
        vae=VAEConfig(channels=(8, 16, 16), num_res_blocks=1, norm_groups=4),
    ),
}
FRAMES = 12  # past the window, so the ring wraps


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / f"{request.param}.nfd"
    path.write_bytes(random_nfd(CONFIGS[request.param], seed=5))
    return path


DTYPES = [pytest.param("float32"), pytest.param("bfloat16", marks=pytest.mark.skipif(
    not _core.cpu_bf16()["ok"], reason=f"no bf16 on this CPU: {_core.cpu_bf16()['why']}"))]


def rollout(path, threads: int, frames: int = FRAMES, context: bool = True, dtype: str = "float32"):
    """Latents and decoded frames of a rollout from 2 context frames (encoder included)."""
    with nfd_rt.Session(path, seed=11, threads=threads, dtype=dtype) as s:
        cfg = s.config
        rng = np.random.default_rng(3)
        if context:
            s.reset(frames=rng.integers(0, 256, (2, cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8))
        else:
            s.reset()
        acts = rng.standard_normal((frames, cfg.action_dim)).astype(np.float32)
        latents, images = [], []
        for i, a in enumerate(acts):
            if i % 2:
                images.append(s.step(a))
            else:
                latents.append(s.step_latent(a))
        return np.stack(latents), np.stack(images)


@pytest.mark.filterwarnings("ignore:threads=:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_equal_across_thread_counts(model_file, dtype):
    """fp32 (OpenBLAS) and bf16 (oneDNN): the same chunks computed the same way at any thread count."""
    lat1, img1 = rollout(model_file, threads=1, dtype=dtype)
    for threads in (2, 3, 4, 0):
        lat, img = rollout(model_file, threads=threads, dtype=dtype)
        assert np.array_equal(lat, lat1), f"threads={threads}: latents differ from threads=1 " \
            f"(max {np.abs(lat - lat1).max():.3g})"
        assert np.array_equal(img, img1), f"threads={threads}: frames differ from threads=1"


@pytest.mark.filterwarnings("ignore:threads=:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_equal_with_sessions_running_concurrently(model_file, dtype):
    """Four sessions stepping in four Python threads (the GIL is released in C++), each with the default thread
    count and one with 4 threads, give exactly what one session alone gives."""
    lat1, img1 = rollout(model_file, threads=1, dtype=dtype)
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = rollout(model_file, threads=4 if i == 3 else 0, dtype=dtype)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    for i, (lat, img) in sorted(results.items()):
        assert np.array_equal(lat, lat1), f"session {i}: latents differ from a session alone"
        assert np.array_equal(img, img1), f"session {i}: frames differ from a session alone"


def test_reference_parity_is_unchanged_by_threads(tiny_nfd):
    """On the named tiny config too (from reset with no context): threads 1 and 2 give the same bits."""
    a, _ = rollout(tiny_nfd, threads=1, frames=6, context=False)
    b, _ = rollout(tiny_nfd, threads=2, frames=6, context=False)
    if _core.cpu_bf16()["ok"]:
        c, _ = rollout(tiny_nfd, threads=1, frames=6, context=False, dtype="bfloat16")
        d, _ = rollout(tiny_nfd, threads=2, frames=6, context=False, dtype="bfloat16")
        assert np.array_equal(c, d)
    assert np.array_equal(a, b)
