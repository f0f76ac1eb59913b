#include "backends/cpu/parallel.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nfd {
namespace cpu {
namespace {

// Workers sleep on a condition variable between jobs. One job at a time: `busy` admits one caller, others run
// inline. Chunks are claimed through an atomic counter by the workers and the caller alike.
//
// A frame is hundreds of ops back to back, and waking a sleeping thread (a futex round trip, tens of
// microseconds on a VM) cost more than most of them take. So a worker that finished a job first spins for
// kSpin on the published generation before it sleeps, and the caller spins for the last chunks before it
// waits: within a frame nobody sleeps, and a few microseconds after the frame everybody does.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      stop_flag_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // Runs the chunks of length `chunk` on up to `threads` threads. Returns false (nothing run) when the pool is
  // serving another caller.
  bool run(int threads, int64_t chunk, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (busy_.exchange(true)) return false;
    const int chunks = int((n + chunk - 1) / chunk);
    const int helpers = std::min(threads, chunks) - 1;  // workers taking part besides the caller
    grow(helpers);
    {
      // The job is set up under the lock, once no worker is inside work(): a worker that enters work()
      // later has taken this lock after the setup, so it sees this job's fields and counter.
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return active_ == 0; });
      step_ = chunk;
      helpers_ = helpers;
      n_ = n;
      fn_ = &fn;
      errors_.assign(size_t(chunks), nullptr);
      chunks_ = chunks;
      pending_.store(chunks);
      next_.store(0);
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    wake_.notify_all();
    work();
    // All chunks done and no worker still inside work(), so the next job cannot meet a stale one.
    spin_until([&] { return pending_.load() == 0 && active_count_.load() == 0; });
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return pending_.load() == 0 && active_ == 0; });
    }
    fn_ = nullptr;
    std::exception_ptr first;
    for (auto& e : errors_)
      if (e && !first) first = e;
    busy_.store(false);  // only now may another caller reuse errors_
    if (first) std::rethrow_exception(first);
    return true;
  }

 private:
  void grow(int workers) {
    while (int(workers_.size()) < workers) {
      const int index = int(workers_.size());
      workers_.emplace_back([this, index] { loop(index); });
    }
  }

  // Spins (with a pause hint) until done() or kSpin has passed; the caller then takes the locked path.
  template <typename Done>
  static void spin_until(Done done) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; !done(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kSpin) return;
    }
  }

  // Worker `index` takes part in the jobs that want more than `index` helpers (the pool is process-wide and
  // sized for the largest thread count asked for; a session with fewer threads uses only the first workers).
  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] { return published_.load(std::memory_order_acquire) != seen || stop_flag_.load(); });
      {
        std::unique_lock<std::mutex> lk(mu_);
        wake_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index >= helpers_) continue;
        ++active_;
        active_count_.store(active_);
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        --active_;
        active_count_.store(active_);
      }
      done_.notify_all();
    }
  }

  // Claims chunks until none is left; the last one to finish wakes the caller.
  void work() {
    for (int c; (c = next_.fetch_add(1)) < chunks_;) {
      const int64_t b = c * step_, e = std::min(n_, b + step_);
      try {
        if (b < e) (*fn_)(b, e);
      } catch (...) {
        errors_[size_t(c)] = std::current_exception();
      }
      if (pending_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_.notify_all();
      }
    }
  }

  static constexpr std::chrono::microseconds kSpin{200};

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;
  int active_ = 0;  // workers inside work(), guarded by mu_
  bool stop_ = false;
  // Lock-free copies for the spinning fast paths; the locked fields above stay authoritative.
  std::atomic<uint64_t> published_{0};
  std::atomic<int> active_count_{0};
  std::atomic<bool> stop_flag_{false};
  std::atomic<bool> busy_{false};
  std::atomic<int> next_{0}, pending_{0};
  int chunks_ = 0, helpers_ = 0;
  int64_t step_ = 0, n_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  std::vector<std::exception_ptr> errors_;
};

thread_local bool inside_parallel_for = false;

}  // namespace

void parallel_for_impl(int threads, int64_t chunk, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  static Pool pool;
  if (!inside_parallel_for) {
    struct Flag {
      Flag() { inside_parallel_for = true; }
      ~Flag() { inside_parallel_for = false; }
    } flag;
    if (pool.run(threads, chunk, n, [&](int64_t b, int64_t e) {
          inside_parallel_for = true;  // on the workers too: nested calls run inline
          fn(b, e);
        }))
      return;
  }
  for (int64_t b = 0; b < n; b += chunk) fn(b, std::min(n, b + chunk));  // the same chunks, serially
}

}  // namespace cpu
}  // namespace nfd
