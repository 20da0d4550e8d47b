/* test_loader.c - the batch loader on a synthetic dataset written by the test: batches bitwise
 * identical for 1, 2 and 8 workers (each in its own process: the libuv pool size is fixed at its
 * first use), in-order delivery, epoch order and coverage, resume, sharding, the content of a
 * batch against the decode + transform pipeline run directly, uint8 output, group_by_aspect,
 * statistics and bounded memory. Bad input, timeouts and shutdown are in test_loader_robust.c. */
#include <math.h>
#include <sys/wait.h>
#include "decode.h"
#include "loader_test_util.h"
#include "mem.h"
#include "timer.h"

#define N_TRAIN 40
#define EPOCHS_CHILD 2

static char g_exe[PATH_MAX];

/* ---- child process: one run with a given worker count, checksums on stdout ---- */

static int child_main(int argc, char **argv) {
    if (argc != 6) return 2;
    const char *ds_dir = argv[2], *cache = argv[3];
    int workers = atoi(argv[4]), variant = atoi(argv[5]);
    Dataset ds;
    if (lt_open_train(ds_dir, cache, &ds) != 0) return 3;
    LoaderConfig cfg;
    lt_config(&cfg, workers);
    if (variant == 1) { /* aspect grouping, another batch / prefetch shape */
        cfg.group_by_aspect = 1;
        cfg.aspect_window = 3;
        cfg.batch = 2;
        cfg.prefetch = 3;
    }
    char err[512];
    Loader *l = loader_create(&ds, &cfg, err, sizeof err);
    if (!l) {
        fprintf(stderr, "child: %s\n", err);
        return 4;
    }
    int skipped = 0;
    for (int epoch = 0; epoch < EPOCHS_CHILD; epoch++) {
        LtEpoch e;
        if (loader_start_epoch(l, epoch, 0) != 0 ||
            lt_consume(l, 0, 1 << 30, &e, err, sizeof err) < 0) {
            fprintf(stderr, "child: %s\n", err);
            return 5;
        }
        for (int i = 0; i < e.n; i++)
            printf("sum %d %d %016llx\n", epoch, i, (unsigned long long)e.sums[i]);
        skipped += e.skipped;
    }
    int tasks = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) tasks += de->d_name[0] != '.';
    if (d) closedir(d);
    printf("skipped %d\npool %d\ntasks %d\n", skipped, loader_pool_size(), tasks);
    loader_destroy(l);
    dataset_close(&ds);
    return 0;
}

/* Runs this program as a child; its stdout goes into out. Returns the exit status. */
static int run_child(const char *ds_dir, const char *cache, int workers, int variant,
                     const char *err_path, char *out, size_t len) {
    int fd[2];
    if (pipe(fd) != 0) return -1;
    char w[16], v[16];
    snprintf(w, sizeof w, "%d", workers);
    snprintf(v, sizeof v, "%d", variant);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1);
        int efd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (efd >= 0) dup2(efd, 2);
        close(fd[0]);
        close(fd[1]);
        execl(g_exe, g_exe, "--child", ds_dir, cache, w, v, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd[0], out + got, len - 1 - got)) > 0 || (r < 0 && errno == EINTR))
        if (r > 0) got += (size_t)r;
    out[got] = 0;
    close(fd[0]);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The "sum ..." lines of a child's output (the part that must not depend on the workers). */
static void sums_part(const char *out, char *dst, size_t len) {
    const char *end = strstr(out, "skipped ");
    size_t n = end ? (size_t)(end - out) : strlen(out);
    if (n >= len) n = len - 1;
    memcpy(dst, out, n);
    dst[n] = 0;
}

static int field(const char *out, const char *key) {
    const char *p = strstr(out, key);
    return p ? atoi(p + strlen(key)) : -1;
}

/* Lines of a file that start with prefix; each must also contain `must` (NULL: anything). */
static int count_lines(const char *path, const char *prefix, const char *must, int *bad) {
    FILE *f = fopen(path, "r");
    char line[2048];
    int n = 0;
    *bad = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, prefix, strlen(prefix))) continue;
        n++;
        if (must && !strstr(line, must)) (*bad)++;
    }
    if (f) fclose(f);
    return n;
}

