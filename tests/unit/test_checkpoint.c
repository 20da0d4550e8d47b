/* test_checkpoint.c - checkpoints (trainer/checkpoint.h): round trip, keep_last and the latest
 * pointer, fallback past a corrupt latest file, config mismatches, a full disk (RLIMIT_FSIZE),
 * kill -9 during saves, and resume: training interrupted by a checkpoint and continued in a
 * fresh process gives the same loss sequence, bit for bit, as an uninterrupted run.
 *
 * Child processes are this program re-executed (/proc/self/exe --child-...), so each starts
 * with fresh state (no OpenMP pool inherited through fork). Files go to /dev/shm when present
 * (no disk wear, fsync is cheap), else to $TMPDIR or /tmp. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "checkpoint.h"
#include "rng.h"
#include "synth_batch.h"
#include "train.h"
#include "weights.h"

#define NCLS 4
#define SIZE 64
#define BATCH 2
#define RUN_JSON "{\"batch\":2,\"accum\":1,\"seed\":42,\"data\":\"synthetic\"}"

/* ---- helpers ---- */

static DetrConfig small_config(int hidden) {
    DetrConfig c = {.depth = 18, .hidden = hidden, .nheads = 4, .enc_layers = 1, .dec_layers = 2,
                    .ffn = 64, .queries = 5, .num_classes = NCLS, .dropout = 0.1f, .aux_loss = 1};
    return c;
}

typedef struct {
    Detr *m;
    Trainer t;
} Model;

static void model_open(Model *x, int hidden, int train_backbone, uint64_t init_seed, const OptimConfig *oc) {
    DetrConfig c = small_config(hidden);
    x->m = detr_create(&c, backend_cpu(), train_backbone);
    detr_init(x->m, init_seed);
    OptimConfig def;
    optim_config_default(&def);
    if (!train_backbone) def.lr_backbone = 0;
    trainer_init(&x->t, x->m, oc ? oc : &def);
}

static void model_close(Model *x) {
    trainer_free(&x->t);
    detr_destroy(x->m);
}

/* A backend buffer of n floats as a malloc'd host copy. */
static float *host_copy(const Detr *m, const float *src, size_t n) {
    float *h = malloc(n * sizeof(float) + 1);
    m->be->download(h, src, n * sizeof(float));
    return h;
}

static int buffers_equal(const Detr *a, const float *x, const Detr *b, const float *y, size_t n) {
    float *hx = host_copy(a, x, n), *hy = host_copy(b, y, n);
    int eq = memcmp(hx, hy, n * sizeof(float)) == 0;
    free(hx);
    free(hy);
    return eq;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static char g_root[512];

static void make_root(void) {
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(g_root, sizeof g_root, "%s/detr_test_checkpoint_XXXXXX", base);
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        exit(1);
    }
}

static void sub_dir(const char *name, char *out, size_t len) { snprintf(out, len, "%s/%s", g_root, name); }

static int file_exists(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Names in dir containing `part` (count), e.g. ".tmp.". */
static int count_names(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) n += strstr(de->d_name, part) != NULL;
    if (d) closedir(d);
    return n;
}

static void read_latest_txt(const char *dir, char *out, size_t len) {
    char p[4096];
    snprintf(p, sizeof p, "%s/latest.txt", dir);
    FILE *f = fopen(p, "r");
    out[0] = 0;
    if (f) {
        if (!fgets(out, (int)len, f)) out[0] = 0;
        fclose(f);
    }
    out[strcspn(out, "\n")] = 0;
}

static CheckpointState state_at(int64_t step) {
    CheckpointState s = {.step = step, .epoch = (int)(step / 2), .batch_pos = step % 2, .seed = 42,
                         .lr = 1e-4f, .lr_backbone = 1e-5f, .run_json = RUN_JSON};
    return s;
}

static int save_step(const char *dir, Model *x, int64_t step, int keep, char *err, size_t errlen) {
    CheckpointState s = state_at(step);
    x->t.opt.step = (int)step;
    return checkpoint_save(dir, &s, x->m, &x->t.opt, keep, err, errlen);
}

/* One deterministic training step (what detr-train does): batch from the sample index, dropout
 * seed from (seed, step), learning rates from the epoch (StepLR). */
