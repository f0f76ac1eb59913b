"""The benchmark runs end to end on `tiny` and writes valid JSON (speed is not asserted here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FPS = str(ROOT / "benchmarks" / "fps.py")


def fps(*args, timeout=600):
    return subprocess.run([sys.executable, FPS, *args], capture_output=True, text=True, timeout=timeout)


def test_fps_benchmark_smoke(tmp_path):
    pytest.importorskip("torch", reason="needs torch for the PyTorch baselines")
    out = tmp_path / "r.json"
    # compile-static with the aot_eager backend: the runner's plumbing (one whole-frame graph per cache phase,
    # recompile count) without Inductor's minutes of code generation.
    r = fps("--config", "tiny", "--frames", "3", "--threads", "1", "--out", str(out), "--markdown", "--curve",
            "--curve-runners", "nfd_rt,torch-static", "--compile-backend", "aot_eager", "--no-progress")
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["complete"] is True
    runners = result["runners"]
    bf16 = result["environment"]["cpu_default_dtype"] == "bfloat16"  # the CPU computes bf16 (AVX512-BF16 / AMX)
    names = ("nfd_rt[cpu,float32]", "eager", "torch-static", "no-cache", "compile-static")
    if bf16:  # nfd_rt in bf16 beside fp32; torch-static and compile-static in bf16 beside fp32
        names += ("nfd_rt[cpu,bfloat16]", "torch-static[bfloat16]", "compile-static[bfloat16]")
    # onnxruntime[cpu] runs where nfd_rt.onnx_runtime and onnxruntime are installed, else it is listed as skipped.
    assert set(runners) - set(names) <= {"onnxruntime[cpu]"} and set(runners) >= set(names)
    if "onnxruntime[cpu]" in runners:
        names += ("onnxruntime[cpu]",)
    else:
        assert "onnxruntime" in result["skipped_runners"]
    # Interleaved on the CPU: every runner warmed up first (compile-static last: compiling takes minutes), then
    # one timed frame of each in turn; the load average around the timed frames is recorded.
    warmed = [line.split()[2] for line in r.stderr.splitlines() if line.startswith("warming up ")]
    assert warmed[-1].startswith("compile-static") and len(warmed) == len(names)
    assert result["interleaved"] is True and result["load_average_before_timing"] >= 0
    full = result["config"]["sink_frames"] + result["config"]["window"] + 1
    for name in names:
        rr = runners[name]
        assert rr["fps"] > 0 and rr["ms_p99"] >= rr["ms_p50"] > 0
        # Steady state by default: every timed frame saw a full cache, and the JSON says so frame by frame.
        assert rr["visible_frames"] == [full] * rr["frames"] and rr["full_cache"] is True
        assert len(rr["ms"]) == rr["frames"]
    assert runners["eager"]["warmup_frames"] == full  # sinks + window + 1
    assert runners["no-cache"]["prefilled_context"] is True
    # Every runner makes the same video: first frame against eager's (same weights, seed and actions).
    for name in ("nfd_rt[cpu,float32]", "torch-static", "compile-static"):
        assert runners[name]["first_frame_vs_eager"]["max_abs"] <= 1
    for name in names:  # bf16 runners: within bf16 rounding of the fp32 frame
        if "bfloat16" in name:
            assert runners[name]["first_frame_vs_eager"]["mean_abs"] <= 3
    assert runners["no-cache"]["first_frame_vs_eager"] is None  # its context was pre-filled with noise
    # The attention path each PyTorch runner took (torch.profiler): the fused kernel for the static ones.
    assert any("math" in k for k in runners["eager"]["profile"]["attention_events"])
    assert any("flash" in k for k in runners["torch-static"]["profile"]["attention_events"])
    if bf16:  # the bf16 baseline's matrix products ran on oneDNN's bf16 kernels (AMX or AVX512-BF16)
        kernels = runners["torch-static[bfloat16]"]["profile"]["onednn_kernels_per_frame"]
        assert any(k.startswith("matmul") and ("bf16" in k or "amx" in k) for k in kernels), kernels
    cs = runners["compile-static"]
    # Its curve is not asked for: the cache-filling frames run eagerly, one graph (the full-cache frame) is
    # compiled, and none is recompiled during the timed frames.
    assert cs["graphs_compiled"] == 1 and cs["recompiles_during_timed_frames"] == 0
    assert cs["compile_filling_frames"] is False
    # Ratios against each baseline and the strongest one.
    strongest = result["strongest_baseline"]
    ours = [n for n in names if n.startswith("nfd_rt")]
    best = max(ours, key=lambda n: runners[n]["fps"])
    assert strongest not in ours and result["best"] == best
    assert result["ratio_vs_strongest_baseline"] == pytest.approx(runners[best]["fps"] / runners[strongest]["fps"])
    assert set(result["ratios"]) == {f"{best} / {n}" for n in names if n not in ours}
    # The curve: one rollout from reset, visible frames 1 .. full, only for the runners asked for.
    c = runners["torch-static"]["curve"]
    assert c["visible_frames"][:full] == list(range(1, full + 1)) and len(c["ms"]) == len(c["visible_frames"])
    assert "curve" in runners["nfd_rt[cpu,float32]"] and "curve" not in runners["eager"]
    assert result["config"]["name"] == "tiny" and result["environment"]["commit"]
    assert result["cost"]["flops_per_frame"] > 0
    assert "| nfd_rt[cpu,float32] |" in r.stdout and "Steady state" in r.stdout
    # The CPU roofline: a measured GEMM peak, and each runner's fraction of it (of nominal FLOPs: nfd_rt's
    # Winograd and phase convolutions do fewer multiply-adds, so its effective fraction may pass 1).
    assert 0 < result["peak_fp32_gemm_tflops_measured"] < 100
    assert all(runners[name]["fraction_of_peak"] > 0 for name in names)
    assert "OpenBLAS" in result["environment"]["blas"]
    # The README's tables come from stored results.
    again = fps("--markdown-from", str(out), timeout=60)
    assert again.returncode == 0 and "| nfd_rt[cpu,float32] |" in again.stdout and "Roofline peak" in again.stdout
    assert "Strongest baseline: " in again.stdout


def test_fps_oasis_runners_smoke(tmp_path):
    """Oasis: nfd_rt against upstream's recompute loop, the reference's cached sampler and the static baseline,
    eager and compiled (aot_eager: the plumbing without Inductor's code generation), every timed frame at a full
    window after a pre-filled context; ratios against every baseline of the same run and the strongest named."""
    import math

    pytest.importorskip("torch", reason="needs torch for the PyTorch baselines")
    out = tmp_path / "o.json"
    r = fps("--config", "oasis-tiny", "--frames", "2", "--threads", "1", "--out", str(out), "--no-profile",
            "--runners", "nfd_rt,oasis-compile-static,oasis-static,oasis-cached,oasis-recompute",
            "--compile-backend", "aot_eager", "--no-progress", "--markdown", "--dtype", "float32", "--no-interleave",
            "--torch-dtypes", "float32")
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "fps" and result["schema_version"] == 1 and result["complete"] is True
    assert result["environment"]["commit"] and result["config"]["architecture"] == "oasis"
    assert result["runners"]["oasis-static"]["torch_dtype"] == "float32"
    assert result["runners"]["oasis-compile-static"]["torch_dtype"] == "float32"
    runners = result["runners"]
    baselines = ("oasis-recompute", "oasis-cached", "oasis-static", "oasis-compile-static")
    names = ("nfd_rt[cpu,float32]",) + baselines  # float32, as the baselines
    assert set(runners) == set(names), runners.keys()
    ran = [line.split()[1] for line in r.stderr.splitlines() if line.startswith("running ")]
    assert sorted(ran) == sorted(names) and ran[-1] == "oasis-compile-static"  # each ran once, compiled last
    full = result["config"]["max_frames"]
    assert result["steps"] == len(result["config"]["timesteps"])
    for name in names:
        rr = runners[name]
        timed = 1 if name == "oasis-recompute" else 2  # the recompute loop times half the frames (slow)
        assert "error" not in rr, rr.get("error")
        assert rr["frames"] == timed == len(rr["ms"]) and all(ms > 0 for ms in rr["ms"]) and rr["fps"] > 0
        assert rr["visible_frames"] == [full] * timed and rr["full_cache"] and rr["prefilled_context"] is True
        assert len(rr["load_average"]) == 2
    assert runners["oasis-recompute"]["sampler"] == "recompute" and runners["oasis-cached"]["sampler"] == "cached"
    cs = runners["oasis-compile-static"]
    # The pre-fill's write passes run eagerly; the frames after it are at a full window: one graph, compiled in
    # the warm-up frame, none during the timed frames.
    assert cs["graphs_compiled"] == 1 and cs["recompiles_during_timed_frames"] == 0 and cs["graph_breaks"] == 0
    assert cs["compile_mode"] == "default" and cs["compile_backend"] == "aot_eager"
    # Ratios of nfd_rt to every baseline of this run, each its FPS over the baseline's; the strongest named.
    assert result["best"] == "nfd_rt[cpu,float32]"
    ours = runners["nfd_rt[cpu,float32]"]["fps"]
    assert result["ratios"] == pytest.approx({f"nfd_rt[cpu,float32] / {n}": ours / runners[n]["fps"] for n in baselines})
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    strongest = max(baselines, key=lambda n: runners[n]["fps"])
    assert result["strongest_baseline"] == strongest
    assert result["ratio_vs_strongest_baseline"] == pytest.approx(ours / runners[strongest]["fps"])
    # The cost model: upstream's loop does far more work a frame than the cached sampler.
    assert result["cost"]["recompute_flops_per_frame"] > result["cost"]["flops_per_frame"] > 0
    assert f"Strongest baseline: {strongest}" in r.stdout and "| oasis-recompute |" in r.stdout


def test_fps_never_overwrites_a_result(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    r = fps("--config", "tiny", "--frames", "1", "--skip-baselines", "--no-profile", "--out", str(out),
            timeout=120)
    assert r.returncode != 0 and "exists" in r.stderr and out.read_text() == "{}"
    # The default name is new each time, beside what is there.
    for _ in range(2):
        r = fps("--config", "tiny", "--frames", "1", "--skip-baselines", "--no-profile", "--threads", "1",
                "--out-dir", str(tmp_path), timeout=120)
        assert r.returncode == 0, r.stderr
    made = sorted(p.name for p in tmp_path.glob("tiny_cpu_s4_t1_*.json"))
    assert len(made) == 2 and made[0] != made[1]


def test_markdown_labels_a_partial_cache(tmp_path):
    """A stored result whose timed frames saw a partly filled cache says so above its table."""
    stored = ROOT / "benchmarks" / "results" / "h100-2026-11-25" / "fps_nfd-310m_cuda_baselines.json"
    r = fps("--markdown-from", str(stored), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Partial cache, not steady state" in r.stdout and "3 to 22 of 33" in r.stdout


def test_ops_benchmark_smoke(tmp_path):
    """benchmarks/ops.py times the runtime's own ops (set_timing) on a frame's shapes, with roofline fields."""
    out = tmp_path / "ops.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--config", "tiny", "--threads", "1",
                        "--only", "linear,attention,groupnorm", "--samples", "2", "--target-ms", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    rows = {row["name"]: row for row in res["ops"]}
    assert {row["op"] for row in res["ops"]} == {"linear", "attention", "groupnorm"}
    att = next(row for row in res["ops"] if row["op"] == "attention")
    # tiny: 4 denoising passes x 4 layers + the cache-write pass's first 3 layers, over a full cache of 10 frames.
    assert att["calls_per_frame"] == 19 and "over 160 keys" in att["name"]
    for row in rows.values():
        assert "error" not in row, row
        assert row["ms"] > 0 and len(row["ms_samples"]) == 2 and row["of_roofline"] > 0
        assert row["bound_by"] in ("compute", "memory")
    assert res["ceilings"]["peak_tflops"] > 0 and res["ceilings"]["peak_gbs"] > 0
    assert res["sum_ms_per_frame"] == pytest.approx(sum(row["ms_per_frame"] for row in rows.values()))
    assert "| op | calls/frame |" in r.stdout


def test_gpu_run_script_dry_run(tmp_path):
    """tools/gpu/run.sh without a GPU: CUDA steps are skipped and said to be, the results are packed."""
    import tarfile

    env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), NO_GPU="1",
               STEPS="probe,op_tests,ncu", PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "run.sh")], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["probe"]["status"] == "passed"
    assert steps["op_tests"]["status"] == "skipped" and steps["op_tests"]["reason"] == "no GPU"
    assert steps["ncu"]["status"] == "skipped" and summary["gpu"] is False
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as t:
        assert "./probe.log" in t.getnames()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.tar.gz", "run.log", "summary.json"]


def test_worlds_benchmark_smoke(tmp_path):
    """benchmarks/worlds.py: batched steps and both speculation modes run and write their tables (no timing
    asserted)."""
    out = tmp_path / "w.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "worlds.py"), "--batch-sizes", "1,2",
                        "--batch-frames", "3", "--repeat", "0.9", "--speculate", "2", "--speculation-frames", "12",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert [row["sessions"] for row in result["batch"]["rows"]] == [1, 2]
    cases = [row["case"] for row in result["speculation"]["exact"]]
    assert cases[0] == "repeat p=0.9" and "demo scripted player" in cases
    # How many frames speculation serves depends on timing; what it may serve does not. A frame can only be served
    # when its action repeats the previous one (the warm-up steps repeat actions[0]), and each change of action
    # throws away at most --speculate frames.
    from nfd_rt.demo import MODEL_PATH
    from nfd_rt.export import read_header

    cfg = read_header(MODEL_PATH)[1]
    warm = cfg.sink_frames + cfg.window + 1  # benchmarks/worlds.py's warm()
    for row in result["speculation"]["exact"]:
        repeats = round(row["actions_repeated"] * (12 - 1))
        served, discarded = row["exact"]["stats"]["served"], row["exact"]["stats"]["discarded"]
        assert 0 <= served <= warm + repeats, row
        assert 0 <= discarded <= 2 * (12 - 1 - repeats), row
    assert "| sessions |" in r.stdout and "Parallel speculation" in r.stdout


def test_gym_vec_benchmark_smoke(tmp_path):
    """benchmarks/gym_vec.py: the vector env, single envs and bare step_batch run and write their table (no timing
    asserted)."""
    pytest.importorskip("gymnasium", reason="needs gymnasium (the `gym` extra)")
    out = tmp_path / "g.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gym_vec.py"), "--num-envs", "2", "--steps", "2",
                        "--rounds", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    bench = json.loads(out.read_text())["bench"]
    assert set(bench["runners"]) == {"vector", "single", "step_batch"} and bench["full_cache"] is True
    assert all(r["frames"] == 2 * 2 * 2 and r["fps"] > 0 for r in bench["runners"].values())
    assert "| `VectorEnv` (one `step_batch` a step) |" in r.stdout


def test_fps_benchmark_leaves_no_files_behind(tmp_path):
    """Its model file went to /tmp/nfd_bench_*/ and stayed there (7 MiB for tiny at every run)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, FPS, "--config", "tiny", "--frames", "1", "--warmup", "0", "--threads", "1",
                        "--skip-baselines", "--no-profile", "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(tmp)))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["complete"] is True
    assert list(tmp.iterdir()) == []


def test_every_benchmark_writes_the_common_header():
    """One schema: each benchmark that writes a result JSON starts it with benchmarks/common.py's header
    (benchmark name, schema version, the one environment record)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    h = common.result_header("x")
    assert h["benchmark"] == "x" and h["schema_version"] == common.SCHEMA_VERSION
    assert {"date", "cpu", "commit", "blas", "cpu_fp32_gemm", "load_average", "cores"} <= set(h["environment"])
    writers = [p for p in (ROOT / "benchmarks").glob("*.py") if "json.dump" in p.read_text() or
               "write_text(json.dumps" in p.read_text()]
    assert len(writers) >= 7
    for p in writers:
        name = p.stem
        assert f'result_header("{name}"' in p.read_text(), f"{p.name} does not start its result with result_header"


def test_ops_benchmark_lists_exactly_the_calls_of_a_frame(tmp_path):
    """ops.py's table of a frame's op calls (op, output shape, calls) equals what the runtime's dispatcher counts
    while a session makes a frame (nfd_rt._core.op_trace_*): a model change that the table misses fails here."""
    out = tmp_path / "ops.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--config", "tiny", "--threads", "1",
                        "--samples", "1", "--target-ms", "0.2", "--no-peers", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    calls = json.loads(out.read_text())["frame_calls"]
    assert calls["matches_this_table"] is True, calls["differences"]
    runtime = {(op, tuple(shape)): n for op, shape, n in calls["runtime"]}
    assert runtime[("attention", (16, 128))] == 19 and sum(runtime.values()) > 200


def test_fps_waypoint_smoke(tmp_path):
    """fps.py --config waypoint-tiny: nfd_rt and the static baseline (eager, compiled with aot_eager) at an injected
    full cache; latent and RGB frames/s (4 a latent); the injected snapshot is one the runtime accepts, at the frame
    index asked, with exactly the frames that frame sees."""
    pytest.importorskip("torch", reason="needs torch for the PyTorch baselines")
    out = tmp_path / "w.json"
    r = fps("--config", "waypoint-tiny", "--frames", "2", "--threads", "1", "--out", str(out), "--torch-dtypes",
            "float32", "--compile-backend", "aot_eager", "--no-progress")
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["history_frames"] == 8
    runners = result["runners"]
    assert {"nfd_rt[cpu,float32]", "waypoint-static-eager[float32]", "waypoint-static-compile[float32]"} <= set(runners)
    # No --compile-mode: Inductor's default mode on the CPU (max-autotune, CUDA graphs included, on a GPU).
    assert runners["waypoint-static-compile[float32]"]["compile_mode"] == "default"
    assert set(result["ratios"]) >= {"nfd_rt[cpu,float32] / waypoint-static-compile[float32]"}
    strongest = max((n for n in runners if n.startswith("waypoint-static")), key=lambda n: runners[n]["fps"])
    assert result["strongest_baseline"] == strongest and result["best"] == "nfd_rt[cpu,float32]"
    assert result["ratio_vs_strongest_baseline"] == runners["nfd_rt[cpu,float32]"]["fps"] / runners[strongest]["fps"]
    for name, e in runners.items():
        assert "error" not in e, (name, e)
        assert e["full_cache"] and e["frames"] == 2 and abs(e["rgb_fps"] - 4 * e["latent_fps"]) < 1e-9
        assert [v["frame_index"] for v in e["visible_frames"]] == [9, 10]  # after one warm-up frame at 8
        assert e["visible_frames"][0]["local"] == 3 and e["visible_frames"][0]["global"] == 5  # 2,4,6,8 + itself
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fps_waypoint

    import nfd_rt
    from nfd_rt import configs

    cfg = configs.get("waypoint-tiny")
    path = tmp_path / "w.nfd"
    from nfd_rt.reference.waypoint import WaypointModel

    nfd_rt.export.save(WaypointModel(cfg, init_seed=0), str(path))
    s0 = nfd_rt.Session(str(path), dtype="float32", threads=1)
    s0.reset()
    blob = fps_waypoint.injected_snapshot(s0.snapshot(), cfg, "float32", 13)
    s = nfd_rt.Session(str(path), dtype="float32", threads=1, snapshot=blob)
    assert s.frame_index == 13
    # global layers: the even frames less than 8 back (6, 8, 10, 12); local layers: 11, 12
    assert nfd_rt.snapshot_info(s.snapshot())["frames"] == [6, 8, 10, 11, 12]


def test_fps_oasis_static_runners_per_torch_dtype(tmp_path):
    """oasis-static runs once per --torch-dtypes entry, as torch-static: the first dtype unnamed, the others named
    (oasis-static[bfloat16]), each recording its torch_dtype, so one run compares bf16 nfd_rt with bf16 PyTorch."""
    pytest.importorskip("torch", reason="needs torch for the PyTorch baselines")
    from nfd_rt import _core

    if not _core.cpu_bf16()["ok"]:  # a dict: {'ok', 'isa', 'why', 'onednn'}
        pytest.skip(f"no bf16 runners on this CPU: {_core.cpu_bf16()['why']}")
    out = tmp_path / "b.json"
    r = fps("--config", "oasis-tiny", "--frames", "1", "--threads", "1", "--out", str(out), "--no-profile",
            "--runners", "nfd_rt,oasis-static", "--torch-dtypes", "float32,bfloat16", "--no-progress")
    assert r.returncode == 0, r.stderr
    runners = json.loads(out.read_text())["runners"]
    assert set(runners) == {"nfd_rt[cpu,float32]", "nfd_rt[cpu,bfloat16]", "oasis-static", "oasis-static[bfloat16]"}
    assert runners["oasis-static"]["torch_dtype"] == "float32"
    assert runners["oasis-static[bfloat16]"]["torch_dtype"] == "bfloat16"
    assert all(rr["fps"] > 0 and rr["full_cache"] for rr in runners.values())


def test_oasis_interleaved_smoke(tmp_path):
    """benchmarks/oasis_interleaved.py: the runners warmed up at a full window, then one timed frame of each per
    round; ratios of nfd_rt to each baseline by mean, median and best wall time and by CPU seconds."""
    import math

    pytest.importorskip("torch", reason="needs torch for the PyTorch baselines")
    out = tmp_path / "i.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "oasis_interleaved.py"), "--config", "oasis-tiny",
                        "--threads", "1", "--rounds", "2", "--compile-backend", "aot_eager", "--out", str(out),
                        "--runners", "nfd_rt,oasis-compile-static,oasis-recompute"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "oasis_interleaved" and result["complete"] is True
    runners = result["runners"]
    assert list(runners) == ["nfd_rt[cpu,float32]", "oasis-compile-static", "oasis-recompute"]
    for rr in runners.values():
        assert rr["frames"] == 2 == len(rr["s"]) == len(rr["cpu_seconds"]) and rr["s_min"] > 0
    assert runners["oasis-compile-static"]["recompiles_during_timed_frames"] == 0
    assert len(result["load_average_per_round"]) == 3
    assert set(result["ratios"]) == {"nfd_rt[cpu,float32] / oasis-compile-static", "nfd_rt[cpu,float32] / oasis-recompute"}
    for v in result["ratios"].values():
        assert set(v) == {"s_mean", "s_median", "s_min", "cpu_seconds_mean"}
        assert all(math.isfinite(x) and x > 0 for x in v.values())
    assert result["strongest_baseline"] == min(("oasis-compile-static", "oasis-recompute"),
                                               key=lambda k: runners[k]["s_mean"])


def test_ops_variants_keep_the_switches_the_environment_sets(monkeypatch):
    """ops.py under a GPU run's working switches (tools/gpu/new_paths.py turned a broken path off): the default
    variant runs with them, a variant that would turn the path back on is not run, and the environment is left as
    it was."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ops as ops_bench

    seen = []

    class Core:
        def clear_kernels_used(self):
            pass

        def kernels_used(self):
            return {}

    def time_op(ops, case, kw, target_s, samples):
        seen.append((os.environ.get("NFD_RT_ATTENTION_KEYS"), os.environ.get("NFD_RT_ATTENTION_ROWS")))
        return [1e-3]

    monkeypatch.setattr(ops_bench, "time_op", time_op)
    monkeypatch.setenv("NFD_RT_ATTENTION_KEYS", "64")
    monkeypatch.delenv("NFD_RT_ATTENTION_ROWS", raising=False)
    variants = {"ours": {}, "ours 64x128": {"NFD_RT_ATTENTION_KEYS": "128"},
                "ours rows=64": {"NFD_RT_ATTENTION_ROWS": "64"}, "ours again": {}}
    out = ops_bench.time_variants(Core(), None, None, {}, 0.1, 1, variants)
    assert seen == [("64", None), ("64", "64"), ("64", None)]
    assert out["ours 64x128"] == {"error": "not run: the environment sets NFD_RT_ATTENTION_KEYS=64"}
    assert all("ms" in out[k] for k in ("ours", "ours rows=64", "ours again"))
    assert os.environ["NFD_RT_ATTENTION_KEYS"] == "64" and "NFD_RT_ATTENTION_ROWS" not in os.environ
