#!/usr/bin/env python3
"""Train the shipped demo model: the `tiny` NFD on Gridworld (python/nfd_rt/demo/game.py), on CPU, from a seed.

    python tools/train/train_demo.py                      # ~40 min on 2 CPU cores, writes the shipped model
    python tools/train/train_demo.py --quick -o /tmp/q.nfd  # a 3-minute smoke run of the whole pipeline

Stages (docs/demo.md explains the choices):
  1. data     Gridworld episodes, half random keys, half a coin-seeking player; frames + multi-hot actions.
  2. vae      the tiny VAE as a deterministic autoencoder: pixel MSE with agent/coin pixels weighted up, a
              little latent noise so the decoder tolerates imperfect samples. Latents are then rescaled to
              unit variance per channel by folding the scale into encoder conv_out and decoder conv_in.
  3. dit      flow matching on 16-frame clips under the runtime's block-causal mask (sink + window), each
              frame with its own timestep: logit-normal for frames that are learned, ~context_noise for
              frames that act as clean context. Half the clips jump the frame positions far ahead of the sink,
              so RoPE offsets of a 10,000-frame rollout are seen in training.
  4. export   EMA weights of the DiT + the VAE as one .nfd, plus a JSON log of the run beside it.
Everything is seeded (torch, numpy, data); a rerun with the same seed and thread count gives the same file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from nfd_rt import configs, export  # noqa: E402
from nfd_rt._progress import ProgressBar  # noqa: E402
from nfd_rt.demo import game  # noqa: E402
from nfd_rt.reference.model import NFDModel, frames_to_images, masked_attention  # noqa: E402

CLIP = 16  # frames per DiT training clip (> sink + window + 1, so the window rolls inside a clip)


class Progress(ProgressBar):
    """The package's progress bar, with the loss smoothed over recent steps."""

    def __init__(self, name: str, total: int):
        super().__init__(total, f"  [{name}]", stream=sys.stdout)
        self.loss = None

    def step(self, step: int, loss: float) -> None:
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        self.update(step + 1, f"loss {self.loss:.5f}")


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---------------------------------------------------------------------------------------------------------------
# VAE

