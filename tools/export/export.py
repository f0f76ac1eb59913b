#!/usr/bin/env python3
"""Export a trained NFD model (PyTorch state_dict or checkpoint) to a .nfd file; the same as `nfd-rt export`.

    python tools/export/export.py CKPT -o model.nfd [--config tiny]
"""
import sys

from nfd_rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
