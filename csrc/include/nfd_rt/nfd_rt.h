/* nfd_rt: C ABI of the Next-Frame-Diffusion runtime. The only public C/C++ header of the library.
 *
 * C99-compatible. Every function returns an nfd_status (or a plain value that cannot fail); on failure
 * nfd_last_error() holds a message naming the problem. No C++ exception or type crosses this boundary.
 * A session is not thread-safe: call it from one thread at a time (different sessions may run in parallel).
 *
 *   nfd_session_params p = nfd_session_default_params();
 *   nfd_session* s;
 *   if (nfd_session_open("m.nfd", &p, &s) != NFD_OK) { fprintf(stderr, "%s\n", nfd_last_error()); ... }
 *   nfd_session_info info; nfd_session_get_info(s, &info);
 *   nfd_session_reset(s, NULL, 0, NULL);                 // no context frames
 *   nfd_session_step(s, action, frame_rgb, NULL);        // action: float[action_dim]; frame: uint8[F*H*W*3]
 *   nfd_session_close(s);
 */
#ifndef NFD_RT_H_
#define NFD_RT_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(NFD_RT_BUILDING)
#define NFD_API __declspec(dllexport)
#else
#define NFD_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define NFD_API __attribute__((visibility("default")))
#else
#define NFD_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* NFD_VERSION_MAJOR / _MINOR / _PATCH and NFD_VERSION_STRING, generated from CMakeLists.txt's project(VERSION). */
#include "nfd_rt/nfd_rt_version.h"

typedef enum nfd_status {
  NFD_OK = 0,
  NFD_ERROR_INVALID_ARGUMENT = 1, /* a null pointer, a bad size or value (NaN action, count < 0, ...) */
  NFD_ERROR_INVALID_FILE = 2,     /* the .nfd file is malformed or does not match its config */
  NFD_ERROR_IO = 3,               /* the file cannot be opened / mapped */
  NFD_ERROR_UNSUPPORTED = 4,      /* e.g. CUDA requested but unavailable, dtype not supported on the device */
  NFD_ERROR_OUT_OF_MEMORY = 5,   /* an allocation failed, or the session would need more memory than the device
                                    has available or than params->max_memory_bytes (checked before allocating) */
  NFD_ERROR_INTERNAL = 6          /* a bug: please report it with the message */
} nfd_status;

typedef enum nfd_device { NFD_DEVICE_CPU = 0, NFD_DEVICE_CUDA = 1 } nfd_device;

/* AUTO (the default): BF16 on a CPU with AVX512-BF16 or AMX, F32 on other CPUs and on CUDA. */
typedef enum nfd_dtype { NFD_DTYPE_F32 = 0, NFD_DTYPE_BF16 = 1, NFD_DTYPE_F16 = 2, NFD_DTYPE_AUTO = 3 } nfd_dtype;

/* Speculative sampling (nfd_session_params.speculate = k > 0): EXACT generates the k frames ahead that plain
 * stepping would produce (in a background thread, between calls), so the video never changes; PARALLEL
 * denoises k frames together in one multi-frame pass when the action changes (the NFD paper's way: more frames
 * per second, not the same frames as plain stepping). Either way a repeated action is served from the frames
 * ahead, and a different one discards them and rolls the KV cache back. */
typedef enum nfd_speculate_mode { NFD_SPECULATE_EXACT = 0, NFD_SPECULATE_PARALLEL = 1 } nfd_speculate_mode;

typedef struct nfd_session_params {
  nfd_device device; /* NFD_DEVICE_CPU (default) or NFD_DEVICE_CUDA */
  nfd_dtype dtype;   /* compute dtype: AUTO (default), F32 or BF16 (with AVX512-BF16 or AMX) on the CPU; F32,
                        BF16 or F16 on CUDA */
  uint64_t seed;     /* noise seed: the same seed gives the same video on every backend */
  int32_t threads;   /* CPU threads; 0 = number of physical cores; at most 1024 */
  int32_t cuda_graphs; /* nonzero (default): capture a whole frame once as a CUDA graph and replay it */
  /* Refuse to open (NFD_ERROR_OUT_OF_MEMORY) a session that would need more bytes than this on its device;
   * 0 (default) = no limit beyond the memory the device has available, which is always checked. */
  uint64_t max_memory_bytes;
  int32_t speculate;      /* frames to generate ahead under the last action (0 = off, at most 64) */
  int32_t speculate_mode; /* an nfd_speculate_mode */
} nfd_session_params;