static void test_workers_determinism(const char *tmp, const char *ds_dir, const char *bad_dir,
                                     const char *cache) {
    static char out[3][64 * 1024], sums[3][64 * 1024];
    const int workers[3] = {1, 2, 8};
    const char *dirs[3] = {ds_dir, ds_dir, bad_dir};
    const char *names[3] = {"train transform", "group_by_aspect", "bad files replaced"};
    char err_path[PATH_MAX];
    lt_pathf(err_path, sizeof err_path, "%s/child-stderr.txt", tmp);
    for (int variant = 0; variant < 3; variant++) {
        int ok = 1;
        char msg[256] = "";
        for (int k = 0; k < 3 && ok; k++) {
            int rc = run_child(dirs[variant], cache, workers[k], variant == 1, err_path, out[k],
                               sizeof out[k]);
            if (rc != 0) {
                lt_pathf(msg, sizeof msg, "child with %d workers exited with %d (stderr in %s)",
                         workers[k], rc, err_path);
                ok = 0;
                break;
            }
            sums_part(out[k], sums[k], sizeof sums[k]);
            int pool = field(out[k], "pool "), tasks = field(out[k], "tasks ");
            if (pool != workers[k] || tasks < workers[k] + 2) {
                lt_pathf(msg, sizeof msg, "%d workers: pool %d, %d threads (want >= %d)",
                         workers[k], pool, tasks, workers[k] + 2);
                ok = 0;
            }
            int bad = 0, skipped = field(out[k], "skipped ");
            int warnings =
                count_lines(err_path, "warning: loader: skipping sample: ", "/train/0", &bad);
            if (ok && (warnings != skipped || bad)) {
                lt_pathf(msg, sizeof msg,
                         "%d workers: %d warning lines (%d without a path) for %d "
                         "skipped samples",
                         workers[k], warnings, bad, skipped);
                ok = 0;
            }
        }
        int lines = 0;
        for (const char *p = sums[0]; (p = strstr(p, "sum ")) != NULL; p++) lines++;
        if (ok && (strcmp(sums[0], sums[1]) || strcmp(sums[0], sums[2]))) {
            lt_pathf(msg, sizeof msg, "checksums differ between 1, 2 and 8 workers");
            ok = 0;
        }
        if (ok && lines < 2 * 10) {
            lt_pathf(msg, sizeof msg, "only %d batches", lines);
            ok = 0;
        }
        int skipped = field(out[0], "skipped ");
        if (ok && (variant == 2 ? skipped < 2 * 5 : skipped != 0)) {
            lt_pathf(msg, sizeof msg, "skipped %d samples", skipped);
            ok = 0;
        }
        char name[128];
        snprintf(name, sizeof name, "workers 1/2/8 give bitwise identical batches (%s, %d batches)",
                 names[variant], lines);
        CHECK(name, ok, "%s", msg);
    }
}

/* ---- in-process tests ---- */

