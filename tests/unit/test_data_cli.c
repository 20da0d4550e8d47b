/* test_data_cli.c - `detr-data` end to end (the binary in $DETR_BUILD, default build/):
 *  - --help on the program and every subcommand (exit 0, a usage line); usage errors exit 2;
 *  - synth writes a dataset that dataset_find discovers, prints the mean JPEG size, refuses a
 *    non-empty output, and is deterministic (same options, same bytes);
 *  - check exits 0 on it; exit 1 after removing an image (the problem names the file);
 *  - bench --json prints one JSON object with images_per_s, per-stage mean milliseconds,
 *    peak_rss_bytes and the RSS after each epoch; the image count is what was asked for; over
 *    5 epochs the RSS stays flat (bounded by the prefetch slots); text mode prints images/s,
 *    per-stage times and the peak RSS; the val transform and uint8 output run too;
 *  - `default` (and DATASET "default") makes the embedded default in $XDG_CACHE_HOME once. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>
#include "check.h"
#include "test_util.h"
#include "dataset.h"

static char g_tmp[256];
static const char *g_build;

static int rm_entry(const char *p, const struct stat *s, int f, struct FTW *w) {
    (void)s, (void)f, (void)w;
    return remove(p);
}

/* Runs `detr-data ARGS` with a hang guard; returns the exit status (124: hung), fills *out and
 * *err with its stdout and stderr (caller frees). */
static int run(const char *args, char **out, char **err) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/detr-data %s", g_build, args);
    return run_capture(g_tmp, cmd, out, err);
}

static int files_equal(const char *a, const char *b) {
    char *x = read_text(a), *y = read_text(b);
    int eq = x[0] && !strcmp(x, y);
    free(x);
    free(y);
    return eq;
}

