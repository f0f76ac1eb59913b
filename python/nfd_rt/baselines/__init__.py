"""Baselines the benchmarks measure nfd_rt against (needs torch): the strongest PyTorch session a skilled user would
write for each model: `static.StaticSession` (NFD: a static 4-D KV cache, SDPA, one whole-frame graph under
torch.compile with CUDA graphs), `oasis_static.OasisStaticSession` (Oasis' cached sampler the same way) and
`waypoint_static.WaypointStaticSession`. Not an API for running models: use nfd_rt.Session."""