static void test_order_and_coverage(const Dataset *ds) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    cfg.shuffle = 0;
    LtEpoch e;
    int n = lt_run_epoch(ds, &cfg, 0, 0, &e, err, sizeof err);
    int ok = n == (N_TRAIN + 2) / 3 && e.n_ids == N_TRAIN && e.in_order;
    for (int i = 0; ok && i < N_TRAIN; i++) ok = e.ids[i] == ds->images[i].id;
    CHECK("order: shuffle off gives the dataset's order, batches in order", ok, "n=%d ids=%d (%s)",
          n, e.n_ids, n < 0 ? err : "");
    CHECK("order: last batch incomplete without drop_last", n == 14, "%d batches", n);

    cfg.shuffle = 1;
    LtEpoch e0, e0b, e1;
    int n0 = lt_run_epoch(ds, &cfg, 0, 0, &e0, err, sizeof err);
    int n0b = lt_run_epoch(ds, &cfg, 0, 0, &e0b, err, sizeof err);
    int n1 = lt_run_epoch(ds, &cfg, 1, 0, &e1, err, sizeof err);
    int64_t a[N_TRAIN], b[N_TRAIN];
    memcpy(a, e0.ids, sizeof a);
    memcpy(b, e1.ids, sizeof b);
    qsort(a, N_TRAIN, sizeof a[0], lt_cmp_i64);
    qsort(b, N_TRAIN, sizeof b[0], lt_cmp_i64);
    int cover = e0.n_ids == N_TRAIN && e1.n_ids == N_TRAIN;
    for (int i = 0; cover && i < N_TRAIN; i++)
        cover = a[i] == b[i] && (i == 0 || a[i] != a[i - 1]) && lt_index_of_id(ds, a[i]) >= 0;
    CHECK("order: every image exactly once per shuffled epoch", cover && e0.in_order && e1.in_order,
          "ids %d/%d", e0.n_ids, e1.n_ids);
    CHECK("order: same (seed, epoch) -> same batches",
          n0 == n0b && !memcmp(e0.sums, e0b.sums, sizeof e0.sums), "differ");
    CHECK("order: another epoch -> another order",
          n1 == n0 && memcmp(e0.ids, e1.ids, sizeof a) != 0, "same order");
    cfg.drop_last = 1;
    LtEpoch ed;
    int nd = lt_run_epoch(ds, &cfg, 0, 0, &ed, err, sizeof err);
    CHECK("order: drop_last drops the incomplete batch only",
          nd == 13 && !memcmp(ed.sums, e0.sums, 13 * 8), "%d batches", nd);
}

static void test_resume(const Dataset *ds) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    LtEpoch full, tail;
    int n = lt_run_epoch(ds, &cfg, 3, 0, &full, err, sizeof err);
    int m = lt_run_epoch(ds, &cfg, 3, 5, &tail, err, sizeof err);
    CHECK("resume: new loader from (epoch 3, batch 5) = uninterrupted run",
          n == 14 && m == 9 && tail.in_order &&
              !memcmp(tail.sums, full.sums + 5, 9 * sizeof(uint64_t)),
          "n=%d m=%d", n, m);

    /* Restart on the same loader while work is in flight. */
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    LtEpoch part, rest, after;
    int ok = l && loader_start_epoch(l, 3, 0) == 0 &&
        lt_consume(l, 0, 2, &part, err, sizeof err) == 2 && loader_start_epoch(l, 3, 7) == 0 &&
        lt_consume(l, 7, 1 << 30, &rest, err, sizeof err) == 7 &&
        loader_start_epoch(l, 3, 14) == 0 &&
        lt_consume(l, 14, 1 << 30, &after, err, sizeof err) == 0;
    CHECK("resume: restart mid-epoch on the same loader",
          ok && rest.in_order && !memcmp(part.sums, full.sums, 2 * 8) &&
              !memcmp(rest.sums, full.sums + 7, 7 * 8),
          "%s", err);
    fprintf(stderr, "(the error below is expected)\n");
    CHECK("resume: start past the end refused", l && loader_start_epoch(l, 3, 15) == -1,
          "accepted");
    loader_destroy(l);
}

/* loader_try_next: never blocks; interleaved with loader_next it gives the same batches in the
 * same order; "not ready" and "every slot held" are 2 (nothing taken), not errors; 0 at the end. */
