/* test_loader_robust.c - the loader on bad input and misuse: a corpus of broken files (zero-byte,
 * truncated, missing, garbage, a folder, a FIFO, an image above the pixel limit from its header,
 * a PNG named .jpg, invalid boxes in the JSON) skipped with one warning each and counted, the
 * replacement rule, strict mode, an all-bad dataset, timeouts, a consumer holding every slot,
 * invalid configurations, two loaders in one process, cancelling queued sample and collate
 * items (destroy, restart), and shutdown at random moments (the test
 * is meant to run under AddressSanitizer and ThreadSanitizer too: make asan, make tsan). */
#include <jansson.h>
#include <pthread.h>
#include <uv.h>
#include <spng.h>
#include "decode.h"
#include "loader_test_util.h"
#include "mem.h"
#include "rng.h"
#include "timer.h"

#define N_BAD_DS 30
static const int kBadIds[] = {4, 9, 15, 17, 21, 23, 26}; /* file ids broken in the corpus */
#define N_BAD_IDS 7
#define PNG_ID 12 /* a valid PNG named .jpg */

/* ---- the corpus ---- */

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A PNG that claims 20000 x 20000 pixels (signature + IHDR, no data): refused from the header. */
static int write_huge_png_header(const char *path) {
    uint8_t b[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put_be32(b + 8, 13);
    memcpy(b + 12, "IHDR", 4);
    put_be32(b + 16, 20000);
    put_be32(b + 20, 20000);
    b[24] = 8; /* bit depth */
    b[25] = 2; /* truecolour */
    put_be32(b + 29, crc32_of(b + 12, 17));
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(b, 1, sizeof b, f) == sizeof b;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int read_file(const char *path, uint8_t **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc((size_t)n);
    *len = *buf ? fread(*buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return *buf && *len == (size_t)n ? 0 : -1;
}

/* Re-encodes the JPEG at path as a PNG under the same name. */
static int jpeg_to_png_in_place(const char *path) {
    uint8_t *jpg = NULL;
    size_t len = 0;
    if (read_file(path, &jpg, &len) != 0) return -1;
    Decoder *d = decoder_create();
    Image im = {0};
    char err[256];
    int rc = decode_image(d, jpg, len, 0, 0, 0, &im, err, sizeof err);
    free(jpg);
    decoder_destroy(d);
    if (rc != 0) return -1;
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ihdr = {.width = (uint32_t)im.w,
                             .height = (uint32_t)im.h,
                             .bit_depth = 8,
                             .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
    spng_set_ihdr(ctx, &ihdr);
    rc =
        spng_encode_image(ctx, im.rgb, (size_t)im.w * im.h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    size_t png_len = 0;
    int e = 0;
    void *png = rc == 0 ? spng_get_png_buffer(ctx, &png_len, &e) : NULL;
    spng_ctx_free(ctx);
    image_free(&im);
    FILE *f = png ? fopen(path, "wb") : NULL;
    int ok = f && fwrite(png, 1, png_len, f) == png_len;
    if (f) ok &= fclose(f) == 0;
    free(png);
    return ok ? 0 : -1;
}

/* Sets the first annotation of image `image_id` to bbox (x, y, w, h) in the instances JSON. */
static int set_first_bbox(json_t *root, int image_id, double x, double y, double w, double h) {
    json_t *anns = json_object_get(root, "annotations"), *a;
    size_t i;
    json_array_foreach(anns, i, a) {
        if (json_integer_value(json_object_get(a, "image_id")) != image_id) continue;
        json_t *bb = json_pack("[ffff]", x, y, w, h);
        return json_object_set_new(a, "bbox", bb);
    }
    return -1;
}

static int make_corpus(const char *tmp, char *dst, size_t len) {
    if (lt_write_dataset(tmp, "corpus", N_BAD_DS, 96, 72, 11, dst, len) != 0) return -1;
    char p[PATH_MAX];
    struct stat st;
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 4);
    if (truncate(p, 0) != 0) return -1; /* zero bytes */
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 9);
    if (stat(p, &st) != 0 || truncate(p, st.st_size * 2 / 3) != 0) return -1; /* truncated */
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 15);
    if (unlink(p) != 0) return -1; /* missing */
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 17);
    if (write_huge_png_header(p) != 0) return -1; /* 400 MP header */
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 21);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    for (int i = 0; i < 3000; i++) fputc((i * 7919) & 255, f); /* garbage */
    fclose(f);
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 23);
    if (unlink(p) != 0 || mkfifo(p, 0644) != 0) return -1; /* a FIFO: must not block a worker */
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 26);
    if (unlink(p) != 0 || mkdir(p, 0755) != 0) return -1; /* a folder */
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, PNG_ID);
    if (jpeg_to_png_in_place(p) != 0) return -1; /* PNG named .jpg */

    lt_pathf(p, sizeof p, "%s/annotations/instances_train.json", dst);
    json_error_t je;
    json_t *root = json_load_file(p, 0, &je);
    int ok = root && set_first_bbox(root, 6, 10, 10, -5, 20) == 0 && /* negative width */
        set_first_bbox(root, 7, 1e39, 0, 10, 10) == 0 &&             /* inf as float */
        json_dump_file(root, p, JSON_COMPACT) == 0;
    json_decref(root);
    return ok ? 0 : -1;
}

