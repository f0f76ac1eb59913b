"""Memory is checked before it is allocated: a session that cannot fit is refused with MemoryError (Python) or
NFD_ERROR_OUT_OF_MEMORY (C) naming the bytes needed and available, never killed by the kernel's OOM killer.

The estimate (`_core.estimate_memory`) runs the model's constructors on a measuring arena, so weights, KV cache and
activations are exact; scratch is an upper bound (ops/scratch_bound.h) that these tests hold against the CPU ops'
measured high-water mark.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nfd_rt
from nfd_rt import _core
from nfd_rt.configs import NFDConfig, VAEConfig
from nfd_testfiles import MICRO, REPO, find_c_library, join, random_nfd, split

NFD_OK, NFD_ERROR_OUT_OF_MEMORY = 0, 5
TESTS = os.path.dirname(os.path.abspath(__file__))

WIDE = NFDConfig(
    name="wide", frame_height=64, frame_width=96, latent_channels=4, patch_size=2, hidden_size=64, depth=2,
    num_heads=4, rope_dims=(4, 6, 6), time_embed_dim=32, action_dim=5, window=3, sink_frames=1,
    vae=VAEConfig(channels=(8, 16, 16), num_res_blocks=1, norm_groups=4),
)


def with_config(data: bytes, **changes) -> bytes:
    """The same tensors under a header whose config has `changes` (a file that stays valid when the changed
    fields do not change any tensor's shape: frame size, window, sinks, schedule)."""
    header, body = split(data)
    cfg = json.loads(header["__metadata__"]["config"])
    cfg.update(changes)
    header["__metadata__"]["config"] = json.dumps(cfg)
    return join(header, body)


@pytest.fixture(scope="module")
def tiny_bytes() -> bytes:
    return random_nfd(nfd_rt.configs.get("tiny"), seed=1)


@pytest.fixture(scope="module")
def huge_file(tmp_path_factory, tiny_bytes):
    """tiny's tensors with 4096x4096 frames and a window of 200: every value in range, the file valid."""
    path = tmp_path_factory.mktemp("mem") / "huge.nfd"
    path.write_bytes(with_config(tiny_bytes, frame_height=4096, frame_width=4096, window=200))
    return path


def test_huge_but_valid_file_is_refused_before_allocating(huge_file):
    assert _core.inspect_file(str(huge_file))["format_version"] == 1  # the loader accepts it
    need = _core.estimate_memory(str(huge_file))
    available, source = _core.available_memory("cpu")
    assert need["total"] > available, "the test needs a config larger than this machine's memory"
    assert need["total"] == need["weights"] + need["kv_cache"] + need["activations"] + need["scratch"]
    with pytest.raises(MemoryError) as e:
        nfd_rt.Session(huge_file)
    msg = str(e.value)
    assert "needs" in msg and "KV cache" in msg and "activations" in msg and "available" in msg, msg
    assert source.split(" ")[0] in msg  # names where the available figure comes from


def test_huge_file_through_the_c_abi(huge_file):
    path = find_c_library()
    if path is None:
        pytest.skip("libnfd_rt.so not found (build it, or set NFD_RT_LIB)")
    lib = ctypes.CDLL(path)
    lib.nfd_last_error.restype = ctypes.c_char_p
    lib.nfd_session_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.nfd_session_estimate_memory.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)]
    assert lib.nfd_model_validate(str(huge_file).encode()) == NFD_OK
    s = ctypes.c_void_p(1234)
    assert lib.nfd_session_open(str(huge_file).encode(), None, ctypes.byref(s)) == NFD_ERROR_OUT_OF_MEMORY
    assert s.value is None
    assert b"needs" in lib.nfd_last_error() and b"available" in lib.nfd_last_error()
    need = ctypes.c_uint64(0)
    assert lib.nfd_session_estimate_memory(str(huge_file).encode(), None, ctypes.byref(need)) == NFD_OK
    assert need.value == _core.estimate_memory(str(huge_file))["total"]


class SessionParams(ctypes.Structure):
    _fields_ = [("device", ctypes.c_int), ("dtype", ctypes.c_int), ("seed", ctypes.c_uint64),
                ("threads", ctypes.c_int32), ("cuda_graphs", ctypes.c_int32), ("max_memory_bytes", ctypes.c_uint64),
                ("speculate", ctypes.c_int32), ("speculate_mode", ctypes.c_int32)]


