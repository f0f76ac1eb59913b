/* nfd_example: open a .nfd model, start from an empty context, step 16 frames on scripted actions and write
 * them as frame_000.ppm ... frame_015.ppm. C99; uses only the public C ABI (nfd_rt/nfd_rt.h).
 *
 *   nfd_example MODEL.nfd [OUT_DIR] [FRAMES]
 */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nfd_rt/nfd_rt.h>

static double now_seconds(void) {
#if defined(CLOCK_MONOTONIC)
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
  return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static int write_ppm(const char* path, const uint8_t* rgb, int width, int height) {
  FILE* f = fopen(path, "wb");
  size_t n = (size_t)width * (size_t)height * 3;
  if (!f) return 0;
  fprintf(f, "P6\n%d %d\n255\n", width, height);
  if (fwrite(rgb, 1, n, f) != n) {
    fclose(f);
    return 0;
  }
  return fclose(f) == 0;
}

int main(int argc, char** argv) {
  const char* model = argc > 1 ? argv[1] : NULL;
  const char* out_dir = argc > 2 ? argv[2] : ".";
  int frames = argc > 3 ? atoi(argv[3]) : 16;
  nfd_session_params params = nfd_session_default_params();
  nfd_session* session = NULL;
  nfd_session_info info;
  float* action = NULL;
  uint8_t* rgb = NULL;
  double t0, total = 0.0;
  int i, rc = 1;

  if (!model || frames < 1) {
    fprintf(stderr, "usage: %s MODEL.nfd [OUT_DIR] [FRAMES]\n", argv[0]);
    return 2;
  }
  printf("nfd_rt %s\n", nfd_version());
  params.seed = 1234;
  if (nfd_session_open(model, &params, &session) != NFD_OK) {
    fprintf(stderr, "cannot open %s: %s\n", model, nfd_last_error());
    return 1;
  }
  if (nfd_session_get_info(session, &info) != NFD_OK) goto fail;
  printf("model: %dx%d frames, latent %dx%dx%d, action_dim %d, %d steps/frame\n", info.frame_width,
         info.frame_height, info.latent_channels, info.latent_height, info.latent_width, info.action_dim,
         info.num_steps);

  action = (float*)calloc((size_t)info.action_dim, sizeof(float));
  rgb = (uint8_t*)malloc((size_t)info.frame_width * (size_t)info.frame_height * 3);
  if (!action || !rgb) {
    fprintf(stderr, "out of memory\n");
    goto done;
  }
  if (nfd_session_reset(session, NULL, 0, NULL) != NFD_OK) goto fail;

  for (i = 0; i < frames; ++i) {
    char path[4096];
    double dt;
    /* Scripted input: hold one key for 8 frames, cycling through the keys (a fixed script, no game logic in C). */
    memset(action, 0, (size_t)info.action_dim * sizeof(float));
    action[(i / 8) % info.action_dim] = 1.0f;
    t0 = now_seconds();
    if (nfd_session_step(session, action, rgb, NULL) != NFD_OK) goto fail;
    dt = now_seconds() - t0;
    total += dt;
    snprintf(path, sizeof(path), "%s/frame_%03d.ppm", out_dir, i);
    if (!write_ppm(path, rgb, info.frame_width, info.frame_height)) {
      fprintf(stderr, "cannot write %s: %s (does the folder %s exist?)\n", path, strerror(errno), out_dir);
      goto done;
    }
    printf("frame %3d: %7.2f ms -> %s\n", i, 1e3 * dt, path);
  }
  printf("%d frames in %.3f s: %.2f FPS\n", frames, total, total > 0 ? frames / total : 0.0);
  rc = 0;
  goto done;

fail:
  fprintf(stderr, "nfd_rt error: %s\n", nfd_last_error());
done:
  free(action);
  free(rgb);
  nfd_session_close(session);
  return rc;
}