/* ---- warnings: the loader's warning hook writes them into a file ---- */

typedef struct {
    FILE *f;
    char path[PATH_MAX];
} Capture;

static void write_warning(void *ctx, const char *line) {
    fprintf((FILE *)ctx, "%s\n", line); /* stdio locks the FILE: safe from the loop threads */
    fflush((FILE *)ctx);
}

static void capture_begin(Capture *c, const char *tmp, const char *name) {
    lt_pathf(c->path, sizeof c->path, "%s/%s.warnings", tmp, name);
    c->f = fopen(c->path, "w");
}

static void capture_config(const Capture *c, LoaderConfig *cfg) {
    if (!c->f) return;
    cfg->warn = write_warning;
    cfg->warn_ctx = c->f;
}

static void capture_end(Capture *c) {
    if (c->f) fclose(c->f);
    c->f = NULL;
}

/* Counts lines with `needle`; *with_reason counts those that also name a bad file and a reason. */
static int count_warnings(const char *path, const char *needle, int *with_reason) {
    FILE *f = fopen(path, "r");
    char line[2048];
    int n = 0;
    *with_reason = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strstr(line, needle)) continue;
        n++;
        for (int k = 0; k < N_BAD_IDS; k++) {
            char name[64];
            snprintf(name, sizeof name, "/train/%012d.jpg: ", kBadIds[k]);
            const char *at = strstr(line, name);
            if (at && strlen(at + strlen(name)) > 2) (*with_reason)++;
        }
    }
    if (f) fclose(f);
    return n;
}

static int is_bad_id(int64_t id) {
    for (int k = 0; k < N_BAD_IDS; k++)
        if (id == kBadIds[k]) return 1;
    return 0;
}

/* ---- tests ---- */