def object_weight(frames: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weight [B, 1, H, W]: 1 on floor and walls, 20 on the agent and the coins (few pixels that
    matter most)."""
    f = frames.float()
    agent = (f - torch.tensor(game.AGENT_RGB, dtype=torch.float32)).abs().amax(-1) < 30
    coin = (f - torch.tensor(game.COIN_RGB, dtype=torch.float32)).abs().amax(-1) < 30
    return (1.0 + 20.0 * (agent | coin).float())[:, None]


def train_vae(model: NFDModel, frames: np.ndarray, steps: int, batch: int, seed: int) -> list[float]:
    vae = model.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    rng = np.random.default_rng([seed, 1])
    flat = frames.reshape(-1, *frames.shape[-3:])
    prog, losses = Progress("vae", steps), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 2e-3, 50)
        u8 = torch.from_numpy(flat[rng.integers(len(flat), size=batch)])
        x = frames_to_images(u8)
        z = vae.encoder(x)
        z_noisy = z + 0.05 * z.detach().std() * torch.randn_like(z)
        y = vae.decoder(z_noisy)
        loss = (object_weight(u8) * (y - x) ** 2).mean() + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        prog.step(step, losses[-1])
    return losses


@torch.no_grad()
def encode_all(model: NFDModel, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 [E, L, H, W, 3] -> float32 latents [E, L, C, h, w]."""
    E, L = frames.shape[:2]
    flat = frames.reshape(E * L, *frames.shape[2:])
    out = [model.vae.encoder(frames_to_images(torch.from_numpy(flat[i:i + batch]))) for i in range(0, len(flat), batch)]
    z = torch.cat(out)
    return z.reshape(E, L, *z.shape[1:])


@torch.no_grad()
def fold_latent_scale(model: NFDModel, latents: torch.Tensor) -> torch.Tensor:
    """Make latents unit-variance per channel without a new tensor in the file: z' = z / s is produced by the
    encoder (conv_out / s) and undone by the decoder (conv_in weights * s along the input channel). Exact."""
    s = latents.transpose(0, 2).reshape(latents.shape[2], -1).std(dim=1)  # [C]
    enc_out, dec_in = model.vae.encoder.conv_out, model.vae.decoder.conv_in
    enc_out.weight.div_(s[:, None, None, None])
    enc_out.bias.div_(s)
    dec_in.weight.mul_(s[None, :, None, None])
    return latents / s[None, None, :, None, None]


# ---------------------------------------------------------------------------------------------------------------
# DiT

def init_dit_for_training(model: NFDModel, seed: int) -> None:
    """DiT-style init: Xavier linears, adaLN-Zero (every modulation starts at zero, so each block starts as the
    identity), zero output layer."""
    torch.manual_seed(seed)
    dit = model.dit
    with torch.no_grad():
        for mod in dit.modules():
            if isinstance(mod, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(mod.weight)
                torch.nn.init.zeros_(mod.bias)
        for blk in dit.blocks:
            torch.nn.init.zeros_(blk.adaln.weight)
            torch.nn.init.zeros_(blk.adaln.bias)
        for lin in (dit.final.adaln, dit.final.linear):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
        for emb in (dit.time_embed, dit.action_embed):
            torch.nn.init.normal_(emb.fc1.weight, std=0.02)
            torch.nn.init.normal_(emb.fc2.weight, std=0.02)


def sample_clips(rng: np.random.Generator, latents: torch.Tensor, actions: torch.Tensor, batch: int,
                 cfg: configs.NFDConfig):
    """A batch of clips: frame 0 of an episode (the sink) followed by CLIP-1 consecutive frames.

    Returns latents [B, T, C, h, w], the latents of each frame's predecessor in its episode (for the motion
    weight), actions [B, T, A] and the frame positions [B, T] given to RoPE and the mask. Half the clips are
    the start of an episode (positions 0..T-1); the rest take frames q..q+T-2 of their episode at positions
    p..p+T-2, p drawn log-uniformly up to 20,000 (one p per batch, so those clips run as one batch): what a long
    rollout looks like to the model, the sink frame far behind a window of recent frames.
    """
    E, L = latents.shape[:2]
    idx = np.zeros((batch, CLIP), np.int64)
    pos = np.zeros((batch, CLIP), np.int64)
    p = 1 + int(np.exp(rng.uniform(0, math.log(20000))))
    for b in range(batch):
        if rng.random() < 0.5:
            idx[b] = np.arange(CLIP)
            pos[b] = np.arange(CLIP)
        else:
            q = int(rng.integers(1, L - CLIP + 2))
            idx[b, 1:] = np.arange(q, q + CLIP - 1)
            pos[b, 1:] = np.arange(p, p + CLIP - 1)
    ep = rng.integers(E, size=batch)
    z = latents[ep[:, None], idx]
    z_prev = latents[ep[:, None], np.maximum(idx - 1, 0)]
    a = actions[ep[:, None], idx]
    return z, z_prev, a, torch.from_numpy(pos)


def dit_velocity(model: NFDModel, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, pos: torch.Tensor):
    """Velocity of every frame of clips with per-clip frame positions (each clip its own RoPE and mask)."""
    outs = []
    cfg = model.cfg
    # Clips sharing a position pattern run together (start clips all share 0..T-1).
    keys = [tuple(p.tolist()) for p in pos]
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        frames = torch.tensor(key)
        v = model.dit.forward_frames(x[rows], t[rows], a[rows], frames,
                                     lambda layer, q, k, vv: masked_attention(q, k, vv, frames, frames, cfg))
        outs.append((rows, v))
    out = torch.empty_like(x)
    for rows, v in outs:
        out[rows] = v
    return out


def train_dit(model: NFDModel, latents: torch.Tensor, actions: torch.Tensor, steps: int, batch: int, seed: int
              ) -> tuple[NFDModel, list[float]]:
    cfg = model.cfg
    dit = model.dit
    ema = deepcopy(dit).requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99))
    rng = np.random.default_rng([seed, 2])
    gen = torch.Generator().manual_seed(seed)
    prog, losses = Progress("dit", steps), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 1e-3, 100)
        z, z_prev, a, pos = sample_clips(rng, latents, actions, batch, cfg)
        B, T = z.shape[:2]
        # Per-frame timesteps: logit-normal for learned frames; near context_noise for clean-context frames.
        t = torch.sigmoid(torch.randn(B, T, generator=gen))
        context = torch.rand(B, T, generator=gen) < 0.5
        t = torch.where(context, cfg.context_noise * 2 * torch.rand(B, T, generator=gen), t)
        noise = torch.randn(z.shape, generator=gen)
        tt = t[:, :, None, None, None]
        x = (1 - tt) * z + tt * noise
        v = dit_velocity(model, x, t, a, pos)
        # Motion weight: latent cells that changed since the previous frame (the agent, a vanishing coin) are
        # a few percent of a frame but all of what an action does; weighting them up 20x keeps the loss from
        # being won by copying the static room.
        moved = ((z - z_prev).abs().amax(dim=2, keepdim=True) > 0.05).float()
        weight = 1.0 + 19.0 * moved
        per_frame = (weight * (v - (noise - z)) ** 2).mean(dim=(2, 3, 4))
        learn = (~context).float()
        loss = (per_frame * learn).sum() / learn.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), dit.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        prog.step(step, losses[-1])
    model.dit = ema
    return model, losses


