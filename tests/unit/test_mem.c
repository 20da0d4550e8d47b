/* test_mem.c - memory accounting by category, the --mem-limit budget, the arena, and the
 * out-of-memory behaviour of detr-train (exit code 3 and an explained message). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include "arena.h"
#include "backend.h"
#include "check.h"
#include "mem.h"
#include "test_util.h"

static void test_accounting(void) {
    MemStats s0 = mem_stats();
    void *a = host_alloc(MEM_PARAMS, 1000), *b = host_alloc(MEM_ACTS, 3000);
    MemStats s1 = mem_stats();
    CHECK("mem: params charged", s1.current[MEM_PARAMS] - s0.current[MEM_PARAMS] == 1000, "got %zu",
          s1.current[MEM_PARAMS] - s0.current[MEM_PARAMS]);
    CHECK("mem: activations charged", s1.current[MEM_ACTS] - s0.current[MEM_ACTS] == 3000, "got %zu",
          s1.current[MEM_ACTS] - s0.current[MEM_ACTS]);
    CHECK("mem: total", s1.total_current - s0.total_current == 4000, "got %zu",
          s1.total_current - s0.total_current);
    CHECK("mem: alignment", ((uintptr_t)a % 64) == 0 && ((uintptr_t)b % 64) == 0, "unaligned");
    host_free(b);
    MemStats s2 = mem_stats();
    CHECK("mem: release", s2.current[MEM_ACTS] == s0.current[MEM_ACTS], "acts %zu", s2.current[MEM_ACTS]);
    CHECK("mem: peak kept", s2.peak[MEM_ACTS] >= s0.current[MEM_ACTS] + 3000, "peak %zu", s2.peak[MEM_ACTS]);
    host_free(a);
}

static void test_budget(void) {
    mem_set_exit_on_oom(0);
    MemStats s0 = mem_stats();
    mem_set_limit(s0.total_current + 10000);
    void *a = host_alloc(MEM_WORKSPACE, 6000);
    CHECK("budget: allocation under the limit", a != NULL, "refused");
    fprintf(stderr, "(the refusal below is expected)\n");
    void *b = host_alloc(MEM_WORKSPACE, 6000);
    CHECK("budget: allocation over the limit refused", b == NULL, "accepted");
    MemStats s1 = mem_stats();
    CHECK("budget: refused request recorded", s1.failed_request == 6000, "got %zu", s1.failed_request);
    CHECK("budget: refusal charges nothing", s1.total_current == s0.total_current + 6000, "got %zu",
          s1.total_current - s0.total_current);
    host_free(a);
    mem_set_limit(0);
    mem_set_exit_on_oom(1);
}

static void test_parse_size(void) {
    size_t v = 0;
    CHECK("parse 512", mem_parse_size("512", &v) == 0 && v == 512, "got %zu", v);
    CHECK("parse 64M", mem_parse_size("64M", &v) == 0 && v == 64u << 20, "got %zu", v);
    CHECK("parse 2GiB", mem_parse_size("2GiB", &v) == 0 && v == (size_t)2 << 30, "got %zu", v);
    CHECK("parse 1.5k", mem_parse_size("1.5k", &v) == 0 && v == 1536, "got %zu", v);
    CHECK("parse rejects 12X", mem_parse_size("12X", &v) != 0, "accepted");
    CHECK("parse rejects empty", mem_parse_size("", &v) != 0, "accepted");
    CHECK("parse rejects -5", mem_parse_size("-5", &v) != 0, "accepted");
}

static void test_arena(void) {
    const Backend *be = backend_cpu();
    Arena *a = arena_create(be, MEM_ACTS);
    MemStats s0 = mem_stats();
    float *x = arena_alloc(a, 100), *y = arena_alloc(a, 3 << 20); /* forces a second chunk */
    CHECK("arena: aligned", ((uintptr_t)x % 64) == 0 && ((uintptr_t)y % 64) == 0, "unaligned");
    CHECK("arena: distinct", x != y, "same pointer");
    float *z = arena_zeros(a, 1000);
    int zero = 1;
    for (int i = 0; i < 1000; i++) zero &= z[i] == 0.0f;
    CHECK("arena: zeros", zero, "not zero");
    size_t used = arena_used_bytes(a);
    CHECK("arena: used bytes", used >= (100 + (3u << 20) + 1000) * sizeof(float), "used %zu", used);
    arena_reset(a);
    /* the next step gets one chunk of the high-water size, and reuses it after that */
    arena_alloc(a, 100);
    arena_alloc(a, 3 << 20);
    MemStats s1 = mem_stats();
    arena_reset(a);
    arena_alloc(a, 100);
    arena_alloc(a, 3 << 20);
    MemStats s2 = mem_stats();
    CHECK("arena: steady state allocates nothing new", s2.current[MEM_ACTS] == s1.current[MEM_ACTS],
          "%zu vs %zu", s2.current[MEM_ACTS], s1.current[MEM_ACTS]);
    arena_destroy(a);
    MemStats s3 = mem_stats();
    CHECK("arena: destroy releases", s3.current[MEM_ACTS] == s0.current[MEM_ACTS], "%zu left",
          s3.current[MEM_ACTS] - s0.current[MEM_ACTS]);
}

