/* test_input_batch.c - the uint8 data path (trainer/input_batch.h, trainer/cuda/cuda_input.h).
 *   1. CPU: on every batch of two epochs of a real synthetic dataset (images of varied sizes, so
 *      most batches have padding), the loader's uint8 batch normalised by
 *      input_normalise_u8_cnhw is bitwise the loader's own float batch (transposed to CNHW),
 *      padding exactly +0; a scale-and-offset variant of the formula is shown to differ, so
 *      the comparison does notice a change of rounding;
 *   2. input_batch_images_cnhw on the CPU backend: float and uint8 batches give the same bits;
 *      the model's input hook (detr_forward with images NULL) gives the same predictions as the
 *      host float images, and an unknown mask finds no batch;
 *   3. detr-train --gpu-preprocess: bad values and "on" without --device cuda are refused
 *      (exit 2, naming the option); "off" on the CPU trains;
 *   4. with a GPU (skipped otherwise): the copy stream + kernel path equals the CPU path bit for
 *      bit, over batches of growing and shrinking sizes on one stager (buffer growth and reuse),
 *      and reports a copy time; detr-train --device cuda records h2d_ns and the h2d range. */
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "detr.h"
#include "input_batch.h"
#include "loader_test_util.h"
#include "test_db.h"
#include "test_util.h"
#ifdef DETR_CUDA
#include "cuda/backend_cuda.h"
#include "cuda/backend_cuda_table.h"
#endif

static char g_build[512];

/* Index of (b, c, p) in [B, 3, plane] and in [3, B, plane]. */
static size_t nchw(int b, int c, size_t p, int B, size_t plane) {
    (void)B;
    return ((size_t)b * 3 + c) * plane + p;
}
static size_t cnhw(int b, int c, size_t p, int B, size_t plane) {
    return ((size_t)c * B + b) * plane + p;
}

/* Compares CNHW floats with the loader's NCHW floats bit for bit; counts what was compared. */
typedef struct {
    size_t values, padded, mismatches;
    char first[200];
} Compare;

static void compare_with_loader(const float *got_cnhw, const float *want_nchw, const uint8_t *mask,
                                int B, int H, int W, Compare *cmp) {
    size_t plane = (size_t)H * W;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < 3; c++)
            for (size_t p = 0; p < plane; p++) {
                float g = got_cnhw[cnhw(b, c, p, B, plane)], w = want_nchw[nchw(b, c, p, B, plane)];
                cmp->values++;
                cmp->padded += mask[(size_t)b * plane + p] != 0;
                if (memcmp(&g, &w, sizeof g) != 0 && cmp->mismatches++ == 0)
                    snprintf(cmp->first, sizeof cmp->first, "image %d channel %d pixel %zu: %.9g vs the "
                             "loader's %.9g", b, c, p, g, w);
            }
}

/* A loader over ds (test transform, batch 3), uint8 or float output. */
static Loader *open_loader(const Dataset *ds, int u8, char *err, size_t errlen) {
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    cfg.uint8_output = u8;
    return loader_create(ds, &cfg, err, errlen);
}

