"""The tools of a GPU visit (tools/gpu/), checked where CI runs: without a GPU.

A GPU lease is one command of a few minutes on a bare machine: a script that breaks there loses the visit. So:
prepare_carry.sh must work from a clean environment and carry wheels that satisfy the build; run.sh's dry run
must put the figure of record first and fall back (every new path off, then a bisection naming the broken one)
when the headline fails; the switch list, the docs and the fallback tool agree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU_TOOLS = REPO / "tools" / "gpu"
sys.path.insert(0, str(GPU_TOOLS))
import new_paths  # noqa: E402  (tools/gpu/new_paths.py)
import vendor_build  # noqa: E402  (tests/tools/vendor_build.py)



def carry_pins() -> list[str]:
    lines = (GPU_TOOLS / "carry-requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_carried_pins_satisfy_the_build_requirements():
    """Each pinned wheel is a version pyproject's [build-system] accepts: the GPU build uses exactly these."""
    from packaging.requirements import Requirement

    requires = {Requirement(r).name: Requirement(r) for r in
                tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]}
    pins = [Requirement(p) for p in carry_pins()]
    assert {p.name for p in pins} == {"nlohmann-json", "scipy-openblas32", "nvidia-cutlass"}
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin} must pin one version"
        assert requires[pin.name].specifier.contains(spec.version), f"{pin} is outside pyproject's {requires[pin.name]}"


@pytest.fixture(scope="module")
def clean_carry(tmp_path_factory):
    """prepare_carry.sh --flashinfer (the recommended GPU run) once in a fresh virtual environment with none of the
    packages (vendor_build.make_carry; in CI, run in the background before the tests): (python, carry dir)."""
    r = vendor_build.prebuilt("carry.json") or vendor_build.make_carry(tmp_path_factory.mktemp("carry"))
    if r["unreachable"]:
        pytest.skip(f"the package registry is unreachable: {r['unreachable']}")
    assert r["rc"] == 0, r["output"]
    return r["python"], Path(r["carry"])


def test_prepare_carry_works_from_a_clean_environment(clean_carry):
    """The script in a fresh virtual environment with none of the packages: one wheel per pin, and those wheels,
    installed offline as run.sh's `wheels` step does, give the headers and library the CMake build looks up; the
    cuDNN attention headers come as one archive with the three folders run.sh passes to CMake, FlashInfer's as
    another (its headers, CCCL, CUTLASS and cuRAND's headers)."""
    py, carry = clean_carry
    with tarfile.open(carry / "cudnn-headers.tgz") as t:
        names = set(t.getnames())
    assert {"frontend/include/cudnn_frontend.h", "cudnn/cudnn.h", "nvrtc/nvrtc.h"} <= names, sorted(names)[:20]
    with tarfile.open(carry / "flashinfer-data.tgz") as t:
        names = set(t.getnames())
    assert {"include/flashinfer/attention/hopper/prefill_sm90.cuh", "include/flashinfer/attention/prefill.cuh",
            "cutlass/include/cute/tensor.hpp", "cutlass/tools/util/include/cutlass/util/command_line.h",
            "curand/include/curand.h", "cccl/libcudacxx/include/cuda/std/cstdint"} <= names, sorted(names)[:20]
    wheels = sorted(p.name for p in (carry / "wheels").glob("*.whl"))
    assert len(wheels) == len(carry_pins()), wheels
    for pin in carry_pins():
        stem = pin.split("==")[0].replace("-", "_") + "-" + pin.split("==")[1]
        assert any(w.startswith(stem) for w in wheels), f"no wheel for {pin} in {wheels}"
    install = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, (carry /
                              "wheels").glob("*.whl"))], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    # The lookups of CMakeLists.txt (nfd_python_path), in the clean environment.
    probe = ("import importlib.util as u, os\n"
             "root = lambda m: u.find_spec(m).submodule_search_locations[0]\n"
             "print(os.path.isfile(os.path.join(root('cutlass_library'), 'source', 'include', 'cutlass', 'cutlass.h')))\n"
             "print(os.path.isfile(os.path.join(root('nlohmann_json'), 'include', 'nlohmann', 'json.hpp')))\n"
             "import scipy_openblas32 as b; print(any(f.startswith('libscipy_openblas') for f in os.listdir(b.get_lib_dir())))\n")
    found = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=60)
    assert found.stdout.split() == ["True", "True", "True"], found.stdout + found.stderr


