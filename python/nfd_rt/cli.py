"""`nfd-rt` command line: inspect a .nfd file, export a random model, run and score the Gridworld demo.

    nfd-rt info m.nfd
    nfd-rt export-random tiny -o m.nfd          (needs torch)
    nfd-rt export-onnx m.nfd -o m_onnx/         ONNX graphs + host-loop JSON for ONNX Runtime / TensorRT (torch)
    nfd-rt convert oasis --dit oasis500m.safetensors --vae vit-l-20.safetensors -o oasis500m.nfd   (torch)
    nfd-rt convert waypoint DIR -o m.nfd        an upstream checkpoint folder -> .nfd (docs/waypoint.md)
    nfd-rt demo [--frames 120] [--out nfd_demo.mp4]      the shipped Gridworld model, video of game | model
    nfd-rt play                                         arrow keys drive the model live (pygame)
    nfd-rt play --model waypoint.nfd [--image seed.png]  a Waypoint file with keyboard and mouse (pygame)
    nfd-rt evaluate [--sequences 100]                   position error, PSNR, coin state against the real game
    nfd-rt serve [MODEL] [--port 8000] [--ray]           players in a browser (docs/serve.md)
    (demo, play and evaluate take --steps 4|2|1: the shipped model distilled for that many steps)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ._cli_args import int_in as _int_in
from ._cli_args import pick_device as _pick_device
from ._cli_args import positive_float as _positive_float
from ._cli_args import positive_int as _positive_int


def _model_file(name: str) -> str:
    """A .nfd path, or the file of a shipped model named like `demo --model` takes it (gridworld, ...)."""
    from .demo import MODELS

    path = MODELS.get(name, name)
    if not os.path.exists(path):
        raise OSError(f"model file {path} not found (shipped models: {', '.join(MODELS)})")
    return path


def _info(args: argparse.Namespace) -> int:
    from ._native import core

    path = _model_file(args.file)
    d = core().inspect_file(path)
    cfg = json.loads(d["config"])
    tensors = d["tensors"]
    params = sum(int(np.prod(t["shape"])) for t in tensors.values())
    memory = {"cpu_float32": core().estimate_memory(path, "cpu", "float32", 0)}
    if core().built_with_cuda():
        memory["cuda_bfloat16"] = core().estimate_memory(path, "cuda", "bfloat16", 0)
    if args.json:  # one JSON document and nothing else, for `nfd-rt info m.nfd --json | jq`
        out = {"file": path, "format_version": d["format_version"], "tensors": len(tensors), "parameters": params,
               "session_bytes": {k: int(m["total"]) for k, m in memory.items()}, "config": cfg}
        if args.tensors:
            out["tensor_table"] = {name: {"dtype": t["dtype"], "shape": list(t["shape"])}
                                   for name, t in tensors.items()}
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(f"{path}: .nfd format version {d['format_version']}, model {cfg['name']!r}")
    print(f"  {len(tensors)} tensors, {params:,} parameters ({params * 4 / 2**20:.1f} MiB as float32)")
    print(f"  a CPU session needs {memory['cpu_float32']['text']}")
    if "cuda_bfloat16" in memory:
        print(f"  a CUDA bfloat16 session needs {memory['cuda_bfloat16']['text']}")
    for k in sorted(cfg):
        print(f"  {k}: {cfg[k]}")
    if args.tensors:
        for name, t in tensors.items():
            print(f"  {name}: {t['dtype']}{t['shape']}")
    return 0


def _env(args: argparse.Namespace) -> int:
    """What this installation runs on: the facts to quote in a performance report or a bug report."""
    from ._env import runtime_report

    r = runtime_report()
    lines = {
        "nfd_rt": r["nfd_rt"],
        "python": r["python"],
        "CPU": r["cpu"],
        "CUDA": r["cuda"],
        "CUDA engines": r["cuda_engines"],
        "CPU kernels": r["cpu_kernels"],
        "BLAS": r["blas"] + (f" (chosen by OPENBLAS_CORETYPE={r['OPENBLAS_CORETYPE']})"
                             if "OPENBLAS_CORETYPE" in r else ""),
        "CPU fp32 GEMM": r["cpu_fp32_gemm"],
        "CPU bf16": r["cpu_bf16"],
        "default threads": f"{r['default_threads']} (physical cores)",
    }
    if args.json:
        print(json.dumps(lines, indent=2))
    else:
        for k, v in lines.items():
            print(f"{k:16s} {v}")
    return 0


def _export_random(args: argparse.Namespace) -> int:
    try:
        from . import configs, export
        from .reference import NFDModel, OasisModel
    except ImportError as e:
        print(f"export-random needs PyTorch ({e}): pip install 'nfd_rt[torch]'", file=sys.stderr)
        return 2
    cfg = configs.get(args.config) if not args.config.endswith(".json") else configs.from_json(
        open(args.config).read())
    if getattr(cfg, "architecture", "nfd") == "waypoint":
        from .reference.waypoint import WaypointModel

        model = WaypointModel(cfg, init_seed=args.seed)
    else:
        model = (OasisModel if isinstance(cfg, configs.OasisConfig) else NFDModel)(cfg, init_seed=args.seed)
    export.save(model, args.output)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB, random {cfg.name} weights)")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from . import export
        import torch  # noqa: F401
    except ImportError as e:
        print(f"export needs PyTorch ({e}): pip install 'nfd_rt[torch]'", file=sys.stderr)
        return 2
    name, params = export.from_checkpoint(args.checkpoint, args.output, config=args.config)
    print(f"wrote {args.output} ({name}, {params / 1e6:.2f}M parameters)")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    try:
        from . import export
        import torch  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as e:
        print(f"export-onnx needs PyTorch and onnx ({e}): pip install 'nfd_rt[torch,onnx]'", file=sys.stderr)
        return 2
    spec = export.to_onnx(_model_file(args.file), args.output, opset=args.opset, vae_output=args.vae_output,
                          encoder=not args.no_encoder, batch=args.batch)
    for name in spec["files"].values():
        path = os.path.join(args.output, name)
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    axes = "dynamic axis: batch" if spec["dynamic_axes"] else f"fixed batch {args.batch}"
    print(f"wrote {os.path.join(args.output, 'nfd_onnx.json')} (opset {spec['opset']}, {axes}; "
          f"{spec['sampler']['passes_per_frame']} dit_pass runs per frame)")
    return 0


def _convert_oasis(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as e:
        print(f"convert needs PyTorch and safetensors ({e}): pip install 'nfd_rt[torch]'", file=sys.stderr)
        return 2
    from ._progress import ProgressBar
    from .convert import oasis

    bar = ProgressBar(1, "convert") if args.progress else None

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    summary = oasis.convert(args.dit, args.vae, args.output, config=args.config,
                            progress=progress if bar is not None else None)
    print(f"wrote {summary['output']} ({os.path.getsize(summary['output']) / 2**20:.1f} MiB: {summary['tensors']} "
          f"tensors, {summary['parameters']:,} parameters, config {summary['config']})")
    return 0


def _convert_waypoint(args: argparse.Namespace) -> int:
    from .convert import waypoint

    cfg = waypoint.convert(args.folder, args.output, taehv=args.taehv, ignore_options=args.ignore_option,
                           name=args.name)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB, {cfg.name}: {cfg.depth} layers x "
          f"{cfg.hidden_size}, {cfg.output_width}x{cfg.output_height} video, {cfg.frames_per_latent} frames per step)")
    return 0


def _demo_model(path: str | None, steps: int | None = None) -> str:
    """The .nfd file to run: a path, a shipped model's name, or (no --model) the shipped model for `steps`."""
    from .demo import MODEL_FOR_STEPS, MODEL_PATH, MODELS

    if path is None and steps is not None and steps not in MODEL_FOR_STEPS:
        raise ValueError(f"no shipped Gridworld model samples in {steps} steps (shipped: "
                         f"{sorted(MODEL_FOR_STEPS)}); run one at {steps} steps without distillation with "
                         f"--model gridworld --steps {steps}")
    model = MODELS.get(path, path) if path else MODELS[MODEL_FOR_STEPS[steps]] if steps else MODEL_PATH
    if not os.path.exists(model):
        raise OSError(f"model file {model} not found" + ("" if path else
                      " (a shipped demo model; retrain it with tools/train/train_demo.py or distill_demo.py)"))
    return model