static void test_try_next(const Dataset *ds) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    LtEpoch full;
    int n = lt_run_epoch(ds, &cfg, 2, 0, &full, err, sizeof err);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    LoaderBatch *b = NULL, *held[8] = {0};
    CHECK("try_next: before loader_start_epoch it is an error", l && loader_try_next(l, &b, err, sizeof err) == -1 &&
          b == NULL, "%s", err);
    if (!l || loader_start_epoch(l, 2, 0) != 0) {
        CHECK("try_next: loader", 0, "%s", err);
        loader_destroy(l);
        return;
    }
    int got = 0, in_order = 1, not_ready = 0, rc = 1, taken_by_try = 0;
    while (got < n) {
        if (got % 2 == 0) { /* even batches: poll without blocking */
            rc = loader_try_next(l, &b, err, sizeof err);
            if (rc == 2) {
                not_ready++;
                if (not_ready > 200000) break; /* ~20 s of polling: the loader is stuck */
                usleep(100);
                continue;
            }
            if (rc != 1) break;
            taken_by_try++;
            in_order &= b->stats.wait_s == 0.0;
        } else if ((rc = loader_next(l, &b, 30.0, err, sizeof err)) != 1) {
            break;
        }
        in_order &= b->index == got && lt_batch_checksum(b) == full.sums[got];
        loader_release(l, b);
        got++;
    }
    CHECK("try_next: interleaved with loader_next, the uninterrupted run's batches in order",
          n > 4 && got == n && in_order && taken_by_try == (n + 1) / 2, "%d of %d batches (rc %d: %s)", got, n, rc,
          rc < 0 ? err : "");
    CHECK("try_next: 0 at the end of the epoch", loader_try_next(l, &b, err, sizeof err) == 0 && b == NULL, "%s", err);
    /* every slot held: 2 (nothing taken), where loader_next reports an error */
    loader_start_epoch(l, 2, 0);
    int h = 0;
    while (h < cfg.prefetch && loader_next(l, &held[h], 30.0, err, sizeof err) == 1) h++;
    rc = loader_try_next(l, &b, err, sizeof err);
    CHECK("try_next: every slot held by the consumer -> 2, nothing taken", h == cfg.prefetch && rc == 2 && b == NULL,
          "held %d of %d, rc %d", h, cfg.prefetch, rc);
    for (int i = 0; i < h; i++) loader_release(l, held[i]);
    loader_destroy(l);
}

static void test_sharding(const Dataset *ds) {
    char err[512];
    const int world = 3;
    int64_t all[N_TRAIN];
    int n_all = 0, equal = 1, runs = 1;
    for (int r = 0; r < world; r++) {
        LoaderConfig cfg;
        lt_config(&cfg, 2);
        cfg.rank = r;
        cfg.world = world;
        LtEpoch e;
        runs &= lt_run_epoch(ds, &cfg, 2, 0, &e, err, sizeof err) == 5; /* ceil(13 / 3) */
        equal &= e.n_ids == N_TRAIN / world;
        for (int i = 0; i < e.n_ids && n_all < N_TRAIN; i++) all[n_all++] = e.ids[i];
    }
    qsort(all, (size_t)n_all, sizeof all[0], lt_cmp_i64);
    int disjoint = 1;
    for (int i = 1; i < n_all; i++) disjoint &= all[i] != all[i - 1];
    CHECK("sharding: world 3 gives equal, disjoint shards covering n - n % world images",
          runs && equal && disjoint && n_all == N_TRAIN - N_TRAIN % world,
          "runs %d equal %d disjoint %d n %d", runs, equal, disjoint, n_all);

    /* The shards are the epoch order dealt round-robin. */
    SamplerConfig sc = {
        .n = N_TRAIN, .batch = 3, .rank = 1, .world = world, .shuffle = 1, .seed = 1234};
    int64_t shard[N_TRAIN / 3];
    SamplerConfig sc1 = sc;
    sc1.world = 1;
    sc1.rank = 0;
    int64_t full[N_TRAIN];
    sampler_epoch_order(&sc, 2, shard);
    sampler_epoch_order(&sc1, 2, full);
    int dealt = 1;
    for (int i = 0; i < N_TRAIN / 3; i++) dealt &= shard[i] == full[i * world + 1];
    CHECK("sharding: sample k of the epoch goes to rank k % world", dealt, "not round-robin");
}

/* The loader's sample i of a batch against read + decode + transform run here directly: every
 * pixel of the image's padded [3, H, W] part (normalised f32, or uint8 with uint8_output; 0 on
 * padding), every mask byte and every box, bitwise. */
