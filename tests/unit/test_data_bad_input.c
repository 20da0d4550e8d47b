/* test_data_bad_input.c - the data loader and detr-data on a generated corpus of bad input
 * (issue "dataloader" section 7). The corpus, made here in C (synthetic pixels, TurboJPEG,
 * libspng), is one COCO dataset whose images alternate good and bad:
 *   corrupt.jpg (garbage over the JPEG headers), truncated.jpg (first 40% of a JPEG),
 *   empty.jpg (zero bytes), png_named.jpg (a valid PNG: must load), missing.jpg (not on disk),
 *   unreadable.jpg (chmod 000; as root - CI - reads still work: that case is skipped with a
 *   message), huge.jpg (a JPEG whose header claims 20000x20000 > --max-pixels), garbage.jpg
 *   (random bytes), wrong_size.jpg (JSON size differs), boxes with negative sizes, +-Inf (1e39
 *   overflows float32) and NaN (Inf + -Inf), a huge finite box, an unknown category id and a
 *   duplicate annotation id;
 * plus two datasets that cannot open: malformed JSON (error with line and column) and duplicate
 * image ids.
 * Checked: the loader skips exactly the unloadable samples (counted in its stats, one warning
 * line naming each file, never delivering them, no hang), --strict stops at the first; `detr-data
 * bench` does the same end to end; `detr-data check` (and dataset_check) counts every problem
 * kind and names every bad file, exit 1; the unopenable datasets give clear errors. */
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <jansson.h>
#include "check.h"
#include "test_util.h"
#include "../../dataloader/check.h"
#include "../../dataloader/synth.h"
#include "dataset.h"
#include "loader.h"

#define IMG_W 64
#define IMG_H 48

static char g_tmp[256], g_corpus[300], g_cache[300];
static const char *g_build;
static int g_unreadable_works; /* chmod 000 stops reads (not root) */

/* ------------------------------------------------------------------------------------------ */
/* Corpus generation */

typedef enum { GOOD, BAD_SKIP } Expect; /* BAD_SKIP: the loader must skip it */

typedef struct {
    const char *file;
    Expect expect;
    int json_w, json_h;       /* size written in the JSON (0 = the file's) */
    const char *extra_anns;   /* extra annotation objects for this image (JSON text, %ID% = id) */
} Entry;

/* Good and bad images alternate so that each bad sample is replaced by a good one (the loader
 * replaces a bad sample by the next of the order): the skip count is then exact. */
static const Entry ENTRIES[] = {
    {"good_a.jpg", GOOD, 0, 0, NULL},
    {"corrupt.jpg", BAD_SKIP, 0, 0, NULL},
    {"good_b.jpg", GOOD, 0, 0, NULL},
    {"truncated.jpg", BAD_SKIP, 0, 0, NULL},
    {"good_c.jpg", GOOD, 0, 0, NULL},
    {"empty.jpg", BAD_SKIP, 0, 0, NULL},
    {"png_named.jpg", GOOD, 0, 0, NULL},
    {"missing.jpg", BAD_SKIP, 0, 0, NULL},
    {"bad_boxes.jpg", GOOD, 0, 0,
     /* negative w (invalid), fully outside (clamped away), +Inf w (invalid), NaN x1 (invalid),
      * huge finite (clamped to the image: kept), unknown category 999 */
     "{\"id\": %ID%1, \"image_id\": %ID%, \"category_id\": 1, \"bbox\": [10, 10, -5, 20], \"area\": 1, \"iscrowd\": 0},"
     "{\"id\": %ID%2, \"image_id\": %ID%, \"category_id\": 2, \"bbox\": [-50, -50, 30, 30], \"area\": 1, \"iscrowd\": 0},"
     "{\"id\": %ID%3, \"image_id\": %ID%, \"category_id\": 1, \"bbox\": [0, 0, 1e39, 10], \"area\": 1, \"iscrowd\": 0},"
     "{\"id\": %ID%4, \"image_id\": %ID%, \"category_id\": 3, \"bbox\": [1e39, 5, -1e39, 5], \"area\": 1, \"iscrowd\": 0},"
     "{\"id\": %ID%5, \"image_id\": %ID%, \"category_id\": 2, \"bbox\": [0, 0, 1e30, 1e30], \"area\": 1, \"iscrowd\": 0},"
     "{\"id\": %ID%6, \"image_id\": %ID%, \"category_id\": 999, \"bbox\": [2, 2, 10, 10], \"area\": 1, \"iscrowd\": 0},"},
    {"unreadable.jpg", BAD_SKIP, 0, 0, NULL},
    {"good_d.jpg", GOOD, 0, 0, NULL},
    {"huge.jpg", BAD_SKIP, 0, 0, NULL},
    {"wrong_size.jpg", GOOD, 100, 100, NULL},
    {"garbage.jpg", BAD_SKIP, 0, 0, NULL},
    {"good_e.jpg", GOOD,
     0, 0, "{\"id\": 1001, \"image_id\": %ID%, \"category_id\": 1, \"bbox\": [1, 1, 5, 5], \"area\": 1, \"iscrowd\": 0},"},
};
#define N_ENTRIES ((int)(sizeof(ENTRIES) / sizeof(ENTRIES[0])))
/* The first good image's annotation has id 1001 too: a duplicate annotation id. */

