"""Converters: upstream checkpoints (as their publishers ship them) -> one `.nfd` file, no network.

One module per architecture (`nfd_rt.convert.<arch>`); `nfd-rt convert <arch> DIR -o model.nfd` runs them. Each
checks every tensor name and shape against the upstream layout and names the first problem.
"""