/* 1. Every batch of two epochs, uint8 + CPU normalisation against the loader's floats. */
static void test_cpu_matches_loader(const Dataset *ds) {
    char err[512] = "";
    Loader *lf = open_loader(ds, 0, err, sizeof err), *lu = lf ? open_loader(ds, 1, err, sizeof err) : NULL;
    CHECK("cpu: loaders open", lf && lu, "%s", err);
    if (!lf || !lu) {
        loader_destroy(lf);
        return;
    }
    Compare cmp = {0};
    int batches = 0, same_shape = 1, scale_offset_differs = 0;
    for (int epoch = 0; epoch < 2; epoch++) {
        int ok = loader_start_epoch(lf, epoch, 0) == 0 && loader_start_epoch(lu, epoch, 0) == 0;
        LoaderBatch *bf, *bu;
        while (ok && loader_next(lf, &bf, 30, err, sizeof err) == 1) {
            if (loader_next(lu, &bu, 30, err, sizeof err) != 1) {
                loader_release(lf, bf);
                same_shape = 0;
                break;
            }
            same_shape &= bf->B == bu->B && bf->H == bu->H && bf->W == bu->W && !bu->images &&
                          bu->images_u8 && !memcmp(bf->mask, bu->mask, (size_t)bf->B * bf->H * bf->W);
            if (same_shape) {
                size_t plane = (size_t)bu->H * bu->W, n = 3 * (size_t)bu->B * plane;
                float *x = malloc(n * sizeof(float));
                input_normalise_u8_cnhw(bu->images_u8, bu->mask, bu->B, bu->H, bu->W, x);
                compare_with_loader(x, bf->images, bf->mask, bf->B, bf->H, bf->W, &cmp);
                /* control: v * (1 / (255 std)) - mean / std rounds differently for some values */
                for (size_t p = 0; p < plane && !scale_offset_differs; p++) {
                    if (bu->mask[p]) continue;
                    float v = bu->images_u8[p], s = 1.0f / (255.0f * INPUT_STD[0]);
                    float alt = v * s - INPUT_MEAN[0] / INPUT_STD[0];
                    scale_offset_differs = memcmp(&alt, &bf->images[p], sizeof alt) != 0;
                }
                free(x);
            }
            batches++;
            loader_release(lf, bf);
            loader_release(lu, bu);
        }
    }
    CHECK("cpu: the float and uint8 loaders give batches of the same shape and mask", same_shape && batches > 4,
          "%d batches; %s", batches, err);
    CHECK("cpu: batches with padding were compared", cmp.padded > 1000 && cmp.values > cmp.padded,
          "%zu values, %zu padded", cmp.values, cmp.padded);
    CHECK("cpu: uint8 + input_normalise_u8_cnhw == the loader's float batch, bitwise",
          cmp.values > 0 && cmp.mismatches == 0, "%zu of %zu values differ; first: %s", cmp.mismatches,
          cmp.values, cmp.first);
    CHECK("cpu: control: a scale-and-offset formula differs in the last bit (the check is sensitive)",
          scale_offset_differs, "v * s + o gave the loader's bits for every pixel of image 0");
    loader_destroy(lf);
    loader_destroy(lu);
}

static DetrConfig tiny_config(void) {
    DetrConfig c = {.depth = 18, .hidden = 32, .nheads = 4, .enc_layers = 1, .dec_layers = 2,
                    .ffn = 64, .queries = 5, .num_classes = 3, .dropout = 0.0f, .aux_loss = 1};
    return c;
}

/* 2. The backend function and the model's input hook on the CPU backend. */
static void test_cpu_backend_and_model(const Dataset *ds) {
    char err[512] = "";
    Loader *lf = open_loader(ds, 0, err, sizeof err), *lu = lf ? open_loader(ds, 1, err, sizeof err) : NULL;
    LoaderBatch *bf = NULL, *bu = NULL;
    int ok = lf && lu && loader_start_epoch(lf, 1, 2) == 0 && loader_start_epoch(lu, 1, 2) == 0 &&
             loader_next(lf, &bf, 30, err, sizeof err) == 1 && loader_next(lu, &bu, 30, err, sizeof err) == 1;
    CHECK("cpu backend: batches loaded", ok, "%s", err);
    if (!ok) goto done;
    const Backend *be = backend_cpu();
    Arena *a = arena_create(be, MEM_ACTS);
    InputBatch inf, inu;
    input_batch_from_loader(&inf, bf);
    input_batch_from_loader(&inu, bu);
    size_t n = 3 * (size_t)bf->B * bf->H * bf->W;
    float *xf = input_batch_images_cnhw(&inf, be, a), *xu = input_batch_images_cnhw(&inu, be, a);
    CHECK("cpu backend: float and uint8 batches give the same CNHW bits",
          inf.images && !inu.images && inu.images_u8 && !memcmp(xf, xu, n * sizeof(float)),
          "float path %p, uint8 path %p", (void *)inf.images, (void *)inu.images_u8);
    CHECK("cpu backend: no GPU copy is pending on a host batch", input_batch_wait_copied(&inu) == 0,
          "wait_copied returned non-zero");
    arena_destroy(a);

    /* the model: host floats vs. the input hook over the uint8 batch */
    DetrConfig cfg = tiny_config();
    Detr *m = detr_create(&cfg, be, 1);
    detr_init(m, 5);
    int B = bf->B, H = bf->H, W = bf->W;
    size_t T = (size_t)cfg.dec_layers * B * cfg.queries, nl = T * (cfg.num_classes + 1), nb = T * 4;
    detr_forward(m, bf->images, bf->mask, B, H, W, 0, 0);
    float *logits = malloc(nl * sizeof(float)), *boxes = malloc(nb * sizeof(float));
    memcpy(logits, m->logits_host, nl * sizeof(float));
    memcpy(boxes, m->boxes_host, nb * sizeof(float));
    InputBatchSet set = {&inu, 1};
    detr_set_input_hook(m, input_batch_set_images, &set);
    detr_forward(m, NULL, bu->mask, B, H, W, 0, 0);
    CHECK("model: detr_forward through the input hook == with the host float images, bitwise",
          !memcmp(logits, m->logits_host, nl * sizeof(float)) && !memcmp(boxes, m->boxes_host, nb * sizeof(float)),
          "predictions differ (rel err logits %.3g)", rel_err(m->logits_host, logits, nl));
    Arena *a2 = arena_create(be, MEM_ACTS);
    CHECK("model: the input set finds no batch for an unknown mask",
          input_batch_set_images(&set, be, a2, bf->mask, B, H, W) == NULL &&
              input_batch_set_images(&set, be, a2, bu->mask, B, H, W + 1) == NULL,
          "a batch was returned");
    arena_destroy(a2);
    detr_set_input_hook(m, NULL, NULL);
    free(logits);
    free(boxes);
    detr_destroy(m);
done:
    if (bf) loader_release(lf, bf);
    if (bu) loader_release(lu, bu);
    loader_destroy(lf);
    loader_destroy(lu);
}

