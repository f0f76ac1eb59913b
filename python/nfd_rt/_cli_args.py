"""What the command lines of `nfd-rt` and `nfd-rt serve` share: argparse types for numbers (a bad number is a
one-line usage error, never a crash deep inside) and the meaning of --device/--dtype "auto". Its own module so
that `nfd_rt.cli` and `nfd_rt.serve` both import it, not each other."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear usage error instead of a crash deep inside for 0 or -3)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def int_in(lo: int, hi: int, what: str = ""):
    """argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}]{what}, got {v}")
        return v
    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def pick_device(device: str, dtype: str) -> tuple[str, str]:
    """"auto" means CUDA (bfloat16) when the runtime was built with CUDA and sees a GPU, else the CPU (bfloat16 on a
    CPU with AVX512-BF16 or AMX, else float32: nfd_rt.resolve_dtype)."""
    from ._native import core

    if device == "auto":
        device = "cuda" if core().cuda_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else core().default_dtype("cpu")
    return device, dtype
