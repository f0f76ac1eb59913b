// Speculative sampling (SessionOptions::speculate = k), the two ways:
//
// Exact: a worker thread generates up to k frames ahead under the last action while the caller is away, into
// the k spare ring slots; a call with the same action takes the next one, a different action cancels the worker
// (between passes and decoder blocks), forgets the frames ahead (their slots are never visible to the frames
// that follow) and steps normally. Frames are computed by the same code on the same inputs, so the video is
// bitwise the one plain stepping gives.
//
// Parallel: when the action changes, k frames are denoised together (runtime/sampler.cc with one member per
// frame, block-causal among them: frame j sees the cache and frames 0..j-1 of the group at their current noise
// level), the NFD paper's way: more frames per second, not the same frames as plain stepping.
#include <algorithm>
#include <cstring>

#include "runtime/session_impl.h"

namespace nfd {

// ---- exact ------------------------------------------------------------------------------------------------------

void Session::Impl::speculate_loop() {
  const DeviceScope on_device(opt.device);  // a new thread starts on device 0
  std::unique_lock<std::mutex> lk(mu);
  for (;;) {
    cv.wait(lk, [&] {
      return stop || (!caller_active && !spec_action.empty() && int(ahead.size()) < opt.speculate &&
                      worker_error.empty());
    });
    if (stop) return;
    worker_busy = true;
    const std::vector<float> action = spec_action;
    // A streaming decoder decodes only the frames served, in order: the frames ahead are latents until then.
    const bool decode = spec_decode && !stateful_decoder();
    lk.unlock();
    Ahead a;
    a.latent.resize(size_t(cfg.latent_numel()));
    if (decode) a.frame.resize(size_t(cfg.frame_bytes()));
    bool done = false;
    std::string error;
    try {
      done = compute_frame(action.data(), decode, a.latent.data(), decode ? a.frame.data() : nullptr, &cancel);
    } catch (const std::exception& e) {
      error = e.what();
    }
    lk.lock();
    worker_busy = false;
    if (done) ahead.push_back(std::move(a));
    if (!error.empty()) worker_error = error;  // surfaced by the next call (which then steps normally)
    cv.notify_all();
  }
}

std::unique_lock<std::mutex> Session::Impl::pause_worker(bool keep_ahead) {
  std::unique_lock<std::mutex> lk(mu);
  if (!exact_worker()) {
    if (!keep_ahead && par) {
      stats.discarded += ahead.size();
      ahead.clear();
      rewind_to(served_index);
    }
    return lk;
  }
  caller_active = true;
  if (!keep_ahead) cancel = true;
  cv.wait(lk, [&] { return !worker_busy; });
  cancel = false;
  if (!keep_ahead) {
    stats.discarded += ahead.size();
    ahead.clear();
    rewind_to(served_index);
  }
  return lk;
}

int Session::Impl::wait_speculation() {
  std::unique_lock<std::mutex> lk(mu);
  if (!exact_worker()) return 0;
  // The negation of the worker's wake-up condition, with the worker idle: nothing more will be generated now.
  cv.wait(lk, [&] {
    const bool work = !caller_active && !spec_action.empty() && int(ahead.size()) < opt.speculate &&
                      worker_error.empty();
    return stop || (!worker_busy && !work);
  });
  return int(ahead.size());
}

int Session::wait_speculation() {
  const DeviceScope on_device(impl_->opt.device);
  return impl_->wait_speculation();
}

void Session::Impl::resume_worker(std::unique_lock<std::mutex>& lk) {
  if (!exact_worker()) return;
  caller_active = false;
  lk.unlock();
  cv.notify_all();
}

void Session::Impl::step_speculating(const float* action, uint8_t* frame_out, float* latent_out) {
  std::unique_lock<std::mutex> lk(mu);
  const bool same = !spec_action.empty() &&
                    std::memcmp(spec_action.data(), action, sizeof(float) * size_t(cfg.action_dim)) == 0;
  if (same && worker_error.empty()) {
    // The next frame is ahead already, or the worker is on it: take it.
    caller_active = true;
    cv.wait(lk, [&] { return !ahead.empty() || !worker_busy; });
    if (!ahead.empty()) {
      Ahead a = std::move(ahead.front());
      ahead.pop_front();
      ++served_index;
      ++stats.served;
      if (latent_out) std::copy(a.latent.begin(), a.latent.end(), latent_out);
      if (frame_out && !a.frame.empty()) std::copy(a.frame.begin(), a.frame.end(), frame_out);
      const bool need_decode = frame_out && a.frame.empty();
      spec_decode = frame_out != nullptr;
      if (need_decode) {  // generated without decode: decode it now, once the worker is off the buffers
        cv.wait(lk, [&] { return !worker_busy; });
        lk.unlock();
        decode_host(a.latent.data(), frame_out);
        lk.lock();
      }
      caller_active = false;
      lk.unlock();
      cv.notify_all();
      return;
    }
    caller_active = false;
  }
  lk.unlock();
  std::unique_lock<std::mutex> paused = pause_worker(false);
  worker_error.clear();
  paused.unlock();
  try {
    compute_frame(action, frame_out != nullptr, latent_out, frame_out);
  } catch (...) {
    paused.lock();
    resume_worker(paused);
    throw;
  }
  paused.lock();
  served_index = frame_index;
  spec_action.assign(action, action + cfg.action_dim);
  spec_decode = frame_out != nullptr;
  resume_worker(paused);
}

// ---- parallel ---------------------------------------------------------------------------------------------------

Session::Impl::Parallel::Parallel(const Config& cfg, const model::Architecture& arch, Arena& arena, DType dtype,
                                  int k)
    : host(size_t(k) * cfg.cache_policy().size()) {
  const std::vector<int64_t> lshape = {cfg.latent_channels, cfg.latent_height(), cfg.latent_width()};
  for (int j = 0; j < k; ++j) {
    state.push_back(arena.alloc({int64_t(frame_states_bytes(cfg))}, DType::u8));
    latent.push_back(arena.alloc(lshape, dtype));
    write.push_back(arena.alloc(lshape, dtype));
    frame.push_back(arena.alloc(cfg.frame_shape(), DType::u8));
  }
  act = arch.make_activations(cfg, arena, dtype, k);
}

// Generates frames frame_index .. frame_index + k - 1 under `action`, commits all k and queues them in `ahead`.
void Session::Impl::generate_parallel(const float* action, bool decode) {
  const int k = opt.speculate;
  const int64_t f0 = frame_index;
  const size_t groups = ring.groups();
  decode = decode && !stateful_decoder();  // a streaming decoder decodes each frame when it is served
  for (int j = 0; j < k; ++j) ring.commit(f0 + j);  // in progress: visible to the later ones
  try {
    std::vector<FrameJob> frames;
    for (int j = 0; j < k; ++j) {
      make_state(f0 + j, &par->host[size_t(j) * groups], par->state[size_t(j)], ctx);
      Context c = ctx;
      c.state = reinterpret_cast<const FrameState*>(par->state[size_t(j)].data);
      c.host_state = &par->host[size_t(j) * groups];
      frames.push_back(job(c, par->latent[size_t(j)], par->write[size_t(j)], par->frame[size_t(j)]));
    }
    upload_action(ctx, action);
    SampleOptions so;
    so.decode = decode;
    sample_frames(arch, cfg.num_steps(), frames, *par->act, so);
    device_synchronize(opt.device, ctx.stream);
    for (int j = 0; j < k; ++j) {
      Ahead a;
      a.latent.resize(size_t(cfg.latent_numel()));
      Tensor host{a.latent.data(), DType::f32, Device::cpu, st->io.latent.shape};
      ops::copy(ctx, par->latent[size_t(j)], host);
      if (decode) {
        a.frame.resize(size_t(cfg.frame_bytes()));
        device_memcpy(a.frame.data(), Device::cpu, par->frame[size_t(j)].data, opt.device, a.frame.size(), ctx.stream);
      }
      ahead.push_back(std::move(a));
    }
  } catch (...) {
    ahead.clear();
    rewind_to(f0);
    throw;
  }
  frame_index = f0 + k;
}

void Session::Impl::step_parallel(const float* action, uint8_t* frame_out, float* latent_out) {
  const bool same = !spec_action.empty() &&
                    std::memcmp(spec_action.data(), action, sizeof(float) * size_t(cfg.action_dim)) == 0;
  if (!same || ahead.empty()) {
    stats.discarded += ahead.size();
    ahead.clear();
    rewind_to(served_index);
    spec_action.assign(action, action + cfg.action_dim);
    generate_parallel(action, frame_out != nullptr);
  } else {
    ++stats.served;
  }
  Ahead a = std::move(ahead.front());
  ahead.pop_front();
  ++served_index;
  if (latent_out) std::copy(a.latent.begin(), a.latent.end(), latent_out);
  if (frame_out) {
    if (a.frame.empty())
      decode_host(a.latent.data(), frame_out);  // generated by a step_latent call
    else
      std::copy(a.frame.begin(), a.frame.end(), frame_out);
  }
}

}  // namespace nfd