/* Runs detr-train on the dataset folder with extra options; the output in *log. */
static int train(const char *root, const char *ds_dir, const char *extra, char **log) {
    char cmd[4096], *out, *err;
    snprintf(cmd, sizeof cmd, "%s/detr-train --data %s --cache %s/cache --threads 1 --workers 2 "
             "--batch 2 --scales 48 --max-size 64 --resize-choices 40,48,56 --crop 40,48 --val-size 48 "
             "--hidden 32 --ffn 64 --queries 5 --enc-layers 1 --dec-layers 2 --eval-every 0 --out %s/run "
             "%s", g_build, ds_dir, root, root, extra);
    int rc = run_capture(root, cmd, &out, &err);
    size_t n = strlen(out) + strlen(err) + 2;
    *log = malloc(n);
    snprintf(*log, n, "%s\n%s", out, err);
    free(out);
    free(err);
    return rc;
}

/* 3. The option on the CPU. */
static void test_cli_cpu(const char *root, const char *ds_dir) {
    char *log;
    int rc = train(root, ds_dir, "--steps 1 --gpu-preprocess maybe", &log);
    CHECK("cli: --gpu-preprocess maybe: exit 2 naming the values", rc == 2 && strstr(log, "--gpu-preprocess 'maybe'") &&
          strstr(log, "on or off"), "exit %d: %.400s", rc, log);
    free(log);
    rc = train(root, ds_dir, "--steps 1 --device cpu --gpu-preprocess on", &log);
    CHECK("cli: --gpu-preprocess on on the CPU: exit 2, needs --device cuda",
          rc == 2 && strstr(log, "--gpu-preprocess on needs --device cuda") && !strstr(log, "step "),
          "exit %d: %.400s", rc, log);
    free(log);
    rc = train(root, ds_dir, "--steps 1 --gpu-preprocess off", &log);
    CHECK("cli: --gpu-preprocess off on the CPU trains", rc == 0 && strstr(log, "trained 1 steps"),
          "exit %d: %.600s", rc, log);
    free(log);
}

#ifdef DETR_CUDA

