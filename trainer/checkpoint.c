/* checkpoint.c - see checkpoint.h */
#include "checkpoint.h"
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "rng.h"
#include "safetensors.h"
#include "weights.h"

#define NAME_PREFIX "checkpoint-"
#define NAME_SUFFIX ".safetensors"
#define OPTIM_M WEIGHTS_OPTIM_PREFIX "m."
#define OPTIM_V WEIGHTS_OPTIM_PREFIX "v."

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Appends printf text to a bounded buffer. */
static void appendf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t len, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

/* ---- file names ---- */

void checkpoint_path(const char *dir, int64_t step, char *out, size_t len) {
    snprintf(out, len, "%s/" NAME_PREFIX "%08lld" NAME_SUFFIX, dir, (long long)step);
}

/* 1 if name is exactly "checkpoint-<digits>.safetensors" (temporary files are not), with *step. */
static int parse_checkpoint_name(const char *name, int64_t *step) {
    size_t np = strlen(NAME_PREFIX), ns = strlen(NAME_SUFFIX), n = strlen(name);
    if (n <= np + ns || strncmp(name, NAME_PREFIX, np) != 0 || strcmp(name + n - ns, NAME_SUFFIX) != 0)
        return 0;
    int64_t v = 0;
    for (size_t i = np; i < n - ns; i++) {
        if (name[i] < '0' || name[i] > '9' || v > (INT64_MAX - 9) / 10) return 0;
        v = v * 10 + (name[i] - '0');
    }
    *step = v;
    return 1;
}

typedef struct {
    int64_t step;
    char name[256];
} CkptEntry;

static int cmp_step_desc(const void *a, const void *b) {
    int64_t x = ((const CkptEntry *)a)->step, y = ((const CkptEntry *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The checkpoint files of dir, highest step first. Returns the count (0 if dir cannot be read);
 * *out is malloc'd (free it). */
static int list_checkpoints(const char *dir, CkptEntry **out) {
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    CkptEntry *e = NULL;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int64_t step;
        if (!parse_checkpoint_name(de->d_name, &step) || strlen(de->d_name) >= sizeof(e->name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            CkptEntry *g = realloc(e, (size_t)cap * sizeof(CkptEntry));
            if (!g) break;
            e = g;
        }
        e[n].step = step;
        snprintf(e[n].name, sizeof(e[n].name), "%s", de->d_name);
        n++;
    }
    closedir(d);
    if (n > 1) qsort(e, (size_t)n, sizeof(CkptEntry), cmp_step_desc);
    *out = e;
    return n;
}

/* The file name latest.txt holds (validated as a checkpoint name), or 0 if none. */
static int read_latest(const char *dir, char *name, size_t len, int64_t *step) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/" CHECKPOINT_LATEST_FILE, dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512] = "";
    int ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    if (!ok) return 0;
    line[strcspn(line, "\r\n")] = 0;
    if (strlen(line) >= len || !parse_checkpoint_name(line, step)) return 0;
    snprintf(name, len, "%s", line);
    return 1;
}

/* fsync of a folder, so renames and creations in it are durable. Best effort. */
static void sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Replaces dir/latest.txt atomically with "name\n". */
static int write_latest(const char *dir, const char *name, char *err, size_t errlen) {
    char path[4096], tmp[4200], line[300];
    snprintf(path, sizeof(path), "%s/" CHECKPOINT_LATEST_FILE, dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path);
    int n = snprintf(line, sizeof(line), "%s\n", name);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        set_err(err, errlen, "cannot create a temporary file for %s (%s)", path, strerror(errno));
        return -1;
    }
    int ok = fchmod(fd, 0644) == 0 && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    int saved = errno;
    if (close(fd) != 0 && ok) ok = 0, saved = errno;
    if (!ok || rename(tmp, path) != 0) {
        if (ok) saved = errno;
        unlink(tmp);
        set_err(err, errlen, "cannot write %s (%s): check free disk space", path, strerror(saved));
        return -1;
    }
    sync_dir(dir);
    return 0;
}

/* Deletes temporary files left by an interrupted save (ours only: checkpoint and latest.txt). */
static void remove_stale_temps(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        int ours = (strncmp(n, NAME_PREFIX, strlen(NAME_PREFIX)) == 0 && strstr(n, NAME_SUFFIX ".tmp.")) ||
                   strncmp(n, CHECKPOINT_LATEST_FILE ".tmp.", strlen(CHECKPOINT_LATEST_FILE ".tmp.")) == 0;
        if (!ours) continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, n);
        unlink(path);
    }
    closedir(d);
}