#define STEPS_PER_EPOCH 2
#define LR_DROP 2
static int train_one(Model *x, SynthBatch *sb, int step, StepResult *res, char *err, size_t errlen) {
    synth_batch_fill(sb, 5, (uint64_t)step * BATCH, NCLS, 3, 0);
    int epoch = step / STEPS_PER_EPOCH;
    const OptimConfig *oc = &x->t.opt.cfg;
    float lr = lr_at_epoch(oc->lr, epoch, oc->lr_drop), lr_bb = lr_at_epoch(oc->lr_backbone, epoch, oc->lr_drop);
    uint64_t seed = rng_hash64(42, 0x5eed0000u + (uint64_t)step);
    return trainer_step(&x->t, sb->images, sb->mask, sb->targets, sb->B, sb->H, sb->W, lr, lr_bb, seed,
                        res, err, errlen);
}

static OptimConfig resume_optim(void) {
    OptimConfig oc;
    optim_config_default(&oc);
    oc.lr = 1e-3f; /* large enough that every step visibly moves the model */
    oc.lr_backbone = 1e-4f;
    oc.lr_drop = LR_DROP;
    return oc;
}

/* ---- child modes ---- */

/* Saves checkpoints start, start+1, ... forever (keep_last 2); writes 'R' to stdout when ready. */
static int child_saver(const char *dir, long long start) {
    Model x;
    model_open(&x, 32, 0, 3, NULL);
    char err[4096];
    if (write(1, "R", 1) != 1) return 1;
    for (long long step = start;; step++) {
        float v = (float)step; /* make every checkpoint's contents differ */
        x.m->be->upload(x.m->query, &v, sizeof v);
        if (save_step(dir, &x, step, 2, err, sizeof err) != 0) {
            fprintf(stderr, "child: %s\n", err);
            return 1;
        }
    }
}

/* Fresh model (other init seed), load the checkpoint in dir (weights_only: then forget the
 * optimizer state), train up to
 * `total` steps; writes the losses and grad norms of those steps, then the parameters, to out. */
static int child_resume(const char *dir, const char *out, int total, int weights_only) {
    OptimConfig oc = resume_optim();
    Model x;
    model_open(&x, 32, 1, 12345, &oc);
    char err[16384];
    CheckpointState s = {.run_json = RUN_JSON};
    if (checkpoint_load(dir, &s, x.m, &x.t.opt, err, sizeof err) != 0) {
        fprintf(stderr, "child: %s\n", err);
        return 1;
    }
    if (weights_only) { /* the control: forget the optimizer state */
        x.m->be->fill(x.t.opt.m, 0.0f, x.m->ps.n_train);
        x.m->be->fill(x.t.opt.v, 0.0f, x.m->ps.n_train);
        x.t.opt.step = 0;
    }
    x.t.step = (int)s.step;
    SynthBatch sb;
    synth_batch_alloc(&sb, BATCH, SIZE, SIZE, 3);
    FILE *f = fopen(out, "wb");
    if (!f) return 1;
    for (int step = (int)s.step; step < total; step++) {
        StepResult res;
        if (train_one(&x, &sb, step, &res, err, sizeof err) != 0) {
            fprintf(stderr, "child: %s\n", err);
            return 1;
        }
        fwrite(&res.losses.total, sizeof(double), 1, f);
        fwrite(&res.grad_norm, sizeof(double), 1, f);
    }
    float *p = host_copy(x.m, x.m->ps.train_data, x.m->ps.n_train);
    fwrite(p, sizeof(float), x.m->ps.n_train, f);
    free(p);
    fclose(f);
    synth_batch_free(&sb);
    model_close(&x);
    return 0;
}

