"""A dependency-free progress bar for long runs (redraws in place on a terminal, prints every 10% otherwise)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = max(1, int(total)), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int, extra: str = "") -> None:
        done = min(int(done), self.total)
        frac = done / self.total
        elapsed = time.perf_counter() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        line = (f"{self.label} [{'#' * int(frac * self.width):<{self.width}}] {done}/{self.total} "
                f"{rate:.1f}/s, {eta / 60:.1f} min left" + (f", {extra}" if extra else ""))
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == self.total else ""))
            self.stream.flush()
        elif int(frac * 10) > self._last_decile or done == self.total:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()