def _open_session(args: argparse.Namespace):
    import tempfile

    from . import export
    from .session import Session

    device, dtype = _pick_device(args.device, args.dtype)
    model = _demo_model(args.model, args.steps)
    with tempfile.TemporaryDirectory() as tmp:  # the runtime maps the file: it may go once the session is open
        if args.steps is not None and export.read_header(model)[1].num_steps != args.steps:
            # The runtime samples the schedule stored in the file: run a copy with an even N-step schedule.
            print(f"running {os.path.basename(model)} at {args.steps} step(s), a schedule it was not trained or "
                  "distilled for", flush=True)
            model = export.with_schedule(model, os.path.join(tmp, "m.nfd"), export.uniform_schedule(args.steps))
        s = Session(model, device=device, dtype=dtype, seed=args.seed, threads=args.threads,
                    speculate=args.speculate, speculate_mode=args.speculate_mode)
    cfg = s.config
    print(f"session: {cfg.name} model on {s.device} ({dtype}), {cfg.frame_width}x{cfg.frame_height} frames, "
          f"{cfg.num_steps} steps/frame, {s.memory_bytes() / 2**20:.1f} MiB", flush=True)
    return s


def _demo(args: argparse.Namespace) -> int:
    from .demo.video import run_demo, write_video

    with _open_session(args) as s:
        video, summary = run_demo(s, args.frames, args.room, scale=args.scale, with_truth=not args.no_truth)
    path = write_video(video, args.out, fps=args.video_fps)
    panels = "the model alone" if args.no_truth else "left: the real game, right: the world model"
    if summary["interrupted"]:  # Ctrl-C: the frames so far are still a video worth keeping
        _end_progress_line()
        print(f"nfd-rt demo: interrupted after {summary['frames']} of {args.frames} frames; wrote {path} ({panels})",
              file=sys.stderr)
        return 130
    print(f"{args.frames} frames at {summary['fps']:.1f} FPS (runtime only); agent position error "
          f"{summary['mean_position_error_px']:.1f} px on average")
    print(f"wrote {path} ({panels})")
    return 0