/* Deletes checkpoints with a step below `step` beyond the keep_last - 1 newest of them. */
static void prune(const char *dir, int64_t step, int keep_last) {
    if (keep_last <= 0) return;
    CkptEntry *e;
    int n = list_checkpoints(dir, &e), kept = 0;
    for (int i = 0; i < n; i++) {
        if (e[i].step >= step) continue;
        if (kept < keep_last - 1) {
            kept++;
            continue;
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e[i].name);
        unlink(path);
    }
    free(e);
}

int checkpoint_find_latest(const char *dir, char *path, size_t len) {
    char name[256];
    int64_t step;
    struct stat st;
    if (read_latest(dir, name, sizeof(name), &step)) {
        snprintf(path, len, "%s/%s", dir, name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return 0;
    }
    CkptEntry *e;
    int n = list_checkpoints(dir, &e);
    if (n > 0) snprintf(path, len, "%s/%s", dir, e[0].name);
    free(e);
    return n > 0 ? 0 : -1;
}

/* ---- checksum: a sum over tensors (order-free) of a 64-bit hash of name and bytes ---- */

static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    uint64_t tail = 0;
    if (n > i) memcpy(&tail, p + i, n - i);
    h = (h ^ tail) * 0x9E3779B97F4A7C15ull;
    return rng_hash64(h, n);
}

static uint64_t tensor_hash(const char *name, const void *data, size_t nbytes) {
    return hash_bytes(hash_bytes(0x636b7074ull, name, strlen(name)), data, nbytes);
}

/* The model's tensors, as weights_add_to_writer writes them. */
static uint64_t model_checksum(Detr *m) {
    uint64_t sum = 0;
    for (int i = 0; i < m->ps.n; i++) {
        const Param *p = &m->ps.p[i];
        float *h = malloc(p->numel * sizeof(float) + 1); /* [numel] */
        m->be->download(h, p->data, p->numel * sizeof(float));
        sum += tensor_hash(p->name, h, p->numel * sizeof(float));
        free(h);
    }
    return sum;
}

static uint64_t file_checksum(const StFile *f) {
    uint64_t sum = 0;
    for (int i = 0; i < f->n; i++)
        sum += tensor_hash(f->tensors[i].name, st_data(f, &f->tensors[i]),
                           f->tensors[i].end - f->tensors[i].begin);
    return sum;
}

/* ---- the config JSON ---- */

static void set_int(json_t *o, const char *k, long v) { json_object_set_new(o, k, json_integer(v)); }
static void set_real(json_t *o, const char *k, float v) { json_object_set_new(o, k, json_real(v)); }

/* {"model": shape and trainable set, "training": dropout and aux_loss, "optimizer": ..., "run":
 * run_json}; NULL with err if run_json is not a JSON object. */