/* Runs this program with args; returns its pid (stdout to out_fd if >= 0). */
static pid_t spawn_self(char *const args[], int out_fd) {
    pid_t pid = fork();
    if (pid == 0) {
        if (out_fd >= 0) dup2(out_fd, 1);
        execv("/proc/self/exe", args);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- tests ---- */

static void test_round_trip(void) {
    char dir[600], err[16384];
    sub_dir("roundtrip", dir, sizeof dir);
    Model a, b;
    model_open(&a, 32, 1, 1, NULL);
    SynthBatch sb;
    synth_batch_alloc(&sb, BATCH, SIZE, SIZE, 3);
    StepResult res;
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) rc = train_one(&a, &sb, i, &res, err, sizeof err);
    CheckpointState s = {.step = 2, .epoch = 1, .batch_pos = 3, .seed = 0xfedcba9876543210ull,
                         .lr = 1.25e-4f, .lr_backbone = 3.3e-6f, .run_json = RUN_JSON};
    rc = rc ? rc : checkpoint_save(dir, &s, a.m, &a.t.opt, 3, err, sizeof err);
    CHECK("round trip: save", rc == 0, "%s", err);

    model_open(&b, 32, 1, 99, NULL);
    CHECK("round trip: the fresh model differs before loading",
          !buffers_equal(a.m, a.m->ps.train_data, b.m, b.m->ps.train_data, a.m->ps.n_train), "same init");
    CheckpointState got = {.run_json = RUN_JSON};
    rc = checkpoint_load(dir, &got, b.m, &b.t.opt, err, sizeof err);
    CHECK("round trip: load", rc == 0, "%s", err);
    int all = 1;
    for (int i = 0; i < a.m->ps.n; i++) {
        const Param *p = &a.m->ps.p[i];
        if (!buffers_equal(a.m, p->data, b.m, b.m->ps.p[i].data, p->numel)) {
            printf("   differs: %s\n", p->name);
            all = 0;
        }
    }
    CHECK("round trip: every model tensor (trainable and frozen) identical", all, "see above");
    CHECK("round trip: AdamW moments identical",
          buffers_equal(a.m, a.t.opt.m, b.m, b.t.opt.m, a.m->ps.n_train) &&
              buffers_equal(a.m, a.t.opt.v, b.m, b.t.opt.v, a.m->ps.n_train),
          "m or v differs");
    CHECK("round trip: scalars identical",
          got.step == 2 && got.epoch == 1 && got.batch_pos == 3 && got.seed == s.seed && got.lr == s.lr &&
              got.lr_backbone == s.lr_backbone && b.t.opt.step == a.t.opt.step && b.t.opt.step == 2,
          "step %lld epoch %d pos %lld seed %llx lr %g/%g opt step %d", (long long)got.step, got.epoch,
          (long long)got.batch_pos, (unsigned long long)got.seed, got.lr, got.lr_backbone, b.t.opt.step);
    CHECK("round trip: the loaded path is reported", strstr(got.path, "checkpoint-00000002.safetensors") != NULL,
          "path %s", got.path);

    /* a checkpoint is also a weights file */
    char path[4096];
    checkpoint_path(dir, 2, path, sizeof path);
    DetrConfig inferred;
    Model c;
    model_open(&c, 32, 1, 5, NULL);
    rc = weights_infer_config(path, &inferred, err, sizeof err);
    rc = rc ? rc : weights_load(c.m, path, err, sizeof err);
    CHECK("round trip: weights_load reads a checkpoint (optimizer tensors ignored)",
          rc == 0 && inferred.hidden == 32 && inferred.queries == 5 &&
              buffers_equal(a.m, a.m->ps.train_data, c.m, c.m->ps.train_data, a.m->ps.n_train),
          "%s", err);
    model_close(&c);
    model_close(&a);
    model_close(&b);
    synth_batch_free(&sb);
}

static void test_keep_last_and_latest(void) {
    char dir[600], err[16384], latest[512], path[4096];
    sub_dir("keep", dir, sizeof dir);
    Model a;
    model_open(&a, 32, 0, 1, NULL);
    int rc = 0;
    for (int step = 1; step <= 5 && rc == 0; step++) rc = save_step(dir, &a, step, 2, err, sizeof err);
    CHECK("keep_last: saves", rc == 0, "%s", err);
    read_latest_txt(dir, latest, sizeof latest);
    int files = count_names(dir, ".safetensors");
    CHECK("keep_last 2 keeps the two newest",
          files == 2 && file_exists(dir, "checkpoint-00000004.safetensors") &&
              file_exists(dir, "checkpoint-00000005.safetensors"),
          "%d checkpoint files", files);
    CHECK("latest.txt names the newest", strcmp(latest, "checkpoint-00000005.safetensors") == 0, "latest.txt: '%s'",
          latest);
    rc = checkpoint_find_latest(dir, path, sizeof path);
    CHECK("checkpoint_find_latest", rc == 0 && strstr(path, "checkpoint-00000005"), "%s", path);
    CheckpointState s = {.run_json = RUN_JSON};
    rc = checkpoint_load(dir, &s, a.m, &a.t.opt, err, sizeof err);
    CHECK("load(dir) takes the latest", rc == 0 && s.step == 5, "rc %d step %lld: %s", rc, (long long)s.step, err);

    for (int step = 6; step <= 7; step++) save_step(dir, &a, step, 0, err, sizeof err);
    files = count_names(dir, ".safetensors");
    CHECK("keep_last 0 keeps all", files == 4, "%d checkpoint files", files);

    /* Saving an older step (a run resumed from an older file into the same folder): the newer
     * files are not deleted, the one just written is never deleted, latest.txt names it. */
    rc = save_step(dir, &a, 3, 1, err, sizeof err);
    read_latest_txt(dir, latest, sizeof latest);
    files = count_names(dir, ".safetensors");
    CHECK("keep_last 1 on an older step keeps it and the newer files",
          rc == 0 && files == 5 && file_exists(dir, "checkpoint-00000003.safetensors") &&
              file_exists(dir, "checkpoint-00000004.safetensors") &&
              file_exists(dir, "checkpoint-00000007.safetensors"),
          "rc %d, %d files", rc, files);

    rc = checkpoint_load(dir, &s, a.m, &a.t.opt, err, sizeof err);
    CHECK("latest.txt decides, not the highest step", rc == 0 && s.step == 3 && strcmp(latest, "checkpoint-00000003.safetensors") == 0,
          "step %lld, latest.txt '%s'", (long long)s.step, latest);
    /* without latest.txt: the highest step */
    char lp[700];
    snprintf(lp, sizeof lp, "%s/latest.txt", dir);
    unlink(lp);
    rc = checkpoint_load(dir, &s, a.m, &a.t.opt, err, sizeof err);
    CHECK("without latest.txt the highest step is taken", rc == 0 && s.step == 7, "step %lld", (long long)s.step);
    /* stray files are not checkpoints */
    char stray[700];
    snprintf(stray, sizeof stray, "%s/checkpoint-00000099.safetensors.tmp.abc123", dir);
    FILE *f = fopen(stray, "w");
    if (f) fclose(f);
    rc = checkpoint_load(dir, &s, a.m, &a.t.opt, err, sizeof err);
    CHECK("temporary files are ignored by load", rc == 0 && s.step == 7, "step %lld: %s", (long long)s.step, err);
    save_step(dir, &a, 8, 1, err, sizeof err);
    CHECK("the next save deletes leftover temporary files", access(stray, F_OK) != 0, "%s still there", stray);
    files = count_names(dir, ".safetensors");
    CHECK("keep_last 1 keeps only the new one", files == 1 && file_exists(dir, "checkpoint-00000008.safetensors"),
          "%d files", files);
    char empty[600];
    sub_dir("empty", empty, sizeof empty);
    mkdir(empty, 0755);
    rc = checkpoint_load(empty, &s, a.m, &a.t.opt, err, sizeof err);
    CHECK("a folder without checkpoints is a clear error", rc == -1 && strstr(err, "no checkpoint-"), "%s", err);
    model_close(&a);
}

/* Truncates a file to half its size. */
static void truncate_half(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && truncate(path, st.st_size / 2) != 0) perror("truncate");
}