static void test_bad_corpus(const Dataset *ds, const char *tmp) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    cfg.shuffle = 0;
    Capture cap;
    capture_begin(&cap, tmp, "corpus");
    capture_config(&cap, &cfg);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    LtEpoch e[2];
    int ok = l != NULL;
    for (int epoch = 0; ok && epoch < 2; epoch++)
        ok = loader_start_epoch(l, epoch, 0) == 0 &&
            lt_consume(l, 0, 1 << 30, &e[epoch], err, sizeof err) == 10;
    loader_destroy(l);
    capture_end(&cap);
    CHECK("bad input: corpus loads without a crash, batches full",
          ok && e[0].n_ids == N_BAD_DS && e[1].n_ids == N_BAD_DS, "%s", err);
    if (!ok) return;
    CHECK("bad input: 7 bad files skipped and counted per epoch",
          e[0].skipped == 7 && e[1].skipped == 7, "skipped %d, %d", e[0].skipped, e[1].skipped);
    int with_reason = 0,
        warnings = count_warnings(cap.path, "warning: loader: skipping sample: ", &with_reason);
    CHECK("bad input: one warning line per skip, with path and reason",
          warnings == 14 && with_reason == 14, "%d lines, %d with a bad path and a reason (see %s)",
          warnings, with_reason, cap.path);
    int none_bad = 1, png_seen = 0;
    for (int i = 0; i < e[0].n_ids; i++) {
        none_bad &= !is_bad_id(e[0].ids[i]);
        png_seen |= e[0].ids[i] == PNG_ID;
    }
    CHECK("bad input: no bad image in any batch", none_bad, "a bad id was delivered");
    CHECK("bad input: a PNG named .jpg loads", png_seen, "id %d missing", PNG_ID);
    /* Shard position p (id p + 1) is replaced by position p + 1: id 4 -> 5, 9 -> 10, ... */
    int rule = 1;
    for (int k = 0; k < N_BAD_IDS; k++) {
        int p = kBadIds[k] - 1;
        rule &= e[0].ids[p] == kBadIds[k] + 1 && e[0].ids[p + 1] == kBadIds[k] + 1;
    }
    CHECK("bad input: replaced by the next sample of the shard order", rule, "replacement differs");
    CHECK("bad input: invalid boxes (negative width, inf) dropped and counted",
          e[0].dropped_boxes == 2 && e[1].dropped_boxes == 2, "dropped %d, %d", e[0].dropped_boxes,
          e[1].dropped_boxes);
    char huge[64];
    snprintf(huge, sizeof huge, "%012d.jpg", 17);
    int dummy, huge_lines = count_warnings(cap.path, huge, &dummy);
    FILE *f = fopen(cap.path, "r");
    char line[2048];
    int pixel_reason = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, huge) && (strstr(line, "pixel") || strstr(line, "large"))) pixel_reason++;
    if (f) fclose(f);
    CHECK("bad input: 20000x20000 header refused as too large",
          huge_lines == 2 && pixel_reason == 2, "%d lines, %d saying pixels/large", huge_lines,
          pixel_reason);
}

static void test_strict(const Dataset *ds, const char *tmp) {
    char err[512] = "";
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    cfg.shuffle = 0;
    cfg.strict = 1;
    Capture cap;
    capture_begin(&cap, tmp, "strict");
    capture_config(&cap, &cfg);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    LtEpoch e;
    int n =
        l && loader_start_epoch(l, 0, 0) == 0 ? lt_consume(l, 0, 1 << 30, &e, err, sizeof err) : -2;
    int again = 0;
    LoaderBatch *b;
    char err2[512] = "";
    if (l) again = loader_next(l, &b, 5, err2, sizeof err2);
    loader_destroy(l);
    capture_end(&cap);
    CHECK("strict: batches before the bad one delivered, then -1", n == -1 && e.n == 1,
          "n=%d batches=%d", n, e.n);
    CHECK("strict: the error names the file and the reason",
          strstr(err, "000000000004.jpg") && strstr(err, "empty"), "err: %s", err);
    CHECK("strict: the error stays", again == -1 && !strcmp(err, err2), "%d %s", again, err2);
}

