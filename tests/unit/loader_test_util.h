/* loader_test_util.h - shared helpers of the loader tests (test_loader*.c): a small synthetic
 * COCO dataset written into a temporary folder, a small transform, batch checksums, and a
 * function that consumes one epoch. Header-only (static functions), included once per test. */
#ifndef DETR_LOADER_TEST_UTIL_H
#define DETR_LOADER_TEST_UTIL_H
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../../dataloader/synth.h"
#include "check.h"
#include "dataset.h"
#include "loader.h"
#include "sampler.h"
#include "transforms.h"

/* Not every test uses every helper. */
#define LT_FN static __attribute__((unused))

/* snprintf for paths (vsnprintf: no truncation warnings; a truncated path simply fails later). */
LT_FN void lt_pathf(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
LT_FN void lt_pathf(char *out, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, len, fmt, ap);
    va_end(ap);
}

/* Creates a fresh temporary folder (under $TMPDIR or /tmp); returns 0. */
LT_FN int lt_make_temp_dir(char *out, size_t len, const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(out, len, "%s/detr-%s-XXXXXX", tmp && tmp[0] ? tmp : "/tmp", tag);
    return mkdtemp(out) ? 0 : -1;
}

LT_FN void lt_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[PATH_MAX];
            lt_pathf(p, sizeof p, "%s/%s", path, e->d_name);
            lt_remove_tree(p);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* Writes a synthetic dataset of n_train small images (sides 58..96 x 43..72, so aspect ratios
 * and padding vary) into dir/name. Returns 0 or -1 (message on stderr). */
LT_FN int lt_write_dataset(const char *dir, const char *name, int n_train, int width, int height,
                           uint64_t seed, char *out, size_t len) {
    SynthDatasetConfig c;
    synth_config_default(&c);
    c.train_images = n_train;
    c.val_images = 2;
    c.width = width;
    c.height = height;
    c.size_jitter = 0.4;
    c.classes = 3;
    c.min_objects = 1;
    c.max_objects = 3;
    c.quality = 90;
    c.seed = seed;
    c.threads = 2;
    lt_pathf(out, len, "%s/%s", dir, name);
    char err[512];
    if (synth_dataset_write(out, &c, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "synth_dataset_write: %s\n", err);
        return -1;
    }
    return 0;
}

/* Opens the train split of a dataset folder, with its index cache in cache_dir. */
LT_FN int lt_open_train(const char *ds_dir, const char *cache_dir, Dataset *ds) {
    char ann[PATH_MAX], img[PATH_MAX], err[512];
    if (dataset_find(ds_dir, "train", ann, sizeof ann, img, sizeof img, err, sizeof err) != 0 ||
        dataset_open(ann, img, cache_dir, ds, err, sizeof err) != 0) {
        fprintf(stderr, "dataset: %s\n", err);
        return -1;
    }
    return 0;
}

/* A transform at the scale of the test images (the reference's at 1/16 or so). */
LT_FN void lt_small_tf(TransformConfig *tc, int train) {
    transform_config_default(tc, train);
    static const int scales[] = {32, 40, 48, 56};
    tc->n_scales = 4;
    for (int i = 0; i < 4; i++) tc->scales[i] = scales[i];
    tc->max_size = 80;
    tc->resize_choices[0] = 40;
    tc->resize_choices[1] = 48;
    tc->resize_choices[2] = 56;
    tc->crop_min = 24;
    tc->crop_max = 40;
    tc->val_size = 48;
}

LT_FN void lt_config(LoaderConfig *c, int workers) {
    loader_config_default(c);
    c->workers = workers;
    c->batch = 3;
    c->prefetch = 2;
    c->seed = 1234;
    c->drop_last = 0;
    lt_small_tf(&c->tf, 1);
}

