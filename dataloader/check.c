/* check.c - `detr-data check`: every problem of a COCO-format dataset, one line each, and a
 * summary with counts (see check.h).
 *
 * The JSON is read with the same streaming reader as dataset_open (so a file that check passes
 * opens), but into flat arrays without building the index: duplicate ids, which make
 * dataset_open fail at the first one, are all listed here. Image files are checked in
 * parallel (OpenMP, one Decoder per thread); their lines are printed in the JSON's order. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#include <stdarg.h>
#include <stddef.h>
#include "check.h"
#include "dataset_internal.h"
#include "decode.h"

#define HEADER_READ (64 * 1024) /* header-only mode: bytes read first (JPEG SOF, PNG IHDR) */

static const char *const k_kind_names[CHECK_NKINDS] = {
    [CHECK_JSON] = "json",
    [CHECK_DUP_IMAGE_ID] = "duplicate-image-id",
    [CHECK_DUP_ANN_ID] = "duplicate-annotation-id",
    [CHECK_DUP_CATEGORY_ID] = "duplicate-category-id",
    [CHECK_BAD_IMAGE_SIZE] = "bad-image-size",
    [CHECK_MISSING_IMAGE] = "missing-image",
    [CHECK_UNREADABLE_IMAGE] = "unreadable-image",
    [CHECK_UNDECODABLE_IMAGE] = "undecodable-image",
    [CHECK_TOO_LARGE_IMAGE] = "too-large-image",
    [CHECK_SIZE_MISMATCH] = "size-mismatch",
    [CHECK_UNKNOWN_IMAGE_ID] = "unknown-image-id",
    [CHECK_UNKNOWN_CATEGORY] = "unknown-category-id",
    [CHECK_BAD_BOX] = "bad-box",
    [CHECK_BOX_OUT_OF_RANGE] = "box-out-of-range",
};

static const char *const k_kind_help[CHECK_NKINDS] = {
    [CHECK_JSON] = "malformed JSON or a missing/mistyped field",
    [CHECK_DUP_IMAGE_ID] = "image id used more than once",
    [CHECK_DUP_ANN_ID] = "annotation id used more than once",
    [CHECK_DUP_CATEGORY_ID] = "category id used more than once",
    [CHECK_BAD_IMAGE_SIZE] = "width or height <= 0 in the JSON",
    [CHECK_MISSING_IMAGE] = "image file not found",
    [CHECK_UNREADABLE_IMAGE] = "image file cannot be read (permission, folder, empty, I/O)",
    [CHECK_UNDECODABLE_IMAGE] = "not a JPEG/PNG, or corrupt or truncated data",
    [CHECK_TOO_LARGE_IMAGE] = "more pixels than --max-pixels",
    [CHECK_SIZE_MISMATCH] = "image size differs from the JSON's width x height",
    [CHECK_UNKNOWN_IMAGE_ID] = "annotation's image_id not in \"images\"",
    [CHECK_UNKNOWN_CATEGORY] = "annotation's category_id not in \"categories\"",
    [CHECK_BAD_BOX] = "box with NaN/Inf or width/height <= 0",
    [CHECK_BOX_OUT_OF_RANGE] = "box outside its image (beyond the tolerance)",
};

const char *check_kind_name(CheckKind k) {
    return (int)k >= 0 && k < CHECK_NKINDS ? k_kind_names[k] : "unknown";
}

void check_options_default(CheckOptions *o) {
    memset(o, 0, sizeof *o);
    o->max_pixels = 100000000;
    o->decode = 1;
    o->box_tolerance = 1.0;
}

void check_report_free(CheckReport *rep) { memset(rep, 0, sizeof *rep); }

typedef struct {
    CheckReport *rep;
    FILE *out;
    const char *ann;
} Ctx;