static int check_sample(const Dataset *ds, const LoaderConfig *cfg, const LoaderBatch *b, int i,
                        int epoch, char *msg, size_t len) {
    int64_t idx = lt_index_of_id(ds, b->image_ids[i]);
    char path[PATH_MAX];
    lt_image_path(ds, idx, path, sizeof path);
    FILE *f = fopen(path, "rb");
    if (!f) return lt_pathf(msg, len, "cannot open %s", path), 0;
    static uint8_t bytes[1 << 20];
    size_t n = fread(bytes, 1, sizeof bytes, f);
    fclose(f);
    uint64_t seed = sampler_sample_seed(cfg->seed, epoch, idx, 0);
    Decoder *d = decoder_create();
    Image img = {0}, out = {0};
    int w, h, mw, mh;
    char err[256];
    float xyxy[64 * 4];
    int labels[64];
    int ok = decode_probe(d, bytes, n, &w, &h, err, sizeof err) == 0;
    transform_plan_min_size(&cfg->tf, seed, w, h, &mw, &mh);
    ok = ok && decode_image(d, bytes, n, mw, mh, 0, &img, err, sizeof err) == 0;
    int nb = ok ? dataset_targets(ds, idx, img.full_w, img.full_h, 0, xyxy, labels, 64, NULL) : 0;
    Boxes bx = {nb, xyxy, labels};
    ok = ok && transform_apply(&cfg->tf, seed, &img, &bx, &out) == 0;
    if (!ok) lt_pathf(msg, len, "reference pipeline failed: %s", err);
    ok = ok && out.w == b->img_w[i] && out.h == b->img_h[i] && w == b->orig_w[i] &&
        h == b->orig_h[i] && bx.n == b->n_boxes[i];
    if (!ok && !msg[0]) lt_pathf(msg, len, "sizes or box count differ");
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
    size_t plane = (size_t)b->H * b->W;
    for (int y = 0; ok && y < b->H; y++)
        for (int x = 0; ok && x < b->W; x++)
            for (int c = 0; ok && c < 3; c++) {
                int inside = y < out.h && x < out.w;
                uint8_t v = inside ? out.rgb[((size_t)y * out.w + x) * 3 + c] : 0;
                size_t at = (size_t)i * 3 * plane + c * plane + (size_t)y * b->W + x;
                float want = inside ? ((float)v / 255.0f - mean[c]) / sd[c] : 0.0f;
                float got = b->images_u8 ? b->images_u8[at] : b->images[at];
                if (b->images_u8) want = v;
                uint8_t m = b->mask[(size_t)i * plane + (size_t)y * b->W + x];
                if (memcmp(&want, &got, sizeof got) || m != !inside) {
                    lt_pathf(msg, len, "pixel (%d,%d,%d): %g vs %g, mask %d", c, y, x, got, want,
                             m);
                    ok = 0;
                }
            }
    for (int k = 0; ok && k < bx.n; k++) {
        const float *p = xyxy + 4 * k;
        float want[4] = {((p[0] + p[2]) / 2) / out.w, ((p[1] + p[3]) / 2) / out.h,
                         (p[2] - p[0]) / out.w, (p[3] - p[1]) / out.h};
        if (memcmp(want, b->boxes[i] + 4 * k, sizeof want) || labels[k] != b->labels[i][k]) {
            lt_pathf(msg, len, "box %d differs", k);
            ok = 0;
        }
    }
    image_free(&img);
    image_free(&out);
    decoder_destroy(d);
    return ok;
}