def test_vendor_engines_compile_against_the_carried_headers(clean_carry, tmp_path):
    """What run.sh builds on the GPU machine: CMake configured with the carried cuDNN and FlashInfer headers
    (NFD_RT_CUDNN=ON, NFD_RT_FLASHINFER=ON, sm_90) and cuBLAS's (NFD_RT_CUBLASLT=ON, as the GPU image's PyTorch
    brings them) compiles the cuDNN engines (attention, convolution, the shared loader), FlashInfer's attention and
    its Hopper attention (sm_90a), the cuBLASLt engine, and the ops that call them
    (vendor_build.OBJECTS; in CI compiled in the background, at the lowest priority, while the other tests run).
    The pip build finds none of these headers, so without this test that code would never be compiled in CI."""
    _, carry = clean_carry
    r = vendor_build.prebuilt("build.json") or vendor_build.build_objects(carry, tmp_path)
    if "skip" in r:
        pytest.skip(r["skip"])
    assert r["configure_rc"] == 0, r["configure_output"]
    for on in ("nfd_rt: cuDNN engines ON", "nfd_rt: FlashInfer attention ON", "nfd_rt: FlashInfer Hopper attention ON",
               "nfd_rt: cuBLASLt GEMMs ON"):
        assert on in r["configure_output"], r["configure_output"]
    assert r["build_rc"] == 0, r["build_output"]
    assert not r["empty"], f"objects missing or empty: {r['empty']}"


def test_a_background_vendor_build_that_stops_names_why(tmp_path, monkeypatch):
    """CI's background build (NFD_RT_PREBUILT_VENDOR): a step that raised (e.g. a CMake configure starved past its
    limit at nice 19) fails the waiting test with the traceback, and one that ended without a result fails with
    its log, never with an empty message or a wait to the limit."""
    monkeypatch.setenv("NFD_RT_PREBUILT_VENDOR", str(tmp_path))
    (tmp_path / "build.json").write_text(json.dumps({"error": "subprocess.TimeoutExpired: cmake timed out"}))
    with pytest.raises(AssertionError, match="stopped on an error:\n.*TimeoutExpired"):
        vendor_build.prebuilt("build.json")
    (tmp_path / "log").write_text("prepare_carry.sh: no space left on device\n")
    (tmp_path / "exit").touch()
    with pytest.raises(AssertionError, match="ended without writing carry.json:\n.*no space left"):
        vendor_build.prebuilt("carry.json", timeout=30)
    (tmp_path / "carry.json").write_text(json.dumps({"rc": 0}))
    assert vendor_build.prebuilt("carry.json") == {"rc": 0}