def _end_progress_line() -> None:
    """After Ctrl-C a progress bar on a terminal is left mid-line (and ^C printed after it): start a new one."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def _play(args: argparse.Namespace) -> int:
    from .demo.play import play

    with _open_session(args) as s:
        cfg = s.config
        if args.keymap is not None or getattr(cfg, "architecture", "nfd") == "waypoint":
            return _play_controls(args, s)
        if args.image is not None:
            raise ValueError("--image is for models with their own controls (Waypoint); Gridworld starts from --room")
        result = play(s, room=args.room, scale=args.scale or 8, fps=args.fps or 15.0, show_truth=not args.no_truth,
                      max_frames=args.max_frames)
    print(f"played {result['frames']} frames, runtime {result['runtime_fps']:.1f} FPS")
    return 0


def _play_controls(args: argparse.Namespace, s) -> int:
    """A model played with its keyboard and mouse controls (Waypoint; or any model with --keymap)."""
    from .demo.play_controls import play_controls
    from .serve import protocol

    cfg = s.config
    if args.keymap is not None:
        keymap, pointer = protocol.read_keymap(args.keymap, cfg.action_dim)
    else:
        keymap, pointer = protocol.model_keymap(cfg)
    w = cfg.video_size[1]
    result = play_controls(s, keymap, pointer, scale=args.scale or max(1, 640 // w), fps=args.fps or 60.0,
                           max_steps=args.max_frames, image=args.image)
    print(f"played {result['steps']} steps ({result['frames']} frames), runtime {result['runtime_fps']:.2f} "
          "steps/s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ._progress import ProgressBar
    from .demo.evaluate import evaluate

    with _open_session(args) as s:
        bar = ProgressBar(args.sequences, "evaluate")
        result = evaluate(s, args.sequences, args.length, progress=bar.update)
    result["model_file"] = os.path.basename(_demo_model(args.model, args.steps))
    m, b = result["model"], result["repeat_last_frame"]
    print(f"{args.sequences} held-out sequences x {args.length} frames; agent found in "
          f"{100 * result['agent_found_fraction']:.1f}% of generated frames")
    print(f"  agent position error: model {m['position_error_px']:.2f} px, repeat-last-frame "
          f"{b['position_error_px']:.2f} px")
    print(f"  PSNR: model {m['psnr_db']:.2f} dB, repeat-last-frame {b['psnr_db']:.2f} dB")
    print(f"  coin state agrees with the game in {100 * m['coin_state_agreement']:.1f}% of frames "
          f"(repeat-last-frame {100 * b['coin_state_agreement']:.1f}%); collected coins still shown: "
          f"{100 * m['coins_lingering_fraction']:.1f}%; {result['fps']:.0f} frames/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


MAX_ROOM = 2**31 - 1  # Gridworld room seeds, as `nfd-rt serve` takes them


def _video_path(text: str) -> str:
    """argparse type for --out: checked before the run, not after it (a bad name would lose the whole video)."""
    ext = os.path.splitext(text)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise argparse.ArgumentTypeError(f"the video file must end in .mp4 or .gif, got {text!r}")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"folder {folder} is not writable")
    return text


def _add_session_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--model", help="a .nfd file or a shipped model: gridworld, gridworld-2step, gridworld-1step "
                   "(default: the shipped model for --steps, gridworld without it)")
    q.add_argument("--steps", type=_positive_int,
                   help="sampling steps per frame: without --model the shipped model for 4, 2 or 1 step(s); with "
                   "--model that model run at an even N-step schedule (default: the model's own schedule)")
    q.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    q.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (bf16 on cuda, and on a CPU "
                   "with AVX512-BF16 or AMX)")
    q.add_argument("--seed", type=_int_in(0, 2**64 - 1), default=0, help="noise seed of the sampler")
    q.add_argument("--threads", type=_int_in(0, 1024), default=0, help="CPU threads (0 = physical cores)")
    q.add_argument("--speculate", type=_int_in(0, 64), default=0,
                   help="frames generated ahead under the last action (0 = off; docs/batching.md)")
    q.add_argument("--speculate-mode", default="exact", choices=["exact", "parallel"],
                   help="exact: the same video, sooner; parallel: frames denoised together (faster, not identical)")


class _Version(argparse.Action):
    """--version, looked up only when asked for (the version comes from the compiled runtime)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"nfd-rt {__version__}")
        parser.exit()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (flags, required options)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "" or action.required:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nfd-rt", description="Next-Frame-Diffusion runtime",
                                formatter_class=_HelpFormatter)
    p.add_argument("--version", action=_Version, help="print the version of nfd_rt and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    q = command("info", "validate a .nfd file and print its config")
    q.add_argument("file", help="a .nfd file or a shipped model: gridworld, gridworld-2step, gridworld-1step")
    q.add_argument("--json", action="store_true", help="print one JSON document (file, sizes, config) and nothing else")
    q.add_argument("--tensors", action="store_true", help="list every tensor")
    q.set_defaults(fn=_info)

    q = command("env", "what this installation runs on: CUDA device, CPU kernels, BLAS, threads")
    q.add_argument("--json", action="store_true", help="print the same facts as one JSON object")
    q.set_defaults(fn=_env)

    q = command("export", "a trained model's PyTorch checkpoint (state_dict or checkpoint dict) -> .nfd (needs torch)")
    q.add_argument("checkpoint", help="the .pt/.pth file: a state_dict, or a dict with it under 'model' or "
                   "'state_dict' and optionally the config under 'config'")
    q.add_argument("-o", "--output", required=True, help="the .nfd file to write")
    q.add_argument("--config", help="config name (tiny, nfd-130m, nfd-310m); overrides the checkpoint's")
    q.set_defaults(fn=_export)

    q = command("export-random", "write a randomly initialised model (needs torch)")
    q.add_argument("config", help="config name (tiny, nfd-130m, nfd-310m, oasis-tiny, oasis-500m, waypoint-tiny, ...) or a config .json "
                   "file")
    q.add_argument("-o", "--output", required=True, help="the .nfd file to write")
    q.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, help="seed of the random initialisation")
    q.set_defaults(fn=_export_random)

    q = command("export-onnx", "write ONNX graphs (DiT pass, VAE) and their host-loop JSON (needs torch)")
    q.add_argument("file", help="a .nfd file or a shipped model: gridworld, gridworld-2step, gridworld-1step")
    q.add_argument("-o", "--output", required=True, help="output folder")
    q.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20")
    q.add_argument("--vae-output", default="uint8", choices=["uint8", "float32"],
                   help="decoder output: uint8 [B,H,W,3] frames or float32 [B,3,H,W] images in [-1, 1]")
    q.add_argument("--no-encoder", action="store_true", help="skip vae_encoder.onnx (only reset(frames) needs it)")
    q.add_argument("--batch", type=_positive_int, default=None,
                   help="fix the batch size (all shapes static); default: a dynamic batch axis")
    q.set_defaults(fn=_export_onnx)

    q = command("convert", "convert a published model's checkpoint files to one .nfd file (needs torch)")
    archs = q.add_subparsers(dest="architecture", required=True, metavar="ARCHITECTURE",
                             help="the published model family the files come from")
    c = archs.add_parser("oasis", help="Oasis-500M (etched-ai/open-oasis): DiT + ViT VAE checkpoints (docs/oasis.md)",
                         description="Convert Oasis-500M's two checkpoints (Hugging Face Etched/oasis-500m) to one "
                         ".nfd file. Every tensor's name and shape is checked first; no network access.",
                         formatter_class=_HelpFormatter)
    c.add_argument("--dit", required=True, help="the DiT checkpoint, .safetensors or .pt (oasis500m.safetensors)")
    c.add_argument("--vae", required=True, help="the ViT VAE checkpoint, .safetensors or .pt (vit-l-20.safetensors)")
    c.add_argument("-o", "--output", required=True, help="the .nfd file to write (replaced only when complete)")
    c.add_argument("--config", default="oasis-500m",
                   help="the Oasis config the checkpoints must match: oasis-500m, oasis-tiny or a config .json file")
    c.add_argument("--progress", action="store_true", help="show a progress bar while tensors are written")
    c.set_defaults(fn=_convert_oasis)
    c = archs.add_parser("waypoint", help="Waypoint-1.5 (Overworld): config.yaml + model.safetensors + TAEHV weights "
                         "(docs/waypoint.md)", description="Convert a Waypoint-1.5 checkpoint folder (Hugging Face "
                         "Overworld/Waypoint-1.5-1B) to one .nfd file. Every option and tensor is checked first; no "
                         "network access.", formatter_class=_HelpFormatter)
    c.add_argument("folder", help="the checkpoint folder: config.yaml, model.safetensors, taehv/taehv1_5.pth")
    c.add_argument("-o", "--output", required=True, help="the .nfd file to write")
    c.add_argument("--taehv", default=None, help="the TAEHV weights (.pth or .safetensors); default: "
                   "taehv1_5.{safetensors,pth} in FOLDER or FOLDER/taehv")
    c.add_argument("--ignore-option", action="append", default=[], metavar="NAME",
                   help="a config.yaml option to ignore rather than refuse as unknown (repeatable)")
    c.add_argument("--name", default=None, help="the model name stored in the file (default: the nfd_rt name of "
                   "the published geometry, e.g. waypoint-1.5-1b)")
    c.set_defaults(fn=_convert_waypoint)

    q = command("demo", "the shipped world model plays Gridworld; writes a video (game | model)")
    _add_session_options(q)
    q.add_argument("--frames", type=_positive_int, default=120, help="frames to generate (Ctrl-C stops early and "
                   "still writes the video)")
    q.add_argument("--room", type=_int_in(0, MAX_ROOM), default=13,
                   help="Gridworld room seed (13: a room where the model does well; see docs/demo.md)")
    q.add_argument("--out", type=_video_path, default="nfd_demo.mp4", help="video file, .mp4 or .gif")
    q.add_argument("--scale", type=_positive_int, default=4, help="pixel upscaling of the 64x64 frames")
    q.add_argument("--video-fps", type=_positive_float, default=15.0, help="playback rate of the video")
    q.add_argument("--no-truth", action="store_true", help="show only the model, not the real game beside it")
    q.set_defaults(fn=_demo)

    q = command("play", "drive the world model live: Gridworld with the arrow keys; a Waypoint file with its "
                "keyboard and mouse controls (needs pygame and a display)")
    _add_session_options(q)
    q.add_argument("--room", type=_int_in(0, MAX_ROOM), default=13,
                   help="Gridworld room seed (R in the window: next room)")
    q.add_argument("--scale", type=_positive_int, default=None,
                   help="pixel upscaling (default: 8 for Gridworld's 64x64 frames; Waypoint: to about 640 wide)")
    q.add_argument("--fps", type=_positive_float, default=None,
                   help="cap on the display rate (default: 15 for Gridworld, the game speed; 60 for Waypoint)")
    q.add_argument("--no-truth", action="store_true", help="show only the model, not the real game beside it")
    q.add_argument("--max-frames", type=_positive_int, default=None,
                   help="stop after this many steps (Waypoint: 4 frames each)")
    q.add_argument("--keymap", default=None, help="Waypoint (or any model with --keymap): the key map JSON, as "
                   "`nfd-rt serve --keymap` takes it (default: the model's own; examples/waypoint_keys.json)")
    q.add_argument("--image", default=None, help="Waypoint: the seed image (repeated 4 times as the context; "
                   "default: no context)")
    q.set_defaults(fn=_play)

    q = command("evaluate", "score the model against Gridworld ground truth on held-out sequences")
    _add_session_options(q)
    q.add_argument("--sequences", type=_positive_int, default=100, help="held-out sequences (rooms and key "
                   "presses never seen in training) to score")
    q.add_argument("--length", type=_positive_int, default=32, help="frames per sequence, the first one is context")
    q.add_argument("--json", help="also write the full result to this file")
    q.set_defaults(fn=_evaluate)

    from .serve import cli as serve_cli

    q = command("serve", "play the model in a browser: WebSocket server (docs/serve.md)")
    serve_cli.add_arguments(q)
    q.set_defaults(fn=serve_cli.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here rather than at interpreter exit
        return rc
    except BrokenPipeError:
        # The reader went away (`nfd-rt info m.nfd | head -2`): not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status for SIGINT (128 + 2), no traceback
        _end_progress_line()
        print(f"nfd-rt {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, ImportError, MemoryError) as e:
        print(f"nfd-rt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