static json_t *config_json(const Detr *m, const OptimConfig *oc, const char *run_json, char *err,
                           size_t errlen) {
    const DetrConfig *c = &m->cfg;
    json_t *run = NULL;
    if (run_json) {
        json_error_t je;
        run = json_loads(run_json, 0, &je);
        if (!run || !json_is_object(run)) {
            set_err(err, errlen, "checkpoint: the run options are not a JSON object (%s): %s",
                    run ? "not an object" : je.text, run_json);
            json_decref(run);
            return NULL;
        }
    }
    json_t *model = json_object(), *training = json_object(), *opt = json_object();
    set_int(model, "depth", c->depth);
    set_int(model, "dilation", c->dilation);
    set_int(model, "hidden", c->hidden);
    set_int(model, "nheads", c->nheads);
    set_int(model, "enc_layers", c->enc_layers);
    set_int(model, "dec_layers", c->dec_layers);
    set_int(model, "ffn", c->ffn);
    set_int(model, "queries", c->queries);
    set_int(model, "num_classes", c->num_classes);
    set_int(model, "pre_norm", c->pre_norm);
    set_int(model, "trainable_backbone", m->ps.n_train_group[GROUP_BACKBONE] > 0);
    set_real(training, "dropout", c->dropout);
    set_int(training, "aux_loss", c->aux_loss);
    set_real(opt, "lr", oc->lr);
    set_real(opt, "lr_backbone", oc->lr_backbone);
    set_real(opt, "weight_decay", oc->weight_decay);
    set_real(opt, "beta1", oc->beta1);
    set_real(opt, "beta2", oc->beta2);
    set_real(opt, "eps", oc->eps);
    set_real(opt, "clip", oc->clip);
    set_int(opt, "lr_drop", oc->lr_drop);
    json_t *root = json_object();
    json_object_set_new(root, "model", model);
    json_object_set_new(root, "training", training);
    json_object_set_new(root, "optimizer", opt);
    if (run) json_object_set_new(root, "run", run);
    return root;
}

/* A value for messages: reals with 9 significant digits (floats round-trip), others as JSON. */
static void value_str(const json_t *v, char *out, size_t len) {
    if (!v) {
        snprintf(out, len, "(none)");
    } else if (json_is_real(v)) {
        snprintf(out, len, "%.9g", json_real_value(v));
    } else {
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS);
        snprintf(out, len, "%s", s ? s : "?");
        free(s);
    }
}

/* Lists every key of section whose value differs between the checkpoint and this run into
 * `out`; returns the number of differences. */
static int diff_section(const char *section, const json_t *saved, const json_t *cur, char *out,
                        size_t len) {
    int n = 0;
    const char *key;
    json_t *v;
    char a[160], b[160];
    json_object_foreach((json_t *)saved, key, v) {
        json_t *w = json_object_get(cur, key);
        if (w && json_equal(v, w)) continue;
        value_str(v, a, sizeof(a));
        value_str(w, b, sizeof(b));
        appendf(out, len, "  %s.%s: checkpoint %s, this run %s\n", section, key, a, b);
        n++;
    }
    json_object_foreach((json_t *)cur, key, v) {
        if (json_object_get(saved, key)) continue;
        value_str(v, b, sizeof(b));
        appendf(out, len, "  %s.%s: checkpoint (none), this run %s\n", section, key, b);
        n++;
    }
    return n;
}

/* Compares the checkpoint's config with this run's. Differences in "model" are errors;
 * the others are errors unless allow_changes (then listed in warnings). "run" is compared only
 * when this run gives one. Returns 0, or -1 with the differences in problems. */
static int compare_config(const json_t *saved, const json_t *cur, int allow_changes, char *problems,
                          size_t plen, char *warnings, size_t wlen) {
    static const char *const sections[] = {"model", "training", "optimizer", "run"};
    int nerr = 0;
    for (int i = 0; i < 4; i++) {
        const json_t *s = json_object_get(saved, sections[i]), *c = json_object_get(cur, sections[i]);
        if (i == 3 && !c) continue;
        json_t *empty = json_object();
        int strict = i == 0 || !allow_changes;
        int n = diff_section(sections[i], s ? s : empty, c ? c : empty, strict ? problems : warnings,
                             strict ? plen : wlen);
        json_decref(empty);
        if (strict) nerr += n;
    }
    return nerr ? -1 : 0;
}

/* ---- save ---- */

