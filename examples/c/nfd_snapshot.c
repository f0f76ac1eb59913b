/* nfd_snapshot: park a world and bring it back, from C. Steps a session past its cache's wrap-around, takes a
 * snapshot (size first, like snprintf), restores it into a new session of the same model and into a session with
 * its own copy of the file, and checks that all three produce the same frames bit for bit from there; then shows
 * the errors a program gets for a too-small buffer and a damaged blob. With OUT, the blob is also written there
 * (any process with the same model file can restore it). Prints what it checked; exits 1 on a mismatch.
 *
 *   nfd_snapshot MODEL.nfd [OUT.snap]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nfd_rt/nfd_rt.h>

#define CHECK(call)                                                                          \
  do {                                                                                       \
    nfd_status st_ = (call);                                                                 \
    if (st_ != NFD_OK) {                                                                     \
      fprintf(stderr, "%s failed: %s: %s\n", #call, nfd_status_name(st_), nfd_last_error()); \
      return 1;                                                                              \
    }                                                                                        \
  } while (0)

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : NULL;
  const char* out_path = argc > 2 ? argv[2] : NULL;
  nfd_session_params p = nfd_session_default_params();
  nfd_model* model = NULL;
  nfd_session *world = NULL, *restored = NULL, *own = NULL, *none = NULL;
  nfd_session_info info;
  unsigned char* blob;
  size_t size = 0, size2 = 0, latent_n, frame_n;
  float *action, *latents[3];
  unsigned char* frames[3];
  int i, t, frames_before, frames_after;
  nfd_status st;

  if (!path) {
    fprintf(stderr, "usage: %s MODEL.nfd [OUT.snap]\n", argv[0]);
    return 2;
  }
  CHECK(nfd_model_load(path, &p, &model));
  p.seed = 7;
  CHECK(nfd_session_create(model, &p, &world));
  CHECK(nfd_session_get_info(world, &info));
  latent_n = (size_t)info.latent_channels * (size_t)info.latent_height * (size_t)info.latent_width;
  frame_n = (size_t)info.frame_height * (size_t)info.frame_width * 3;
  action = (float*)calloc((size_t)info.action_dim, sizeof(float));
  for (i = 0; i < 3; ++i) {
    latents[i] = (float*)malloc(latent_n * sizeof(float));
    frames[i] = (unsigned char*)malloc(frame_n);
    if (!latents[i] || !frames[i]) return 1;
  }
  if (!action) return 1;

  frames_before = 2 * (info.sink_frames + info.window) + 3; /* past the ring's wrap-around */
  for (t = 0; t < frames_before; ++t) {
    memset(action, 0, (size_t)info.action_dim * sizeof(float));
    action[t % info.action_dim] = 1.f;
    CHECK(nfd_session_step(world, action, NULL, latents[0]));
  }

  /* The size first, then the blob. */
  CHECK(nfd_session_snapshot(world, NULL, 0, &size));
  blob = (unsigned char*)malloc(size);
  if (!blob) return 1;
  st = nfd_session_snapshot(world, blob, size - 1, &size2);
  printf("buffer one byte short: %s (size_out %lu): %s\n", nfd_status_name(st), (unsigned long)size2,
         nfd_last_error());
  if (st != NFD_ERROR_INVALID_ARGUMENT || size2 != size) return 1;
  CHECK(nfd_session_snapshot(world, blob, size, &size2));
  if (size2 != size) return 1;
  printf("snapshot at frame %ld: %lu bytes\n", (long)frames_before, (unsigned long)size);
  if (out_path) {
    FILE* f = fopen(out_path, "wb");
    if (!f || fwrite(blob, 1, size, f) != size || fclose(f) != 0) {
      fprintf(stderr, "cannot write %s\n", out_path);
      return 1;
    }
  }

  /* Two restored sessions: over the shared model (params->seed is ignored: the snapshot's applies), and over a
   * copy of the file of their own. */
  p.seed = 12345;
  CHECK(nfd_session_create_from_snapshot(model, &p, blob, size, &restored));
  CHECK(nfd_session_open_snapshot(path, &p, blob, size, &own));
  CHECK(nfd_session_get_info(restored, &info));
  if (info.frame_index != frames_before) return 1;

  frames_after = 2 * info.window + 3;
  for (t = 0; t < frames_after; ++t) {
    memset(action, 0, (size_t)info.action_dim * sizeof(float));
    action[(t / 2) % info.action_dim] = 1.f;
    CHECK(nfd_session_step(world, action, frames[0], latents[0]));
    CHECK(nfd_session_step(restored, action, frames[1], latents[1]));
    CHECK(nfd_session_step(own, action, frames[2], latents[2]));
    for (i = 1; i < 3; ++i)
      if (memcmp(latents[0], latents[i], latent_n * sizeof(float)) != 0 || memcmp(frames[0], frames[i], frame_n) != 0) {
        fprintf(stderr, "frame %d after the snapshot differs (restored session %d)\n", t, i);
        return 1;
      }
  }
  printf("restored sessions: %d frames bitwise equal to the original's\n", frames_after);

  /* A damaged blob: a clear error, no session. */
  st = nfd_session_create_from_snapshot(model, &p, blob, size - 10, &none);
  printf("truncated blob: %s: %s\n", nfd_status_name(st), nfd_last_error());
  if (st != NFD_ERROR_INVALID_ARGUMENT || none != NULL) return 1;
  blob[size / 2] ^= 1;
  st = nfd_session_create_from_snapshot(model, &p, blob, size, &none);
  printf("flipped bit: %s: %s\n", nfd_status_name(st), nfd_last_error());
  if (st != NFD_ERROR_INVALID_ARGUMENT || none != NULL) return 1;

  nfd_model_free(model);
  nfd_session_close(world);
  nfd_session_close(restored);
  nfd_session_close(own);
  free(blob);
  free(action);
  for (i = 0; i < 3; ++i) {
    free(latents[i]);
    free(frames[i]);
  }
  printf("ok\n");
  return 0;
}