static int rm_entry(const char *p, const struct stat *s, int f, struct FTW *w) {
    (void)s, (void)f, (void)w;
    chmod(p, 0700);
    return remove(p);
}

static int write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = len ? fwrite(data, 1, len, f) : 0;
    return (fclose(f) == 0 && n == len) ? 0 : -1;
}

/* A valid JPEG of synthetic image `index`; *len its size. Caller frees with tjFree. */
static unsigned char *make_jpeg(int index, unsigned long *len) {
    SynthDatasetConfig c;
    synth_config_default(&c);
    c.width = IMG_W, c.height = IMG_H, c.seed = 5;
    uint8_t rgb[IMG_W * IMG_H * 3];
    SynthObject o[SYNTH_MAX_OBJECTS];
    int w, h;
    synth_render_image(&c, 0, index, &w, &h, rgb, NULL, o);
    tjhandle tj = tjInitCompress();
    unsigned char *jpeg = NULL;
    *len = 0;
    tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &jpeg, len, TJSAMP_420, 90, 0);
    tjDestroy(tj);
    return jpeg;
}

static int make_png(const char *path) {
    uint8_t rgb[IMG_W * IMG_H * 3];
    for (int i = 0; i < IMG_W * IMG_H * 3; i++) rgb[i] = (uint8_t)(i * 7);
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ihdr = {IMG_W, IMG_H, 8, SPNG_COLOR_TYPE_TRUECOLOR, 0, 0, 0};
    spng_set_ihdr(ctx, &ihdr);
    int rc = spng_encode_image(ctx, rgb, sizeof(rgb), SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    size_t size = 0;
    int e = 0;
    void *png = rc ? NULL : spng_get_png_buffer(ctx, &size, &e);
    rc = png ? write_bytes(path, png, size) : -1;
    free(png);
    spng_ctx_free(ctx);
    return rc;
}

/* Patches the SOF0 marker's height and width (the JPEG stays otherwise intact). */
static int patch_sof_size(unsigned char *jpeg, unsigned long len, int w, int h) {
    for (unsigned long i = 2; i + 9 < len; i++)
        if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0) {
            jpeg[i + 5] = (unsigned char)(h >> 8), jpeg[i + 6] = (unsigned char)h;
            jpeg[i + 7] = (unsigned char)(w >> 8), jpeg[i + 8] = (unsigned char)w;
            return 0;
        }
    return -1;
}

