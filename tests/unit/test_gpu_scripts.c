/* test_gpu_scripts.c - the GPU session's scripts stay runnable where CI has no GPU:
 *   - bench/gpu_bench.py runs its whole path on the CPU (--device cpu, tiny preset, 64x64, batch
 *     2 and 4, float32 and bf16): C (bench_train) and PyTorch (bench_torch.py, Debian's torch)
 *     alternate, every (implementation, precision, batch) gives a result with images/s > 0, and
 *     the report has one row per (precision, batch) with a ratio;
 *   - scripts/gpu_check.sh without a GPU exits 2 at once, saying so, and checks nothing.
 * (The trace verdict of gpu_check is tested by test_gpu_trace_verdict.) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "test_util.h"

static void test_gpu_bench_on_cpu(const char *dir, const char *build) {
    char cmd[2048], *log;
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 bench/gpu_bench.py --build %s --device cpu --preset tiny --size 64 --batches 2,4 "
             "--precisions off,bf16 --warmup 1 --steps 2 --threads 1 --max-rounds 1 --budget 100 "
             "--out %s/gb.md --json %s/gb.json --logs %s/logs", build, dir, dir, dir);
    int rc = run_merged(dir, cmd, &log);
    CHECK("gpu_bench: the CPU run of the whole path succeeds", rc == 0, "exit %d: %.1500s", rc, log);
    free(log);
    char path[512];
    snprintf(path, sizeof(path), "%s/gb.json", dir);
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    json_t *results = json_object_get(doc, "results");
    int found[2][2][2] = {{{0}}}; /* [impl c/torch][amp off/bf16][batch 2/4] */
    size_t i;
    json_t *r;
    json_array_foreach(results, i, r) {
        const char *impl = json_string_value(json_object_get(r, "impl"));
        const char *amp = json_string_value(json_object_get(r, "amp"));
        json_int_t batch = json_integer_value(json_object_get(r, "batch"));
        double ips = json_number_value(json_object_get(r, "images_per_s"));
        if (!impl || !amp || (batch != 2 && batch != 4) || !(ips > 0)) continue;
        int a = strcmp(impl, "c") == 0 ? 0 : strcmp(impl, "torch") == 0 ? 1 : -1;
        int p = strcmp(amp, "off") == 0 ? 0 : strcmp(amp, "bf16") == 0 ? 1 : -1;
        if (a >= 0 && p >= 0) found[a][p][batch == 4] = 1;
    }
    int all = 1;
    for (int a = 0; a < 2; a++)
        for (int p = 0; p < 2; p++)
            for (int b = 0; b < 2; b++) all &= found[a][p][b];
    CHECK("gpu_bench: images/s for C and PyTorch, float32 and bf16, batch 2 and 4", doc && all,
          "%s", doc ? "a combination is missing or has no images/s" : je.text);
    json_decref(doc);
    snprintf(path, sizeof(path), "%s/gb.md", dir);
    char *md = read_text(path);
    int rows = 0;
    for (const char *prec = "fp32"; prec; prec = strcmp(prec, "fp32") == 0 ? "bf16" : NULL)
        for (int b = 2; b <= 4; b += 2) {
            char row[64];
            snprintf(row, sizeof(row), "| %s | %d | ", prec, b);
            const char *at = strstr(md, row);
            rows += at && strstr(at, "x** (") && strstr(at, "x** (") < strchr(at, '\n');
        }
    CHECK("gpu_bench: the report has a row with a ratio per precision and batch", rows == 4, "%d of 4 rows: %.800s",
          rows, md);
    free(md);
}

static void test_gpu_check_without_gpu(const char *dir) {
    if (system("command -v nvidia-smi >/dev/null 2>&1") == 0) {
        test_skip("gpu_check without a GPU", "nvidia-smi is installed here: make gpu-check is the test");
        return;
    }
    char cmd[600], *log;
    snprintf(cmd, sizeof(cmd), "bash scripts/gpu_check.sh %s/gc", dir);
    int rc = run_merged(dir, cmd, &log);
    CHECK("gpu_check without a GPU: exit 2, says so, checks nothing",
          rc == 2 && strstr(log, "no GPU") && strstr(log, "nothing was checked"), "exit %d: %.600s", rc, log);
    free(log);
}

int main(void) {
    const char *build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char dir[256];
    snprintf(dir, sizeof(dir), "/tmp/test_gpu_scripts.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char bench[600];
    snprintf(bench, sizeof(bench), "%s/bench/bench_train", build);
    if (access("/usr/bin/python3", X_OK) != 0)
        test_skip("gpu_bench on the CPU", "/usr/bin/python3 (Debian's, with torch) is not installed");
    else if (access(bench, X_OK) != 0)
        test_skip("gpu_bench on the CPU", "bench/bench_train is not built (make builds it with the programs)");
    else
        test_gpu_bench_on_cpu(dir, build);
    test_gpu_check_without_gpu(dir);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (g_test_fail == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_finish();
}