static int ensure_dir(const char *dir, char *err, size_t errlen) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return 0;
        set_err(err, errlen, "checkpoint folder %s: a file has that name", dir);
        return -1;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        set_err(err, errlen, "cannot create the checkpoint folder %s (%s)", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Adds optim.m.<name> / optim.v.<name> for every trainable tensor, borrowing the host copies
 * m_host / v_host [n_train] of the moments; returns their checksum share. */
static uint64_t add_moments(StWriter *w, const ParamSet *ps, const float *m_host, const float *v_host) {
    uint64_t sum = 0;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        if (p->group == GROUP_FROZEN) continue;
        int64_t shape[PARAM_MAX_DIMS];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        char name[PARAM_NAME_LEN + 16];
        const float *src[2] = {m_host + p->offset, v_host + p->offset};
        const char *prefix[2] = {OPTIM_M, OPTIM_V};
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof(name), "%s%s", prefix[k], p->name);
            st_writer_add_copy(w, name, ST_F32, p->ndim, shape, src[k]);
            sum += tensor_hash(name, src[k], p->numel * sizeof(float));
        }
    }
    return sum;
}

static void put_i64(StWriter *w, const char *key, long long v) {
    char s[32];
    snprintf(s, sizeof(s), "%lld", v);
    st_writer_meta(w, key, s);
}

static void put_float(StWriter *w, const char *key, float v) {
    char s[32];
    snprintf(s, sizeof(s), "%.9g", v);
    st_writer_meta(w, key, s);
}

int checkpoint_save(const char *dir, const CheckpointState *s, Detr *m, const AdamW *opt,
                    int keep_last, char *err, size_t errlen) {
    if (s->step < 0 || s->epoch < 0 || s->batch_pos < 0) {
        set_err(err, errlen, "checkpoint: negative step %lld, epoch %d or batch position %lld",
                (long long)s->step, s->epoch, (long long)s->batch_pos);
        return -1;
    }
    if (ensure_dir(dir, err, errlen) != 0) return -1;
    json_t *cfg = config_json(m, &opt->cfg, s->run_json, err, errlen);
    if (!cfg) return -1;
    char *cfg_text = json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(cfg);
    remove_stale_temps(dir);

    const ParamSet *ps = &m->ps;
    float *m_host = malloc(ps->n_train * sizeof(float) + 1); /* [n_train] */
    float *v_host = malloc(ps->n_train * sizeof(float) + 1); /* [n_train] */
    m->be->download(m_host, opt->m, ps->n_train * sizeof(float));
    m->be->download(v_host, opt->v, ps->n_train * sizeof(float));
    StWriter *w = st_writer_new();
    weights_add_to_writer(m, w);
    uint64_t sum = model_checksum(m) + add_moments(w, ps, m_host, v_host);
    free(m_host);
    free(v_host);

    char hex[32];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)sum);
    st_writer_meta(w, "format", CHECKPOINT_FORMAT);
    put_i64(w, "checkpoint_version", CHECKPOINT_VERSION);
    put_i64(w, "step", s->step);
    put_i64(w, "epoch", s->epoch);
    put_i64(w, "batch_pos", s->batch_pos);
    put_i64(w, "optimizer_step", opt->step);
    char seed[32];
    snprintf(seed, sizeof(seed), "%llu", (unsigned long long)s->seed);
    st_writer_meta(w, "seed", seed);
    put_float(w, "lr", s->lr);
    put_float(w, "lr_backbone", s->lr_backbone);
    if (s->loss_scale > 0) {
        char scale[40];
        snprintf(scale, sizeof(scale), "%.17g", s->loss_scale);
        st_writer_meta(w, "loss_scale", scale);
        put_i64(w, "loss_scale_growth_tracker", s->loss_scale_tracker);
    }
    st_writer_meta(w, "rng", "counter-based: dropout from (seed, step), data from (seed, epoch, "
                             "sample); no generator state");
    st_writer_meta(w, "config", cfg_text ? cfg_text : "{}");
    st_writer_meta(w, "checksum", hex);
    free(cfg_text);

    char path[4096];
    checkpoint_path(dir, s->step, path, sizeof(path));
    int rc = st_writer_save(w, path, err, errlen);
    st_writer_free(w);
    if (rc != 0) return -1;
    const char *name = strrchr(path, '/') + 1;
    char e2[1024];
    if (write_latest(dir, name, e2, sizeof(e2)) != 0) {
        set_err(err, errlen, "%s was written, but %s", path, e2);
        return -1;
    }
    prune(dir, s->step, keep_last);
    return 0;
}