static int write_image(const char *dir, int k) {
    const char *name = ENTRIES[k].file;
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (!strcmp(name, "missing.jpg")) return 0;
    if (!strcmp(name, "empty.jpg")) return write_bytes(path, "", 0);
    if (!strcmp(name, "png_named.jpg")) return make_png(path);
    if (!strcmp(name, "garbage.jpg")) {
        unsigned char junk[3000];
        for (int i = 0; i < 3000; i++) junk[i] = (unsigned char)((i * 2654435761u) >> 13);
        return write_bytes(path, junk, sizeof(junk));
    }
    unsigned long len;
    unsigned char *jpeg = make_jpeg(k, &len);
    if (!jpeg) return -1;
    int rc = 0;
    if (!strcmp(name, "corrupt.jpg")) { /* keep SOI, overwrite the tables and frame header */
        for (unsigned long i = 2; i < 400 && i < len; i++) jpeg[i] = (unsigned char)(i * 37 + 11);
    } else if (!strcmp(name, "truncated.jpg")) {
        len = len * 2 / 5;
    } else if (!strcmp(name, "huge.jpg")) {
        rc = patch_sof_size(jpeg, len, 20000, 20000);
    }
    if (rc == 0) rc = write_bytes(path, jpeg, len);
    tjFree(jpeg);
    if (rc == 0 && !strcmp(name, "unreadable.jpg")) {
        chmod(path, 0);
        int fd = open(path, O_RDONLY);
        g_unreadable_works = fd < 0;
        if (fd >= 0) close(fd);
    }
    return rc;
}

/* Writes text with every %ID% replaced by id. */
static void put_with_id(FILE *f, const char *text, int id) {
    for (const char *p = text; *p;) {
        if (!strncmp(p, "%ID%", 4)) {
            fprintf(f, "%d", id);
            p += 4;
        } else {
            fputc(*p++, f);
        }
    }
}

static int make_corpus(const char *root) {
    char dir[400], path[500];
    snprintf(dir, sizeof(dir), "%s/annotations", root);
    mkdir(root, 0755);
    mkdir(dir, 0755);
    snprintf(dir, sizeof(dir), "%s/train", root);
    mkdir(dir, 0755);
    for (int k = 0; k < N_ENTRIES; k++)
        if (write_image(dir, k) != 0) return -1;
    snprintf(path, sizeof(path), "%s/annotations/instances_train.json", root);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"images\": [\n");
    for (int k = 0; k < N_ENTRIES; k++)
        fprintf(f, "  {\"id\": %d, \"file_name\": \"%s\", \"width\": %d, \"height\": %d}%s\n", k + 1,
                ENTRIES[k].file, ENTRIES[k].json_w ? ENTRIES[k].json_w : IMG_W,
                ENTRIES[k].json_h ? ENTRIES[k].json_h : IMG_H, k + 1 < N_ENTRIES ? "," : "");
    fprintf(f, "],\n\"annotations\": [\n");
    for (int k = 0; k < N_ENTRIES; k++) {
        /* every image gets one good box; the first one's id is 1001 (duplicated by good_e) */
        fprintf(f, "  {\"id\": %d, \"image_id\": %d, \"category_id\": %d, \"bbox\": [4, 4, 20, 16], "
                "\"area\": 320, \"iscrowd\": 0},\n", k == 0 ? 1001 : 2000 + k, k + 1, 1 + k % 3);
        if (ENTRIES[k].extra_anns) {
            fprintf(f, "  ");
            put_with_id(f, ENTRIES[k].extra_anns, k + 1);
            fprintf(f, "\n");
        }
    }
    /* a crowd box (dropped for training, not a problem) closes the list without a trailing comma */
    fprintf(f, "  {\"id\": 3000, \"image_id\": 1, \"category_id\": 2, \"bbox\": [30, 20, 10, 10], "
            "\"area\": 100, \"iscrowd\": 1}\n],\n");
    fprintf(f, "\"categories\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": 2, \"name\": \"b\"}, "
            "{\"id\": 3, \"name\": \"c\"}]}\n");
    return fclose(f);
}

/* A dataset whose JSON is malformed at line 3, column 34 (a missing comma). */
static const char *BAD_JSON =
    "{\"images\": [\n"
    "  {\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 64, \"height\": 48},\n"
    "  {\"id\": 2, \"file_name\": \"b.jpg\" \"width\": 64, \"height\": 48}\n"
    "], \"annotations\": [], \"categories\": [{\"id\": 1, \"name\": \"a\"}]}\n";