static void problem(Ctx *c, CheckKind k, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void problem(Ctx *c, CheckKind k, const char *fmt, ...) {
    c->rep->counts[k]++;
    c->rep->total_problems++;
    if (!c->out) return;
    fprintf(c->out, "%s: ", k_kind_names[k]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(c->out, fmt, ap);
    va_end(ap);
    fputc('\n', c->out);
}

/* ---------------------------------------------------------------- duplicate ids */

typedef struct {
    int64_t id, pos;
} IdPos;

static int cmp_idpos(const void *a, const void *b) {
    const IdPos *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Sorted (id, position) pairs of n records of `stride` bytes, the id (int64) at id_off; with
 * has_off > 0, records whose int32 at has_off is 0 (no id) are left out. NULL when out of
 * memory. */
static IdPos *sorted_ids(int64_t n, const void *base, size_t stride, size_t id_off,
                         size_t has_off, int64_t *n_out) {
    IdPos *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v) return NULL;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *e = (const char *)base + (size_t)i * stride;
        if (has_off) {
            int32_t has;
            memcpy(&has, e + has_off, sizeof has);
            if (!has) continue;
        }
        memcpy(&v[m].id, e + id_off, sizeof(int64_t));
        v[m++].pos = i;
    }
    qsort(v, (size_t)m, sizeof *v, cmp_idpos);
    *n_out = m;
    return v;
}

/* Lists every repeat of an id: "id 7 at images[2] and images[9]" (positions against the
 * first occurrence). */
static void report_duplicates(Ctx *c, CheckKind k, const IdPos *v, int64_t n, const char *section) {
    for (int64_t i = 1; i < n; i++) {
        if (v[i].id != v[i - 1].id) continue;
        int64_t first = i - 1;
        while (first > 0 && v[first - 1].id == v[i].id) first--;
        problem(c, k, "id %" PRId64 " at %s[%" PRId64 "] and %s[%" PRId64 "]", v[i].id, section,
                v[first].pos, section, v[i].pos);
    }
}

/* Position of the first occurrence of id, or -1. */
static int64_t find_pos(const IdPos *v, int64_t n, int64_t id) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (v[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && v[lo].id == id ? v[lo].pos : -1;
}

/* ---------------------------------------------------------------- annotations */

static void check_annotations(Ctx *c, const CocoJson *cj, const IdPos *imgs, int64_t n_imgs,
                              const IdPos *cats, int64_t n_cats, double tol) {
    for (int64_t a = 0; a < cj->n_anns; a++) {
        const CocoAnn *an = &cj->anns[a];
        char who[96];
        if (an->has_id) snprintf(who, sizeof who, "annotations[%" PRId64 "] (id %" PRId64 ")", a, an->id);
        else snprintf(who, sizeof who, "annotations[%" PRId64 "]", a);
        int64_t ip = find_pos(imgs, n_imgs, an->image_id);
        if (ip < 0) problem(c, CHECK_UNKNOWN_IMAGE_ID, "%s: image_id %" PRId64 " is not in \"images\"", who, an->image_id);
        if (n_cats && find_pos(cats, n_cats, an->category) < 0)
            problem(c, CHECK_UNKNOWN_CATEGORY, "%s: category_id %d is not in \"categories\"", who, an->category);
        const float *b = an->bbox;
        if (!isfinite(b[0]) || !isfinite(b[1]) || !isfinite(b[2]) || !isfinite(b[3])) {
            problem(c, CHECK_BAD_BOX, "%s: bbox [%g, %g, %g, %g] is not finite (a number too large for float32)",
                    who, b[0], b[1], b[2], b[3]);
            continue;
        }
        if (b[2] <= 0 || b[3] <= 0) {
            problem(c, CHECK_BAD_BOX, "%s: bbox [%g, %g, %g, %g] has zero or negative width/height",
                    who, b[0], b[1], b[2], b[3]);
            continue;
        }
        if (ip < 0) continue;
        const CocoImage *im = &cj->images[ip];
        if (im->width <= 0 || im->height <= 0) continue; /* reported with the image */
        double x1 = (double)b[0] + b[2], y1 = (double)b[1] + b[3];
        if (b[0] < -tol || b[1] < -tol || x1 > im->width + tol || y1 > im->height + tol)
            problem(c, CHECK_BOX_OUT_OF_RANGE, "%s: bbox [%g, %g, %g, %g] (x1 %g, y1 %g) is outside "
                    "images[%" PRId64 "] (%dx%d) by more than %g px", who, b[0], b[1], b[2], b[3],
                    x1, y1, ip, im->width, im->height, tol);
    }
}

/* ---------------------------------------------------------------- image files */

typedef struct {
    int kind;        /* -1 = fine */
    char *msg;       /* malloc'ed detail */
} FileResult;

typedef struct {
    Decoder *dec;
    Image img;
    uint8_t *buf;
    size_t cap;
} Worker;

static int reserve(Worker *w, size_t n) {
    if (n <= w->cap) return 0;
    uint8_t *b = realloc(w->buf, n);
    if (!b) return -1;
    w->buf = b;
    w->cap = n;
    return 0;
}

/* Reads up to n bytes from the start of fd into w->buf; returns the count or -1 (errno). */
static ssize_t read_prefix(int fd, Worker *w, size_t n) {
    if (reserve(w, n ? n : 1)) {
        errno = ENOMEM;
        return -1;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, w->buf + got, n - got, (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        if (k == 0) break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

static FileResult fail(int kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static FileResult fail(int kind, const char *fmt, ...) {
    FileResult r = {kind, NULL};
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    r.msg = strdup(buf);
    return r;
}

static FileResult check_file(Worker *w, const char *path, const CocoImage *im,
                             const CheckOptions *o) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return fail(CHECK_MISSING_IMAGE, "%s: no such file", path);
        return fail(CHECK_UNREADABLE_IMAGE, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    FileResult r = {-1, NULL};
    char err[512];
    int fw = 0, fh = 0;
    if (fstat(fd, &st)) {
        r = fail(CHECK_UNREADABLE_IMAGE, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (S_ISDIR(st.st_mode)) {
        r = fail(CHECK_UNREADABLE_IMAGE, "%s: is a folder, not an image file", path);
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        r = fail(CHECK_UNREADABLE_IMAGE, "%s: not a regular file", path);
        goto done;
    }
    if (st.st_size == 0) {
        r = fail(CHECK_UNREADABLE_IMAGE, "%s: empty file (0 bytes)", path);
        goto done;
    }
    size_t size = (size_t)st.st_size;
    size_t want = o->decode || size <= HEADER_READ ? size : HEADER_READ;
    ssize_t got = read_prefix(fd, w, want);
    if (got < 0) {
        r = fail(CHECK_UNREADABLE_IMAGE, "%s: read error: %s", path, strerror(errno));
        goto done;
    }
    int probed = decode_probe(w->dec, w->buf, (size_t)got, &fw, &fh, err, sizeof err) == 0;
    if (!probed && (size_t)got < size) { /* header beyond the first bytes (large EXIF) */
        got = read_prefix(fd, w, size);
        if (got < 0) {
            r = fail(CHECK_UNREADABLE_IMAGE, "%s: read error: %s", path, strerror(errno));
            goto done;
        }
        probed = decode_probe(w->dec, w->buf, (size_t)got, &fw, &fh, err, sizeof err) == 0;
    }
    if (!probed) {
        r = fail(CHECK_UNDECODABLE_IMAGE, "%s: %s", path, err);
        goto done;
    }
    if (o->max_pixels > 0 && (int64_t)fw * fh > o->max_pixels) {
        r = fail(CHECK_TOO_LARGE_IMAGE, "%s: %dx%d = %" PRId64 " pixels, above the limit of %" PRId64,
                 path, fw, fh, (int64_t)fw * fh, o->max_pixels);
        goto done;
    }
    if (o->decode && decode_image(w->dec, w->buf, (size_t)got, 0, 0, 0, &w->img, err, sizeof err)) {
        r = fail(CHECK_UNDECODABLE_IMAGE, "%s: %s", path, err);
        goto done;
    }
    if (im->width > 0 && im->height > 0 && (fw != im->width || fh != im->height))
        r = fail(CHECK_SIZE_MISMATCH, "%s: the file is %dx%d, the JSON says %dx%d", path, fw, fh,
                 im->width, im->height);
done:
    close(fd);
    return r;
}

/* Checks every image file in parallel; results in the JSON's order. Returns -1 when out of
 * memory. */
static int check_files(Ctx *c, const CocoJson *cj, const char *dir, const CheckOptions *o) {
    int64_t n = cj->n_images;
    FileResult *res = calloc((size_t)(n ? n : 1), sizeof *res);
    if (!res) return -1;
    int oom = 0;
#pragma omp parallel num_threads(o->threads > 0 ? o->threads : omp_get_max_threads()) reduction(|: oom)
    {
        Worker w = {0};
        w.dec = decoder_create();
        if (!w.dec) oom = 1;
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < n; i++) {
            if (!w.dec) continue;
            char path[8192];
            const char *name = cj->names + cj->images[i].name_off;
            if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
                res[i] = fail(CHECK_UNREADABLE_IMAGE, "%s/%s: path too long", dir, name);
            else
                res[i] = check_file(&w, path, &cj->images[i], o);
            if (res[i].kind >= 0 && !res[i].msg) oom = 1;
        }
        decoder_destroy(w.dec);
        image_free(&w.img);
        free(w.buf);
    }
    for (int64_t i = 0; i < n; i++) {
        if (res[i].kind >= 0)
            problem(c, (CheckKind)res[i].kind, "images[%" PRId64 "] (id %" PRId64 "): %s", i,
                    cj->images[i].id, res[i].msg ? res[i].msg : "(out of memory)");
        free(res[i].msg);
    }
    free(res);
    return oom ? -1 : 0;
}

/* ---------------------------------------------------------------- entry point */

static void print_summary(Ctx *c, const char *images_dir) {
    if (!c->out) return;
    const CheckReport *r = c->rep;
    fprintf(c->out, "summary: %s (%" PRId64 " images, %" PRId64 " annotations, %" PRId64
            " categories; images in %s)\n", c->ann, r->n_images, r->n_anns, r->n_categories, images_dir);
    for (int k = 0; k < CHECK_NKINDS; k++)
        fprintf(c->out, "  %-24s %10" PRId64 "  %s\n", k_kind_names[k], r->counts[k], k_kind_help[k]);
    if (r->total_problems)
        fprintf(c->out, "%" PRId64 " problem(s) found\n", r->total_problems);
    else
        fprintf(c->out, "clean: no problems found\n");
}

int dataset_check(const char *ann, const char *images_dir, const CheckOptions *opt,
                  CheckReport *rep, FILE *out) {
    CheckOptions defaults;
    if (!opt) {
        check_options_default(&defaults);
        opt = &defaults;
    }
    memset(rep, 0, sizeof *rep);
    Ctx c = {rep, out, ann};
    if (!images_dir) images_dir = ".";
    CocoJson cj;
    char err[4096];
    if (coco_json_read(ann, &cj, err, sizeof err)) {
        problem(&c, CHECK_JSON, "%s", err);
        print_summary(&c, images_dir);
        return 1;
    }
    rep->n_images = cj.n_images;
    rep->n_anns = cj.n_anns;
    rep->n_categories = cj.n_categories;
    int rc = -1;
    int64_t n_imgs = 0, n_anns = 0, n_cats = 0;
    IdPos *imgs = sorted_ids(cj.n_images, cj.images, sizeof *cj.images, offsetof(CocoImage, id), 0, &n_imgs);
    IdPos *anns = sorted_ids(cj.n_anns, cj.anns, sizeof *cj.anns, offsetof(CocoAnn, id),
                             offsetof(CocoAnn, has_id), &n_anns);
    IdPos *cats = malloc((size_t)(cj.n_categories ? cj.n_categories : 1) * sizeof *cats);
    if (!imgs || !anns || !cats) goto done;
    for (int64_t k = 0; k < cj.n_categories; k++) cats[k] = (IdPos){cj.category_ids[k], k};
    n_cats = cj.n_categories;
    qsort(cats, (size_t)n_cats, sizeof *cats, cmp_idpos);

    report_duplicates(&c, CHECK_DUP_IMAGE_ID, imgs, n_imgs, "images");
    report_duplicates(&c, CHECK_DUP_ANN_ID, anns, n_anns, "annotations");
    report_duplicates(&c, CHECK_DUP_CATEGORY_ID, cats, n_cats, "categories");
    if (!n_cats && cj.n_anns)
        problem(&c, CHECK_UNKNOWN_CATEGORY, "%s has no \"categories\": every category_id is unknown", ann);
    for (int64_t i = 0; i < cj.n_images; i++)
        if (cj.images[i].width <= 0 || cj.images[i].height <= 0)
            problem(&c, CHECK_BAD_IMAGE_SIZE, "images[%" PRId64 "] (id %" PRId64 "): width %d, height %d",
                    i, cj.images[i].id, cj.images[i].width, cj.images[i].height);
    check_annotations(&c, &cj, imgs, n_imgs, cats, n_cats, opt->box_tolerance);
    if (check_files(&c, &cj, images_dir, opt)) goto done;
    rc = rep->total_problems ? 1 : 0;
done:
    if (rc < 0 && out) fprintf(out, "error: out of memory while checking %s\n", ann);
    print_summary(&c, images_dir);
    free(imgs);
    free(anns);
    free(cats);
    coco_json_free(&cj);
    return rc;
}