/* ---- load ---- */

typedef enum { LOAD_OK, LOAD_UNREADABLE, LOAD_MISMATCH } LoadResult;

static int meta_ll(const StFile *f, const char *key, long long lo, long long *out, char *err,
                   size_t errlen) {
    const char *v = st_meta(f, key);
    char *end;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo) {
        set_err(err, errlen, "%s: __metadata__ \"%s\" is %s%s%s (expected an integer >= %lld)", f->path, key,
                v ? "\"" : "missing", v ? v : "", v ? "\"" : "", lo);
        return -1;
    }
    *out = x;
    return 0;
}

static int meta_float(const StFile *f, const char *key, float *out, char *err, size_t errlen) {
    const char *v = st_meta(f, key);
    char *end;
    float x = v ? strtof(v, &end) : 0;
    if (!v || !*v || *end) {
        set_err(err, errlen, "%s: __metadata__ \"%s\" is %s%s%s (expected a number)", f->path, key,
                v ? "\"" : "missing", v ? v : "", v ? "\"" : "");
        return -1;
    }
    *out = x;
    return 0;
}

/* The scalars of the file into s (run_json, allow_changes and path untouched). */
static int read_scalars(const StFile *f, CheckpointState *s, long long *opt_step, char *err, size_t errlen) {
    long long step, epoch, pos;
    const char *seed = st_meta(f, "seed");
    char *end;
    if (meta_ll(f, "step", 0, &step, err, errlen) || meta_ll(f, "epoch", 0, &epoch, err, errlen) ||
        meta_ll(f, "batch_pos", 0, &pos, err, errlen) ||
        meta_ll(f, "optimizer_step", 0, opt_step, err, errlen) ||
        meta_float(f, "lr", &s->lr, err, errlen) || meta_float(f, "lr_backbone", &s->lr_backbone, err, errlen))
        return -1;
    errno = 0;
    unsigned long long sd = seed ? strtoull(seed, &end, 10) : 0;
    if (!seed || !*seed || *end || errno || epoch > 0x7fffffff) {
        set_err(err, errlen, "%s: __metadata__ \"%s\" is missing or malformed", f->path,
                !seed || !*seed || *end || errno ? "seed" : "epoch");
        return -1;
    }
    s->loss_scale = 0;
    s->loss_scale_tracker = 0;
    const char *scale = st_meta(f, "loss_scale");
    if (scale) { /* fp16 runs */
        long long tracker;
        double x = strtod(scale, &end);
        if (!*scale || *end || !(x > 0) || !isfinite(x)) {
            set_err(err, errlen, "%s: __metadata__ \"loss_scale\" is \"%s\" (expected a positive number)",
                    f->path, scale);
            return -1;
        }
        if (meta_ll(f, "loss_scale_growth_tracker", 0, &tracker, err, errlen)) return -1;
        s->loss_scale = x;
        s->loss_scale_tracker = tracker;
    }
    s->step = step;
    s->epoch = (int)epoch;
    s->batch_pos = pos;
    s->seed = sd;
    return 0;
}

/* Reads optim.<m|v>.<name> of every trainable tensor into m_host / v_host [n_train]; lists
 * missing, mis-shaped and unexpected optimizer tensors in problems. Returns their count. */
