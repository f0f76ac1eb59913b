"""`nfd-rt play` for a model with keyboard and mouse controls (Waypoint-1.5): a pygame window.

The keys held, the mouse's movement since the previous step and the wheel make each step's control vector through
the same key map as `nfd-rt serve` (`serve.protocol`: key names are the browser's KeyboardEvent.code names, e.g.
KeyW, Space, ShiftLeft, MouseLeft; the pointer sends dx, dy and the wheel). Without --keymap the model brings its
own (Waypoint: its buttons are key codes, `configs_waypoint.keymap`). Click the window to capture the mouse (Tab
frees it); Esc or closing the window quits. Each step returns `frames_per_step` frames (Waypoint: 4): they are shown
one after the other, at most `fps` frames a second.
"""

from __future__ import annotations

import time

import numpy as np

from .play import _stderr_to_devnull

# pygame key names (pygame.key.name) -> browser KeyboardEvent.code names, for the keys that are not a letter or digit.
_NAMED = {
    "space": "Space", "left shift": "ShiftLeft", "right shift": "ShiftRight", "left ctrl": "ControlLeft",
    "right ctrl": "ControlRight", "left alt": "AltLeft", "right alt": "AltRight", "tab": "Tab", "return": "Enter",
    "backspace": "Backspace", "up": "ArrowUp", "down": "ArrowDown", "left": "ArrowLeft", "right": "ArrowRight",
}
_MOUSE_BUTTONS = {1: "MouseLeft", 2: "MouseMiddle", 3: "MouseRight"}


def key_code_name(pygame_name: str) -> str | None:
    """pygame's name of a key ("w", "1", "left shift") -> the browser's code name ("KeyW", "Digit1", "ShiftLeft")."""
    if len(pygame_name) == 1 and pygame_name.isalpha():
        return "Key" + pygame_name.upper()
    if len(pygame_name) == 1 and pygame_name.isdigit():
        return "Digit" + pygame_name
    return _NAMED.get(pygame_name)


def _context(image: str | None, cfg) -> np.ndarray | None:
    """The seed image repeated `frames_per_step` times (upstream seeds with one image), at the video size."""
    if image is None:
        return None
    from PIL import Image

    h, w = cfg.video_size
    img = np.asarray(Image.open(image).convert("RGB").resize((w, h), Image.BILINEAR))
    return np.repeat(img[None], cfg.frames_per_step, 0)


def play_controls(session, keymap: dict[str, int], pointer, scale: int = 1, fps: float = 60.0,
                  max_steps: int | None = None, image: str | None = None) -> dict:
    """Run the interactive loop; returns {steps, frames, runtime_fps} (runtime_fps: steps a second in
    Session.step). `pointer`: a serve.protocol.Pointer or None (no mouse input). `max_steps` ends it (tests)."""
    try:
        import pygame
    except ImportError:
        raise ImportError("nfd-rt play needs pygame: pip install pygame (or pip install 'nfd_rt[play]')") from None
    import os

    from ..serve.protocol import control_vector

    cfg = session.config
    with _stderr_to_devnull():
        pygame.display.init()
    try:
        driver = pygame.display.get_driver()
        asked = os.environ.get("SDL_VIDEODRIVER", "").lower() == driver
        if driver in ("dummy", "offscreen") and (not asked or max_steps is None):
            raise RuntimeError(f"nfd-rt play needs a display, but SDL found none (video driver {driver!r}): run "
                               "it in a desktop session, or use `nfd-rt serve` and a browser")
        session.reset(frames=_context(image, cfg))
        h, w = cfg.video_size
        screen = pygame.display.set_mode((w * scale, h * scale))
        clock = pygame.time.Clock()
        held: set[str] = set()
        mouse = [0.0, 0.0]
        wheel = 0
        grabbed = False
        steps, step_seconds, running = 0, 0.0, True
        while running and (max_steps is None or steps < max_steps):
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    running = False
                elif event.type in (pygame.KEYDOWN, pygame.KEYUP):
                    name = key_code_name(pygame.key.name(event.key))
                    if event.type == pygame.KEYDOWN and event.key == pygame.K_TAB and grabbed:
                        grabbed = False  # Tab frees the mouse
                        pygame.event.set_grab(False)
                        pygame.mouse.set_visible(True)
                    elif name is not None:
                        (held.add if event.type == pygame.KEYDOWN else held.discard)(name)
                elif event.type == pygame.MOUSEBUTTONDOWN and event.button in _MOUSE_BUTTONS:
                    if pointer is not None and not grabbed:  # the first click captures the mouse
                        grabbed = True
                        pygame.event.set_grab(True)
                        pygame.mouse.set_visible(False)
                    else:
                        held.add(_MOUSE_BUTTONS[event.button])
                elif event.type == pygame.MOUSEBUTTONUP and event.button in _MOUSE_BUTTONS:
                    held.discard(_MOUSE_BUTTONS[event.button])
                elif event.type == pygame.MOUSEMOTION and grabbed:
                    mouse[0] += event.rel[0]
                    mouse[1] += event.rel[1]
                elif event.type == pygame.MOUSEWHEEL and grabbed:
                    wheel += event.y
            if not running:
                break
            c = control_vector(cfg.action_dim, keymap, sorted(k for k in held if k in keymap), pointer,
                               mouse if pointer is not None else None,
                               int(np.sign(wheel)) if pointer is not None and pointer.scroll is not None else None)
            mouse, wheel = [0.0, 0.0], 0
            t0 = time.perf_counter()
            frames = session.step(c)
            step_seconds += time.perf_counter() - t0
            steps += 1
            frames = frames if frames.ndim == 4 else frames[None]
            for f in frames:
                img = np.repeat(np.repeat(f, scale, 0), scale, 1) if scale > 1 else f
                screen.blit(pygame.surfarray.make_surface(img.swapaxes(0, 1)), (0, 0))
                pygame.display.flip()
                clock.tick(fps)
            pygame.display.set_caption(f"nfd_rt {session.device}: {cfg.name}, model {steps / step_seconds:.2f} "
                                       f"steps/s ({len(frames)} frames each), display {clock.get_fps():.0f} FPS "
                                       "(click: mouse, Tab: free it, Esc: quit)")
        return {"steps": steps, "frames": steps * cfg.frames_per_step,
                "runtime_fps": steps / step_seconds if step_seconds else 0.0}
    finally:
        pygame.quit()