/* Flips one byte near the end (inside the tensor data). */
static void flip_byte(const char *path) {
    int fd = open(path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) return;
    off_t at = st.st_size - 1000;
    unsigned char c;
    if (pread(fd, &c, 1, at) == 1) {
        c ^= 0x5a;
        if (pwrite(fd, &c, 1, at) != 1) perror("pwrite");
    }
    close(fd);
}

static void test_corrupt_fallback(void) {
    char dir[600], err[16384], p1[4096], p2[4096], p3[4096];
    sub_dir("corrupt", dir, sizeof dir);
    Model a, b;
    model_open(&a, 32, 0, 1, NULL);
    model_open(&b, 32, 0, 2, NULL);
    for (int step = 1; step <= 3; step++) save_step(dir, &a, step, 0, err, sizeof err);
    checkpoint_path(dir, 1, p1, sizeof p1);
    checkpoint_path(dir, 2, p2, sizeof p2);
    checkpoint_path(dir, 3, p3, sizeof p3);
    CheckpointState s = {.run_json = RUN_JSON};

    truncate_half(p3);
    int rc = checkpoint_load(dir, &s, b.m, &b.t.opt, err, sizeof err);
    CHECK("truncated latest: falls back to the previous checkpoint", rc == 0 && s.step == 2,
          "rc %d step %lld: %s", rc, (long long)s.step, err);
    flip_byte(p2);
    rc = checkpoint_load(dir, &s, b.m, &b.t.opt, err, sizeof err);
    CHECK("corrupt bytes (checksum): falls back again", rc == 0 && s.step == 1, "rc %d step %lld: %s", rc,
          (long long)s.step, err);
    rc = checkpoint_load(p2, &s, b.m, &b.t.opt, err, sizeof err);
    CHECK("a corrupt file named explicitly is an error naming it", rc == -1 && strstr(err, "corrupt") &&
          strstr(err, "checkpoint-00000002"), "%s", err);

    /* nothing changes when every file is bad */
    FILE *f = fopen(p1, "r+");
    if (f) {
        fputs("garbage!", f);
        fclose(f);
    }
    float *before = host_copy(b.m, b.m->ps.train_data, b.m->ps.n_train);
    CheckpointState keep = s;
    rc = checkpoint_load(dir, &s, b.m, &b.t.opt, err, sizeof err);
    float *after = host_copy(b.m, b.m->ps.train_data, b.m->ps.n_train);
    CHECK("no readable checkpoint: error listing each file", rc == -1 && strstr(err, "no readable checkpoint") &&
          strstr(err, "checkpoint-00000001") && strstr(err, "checkpoint-00000003"), "%s", err);
    CHECK("a failed load leaves model and state untouched",
          memcmp(before, after, b.m->ps.n_train * sizeof(float)) == 0 && s.step == keep.step, "changed");
    free(before);
    free(after);
    model_close(&a);
    model_close(&b);
}

