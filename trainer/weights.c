/* weights.c - see weights.h */
#include "weights.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "safetensors.h"
#include "weight_names.h"

/* A file tensor seen under its reference name; HF q/k/v projections are slices (part 0/1/2) of
 * the reference's packed in_proj tensors. */
typedef struct {
    char name[PARAM_NAME_LEN];
    const StTensor *t;
    int part; /* -1: whole tensor; 0/1/2: q/k/v rows of a packed in_proj */
    int used;
} Entry;

typedef struct {
    const StFile *f;
    StFile own;   /* the file when opened here (wf_open), else unused */
    int owns;
    Entry *e;
    int n;
} WeightFile;

static void wf_close(WeightFile *wf) {
    free(wf->e);
    if (wf->owns) st_close(&wf->own);
}

/* Indexes the model tensors of an opened file under their reference names. */
static void wf_index(WeightFile *wf, const StFile *f) {
    wf->f = f;
    int hf = weight_names_are_hf(f);
    wf->e = calloc((size_t)f->n + 1, sizeof(Entry));
    for (int i = 0; i < f->n; i++) {
        const StTensor *t = &f->tensors[i];
        Entry *e = &wf->e[wf->n];
        e->t = t;
        e->part = -1;
        if (hf) {
            if (weight_name_from_hf(t->name, e->name, sizeof(e->name), &e->part) != 1) continue;
        } else {
            if (strstr(t->name, "num_batches_tracked")) continue; /* dropped, as FrozenBatchNorm2d */
            if (strncmp(t->name, WEIGHTS_OPTIM_PREFIX, strlen(WEIGHTS_OPTIM_PREFIX)) == 0)
                continue; /* a checkpoint's optimizer state, not a model tensor */
            snprintf(e->name, sizeof(e->name), "%s", t->name);
        }
        wf->n++;
    }
}

static int wf_open(WeightFile *wf, const char *path, char *err, size_t errlen) {
    memset(wf, 0, sizeof(*wf));
    if (st_open(path, &wf->own, err, errlen) != 0) return -1;
    wf->owns = 1;
    wf_index(wf, &wf->own);
    return 0;
}

static Entry *wf_find(WeightFile *wf, const char *name, int part) {
    for (int i = 0; i < wf->n; i++)
        if (wf->e[i].part == part && strcmp(wf->e[i].name, name) == 0) return &wf->e[i];
    return NULL;
}

static int wf_has(WeightFile *wf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int wf_has(WeightFile *wf, const char *fmt, ...) {
    char name[PARAM_NAME_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    return wf_find(wf, name, -1) || wf_find(wf, name, 0);
}

/* First dim of a tensor (of the whole packed tensor for in_proj slices), or -1. */
static long wf_dim(WeightFile *wf, const char *name, int d) {
    Entry *e = wf_find(wf, name, -1);
    if (e) return e->t->ndim > d ? (long)e->t->shape[d] : -1;
    e = wf_find(wf, name, 0);
    if (e) return e->t->ndim > d ? (long)e->t->shape[d] * (d == 0 ? 3 : 1) : -1;
    return -1;
}

static int count_layers(WeightFile *wf, const char *fmt) {
    int n = 0;
    while (n < 1000 && wf_has(wf, fmt, n)) n++;
    return n;
}

static int parse_bool_meta(const char *v, int *out) {
    if (!v) return 0;
    if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "1")) { *out = 1; return 0; }
    if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "0")) { *out = 0; return 0; }
    return -1;
}