/* 4a. The CUDA path against the CPU path, on one stager over batches of several sizes. */
static void test_gpu_matches_cpu(const Dataset *ds) {
    char err[512] = "";
    Loader *lu = open_loader(ds, 1, err, sizeof err);
    InputStager *stager = input_stager_create();
    const Backend *be = backend_cuda();
    Arena *a = arena_create(be, MEM_ACTS);
    int batches = 0, shapes = 0, last_hw = -1, ok = lu && loader_start_epoch(lu, 0, 0) == 0;
    size_t mismatches = 0, values = 0;
    int64_t copy_ns = 0;
    LoaderBatch *b;
    while (ok && loader_next(lu, &b, 30, err, sizeof err) == 1) {
        InputBatch in;
        input_batch_from_loader(&in, b);
        input_batch_upload_async(&in, stager);
        arena_reset(a);
        float *x = input_batch_images_cnhw(&in, be, a); /* device [3, B, H, W] */
        copy_ns += input_batch_wait_copied(&in);        /* before the slot goes back */
        size_t n = 3 * (size_t)b->B * b->H * b->W;
        float *got = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
        be->download(got, x, n * sizeof(float));
        input_normalise_u8_cnhw(b->images_u8, b->mask, b->B, b->H, b->W, want);
        for (size_t i = 0; i < n; i++) mismatches += memcmp(&got[i], &want[i], sizeof(float)) != 0;
        values += n;
        free(got);
        free(want);
        shapes += b->H * 1000 + b->W != last_hw;
        last_hw = b->H * 1000 + b->W;
        batches++;
        loader_release(lu, b);
    }
    CHECK("gpu: batches of several padded sizes went through one stager", ok && batches > 4 && shapes > 2,
          "%d batches, %d shapes; %s", batches, shapes, err);
    CHECK("gpu: copy stream + normalise kernel == the CPU normalisation, bitwise",
          values > 0 && mismatches == 0, "%zu of %zu values differ", mismatches, values);
    CHECK("gpu: the copies report a GPU time", copy_ns > 0, "%lld ns", (long long)copy_ns);
    arena_destroy(a);
    input_stager_destroy(stager);
    loader_destroy(lu);
}

/* 4b. detr-train --device cuda: the steps record h2d_ns, and the h2d range exists. */
static void test_cli_gpu(const char *root, const char *ds_dir) {
    char *log, db_path[PATH_MAX];
    int rc = train(root, ds_dir, "--steps 3 --device cuda --profile", &log);
    CHECK("gpu cli: --device cuda (gpu-preprocess on by default) trains 3 steps",
          rc == 0 && strstr(log, "trained 3 steps"), "exit %d: %.800s", rc, log);
    free(log);
    lt_pathf(db_path, sizeof db_path, "%s/run/profile.sqlite", root);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        CHECK("gpu cli: profile database opens", 0, "%s", db_path);
        sqlite3_close(db);
        return;
    }
    int64_t with_h2d = q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE h2d_ns > 0");
    int64_t ranges = q_int(db, "SELECT count(*) FROM DETR_PHASES p JOIN StringIds s ON s.id = p.name_id "
                               "WHERE s.value = 'h2d'");
    CHECK("gpu cli: every step records its copy time (h2d_ns > 0)", with_h2d == 3, "%lld steps",
          (long long)with_h2d);
    CHECK("gpu cli: an h2d range per step", ranges == 3, "%lld ranges", (long long)ranges);
    sqlite3_close(db);
}
#endif

int main(void) {
    const char *bd = getenv("DETR_BUILD");
    snprintf(g_build, sizeof g_build, "%s", bd ? bd : "build");
    char root[PATH_MAX], ds_dir[PATH_MAX], cache[PATH_MAX];
    if (lt_make_temp_dir(root, sizeof root, "input-batch") != 0) {
        perror("mkdtemp");
        return 1;
    }
    lt_pathf(cache, sizeof cache, "%s/cache", root);
    mkdir(cache, 0755);
    Dataset ds;
    int ok = lt_write_dataset(root, "ds", 24, 72, 56, 99, ds_dir, sizeof ds_dir) == 0 &&
             lt_open_train(ds_dir, cache, &ds) == 0;
    CHECK("setup: synthetic dataset", ok, "see stderr");
    if (!ok) return test_finish();
    test_cpu_matches_loader(&ds);
    test_cpu_backend_and_model(&ds);
    test_cli_cpu(root, ds_dir);
#ifdef DETR_CUDA
    char err[512];
    if (cuda_device_init(0, err, sizeof err) != 0) {
        char *nl = strchr(err, '\n');
        if (nl) *nl = '\0';
        test_skip("gpu: CUDA path == CPU path, bitwise", err);
        test_skip("gpu cli: h2d_ns and the h2d range", err);
    } else {
        test_gpu_matches_cpu(&ds);
        test_cli_gpu(root, ds_dir);
    }
#else
    test_skip("gpu: CUDA path == CPU path, bitwise", "built without DETR_CUDA");
#endif
    dataset_close(&ds);
    lt_remove_tree(root);
    return test_finish();
}