static void test_mismatch(void) {
    char dir[600], err[16384];
    sub_dir("mismatch", dir, sizeof dir);
    Model a;
    model_open(&a, 32, 0, 1, NULL);
    save_step(dir, &a, 1, 0, err, sizeof err);

    Model wide;
    model_open(&wide, 64, 0, 1, NULL);
    CheckpointState s = {.run_json = RUN_JSON};
    int rc = checkpoint_load(dir, &s, wide.m, &wide.t.opt, err, sizeof err);
    CHECK("model shape mismatch names the key and both values",
          rc == -1 && strstr(err, "model.hidden: checkpoint 32, this run 64"), "%s", err);
    s.allow_changes = 1;
    rc = checkpoint_load(dir, &s, wide.m, &wide.t.opt, err, sizeof err);
    CHECK("model shape mismatch is an error even when changes are allowed", rc == -1 && strstr(err, "model.hidden"),
          "%s", err);
    model_close(&wide);

    OptimConfig oc;
    optim_config_default(&oc);
    oc.lr_backbone = 0;
    oc.lr = 2e-4f;
    Model lr2;
    model_open(&lr2, 32, 0, 1, &oc);
    CheckpointState s2 = {.run_json = RUN_JSON};
    rc = checkpoint_load(dir, &s2, lr2.m, &lr2.t.opt, err, sizeof err);
    CHECK("optimizer mismatch names it", rc == -1 && strstr(err, "optimizer.lr: checkpoint 9.99999975e-05, this run 0.000199999995"),
          "%s", err);
    s2.allow_changes = 1;
    rc = checkpoint_load(dir, &s2, lr2.m, &lr2.t.opt, err, sizeof err);
    CHECK("optimizer change allowed on request", rc == 0 && s2.step == 1 && lr2.t.opt.cfg.lr == 2e-4f, "%s", err);
    model_close(&lr2);

    CheckpointState s3 = {.run_json = "{\"batch\":4,\"accum\":1,\"seed\":42,\"data\":\"synthetic\"}"};
    rc = checkpoint_load(dir, &s3, a.m, &a.t.opt, err, sizeof err);
    CHECK("run option mismatch names it", rc == -1 && strstr(err, "run.batch: checkpoint 2, this run 4"), "%s", err);
    CheckpointState s3b = {.run_json = "not json"};
    rc = checkpoint_load(dir, &s3b, a.m, &a.t.opt, err, sizeof err);
    CHECK("invalid run options are an error", rc == -1 && strstr(err, "not a JSON object"), "%s", err);

    Model trainable; /* same shape, but the backbone trains: optimizer state is missing */
    model_open(&trainable, 32, 1, 1, NULL);
    CheckpointState s4 = {.run_json = RUN_JSON, .allow_changes = 1};
    rc = checkpoint_load(dir, &s4, trainable.m, &trainable.t.opt, err, sizeof err);
    CHECK("trainable set mismatch", rc == -1 && strstr(err, "model.trainable_backbone: checkpoint 0, this run 1"),
          "%s", err);
    model_close(&trainable);

    char wpath[700];
    snprintf(wpath, sizeof wpath, "%s/weights.safetensors", dir);
    weights_save(a.m, wpath, err, sizeof err);
    CheckpointState s5 = {0};
    rc = checkpoint_load(wpath, &s5, a.m, &a.t.opt, err, sizeof err);
    CHECK("a weights file is not a checkpoint", rc == -1 && strstr(err, "not a detr-c training checkpoint"), "%s", err);
    model_close(&a);
}