/* detr-train under a budget too small for the tiny model must exit with EXIT_OOM and explain. */
static void test_train_oom(void) {
    setenv("XDG_CACHE_HOME", "/tmp/detr-oom-test-cache", 1); /* embedded dataset, index cache */
    const char *build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/detr-train --threads 1 --steps 1 --batch 2 --scales 64 --max-size 64 --resize-choices 48,56,64 --crop 40,48 "
             "--mem-limit 30M --out /tmp/detr-oom-test > /tmp/detr-oom-test.log 2>&1", build);
    int rc = system(cmd);
    int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    CHECK("detr-train --mem-limit: exit code 3", code == EXIT_OOM, "exit code %d (log /tmp/detr-oom-test.log)", code);
    char *buf = read_text("/tmp/detr-oom-test.log");
    CHECK("detr-train --mem-limit: refused at start with the estimate per category and a hint",
          strstr(buf, "does not fit --mem-limit 31457280") && strstr(buf, "budget") &&
              strstr(buf, "parameters") && strstr(buf, "gradients") && strstr(buf, "optimizer") &&
              strstr(buf, "activations") && strstr(buf, "inputs") && strstr(buf, "HINT") &&
              !strstr(buf, "epoch 0 step"),
          "log: %.600s", buf);

    /* a budget that fits: the estimate is printed and bounds the peak the run really reaches */
    snprintf(cmd, sizeof(cmd), "%s/detr-train --threads 1 --steps 2 --batch 2 --scales 64 --max-size 64 "
             "--resize-choices 48,56,64 --crop 40,48 --eval-every 0 --mem-limit 1G --out /tmp/detr-oom-test "
             "> /tmp/detr-oom-test.log 2>&1", build);
    rc = system(cmd);
    code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    free(buf);
    buf = read_text("/tmp/detr-oom-test.log");
    double est_mib = -1;
    const char *at = strstr(buf, "memory: estimated ");
    if (at) est_mib = atof(at + strlen("memory: estimated "));
    long long peak = -1; /* the last step's mem_peak_bytes: the run's peak */
    char *log = read_text("/tmp/detr-oom-test/train.jsonl");
    for (const char *p = log; (p = strstr(p, "\"mem_peak_bytes\":")); p++)
        peak = atoll(p + strlen("\"mem_peak_bytes\":"));
    CHECK("detr-train --mem-limit: a run that fits trains, and its peak stays within the estimate",
          code == 0 && est_mib > 0 && peak > 0 && peak <= est_mib * 1048576.0 * 1.001 + 1,
          "exit %d, estimate %.1f MiB, peak %lld bytes; log %.300s", code, est_mib, peak, buf);
    free(log);
    free(buf);
}

int main(void) {
    test_accounting();
    test_budget();
    test_parse_size();
    test_arena();
    test_train_oom();
    return test_finish();
}
