"""Baselines the benchmarks measure nfd_rt against (needs torch): `static.StaticSession`, the strongest PyTorch
session a skilled user would write for this model (a static 4-D KV cache, SDPA, one whole-frame graph under
torch.compile with CUDA graphs). Not an API for running models: use nfd_rt.Session."""