# ---------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = os.path.join(os.path.dirname(__file__), "..", "..", "python", "nfd_rt", "demo", "gridworld.nfd")
    p.add_argument("-o", "--output", default=os.path.normpath(default_out), help="where to write the .nfd")
    p.add_argument("--seed", type=int, default=0, help="seed of everything: data, init, batches, noise")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it slightly)")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--dit-steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--episodes", type=int, default=800, help="training episodes (each its own room)")
    p.add_argument("--episode-length", type=int, default=96)
    p.add_argument("--quick", action="store_true", help="tiny run of every stage (pipeline check, not a model)")
    args = p.parse_args(argv)
    if args.quick:
        args.vae_steps, args.dit_steps, args.episodes, args.episode_length = 20, 10, 8, 24

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = configs.get("tiny")
    t_start = time.time()
    log: dict = {"seed": args.seed, "threads": args.threads, "config": cfg.name, "torch": torch.__version__,
                 "args": vars(args)}

    print(f"[data] {args.episodes} Gridworld episodes x {args.episode_length} frames", flush=True)
    t0 = time.time()
    frames, actions = game.dataset(args.episodes, args.episode_length, seed=args.seed, action_dim=cfg.action_dim)
    log["data_seconds"] = time.time() - t0
    print(f"[data] {frames.nbytes / 2**20:.0f} MiB of frames in {log['data_seconds']:.1f} s", flush=True)

    model = NFDModel(cfg, init_seed=None)
    for m in model.vae.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    print(f"[vae] {args.vae_steps} steps, batch {args.batch}", flush=True)
    t0 = time.time()
    log["vae_losses"] = train_vae(model, frames, args.vae_steps, args.batch, args.seed)[::10]
    log["vae_seconds"] = time.time() - t0

    print("[latents] encoding every frame", flush=True)
    model.eval()
    latents = encode_all(model, frames)
    latents = fold_latent_scale(model, latents)
    with torch.no_grad():
        recon = model.decode(latents[:4].flatten(0, 1)).numpy()
    mse = np.mean((recon.astype(np.float64) - frames[:4].reshape(recon.shape)) ** 2)
    log["vae_recon_psnr_db"] = float(10 * np.log10(255**2 / max(mse, 1e-10)))
    print(f"[latents] {tuple(latents.shape)}, reconstruction PSNR {log['vae_recon_psnr_db']:.1f} dB", flush=True)

    print(f"[dit] {args.dit_steps} steps, batch {args.batch} clips of {CLIP} frames", flush=True)
    init_dit_for_training(model, args.seed)
    model.train()
    t0 = time.time()
    model, dit_losses = train_dit(model, latents, torch.from_numpy(actions), args.dit_steps, args.batch, args.seed)
    log["dit_losses"] = dit_losses[::10]
    log["dit_seconds"] = time.time() - t0
    model.eval()

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    export.save(model, args.output)
    log["total_seconds"] = time.time() - t_start
    log["file_bytes"] = os.path.getsize(args.output)
    with open(os.path.splitext(args.output)[0] + ".train.json", "w") as f:
        json.dump(log, f, indent=1)
    print(f"[export] wrote {args.output} ({log['file_bytes'] / 2**20:.1f} MiB) after "
          f"{log['total_seconds'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