static int read_moments(const StFile *f, const ParamSet *ps, float *m_host, float *v_host,
                        char *problems, size_t plen) {
    int n = 0, matched = 0;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        if (p->group == GROUP_FROZEN) continue;
        const char *prefix[2] = {OPTIM_M, OPTIM_V};
        float *dst[2] = {m_host + p->offset, v_host + p->offset};
        for (int k = 0; k < 2; k++) {
            char name[PARAM_NAME_LEN + 16];
            snprintf(name, sizeof(name), "%s%s", prefix[k], p->name);
            const StTensor *t = st_find(f, name);
            if (!t) {
                appendf(problems, plen, "  missing: %s (the optimizer state of a trainable tensor)\n", name);
                n++;
                continue;
            }
            matched++;
            int ok = t->ndim == p->ndim;
            for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
            char e2[256];
            if (!ok) {
                appendf(problems, plen, "  wrong shape: %s, expected that of %s\n", name, p->name);
                n++;
            } else if (st_read_f32(f, t, dst[k], e2, sizeof(e2)) != 0) {
                appendf(problems, plen, "  %s: %s\n", name, e2);
                n++;
            }
        }
    }
    int optim_tensors = 0;
    for (int i = 0; i < f->n; i++)
        optim_tensors += strncmp(f->tensors[i].name, WEIGHTS_OPTIM_PREFIX, strlen(WEIGHTS_OPTIM_PREFIX)) == 0;
    if (optim_tensors > matched) {
        for (int i = 0; i < f->n; i++) {
            const char *name = f->tensors[i].name;
            if (strncmp(name, WEIGHTS_OPTIM_PREFIX, strlen(WEIGHTS_OPTIM_PREFIX)) != 0) continue;
            const char *param = name + strlen(OPTIM_M);
            const Param *p = (!strncmp(name, OPTIM_M, strlen(OPTIM_M)) || !strncmp(name, OPTIM_V, strlen(OPTIM_V)))
                                 ? params_find((ParamSet *)ps, param) : NULL;
            if (p && p->group != GROUP_FROZEN) continue;
            appendf(problems, plen, "  unexpected: %s (%s)\n", name,
                    p ? "that tensor is frozen in this run" : "no such trainable tensor");
            n++;
        }
    }
    return n;
}

/* Checks the file's identity, version and checksum. */
static LoadResult check_file(const StFile *f, char *err, size_t errlen) {
    const char *fmt = st_meta(f, "format");
    if (!fmt || strcmp(fmt, CHECKPOINT_FORMAT) != 0) {
        set_err(err, errlen, "%s is not a detr-c training checkpoint (__metadata__ format is %s%s%s): it "
                "has no optimizer state to resume from; HINT: start from its weights with --weights "
                "instead", f->path, fmt ? "\"" : "missing", fmt ? fmt : "", fmt ? "\"" : "");
        return LOAD_MISMATCH;
    }
    long long version;
    if (meta_ll(f, "checkpoint_version", 1, &version, err, errlen) != 0) return LOAD_MISMATCH;
    if (version > CHECKPOINT_VERSION) {
        set_err(err, errlen, "%s: checkpoint_version %lld was written by a newer detr-train (this one "
                "reads up to %d)", f->path, version, CHECKPOINT_VERSION);
        return LOAD_MISMATCH;
    }
    const char *sum = st_meta(f, "checksum");
    char hex[32];
    snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)file_checksum(f));
    if (!sum || strcmp(sum, hex) != 0) {
        set_err(err, errlen, "%s is corrupt: %s (checksum %s in the header, %s computed)", f->path,
                sum ? "its tensor bytes changed after it was written" : "it has no checksum",
                sum ? sum : "none", hex);
        return LOAD_UNREADABLE;
    }
    return LOAD_OK;
}