typedef struct nfd_session_info {
  int32_t frame_height, frame_width; /* a frame is uint8 [frame_height, frame_width, 3] (RGB, row-major); a step
                                        returns frames_per_step of them, one after the other */
  int32_t latent_channels, latent_height, latent_width; /* a latent is float [C, h, w] */
  int32_t action_dim;                /* an action is float [action_dim] */
  int32_t num_steps;                 /* denoising steps per frame */
  int32_t window, sink_frames;       /* KV cache: sink frames + rolling window (of the first cache group, for a
                                        model whose layers keep different frames, e.g. Waypoint's local layers) */
  int64_t frame_index;               /* index of the next frame step() generates */
  uint64_t memory_bytes;             /* bytes held on the device: KV cache + buffers, + the weights for a session
                                        opened from a path (a session of a shared nfd_model does not count them) */
  uint64_t speculated_served;        /* frames returned from speculation */
  uint64_t speculated_discarded;     /* frames generated ahead and thrown away because the action changed */
  int32_t frames_per_step;           /* video frames one step decodes (1; 4 for Waypoint-1.5, whose latent stands
                                        for 4 frames): frame buffers hold frames_per_step * H * W * 3 bytes.
                                        Added in 0.1.x at the end of the struct. */
} nfd_session_info;

typedef struct nfd_session nfd_session; /* opaque */
typedef struct nfd_model nfd_model;     /* opaque: weights on a device, shared by sessions */

/* The library's version, e.g. "0.1.0" (NFD_VERSION_STRING of the header it was built with). */
NFD_API const char* nfd_version(void);

/* Message of the last failed nfd_* call on this thread ("" after a successful call). Valid until the next
 * nfd_* call on the same thread. */
NFD_API const char* nfd_last_error(void);

/* Readable name of a status code, e.g. "NFD_ERROR_INVALID_FILE". */
NFD_API const char* nfd_status_name(nfd_status status);

NFD_API nfd_session_params nfd_session_default_params(void);

/* Checks a .nfd file completely (header, config, every tensor's name/dtype/shape/offsets) without loading it. */
NFD_API nfd_status nfd_model_validate(const char* path);

/* Bytes a session of `path` with `params` (NULL = defaults) would allocate on its device: weights, KV cache and
 * activation buffers exactly, plus an upper bound of the ops' scratch memory. Allocates nothing; the device need
 * not be present. nfd_session_open refuses with NFD_ERROR_OUT_OF_MEMORY when this exceeds what is available. */
NFD_API nfd_status nfd_session_estimate_memory(const char* path, const nfd_session_params* params,
                                               uint64_t* bytes_out);

/* Opens `path` (params may be NULL for the defaults). On success *out is a new session; on failure *out is NULL. */
NFD_API nfd_status nfd_session_open(const char* path, const nfd_session_params* params, nfd_session** out);

/* Frees the session; NULL is a no-op. */
NFD_API void nfd_session_close(nfd_session* session);

/* Many worlds over one copy of the weights:
 *   nfd_model* m; nfd_model_load("m.nfd", &p, &m);        // p.device, p.dtype, p.threads, p.max_memory_bytes
 *   nfd_session *a, *b; nfd_session_create(m, &p, &a); nfd_session_create(m, &p, &b);
 *   nfd_model_free(m);          // allowed at any time: each session keeps the weights alive until it closes
 *   nfd_session* sessions[2] = {a, b}; nfd_step_batch(sessions, 2, actions, frames, NULL);
 * A model is reference-counted: nfd_model_free releases the caller's handle, and the weights are freed when the
 * last of the model's sessions closes too. A model handle may be used from several threads; each session from
 * one thread at a time. */
