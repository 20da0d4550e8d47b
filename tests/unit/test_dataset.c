/* test_dataset.c - the COCO dataset index (dataloader/dataset.h): parsing every field, the
 * reference's target filtering on hand-computed boxes, the on-disk cache (hit, invalidation,
 * corruption of every byte, another file's cache, concurrent first opens), malformed JSON with
 * line and column, duplicate ids, dataset_find, and the streaming reader against jansson on
 * thousands of mutated files. All files are written into a temporary folder. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "dataset.h"
#include "../../dataloader/dataset_internal.h"

static char g_tmp[PATH_MAX];

/* ---------------------------------------------------------------- helpers */

static void pathf(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *out, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, len, fmt, ap);
    va_end(ap);
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static int write_str(const char *path, const char *s) { return write_file(path, s, strlen(s)); }

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[len] = 0, *n = (size_t)len;
    return b;
}

static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[PATH_MAX];
            pathf(p, sizeof p, "%s/%s", path, e->d_name);
            remove_tree(p);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n;
}

static void set_mtime(const char *path, time_t sec, long nsec) {
    struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
    utimensat(AT_FDCWD, path, ts, 0);
}

static int same_float(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* Everything the index holds, compared between two opens. */
static int same_dataset(const Dataset *a, const Dataset *b) {
    if (a->n_images != b->n_images || a->n_anns != b->n_anns || a->n_categories != b->n_categories ||
        a->num_classes != b->num_classes || a->n_orphan_anns != b->n_orphan_anns)
        return 0;
    for (int64_t i = 0; i < a->n_images; i++) {
        const DsImage *x = &a->images[i], *y = &b->images[i];
        if (x->id != y->id || x->width != y->width || x->height != y->height ||
            x->first_ann != y->first_ann || x->n_ann != y->n_ann ||
            strcmp(dataset_file_name(a, i), dataset_file_name(b, i)))
            return 0;
    }
    for (int64_t k = 0; k < a->n_anns; k++) {
        const DsAnn *x = &a->anns[k], *y = &b->anns[k];
        for (int j = 0; j < 4; j++)
            if (!same_float(x->bbox[j], y->bbox[j])) return 0;
        if (x->category != y->category || x->iscrowd != y->iscrowd || x->id != y->id) return 0;
    }
    for (int c = 0; c < a->n_categories; c++)
        if (a->category_ids[c] != b->category_ids[c]) return 0;
    return 1;
}

/* ---------------------------------------------------------------- fixtures */

static const char *k_tiny =
    "{\"info\": {\"description\": \"tiny\", \"nested\": [1, 2.5e3, {\"a\": null, \"b\": [true, false]}]},\n"
    " \"licenses\": [],\n"
    " \"images\": [\n"
    "  {\"id\": 10, \"file_name\": \"a.jpg\", \"width\": 640, \"height\": 480, \"extra\": \"x\"},\n"
    "  {\"height\": 50, \"width\": 100, \"file_name\": \"sub/b\\u00e9\\ud83d\\ude00.jpg\", \"id\": 20},\n"
    "  {\"id\": 30, \"file_name\": \"c.jpg\", \"width\": 32, \"height\": 32}\n"
    " ],\n"
    " \"annotations\": [\n"
    "  {\"id\": 1, \"image_id\": 20, \"bbox\": [1.5, 2, 3, 4], \"category_id\": 3, \"iscrowd\": 0,\n"
    "   \"segmentation\": [[1, 2, 3, 4, 5, 6]], \"area\": 12},\n"
    "  {\"id\": 2, \"image_id\": 10, \"bbox\": [0, 0, 10, 10], \"category_id\": 90, \"iscrowd\": 1,\n"
    "   \"segmentation\": {\"counts\": [1, 2, 3], \"size\": [480, 640]}},\n"
    "  {\"id\": 3, \"image_id\": 20, \"bbox\": [5.25, 5e0, 1e2, 0.1], \"category_id\": 1},\n"
    "  {\"id\": 4, \"image_id\": 999, \"bbox\": [0, 0, 1, 1], \"category_id\": 1},\n"
    "  {\"image_id\": 20, \"bbox\": [-1, -2, 3, 1e999], \"category_id\": 3, \"iscrowd\": true}\n"
    " ],\n"
    " \"categories\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": 3, \"name\": \"b\"}, {\"id\": 90, \"name\": \"c\"}]\n"
    "}\n";

static int open_ds(const char *ann, const char *cache, Dataset *ds, char *err, size_t errlen) {
    return dataset_open(ann, g_tmp, cache, ds, err, errlen);
}

/* ---------------------------------------------------------------- tests */

static void test_parse_fields(void) {
    char ann[PATH_MAX], cache[PATH_MAX], err[2048];
    pathf(ann, sizeof ann, "%s/tiny.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-parse", g_tmp);
    write_str(ann, k_tiny);
    Dataset ds;
    int rc = open_ds(ann, cache, &ds, err, sizeof err);
    CHECK("parse: tiny file opens", rc == 0, "%s", err);
    if (rc) return;
    CHECK("parse: first open is not from the cache", ds.from_cache == 0, "from_cache %d", ds.from_cache);
    CHECK("parse: counts", ds.n_images == 3 && ds.n_anns == 4 && ds.n_categories == 3 &&
          ds.n_orphan_anns == 1 && ds.n_unknown_category_anns == 0,
          "images %ld anns %ld cats %d orphans %ld unknown %ld", (long)ds.n_images, (long)ds.n_anns,
          ds.n_categories, (long)ds.n_orphan_anns, (long)ds.n_unknown_category_anns);
    CHECK("parse: num_classes = max category id + 1", ds.num_classes == 91, "%d", ds.num_classes);
    CHECK("parse: category ids in file order", ds.category_ids[0] == 1 && ds.category_ids[1] == 3 &&
          ds.category_ids[2] == 90, "%d %d %d", ds.category_ids[0], ds.category_ids[1], ds.category_ids[2]);
    const DsImage *im = ds.images;
    CHECK("parse: images in JSON order with sizes",
          im[0].id == 10 && im[0].width == 640 && im[0].height == 480 && im[1].id == 20 &&
          im[1].width == 100 && im[1].height == 50 && im[2].id == 30 && im[2].width == 32,
          "ids %ld %ld %ld", (long)im[0].id, (long)im[1].id, (long)im[2].id);
    CHECK("parse: file names (escapes decoded to UTF-8, surrogate pair included)",
          !strcmp(dataset_file_name(&ds, 0), "a.jpg") &&
          !strcmp(dataset_file_name(&ds, 1), "sub/b\xc3\xa9\xf0\x9f\x98\x80.jpg") &&
          !strcmp(dataset_file_name(&ds, 2), "c.jpg"),
          "'%s' '%s' '%s'", dataset_file_name(&ds, 0), dataset_file_name(&ds, 1), dataset_file_name(&ds, 2));
    CHECK("parse: annotations grouped by image, JSON order within it",
          im[0].first_ann == 0 && im[0].n_ann == 1 && im[1].first_ann == 1 && im[1].n_ann == 3 &&
          im[2].n_ann == 0 && ds.anns[0].id == 2 && ds.anns[1].id == 1 && ds.anns[2].id == 3 &&
          ds.anns[3].id == -1,
          "first/n %u/%u %u/%u %u/%u", im[0].first_ann, im[0].n_ann, im[1].first_ann, im[1].n_ann,
          im[2].first_ann, im[2].n_ann);
    const DsAnn *a = ds.anns;
    CHECK("parse: bbox, category, iscrowd",
          same_float(a[1].bbox[0], 1.5f) && same_float(a[1].bbox[1], 2.f) && same_float(a[1].bbox[2], 3.f) &&
          same_float(a[1].bbox[3], 4.f) && a[1].category == 3 && a[1].iscrowd == 0 &&
          a[0].category == 90 && a[0].iscrowd == 1 && same_float(a[2].bbox[0], 5.25f) &&
          same_float(a[2].bbox[1], 5.f) && same_float(a[2].bbox[2], 100.f) &&
          same_float(a[2].bbox[3], (float)0.1) && a[3].iscrowd == 1,
          "a1 %g %g %g %g", a[1].bbox[0], a[1].bbox[1], a[1].bbox[2], a[1].bbox[3]);
    CHECK("parse: a number beyond float range becomes +inf", isinf(a[3].bbox[3]) && a[3].bbox[3] > 0 &&
          same_float(a[3].bbox[0], -1.f), "%g", a[3].bbox[3]);
    CHECK("parse: paths kept", !strcmp(ds.ann_path, ann) && !strcmp(ds.images_dir, g_tmp), "%s", ds.ann_path);
    dataset_close(&ds);

    /* num_classes covers annotation category ids missing from "categories" */
    pathf(ann, sizeof ann, "%s/unknown_cat.json", g_tmp);
    write_str(ann, "{\"images\": [{\"id\": 1, \"file_name\": \"x.jpg\", \"width\": 8, \"height\": 8}],"
                   " \"annotations\": [{\"id\": 1, \"image_id\": 1, \"bbox\": [0, 0, 1, 1], \"category_id\": 120}],"
                   " \"categories\": [{\"id\": 5}]}");
    rc = open_ds(ann, cache, &ds, err, sizeof err);
    CHECK("parse: unknown category id raises num_classes", rc == 0 && ds.num_classes == 121 &&
          ds.n_unknown_category_anns == 1, "rc %d num_classes %d: %s", rc, ds.num_classes, rc ? err : "");
    if (!rc) dataset_close(&ds);

    /* a file without "annotations" (image info only) opens with images and no boxes */
    pathf(ann, sizeof ann, "%s/noanns.json", g_tmp);
    write_str(ann, "{\"images\": [{\"id\": 1, \"file_name\": \"x.jpg\", \"width\": 8, \"height\": 8}]}");
    rc = open_ds(ann, cache, &ds, err, sizeof err);
    CHECK("parse: no annotations and no categories", rc == 0 && ds.n_images == 1 && ds.n_anns == 0 &&
          ds.num_classes == 0, "rc %d: %s", rc, rc ? err : "");
    if (!rc) dataset_close(&ds);
}

/* Compares the dataset with an independent jansson parse of the same file. */
static void test_against_jansson(void) {
    char ann[PATH_MAX], cache[PATH_MAX], err[2048];
    pathf(ann, sizeof ann, "%s/tiny.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-jansson", g_tmp);
    /* jansson refuses 1e999 (real number overflow): the same file with 1e9 instead */
    char *text = strdup(k_tiny);
    memcpy(strstr(text, "1e999"), "1e9  ", 5);
    write_str(ann, text);
    free(text);
    Dataset ds;
    json_error_t je;
    json_t *root = json_load_file(ann, 0, &je);
    if (!root || open_ds(ann, cache, &ds, err, sizeof err)) {
        CHECK("jansson: both parse", 0, "%s / %s", root ? "" : je.text, err);
        json_decref(root);
        return;
    }
    json_t *imgs = json_object_get(root, "images"), *anns = json_object_get(root, "annotations");
    int ok = json_array_size(imgs) == (size_t)ds.n_images;
    for (size_t i = 0; ok && i < json_array_size(imgs); i++) {
        json_t *o = json_array_get(imgs, i);
        ok = json_integer_value(json_object_get(o, "id")) == ds.images[i].id &&
             !strcmp(json_string_value(json_object_get(o, "file_name")), dataset_file_name(&ds, (int64_t)i)) &&
             json_integer_value(json_object_get(o, "width")) == ds.images[i].width;
        /* this image's annotations, in JSON order */
        uint32_t k = ds.images[i].first_ann, seen = 0;
        for (size_t a = 0; ok && a < json_array_size(anns); a++) {
            json_t *an = json_array_get(anns, a);
            if (json_integer_value(json_object_get(an, "image_id")) != ds.images[i].id) continue;
            json_t *bb = json_object_get(an, "bbox");
            for (int j = 0; j < 4; j++) {
                double d = json_number_value(json_array_get(bb, (size_t)j));
                ok = ok && same_float(ds.anns[k].bbox[j], (float)d);
            }
            ok = ok && json_integer_value(json_object_get(an, "category_id")) == ds.anns[k].category;
            k++, seen++;
        }
        ok = ok && seen == ds.images[i].n_ann;
    }
    json_decref(root);
    dataset_close(&ds);
    CHECK("jansson: same images, names, boxes (bit-exact floats) and grouping", ok, "mismatch");
}

static Dataset hand_dataset(DsImage *img, DsAnn *anns, int n) {
    Dataset ds = {0};
    static char names[] = "hand.jpg";
    img->id = 1;
    img->file_off = 0;
    img->width = 100;
    img->height = 50;
    img->first_ann = 0;
    img->n_ann = (uint32_t)n;
    ds.images = img;
    ds.n_images = 1;
    ds.anns = anns;
    ds.n_anns = n;
    ds.names = names;
    ds.num_classes = 10;
    return ds;
}

static void test_targets(void) {
    DsImage img;
    DsAnn anns[] = {
        {{10, 5, 20, 10}, 1, 0, 1},            /* kept: [10,5,30,15] */
        {{0, 0, 5, 5}, 2, 1, 2},               /* crowd */
        {{90, 40, 30, 30}, 3, 0, 3},           /* clamped: [90,40,100,50] */
        {{-5, -5, 10, 10}, 4, 0, 4},           /* clamped: [0,0,5,5] */
        {{10, 10, 0, 5}, 5, 0, 5},             /* zero width: degenerate, not counted */
        {{150, 10, 10, 10}, 6, 0, 6},          /* right of the image: clamps to zero width */
        {{NAN, 1, 2, 3}, 7, 0, 7},             /* invalid */
        {{1, 1, INFINITY, 3}, 8, 0, 8},        /* invalid */
        {{10, 10, -5, 5}, 9, 0, 9},            /* negative width: invalid */
        {{0, 0, 1e30f, 1e30f}, 1, 0, 10},      /* huge: clamped to the image */
        {{1, 1, 2, 2}, -3, 0, 11},             /* negative category: invalid */
        {{0.1f, 0.2f, 0.2f, 0.1f}, 2, 0, 12},  /* float32 arithmetic */
    };
    int n = (int)(sizeof anns / sizeof anns[0]);
    Dataset ds = hand_dataset(&img, anns, n);
    float boxes[64 * 4];
    int labels[64], dropped = -1;
    int k = dataset_targets(&ds, 0, 100, 50, 0, boxes, labels, 64, &dropped);
    const float want[][4] = {{10, 5, 30, 15}, {90, 40, 100, 50}, {0, 0, 5, 5}, {0, 0, 100, 50},
                             {0.1f, 0.2f, 0.1f + 0.2f, 0.2f + 0.1f}};
    const int want_labels[] = {1, 3, 4, 1, 2};
    int ok = k == 5;
    for (int i = 0; ok && i < k; i++) {
        for (int j = 0; j < 4; j++) ok = ok && same_float(boxes[4 * i + j], want[i][j]);
        ok = ok && labels[i] == want_labels[i];
    }
    CHECK("targets: crowd, clamp, degenerate, huge, float32 sums", ok, "n %d (want 5), first %g %g %g %g",
          k, boxes[0], boxes[1], boxes[2], boxes[3]);
    CHECK("targets: NaN, Inf, negative size and negative category counted", dropped == 4,
          "dropped %d (want 4)", dropped);

    k = dataset_targets(&ds, 0, 100, 50, 1, boxes, labels, 64, &dropped);
    CHECK("targets: keep_crowd keeps the crowd box", k == 6 && same_float(boxes[4], 0) &&
          same_float(boxes[6], 5) && labels[1] == 2 && dropped == 4, "n %d dropped %d", k, dropped);

    k = dataset_targets(&ds, 0, 20, 10, 0, boxes, labels, 64, &dropped);
    CHECK("targets: clamping uses the decoded size given", k == 4 && same_float(boxes[2], 20) &&
          same_float(boxes[3], 10), "n %d box0 %g %g %g %g", k, boxes[0], boxes[1], boxes[2], boxes[3]);

    k = dataset_targets(&ds, 0, 100, 50, 0, boxes, labels, 2, &dropped);
    CHECK("targets: at most max boxes, the rest counted", k == 2 && dropped == 4 + 3 &&
          labels[0] == 1 && labels[1] == 3, "n %d dropped %d", k, dropped);

    k = dataset_targets(&ds, 5, 100, 50, 0, boxes, labels, 64, &dropped);
    int k2 = dataset_targets(&ds, -1, 100, 50, 0, boxes, labels, 64, NULL);
    CHECK("targets: out-of-range image index gives no boxes", k == 0 && dropped == 0 && k2 == 0,
          "n %d %d", k, k2);

    /* concurrent readers: the same answers from many threads at once */
    int bad = 0;
#pragma omp parallel for num_threads(4) reduction(+: bad)
    for (int t = 0; t < 2000; t++) {
        float b[64 * 4];
        int l[64], d;
        int m = dataset_targets(&ds, 0, 100, 50, t & 1, b, l, 64, &d);
        if (m != (t & 1 ? 6 : 5) || d != 4) bad++;
    }
    CHECK("targets: thread-safe reads", bad == 0, "%d mismatches", bad);
}

/* The JSON's 1e999 box and crowd flag through the parsed path. */
static void test_targets_parsed(void) {
    char ann[PATH_MAX], cache[PATH_MAX], err[2048];
    pathf(ann, sizeof ann, "%s/tiny.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-parse", g_tmp);
    write_str(ann, k_tiny);
    Dataset ds;
    if (open_ds(ann, cache, &ds, err, sizeof err)) {
        CHECK("targets(parsed): open", 0, "%s", err);
        return;
    }
    float b[16];
    int l[4], d = -1;
    /* image 20 (index 1): [1.5,2,3,4] kept, [5.25,5,100,0.1] clamped to x1=100 (w=100), the
     * crowd 1e999 box skipped as crowd */
    int n = dataset_targets(&ds, 1, 100, 50, 0, b, l, 4, &d);
    CHECK("targets(parsed): boxes of images[1]", n == 2 && d == 0 && same_float(b[0], 1.5f) &&
          same_float(b[2], 4.5f) && same_float(b[3], 6.f) && same_float(b[6], 100.f) &&
          same_float(b[7], 5.f + (float)0.1) && l[0] == 3 && l[1] == 1,
          "n %d d %d b %g %g %g %g / %g %g %g %g", n, d, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
    n = dataset_targets(&ds, 1, 100, 50, 1, b, l, 4, &d);
    CHECK("targets(parsed): with keep_crowd the infinite box is dropped and counted", n == 2 && d == 1,
          "n %d d %d", n, d);
    dataset_close(&ds);
}

static void test_cache(void) {
    char ann[PATH_MAX], cache[PATH_MAX], idx[PATH_MAX + 64], err[2048];
    pathf(ann, sizeof ann, "%s/cached.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-a/nested/dir", g_tmp); /* created on demand */
    write_str(ann, k_tiny);
    set_mtime(ann, 1600000000, 123456789);
    Dataset first, again;
    if (open_ds(ann, cache, &first, err, sizeof err)) {
        CHECK("cache: first open", 0, "%s", err);
        return;
    }
    int rc = dataset_index_path(ann, cache, idx, sizeof idx, err, sizeof err);
    struct stat st;
    CHECK("cache: index file written in the (created) cache folder", rc == 0 && stat(idx, &st) == 0 &&
          count_files(cache) == 1, "%s (%d files)", idx, count_files(cache));
    rc = open_ds(ann, cache, &again, err, sizeof err);
    CHECK("cache: second open is a hit with the same content", rc == 0 && again.from_cache == 1 &&
          same_dataset(&first, &again), "rc %d from_cache %d", rc, again.from_cache);
    if (!rc) dataset_close(&again);

    /* size change */
    size_t n;
    char *text = read_all(ann, &n);
    char *grown = malloc(n + 2);
    memcpy(grown, text, n);
    memcpy(grown + n, " \n", 2);
    write_file(ann, grown, n + 2);
    set_mtime(ann, 1600000000, 123456789);
    rc = open_ds(ann, cache, &again, err, sizeof err);
    CHECK("cache: a size change rebuilds", rc == 0 && again.from_cache == 0 && same_dataset(&first, &again),
          "rc %d from_cache %d", rc, again.from_cache);
    if (!rc) dataset_close(&again);

    /* mtime change only */
    set_mtime(ann, 1600000000, 123456790);
    rc = open_ds(ann, cache, &again, err, sizeof err);
    CHECK("cache: an mtime change (1 ns) rebuilds", rc == 0 && again.from_cache == 0, "from_cache %d", again.from_cache);
    if (!rc) dataset_close(&again);
    rc = open_ds(ann, cache, &again, err, sizeof err);
    CHECK("cache: then hits again", rc == 0 && again.from_cache == 1, "from_cache %d", again.from_cache);
    if (!rc) dataset_close(&again);

    /* same size, same mtime, different content: caught by the content hash */
    char *edited = strstr(grown, "[0, 0, 10, 10]");
    edited[7] = '7'; /* [0, 0, 70, 10] */
    write_file(ann, grown, n + 2);
    set_mtime(ann, 1600000000, 123456790);
    rc = open_ds(ann, cache, &again, err, sizeof err);
    CHECK("cache: same size and mtime but new content rebuilds", rc == 0 && again.from_cache == 0 &&
          same_float(again.anns[0].bbox[2], 70.f), "from_cache %d w %g", again.from_cache,
          rc ? 0.f : again.anns[0].bbox[2]);
    if (!rc) dataset_close(&again);
    free(text);
    free(grown);
    dataset_close(&first);

    /* the default cache folder: $XDG_CACHE_HOME/detr */
    char xdg[PATH_MAX], expect[PATH_MAX];
    pathf(xdg, sizeof xdg, "%s/xdg", g_tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
    rc = open_ds(ann, NULL, &again, err, sizeof err);
    pathf(expect, sizeof expect, "%s/detr", xdg);
    CHECK("cache: default folder is $XDG_CACHE_HOME/detr", rc == 0 && count_files(expect) == 1,
          "rc %d, %d files in %s", rc, count_files(expect), expect);
    if (!rc) dataset_close(&again);
    unsetenv("XDG_CACHE_HOME");

    /* an unusable cache folder (a regular file): opens anyway, from the JSON */
    char blocker[PATH_MAX];
    pathf(blocker, sizeof blocker, "%s/not-a-dir", g_tmp);
    write_str(blocker, "x");
    rc = open_ds(ann, blocker, &again, err, sizeof err);
    CHECK("cache: an unusable cache folder is a warning, not an error", rc == 0 && again.from_cache == 0,
          "rc %d: %s", rc, rc ? err : "");
    if (!rc) dataset_close(&again);
}

/* Opens ann with the cache file replaced by `bytes`: the open must rebuild (from_cache 0) and
 * give the right content. */
static int rebuilt_after(const char *ann, const char *cache, const char *idx, const void *bytes,
                         size_t n, const Dataset *ref) {
    char err[2048];
    Dataset ds;
    write_file(idx, bytes, n);
    if (open_ds(ann, cache, &ds, err, sizeof err)) return 0;
    int ok = ds.from_cache == 0 && same_dataset(ref, &ds);
    dataset_close(&ds);
    return ok;
}

static void test_corrupt_cache(void) {
    char ann[PATH_MAX], cache[PATH_MAX], idx[PATH_MAX + 64], err[2048];
    pathf(ann, sizeof ann, "%s/corrupt.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-corrupt", g_tmp);
    write_str(ann, k_tiny);
    Dataset ref;
    if (open_ds(ann, cache, &ref, err, sizeof err) || dataset_index_path(ann, cache, idx, sizeof idx, err, sizeof err)) {
        CHECK("corrupt: setup", 0, "%s", err);
        return;
    }
    size_t n;
    unsigned char *good = (unsigned char *)read_all(idx, &n);
    if (!good) {
        CHECK("corrupt: read index", 0, "%s", idx);
        dataset_close(&ref);
        return;
    }
    unsigned char *bytes = malloc(n);
    CHECK("corrupt: truncated to half", rebuilt_after(ann, cache, idx, good, n / 2, &ref), "not rebuilt");
    CHECK("corrupt: truncated by one byte", rebuilt_after(ann, cache, idx, good, n - 1, &ref), "not rebuilt");
    CHECK("corrupt: empty file", rebuilt_after(ann, cache, idx, good, 0, &ref), "not rebuilt");
    memcpy(bytes, good, n);
    bytes[8]++; /* the version field follows the 8-byte magic */
    CHECK("corrupt: wrong version", rebuilt_after(ann, cache, idx, bytes, n, &ref), "not rebuilt");
    /* every single byte flipped, one at a time (the "rebuilding" notes go to /dev/null) */
    int missed = -1, saved = dup(2), devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2);
    for (size_t i = 0; i < n && missed < 0; i++) {
        memcpy(bytes, good, n);
        bytes[i] ^= 0x5a;
        if (!rebuilt_after(ann, cache, idx, bytes, n, &ref)) missed = (int)i;
    }
    if (saved >= 0) dup2(saved, 2), close(saved);
    if (devnull >= 0) close(devnull);
    CHECK("corrupt: a flipped byte anywhere is detected", missed < 0, "byte %d of %zu trusted", missed, n);
    for (size_t i = 0; i < n; i++) bytes[i] = (unsigned char)(i * 2654435761u >> 24);
    CHECK("corrupt: random bytes", rebuilt_after(ann, cache, idx, bytes, n, &ref), "not rebuilt");
    /* after all that, the rewritten cache is good again */
    Dataset ds;
    int rc = open_ds(ann, cache, &ds, err, sizeof err);
    CHECK("corrupt: the rebuilt cache is used next time", rc == 0 && ds.from_cache == 1 && same_dataset(&ref, &ds),
          "rc %d from_cache %d", rc, ds.from_cache);
    if (!rc) dataset_close(&ds);

    /* another file's valid cache (same content and mtime: only the path differs) */
    char other[PATH_MAX], other_idx[PATH_MAX + 64];
    pathf(other, sizeof other, "%s/corrupt-copy.json", g_tmp);
    write_str(other, k_tiny);
    struct stat st;
    stat(ann, &st);
    set_mtime(other, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    dataset_index_path(other, cache, other_idx, sizeof other_idx, err, sizeof err);
    CHECK("corrupt: another annotation file's cache is not used",
          rebuilt_after(other, cache, other_idx, good, n, &ref), "trusted");
    free(good);
    free(bytes);
    dataset_close(&ref);
}

/* A bigger file so that concurrent first opens overlap. */
static char *make_big_json(int n_images, int anns_per_image, size_t *len) {
    size_t cap = (size_t)n_images * (120 + (size_t)anns_per_image * 160) + 256, used = 0;
    char *s = malloc(cap);
    used += (size_t)snprintf(s + used, cap - used, "{\"images\": [");
    for (int i = 0; i < n_images; i++)
        used += (size_t)snprintf(s + used, cap - used, "%s{\"id\": %d, \"file_name\": \"%012d.jpg\", "
                                 "\"width\": 640, \"height\": 480}", i ? ", " : "", i + 1, i + 1);
    used += (size_t)snprintf(s + used, cap - used, "], \"annotations\": [");
    for (int a = 0; a < n_images * anns_per_image; a++)
        used += (size_t)snprintf(s + used, cap - used, "%s{\"id\": %d, \"image_id\": %d, \"bbox\": [%d.5, %d.25, "
                                 "30.75, 20], \"category_id\": %d, \"segmentation\": [[1.5, 2.5, 3.5, 4.5, 5.5, 6.5]]}",
                                 a ? ", " : "", a + 1, 1 + a % n_images, a % 600, a % 400, 1 + a % 80);
    used += (size_t)snprintf(s + used, cap - used, "], \"categories\": [{\"id\": 1}]}");
    *len = used;
    return s;
}

static void test_concurrent_first_open(void) {
    char ann[PATH_MAX], cache[PATH_MAX], err[2048];
    pathf(ann, sizeof ann, "%s/concurrent.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-concurrent", g_tmp);
    size_t len;
    char *json = make_big_json(4000, 10, &len);
    write_file(ann, json, len);
    free(json);
    enum { KIDS = 4 };
    pid_t kids[KIDS];
    fflush(stdout);
    for (int k = 0; k < KIDS; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            Dataset ds;
            char e[2048];
            int ok = 1;
            for (int rep = 0; rep < 3 && ok; rep++) {
                if (open_ds(ann, cache, &ds, e, sizeof e)) _exit(2);
                ok = ds.n_images == 4000 && ds.n_anns == 40000 && ds.images[3999].n_ann == 10 &&
                     ds.anns[ds.n_anns - 1].id == 40000;
                dataset_close(&ds);
            }
            _exit(ok ? 0 : 1);
        }
    }
    int all_ok = 1;
    for (int k = 0; k < KIDS; k++) {
        int status = 0;
        waitpid(kids[k], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) all_ok = 0;
    }
    CHECK("concurrent: 4 processes opening at once all succeed", all_ok, "a child failed");
    Dataset ds;
    int rc = open_ds(ann, cache, &ds, err, sizeof err);
    CHECK("concurrent: the cache left behind is valid and used", rc == 0 && ds.from_cache == 1 &&
          count_files(cache) == 1, "rc %d from_cache %d files %d", rc, ds.from_cache, count_files(cache));
    if (!rc) dataset_close(&ds);
}

/* dataset_open on text must fail with a message containing every string of want[]. */
static void expect_error(const char *name, const char *text, const char *const *want, int n_want) {
    char ann[PATH_MAX], cache[PATH_MAX], err[2048], full[256];
    pathf(ann, sizeof ann, "%s/bad.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-bad", g_tmp);
    write_str(ann, text);
    Dataset ds;
    err[0] = 0;
    int rc = open_ds(ann, cache, &ds, err, sizeof err);
    int ok = rc == -1 && strncmp(err, ann, strlen(ann)) == 0;
    for (int i = 0; i < n_want; i++) ok = ok && strstr(err, want[i]);
    snprintf(full, sizeof full, "malformed: %s", name);
    CHECK(full, ok, "rc %d, message: %s", rc, err);
    if (!rc) dataset_close(&ds);
}

static void test_malformed(void) {
    const char *img = "{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 4, \"height\": 4}";
    char text[1024];
    snprintf(text, sizeof text, "{\"images\": [\n  %s,\n  {\"id\": 2,, }\n]}", img);
    expect_error("double comma", text, (const char *[]){":3:12: ", "unexpected ','"}, 2);
    snprintf(text, sizeof text, "{\"images\": [%s,\n]}", img);
    expect_error("trailing comma", text, (const char *[]){":2:1: ", "trailing comma"}, 2);
    expect_error("unterminated string", "{\"images\": [],\n \"info\": \"abc",
                 (const char *[]){":2:10: ", "unterminated string"}, 2);
    expect_error("truncated file", "{\"images\": [\n", (const char *[]){":2:1: ", "end of file"}, 2);
    expect_error("bad literal", "{\"images\": [], \"x\": tru}", (const char *[]){":1:21: ", "true"}, 2);
    expect_error("garbage after the object", "{\"images\": []}\n x", (const char *[]){":2:2: ", "end of file expected"}, 2);
    expect_error("empty file", "", (const char *[]){":1:1: ", "empty"}, 2);
    expect_error("top level array", "[1]", (const char *[]){":1:1: ", "JSON object"}, 2);
    expect_error("leading zero", "{\"images\": [], \"x\": 012}", (const char *[]){":1:22: "}, 1);
    expect_error("control character in a string", "{\"images\": [], \"x\": \"a\tb\"}",
                 (const char *[]){":1:23: ", "control character"}, 2);
    expect_error("invalid UTF-8", "{\"images\": [], \"x\": \"a\xc3\x28\"}", (const char *[]){":1:23: ", "UTF-8"}, 2);
    expect_error("lone surrogate", "{\"images\": [], \"x\": \"\\udc00\"}", (const char *[]){":1:22: ", "surrogate"}, 2);
    expect_error("\\u0000", "{\"images\": [], \"x\": \"a\\u0000\"}", (const char *[]){":1:23: ", "u0000"}, 2);
    expect_error("column counts characters, not bytes", "{\"images\": [], \"\xc3\xa9\xc3\xa9\": ]}",
                 (const char *[]){":1:22: "}, 1);
    char deep[5000];
    size_t d = (size_t)snprintf(deep, sizeof deep, "{\"images\": [], \"x\": ");
    for (int i = 0; i < 2100; i++) deep[d++] = '[';
    deep[d] = 0;
    expect_error("nesting too deep", deep, (const char *[]){"nesting deeper than 2048"}, 1);
    snprintf(text, sizeof text, "{\"images\": [\n {\"id\": 1, \"file_name\": \"a.jpg\", \"width\": \"640\", \"height\": 4}]}");
    expect_error("mistyped field", text, (const char *[]){":2:43: ", "images[0].width: expected an integer, got a string"}, 2);
    expect_error("missing field", "{\"images\": [{\"id\": 1, \"width\": 4, \"height\": 4}]}",
                 (const char *[]){":1:13: ", "images[0]: missing \"file_name\""}, 2);
    expect_error("real where an integer belongs", "{\"images\": [{\"id\": 1.5, \"file_name\": \"a\", \"width\": 4, \"height\": 4}]}",
                 (const char *[]){"images[0].id: expected an integer, got 1.5"}, 1);
    expect_error("integer out of range", "{\"images\": [{\"id\": 1, \"file_name\": \"a\", \"width\": 3000000000, \"height\": 4}]}",
                 (const char *[]){"images[0].width: 3000000000 is out of range"}, 1);
    snprintf(text, sizeof text, "{\"images\": [%s], \"annotations\": [{\"image_id\": 1, \"bbox\": [1, 2, 3], \"category_id\": 1}]}", img);
    expect_error("bbox of 3 numbers", text, (const char *[]){"annotations[0].bbox: 3 numbers, expected 4"}, 1);
    snprintf(text, sizeof text, "{\"images\": [%s], \"annotations\": [{\"image_id\": 1, \"bbox\": [1, 2, null, 3], \"category_id\": 1}]}", img);
    expect_error("bbox with null", text, (const char *[]){"annotations[0].bbox[2]: expected a number, got null"}, 1);
    expect_error("no images", "{\"annotations\": []}", (const char *[]){"no \"images\" array"}, 1);
    snprintf(text, sizeof text, "{\"images\": [%s], \"images\": []}", img);
    expect_error("images twice", text, (const char *[]){"\"images\" appears twice"}, 1);
    expect_error("negative category in \"categories\"", "{\"images\": [], \"categories\": [{\"id\": -1}]}",
                 (const char *[]){"categories[0].id: -1 is out of range"}, 1);
    snprintf(text, sizeof text, "{\"images\": [%s,\n {\"id\": 2, \"file_name\": \"b.jpg\", \"width\": 4, \"height\": 4},\n"
             " {\"id\": 1, \"file_name\": \"c.jpg\", \"width\": 4, \"height\": 4}]}", img);
    expect_error("duplicate image ids", text, (const char *[]){"duplicate image id 1: images[0] and images[2]",
                 "\"a.jpg\" and \"c.jpg\""}, 2);
    char cache[PATH_MAX];
    pathf(cache, sizeof cache, "%s/cache-bad", g_tmp);
    CHECK("malformed: no cache file is written for a bad file", count_files(cache) == 0, "%d files", count_files(cache));

    Dataset ds;
    char err[2048];
    int rc = dataset_open("/nonexistent/instances.json", g_tmp, cache, &ds, err, sizeof err);
    CHECK("malformed: a missing annotation file is a clear error", rc == -1 && strstr(err, "/nonexistent/instances.json") &&
          strstr(err, "No such file"), "%s", err);
}

/* The streaming reader against jansson on single-byte mutations of a small file: whenever
 * jansson refuses the text, we refuse it; whenever we call it a syntax error (-1), jansson
 * refuses it too; when jansson accepts it, we accept it or report a COCO schema problem. */
static void test_mutations(void) {
    const char *base =
        "{\"info\": {\"v\": [1, -2.5e3, true, false, null, \"s\\\"\\u00e9\"]},\n"
        " \"images\": [{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 64, \"height\": 48},\n"
        "   {\"id\": 2, \"file_name\": \"b\\/c.jpg\", \"width\": 32, \"height\": 16}],\n"
        " \"annotations\": [{\"id\": 7, \"image_id\": 1, \"bbox\": [1.5, 2, 30, 4.25], \"category_id\": 3,\n"
        "   \"iscrowd\": 0, \"segmentation\": [[1, 2, 3.5, 4]], \"area\": 12.5}],\n"
        " \"categories\": [{\"id\": 3, \"name\": \"x\"}]}\n";
    const char alphabet[] = "{}[]\":,\\ 0129.-+eEtfnu\n\t\x01\x80\xc3\xff/a";
    size_t n = strlen(base);
    char path[PATH_MAX], *text = malloc(n + 1);
    pathf(path, sizeof path, "%s/mutant.json", g_tmp);
    uint64_t s = 12345;
    int n_cases = 3000, disagree = 0, syntax = 0, schema = 0, accepted = 0;
    char example[2048] = "";
    for (int t = 0; t < n_cases; t++) {
        memcpy(text, base, n + 1);
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        size_t pos = (size_t)(s >> 33) % n;
        text[pos] = alphabet[(s >> 13) % (sizeof alphabet - 1)];
        write_file(path, text, n);
        json_error_t je;
        json_t *j = json_loadb(text, n, 0, &je);
        int jansson_ok = j != NULL;
        json_decref(j);
        CocoJson cj;
        char err[1024];
        int rc = coco_json_read(path, &cj, err, sizeof err);
        if (rc == 0) coco_json_free(&cj), accepted++;
        else if (rc == -1) syntax++;
        else schema++;
        int ok = jansson_ok ? rc != -1 : rc != 0;
        if (!ok && !disagree++)
            snprintf(example, sizeof example, "byte %zu -> 0x%02x: jansson %s, ours rc %d (%s)", pos,
                     (unsigned char)text[pos], jansson_ok ? "accepts" : je.text, rc, rc ? err : "");
    }
    free(text);
    CHECK("mutations: agrees with jansson on 3000 mutated files", disagree == 0, "%d disagreements, e.g. %s",
          disagree, example);
    printf("     (mutations: %d accepted, %d syntax errors, %d schema errors)\n", accepted, syntax, schema);
}

/* Numbers as the reference reads them: Python's json (correctly rounded double), then float32.
 * Random decimals of every shape (up to 20 digits, fractions, exponents) through the reader's
 * fast path and its strtod fallback must match strtod + float conversion bit for bit. */
static void test_numbers(void) {
    enum { N = 3000 };
    char ann[PATH_MAX], cache[PATH_MAX], err[2048];
    pathf(ann, sizeof ann, "%s/numbers.json", g_tmp);
    pathf(cache, sizeof cache, "%s/cache-numbers", g_tmp);
    static char nums[N][48];
    uint64_t s = 99;
    for (int i = 0; i < N; i++) {
        char *p = nums[i];
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int int_digits = 1 + (int)((s >> 20) % 12), frac_digits = (int)((s >> 30) % 9);
        int exp = (s >> 40) % 3 == 0 ? (int)((s >> 44) % 61) - 30 : 0;
        if ((s >> 50) & 1) *p++ = '-';
        for (int d = 0; d < int_digits; d++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            *p++ = (char)('0' + (d == 0 && int_digits > 1 ? 1 + (s >> 33) % 9 : (s >> 33) % 10));
        }
        if (frac_digits) {
            *p++ = '.';
            for (int d = 0; d < frac_digits; d++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                *p++ = (char)('0' + (s >> 33) % 10);
            }
        }
        if (exp) p += sprintf(p, "e%d", exp);
        *p = 0;
    }
    size_t cap = (size_t)N * 200 + 256, used = 0;
    char *json = malloc(cap);
    used += (size_t)snprintf(json + used, cap - used, "{\"images\": [{\"id\": 1, \"file_name\": \"n.jpg\", "
                             "\"width\": 1, \"height\": 1}], \"annotations\": [");
    for (int i = 0; i < N; i += 4)
        used += (size_t)snprintf(json + used, cap - used, "%s{\"image_id\": 1, \"category_id\": 1, \"bbox\": [%s, %s, %s, %s]}",
                                 i ? ", " : "", nums[i], nums[i + 1], nums[i + 2], nums[i + 3]);
    used += (size_t)snprintf(json + used, cap - used, "]}");
    write_file(ann, json, used);
    free(json);
    Dataset ds;
    if (open_ds(ann, cache, &ds, err, sizeof err)) {
        CHECK("numbers: open", 0, "%s", err);
        return;
    }
    int bad = -1;
    for (int i = 0; i < N && bad < 0; i++) {
        double d = strtod(nums[i], NULL);
        float want = d > FLT_MAX ? INFINITY : d < -FLT_MAX ? -INFINITY : (float)d;
        if (!same_float(ds.anns[i / 4].bbox[i % 4], want)) bad = i;
    }
    CHECK("numbers: 3000 random decimals equal strtod -> float32 bit for bit", bad < 0,
          "%s -> %.9g, want %.9g", bad >= 0 ? nums[bad] : "", bad >= 0 ? ds.anns[bad / 4].bbox[bad % 4] : 0.f,
          bad >= 0 ? (float)strtod(nums[bad], NULL) : 0.f);
    dataset_close(&ds);
}

/* The reader works on chunks (1 MiB in use): every token kind must parse the same when a
 * chunk boundary falls at any byte of it (numbers, escapes, UTF-8 sequences, keys, literals):
 * the same document read 1, 2, 3, 5, 7 and 64 bytes at a time. */
static void test_chunk_boundaries(void) {
    const char *doc =
        "{\"info\": \"x\", \"images\": [{\"id\": 1234567, \"file_name\": \"ab\\u00e9\\ud83d\\ude00\xc3\xa9\\\"cd.jpg\", "
        "\"width\": 640, \"height\": 480}], \"annotations\": [{\"id\": 98765, \"image_id\": 1234567, "
        "\"bbox\": [12.5e1, -0.25, 1e999, 3.0E-2], \"category_id\": 17, \"iscrowd\": true, "
        "\"segmentation\": [[1.25, 2.5e-3, -7, null, false]]}]}\n";
    char path[PATH_MAX], why[1024] = "";
    pathf(path, sizeof path, "%s/chunks.json", g_tmp);
    write_str(path, doc);
    const size_t chunks[] = {1, 2, 3, 5, 7, 64};
    int bad_chunk = -1;
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0] && bad_chunk < 0; k++) {
        CocoJson cj;
        if (coco_json_read_chunked(path, chunks[k], &cj, why, sizeof why)) {
            bad_chunk = (int)chunks[k];
            continue;
        }
        const CocoAnn *a = cj.anns;
        int ok = cj.n_images == 1 && cj.n_anns == 1 && cj.images[0].id == 1234567 && cj.images[0].width == 640 &&
                 cj.images[0].height == 480 && !strcmp(cj.names + cj.images[0].name_off, "ab\xc3\xa9\xf0\x9f\x98\x80\xc3\xa9\"cd.jpg") &&
                 a->id == 98765 && a->image_id == 1234567 && same_float(a->bbox[0], 125.f) &&
                 same_float(a->bbox[1], -0.25f) && isinf(a->bbox[2]) && same_float(a->bbox[3], (float)3.0e-2) &&
                 a->category == 17 && a->iscrowd == 1;
        coco_json_free(&cj);
        if (!ok) bad_chunk = (int)chunks[k], snprintf(why, sizeof why, "wrong values");
    }
    CHECK("chunks: tokens split across read boundaries parse the same", bad_chunk < 0,
          "chunk %d: %s", bad_chunk, why);

    /* the same errors, at the same place, whatever the chunk size */
    const char *bad_docs[] = {"{\"images\": [], \"x\": \"ab\\u12G4\"}", "{\"images\": [], \"x\": -.5}",
                              "{\"images\": [], \"x\": \"\xe2\x82\"}", "{\"images\": [], \"x\": 1.5e+}",
                              "{\"images\": [], \"x\": nul}"};
    int mismatch = -1;
    char first[1024], other[1024];
    for (int d = 0; d < 5 && mismatch < 0; d++) {
        write_str(path, bad_docs[d]);
        CocoJson cj;
        int rc0 = coco_json_read(path, &cj, first, sizeof first);
        for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
            int rc = coco_json_read_chunked(path, chunks[k], &cj, other, sizeof other);
            if (rc != -1 || rc0 != -1 || strcmp(first, other)) mismatch = d;
        }
    }
    CHECK("chunks: errors do not depend on the chunk size", mismatch < 0, "document %d: %s vs %s", mismatch,
          first, other);

    /* an error far into a big file: line and column counted over several chunks */
    size_t lines = 600000, used = 0;
    char *big = malloc(lines * 3 + 64);
    used += (size_t)sprintf(big, "{\"images\": [], \"info\": [\n");
    for (size_t i = 0; i < lines; i++) memcpy(big + used, "1,\n", 3), used += 3;
    used += (size_t)sprintf(big + used, "  1.e5]}");
    write_file(path, big, used);
    free(big);
    CocoJson cj;
    int rc = coco_json_read(path, &cj, why, sizeof why);
    CHECK("chunks: error position after 1.8 MB", rc == -1 && strstr(why, ":600002:5: invalid number"), "rc %d: %s", rc, why);
    if (!rc) coco_json_free(&cj);
}