static void test_all_bad(const char *tmp) {
    char dir[PATH_MAX], cache[PATH_MAX], err[512] = "";
    lt_pathf(cache, sizeof cache, "%s/cache", tmp);
    int ok = lt_write_dataset(tmp, "allbad", 8, 64, 48, 3, dir, sizeof dir) == 0;
    for (int i = 1; ok && i <= 8; i++) {
        char p[PATH_MAX];
        lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dir, i);
        ok = unlink(p) == 0;
    }
    Dataset ds;
    ok = ok && lt_open_train(dir, cache, &ds) == 0;
    if (!ok) {
        CHECK("all bad: setup", 0, "failed");
        return;
    }
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    Capture cap;
    capture_begin(&cap, tmp, "allbad");
    capture_config(&cap, &cfg);
    double t0 = timer_now();
    Loader *l = loader_create(&ds, &cfg, err, sizeof err);
    LtEpoch e;
    int n =
        l && loader_start_epoch(l, 0, 0) == 0 ? lt_consume(l, 0, 1 << 30, &e, err, sizeof err) : -2;
    loader_destroy(l);
    capture_end(&cap);
    CHECK("all bad: an error, no hang",
          n == -1 && strstr(err, "consecutive samples failed") && timer_now() - t0 < 20,
          "n=%d err=%s", n, err);
    dataset_close(&ds);
}

static void test_limits(const Dataset *ds, const char *tmp) {
    char err[512] = "";
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    cfg.max_pixels = 4000;
    Capture cap;
    capture_begin(&cap, tmp, "maxpixels");
    capture_config(&cap, &cfg);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    int ok = l && loader_start_epoch(l, 0, 0) == 0;
    int skipped = 0, small = 1, n = 0;
    LoaderBatch *b;
    while (ok && loader_next(l, &b, 30, err, sizeof err) == 1) {
        skipped += b->stats.skipped;
        for (int i = 0; i < b->B; i++) small &= (int64_t)b->orig_w[i] * b->orig_h[i] <= 4000;
        n++;
        loader_release(l, b);
    }
    loader_destroy(l);
    capture_end(&cap);
    CHECK("limits: max_pixels skips larger images", n == 14 && skipped > 0 && small,
          "n=%d skipped=%d %s", n, skipped, err);

    lt_config(&cfg, 2);
    cfg.max_boxes = 1;
    l = loader_create(ds, &cfg, err, sizeof err);
    ok = l && loader_start_epoch(l, 0, 0) == 0;
    int dropped = 0, at_most_one = 1;
    n = 0;
    while (ok && loader_next(l, &b, 30, err, sizeof err) == 1) {
        dropped += b->stats.dropped_boxes;
        for (int i = 0; i < b->B; i++) at_most_one &= b->n_boxes[i] <= 1;
        n++;
        loader_release(l, b);
    }
    loader_destroy(l);
    int64_t expect = 0; /* boxes beyond the first of every image (synth boxes are all valid) */
    for (int64_t i = 0; i < ds->n_images; i++) expect += ds->images[i].n_ann - 1;
    CHECK("limits: max_boxes keeps 1 box and counts the rest",
          n == 14 && at_most_one && dropped == expect, "n=%d dropped %d expected %lld", n, dropped,
          (long long)expect);
}

/* Stalls the libuv pool: one blocking work item per pool thread (the pool is one global FIFO
 * shared with the loader), so the loader's work waits until pool_stall_end. */
typedef struct {
    uv_loop_t loop;
    uv_work_t req[64];
    int n, running, release;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t watchdog;
    int has_watchdog, watchdog_s;
} PoolStall;