LT_FN uint64_t lt_fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Checksum of everything a batch holds (pixels, mask, targets, sizes, ids, position). */
LT_FN uint64_t lt_batch_checksum(const LoaderBatch *b) {
    uint64_t h = 0xcbf29ce484222325ull;
    int dims[3] = {b->B, b->H, b->W};
    h = lt_fnv(h, dims, sizeof dims);
    size_t n = (size_t)b->B * 3 * b->H * b->W;
    if (b->images) h = lt_fnv(h, b->images, n * sizeof(float));
    if (b->images_u8) h = lt_fnv(h, b->images_u8, n);
    h = lt_fnv(h, b->mask, (size_t)b->B * b->H * b->W);
    for (int i = 0; i < b->B; i++) {
        h = lt_fnv(h, &b->n_boxes[i], sizeof(int));
        h = lt_fnv(h, b->boxes[i], (size_t)b->n_boxes[i] * 4 * sizeof(float));
        h = lt_fnv(h, b->labels[i], (size_t)b->n_boxes[i] * sizeof(int));
        int sz[4] = {b->img_h[i], b->img_w[i], b->orig_h[i], b->orig_w[i]};
        h = lt_fnv(h, sz, sizeof sz);
        h = lt_fnv(h, &b->image_ids[i], sizeof(int64_t));
    }
    h = lt_fnv(h, &b->epoch, sizeof b->epoch);
    h = lt_fnv(h, &b->index, sizeof b->index);
    return h;
}

/* What one epoch produced. */
typedef struct {
    int n;              /* batches */
    uint64_t sums[256]; /* checksum per batch */
    int64_t ids[1024];  /* image ids in batch order */
    int n_ids;
    int in_order; /* batch.index ran start, start+1, ... */
    int skipped, dropped_boxes;
    LoaderStats total; /* sums of the per-batch stats */
    double max_padded, mean_padded;
} LtEpoch;

/* Consumes batches of the epoch already started on l until the end (or max_batches). Returns the
 * number of batches, or -1 with err. */
LT_FN int lt_consume(Loader *l, int64_t start, int max_batches, LtEpoch *e, char *err,
                     size_t errlen) {
    memset(e, 0, sizeof *e);
    e->in_order = 1;
    LoaderBatch *b;
    int rc = 0;
    while (e->n < max_batches && (rc = loader_next(l, &b, 30.0, err, errlen)) == 1) {
        if (b->index != start + e->n) e->in_order = 0;
        if (e->n < 256) e->sums[e->n] = lt_batch_checksum(b);
        for (int i = 0; i < b->B && e->n_ids < 1024; i++) e->ids[e->n_ids++] = b->image_ids[i];
        e->skipped += b->stats.skipped;
        e->dropped_boxes += b->stats.dropped_boxes;
        e->total.wait_s += b->stats.wait_s;
        e->total.read_s += b->stats.read_s;
        e->total.decode_s += b->stats.decode_s;
        e->total.augment_s += b->stats.augment_s;
        e->total.collate_s += b->stats.collate_s;
        e->total.bytes_read += b->stats.bytes_read;
        e->mean_padded += b->stats.padded_fraction;
        if (b->stats.padded_fraction > e->max_padded) e->max_padded = b->stats.padded_fraction;
        e->n++;
        loader_release(l, b);
    }
    if (e->n) e->mean_padded /= e->n;
    if (e->n >= max_batches) return e->n;
    return rc < 0 ? -1 : e->n;
}

/* Creates a loader, runs one epoch from start, destroys it. Returns batches or -1. */
LT_FN int lt_run_epoch(const Dataset *ds, const LoaderConfig *cfg, int epoch, int64_t start,
                       LtEpoch *e, char *err, size_t errlen) {
    Loader *l = loader_create(ds, cfg, err, errlen);
    if (!l) return -1;
    int n = loader_start_epoch(l, epoch, start) == 0 ? lt_consume(l, start, 1 << 30, e, err, errlen)
                                                     : -1;
    loader_destroy(l);
    return n;
}

LT_FN int lt_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Index of the image with this COCO id, or -1. */
LT_FN int64_t lt_index_of_id(const Dataset *ds, int64_t id) {
    for (int64_t i = 0; i < ds->n_images; i++)
        if (ds->images[i].id == id) return i;
    return -1;
}

LT_FN int lt_image_path(const Dataset *ds, int64_t i, char *out, size_t len) {
    return snprintf(out, len, "%s/%s", ds->images_dir, dataset_file_name(ds, i)) < (int)len ? 0
                                                                                            : -1;
}

/* Resident set size in bytes (from /proc/self/statm). */
LT_FN long long lt_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long long pages = 0, rss = 0;
    if (!f) return -1;
    if (fscanf(f, "%lld %lld", &pages, &rss) != 2) rss = -1;
    fclose(f);
    return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

#endif