static const char *DUP_IDS_JSON =
    "{\"images\": [\n"
    "  {\"id\": 7, \"file_name\": \"a.jpg\", \"width\": 64, \"height\": 48},\n"
    "  {\"id\": 7, \"file_name\": \"b.jpg\", \"width\": 64, \"height\": 48}\n"
    "], \"annotations\": [], \"categories\": [{\"id\": 1, \"name\": \"a\"}]}\n";

static int make_json_dataset(const char *root, const char *json) {
    char p[500];
    mkdir(root, 0755);
    snprintf(p, sizeof(p), "%s/annotations", root);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/train", root);
    mkdir(p, 0755);
    unsigned long len;
    for (int i = 0; i < 2; i++) {
        unsigned char *jpeg = make_jpeg(i, &len);
        snprintf(p, sizeof(p), "%s/train/%s", root, i ? "b.jpg" : "a.jpg");
        write_bytes(p, jpeg, len);
        tjFree(jpeg);
    }
    snprintf(p, sizeof(p), "%s/annotations/instances_train.json", root);
    return write_bytes(p, json, strlen(json));
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

static int expected_skips(void) {
    int n = 0;
    for (int k = 0; k < N_ENTRIES; k++)
        if (ENTRIES[k].expect == BAD_SKIP && (strcmp(ENTRIES[k].file, "unreadable.jpg") || g_unreadable_works)) n++;
    return n;
}

static int is_skipped_entry(int k) {
    return ENTRIES[k].expect == BAD_SKIP && (strcmp(ENTRIES[k].file, "unreadable.jpg") || g_unreadable_works);
}

/* Runs a shell command with a hang guard (timeout 120 s); stdout and stderr go to files whose
 * contents are returned (caller frees). Returns the exit status (124 = hung). */
static int run(const char *cmd, char **out, char **err) { return run_capture(g_tmp, cmd, out, err); }

/* The line of text that names file, or NULL. */
static int line_with(const char *text, const char *file, const char *also) {
    const char *p = text;
    while ((p = strstr(p, file)) != NULL) {
        const char *start = p, *end = strchr(p, '\n');
        while (start > text && start[-1] != '\n') start--;
        if (!also) return 1;
        char line[2048];
        size_t n = (size_t)((end ? end : p + strlen(p)) - start);
        if (n >= sizeof(line)) n = sizeof(line) - 1;
        memcpy(line, start, n);
        line[n] = 0;
        if (strstr(line, also)) return 1;
        p += strlen(file);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Tests */

static void test_loader_direct(void) {
    char ann[600], images[600], err[2048];
    snprintf(ann, sizeof(ann), "%s/annotations/instances_train.json", g_corpus);
    snprintf(images, sizeof(images), "%s/train", g_corpus);
    Dataset ds;
    int rc = dataset_open(ann, images, g_cache, &ds, err, sizeof(err));
    CHECK("loader: the bad corpus opens (bad files are the loader's business)", rc == 0, "%s", err);
    if (rc) return;
    CHECK("loader: all images indexed", ds.n_images == N_ENTRIES, "%lld", (long long)ds.n_images);

    /* capture the warnings on stderr */
    char logpath[400];
    snprintf(logpath, sizeof(logpath), "%s/loader-stderr.txt", g_tmp);
    fflush(stderr);
    int saved = dup(2), fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);

    LoaderConfig lc;
    loader_config_default(&lc);
    transform_config_default(&lc.tf, 0);
    lc.tf.val_size = 32, lc.tf.max_size = 64;
    lc.batch = 3, lc.workers = 2, lc.shuffle = 0, lc.drop_last = 0, lc.seed = 1;
    Loader *l = loader_create(&ds, &lc, err, sizeof(err));
    int64_t skipped = 0, delivered = 0, dropped = 0;
    int bad_delivered = 0, seen[N_ENTRIES + 1] = {0}, epochs_ok = 1;
    for (int epoch = 0; l && epoch < 2; epoch++) {
        if (loader_start_epoch(l, epoch, 0) != 0) {
            epochs_ok = 0;
            break;
        }
        for (;;) {
            LoaderBatch *b;
            int got = loader_next(l, &b, 30.0, err, sizeof(err));
            if (got < 0) epochs_ok = 0;
            if (got <= 0) break;
            skipped += b->stats.skipped;
            dropped += b->stats.dropped_boxes;
            for (int i = 0; i < b->B; i++) {
                int64_t id = b->image_ids[i];
                delivered++;
                if (id >= 1 && id <= N_ENTRIES) {
                    seen[id] = 1;
                    if (is_skipped_entry((int)id - 1)) bad_delivered++;
                }
            }
            loader_release(l, b);
        }
    }
    if (l) loader_destroy(l);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK("loader: created over the bad corpus", l != NULL, "%s", err);
    CHECK("loader: two epochs complete without error or hang (30 s limit per batch)", epochs_ok, "%s", err);
    int want = expected_skips();
    CHECK("loader: every unloadable sample skipped and counted (2 epochs)", skipped == 2 * want,
          "skipped %lld, expected %d", (long long)skipped, 2 * want);
    CHECK("loader: batches stay full (bad samples replaced)", delivered == 2 * N_ENTRIES,
          "delivered %lld of %d", (long long)delivered, 2 * N_ENTRIES);
    CHECK("loader: no unloadable sample is ever delivered", bad_delivered == 0, "%d delivered", bad_delivered);
    int all_good_seen = 1;
    for (int k = 0; k < N_ENTRIES; k++)
        if (!is_skipped_entry(k) && !seen[k + 1]) all_good_seen = 0;
    CHECK("loader: every loadable image (PNG named .jpg, odd boxes, wrong JSON size) is delivered",
          all_good_seen, "one missing");
    CHECK("loader: invalid boxes (negative size, +-Inf, NaN) dropped and counted", dropped >= 2 * 3,
          "dropped_boxes %lld, expected >= 6", (long long)dropped);
    char *log = read_text(logpath);
    for (int k = 0; k < N_ENTRIES; k++) {
        if (!is_skipped_entry(k)) continue;
        char name[160];
        snprintf(name, sizeof(name), "loader: one warning line names %s", ENTRIES[k].file);
        CHECK(name, line_with(log, ENTRIES[k].file, "warning"), "stderr:\n%s", log);
    }
    if (!g_unreadable_works)
        test_skip("loader: unreadable file (chmod 000)",
                  "running as root: chmod 000 does not stop reads (as in CI), so there is no "
                  "unreadable file to test");

    /* strict: the first bad sample is fatal and named */
    lc.strict = 1;
    fflush(stderr);
    saved = dup(2), fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    l = loader_create(&ds, &lc, err, sizeof(err));
    int got = 1;
    err[0] = 0;
    if (l && loader_start_epoch(l, 0, 0) == 0)
        while (got == 1) {
            LoaderBatch *b;
            got = loader_next(l, &b, 30.0, err, sizeof(err));
            if (got == 1) loader_release(l, b);
        }
    if (l) loader_destroy(l);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK("loader --strict: the first bad sample (corrupt.jpg) is fatal and named", got == -1 &&
          strstr(err, "corrupt.jpg") != NULL, "got %d, err '%s'", got, err);
    free(log);
    dataset_close(&ds);
}

static void test_bench_cli(void) {
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data bench %s --transform val --val-size 32 --max-size 64 "
             "--split train --batch 3 --workers 2 --epochs 2 --cache %s --json", g_build, g_corpus, g_cache);
    int rc = run(cmd, &out, &err);
    CHECK("bench: runs over the bad corpus, exit 0, no hang", rc == 0, "rc %d\n%s%s", rc, out, err);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    int64_t skipped = j ? json_integer_value(json_object_get(j, "skipped")) : -1;
    int64_t images = j ? json_integer_value(json_object_get(j, "images")) : -1;
    CHECK("bench: --json counts the skipped samples", skipped == 2 * expected_skips() &&
          images == 2 * N_ENTRIES, "skipped %lld images %lld\n%s", (long long)skipped, (long long)images, out);
    int named = 1;
    for (int k = 0; k < N_ENTRIES; k++)
        if (is_skipped_entry(k) && !line_with(err, ENTRIES[k].file, "warning")) named = 0;
    CHECK("bench: a warning line names every bad file", named, "stderr:\n%s", err);
    json_decref(j);
    free(out);
    free(err);

    snprintf(cmd, sizeof(cmd), "%s/detr-data bench %s --transform val --split train --val-size 32 "
             "--batch 3 --workers 1 --strict --cache %s", g_build, g_corpus, g_cache);
    rc = run(cmd, &out, &err);
    CHECK("bench --strict: exit 1 naming the bad file", rc == 1 && strstr(err, "corrupt.jpg") != NULL,
          "rc %d\n%s", rc, err);
    free(out);
    free(err);
}

static void test_check_library(void) {
    char ann[600], images[600];
    snprintf(ann, sizeof(ann), "%s/annotations/instances_train.json", g_corpus);
    snprintf(images, sizeof(images), "%s/train", g_corpus);
    CheckReport rep;
    memset(&rep, 0, sizeof(rep));
    char outpath[400];
    snprintf(outpath, sizeof(outpath), "%s/check.txt", g_tmp);
    FILE *f = fopen(outpath, "w");
    int rc = dataset_check(ann, images, NULL, &rep, f);
    fclose(f);
    CHECK("dataset_check: problems found (returns 1)", rc == 1 && rep.total_problems > 0, "rc %d, %lld problems",
          rc, (long long)rep.total_problems);
    struct { CheckKind kind; int64_t want; } expect[] = {
        {CHECK_MISSING_IMAGE, 1},       /* missing.jpg */
        {CHECK_UNREADABLE_IMAGE, 1},    /* empty.jpg (+ unreadable.jpg when not root) */
        {CHECK_UNDECODABLE_IMAGE, 3},   /* corrupt, truncated, garbage */
        {CHECK_TOO_LARGE_IMAGE, 1},     /* huge.jpg */
        {CHECK_SIZE_MISMATCH, 1},       /* wrong_size.jpg */
        {CHECK_BAD_BOX, 3},             /* negative w, +Inf, NaN */
        {CHECK_BOX_OUT_OF_RANGE, 2},    /* fully outside, huge */
        {CHECK_UNKNOWN_CATEGORY, 1},    /* 999 */
        {CHECK_DUP_ANN_ID, 1},          /* 1001 twice */
    };
    if (g_unreadable_works) expect[1].want = 2;
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        char name[160];
        snprintf(name, sizeof(name), "dataset_check: counts %s (>= %lld)", check_kind_name(expect[i].kind),
                 (long long)expect[i].want);
        CHECK(name, rep.counts[expect[i].kind] >= expect[i].want, "counted %lld",
              (long long)rep.counts[expect[i].kind]);
    }
    CHECK("dataset_check: no duplicate image ids, no JSON error in this corpus",
          rep.counts[CHECK_DUP_IMAGE_ID] == 0 && rep.counts[CHECK_JSON] == 0, "dup %lld json %lld",
          (long long)rep.counts[CHECK_DUP_IMAGE_ID], (long long)rep.counts[CHECK_JSON]);
    check_report_free(&rep);
}