static void stall_work(uv_work_t *req) {
    PoolStall *p = req->data;
    pthread_mutex_lock(&p->mu);
    p->running++;
    pthread_cond_broadcast(&p->cv);
    while (!p->release) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void stall_done(uv_work_t *req, int status) {
    (void)req;
    (void)status;
}

static int pool_stall_begin(PoolStall *p, int threads) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (uv_loop_init(&p->loop) != 0) return -1;
    p->n = threads < 64 ? threads : 64;
    for (int i = 0; i < p->n; i++) {
        p->req[i].data = p;
        uv_queue_work(&p->loop, &p->req[i], stall_work, stall_done);
    }
    pthread_mutex_lock(&p->mu);
    while (p->running < p->n) pthread_cond_wait(&p->cv, &p->mu); /* every thread is held */
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* Ends the stall after watchdog_s seconds at the latest, so a loader that failed to cancel its
 * queued work makes loader_destroy slow (a failed check) rather than hang the test. */
static void *stall_watchdog(void *arg) {
    PoolStall *p = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += p->watchdog_s;
    pthread_mutex_lock(&p->mu);
    while (!p->release && pthread_cond_timedwait(&p->cv, &p->mu, &until) != ETIMEDOUT) {
    }
    p->release = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void pool_stall_watchdog(PoolStall *p, int seconds) {
    p->watchdog_s = seconds;
    p->has_watchdog = pthread_create(&p->watchdog, NULL, stall_watchdog, p) == 0;
}

static void pool_stall_end(PoolStall *p) {
    pthread_mutex_lock(&p->mu);
    p->release = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->has_watchdog) pthread_join(p->watchdog, NULL);
    uv_run(&p->loop, UV_RUN_DEFAULT); /* the after-work callbacks */
    uv_loop_close(&p->loop);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

static void test_misuse(const Dataset *ds) {
    char err[512] = "";
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    LoaderBatch *b = NULL, *b2 = NULL, *b3 = NULL;
    int rc = l ? loader_next(l, &b, 1, err, sizeof err) : 9;
    CHECK("misuse: loader_next before loader_start_epoch",
          rc == -1 && strstr(err, "loader_start_epoch"), "rc %d %s", rc, err);
    fprintf(stderr, "(the error below is expected)\n");
    CHECK("misuse: negative resume position refused", l && loader_start_epoch(l, 0, -1) == -1,
          "accepted");
    PoolStall stall;
    int stalled = pool_stall_begin(&stall, loader_pool_size()) == 0;
    double t0 = timer_now();
    rc = l && stalled && loader_start_epoch(l, 0, 0) == 0 ? loader_next(l, &b, 0.3, err, sizeof err)
                                                           : 9;
    double waited = timer_now() - t0;
    CHECK("timeout: a stalled loader returns -1 after the timeout and says so",
          rc == -1 && strstr(err, "timed out") && waited >= 0.29 && waited < 10,
          "rc %d after %.3f s: %s", rc, waited, err);
    if (stalled) pool_stall_end(&stall);
    rc = l ? loader_next(l, &b, 30, err, sizeof err) : 9;
    CHECK("timeout: the loader carries on after a timeout", rc == 1 && b->index == 0, "rc %d %s",
          rc, err);
    int rc2 = l ? loader_next(l, &b2, 30, err, sizeof err) : 9;
    int rc3 = l ? loader_next(l, &b3, 30, err, sizeof err) : 9;
    CHECK("misuse: holding every slot is reported, not a hang",
          rc2 == 1 && rc3 == -1 && strstr(err, "held"), "rc %d %d %s", rc2, rc3, err);
    if (rc == 1) loader_release(l, b);
    rc3 = l ? loader_next(l, &b3, 30, err, sizeof err) : 9;
    CHECK("misuse: after a release the next batch comes", rc3 == 1 && b3->index == 2, "rc %d %s",
          rc3, err);
    loader_destroy(l); /* still holding two batches */

    struct {
        const char *what, *needle;
        LoaderConfig c;
    } bad[6];
    for (int i = 0; i < 6; i++) lt_config(&bad[i].c, 2);
    bad[0].what = "batch 0";
    bad[0].needle = "--batch";
    bad[0].c.batch = 0;
    bad[1].what = "workers 0";
    bad[1].needle = "--workers";
    bad[1].c.workers = 0;
    bad[2].what = "prefetch 0";
    bad[2].needle = "--prefetch";
    bad[2].c.prefetch = 0;
    bad[3].what = "rank 3 of 3";
    bad[3].needle = "--rank";
    bad[3].c.rank = 3;
    bad[3].c.world = 3;
    bad[4].what = "world 41 > images";
    bad[4].needle = "--world";
    bad[4].c.world = 41;
    bad[5].what = "batch 20 with drop_last, world 3";
    bad[5].needle = "--batch";
    bad[5].c.batch = 20;
    bad[5].c.world = 3;
    bad[5].c.drop_last = 1;
    int all = 1;
    char msg[600] = "";
    for (int i = 0; i < 6; i++) {
        err[0] = 0;
        Loader *x = loader_create(ds, &bad[i].c, err, sizeof err);
        if (x || !strstr(err, bad[i].needle)) {
            all = 0;
            snprintf(msg, sizeof msg, "%s: %s", bad[i].what, x ? "accepted" : err);
        }
        loader_destroy(x);
    }
    CHECK("misuse: invalid configurations refused with the option to fix", all, "%s", msg);
}

static void test_two_loaders(const Dataset *ds, const char *tmp) {
    char err[512];
    LoaderConfig c1, c2;
    lt_config(&c1, 2);
    lt_config(&c2, 3); /* another pool size: warned about and ignored */
    c2.seed = 99;
    c2.batch = 2;
    Capture cap;
    capture_begin(&cap, tmp, "two");
    capture_config(&cap, &c2);
    LtEpoch s1, s2;
    int n1 = lt_run_epoch(ds, &c1, 0, 0, &s1, err, sizeof err);
    int n2 = lt_run_epoch(ds, &c2, 0, 0, &s2, err, sizeof err);
    Loader *a = loader_create(ds, &c1, err, sizeof err),
           *b = loader_create(ds, &c2, err, sizeof err);
    capture_end(&cap);
    int ok = a && b && loader_start_epoch(a, 0, 0) == 0 && loader_start_epoch(b, 0, 0) == 0;
    int same = ok, k = 0;
    LoaderBatch *x, *y;
    for (; same && k < 14; k++) { /* interleaved consumption */
        same = loader_next(a, &x, 30, err, sizeof err) == 1 &&
            loader_next(b, &y, 30, err, sizeof err) == 1 && lt_batch_checksum(x) == s1.sums[k] &&
            lt_batch_checksum(y) == s2.sums[k];
        if (same) {
            loader_release(a, x);
            loader_release(b, y);
        }
    }
    loader_destroy(a);
    loader_destroy(b);
    int dummy, warned = count_warnings(cap.path, "ignored", &dummy);
    CHECK("two loaders at once give their own batches", n1 == 14 && n2 >= 14 && same && k == 14,
          "k=%d %s", k, err);
    CHECK("a second pool size is warned about", warned >= 1 && loader_pool_size() == 2,
          "%d warnings, pool %d", warned, loader_pool_size());
}

/* With every pool thread held, the loader's work stays queued: destroy must cancel it and return
 * at once, and a restart must cancel the old epoch's work and still give the right batches. */
static void test_cancel_queued(const Dataset *ds) {
    char err[512] = "";
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    LtEpoch ref, got;
    int n_ref = lt_run_epoch(ds, &cfg, 6, 2, &ref, err, sizeof err);
    PoolStall stall;
    int ok = pool_stall_begin(&stall, loader_pool_size()) == 0;
    double t0 = timer_now();
    Loader *l = ok ? loader_create(ds, &cfg, err, sizeof err) : NULL;
    ok = l && loader_start_epoch(l, 5, 0) == 0;
    usleep(20000);
    loader_destroy(l);
    double destroy_s = timer_now() - t0;
    CHECK("shutdown: destroy cancels queued work (pool busy elsewhere)", ok && destroy_s < 5,
          "%.2f s", destroy_s);

    l = loader_create(ds, &cfg, err, sizeof err);
    ok = l && loader_start_epoch(l, 5, 0) == 0 && loader_start_epoch(l, 6, 9) == 0 &&
        loader_start_epoch(l, 6, 2) == 0;
    usleep(20000);
    pool_stall_end(&stall);
    int n = ok ? lt_consume(l, 2, 1 << 30, &got, err, sizeof err) : -1;
    loader_destroy(l);
    CHECK("restart: queued work of replaced epochs cancelled, batches right",
          n_ref == 12 && n == n_ref && got.in_order && !memcmp(got.sums, ref.sums, 12 * 8),
          "n %d/%d %s", n, n_ref, err);
}

/* Leaves batch 1's collate items queued behind a stalled pool: with prefetch 1 and batch 0 held,
 * batch 1 completes but has no slot; the stall then holds every pool thread (which it gets only
 * once batch 1's sample items are done), and releasing batch 0 makes the loop queue batch 1's
 * collate items behind it. Returns the loader (NULL on failure); *stalled says whether the
 * caller must call pool_stall_end. */
static Loader *collates_behind_stall(const Dataset *ds, const LoaderConfig *cfg, PoolStall *stall,
                                     int *stalled, char *err, size_t errlen) {
    *stalled = 0;
    Loader *l = loader_create(ds, cfg, err, errlen);
    LoaderBatch *b0 = NULL;
    if (!l || loader_start_epoch(l, 0, 0) != 0 || loader_next(l, &b0, 30, err, errlen) != 1) {
        loader_destroy(l);
        return NULL;
    }
    *stalled = pool_stall_begin(stall, loader_pool_size()) == 0;
    if (*stalled) pool_stall_watchdog(stall, 10);
    usleep(20000); /* batch 1's sample callbacks run on the loop thread */
    loader_release(l, b0);
    usleep(20000); /* the loop lays out the slot and queues batch 1's collate items */
    return l;
}

static void test_cancel_collates(const Dataset *ds) {
    char err[512] = "";
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    cfg.prefetch = 1;
    size_t base = mem_stats().current[MEM_INPUTS];
    LtEpoch ref0, ref1, got;
    int n0 = lt_run_epoch(ds, &cfg, 0, 0, &ref0, err, sizeof err);
    int n1 = lt_run_epoch(ds, &cfg, 1, 0, &ref1, err, sizeof err);
    PoolStall stall;
    int stalled;

    Loader *l = collates_behind_stall(ds, &cfg, &stall, &stalled, err, sizeof err);
    int depth = l ? loader_queue_depth(l) : -1;
    double t0 = timer_now();
    loader_destroy(l);
    double destroy_s = timer_now() - t0;
    if (stalled) pool_stall_end(&stall);
    CHECK("shutdown: destroy cancels collate items queued behind a busy pool",
          l && stalled && depth == 0 && destroy_s < 5 && mem_stats().current[MEM_INPUTS] == base,
          "loader %d, stalled %d, ready %d, destroy %.2f s, %zu bytes left", l != NULL, stalled,
          depth, destroy_s, mem_stats().current[MEM_INPUTS] - base);

    l = collates_behind_stall(ds, &cfg, &stall, &stalled, err, sizeof err);
    int ok = l && loader_start_epoch(l, 1, 0) == 0;
    if (stalled) pool_stall_end(&stall);
    int n = ok ? lt_consume(l, 0, 1 << 30, &got, err, sizeof err) : -1;
    loader_destroy(l);
    CHECK("restart: collate items of the old epoch cancelled, the new epoch's batches right",
          stalled && n1 == 14 && n == n1 && got.in_order && !memcmp(got.sums, ref1.sums, 14 * 8),
          "n %d/%d %s", n, n1, err);

    l = collates_behind_stall(ds, &cfg, &stall, &stalled, err, sizeof err);
    if (stalled) pool_stall_end(&stall);
    n = l ? lt_consume(l, 1, 1 << 30, &got, err, sizeof err) : -1;
    loader_destroy(l);
    CHECK("delayed collate items finish the batch right once the pool is free",
          stalled && n0 == 14 && n == 13 && got.in_order &&
              !memcmp(got.sums, ref0.sums + 1, 13 * 8),
          "n %d/%d %s", n, n0 - 1, err);
}

/* Create / use / destroy at random moments: work in flight, a held batch, restarts. */
static void test_shutdown_random(const Dataset *good, const Dataset *corpus, const char *tmp) {
    const uint64_t seed = 20240601;
    Rng r = {seed, 0};
    char err[512];
    size_t base = mem_stats().current[MEM_INPUTS];
    int iterations = 150, created = 0, batches = 0, leak = 0;
    Capture cap;
    capture_begin(&cap, tmp, "shutdown");
    double t0 = timer_now();
    for (int it = 0; it < iterations; it++) {
        LoaderConfig cfg;
        lt_config(&cfg, 2);
        capture_config(&cap, &cfg);
        cfg.prefetch = 1 + (int)(rng_next_uniform(&r) * 3);
        cfg.batch = 1 + (int)(rng_next_uniform(&r) * 4);
        cfg.group_by_aspect = rng_next_uniform(&r) < 0.3f;
        cfg.uint8_output = rng_next_uniform(&r) < 0.3f;
        const Dataset *ds = rng_next_uniform(&r) < 0.5f ? good : corpus;
        Loader *l = loader_create(ds, &cfg, err, sizeof err);
        if (!l) continue;
        created++;
        int action = (int)(rng_next_uniform(&r) * 5);
        LoaderBatch *held = NULL, *b;
        if (action >= 1) loader_start_epoch(l, it, (int64_t)(rng_next_uniform(&r) * 3));
        if (action >= 2) {
            int k = (int)(rng_next_uniform(&r) * 4);
            for (int i = 0; i < k && loader_next(l, &b, 30, err, sizeof err) == 1; i++, batches++) {
                if (held) loader_release(l, held);
                held = b;
            }
        }
        if (action >= 3) loader_start_epoch(l, it + 1, 0); /* restart with work in flight */
        if (action == 4 && loader_next(l, &b, 30, err, sizeof err) == 1) {
            batches++;
            loader_release(l, b);
        }
        int us = (int)(rng_next_uniform(&r) * 4000); /* half the time destroy at once */
        if (us > 2000) usleep((useconds_t)(us - 2000));
        loader_destroy(l); /* maybe with `held` still held */
        leak |= mem_stats().current[MEM_INPUTS] != base;
    }
    capture_end(&cap);
    CHECK("shutdown: destroy at random moments (in flight, holding, restarting)",
          created == iterations && !leak, "created %d of %d, leak %d", created, iterations, leak);
    printf("     %d loaders, %d batches, %.2f s (seed %llu)\n", created, batches, timer_now() - t0,
           (unsigned long long)seed);
}

int main(void) {
    char tmp[PATH_MAX], good_dir[PATH_MAX], corpus_dir[PATH_MAX], cache[PATH_MAX];
    if (lt_make_temp_dir(tmp, sizeof tmp, "loader-robust") != 0) {
        CHECK("setup: temp folder", 0, "mkdtemp: %s", strerror(errno));
        return test_finish();
    }
    lt_pathf(cache, sizeof cache, "%s/cache", tmp);
    Dataset good, corpus;
    int ok = lt_write_dataset(tmp, "good", 40, 96, 72, 5, good_dir, sizeof good_dir) == 0 &&
        make_corpus(tmp, corpus_dir, sizeof corpus_dir) == 0 &&
        lt_open_train(good_dir, cache, &good) == 0;
    ok = ok && (lt_open_train(corpus_dir, cache, &corpus) == 0 || (dataset_close(&good), 0));
    CHECK("setup: datasets written and opened (corpus of bad files)", ok, "failed");
    if (!ok) {
        lt_remove_tree(tmp);
        return test_finish();
    }
    double t0 = timer_now();
    test_bad_corpus(&corpus, tmp);
    test_strict(&corpus, tmp);
    test_all_bad(tmp);
    test_limits(&good, tmp);
    test_misuse(&good);
    test_two_loaders(&good, tmp);
    test_cancel_queued(&good);
    test_cancel_collates(&good);
    test_shutdown_random(&good, &corpus, tmp);
    printf("     (%.1f s)\n", timer_now() - t0);
    dataset_close(&good);
    dataset_close(&corpus);
    if (g_test_fail)
        printf("     kept %s for inspection\n", tmp);
    else
        lt_remove_tree(tmp);
    return test_finish();
}