def test_max_memory_bytes(tmp_path, tiny_bytes):
    path = tmp_path / "tiny.nfd"
    path.write_bytes(tiny_bytes)
    need = _core.estimate_memory(str(path))["total"]
    with pytest.raises(MemoryError, match="max_memory_bytes"):
        nfd_rt.Session(path, max_memory_bytes=need - 1)
    with nfd_rt.Session(path, max_memory_bytes=need) as s:  # exactly enough
        s.reset()
        s.step(np.zeros(s.config.action_dim, np.float32))
    for bad in (0, -5, 1.5, "1G", True):
        with pytest.raises(ValueError, match="max_memory_bytes"):
            nfd_rt.Session(path, max_memory_bytes=bad)
    lib_path = find_c_library()
    if lib_path is None:
        return
    lib = ctypes.CDLL(lib_path)
    lib.nfd_session_default_params.restype = SessionParams
    lib.nfd_last_error.restype = ctypes.c_char_p
    lib.nfd_session_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(SessionParams), ctypes.POINTER(ctypes.c_void_p)]
    lib.nfd_session_close.argtypes = [ctypes.c_void_p]
    p = lib.nfd_session_default_params()
    assert p.max_memory_bytes == 0
    p.max_memory_bytes = need - 1
    s = ctypes.c_void_p()
    assert lib.nfd_session_open(str(path).encode(), ctypes.byref(p), ctypes.byref(s)) == NFD_ERROR_OUT_OF_MEMORY
    assert b"max_memory_bytes" in lib.nfd_last_error()
    p.max_memory_bytes = need
    assert lib.nfd_session_open(str(path).encode(), ctypes.byref(p), ctypes.byref(s)) == NFD_OK
    lib.nfd_session_close(s)


@pytest.mark.parametrize("cfg", [MICRO, nfd_rt.configs.get("tiny"), WIDE, nfd_rt.configs.get("oasis-tiny")],
                         ids=lambda c: c.name)
def test_estimate_is_exact_for_the_arena(tmp_path, cfg):
    path = tmp_path / f"{cfg.name}.nfd"
    path.write_bytes(random_nfd(cfg))
    need = _core.estimate_memory(str(path), "cpu", "float32")
    with nfd_rt.Session(path, dtype="float32") as s:
        assert s.memory_bytes() == need["weights"] + need["kv_cache"] + need["activations"]
        assert s.kv_cache_bytes() == need["kv_cache"]
    # The CUDA estimate can be made on a machine without a GPU (bf16: half the bytes of the weights and cache).
    gpu = _core.estimate_memory(str(path), "cuda", "bfloat16")
    assert gpu["device"] == "cuda" and gpu["kv_cache"] == need["kv_cache"] // 2
    # The default (dtype "auto": bf16 on a CPU with AVX512-BF16 or AMX) is estimated alike.
    auto = _core.estimate_memory(str(path))
    with nfd_rt.Session(path) as s:
        assert s.memory_bytes() == auto["weights"] + auto["kv_cache"] + auto["activations"]
        assert auto["kv_cache"] == need["kv_cache"] // (2 if s.dtype == "bfloat16" else 1)


def test_parallel_speculation_is_counted_before_allocating(tmp_path, tiny_bytes):
    """speculate_mode="parallel" allocates k frames' buffers and activations besides the session's own: the check
    before opening counts them (a limit that fits the plain session refuses the parallel one), and the session
    holds no more than the estimate plus those buffers."""
    path = tmp_path / "tiny.nfd"
    path.write_bytes(tiny_bytes)
    need = _core.estimate_memory(str(path), "cpu", "float32")
    plain = need["weights"] + need["kv_cache"] + need["activations"]
    with nfd_rt.Session(path, dtype="float32", speculate=3, speculate_mode="parallel") as s:
        held = s.memory_bytes()
        assert held > plain  # the 3 frames' buffers (and the 3 ring slots any speculation adds)
    with pytest.raises(MemoryError, match="max_memory_bytes"):
        nfd_rt.Session(path, dtype="float32", speculate=3, speculate_mode="parallel",
                       max_memory_bytes=need["total"] + (held - plain) - 1)
    with nfd_rt.Session(path, dtype="float32", speculate=3, speculate_mode="parallel",
                        max_memory_bytes=need["total"] + (held - plain)) as s:  # exactly enough
        s.reset()
        s.step(np.zeros(s.config.action_dim, np.float32))
    # The estimate with the same options says the same, and counts the k frames' scratch on CUDA (the linears take
    # k x tokens rows; the device need not be present).
    spec = _core.estimate_memory(str(path), "cpu", "float32", speculate=3, speculate_mode="parallel")
    assert spec["weights"] + spec["kv_cache"] + spec["activations"] == held
    one = _core.estimate_memory(str(path), "cuda", "bfloat16")
    many = _core.estimate_memory(str(path), "cuda", "bfloat16", speculate=64, speculate_mode="parallel")
    assert many["scratch"] > one["scratch"] and many["kv_cache"] > one["kv_cache"]
    with pytest.raises(ValueError, match="speculate_mode"):
        _core.estimate_memory(str(path), "cpu", "float32", speculate=3, speculate_mode="sideways")


SCRATCH_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import nfd_rt
    from nfd_rt import _core
    path, threads, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    k = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # parallel speculation's k frames, or none
    spec = {"speculate": k, "speculate_mode": "parallel"} if k else {}
    with nfd_rt.Session(path, threads=threads, dtype=dtype, **spec) as s:
        cfg = s.config
        rng = np.random.default_rng(0)
        s.reset(frames=rng.integers(0, 256, (2, cfg.frame_height, cfg.frame_width, 3), dtype=np.uint8))
        for i in range(cfg.window + cfg.sink_frames + 2):
            # with k, one action throughout: the first step generates all k frames in one forward
            s.step(np.ones(cfg.action_dim, np.float32) if k else rng.standard_normal(cfg.action_dim).astype(np.float32))
    est = _core.estimate_memory(path, "cpu", dtype, threads, **spec)
    print(json.dumps({"peak": _core.cpu_scratch_peak_bytes(), "bound": est["scratch"]}))
