"""What every static baseline does to put its whole-frame module under torch.compile."""

from __future__ import annotations

import torch


def compile_frame(net: torch.nn.Module, compile_mode: str, backend: str = "inductor") -> torch.nn.Module:
    """`net` under one torch.compile(fullgraph=True). Its buffers keep fixed addresses (CUDA graphs read and update
    them in place); `compile_mode` applies to the "inductor" backend only ("aot_eager" traces without code
    generation: the tests' quick check)."""
    for b in net.buffers():
        torch._dynamo.mark_static_address(b)
    options = {"mode": compile_mode} if backend == "inductor" else {}
    return torch.compile(net, backend=backend, fullgraph=True, **options)
