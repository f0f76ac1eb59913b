"""The C ABI from C: examples/c built with CMake against the installed package (find_package(nfd_rt)) and run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from nfd_testfiles import MICRO, REPO, random_nfd

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def cmake_dir(tmp_path_factory) -> str:
    """nfd_rtConfig.cmake of an installed nfd_rt: the wheel's, else `cmake --install` of a build tree."""
    try:
        import nfd_rt

        d = nfd_rt.cmake_dir()
        if os.environ.get("NFD_RT_BUILD_DIR") is None:
            return d
    except FileNotFoundError:
        pass
    build = os.environ.get("NFD_RT_BUILD_DIR", os.path.join(REPO, "build", "dev"))
    if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        pytest.skip(f"no installed nfd_rt wheel and no build tree at {build} (set NFD_RT_BUILD_DIR)")
    prefix = tmp_path_factory.mktemp("prefix")
    _run(["cmake", "--install", build, "--prefix", str(prefix)])
    found = [os.path.join(root) for root, _, files in os.walk(prefix) if "nfd_rtConfig.cmake" in files]
    assert found, f"cmake --install put no nfd_rtConfig.cmake under {prefix}"
    return found[0]


@pytest.fixture(scope="module")
def example(cmake_dir, tmp_path_factory) -> str:
    build = tmp_path_factory.mktemp("example")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", os.path.join(REPO, "examples", "c"), "-B", str(build), f"-Dnfd_rt_DIR={cmake_dir}", *gen])
    _run(["cmake", "--build", str(build)])
    exe = build / "nfd_example"
    assert exe.exists()
    return str(exe)


def test_example_writes_16_frames(example, tmp_path):
    model = tmp_path / "micro.nfd"
    model.write_bytes(random_nfd(MICRO))
    out = tmp_path / "out"
    out.mkdir()
    r = _run([example, str(model), str(out)])
    assert "16 frames in" in r.stdout and "FPS" in r.stdout
    header = f"P6\n{MICRO.frame_width} {MICRO.frame_height}\n255\n".encode()
    for i in range(16):
        data = (out / f"frame_{i:03d}.ppm").read_bytes()
        assert data.startswith(header)
        assert len(data) == len(header) + MICRO.frame_width * MICRO.frame_height * 3
    assert not (out / "frame_016.ppm").exists()


def test_example_runs_an_oasis_file(example, tmp_path):
    """The same C program, unchanged, on an Oasis file: the ABI knows no architecture."""
    import nfd_rt

    cfg = nfd_rt.configs.get("oasis-tiny")
    model = tmp_path / "oasis-tiny.nfd"
    model.write_bytes(random_nfd(cfg))
    out = tmp_path / "out"
    out.mkdir()
    r = _run([example, str(model), str(out)])
    assert "16 frames in" in r.stdout
    header = f"P6\n{cfg.frame_width} {cfg.frame_height}\n255\n".encode()
    data = (out / "frame_015.ppm").read_bytes()
    assert data.startswith(header) and len(data) == len(header) + cfg.frame_width * cfg.frame_height * 3


def test_example_reports_a_bad_file(example, tmp_path):
    bad = tmp_path / "bad.nfd"
    bad.write_bytes(random_nfd(MICRO)[:50])
    r = subprocess.run([example, str(bad), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "runs past the end" in r.stderr and str(bad) in r.stderr


def test_header_is_c99(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "t.c"
    src.write_text('#include <nfd_rt/nfd_rt.h>\nint main(void) { nfd_session_params p = nfd_session_default_params();'
                   ' return (int)p.threads; }\n')
    _run([cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
          *[f"-I{d}" for d in header_dirs()], str(src)])


def header_dirs() -> list[str]:
    """Where nfd_rt/nfd_rt.h and the generated nfd_rt/nfd_rt_version.h are: the installed package, else a build."""
    try:
        import nfd_rt

        return [nfd_rt.include_dir()]
    except FileNotFoundError:
        pass
    build = os.environ.get("NFD_RT_BUILD_DIR", os.path.join(REPO, "build", "dev"))
    generated = os.path.join(build, "include")
    if not os.path.exists(os.path.join(generated, "nfd_rt", "nfd_rt_version.h")):
        pytest.skip(f"no installed nfd_rt and no build tree with the generated version header at {build}")
    return [os.path.join(REPO, "csrc", "include"), generated]


def test_many_worlds_from_c(example, tmp_path):
    """nfd_model_load / nfd_session_create / nfd_model_free early / nfd_step_batch / nfd_session_fork from C."""
    worlds = os.path.join(os.path.dirname(example), "nfd_worlds")
    model = tmp_path / "micro.nfd"
    model.write_bytes(random_nfd(MICRO))
    r = _run([worlds, str(model), "4"])
    assert "batched 4 sessions" in r.stdout and r.stdout.rstrip().endswith("ok"), r.stdout
    assert "max |parent - fork| = 0" in r.stdout


def test_snapshot_from_c(example, tmp_path):
    """nfd_session_snapshot (size first), nfd_session_create_from_snapshot, nfd_session_open_snapshot: restored
    sessions continue bitwise; a short buffer and damaged blobs are clear errors. The blob written by C restores in
    Python."""
    import nfd_rt

    prog = os.path.join(os.path.dirname(example), "nfd_snapshot")
    model = tmp_path / "micro.nfd"
    model.write_bytes(random_nfd(MICRO))
    snap = tmp_path / "world.snap"
    r = _run([prog, str(model), str(snap)])
    out = r.stdout
    assert out.rstrip().endswith("ok"), out
    frames = 2 * (MICRO.sink_frames + MICRO.window) + 3
    assert f"restored sessions: {2 * MICRO.window + 3} frames bitwise equal" in out
    size = snap.stat().st_size
    assert f"snapshot at frame {frames}: {size} bytes" in out
    assert (f"buffer one byte short: NFD_ERROR_INVALID_ARGUMENT (size_out {size}): nfd_session_snapshot: the "
            f"buffer holds {size - 1} bytes, the snapshot needs {size}") in out
    assert f"truncated blob: NFD_ERROR_INVALID_ARGUMENT: snapshot: truncated: expected {size} bytes, got {size - 10}" in out
    assert "flipped bit: NFD_ERROR_INVALID_ARGUMENT: snapshot: corrupted: its CRC-32C is" in out
    blob = snap.read_bytes()
    info = nfd_rt.snapshot_info(blob)
    assert info["frame_index"] == frames and info["seed"] == 7
    restored = nfd_rt.Session(model, snapshot=blob)
    assert restored.frame_index == frames and restored.seed == 7