static void test_disk_full(void) {
    char dir[600], err[16384], latest[512];
    sub_dir("diskfull", dir, sizeof dir);
    Model a;
    model_open(&a, 32, 0, 1, NULL);
    int rc = save_step(dir, &a, 1, 2, err, sizeof err);
    CHECK("disk full: first save", rc == 0, "%s", err);
    struct rlimit old, small;
    getrlimit(RLIMIT_FSIZE, &old);
    small = old;
    small.rlim_cur = 1 << 20; /* files may not grow beyond 1 MiB: writes fail with EFBIG */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    int limited = setrlimit(RLIMIT_FSIZE, &small) == 0;
    rc = save_step(dir, &a, 2, 2, err, sizeof err);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    if (!limited) {
        test_skip("disk full", "setrlimit(RLIMIT_FSIZE) refused");
        model_close(&a);
        return;
    }
    CHECK("disk full: the save fails with a clear message", rc == -1 && strstr(err, "disk space"), "rc %d: %s", rc, err);
    printf("   message: %s\n", err);
    read_latest_txt(dir, latest, sizeof latest);
    CHECK("disk full: no partial file, latest.txt unchanged",
          !file_exists(dir, "checkpoint-00000002.safetensors") && count_names(dir, ".tmp.") == 0 &&
              strcmp(latest, "checkpoint-00000001.safetensors") == 0,
          "latest '%s', %d temporary files", latest, count_names(dir, ".tmp."));
    CheckpointState s = {.run_json = RUN_JSON};
    rc = checkpoint_load(dir, &s, a.m, &a.t.opt, err, sizeof err);
    CHECK("disk full: the previous checkpoint still loads", rc == 0 && s.step == 1, "%s", err);
    model_close(&a);
}

/* Every checkpoint-looking file loads; latest.txt, if present, names one; load(dir) works. */
static int verify_dir(const char *dir, Model *probe, int64_t *latest_step, char *why, size_t len) {
    DIR *d = opendir(dir);
    struct dirent *de;
    int ok = 1;
    char err[4096];
    while (ok && d && (de = readdir(d)) != NULL) {
        if (strstr(de->d_name, ".tmp.") || de->d_name[0] == '.' || !strcmp(de->d_name, "latest.txt")) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        CheckpointState s = {.run_json = RUN_JSON};
        if (checkpoint_load(p, &s, probe->m, &probe->t.opt, err, sizeof err) != 0) {
            snprintf(why, len, "%s does not load: %s", de->d_name, err);
            ok = 0;
        }
    }
    if (d) closedir(d);
    if (!ok) return 0;
    char latest[512];
    read_latest_txt(dir, latest, sizeof latest);
    if (latest[0] && !file_exists(dir, latest)) {
        snprintf(why, len, "latest.txt names %s, which does not exist", latest);
        return 0;
    }
    CheckpointState s = {.run_json = RUN_JSON};
    if (checkpoint_load(dir, &s, probe->m, &probe->t.opt, err, sizeof err) != 0) {
        snprintf(why, len, "load(dir): %s", err);
        return 0;
    }
    *latest_step = s.step;
    return 1;
}