def test_every_new_path_has_a_documented_switch():
    """new_paths.NEW_PATHS is the fallback's list: each switch is in docs/cuda-backend.md's table with its
    off value, and env-off turns every one off."""
    doc = (REPO / "docs" / "cuda-backend.md").read_text()
    for name, (off, _) in new_paths.NEW_PATHS.items():
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{name}`")), None)
        assert row is not None, f"{name} is not in docs/cuda-backend.md's switch table"
        assert f"`{off}`" in row, f"{name}'s row does not give its off value {off!r}: {row}"
    words = subprocess.run([sys.executable, str(GPU_TOOLS / "new_paths.py"), "env-off"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert dict(w.split("=") for w in words) == new_paths.env_off()


def fps_json(path: Path, runners: dict) -> str:
    path.write_text(json.dumps({"runners": runners}))
    return str(path)


def test_check_accepts_a_matching_first_frame_and_refuses_the_rest(tmp_path, capsys):
    left_out = ("measured at open over 33 slots: each checked against the CUDA-core kernel, 64 rows x 128 keys folded "
                "failed (wrong result: max |diff| 0.61 against the reference kernel (limit 0.02)), 128 rows folded "
                "0.0510 ms, -> 128 rows folded")
    good = {"nfd_rt[cuda,bfloat16]": {"fps": 40.0, "first_frame_vs_eager": {"mean_abs": 0.9, "max_abs": 6},
                                      "engines": {"attention bf16 hd64 N=336 H=16 slots=33 (choice)": left_out,
                                                  "attention bf16 hd64": "ours: mma.sync m16n8k16, 128x64 tiles"}}}
    assert new_paths.check(fps_json(tmp_path / "a.json", good)) == 0  # said, but the run is good
    garbage = {"nfd_rt[cuda,bfloat16]": {"fps": 90.0, "first_frame_vs_eager": {"mean_abs": 41.0, "max_abs": 255}}}
    assert new_paths.check(fps_json(tmp_path / "b.json", garbage)) == 1
    failed = {"nfd_rt[cuda,bfloat16]": {"error": "RuntimeError: CUDA error: an illegal memory access"}}
    assert new_paths.check(fps_json(tmp_path / "c.json", failed)) == 1
    assert new_paths.check(fps_json(tmp_path / "d.json", {"eager": {"fps": 5.0}})) == 1
    assert new_paths.check(str(tmp_path / "missing.json")) == 1
    out = capsys.readouterr().out
    assert "over the limits" in out and "illegal memory access" in out and "no nfd_rt runner" in out
    assert "left an engine out: attention bf16 hd64 N=336 H=16 slots=33 (choice): " in out and "wrong result" in out


def run_dry(tmp_path, **env) -> tuple[dict, str]:
    out = tmp_path / "out"
    full = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "NO_GPU": "1", "USE_INSTALLED": "1",
            "PYTHON": sys.executable, "FPS_FRAMES": "2", "FPS_ARGS": "--no-profile", **env}
    r = subprocess.run(["bash", str(GPU_TOOLS / "run.sh")], env=full, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), (out / "run.log").read_text()


@pytest.mark.slow
def test_run_sh_dry_run_puts_the_headline_first_and_falls_back(tmp_path):
    """A dry run (no GPU, the installed nfd_rt, tiny) in which the headline's first run hangs (the test hook
    NFD_RT_DRY_HANG) and one new path is reported broken (NFD_RT_DRY_BREAK): the hung run is stopped at its share
    of the headline's time, the headline re-runs at once with every new path off, the bisection names the path,
    the later steps run with it off, and the figure of record comes back in fps.json with the baselines merged
    in. A switch the run set before the headline (run.sh turns FlashInfer's Hopper attention off when the op
    harness saw it fail) holds through the headline and after it. At most the 4 files the device tool returns."""
    summary, log = run_dry(tmp_path, STEPS="probe,build,op_tests,headline,baselines,pytest",
                           NFD_RT_DRY_BREAK="NFD_RT_ROPE_GROUP", NFD_RT_DRY_HANG="1", HEADLINE_FIRST_SHARE="0.05",
                           NFD_RT_FLASHINFER_SM90="off")
    order = [s["step"] for s in summary["steps"]]
    assert order == ["probe", "build", "op_tests", "headline", "baselines", "pytest"]
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"probe": "passed", "build": "passed", "op_tests": "skipped", "headline": "passed",
                      "baselines": "passed", "pytest": "skipped"}, summary["steps"]
    assert summary["headline"]["broken"] == ["NFD_RT_ROPE_GROUP"]
    assert summary["headline"]["working_env"] == {"NFD_RT_FLASHINFER_SM90": "off", "NFD_RT_ROPE_GROUP": "1"}
    assert "switches for the rest of the run: NFD_RT_FLASHINFER_SM90=off NFD_RT_ROPE_GROUP=1" in log
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["fps.json", "results.tar.gz", "run.log", "summary.json"]
    fps = json.loads((out / "fps.json").read_text())
    ours = fps["runners"]["nfd_rt[cpu,float32]"]
    assert ours["fps"] > 0 and ours["first_frame_vs_eager"]["max_abs"] <= new_paths.FIRST_FRAME_LIMITS["max_abs"]
    # (on a CPU with bf16 the PyTorch runners also run in bf16: torch-static[bfloat16] may be the strongest)
    assert fps["runners"]["torch-static"]["fps"] > 0
    assert fps["strongest_baseline"].split("[")[0] in ("torch-static", "eager")
    assert fps["ratio_vs_strongest_baseline"] > 0
    headline = json.loads(subprocess.run(["tar", "-xzOf", str(out / "results.tar.gz"), "./headline.json"],
                                         capture_output=True, check=True).stdout)
    assert [r["ok"] for r in headline["runs"]] == [False, True]
    assert headline["runs"][0]["rc"] == 124 and headline["runs"][0]["seconds"] < 30, headline["runs"][0]
    bisect_runs = {r["run"].split(" ")[0]: r["ok"] for r in headline["bisect"]["runs"]}
    assert "NFD_RT_FLASHINFER_SM90" not in bisect_runs  # set before the headline: not turned on to be bisected
    assert bisect_runs.pop("NFD_RT_ROPE_GROUP") is False and all(bisect_runs.values()), headline["bisect"]


def test_run_sh_models_step_times_each_public_model(tmp_path):
    """run.sh's `models` step (dry run: the tiny Oasis and Waypoint configs on the CPU): nfd_rt alone on each of
    MODEL_CONFIGS, each in its own JSON inside results.tar.gz, at a full cache."""
    summary, log = run_dry(tmp_path, STEPS="models")
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [("models", "passed")], summary["steps"]
    for config, fps_key in (("oasis-tiny", "fps"), ("waypoint-tiny", "rgb_fps")):
        text = subprocess.run(["tar", "-xzOf", str(tmp_path / "out" / "results.tar.gz"), f"./fps_{config}.json"],
                              capture_output=True, check=True).stdout
        runners = json.loads(text)["runners"]
        assert list(runners) == ["nfd_rt[cpu,float32]"], runners.keys()
        assert runners["nfd_rt[cpu,float32]"][fps_key] > 0 and runners["nfd_rt[cpu,float32]"]["full_cache"]


def test_sdpa_bench_split_and_merge_equal_full_attention(tmp_path):
    """The micro-benchmark's split-as-batch + log-sum-exp merge (run on the GPU with cuDNN and FLASH) computes
    attention: checked on the CPU's math path at a small shape, every split count within fp32 rounding."""
    out = tmp_path / "sdpa.json"
    subprocess.run([sys.executable, str(GPU_TOOLS / "sdpa_bench.py"), "--shape", "2,24,96,32", "--splits", "1,3,4,5",
                    "--seconds", "0.5", "--device", "cpu", "--out", str(out)], check=True, capture_output=True,
                   timeout=300)
    variants = json.loads(out.read_text())["variants"]
    assert "96 keys do not split into 5" in variants["split 5"]["error"]
    for name in ("sdpa math", "math split 1 + lse merge", "math split 3 + lse merge", "math split 4 + lse merge"):
        assert variants[name]["rel_l2_vs_fp32"] < 1e-5 and variants[name]["ms"] > 0, (name, variants[name])


def test_memcheck_shapes_runs_every_call_at_real_shapes():
    """The script compute-sanitizer runs on the GPU, on the CPU at nfd-310m's shapes: every call runs."""
    r = subprocess.run([sys.executable, str(GPU_TOOLS / "memcheck_shapes.py"), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hd=64 over 33 slots" in r.stdout and "336x1024" in r.stdout and "conv_out 64->3 224x384" in r.stdout
    assert "memcheck_shapes: all calls ok" in r.stdout
