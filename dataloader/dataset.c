/* dataset.c - opening a COCO-format dataset (cached binary index, see dataset_index.c), finding
 * one under --data DIR, and the reference's target filtering (ConvertCocoPolysToMask). */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "cache_dir.h"
#include "dataset_internal.h"

/* ---------------------------------------------------------------- cache folder */

/* mkdir -p. Returns 0 or -1 with errno set. */
static int make_dirs(const char *path) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = c;
            if (!c) break;
        }
    }
    struct stat st;
    if (stat(path, &st)) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int cache_folder(const char *cache_dir, char *out, size_t len, char *err, size_t errlen) {
    int n = 0;
    if (cache_dir && *cache_dir) n = snprintf(out, len, "%s", cache_dir);
    else if ((n = cache_root_default(out, len)) == 1) {
        snprintf(err, errlen, "no cache folder: neither XDG_CACHE_HOME nor HOME is set (use --cache DIR)");
        return -1;
    }
    if (n < 0 || (size_t)n >= len) {
        snprintf(err, errlen, "cache folder path too long");
        return -1;
    }
    return 0;
}

int dataset_index_path(const char *ann_path, const char *cache_dir, char *out, size_t len,
                       char *err, size_t errlen) {
    char folder[PATH_MAX], abs[PATH_MAX];
    if (!realpath(ann_path, abs)) {
        snprintf(err, errlen, "%s: cannot open the annotation file: %s", ann_path, strerror(errno));
        return -1;
    }
    if (cache_folder(cache_dir, folder, sizeof folder, err, errlen)) return -1;
    uint64_t h = ds_hash64(abs, strlen(abs), 0);
    if (snprintf(out, len, "%s/coco-index-%016" PRIx64 ".bin", folder, h) >= (int)len) {
        snprintf(err, errlen, "cache file path too long");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- open / close */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Writes the freshly built index to the cache; a failure only costs the next open a rebuild. */
static void save_to_cache(const Dataset *ds, const char *ann_path, const char *cache_dir,
                          const char *index_path) {
    char folder[PATH_MAX], err[PATH_MAX + 512];
    if (cache_folder(cache_dir, folder, sizeof folder, err, sizeof err) == 0 && make_dirs(folder))
        snprintf(err, sizeof err, "cannot create %s: %s", folder, strerror(errno));
    else if (ds_index_write(ds, index_path, err, sizeof err) == 0)
        return;
    fprintf(stderr, "warning: %s: dataset index not cached (%s); the next open parses the JSON again\n",
            ann_path, err);
}

int dataset_open(const char *ann_path, const char *images_dir, const char *cache_dir, Dataset *ds,
                 char *err, size_t errlen) {
    memset(ds, 0, sizeof *ds);
    char abs[PATH_MAX], index_path[PATH_MAX + 64], reason[512];
    SourceKey key;
    if (!realpath(ann_path, abs)) {
        snprintf(err, errlen, "%s: cannot open the annotation file: %s", ann_path, strerror(errno));
        return -1;
    }
    if (ds_source_key(abs, &key, err, errlen)) return -1;
    int have_cache = dataset_index_path(abs, cache_dir, index_path, sizeof index_path, reason,
                                        sizeof reason) == 0;
    if (!have_cache)
        fprintf(stderr, "warning: %s: dataset index not cached (%s)\n", ann_path, reason);
    ds->ann_path = dup_str(ann_path);
    ds->images_dir = dup_str(images_dir ? images_dir : ".");
    if (!ds->ann_path || !ds->images_dir) {
        snprintf(err, errlen, "out of memory");
        dataset_close(ds);
        return -1;
    }
    if (have_cache) {
        if (ds_index_load(index_path, abs, &key, ds, reason, sizeof reason) == 1) {
            if (ds->n_orphan_anns)
                fprintf(stderr, "warning: %s: %" PRId64 " annotation(s) refer to image ids not in "
                        "\"images\"; skipped (run `detr-data check` for the list)\n",
                        ann_path, ds->n_orphan_anns);
            return 0;
        }
        if (strcmp(reason, "no cache file"))
            fprintf(stderr, "note: %s: rebuilding the dataset index %s (%s)\n", ann_path, index_path, reason);
    }
    CocoJson cj;
    if (coco_json_read(ann_path, &cj, err, errlen)) {
        dataset_close(ds);
        return -1;
    }
    int rc = ds_index_build(&cj, ann_path, abs, &key, ds, err, errlen);
    coco_json_free(&cj); /* before writing: the raw arrays are no longer needed */
    if (rc) {
        dataset_close(ds);
        return -1;
    }
    if (have_cache) save_to_cache(ds, ann_path, cache_dir, index_path);
    return 0;
}

void dataset_close(Dataset *ds) {
    if (ds->mapping) {
        if (ds->from_cache) munmap(ds->mapping, ds->mapping_len);
        else free(ds->mapping);
    }
    free(ds->ann_path);
    free(ds->images_dir);
    memset(ds, 0, sizeof *ds);
}

/* ---------------------------------------------------------------- targets */

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

int dataset_targets(const Dataset *ds, int64_t i, int img_w, int img_h, int keep_crowd,
                    float *boxes_xyxy, int *labels, int max, int *n_dropped_invalid) {
    int n = 0, invalid = 0;
    if (i >= 0 && i < ds->n_images) {
        const DsImage *im = &ds->images[i];
        const float w = (float)img_w, h = (float)img_h;
        for (uint32_t k = 0; k < im->n_ann; k++) {
            const DsAnn *a = &ds->anns[im->first_ann + k];
            if (a->iscrowd && !keep_crowd) continue;
            const float *b = a->bbox; /* x, y, w, h */
            if (!isfinite(b[0]) || !isfinite(b[1]) || !isfinite(b[2]) || !isfinite(b[3]) ||
                b[2] < 0 || b[3] < 0 || a->category < 0) {
                invalid++;
                continue;
            }
            /* float32 like the reference: boxes[:, 2:] += boxes[:, :2], then clamp_ */
            float x0 = clampf(b[0], 0, w), y0 = clampf(b[1], 0, h);
            float x1 = clampf(b[0] + b[2], 0, w), y1 = clampf(b[1] + b[3], 0, h);
            if (!(x1 > x0 && y1 > y0)) continue; /* degenerate: the reference drops it */
            if (n >= max) {
                invalid++;
                continue;
            }
            boxes_xyxy[4 * n + 0] = x0;
            boxes_xyxy[4 * n + 1] = y0;
            boxes_xyxy[4 * n + 2] = x1;
            boxes_xyxy[4 * n + 3] = y1;
            labels[n] = a->category;
            n++;
        }
    }
    if (n_dropped_invalid) *n_dropped_invalid = invalid;
    return n;
}

/* ---------------------------------------------------------------- dataset_find */

#define FIND_MAX 64

typedef struct {
    char names[FIND_MAX][256];
    int n;
} NameList;

static int cmp_str(const void *a, const void *b) { return strcmp(a, b); }

/* Entries of dir whose name starts with prefix and ends with suffix; want_dir selects folders
 * (1) or regular files (0). Sorted. Returns -1 when dir cannot be read. */
static int list_matching(const char *dir, const char *prefix, const char *suffix, int want_dir,
                         NameList *out) {
    out->n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    size_t lp = strlen(prefix), ls = strlen(suffix);
    struct dirent *e;
    while ((e = readdir(d)) && out->n < FIND_MAX) {
        size_t ln = strlen(e->d_name);
        if (ln < lp + ls || ln >= sizeof out->names[0] || strncmp(e->d_name, prefix, lp) ||
            strcmp(e->d_name + ln - ls, suffix))
            continue;
        char full[PATH_MAX];
        struct stat st;
        if (snprintf(full, sizeof full, "%s/%s", dir, e->d_name) >= (int)sizeof full ||
            stat(full, &st) || (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)))
            continue;
        memcpy(out->names[out->n++], e->d_name, ln + 1);
    }
    closedir(d);
    qsort(out->names, (size_t)out->n, sizeof out->names[0], cmp_str);
    return 0;
}

static void join_names(const NameList *l, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < l->n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", l->names[i]);
}

int dataset_find(const char *dir, const char *split, char *ann_out, size_t ann_len, char *img_out,
                 size_t img_len, char *err, size_t errlen) {
    char ann_dir[PATH_MAX], prefix[64], found[2048];
    NameList anns, imgs;
    if (snprintf(ann_dir, sizeof ann_dir, "%s/annotations", dir) >= (int)sizeof ann_dir ||
        snprintf(prefix, sizeof prefix, "instances_%s", split) >= (int)sizeof prefix) {
        snprintf(err, errlen, "dataset path too long: %s", dir);
        return -1;
    }
    if (list_matching(ann_dir, prefix, ".json", 0, &anns)) {
        snprintf(err, errlen, "%s: no annotations/ folder (looked for annotations/instances_%s*.json "
                 "and an image folder %s*/ under it; or pass --ann FILE --images DIR)", dir, split, split);
        return -1;
    }
    if (anns.n == 0) {
        snprintf(err, errlen, "%s: no annotations/instances_%s*.json (looked in %s; or pass --ann FILE "
                 "--images DIR)", dir, split, ann_dir);
        return -1;
    }
    if (list_matching(dir, split, "", 1, &imgs) || imgs.n == 0) {
        snprintf(err, errlen, "%s: no %s*/ image folder next to annotations/ (found %s; or pass --ann "
                 "FILE --images DIR)", dir, split, anns.names[0]);
        return -1;
    }
    /* Pair instances_<split><S>.json with <split><S>/ (S = "2017", "" ...). */
    int pa = -1, pi = -1, pairs = 0;
    size_t lp = strlen(prefix), ls = strlen(split);
    for (int a = 0; a < anns.n; a++) {
        const char *s = anns.names[a] + lp;
        size_t sl = strlen(s) - strlen(".json");
        for (int i = 0; i < imgs.n; i++)
            if (strlen(imgs.names[i] + ls) == sl && !strncmp(imgs.names[i] + ls, s, sl)) {
                if (pairs++ == 0) pa = a, pi = i;
            }
    }
    if (pairs > 1) {
        join_names(&anns, found, sizeof found);
        snprintf(err, errlen, "%s: several %s splits (annotations: %s); pass --ann FILE --images DIR "
                 "to pick one", dir, split, found);
        return -1;
    }
    if (pairs == 0) {
        if (anns.n != 1 || imgs.n != 1) {
            char found_imgs[1024];
            join_names(&anns, found, sizeof found);
            join_names(&imgs, found_imgs, sizeof found_imgs);
            snprintf(err, errlen, "%s: cannot tell which annotation file goes with which image folder "
                     "(annotations: %s; folders: %s); expected one instances_%s<suffix>.json with one %s<suffix>/ "
                     "of the same suffix, or "
                     "pass --ann FILE --images DIR", dir, found, found_imgs, split, split);
            return -1;
        }
        pa = pi = 0;
    }
    if (snprintf(ann_out, ann_len, "%s/%s", ann_dir, anns.names[pa]) >= (int)ann_len ||
        snprintf(img_out, img_len, "%s/%s", dir, imgs.names[pi]) >= (int)img_len) {
        snprintf(err, errlen, "dataset path too long: %s", dir);
        return -1;
    }
    return 0;
}