int weights_infer_config(const char *path, DetrConfig *cfg, char *err, size_t errlen) {
    WeightFile wf;
    if (wf_open(&wf, path, err, errlen) != 0) return -1;
    memset(cfg, 0, sizeof(*cfg));
    cfg->dropout = 0.1f;
    cfg->aux_loss = 1;
    int rc = -1;
    int bottleneck = wf_has(&wf, "backbone.0.body.layer1.0.conv3.weight");
    int l3 = count_layers(&wf, "backbone.0.body.layer3.%d.conv1.weight");
    if (bottleneck) cfg->depth = l3 == 6 ? 50 : l3 == 23 ? 101 : 0;
    else cfg->depth = l3 == 2 ? 18 : l3 == 6 ? 34 : 0;
    if (!cfg->depth) {
        snprintf(err, errlen, "%s: cannot tell the ResNet depth: %s blocks with %d blocks in layer3 "
                 "(expected 2 or 6 basic blocks for ResNet-18/34, 6 or 23 bottlenecks for 50/101); "
                 "is this a DETR checkpoint with backbone.0.body.* tensors?",
                 path, bottleneck ? "bottleneck" : "basic", l3);
        goto done;
    }
    cfg->hidden = (int)wf_dim(&wf, "input_proj.weight", 0);
    cfg->enc_layers = count_layers(&wf, "transformer.encoder.layers.%d.linear1.weight");
    cfg->dec_layers = count_layers(&wf, "transformer.decoder.layers.%d.linear1.weight");
    cfg->ffn = (int)wf_dim(&wf, cfg->dec_layers ? "transformer.decoder.layers.0.linear1.weight"
                                                : "transformer.encoder.layers.0.linear1.weight", 0);
    cfg->queries = (int)wf_dim(&wf, "query_embed.weight", 0);
    cfg->num_classes = (int)wf_dim(&wf, "class_embed.weight", 0) - 1;
    cfg->pre_norm = wf_has(&wf, "transformer.encoder.norm.weight");
    const char *missing = cfg->hidden <= 0 ? "input_proj.weight"
                        : cfg->dec_layers <= 0 ? "transformer.decoder.layers.0.*"
                        : cfg->ffn <= 0 ? "transformer.*.linear1.weight"
                        : cfg->queries <= 0 ? "query_embed.weight"
                        : cfg->num_classes <= 0 ? "class_embed.weight" : NULL;
    if (missing) {
        snprintf(err, errlen, "%s: cannot infer the model shape: tensor %s is missing or malformed",
                 path, missing);
        goto done;
    }
    const char *nh = st_meta(wf.f, "nheads");
    cfg->nheads = 8;
    if (nh) {
        char *end;
        long v = strtol(nh, &end, 10);
        if (*end || v <= 0 || cfg->hidden % v) {
            snprintf(err, errlen, "%s: __metadata__ nheads=\"%s\" is not a positive divisor of the "
                     "hidden size %d", path, nh, cfg->hidden);
            goto done;
        }
        cfg->nheads = (int)v;
    } else if (cfg->hidden % 8) {
        snprintf(err, errlen, "%s: hidden size %d is not divisible by the default 8 heads; add "
                 "__metadata__ \"nheads\"", path, cfg->hidden);
        goto done;
    }
    if (parse_bool_meta(st_meta(wf.f, "dilation"), &cfg->dilation) != 0) {
        snprintf(err, errlen, "%s: __metadata__ dilation=\"%s\": expected \"true\" or \"false\"", path,
                 st_meta(wf.f, "dilation"));
        goto done;
    }
    rc = 0;
done:
    wf_close(&wf);
    return rc;
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

static void shape_str(char *out, size_t len, int ndim, const long *shape) {
    out[0] = 0;
    appendf(out, len, "[");
    for (int i = 0; i < ndim; i++) appendf(out, len, i ? ", %ld" : "%ld", shape[i]);
    appendf(out, len, "]");
}

/* Checks the file tensor(s) for one parameter; on a match reads them into host (numel floats). */
static int load_one(WeightFile *wf, const Param *p, float *host, char *problems, size_t plen,
                    int *nproblems) {
    long want[PARAM_MAX_DIMS];
    for (int i = 0; i < p->ndim; i++) want[i] = p->shape[i];
    char ws[64], fs[64];
    shape_str(ws, sizeof(ws), p->ndim, want);
    Entry *whole = wf_find(wf, p->name, -1);
    Entry *parts[3] = {wf_find(wf, p->name, 0), wf_find(wf, p->name, 1), wf_find(wf, p->name, 2)};
    if (!whole && !(parts[0] && parts[1] && parts[2])) {
        appendf(problems, plen, "  missing: %s, expected shape %s\n", p->name, ws);
        (*nproblems)++;
        return -1;
    }
    int nsrc = whole ? 1 : 3;
    Entry **src = whole ? &whole : parts;
    size_t off = 0;
    for (int s = 0; s < nsrc; s++) {
        const StTensor *t = src[s]->t;
        src[s]->used = 1;
        long got[ST_MAX_DIMS];
        for (int i = 0; i < t->ndim; i++) got[i] = (long)t->shape[i];
        if (nsrc == 3 && t->ndim > 0) got[0] *= 3; /* compare the packed shape */
        int ok = t->ndim == p->ndim;
        for (int i = 0; ok && i < p->ndim; i++) ok = got[i] == want[i];
        if (!ok) {
            shape_str(fs, sizeof(fs), t->ndim, got);
            appendf(problems, plen, "  wrong shape: %s (file tensor %s), expected %s, found %s%s\n",
                    p->name, t->name, ws, fs, nsrc == 3 ? " (q, k, v stacked)" : "");
            (*nproblems)++;
            return -1;
        }
        char e2[256];
        if (st_read_f32(wf->f, t, host + off, e2, sizeof(e2)) != 0) {
            appendf(problems, plen, "  %s: %s\n", p->name, e2);
            (*nproblems)++;
            return -1;
        }
        off += st_numel(t);
    }
    return 0;
}

int weights_load_file(Detr *m, const StFile *f, char *err, size_t errlen) {
    WeightFile wf;
    memset(&wf, 0, sizeof(wf));
    wf_index(&wf, f);
    const char *path = f->path;
    ParamSet *ps = &m->ps;
    size_t plen = 16384;
    char *problems = calloc(plen, 1);
    int nproblems = 0;
    float **host = calloc((size_t)ps->n, sizeof(float *));
    for (int i = 0; i < ps->n; i++) {
        host[i] = malloc(ps->p[i].numel * sizeof(float));
        if (load_one(&wf, &ps->p[i], host[i], problems, plen, &nproblems) != 0) {
            free(host[i]);
            host[i] = NULL;
        }
    }
    for (int i = 0; i < wf.n; i++)
        if (!wf.e[i].used) {
            appendf(problems, plen, "  unexpected: %s (not a tensor of this model)\n", wf.e[i].t->name);
            nproblems++;
        }
    int rc = 0;
    if (nproblems) {
        snprintf(err, errlen, "%s: %d tensor problem%s for a model of depth %d, hidden %d, %d+%d "
                 "layers, FFN %d, %d queries, %d classes:\n%s"
                 "HINT: check that the weights belong to this model shape (shape options must "
                 "match the file, or give no shape options and let them be inferred).",
                 path, nproblems, nproblems > 1 ? "s" : "", m->cfg.depth, m->cfg.hidden,
                 m->cfg.enc_layers, m->cfg.dec_layers, m->cfg.ffn, m->cfg.queries,
                 m->cfg.num_classes, problems);
        rc = -1;
    } else {
        for (int i = 0; i < ps->n; i++)
            m->be->upload(ps->p[i].data, host[i], ps->p[i].numel * sizeof(float));
        detr_prepare(m);
    }
    for (int i = 0; i < ps->n; i++) free(host[i]);
    free(host);
    free(problems);
    wf_close(&wf);
    return rc;
}

int weights_load(Detr *m, const char *path, char *err, size_t errlen) {
    StFile f;
    if (st_open(path, &f, err, errlen) != 0) return -1;
    int rc = weights_load_file(m, &f, err, errlen);
    st_close(&f);
    return rc;
}

void weights_add_to_writer(Detr *m, StWriter *w) {
    ParamSet *ps = &m->ps;
    for (int i = 0; i < ps->n; i++) {
        const Param *p = &ps->p[i];
        float *host = malloc(p->numel * sizeof(float)); /* [numel] */
        m->be->download(host, p->data, p->numel * sizeof(float));
        int64_t shape[PARAM_MAX_DIMS];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        st_writer_add_copy(w, p->name, ST_F32, p->ndim, shape, host);
        free(host);
    }
    char nh[16];
    snprintf(nh, sizeof(nh), "%d", m->cfg.nheads);
    st_writer_meta(w, "nheads", nh);
    st_writer_meta(w, "dilation", m->cfg.dilation ? "true" : "false");
    st_writer_meta(w, "pre_norm", m->cfg.pre_norm ? "true" : "false");
    st_writer_meta(w, "format", "detr-c reference names");
}

int weights_save(Detr *m, const char *path, char *err, size_t errlen) {
    StWriter *w = st_writer_new();
    weights_add_to_writer(m, w);
    int rc = st_writer_save(w, path, err, errlen);
    st_writer_free(w);
    return rc;
}
