/* test_bad_input.c - the programs on bad and unusual input, end to end:
 *  - a weights file with missing, extra and mis-shaped tensors is refused with each one listed
 *    (expected and found shapes), exit code 2;
 *  - a corrupt safetensors file is refused with a message naming the file;
 *  - a NaN in the weights stops training with the step, the loss terms or offending tensor, and
 *    the first non-finite parameter named (exit code 1);
 *  - weights written by detr-train load again with no shape flags (shape inferred), also under
 *    Hugging Face names, giving identical predictions.
 * Weights come from a short detr-train run on the embedded synthetic dataset (generated into a
 * temporary cache), so no PyTorch is needed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "safetensors.h"
#include "weight_names.h"

static const char *g_build;
static char g_dir[256];

static int run(const char *cmd, char *log, size_t len) {
    char full[4096], path[300];
    snprintf(path, sizeof(path), "%s/log.txt", g_dir);
    snprintf(full, sizeof(full), "%s > %s 2>&1", cmd, path);
    int rc = system(full);
    FILE *f = fopen(path, "r");
    log[0] = 0;
    if (f) {
        size_t n = fread(log, 1, len - 1, f);
        log[n] = 0;
        fclose(f);
    }
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Inputs file: images [2,3,64,80] of a fixed pattern, mask with padding on image 1. */
static void write_inputs(const char *path) {
    static float images[2 * 3 * 64 * 80];
    static uint8_t mask[2 * 64 * 80];
    for (int i = 0; i < 2 * 3 * 64 * 80; i++) images[i] = (float)((i * 7919) % 2000) / 1000.0f - 1.0f;
    for (int b = 0; b < 2; b++)
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 80; x++) mask[(b * 64 + y) * 80 + x] = b == 1 && (y >= 48 || x >= 56);
    StWriter *w = st_writer_new();
    int64_t si[4] = {2, 3, 64, 80}, sm[3] = {2, 64, 80};
    st_writer_add_f32(w, "images", 4, si, images);
    st_writer_add(w, "mask", ST_U8, 3, sm, mask);
    char err[512];
    if (st_writer_save(w, path, err, sizeof(err)) != 0) fprintf(stderr, "%s\n", err);
    st_writer_free(w);
}

/* Copies a weights file, applying edits: drop `drop`, add `extra`, give `reshape` shape [3],
 * put NaN into `nan`, or rename every tensor to Hugging Face names (hf). */
static int rewrite_weights(const char *src, const char *dst, const char *drop, const char *extra,
                           const char *reshape, const char *nan, int hf) {
    StFile f;
    char err[512];
    if (st_open(src, &f, err, sizeof(err)) != 0) return -1;
    StWriter *w = st_writer_new();
    float **bufs = calloc((size_t)f.n, sizeof(float *));
    for (int i = 0; i < f.n; i++) {
        const StTensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        size_t n = st_numel(t);
        bufs[i] = malloc((n ? n : 1) * sizeof(float));
        st_read_f32(&f, t, bufs[i], err, sizeof(err));
        int64_t shape[ST_MAX_DIMS];
        int ndim = t->ndim;
        for (int d = 0; d < ndim; d++) shape[d] = t->shape[d];
        if (reshape && !strcmp(t->name, reshape)) ndim = 1, shape[0] = 3;
        if (nan && !strcmp(t->name, nan)) bufs[i][0] = NAN;
        if (!hf) {
            st_writer_add_f32(w, t->name, ndim, shape, bufs[i]);
            continue;
        }
        /* packed in_proj tensors become three q/k/v slices */
        int packed = strstr(t->name, "in_proj_") != NULL;
        for (int part = packed ? 0 : -1; part < (packed ? 3 : 0); part++) {
            char name[256];
            if (weight_name_to_hf(t->name, part, WN_BACKBONE_TIMM, name, sizeof(name)) != 1) break;
            int64_t s2[ST_MAX_DIMS];
            memcpy(s2, shape, sizeof(s2));
            const float *data = bufs[i];
            if (packed) {
                s2[0] = shape[0] / 3;
                size_t per = st_numel(t) / 3;
                data = bufs[i] + part * per;
            }
            st_writer_add_f32(w, name, ndim, s2, data);
        }
    }
    if (extra) {
        static float e[4] = {1, 2, 3, 4};
        int64_t s[1] = {4};
        st_writer_add_f32(w, extra, 1, s, e);
    }
    if (f.n_meta) /* keep the metadata (nheads) */
        for (int i = 0; i < f.n_meta; i++) st_writer_meta(w, f.meta_keys[i], f.meta_vals[i]);
    int rc = st_writer_save(w, dst, err, sizeof(err));
    st_writer_free(w);
    for (int i = 0; i < f.n; i++) free(bufs[i]);
    free(bufs);
    st_close(&f);
    return rc;
}

