// Session::step_batch: several sessions of one model step as one forward (runtime/sampler.cc with one member per
// session): the GEMMs run once over all their tokens, attention per session over its own cache. The same frames
// as stepping each session alone, within fp rounding (the GEMMs see more rows).
#include "runtime/session_impl.h"

namespace nfd {

void Session::step_batch(const std::vector<Session*>& sessions, const float* actions, uint8_t* frames_out,
                         float* latents_out) {
  NFD_CHECK(!sessions.empty(), invalid_argument, "step_batch: no sessions");
  NFD_CHECK(actions, invalid_argument, "step_batch: actions is null");
  const size_t n = sessions.size();
  for (size_t i = 0; i < n; ++i) {
    NFD_CHECK(sessions[i], invalid_argument, "step_batch: session " + std::to_string(i) + " is null");
    NFD_CHECK(sessions[i]->impl_->model == sessions[0]->impl_->model, invalid_argument,
              "step_batch: session " + std::to_string(i) +
                  " uses a different model than session 0 (sessions in one batch must share a Model)");
    NFD_CHECK(!sessions[i]->impl_->speculating(), invalid_argument,
              "step_batch: session " + std::to_string(i) + " speculates (speculate > 0); step it on its own");
    for (size_t j = 0; j < i; ++j)
      NFD_CHECK(sessions[j] != sessions[i], invalid_argument,
                "step_batch: session " + std::to_string(i) + " appears twice (as session " + std::to_string(j) + ")");
  }
  const Config& cfg = sessions[0]->config();
  const int64_t A = cfg.action_dim;
  check_finite(actions, int64_t(n) * A, "actions");
  if (n == 1) return sessions[0]->step(actions, frames_out, latents_out);

  const Model& model = *sessions[0]->impl_->model;
  const DeviceScope on_device(model.device());
  std::lock_guard<std::mutex> batch_lock(model.batch_mutex());
  model::Activations& act = model.batch_activations(int(n));
  Impl& lead = *sessions[0]->impl_;
  Context bctx = lead.ctx;  // the batch runs on the first session's stream and thread count
  std::vector<FrameJob> frames;
  try {
    for (size_t i = 0; i < n; ++i) {
      Impl& s = *sessions[i]->impl_;
      Context c = bctx;
      c.state = s.ctx.state;
      c.host_state = s.ctx.host_state;
      s.prepare_state(c);
      s.upload_action(c, actions + int64_t(i) * A);
      frames.push_back(s.job(c, s.st->io.latent, s.st->io.write, s.st->io.frame));
    }
    SampleOptions so;
    so.decode = frames_out != nullptr;
    sample_frames(model.architecture(), cfg.num_steps(), frames, act, so);
    device_synchronize(lead.opt.device, bctx.stream);
  } catch (...) {
    // Work queued before the error still writes the shared batch activations and every member's cache and
    // buffers: wait for it before the batch lock is released.
    device_synchronize_quietly(lead.opt.device, bctx.stream);
    throw;
  }
  const int64_t frame_bytes = cfg.frame_bytes();  // one session's frames
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    if (latents_out) {
      Tensor host{latents_out + int64_t(i) * cfg.latent_numel(), DType::f32, Device::cpu, s.st->io.latent.shape};
      ops::copy(bctx, s.st->io.latent, host);
    }
    if (frames_out)
      device_memcpy(frames_out + int64_t(i) * frame_bytes, Device::cpu, s.st->io.frame.data, s.opt.device,
                    size_t(frame_bytes), bctx.stream);
  }
  for (size_t i = 0; i < n; ++i) {
    Impl& s = *sessions[i]->impl_;
    s.commit_frame();
    s.served_index = s.frame_index;
  }
}

}  // namespace nfd