/* Waits until a temporary checkpoint file exists in dir (a save is in progress), up to 10 s. */
static int wait_for_temp(const char *dir) {
    for (int i = 0; i < 20000; i++) {
        if (count_names(dir, ".safetensors.tmp.") > 0) return 1;
        usleep(500);
    }
    return 0;
}

static void test_kill9(void) {
    char dir[600], why[16384] = "";
    sub_dir("kill9", dir, sizeof dir);
    mkdir(dir, 0755);
    Model probe;
    model_open(&probe, 32, 0, 9, NULL);
    int rounds = 10, ok = 1, mid_write = 0;
    long long next = 1;
    Rng r = {777, 0};
    for (int round = 0; round < rounds && ok; round++) {
        int fds[2];
        if (pipe(fds) != 0) break;
        char start[32];
        snprintf(start, sizeof start, "%lld", next);
        char *args[] = {"test_checkpoint", "--child-saver", dir, start, NULL};
        pid_t pid = spawn_self(args, fds[1]);
        close(fds[1]);
        char c = 0;
        ssize_t got = read(fds[0], &c, 1);
        close(fds[0]);
        if (got != 1) {
            snprintf(why, sizeof why, "round %d: the child did not start", round);
            ok = 0;
            kill(pid, SIGKILL);
            wait_exit(pid);
            break;
        }
        if (round % 2 == 0) {
            usleep((useconds_t)(50000 + rng_next_uniform(&r) * 700000)); /* any moment */
        } else {
            wait_for_temp(dir); /* certainly in the middle of a save */
            usleep((useconds_t)(rng_next_uniform(&r) * 20000));
        }
        kill(pid, SIGKILL);
        wait_exit(pid);
        mid_write += count_names(dir, ".tmp.") > 0;
        int64_t latest = 0;
        ok = verify_dir(dir, &probe, &latest, why, sizeof why);
        next = latest + 1;
    }
    CHECK("kill -9 during saves never leaves a corrupt checkpoint", ok, "%s", why);
    printf("   %d kills, %d of them left a temporary file (killed mid-write); last step %lld\n", rounds,
           mid_write, next - 1);
    CHECK("kill -9: some kills landed in the middle of a write", mid_write > 0, "no kill hit a save in progress");
    model_close(&probe);
}

#define RESUME_TOTAL 6
#define RESUME_AT 3