NFD_API nfd_status nfd_model_load(const char* path, const nfd_session_params* params, nfd_model** out);
NFD_API void nfd_model_free(nfd_model* model); /* NULL is a no-op */
/* A session over `model`'s weights (params->device and params->dtype are ignored: the model's apply). */
NFD_API nfd_status nfd_session_create(nfd_model* model, const nfd_session_params* params, nfd_session** out);
/* An independent session continuing from `session`'s state (cache, frame index, seed), sharing its model. */
NFD_API nfd_status nfd_session_fork(nfd_session* session, nfd_session** out);
/* Snapshots (docs/snapshots.md): everything a world's future depends on (the KV cache of the frames a later frame
 * can still see, the frame index, the seed) as one versioned blob, checked on restore against the model's config,
 * a fingerprint of its weights, the dtype and a CRC-32C. Frames generated ahead by speculation are not saved: like
 * nfd_session_fork, a snapshot is the state after the last frame returned. Query the size first, like snprintf:
 *   size_t n; nfd_session_snapshot(s, NULL, 0, &n); void* blob = malloc(n); nfd_session_snapshot(s, blob, n, &n);
 * *size_out is set to the snapshot's size (0 on other errors). buffer NULL: only the size. A buffer with capacity
 * below the size is NFD_ERROR_INVALID_ARGUMENT, and nothing is written. The blob is plain bytes: store it, send
 * it, restore it in another process or on another machine with the same model file. */
NFD_API nfd_status nfd_session_snapshot(nfd_session* session, void* buffer, size_t capacity, size_t* size_out);
/* A new session over `model` continuing from a snapshot of a session of the same model (config and weights) and
 * dtype: on the CPU it produces bitwise the frames the snapshotted session would have produced. params->seed is
 * ignored (the snapshot's applies); speculation, threads and CUDA graphs may differ from the original's; NULL
 * params = defaults. A bad blob (not a snapshot, another format version, truncated, corrupted, another model or
 * dtype) is NFD_ERROR_INVALID_ARGUMENT with a message naming what is wrong or differs; *out is then NULL. */
NFD_API nfd_status nfd_session_create_from_snapshot(nfd_model* model, const nfd_session_params* params,
                                                    const void* snapshot, size_t size, nfd_session** out);
/* The same over its own copy of the model in `path` (params->device and dtype apply, as for nfd_session_open). */
NFD_API nfd_status nfd_session_open_snapshot(const char* path, const nfd_session_params* params, const void* snapshot,
                                             size_t size, nfd_session** out);
/* Steps `count` sessions of one model as one batched forward: actions float [count, action_dim]; frames_out
 * uint8 [count, F, H, W, 3] (F = frames_per_step) and/or latents_out float [count, C, h, w] (either may be NULL).
 * Equal to stepping each
 * session alone up to float rounding. Sessions must share a model, appear once and not speculate. */
NFD_API nfd_status nfd_step_batch(nfd_session* const* sessions, int32_t count, const float* actions,
                                  uint8_t* frames_out, float* latents_out);

NFD_API nfd_status nfd_session_get_info(const nfd_session* session, nfd_session_info* out);

/* Forgets every frame (and a streaming decoder's state), then writes `count` context frames (uint8 [count, H, W, 3])
 * into the KV cache with their actions (float [count / F, action_dim], one per latent; NULL = zeros). count must be a
 * multiple of F = frames_per_step (each latent's F frames are encoded together). count == 0 (frames may be NULL)
 * starts from nothing. */
NFD_API nfd_status nfd_session_reset(nfd_session* session, const uint8_t* frames, int32_t count,
                                     const float* actions);
/* Same with latents (float [count, C, h, w], actions [count, action_dim]) instead of frames. */
NFD_API nfd_status nfd_session_reset_latents(nfd_session* session, const float* latents, int32_t count,
                                             const float* actions);

/* Generates the next frame for `action` (float [action_dim], finite). frame_out (uint8 [F, H, W, 3]: the step's
 * F = frames_per_step frames in time order, one frame for NFD and Oasis models) and latent_out (float [C, h, w]) may
 * each be NULL; decoding runs only when frame_out is given. */
NFD_API nfd_status nfd_session_step(nfd_session* session, const float* action, uint8_t* frame_out,
                                    float* latent_out);

/* Decodes one latent (float [C, h, w]) to uint8 [F, H, W, 3] without changing the session state, except a streaming
 * decoder's (Waypoint's TAEHV keeps state between latents: decode each latent of nfd_session_step(..., NULL, latent)
 * once, in order, as a step that decodes would). */
NFD_API nfd_status nfd_session_decode(nfd_session* session, const float* latent, uint8_t* frame_out);

#ifdef __cplusplus
}
#endif

#endif /* NFD_RT_H_ */
