"""`nfd-rt play`: drive the world model live with the arrow keys (pygame window).

Arrow keys move the agent (hold two for a diagonal), R starts a new room, T toggles the real game beside the
model, Esc or closing the window quits. The title shows the runtime's own frame rate (time in Session.step)
and the display rate, which `--fps` caps so the game runs at a playable speed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from . import game
from .video import side_by_side


def _keys_to_action(pressed, pygame, action_dim: int) -> np.ndarray:
    a = np.zeros(action_dim, np.float32)
    for i, k in enumerate((pygame.K_UP, pygame.K_DOWN, pygame.K_LEFT, pygame.K_RIGHT)):
        a[i] = 1.0 if pressed[k] else 0.0
    return a


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def play(session, room: int = 0, scale: int = 8, fps: float = 15.0, show_truth: bool = True,
         max_frames: int | None = None) -> dict:
    """Run the interactive loop; returns {frames, runtime_fps}. `max_frames` ends it early (tests, recordings).

    Without a display SDL falls back to a window nobody sees ("offscreen"): that is an error, unless the caller
    asked for such a driver (SDL_VIDEODRIVER=dummy or offscreen: tests, recordings) and set `max_frames`."""
    try:
        import pygame
    except ImportError:
        raise ImportError("nfd-rt play needs pygame: pip install pygame (or pip install 'nfd_rt[play]')") from None
    cfg = session.config
    with _stderr_to_devnull():  # SDL's probing of drivers it does not find ("XDG_RUNTIME_DIR is invalid ...")
        pygame.display.init()  # the display only: the audio probe would print ALSA errors, and nothing plays sound
    try:
        driver = pygame.display.get_driver()
        asked = os.environ.get("SDL_VIDEODRIVER", "").lower() == driver
        if driver in ("dummy", "offscreen") and (not asked or max_frames is None):  # nothing to see, maybe forever
            raise RuntimeError(f"nfd-rt play needs a display, but SDL found none (video driver {driver!r}): run "
                               "it in a desktop session, or use `nfd-rt demo` to write a video instead")
        world = game.GridWorld(room)
        frame = world.render()
        session.reset(frames=frame[None])
        truth = frame

        def open_window():
            return pygame.display.set_mode(side_by_side(truth if show_truth else None, frame, scale).shape[1::-1])

        screen = open_window()
        clock = pygame.time.Clock()
        n, step_seconds, running = 0, 0.0, True
        while running and (max_frames is None or n < max_frames):
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    running = False
                elif event.type == pygame.KEYDOWN and event.key == pygame.K_r:
                    room += 1
                    world = game.GridWorld(room)
                    truth = frame = world.render()
                    session.reset(frames=frame[None])
                elif event.type == pygame.KEYDOWN and event.key == pygame.K_t:
                    show_truth = not show_truth
                    screen = open_window()
            action = _keys_to_action(pygame.key.get_pressed(), pygame, cfg.action_dim)
            truth = world.step(action)
            t0 = time.perf_counter()
            frame = session.step(action)
            step_seconds += time.perf_counter() - t0
            n += 1
            img = side_by_side(truth if show_truth else None, frame, scale)
            screen.blit(pygame.surfarray.make_surface(img.swapaxes(0, 1)), (0, 0))
            pygame.display.flip()
            pygame.display.set_caption(f"nfd_rt {session.device}: model {n / step_seconds:.0f} FPS, "
                                       f"display {clock.get_fps():.0f} FPS, room {room} "
                                       f"(arrows move, R new room, T truth, Esc quit)")
            clock.tick(fps)
        return {"frames": n, "runtime_fps": n / step_seconds if step_seconds else 0.0}
    finally:
        pygame.quit()