static void test_check_cli(void) {
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data check %s", g_build, g_corpus);
    int rc = run(cmd, &out, &err);
    CHECK("detr-data check: exit 1 on the bad corpus", rc == 1, "rc %d\n%s%s", rc, out, err);
    const char *named[] = {"corrupt.jpg", "truncated.jpg", "empty.jpg", "missing.jpg", "huge.jpg",
                           "garbage.jpg", "wrong_size.jpg", "1001", "999", "-5, 20", "inf"};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        char name[160];
        snprintf(name, sizeof(name), "detr-data check: a problem line names %s", named[i]);
        CHECK(name, strstr(out, named[i]) != NULL, "output:\n%s", out);
    }
    if (g_unreadable_works)
        CHECK("detr-data check: names unreadable.jpg", strstr(out, "unreadable.jpg") != NULL, "output:\n%s", out);
    free(out);
    free(err);
}

static void test_unopenable(void) {
    char dir[400], cmd[2048], *out, *err, e[2048];
    snprintf(dir, sizeof(dir), "%s/badjson", g_tmp);
    make_json_dataset(dir, BAD_JSON);
    char ann[500], images[500];
    snprintf(ann, sizeof(ann), "%s/annotations/instances_train.json", dir);
    snprintf(images, sizeof(images), "%s/train", dir);
    Dataset ds;
    e[0] = 0;
    int rc = dataset_open(ann, images, g_cache, &ds, e, sizeof(e));
    CHECK("malformed JSON: dataset_open fails with file:line:column", rc != 0 && strstr(e, ":3:") != NULL &&
          strstr(e, "instances_train.json") != NULL, "rc %d, '%s'", rc, e);
    if (rc == 0) dataset_close(&ds);
    snprintf(cmd, sizeof(cmd), "%s/detr-data bench %s --transform train --cache %s", g_build, dir, g_cache);
    rc = run(cmd, &out, &err);
    CHECK("malformed JSON: bench exits 1 with line and column", rc == 1 && strstr(err, ":3:") != NULL,
          "rc %d: %s", rc, err);
    free(out);
    free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-data check %s --split train", g_build, dir);
    rc = run(cmd, &out, &err);
    CHECK("malformed JSON: check exits 1 with line and column", rc == 1 && (strstr(out, ":3:") || strstr(err, ":3:")),
          "rc %d: %s%s", rc, out, err);
    free(out);
    free(err);

    snprintf(dir, sizeof(dir), "%s/dupids", g_tmp);
    make_json_dataset(dir, DUP_IDS_JSON);
    snprintf(ann, sizeof(ann), "%s/annotations/instances_train.json", dir);
    snprintf(images, sizeof(images), "%s/train", dir);
    e[0] = 0;
    rc = dataset_open(ann, images, g_cache, &ds, e, sizeof(e));
    CHECK("duplicate image ids: dataset_open fails naming the id", rc != 0 && strstr(e, "7") != NULL &&
          strstr(e, "uplicate") != NULL, "rc %d, '%s'", rc, e);
    if (rc == 0) dataset_close(&ds);
    snprintf(cmd, sizeof(cmd), "%s/detr-data bench %s --cache %s", g_build, dir, g_cache);
    rc = run(cmd, &out, &err);
    CHECK("duplicate image ids: bench exits 1 with the reason", rc == 1 && strstr(err, "uplicate") != NULL,
          "rc %d: %s", rc, err);
    free(out);
    free(err);
    snprintf(cmd, sizeof(cmd), "%s/detr-data check %s --split train", g_build, dir);
    rc = run(cmd, &out, &err);
    CHECK("duplicate image ids: check exits 1 and reports them", rc == 1 && strstr(out, "7") != NULL &&
          strstr(out, check_kind_name(CHECK_DUP_IMAGE_ID)) != NULL, "rc %d: %s%s", rc, out, err);
    free(out);
    free(err);
}

int main(void) {
    g_build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_data_bad_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_corpus, sizeof(g_corpus), "%s/corpus", g_tmp);
    snprintf(g_cache, sizeof(g_cache), "%s/cache", g_tmp);
    setenv("XDG_CACHE_HOME", g_cache, 1);
    int rc = make_corpus(g_corpus);
    CHECK("corpus: generated", rc == 0, "cannot write the corpus under %s", g_tmp);
    if (rc == 0) {
        test_loader_direct();
        test_check_library();
        char bin[400];
        snprintf(bin, sizeof(bin), "%s/detr-data", g_build);
        int built = access(bin, X_OK) == 0;
        CHECK("detr-data is built", built, "%s missing (set DETR_BUILD to the build folder)", bin);
        if (built) {
            test_bench_cli();
            test_check_cli();
            test_unopenable();
        }
    }
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