static void test_help_and_usage(void) {
    char *out, *err;
    int rc = run("--help", &out, &err);
    CHECK("help: detr-data --help lists the commands", rc == 0 && strstr(out, "synth") && strstr(out, "check") &&
          strstr(out, "bench"), "rc %d: %s", rc, out);
    free(out), free(err);
    const char *cmds[] = {"synth", "check", "bench", "default"};
    for (int i = 0; i < 4; i++) {
        char args[64], want[64], name[96];
        snprintf(args, sizeof(args), "%s --help", cmds[i]);
        snprintf(want, sizeof(want), "usage: detr-data %s", cmds[i]);
        rc = run(args, &out, &err);
        snprintf(name, sizeof(name), "help: detr-data %s --help prints its usage, exit 0", cmds[i]);
        CHECK(name, rc == 0 && strstr(out, want) != NULL, "rc %d: %s%s", rc, out, err);
        free(out), free(err);
    }
    struct { const char *args, *why; } bad[] = {
        {"", "no command"},
        {"frobnicate", "unknown command"},
        {"synth", "synth without OUT"},
        {"synth /tmp/x --size 640by480", "bad --size"},
        {"synth /tmp/x --classes 0", "--classes 0"},
        {"synth /tmp/x --images abc", "non-numeric --images"},
        {"check", "check without DATASET"},
        {"bench", "bench without DATASET"},
        {"bench /tmp/x --workers 0", "--workers 0"},
        {"bench /tmp/x --transform sideways", "bad --transform"},
        {"bench /tmp/x --scales 1,x", "bad --scales"},
        {"bench /tmp/x --bogus", "unknown option"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char name[128];
        rc = run(bad[i].args, &out, &err);
        snprintf(name, sizeof(name), "usage: %s exits 2 with a message", bad[i].why);
        CHECK(name, rc == 2 && strlen(err) > 0, "rc %d, stderr '%s'", rc, err);
        free(out), free(err);
    }
}

static void test_synth_and_check(const char *ds) {
    char args[1024], *out, *err;
    snprintf(args, sizeof(args), "synth %s --images 24 --val 6 --size 160x120 --classes 4 --seed 3 "
             "--max-objects 3", ds);
    int rc = run(args, &out, &err);
    CHECK("synth: exit 0, reports what it wrote and the mean JPEG size",
          rc == 0 && strstr(out, "24 train + 6 val") && strstr(out, "mean JPEG"), "rc %d: %s%s", rc, out, err);
    free(out), free(err);
    char ann[600], img[600], e[512];
    int found = dataset_find(ds, "train", ann, sizeof(ann), img, sizeof(img), e, sizeof(e)) == 0 &&
                dataset_find(ds, "val", ann, sizeof(ann), img, sizeof(img), e, sizeof(e)) == 0;
    CHECK("synth: dataset_find discovers both splits", found, "%s", e);

    rc = run(args, &out, &err);
    CHECK("synth: a non-empty output folder is refused (exit 1, says why)",
          rc == 1 && strstr(err, "not an empty folder"), "rc %d: %s", rc, err);
    free(out), free(err);

    char ds2[400];
    snprintf(ds2, sizeof(ds2), "%s/again", g_tmp);
    snprintf(args, sizeof(args), "synth %s --images 24 --val 6 --size 160x120 --classes 4 --seed 3 "
             "--max-objects 3 --threads 1", ds2);
    rc = run(args, &out, &err);
    free(out), free(err);
    char a[600], b[600];
    snprintf(a, sizeof(a), "%s/annotations/instances_train.json", ds);
    snprintf(b, sizeof(b), "%s/annotations/instances_train.json", ds2);
    int same = rc == 0 && files_equal(a, b);
    snprintf(a, sizeof(a), "%s/val/000000000030.jpg", ds);
    snprintf(b, sizeof(b), "%s/val/000000000030.jpg", ds2);
    same = same && files_equal(a, b);
    CHECK("synth: same options give the same bytes (1 thread vs default)", same, "rc %d or files differ", rc);

    snprintf(args, sizeof(args), "check %s", ds);
    rc = run(args, &out, &err);
    CHECK("check: a fresh synthetic dataset is clean (exit 0)", rc == 0, "rc %d: %s%s", rc, out, err);
    free(out), free(err);

    snprintf(a, sizeof(a), "%s/train/000000000005.jpg", ds2);
    remove(a);
    snprintf(args, sizeof(args), "check %s --split train", ds2);
    rc = run(args, &out, &err);
    CHECK("check: a removed image gives exit 1 and names the file", rc == 1 && strstr(out, "000000000005.jpg"),
          "rc %d: %s%s", rc, out, err);
    free(out), free(err);
}

static json_t *bench_json(const char *args, int *rc) {
    char *out, *err;
    *rc = run(args, &out, &err);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    if (!j) printf("     bench output: %s\n     stderr: %s\n", out, err);
    free(out), free(err);
    return j;
}

static double num(json_t *j, const char *key) { return json_number_value(json_object_get(j, key)); }

#ifndef __SANITIZE_ADDRESS__
/* 5 epochs: the RSS after the last epoch is within 10% (+2 MB) of the one after epoch 2. */
static void test_rss_flat(const char *ds, const char *small, const char *cache) {
    char args[1024];
    int rc;
    snprintf(args, sizeof(args), "bench %s --workers 2 --batch 4 --epochs 5 %s --cache %s --json", ds, small, cache);
    json_t *j = bench_json(args, &rc);
    json_t *rss = j ? json_object_get(j, "rss_after_epoch_bytes") : NULL;
    double r2 = json_number_value(json_array_get(rss, 1)), r5 = json_number_value(json_array_get(rss, 4));
    CHECK("bench: RSS flat over 5 epochs (epoch 5 <= epoch 2 * 1.1 + 2 MB)",
          rc == 0 && json_array_size(rss) == 5 && r2 > 0 && r5 <= r2 * 1.1 + 2e6, "rc %d, %.1f -> %.1f MB", rc,
          r2 / 1e6, r5 / 1e6);
    json_decref(j);
}
#endif

static void test_bench(const char *ds, const char *cache) {
    /* small-image preset options, as the tiny preset trains */
    const char *small = "--scales 96,112,128 --max-size 213 --resize-choices 80,96,112 --crop 64,100";
    char args[1024];
    snprintf(args, sizeof(args), "bench %s --workers 2 --batch 4 --epochs 2 %s --cache %s --json", ds, small, cache);
    int rc;
    json_t *j = bench_json(args, &rc);
    CHECK("bench --json: exit 0 and one JSON object", rc == 0 && j != NULL, "rc %d", rc);
    if (j) {
        json_t *st = json_object_get(j, "stage_mean_ms");
        CHECK("bench --json: images_per_s > 0, per-stage mean ms present",
              num(j, "images_per_s") > 0 && json_is_number(json_object_get(st, "read")) &&
              json_is_number(json_object_get(st, "decode")) && json_is_number(json_object_get(st, "augment")) &&
              json_is_number(json_object_get(st, "collate_per_batch")) && num(j, "decode_ms") > 0,
              "images_per_s %g", num(j, "images_per_s"));
        CHECK("bench --json: peak_rss_bytes and RSS after each of the 2 epochs",
              num(j, "peak_rss_bytes") > 1e6 && json_array_size(json_object_get(j, "rss_after_epoch_bytes")) == 2,
              "peak %g", num(j, "peak_rss_bytes"));
        /* 24 train images, batch 4, drop_last: 6 batches per epoch, 2 epochs */
        CHECK("bench --json: 2 epochs x 6 batches x 4 images", json_integer_value(json_object_get(j, "images")) == 48 &&
              json_integer_value(json_object_get(j, "batches")) == 12 && num(j, "skipped") == 0,
              "images %lld batches %lld", (long long)json_integer_value(json_object_get(j, "images")),
              (long long)json_integer_value(json_object_get(j, "batches")));
        printf("     bench (24 images 160x120, batch 4, 2 workers): %.0f images/s, decode %.3f ms, augment %.3f ms, "
               "peak RSS %.1f MB\n", num(j, "images_per_s"), num(j, "decode_ms"), num(j, "augment_ms"),
               num(j, "peak_rss_bytes") / 1e6);
        json_decref(j);
    }

#ifdef __SANITIZE_ADDRESS__
    test_skip("bench: RSS flat over 5 epochs", "AddressSanitizer build: its quarantine holds freed "
              "memory, so RSS grows by design (checked in the normal build)");
#else
    test_rss_flat(ds, small, cache);
#endif

    char *out, *err;
    snprintf(args, sizeof(args), "bench %s --workers 1 --batch 4 --batches 3 %s --cache %s", ds, small, cache);
    rc = run(args, &out, &err);
    CHECK("bench (text): images/s, per-stage times and peak RSS printed",
          rc == 0 && strstr(out, "images/s") && strstr(out, "decode") && strstr(out, "peak RSS"),
          "rc %d: %s%s", rc, out, err);
    free(out), free(err);

    snprintf(args, sizeof(args), "bench %s --transform val --val-size 96 --max-size 160 --batch 3 --uint8 "
             "--cache %s --json", ds, cache);
    j = bench_json(args, &rc);
    /* val: 6 images, batch 3, no drop_last */
    CHECK("bench: val transform with uint8 output over the val split", rc == 0 && j &&
          json_integer_value(json_object_get(j, "images")) == 6, "rc %d", rc);
    json_decref(j);
}

static void test_default(const char *cache) {
    char *out, *err;
    setenv("XDG_CACHE_HOME", cache, 1);
    int rc = run("default", &out, &err);
    char want[600];
    snprintf(want, sizeof(want), "%s/detr/synth-default-v2", cache);
    CHECK("default: prints $XDG_CACHE_HOME/detr/synth-default-v2, generated on first use",
          rc == 0 && strstr(out, want) && strstr(err, "generated"), "rc %d: %s%s", rc, out, err);
    free(out), free(err);
    rc = run("default", &out, &err);
    CHECK("default: reused the second time (no 'generated' message)", rc == 0 && strstr(out, want) &&
          !strstr(err, "generated"), "rc %d: %s%s", rc, out, err);
    free(out), free(err);
    char args[512];
    snprintf(args, sizeof(args), "bench default --batch 8 --batches 4 --scales 96,112,128 --max-size 213 "
             "--resize-choices 80,96,112 --crop 64,100 --json");
    int brc;
    json_t *j = bench_json(args, &brc);
    CHECK("default: bench default runs on the embedded dataset", brc == 0 && j &&
          json_integer_value(json_object_get(j, "images")) == 32 &&
          json_integer_value(json_object_get(j, "dataset_images")) == 2048, "rc %d", brc);
    json_decref(j);
    rc = run("check default", &out, &err);
    CHECK("default: check default is clean", rc == 0, "rc %d: %s%s", rc, out, err);
    free(out), free(err);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char bin[400];
    snprintf(bin, sizeof(bin), "%s/detr-data", g_build);
    if (access(bin, X_OK) != 0) {
        CHECK("detr-data is built", 0, "%s missing (set DETR_BUILD to the build folder)", bin);
        return test_finish();
    }
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_data_cli_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    char ds[400], cache[400];
    snprintf(ds, sizeof(ds), "%s/ds", g_tmp);
    snprintf(cache, sizeof(cache), "%s/cache", g_tmp);
    mkdir(cache, 0755);
    setenv("XDG_CACHE_HOME", cache, 1); /* nothing of the test lands in the user's cache */
    test_help_and_usage();
    test_synth_and_check(ds);
    test_bench(ds, cache);
    test_default(cache);
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