static void test_content(const Dataset *ds) {
    char err[512], msg[256] = "";
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    LoaderBatch *b = NULL;
    int ok = l && loader_start_epoch(l, 4, 0) == 0 && loader_next(l, &b, 30, err, sizeof err) == 1;
    int checked = 0;
    for (int i = 0; ok && i < b->B; i++, checked++)
        ok = check_sample(ds, &cfg, b, i, 4, msg, sizeof msg);
    CHECK("content: batch = decode + transform + normalise + pad, bitwise", ok && checked == 3,
          "%s %s", ok ? "" : err, msg);
    int padded = b &&
        (b->img_h[0] != b->H || b->img_w[0] != b->W || b->img_h[1] != b->H || b->img_w[1] != b->W ||
         b->img_h[2] != b->H || b->img_w[2] != b->W);
    CHECK("content: the batch has padding to check", padded, "all images have the batch size");
    uint64_t mask_sum = 0;
    if (b) mask_sum = lt_fnv(0, b->mask, (size_t)b->B * b->H * b->W);
    float first[64];
    if (b) memcpy(first, b->images, sizeof first);
    int H = b ? b->H : 0, W = b ? b->W : 0;
    if (b) loader_release(l, b);
    loader_destroy(l);

    /* uint8 output: the same pixels before normalisation. */
    cfg.uint8_output = 1;
    l = loader_create(ds, &cfg, err, sizeof err);
    ok = l && loader_start_epoch(l, 4, 0) == 0 && loader_next(l, &b, 30, err, sizeof err) == 1;
    int same = ok && b->images == NULL && b->images_u8 && b->H == H && b->W == W &&
        lt_fnv(0, b->mask, (size_t)b->B * b->H * b->W) == mask_sum;
    for (int k = 0; same && k < 64 && k < W; k++)
        same = ((float)b->images_u8[k] / 255.0f - 0.485f) / 0.229f == first[k] ||
            (b->mask[k] && first[k] == 0);
    size_t plane = ok ? (size_t)b->H * b->W : 0;
    for (size_t k = 0; same && k < (size_t)b->B * plane; k++) /* channel 2 padding is zero too */
        if (b->mask[k]) same = b->images_u8[(k / plane) * 3 * plane + 2 * plane + k % plane] == 0;
    CHECK("content: uint8 output matches the normalised batch", same, "%s", ok ? "differs" : err);
    if (ok) loader_release(l, b);
    loader_destroy(l);
}

/* Every image of every batch over two epochs, f32 and uint8: the slots are reused for batches of
 * other padded sizes and never cleared, so a byte of padding or mask that no collate item wrote
 * would still hold an older batch's value. */
static void test_content_every_batch(const Dataset *ds) {
    for (int u8 = 0; u8 < 2; u8++) {
        char err[512] = "", msg[256] = "";
        LoaderConfig cfg;
        lt_config(&cfg, 2);
        cfg.uint8_output = u8;
        Loader *l = loader_create(ds, &cfg, err, sizeof err);
        int ok = l != NULL, images = 0, batches = 0, sizes = 0, last_hw = -1;
        for (int epoch = 0; ok && epoch < 2; epoch++) {
            ok = loader_start_epoch(l, epoch, 0) == 0;
            LoaderBatch *b;
            int rc = -1;
            while (ok && (rc = loader_next(l, &b, 30, err, sizeof err)) == 1) {
                for (int i = 0; ok && i < b->B; i++, images++)
                    ok = check_sample(ds, &cfg, b, i, epoch, msg, sizeof msg);
                sizes += b->H * 1000 + b->W != last_hw;
                last_hw = b->H * 1000 + b->W;
                batches++;
                loader_release(l, b);
            }
            ok = ok && rc == 0;
        }
        loader_destroy(l);
        char name[160];
        snprintf(name, sizeof name,
                 "content: every image of every batch, 2 epochs (%s): pixels, padding, mask, boxes",
                 u8 ? "uint8" : "f32");
        CHECK(name, ok && images == 2 * N_TRAIN && batches == 28 && sizes > 10,
              "%d images, %d batches, %d padded-size changes: %s %s", images, batches, sizes, err,
              msg);
    }
}