static int same_file_tensors(const char *a, const char *b, double *worst) {
    StFile fa, fb;
    char err[512];
    if (st_open(a, &fa, err, sizeof(err)) != 0) return 0;
    if (st_open(b, &fb, err, sizeof(err)) != 0) {
        st_close(&fa);
        return 0;
    }
    int ok = fa.n == fb.n && fa.n > 0;
    *worst = 0;
    for (int i = 0; ok && i < fa.n; i++) {
        const StTensor *tb = st_find(&fb, fa.tensors[i].name);
        if (!tb || st_numel(tb) != st_numel(&fa.tensors[i])) { ok = 0; break; }
        size_t n = st_numel(tb);
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        st_read_f32(&fa, &fa.tensors[i], x, err, sizeof(err));
        st_read_f32(&fb, tb, y, err, sizeof(err));
        double e = rel_err(x, y, n);
        if (e > *worst) *worst = e;
        free(x);
        free(y);
    }
    st_close(&fa);
    st_close(&fb);
    return ok;
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    snprintf(g_dir, sizeof(g_dir), "/tmp/detr-bad-input-%d", (int)getpid());
    mkdir(g_dir, 0755);
    setenv("XDG_CACHE_HOME", g_dir, 1); /* the embedded dataset and index cache go here */
    static char log[65536];
    char cmd[2048], w[320], x[320], bad[320], y1[320], y2[320];
    snprintf(w, sizeof(w), "%s/model.safetensors", g_dir);
    snprintf(x, sizeof(x), "%s/inputs.safetensors", g_dir);
    snprintf(bad, sizeof(bad), "%s/bad.safetensors", g_dir);
    snprintf(y1, sizeof(y1), "%s/y1.safetensors", g_dir);
    snprintf(y2, sizeof(y2), "%s/y2.safetensors", g_dir);

    /* a small model trained one step, saved by detr-train */
    snprintf(cmd, sizeof(cmd), "%s/detr-train --threads 2 --steps 1 --batch 2 --scales 64 --max-size 64 --resize-choices 48,56,64 --crop 40,48 "
             "--hidden 32 --nheads 2 --ffn 32 --queries 5 --num-classes 4 --out %s", g_build, g_dir);
    int rc = run(cmd, log, sizeof(log));
    CHECK("setup: detr-train writes weights", rc == 0, "exit %d: %.500s", rc, log);
    write_inputs(x);

    /* weights load back with the shape inferred (no shape flags) */
    snprintf(cmd, sizeof(cmd), "%s/detr-infer --threads 2 --weights %s --inputs %s --out %s", g_build, w, x, y1);
    rc = run(cmd, log, sizeof(log));
    CHECK("saved weights load with the shape inferred", rc == 0, "exit %d: %.500s", rc, log);

    /* Hugging Face names give identical predictions */
    rewrite_weights(w, bad, NULL, NULL, NULL, NULL, 1);
    snprintf(cmd, sizeof(cmd), "%s/detr-infer --threads 2 --weights %s --inputs %s --out %s", g_build, bad, x, y2);
    rc = run(cmd, log, sizeof(log));
    double worst = 1;
    CHECK("Hugging Face names load", rc == 0, "exit %d: %.500s", rc, log);
    CHECK("Hugging Face names: same predictions", same_file_tensors(y1, y2, &worst) && worst == 0,
          "worst difference %.3g", worst);

    /* missing, extra and mis-shaped tensors: all listed, exit 2 */
    rewrite_weights(w, bad, "class_embed.bias", "backbone.0.body.layer9.weight", "input_proj.bias",
                    NULL, 0);
    snprintf(cmd, sizeof(cmd), "%s/detr-infer --threads 2 --weights %s --inputs %s --out %s", g_build, bad, x, y2);
    rc = run(cmd, log, sizeof(log));
    CHECK("bad weights: exit code 2", rc == 2, "exit %d", rc);
    CHECK("bad weights: missing tensor listed with its shape",
          strstr(log, "missing: class_embed.bias, expected shape [5]") != NULL, "log: %.800s", log);
    CHECK("bad weights: extra tensor listed", strstr(log, "unexpected: backbone.0.body.layer9.weight") != NULL,
          "log: %.800s", log);
    CHECK("bad weights: mis-shaped tensor with expected and found shapes",
          strstr(log, "input_proj.bias") && strstr(log, "expected [32], found [3]"), "log: %.800s", log);

    /* corrupt header: clear error naming the file */
    FILE *f = fopen(bad, "wb");
    const unsigned char junk[16] = {0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, '{', '"', 'a'};
    fwrite(junk, 1, sizeof(junk), f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "%s/detr-infer --threads 2 --weights %s --inputs %s --out %s", g_build, bad, x, y2);
    rc = run(cmd, log, sizeof(log));
    CHECK("corrupt safetensors: exit code 2", rc == 2, "exit %d: %.300s", rc, log);
    CHECK("corrupt safetensors: message names the file", strstr(log, "bad.safetensors") != NULL, "log: %.300s", log);

    /* a NaN weight stops training and is named */
    rewrite_weights(w, bad, NULL, NULL, NULL, "class_embed.bias", 0);
    snprintf(cmd, sizeof(cmd), "%s/detr-train --threads 2 --weights %s --steps 2 --batch 2 --scales 64 --max-size 64 --resize-choices 48,56,64 --crop 40,48 "
             "--out %s", g_build, bad, g_dir);
    rc = run(cmd, log, sizeof(log));
    CHECK("NaN weight: training stops with exit code 1", rc == 1, "exit %d: %.500s", rc, log);
    CHECK("NaN weight: message names the step and the first non-finite parameter",
          strstr(log, "step 1") && strstr(log, "class_embed.bias"), "log: %.800s", log);

    /* bad usage */
    snprintf(cmd, sizeof(cmd), "%s/detr-train --batch zero", g_build);
    rc = run(cmd, log, sizeof(log));
    CHECK("bad option value: exit 2 and names the option", rc == 2 && strstr(log, "--batch"), "exit %d: %.300s", rc, log);
    snprintf(cmd, sizeof(cmd), "%s/detr-infer --weights %s", g_build, w);
    rc = run(cmd, log, sizeof(log));
    CHECK("missing required options: exit 2", rc == 2 && strstr(log, "required"), "exit %d: %.300s", rc, log);
    snprintf(cmd, sizeof(cmd), "%s/detr-train --help", g_build);
    rc = run(cmd, log, sizeof(log));
    CHECK("--help documents the exit codes", rc == 0 && strstr(log, "Exit codes"), "exit %d", rc);

    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return test_finish();
}