static void test_resume_bitwise(void) {
    char dir[600], err[16384], out[700], out2[700];
    sub_dir("resume", dir, sizeof dir);
    OptimConfig oc = resume_optim();
    SynthBatch sb;
    synth_batch_alloc(&sb, BATCH, SIZE, SIZE, 3);
    double loss[RESUME_TOTAL], norm[RESUME_TOTAL];
    /* uninterrupted */
    Model a;
    model_open(&a, 32, 1, 1, &oc);
    int rc = 0;
    for (int i = 0; i < RESUME_TOTAL && rc == 0; i++) {
        StepResult res;
        rc = train_one(&a, &sb, i, &res, err, sizeof err);
        loss[i] = res.losses.total;
        norm[i] = res.grad_norm;
    }
    CHECK("resume: uninterrupted run", rc == 0, "%s", err);
    float *final_a = host_copy(a.m, a.m->ps.train_data, a.m->ps.n_train);
    size_t n_train = a.m->ps.n_train;
    model_close(&a);
    /* interrupted at RESUME_AT: checkpoint, then a fresh process continues */
    Model b;
    model_open(&b, 32, 1, 1, &oc);
    int same = 1;
    for (int i = 0; i < RESUME_AT && rc == 0; i++) {
        StepResult res;
        rc = train_one(&b, &sb, i, &res, err, sizeof err);
        same &= res.losses.total == loss[i];
    }
    CheckpointState s = {.step = RESUME_AT, .epoch = RESUME_AT / STEPS_PER_EPOCH,
                         .batch_pos = RESUME_AT % STEPS_PER_EPOCH, .seed = 42,
                         .lr = lr_at_epoch(oc.lr, RESUME_AT / STEPS_PER_EPOCH, oc.lr_drop),
                         .lr_backbone = lr_at_epoch(oc.lr_backbone, RESUME_AT / STEPS_PER_EPOCH, oc.lr_drop),
                         .run_json = RUN_JSON};
    rc = rc ? rc : checkpoint_save(dir, &s, b.m, &b.t.opt, 2, err, sizeof err);
    model_close(&b);
    CHECK("resume: first part repeats the uninterrupted losses and saves", rc == 0 && same, "%s", err);

    snprintf(out, sizeof out, "%s/continued.bin", g_root);
    snprintf(out2, sizeof out2, "%s/weights_only.bin", g_root);
    char total[16];
    snprintf(total, sizeof total, "%d", RESUME_TOTAL);
    char *args[] = {"test_checkpoint", "--child-resume", dir, out, total, "0", NULL};
    int code = wait_exit(spawn_self(args, -1));
    char *args2[] = {"test_checkpoint", "--child-resume", dir, out2, total, "1", NULL};
    int code2 = wait_exit(spawn_self(args2, -1));
    CHECK("resume: the continuing processes ran", code == 0 && code2 == 0, "exit codes %d, %d", code, code2);

    int n_cont = RESUME_TOTAL - RESUME_AT;
    double cont[2 * RESUME_TOTAL], ctrl[2 * RESUME_TOTAL];
    float *final_b = malloc(n_train * sizeof(float) + 1);
    FILE *f = fopen(out, "rb"), *g = fopen(out2, "rb");
    int read_ok = f && g && fread(cont, sizeof(double), 2 * n_cont, f) == (size_t)(2 * n_cont) &&
                  fread(final_b, sizeof(float), n_train, f) == n_train &&
                  fread(ctrl, sizeof(double), 2 * n_cont, g) == (size_t)(2 * n_cont);
    if (f) fclose(f);
    if (g) fclose(g);
    int bitwise = read_ok, ctrl_differs = 0;
    for (int k = 0; read_ok && k < n_cont; k++) {
        int i = RESUME_AT + k;
        printf("   step %d: loss %.17g uninterrupted, %.17g resumed, %.17g weights only; grad norm %.17g / %.17g\n",
               i + 1, loss[i], cont[2 * k], ctrl[2 * k], norm[i], cont[2 * k + 1]);
        bitwise &= memcmp(&cont[2 * k], &loss[i], sizeof(double)) == 0 &&
                   memcmp(&cont[2 * k + 1], &norm[i], sizeof(double)) == 0;
        ctrl_differs |= memcmp(&ctrl[2 * k], &loss[i], sizeof(double)) != 0;
    }
    CHECK("resume: losses and gradient norms bitwise identical to the uninterrupted run", bitwise,
          "see the steps above");
    CHECK("resume: final parameters bitwise identical",
          read_ok && memcmp(final_a, final_b, n_train * sizeof(float)) == 0, "parameters differ");
    CHECK("resume: without the optimizer state the losses differ (the check can fail)", read_ok && ctrl_differs,
          "resuming from the weights alone gave the same losses");
    free(final_a);
    free(final_b);
    synth_batch_free(&sb);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--child-saver") == 0) return child_saver(argv[2], atoll(argv[3]));
    if (argc == 6 && strcmp(argv[1], "--child-resume") == 0)
        return child_resume(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    make_root();
    printf("files under %s\n", g_root);
    test_round_trip();
    test_keep_last_and_latest();
    test_corrupt_fallback();
    test_mismatch();
    test_disk_full();
    test_kill9();
    test_resume_bitwise();
    rm_tree(g_root);
    return test_finish();
}