static void test_stats(const Dataset *ds) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    int ok = l && loader_start_epoch(l, 0, 0) == 0;
    int bytes_ok = 1, pad_ok = 1, positive = 1, depth_ok = 1, n = 0, seen = -1;
    LoaderBatch *b;
    for (;;) {
        if (n % 4 == 3) { /* a slow consumer: wait until the ring has batches ready */
            double t0 = timer_now();
            while ((seen = loader_queue_depth(l)) < 1 && timer_now() - t0 < 20) usleep(1000);
        }
        if (!ok || loader_next(l, &b, 30, err, sizeof err) != 1) break;
        int64_t bytes = 0;
        for (int i = 0; i < b->B; i++) {
            char path[PATH_MAX];
            struct stat st;
            lt_image_path(ds, lt_index_of_id(ds, b->image_ids[i]), path, sizeof path);
            bytes += stat(path, &st) == 0 ? st.st_size : 0;
        }
        bytes_ok &= bytes == b->stats.bytes_read;
        size_t pad = 0, all = (size_t)b->B * b->H * b->W;
        for (size_t k = 0; k < all; k++) pad += b->mask[k];
        pad_ok &= fabs((double)pad / all - b->stats.padded_fraction) < 1e-9;
        positive &= b->stats.read_s > 0 && b->stats.decode_s > 0 && b->stats.augment_s > 0 &&
            b->stats.collate_s > 0 && b->stats.wait_s >= 0 && b->stats.queue_depth >= 0 &&
            b->stats.queue_depth <= cfg.prefetch && b->stats.skipped == 0 &&
            b->stats.dropped_boxes == 0;
        if (n % 4 == 3) depth_ok &= seen >= 1 && b->stats.queue_depth >= seen;
        n++;
        loader_release(l, b);
    }
    CHECK("stats: bytes_read = file sizes of the batch", ok && n == 14 && bytes_ok, "n=%d %s", n,
          err);
    CHECK("stats: padded fraction = mask", pad_ok, "differs");
    CHECK("stats: stage times positive, queue depth in 0..prefetch, nothing skipped", positive,
          "bad");
    CHECK("stats: queue depth = ready batches when the consumer asked", depth_ok, "differs");
    loader_destroy(l);
}

static void test_group_by_aspect(const Dataset *ds) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    lt_small_tf(&cfg.tf, 0); /* val: the aspect ratio survives the transform */
    cfg.batch = 4;
    cfg.drop_last = 1;
    LtEpoch plain, grouped, grouped2;
    int n0 = lt_run_epoch(ds, &cfg, 0, 0, &plain, err, sizeof err);
    cfg.group_by_aspect = 1;
    cfg.aspect_window = 5;
    int n1 = lt_run_epoch(ds, &cfg, 0, 0, &grouped, err, sizeof err);
    int n2 = lt_run_epoch(ds, &cfg, 0, 0, &grouped2, err, sizeof err);
    int64_t a[N_TRAIN], b[N_TRAIN];
    memcpy(a, plain.ids, sizeof a);
    memcpy(b, grouped.ids, sizeof b);
    qsort(a, N_TRAIN, 8, lt_cmp_i64);
    qsort(b, N_TRAIN, 8, lt_cmp_i64);
    CHECK("group_by_aspect: same images, deterministic",
          n0 == 10 && n1 == 10 && n2 == 10 && !memcmp(a, b, sizeof a) &&
              !memcmp(grouped.sums, grouped2.sums, 10 * 8),
          "n %d %d", n0, n1);
    CHECK("group_by_aspect: less padding", grouped.mean_padded < 0.7 * plain.mean_padded,
          "padded fraction %.3f grouped vs %.3f", grouped.mean_padded, plain.mean_padded);
    printf("     padded fraction (val transform, batch 4): %.3f plain, %.3f grouped\n",
           plain.mean_padded, grouped.mean_padded);
}

static void test_memory(const Dataset *ds) {
    char err[512];
    LoaderConfig cfg;
    lt_config(&cfg, 2);
    size_t base = mem_stats().current[MEM_INPUTS];
    Loader *l = loader_create(ds, &cfg, err, sizeof err);
    size_t bound = 0, peak_after_1 = 0, cur_max = 0;
    long long rss2 = 0, rss5 = 0;
    int ok = l != NULL;
    for (int epoch = 0; ok && epoch < 5; epoch++) {
        LtEpoch e;
        ok = loader_start_epoch(l, epoch, 0) == 0 &&
            lt_consume(l, 0, 1 << 30, &e, err, sizeof err) == 14;
        size_t cur = mem_stats().current[MEM_INPUTS] - base;
        if (cur > cur_max) cur_max = cur;
        if (epoch == 0) peak_after_1 = cur;
        if (epoch == 1) rss2 = lt_rss_bytes();
        if (epoch == 4) rss5 = lt_rss_bytes();
    }
    /* Worst case per slot: max_size (80) padded both ways (+1 for rounding), f32 + mask, rounded
     * to 64 KiB, plus the per-image arrays. */
    size_t side = 81, blk = (size_t)cfg.batch * side * side * 13;
    blk = (blk + 65535) / 65536 * 65536;
    bound =
        (size_t)cfg.prefetch * (blk + 64 + (size_t)cfg.batch * (32 + cfg.max_boxes * 20) + 4096);
    CHECK("memory: slot memory flat from the first epoch", cur_max == peak_after_1,
          "%zu after epoch 1, %zu later", peak_after_1, cur_max);
    CHECK("memory: slot memory (MEM_INPUTS) within prefetch x worst batch",
          ok && cur_max <= bound && peak_after_1 > 0, "current max %zu bound %zu (%s)", cur_max,
          bound, ok ? "" : err);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    (void)rss2;
    test_skip("memory: RSS flat over epochs 2..5", "sanitizers keep freed memory in quarantine");
#else
    CHECK("memory: RSS flat over epochs 2..5", rss5 - rss2 < 4ll << 20, "RSS grew %lld bytes",
          rss5 - rss2);
#endif
    loader_destroy(l);
    CHECK("memory: everything released by loader_destroy", mem_stats().current[MEM_INPUTS] == base,
          "%zu bytes left", mem_stats().current[MEM_INPUTS] - base);
    printf("     slot memory %zu bytes (prefetch %d, batch %d); RSS %lld MB\n", cur_max,
           cfg.prefetch, cfg.batch, rss5 >> 20);
}

