#include "runtime/sampler.h"

#include "backends/device.h"

namespace nfd {

bool sample_frames(const model::Architecture& arch, int steps, std::vector<FrameJob>& frames,
                   model::Activations& act, const SampleOptions& o) {
  auto cancelled = [&] { return o.cancel && o.cancel->load(std::memory_order_relaxed); };
  std::vector<model::Member> members;
  members.reserve(frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    FrameJob& f = frames[i];
    // A session's frames denoised together share its conditioning buffers and action: conditioned once.
    if (i == 0 || f.member.graph != frames[i - 1].member.graph) f.member.graph->condition(f.member.ctx, f.action);
    if (o.generate) f.member.graph->start_latent(f.member.ctx, f.seed, f.member.latent);
    members.push_back(f.member);
  }
  for (int k = 0; o.generate && k < steps; ++k) {
    if (cancelled()) return false;
    arch.denoise_pass(members, k, act);
  }
  if (cancelled()) return false;
  for (FrameJob& f : frames) f.member.graph->write_input(f.member.ctx, f.seed, f.member.latent, f.member.write);

  if (o.decode && o.decode_stream && frames.size() == 1 && !o.cancel) {
    FrameJob& f = frames[0];
    void* stream = f.member.ctx.stream;
    Context decode_ctx = f.member.ctx;
    decode_ctx.stream = o.decode_stream;
    cuda_stream_wait_for(o.decode_stream, stream);
    bool ok = false;
    try {
      ok = f.member.graph->decode(decode_ctx, f.member.latent, f.frame);
      arch.cache_write_pass(members, act);
    } catch (...) {
      try {
        cuda_stream_wait_for(stream, o.decode_stream);  // a capture must end joined
      } catch (...) {
      }
      throw;
    }
    cuda_stream_wait_for(stream, o.decode_stream);
    return ok;
  }
  arch.cache_write_pass(members, act);
  if (!o.decode) return true;
  // The decode is half a tiny frame: a cancelled frame skips it, or stops it between decoder blocks.
  bool ok = true;
  for (FrameJob& f : frames) {
    if (cancelled()) return false;
    ok = f.member.graph->decode(f.member.ctx, f.member.latent, f.frame, o.cancel) && ok;
  }
  return ok;
}

}  // namespace nfd