static LoadResult load_file(const char *path, CheckpointState *s, Detr *m, AdamW *opt, char *err,
                            size_t errlen) {
    StFile f;
    if (st_open(path, &f, err, errlen) != 0) return LOAD_UNREADABLE;
    LoadResult r = check_file(&f, err, errlen);
    CheckpointState got = *s;
    long long opt_step = 0;
    if (r == LOAD_OK && read_scalars(&f, &got, &opt_step, err, errlen) != 0) r = LOAD_MISMATCH;

    size_t plen = 16384, wlen = 4096;
    char *problems = calloc(plen, 1), *warnings = calloc(wlen, 1);
    json_t *cur = NULL, *saved = NULL;
    if (r == LOAD_OK) {
        json_error_t je;
        const char *text = st_meta(&f, "config");
        saved = text ? json_loads(text, 0, &je) : NULL;
        cur = config_json(m, &opt->cfg, s->run_json, err, errlen);
        if (!cur) {
            r = LOAD_MISMATCH;
        } else if (!saved || !json_is_object(saved)) {
            set_err(err, errlen, "%s: __metadata__ \"config\" is missing or not a JSON object", path);
            r = LOAD_MISMATCH;
        } else if (compare_config(saved, cur, s->allow_changes, problems, plen, warnings, wlen) != 0) {
            set_err(err, errlen, "checkpoint %s does not fit this run:\n%sHINT: resume with the options "
                    "of the run that wrote it%s", path, problems,
                    s->allow_changes ? "" : " (only the model shape and the trainable set must match "
                    "when changes are allowed)");
            r = LOAD_MISMATCH;
        }
    }
    const ParamSet *ps = &m->ps;
    float *m_host = calloc(ps->n_train + 1, sizeof(float)); /* [n_train] */
    float *v_host = calloc(ps->n_train + 1, sizeof(float)); /* [n_train] */
    if (r == LOAD_OK) {
        problems[0] = 0;
        int n = read_moments(&f, ps, m_host, v_host, problems, plen);
        if (n) {
            set_err(err, errlen, "%s: %d optimizer-state problem%s:\n%s", path, n, n > 1 ? "s" : "", problems);
            r = LOAD_MISMATCH;
        }
    }
    if (r == LOAD_OK && weights_load_file(m, &f, err, errlen) != 0) r = LOAD_MISMATCH;
    if (r == LOAD_OK) {
        m->be->upload(opt->m, m_host, ps->n_train * sizeof(float));
        m->be->upload(opt->v, v_host, ps->n_train * sizeof(float));
        opt->step = (int)opt_step;
        *s = got;
        snprintf(s->path, sizeof(s->path), "%s", path);
        if (warnings[0])
            fprintf(stderr, "warning: resuming from %s with changed options:\n%s", path, warnings);
    }
    free(m_host);
    free(v_host);
    free(problems);
    free(warnings);
    json_decref(cur);
    json_decref(saved);
    st_close(&f);
    return r;
}

/* The candidates of a folder in the order to try: latest.txt's file, then lower steps. */
static int candidates(const char *dir, CkptEntry **out) {
    CkptEntry *e;
    int n = list_checkpoints(dir, &e);
    char name[256];
    int64_t lstep;
    int li = -1;
    if (read_latest(dir, name, sizeof(name), &lstep))
        for (int i = 0; i < n; i++)
            if (strcmp(e[i].name, name) == 0) li = i;
    if (li > 0) { /* newer files than latest.txt's (from another history) are not candidates */
        memmove(e, e + li, (size_t)(n - li) * sizeof(CkptEntry));
        n -= li;
    }
    *out = e;
    return n;
}

int checkpoint_load(const char *path_or_dir, CheckpointState *s, Detr *m, AdamW *opt, char *err,
                    size_t errlen) {
    struct stat st;
    if (stat(path_or_dir, &st) != 0) {
        set_err(err, errlen, "cannot resume from %s: %s", path_or_dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return load_file(path_or_dir, s, m, opt, err, errlen) == LOAD_OK ? 0 : -1;
    CkptEntry *e;
    int n = candidates(path_or_dir, &e);
    if (n == 0) {
        set_err(err, errlen, "cannot resume from %s: the folder has no " NAME_PREFIX "*" NAME_SUFFIX
                " file; HINT: give the --out folder of the run, or a checkpoint file", path_or_dir);
        free(e);
        return -1;
    }
    size_t rlen = 8192;
    char *reasons = calloc(rlen, 1), one[2048];
    int rc = -1;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", path_or_dir, e[i].name);
        LoadResult r = load_file(path, s, m, opt, one, sizeof(one));
        if (r == LOAD_OK) {
            rc = 0;
            break;
        }
        if (r == LOAD_MISMATCH) {
            set_err(err, errlen, "%s", one);
            break;
        }
        fprintf(stderr, "warning: %s; %s\n", one, i + 1 < n ? "falling back to the previous checkpoint"
                                                             : "no older checkpoint left");
        appendf(reasons, rlen, "  %s\n", one);
        if (i + 1 == n)
            set_err(err, errlen, "cannot resume from %s: no readable checkpoint:\n%s", path_or_dir, reasons);
    }
    free(reasons);
    free(e);
    return rc;
}