/* Copies the dataset at src into dst and damages five files (zero-byte, truncated, missing,
 * garbage, a folder in place of the file). */
static int make_bad_dataset(const char *tmp, char *dst, size_t len) {
    if (lt_write_dataset(tmp, "bad", 30, 96, 72, 11, dst, len) != 0) return -1;
    char p[PATH_MAX];
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 4);
    if (truncate(p, 0) != 0) return -1;
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 9);
    struct stat st;
    if (stat(p, &st) != 0 || truncate(p, st.st_size / 2) != 0) return -1;
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 15);
    if (unlink(p) != 0) return -1;
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 21);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    for (int i = 0; i < 3000; i++) fputc((i * 7919) & 255, f);
    fclose(f);
    lt_pathf(p, sizeof p, "%s/train/%012d.jpg", dst, 26);
    if (unlink(p) != 0 || mkdir(p, 0755) != 0) return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--child")) return child_main(argc, argv);
    ssize_t n = readlink("/proc/self/exe", g_exe, sizeof g_exe - 1);
    if (n <= 0) {
        test_skip("loader", "cannot find /proc/self/exe to run worker-count children");
        return test_finish();
    }
    g_exe[n] = 0;
    char tmp[PATH_MAX], ds_dir[PATH_MAX], bad_dir[PATH_MAX], cache[PATH_MAX];
    if (lt_make_temp_dir(tmp, sizeof tmp, "loader") != 0) {
        CHECK("loader: temp folder", 0, "mkdtemp: %s", strerror(errno));
        return test_finish();
    }
    lt_pathf(cache, sizeof cache, "%s/cache", tmp);
    int ok = lt_write_dataset(tmp, "ds", N_TRAIN, 96, 72, 5, ds_dir, sizeof ds_dir) == 0 &&
        make_bad_dataset(tmp, bad_dir, sizeof bad_dir) == 0;
    Dataset ds;
    ok = ok && lt_open_train(ds_dir, cache, &ds) == 0;
    CHECK("loader: synthetic dataset written and opened", ok && ds.n_images == N_TRAIN,
          "setup failed");
    if (!ok) {
        lt_remove_tree(tmp);
        return test_finish();
    }
    double t0 = timer_now();
    /* Children first, before this process starts any thread. */
    test_workers_determinism(tmp, ds_dir, bad_dir, cache);
    test_order_and_coverage(&ds);
    test_resume(&ds);
    test_try_next(&ds);
    test_sharding(&ds);
    test_content(&ds);
    test_content_every_batch(&ds);
    test_stats(&ds);
    test_group_by_aspect(&ds);
    test_memory(&ds);
    printf("     (%.1f s)\n", timer_now() - t0);
    dataset_close(&ds);
    if (g_test_fail)
        printf("     kept %s for inspection\n", tmp);
    else
        lt_remove_tree(tmp);
    return test_finish();
}
