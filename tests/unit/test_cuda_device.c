/* test_cuda_device.c - `detr-train --device cuda` where it cannot train on a GPU: exit code 2
 * before any work, with a message that says why (no GPU / no driver in a CUDA build; no CUDA in a
 * CPU-only build) and what to do. With a GPU present, the GPU path is scripts/gpu_check.sh's
 * business: this test then says it is skipped. Also with --amp bf16 (mixed precision reaches the
 * device check, which refuses first). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "test_util.h"
#ifdef DETR_CUDA
#include "cuda/cuda_info.h"
#endif

int main(void) {
    const char *build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char dir[256], cmd[2048], *out, *err;
    snprintf(dir, sizeof(dir), "/tmp/detr-cuda-device-%d", (int)getpid());
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", dir);
    if (system(cmd) != 0) {
        CHECK("temporary folder", 0, "cannot create %s", dir);
        return test_finish();
    }
    snprintf(cmd, sizeof(cmd), "%s/detr-train --device cuda --amp bf16 --steps 1 --out %s/out", build, dir);
    int rc = run_capture(dir, cmd, &out, &err);
#ifdef DETR_CUDA
    if (cuda_info_device_count() > 0)
        test_skip("--device cuda --amp bf16 without a GPU", "a GPU is present: make gpu-check runs bf16");
    else
        CHECK("--device cuda --amp bf16 without a GPU: the device problem, exit 2 before any work",
              rc == 2 && strstr(err, "no GPU"), "exit %d, stderr: %s", rc, err);
#else
    CHECK("--device cuda --amp bf16 in a CPU-only build: refused (exit 2)", rc == 2 && strstr(err, "without CUDA"),
          "exit %d, stderr: %s", rc, err);
#endif
    free(out);
    free(err);

    snprintf(cmd, sizeof(cmd), "%s/detr-train --device cuda --steps 1 --out %s/out", build, dir);
#ifdef DETR_CUDA
    int gpus = cuda_info_device_count();
    if (gpus > 0) {
        char why[128];
        snprintf(why, sizeof(why), "%d GPU(s) present: the GPU path is checked by make gpu-check", gpus);
        test_skip("--device cuda without a GPU", why);
    } else {
        rc = run_capture(dir, cmd, &out, &err);
        CHECK("--device cuda without a GPU: exit 2", rc == 2, "exit %d, stderr: %s", rc, err);
        CHECK("--device cuda without a GPU: says there is no GPU and what to do",
              strstr(err, "error: no GPU") && strstr(err, "HINT:") && strstr(err, "--device cpu"),
              "stderr: %s", err);
        char out_dir[320];
        snprintf(out_dir, sizeof(out_dir), "%s/out", dir);
        CHECK("--device cuda without a GPU: fails before any work (no output folder, no banner)",
              access(out_dir, F_OK) != 0 && !strstr(out, "detr-train:"), "stdout: %s", out);
        free(out);
        free(err);
    }
#else
    rc = run_capture(dir, cmd, &out, &err);
    CHECK("--device cuda in a CPU-only build: exit 2 with a rebuild hint",
          rc == 2 && strstr(err, "built without CUDA") && strstr(err, "make CUDA=1"), "exit %d, stderr: %s",
          rc, err);
    free(out);
    free(err);
#endif
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    return test_finish();
}