static void test_find(void) {
    char root[PATH_MAX], p[PATH_MAX], ann[PATH_MAX], img[PATH_MAX], err[2048];
    pathf(root, sizeof root, "%s/find-coco", g_tmp);
    mkdir(root, 0755);
    pathf(p, sizeof p, "%s/annotations", root);
    mkdir(p, 0755);
    const char *files[] = {"annotations/instances_train2017.json", "annotations/instances_val2017.json",
                           "annotations/captions_train2017.json"};
    for (int i = 0; i < 3; i++) {
        pathf(p, sizeof p, "%s/%s", root, files[i]);
        write_str(p, "{}");
    }
    const char *dirs[] = {"train2017", "val2017", "test2017"};
    for (int i = 0; i < 3; i++) {
        pathf(p, sizeof p, "%s/%s", root, dirs[i]);
        mkdir(p, 0755);
    }
    int rc = dataset_find(root, "train", ann, sizeof ann, img, sizeof img, err, sizeof err);
    char want_ann[PATH_MAX], want_img[PATH_MAX];
    pathf(want_ann, sizeof want_ann, "%s/annotations/instances_train2017.json", root);
    pathf(want_img, sizeof want_img, "%s/train2017", root);
    CHECK("find: COCO layout, train", rc == 0 && !strcmp(ann, want_ann) && !strcmp(img, want_img),
          "rc %d %s %s %s", rc, ann, img, rc ? err : "");
    rc = dataset_find(root, "val", ann, sizeof ann, img, sizeof img, err, sizeof err);
    pathf(want_img, sizeof want_img, "%s/val2017", root);
    CHECK("find: COCO layout, val", rc == 0 && !strcmp(img, want_img) && strstr(ann, "instances_val2017.json"),
          "rc %d %s", rc, rc ? err : img);

    /* 2014 next to 2017: ambiguous */
    pathf(p, sizeof p, "%s/annotations/instances_train2014.json", root);
    write_str(p, "{}");
    pathf(p, sizeof p, "%s/train2014", root);
    mkdir(p, 0755);
    rc = dataset_find(root, "train", ann, sizeof ann, img, sizeof img, err, sizeof err);
    CHECK("find: two train splits are ambiguous", rc == -1 && strstr(err, "instances_train2014.json") &&
          strstr(err, "instances_train2017.json") && strstr(err, "--ann"), "rc %d: %s", rc, err);

    /* the synthetic layout: instances_train.json + train/ */
    pathf(root, sizeof root, "%s/find-synth", g_tmp);
    mkdir(root, 0755);
    pathf(p, sizeof p, "%s/annotations", root);
    mkdir(p, 0755);
    pathf(p, sizeof p, "%s/annotations/instances_train.json", root);
    write_str(p, "{}");
    pathf(p, sizeof p, "%s/train", root);
    mkdir(p, 0755);
    rc = dataset_find(root, "train", ann, sizeof ann, img, sizeof img, err, sizeof err);
    CHECK("find: synthetic layout", rc == 0 && !strcmp(img, p), "rc %d %s", rc, rc ? err : img);
    rc = dataset_find(root, "val", ann, sizeof ann, img, sizeof img, err, sizeof err);
    CHECK("find: missing split names what was looked for", rc == -1 && strstr(err, "annotations/instances_val*.json") &&
          strstr(err, root), "rc %d: %s", rc, err);
    pathf(p, sizeof p, "%s/annotations/instances_val.json", root);
    write_str(p, "{}");
    rc = dataset_find(root, "val", ann, sizeof ann, img, sizeof img, err, sizeof err);
    CHECK("find: missing image folder is named", rc == -1 && strstr(err, "val*/"), "rc %d: %s", rc, err);
    pathf(p, sizeof p, "%s/nothing-here", g_tmp);
    rc = dataset_find(p, "train", ann, sizeof ann, img, sizeof img, err, sizeof err);
    CHECK("find: missing folder", rc == -1 && strstr(err, "annotations"), "rc %d: %s", rc, err);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    pathf(g_tmp, sizeof g_tmp, "%s/detr-test-dataset-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_tmp)) {
        CHECK("temp folder", 0, "mkdtemp: %s", strerror(errno));
        return test_finish();
    }
    test_parse_fields();
    test_against_jansson();
    test_targets();
    test_targets_parsed();
    test_cache();
    test_corrupt_cache();
    test_concurrent_first_open();
    test_malformed();
    test_mutations();
    test_numbers();
    test_chunk_boundaries();
    test_find();
    remove_tree(g_tmp);
    return test_finish();
}
