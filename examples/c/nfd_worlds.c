/* nfd_worlds: many worlds over one copy of the weights, from C. Loads a model once, makes N sessions of it, steps
 * them together with nfd_step_batch, forks one world into two futures, and checks the results a program can rely
 * on: a batched step equals stepping a session alone (up to float rounding), a fork equals its parent stepped
 * the same way, and freeing the model handle early is safe. Prints what it checked; exits 1 on a mismatch.
 *
 *   nfd_worlds MODEL.nfd [SESSIONS]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nfd_rt/nfd_rt.h>

#define CHECK(call)                                                                  \
  do {                                                                               \
    nfd_status st_ = (call);                                                         \
    if (st_ != NFD_OK) {                                                             \
      fprintf(stderr, "%s failed: %s: %s\n", #call, nfd_status_name(st_), nfd_last_error()); \
      return 1;                                                                      \
    }                                                                                \
  } while (0)

static float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0.f;
  size_t i;
  for (i = 0; i < n; ++i) {
    float d = fabsf(a[i] - b[i]);
    if (d > m) m = d;
  }
  return m;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : NULL;
  int n = argc > 2 ? atoi(argv[2]) : 4;
  nfd_session_params p = nfd_session_default_params();
  nfd_model* model = NULL;
  nfd_session* worlds[64];
  nfd_session* alone = NULL;
  nfd_session* fork = NULL;
  nfd_session_info info;
  float *actions, *batch_latents, *latent, *latent2;
  size_t latent_n;
  int i, frame;
  float worst = 0.f;

  if (!path || n < 2 || n > 64) {
    fprintf(stderr, "usage: %s MODEL.nfd [SESSIONS (2..64)]\n", argv[0]);
    return 2;
  }
  CHECK(nfd_model_load(path, &p, &model));
  for (i = 0; i < n; ++i) {
    p.seed = (uint64_t)(100 + i);
    CHECK(nfd_session_create(model, &p, &worlds[i]));
  }
  p.seed = 100; /* the same seed as worlds[0]: stepped alone, it must follow worlds[0] */
  CHECK(nfd_session_create(model, &p, &alone));
  nfd_model_free(model); /* the sessions keep the weights alive */
  CHECK(nfd_session_get_info(worlds[0], &info));
  latent_n = (size_t)info.latent_channels * (size_t)info.latent_height * (size_t)info.latent_width;
  actions = (float*)calloc((size_t)n * (size_t)info.action_dim, sizeof(float));
  batch_latents = (float*)malloc((size_t)n * latent_n * sizeof(float));
  latent = (float*)malloc(latent_n * sizeof(float));
  latent2 = (float*)malloc(latent_n * sizeof(float));
  if (!actions || !batch_latents || !latent || !latent2) return 1;

  for (frame = 0; frame < 2 * (info.window + info.sink_frames); ++frame) {
    for (i = 0; i < n; ++i) actions[(size_t)i * (size_t)info.action_dim + (size_t)((i + frame) % info.action_dim)] = 1.f;
    CHECK(nfd_step_batch(worlds, n, actions, NULL, batch_latents));
    CHECK(nfd_session_step(alone, actions, NULL, latent));
    {
      float d = max_abs_diff(batch_latents, latent, latent_n);
      if (d > worst) worst = d;
    }
    memset(actions, 0, (size_t)n * (size_t)info.action_dim * sizeof(float));
  }
  printf("batched %d sessions for %d frames: max |batch - alone| = %g\n", n, frame, (double)worst);
  if (worst > 1e-4f) return 1;

  CHECK(nfd_session_fork(worlds[0], &fork));
  actions[0] = 1.f;
  CHECK(nfd_session_step(worlds[0], actions, NULL, latent));
  CHECK(nfd_session_step(fork, actions, NULL, latent2));
  printf("fork: max |parent - fork| = %g\n", (double)max_abs_diff(latent, latent2, latent_n));
  if (memcmp(latent, latent2, latent_n * sizeof(float)) != 0) return 1;
  if (nfd_step_batch(worlds, n, NULL, NULL, NULL) != NFD_ERROR_INVALID_ARGUMENT) return 1;
  printf("bad call: %s\n", nfd_last_error());

  for (i = 0; i < n; ++i) nfd_session_close(worlds[i]);
  nfd_session_close(alone);
  nfd_session_close(fork); /* the last holder: the weights go with it */
  free(actions);
  free(batch_latents);
  free(latent);
  free(latent2);
  printf("ok\n");
  return 0;
}