""")


# A transformer much wider than its decoder (the DiT's scratch, not the VAE's, sets the CPU bound) and 256 tokens.
DIT_HEAVY = NFDConfig(
    name="dit-heavy", frame_height=32, frame_width=32, latent_channels=4, patch_size=1, hidden_size=1024, depth=1,
    num_heads=8, rope_dims=(32, 48, 48), time_embed_dim=32, action_dim=3, window=2, sink_frames=0,
    vae=VAEConfig(channels=(8, 8), num_res_blocks=1, norm_groups=4),
)

def test_scratch_bound_holds_for_parallel_speculation(tmp_path):
    """k frames in one forward multiply the linears' rows: at k = 24 the ops' scratch high-water mark is about
    1.5x the bound of a session without speculation (measured before the bound counted k), and within the bound
    that counts it."""
    path = tmp_path / "dit-heavy.nfd"
    path.write_bytes(random_nfd(DIT_HEAVY))
    r = subprocess.run([sys.executable, "-c", SCRATCH_PROBE, str(path), "2", "float32", "24"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    plain = _core.estimate_memory(str(path), "cpu", "float32", 2)["scratch"]
    assert got["peak"] > plain, got  # the case this test is for
    assert got["peak"] <= got["bound"], got


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not _core.cpu_bf16()["ok"], reason="no bf16 on this CPU"))])
@pytest.mark.parametrize("cfg", [MICRO, nfd_rt.configs.get("tiny"), WIDE, nfd_rt.configs.get("oasis-tiny")],
                         ids=lambda c: c.name)
def test_scratch_bound_holds(tmp_path, cfg, dtype):
    """A fresh process (the scratch counters are process-wide) runs reset with context frames (the encoder),
    a full window of decoded steps, and compares the ops' scratch high-water mark with the estimate's bound."""
    path = tmp_path / f"{cfg.name}.nfd"
    path.write_bytes(random_nfd(cfg))
    for threads in (1, 2):
        r = subprocess.run([sys.executable, "-c", SCRATCH_PROBE, str(path), str(threads), dtype],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert 0 < got["peak"] <= got["bound"], (cfg.name, threads, got)


# Fields that change no tensor's shape, so any value gives a valid file (when the config parser accepts it).
@st.composite
def header_changes(draw):
    factor = 2  # MICRO's VAE downsamples by 2
    return {
        "frame_height": factor * draw(st.integers(1, 2048)),
        "frame_width": factor * draw(st.integers(1, 2048)),
        "window": draw(st.integers(0, 1000)),
        "sink_frames": draw(st.integers(0, 20)),
        "schedule": [1.0] + sorted(draw(st.lists(st.floats(0.01, 0.99), max_size=40, unique=True)), reverse=True),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=header_changes())
def test_structural_header_fuzz(tmp_path, changes):
    """Valid JSON, every value in range, products possibly huge: the open either fails cleanly (the config parser's
    bounds, or MemoryError before allocating) or succeeds within the limit; the process never dies."""
    limit = 256 << 20
    path = tmp_path / "fuzz.nfd"
    path.write_bytes(with_config(random_nfd(MICRO), **changes))
    try:
        need = _core.estimate_memory(str(path))
    except ValueError:  # the parser's own bounds (tokens per frame, window + sinks, ...)
        with pytest.raises(ValueError):
            nfd_rt.Session(path)
        return
    try:
        s = nfd_rt.Session(path, max_memory_bytes=limit)
    except MemoryError as e:
        assert need["total"] > limit and "max_memory_bytes" in str(e)
        return
    with s:
        assert need["total"] <= limit
        assert s.memory_bytes() == need["weights"] + need["kv_cache"] + need["activations"]
        if changes["frame_height"] * changes["frame_width"] <= 64 * 64 and len(changes["schedule"]) <= 8:
            s.reset()
            s.step(np.zeros(MICRO.action_dim, np.float32))


ALLOC_FAILURE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from nfd_rt import _core
    x = np.ones((64, 512, 512), np.float32)          # 64 MiB in; the op's output would be 256 MiB
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (160 << 20), resource.RLIM_INFINITY))
    try:
        _core.ops.upsample_nearest2x(x)
    except MemoryError as e:
        print("MemoryError:", e)
""")


def test_allocation_failure_is_memory_error():
    """An allocation that fails after the checks (here: an op's output under an address-space limit) is
    MemoryError, not 'internal error, please report it'."""
    r = subprocess.run([sys.executable, "-c", ALLOC_FAILURE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("MemoryError:") and "out of host memory" in r.stdout, r.stdout


def test_info_prints_the_estimate(huge_file):
    r = subprocess.run([sys.executable, "-m", "nfd_rt.cli", "info", str(huge_file)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "a CPU session needs" in r.stdout and "GiB" in r.stdout
