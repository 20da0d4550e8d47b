/* transformer.c - see transformer.h.
 *
 * Every sublayer is a residual block around a body (self-attention, cross-attention or FFN):
 *   post-norm:  out = LN(x + Drop(body(x)))
 *   pre-norm:   out = x + Drop(body(LN(x)))
 * block_begin / block_end implement the two variants once; the layer code only chains blocks.
 * Activations are token-major [T, D] with T = B*S (encoder) or B*Q (decoder), batch-major rows.
 *
 * Dropout sites and their seeds (seed_site = rng_hash64(seed, site)):
 *   encoder layer l, base 4l:            +0 self-attn probs, +1 after self-attn, +2 after the FFN
 *                                        ReLU, +3 after the FFN
 *   decoder layer l, base 4*L_enc + 6l:  +0 self-attn probs, +1 after self-attn, +2 cross-attn
 *                                        probs, +3 after cross-attn, +4 after the FFN ReLU,
 *                                        +5 after the FFN */
#include "transformer.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "attention_layer.h"

#define LN_EPS 1e-5f

typedef struct {
    float *w, *b, *dw, *db; /* [D] each */
} NormParams;

typedef struct {
    float *w, *b, *dw, *db; /* w [O, I], b [O] */
} LinearParams;

/* One residual block of the last forward. */
typedef struct {
    const float *x;     /* [T, D] block input (not owned) */
    float *normed;      /* pre-norm: LN(x) [T, D], the body input; post-norm: NULL */
    float *resid;       /* post-norm: x + Drop(body(x)) [T, D], the LN input; pre-norm: NULL */
    float *mean, *rstd; /* [T] statistics of the block's LayerNorm */
    float *out;         /* [T, D] */
    uint64_t seed;      /* dropout on the body output */
} BlockSaved;

typedef struct {
    float *h;      /* [T, F] Drop(ReLU(linear1(x))), the input of linear2 */
    uint64_t seed; /* dropout after the ReLU (backward reads the mask off h) */
} FfnSaved;

typedef struct {
    MhaParams self_attn;
    LinearParams linear1, linear2;
    NormParams norm1, norm2;
    BlockSaved sa_blk, ffn_blk;
    MhaSaved sa;
    FfnSaved ffn;
} EncoderLayer;

typedef struct {
    MhaParams self_attn, cross_attn;
    LinearParams linear1, linear2;
    NormParams norm1, norm2, norm3;
    BlockSaved sa_blk, ca_blk, ffn_blk;
    MhaSaved sa, ca;
    FfnSaved ffn;
    float *hs_mean, *hs_rstd; /* [B*Q] decoder.norm statistics of this layer's output */
} DecoderLayer;

/* Forward temporaries (not saved). */
typedef struct {
    float *pos_added; /* [Tmax, D] body input + position */
    float *body_out;  /* [Tmax, D] body output */
    float *body_drop; /* [Tmax, D] Drop(body output) */
    float *ffn_pre;   /* [Tmax, F] linear1 output or ReLU output */
} FwdScratch;

/* Backward temporaries, shared by all layers of one backward. */
typedef struct {
    float *pos_added;   /* [Tmax, D] body input + position, recomputed */
    float *d_pos_added; /* [Tmax, D] its gradient */
    float *d_resid;     /* [Tmax, D] post-norm: gradient of the LN input */
    float *d_body_out;  /* [Tmax, D] gradient of the body output before dropout */
    float *d_body_in;   /* [Tmax, D] pre-norm: gradient of the block's LN output */
    float *d_mid[2];    /* [Tmax, D] gradients between the blocks of one layer */
    float *d_h;         /* [Tmax, F] gradient of the FFN hidden h (linear2 input) */
    float *d_z;         /* [Tmax, F] gradient of the linear1 output z */
    MhaScratch mha;
} BwdScratch;

struct Transformer {
    Prof *prof; /* encoder/decoder ranges (NULL: NVTX only) */
    int D, H, F, L_enc, L_dec, Q, pre_norm;
    float dropout;
    EncoderLayer *enc;   /* [L_enc] */
    DecoderLayer *dec;   /* [L_dec] */
    NormParams enc_norm; /* pre-norm only */
    NormParams dec_norm;

    /* the last forward */
    int have_forward;
    int B, S;
    float p; /* dropout probability in effect (0 when not training) */
    uint64_t seed;
    const float *src, *pos;     /* [B*S, D] each (not owned) */
    const uint8_t *mask;        /* [B, S] (not owned) */
    float *query_pos;           /* [B*Q, D] query_embed repeated per image */
    float *tgt;                 /* [B*Q, D] zeros: the first decoder input */
    const float *memory;        /* [B*S, D] encoder output (through encoder.norm if pre-norm) */
    float *memory_normed;       /* [B*S, D] pre-norm: encoder.norm output (= memory) */
    float *enc_mean, *enc_rstd; /* [B*S] encoder.norm statistics (pre-norm) */
    float *memory_pos;          /* [B*S, D] memory + pos, the cross-attention key input */
    FwdScratch fs;
};

/* ------------------------------------------------------------------ declaration, init */

static void declare_norm(NormParams *n, ParamSet *ps, int D, const char *name) {
    int shape[1] = {D};
    params_declare(ps, GROUP_MAIN, &n->w, &n->dw, 1, shape, "%s.weight", name);
    params_declare(ps, GROUP_MAIN, &n->b, &n->db, 1, shape, "%s.bias", name);
}

static void declare_linear(LinearParams *l, ParamSet *ps, int O, int I, const char *name) {
    int w_shape[2] = {O, I}, b_shape[1] = {O};
    params_declare(ps, GROUP_MAIN, &l->w, &l->dw, 2, w_shape, "%s.weight", name);
    params_declare(ps, GROUP_MAIN, &l->b, &l->db, 1, b_shape, "%s.bias", name);
}

/* "transformer.<stack>.layers.<i>.<module>" into buf [PARAM_NAME_LEN] */
static const char *layer_name(char *buf, const char *stack, int i, const char *module) {
    snprintf(buf, PARAM_NAME_LEN, "transformer.%s.layers.%d.%s", stack, i, module);
    return buf;
}

static int config_is_valid(const DetrConfig *c) {
    const char *fix = "fix the model configuration (config.h presets or the command line)";
    if (c->hidden <= 0 || c->nheads <= 0 || c->ffn <= 0 || c->queries <= 0 || c->enc_layers < 0 ||
        c->dec_layers <= 0) {
        fprintf(stderr,
                "transformer.c: hidden (%d), nheads (%d), ffn (%d), queries (%d) and dec_layers "
                "(%d) must be positive and enc_layers (%d) not negative; %s\n",
                c->hidden, c->nheads, c->ffn, c->queries, c->dec_layers, c->enc_layers, fix);
        return 0;
    }
    if (c->hidden % c->nheads) {
        fprintf(stderr, "transformer.c: hidden (%d) must be divisible by nheads (%d); %s\n",
                c->hidden, c->nheads, fix);
        return 0;
    }
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f)) {
        fprintf(stderr, "transformer.c: dropout (%g) must be in [0, 1); %s\n", c->dropout, fix);
        return 0;
    }
    return 1;
}

Transformer *transformer_create(const DetrConfig *cfg, ParamSet *ps) {
    if (!config_is_valid(cfg)) return NULL;
    Transformer *t = calloc(1, sizeof(Transformer));
    if (!t) return NULL;
    t->D = cfg->hidden, t->H = cfg->nheads, t->F = cfg->ffn, t->Q = cfg->queries;
    t->L_enc = cfg->enc_layers, t->L_dec = cfg->dec_layers;
    t->pre_norm = cfg->pre_norm, t->dropout = cfg->dropout;
    t->enc = calloc(t->L_enc ? t->L_enc : 1, sizeof(EncoderLayer));
    t->dec = calloc(t->L_dec, sizeof(DecoderLayer));
    if (!t->enc || !t->dec) {
        transformer_destroy(t);
        return NULL;
    }
    int D = t->D, F = t->F;
    char name[PARAM_NAME_LEN];
    for (int i = 0; i < t->L_enc; i++) {
        EncoderLayer *e = &t->enc[i];
        mha_declare(&e->self_attn, ps, D, layer_name(name, "encoder", i, "self_attn"));
        declare_linear(&e->linear1, ps, F, D, layer_name(name, "encoder", i, "linear1"));
        declare_linear(&e->linear2, ps, D, F, layer_name(name, "encoder", i, "linear2"));
        declare_norm(&e->norm1, ps, D, layer_name(name, "encoder", i, "norm1"));
        declare_norm(&e->norm2, ps, D, layer_name(name, "encoder", i, "norm2"));
    }
    if (t->pre_norm) declare_norm(&t->enc_norm, ps, D, "transformer.encoder.norm");
    for (int i = 0; i < t->L_dec; i++) {
        DecoderLayer *d = &t->dec[i];
        mha_declare(&d->self_attn, ps, D, layer_name(name, "decoder", i, "self_attn"));
        mha_declare(&d->cross_attn, ps, D, layer_name(name, "decoder", i, "multihead_attn"));
        declare_linear(&d->linear1, ps, F, D, layer_name(name, "decoder", i, "linear1"));
        declare_linear(&d->linear2, ps, D, F, layer_name(name, "decoder", i, "linear2"));
        declare_norm(&d->norm1, ps, D, layer_name(name, "decoder", i, "norm1"));
        declare_norm(&d->norm2, ps, D, layer_name(name, "decoder", i, "norm2"));
        declare_norm(&d->norm3, ps, D, layer_name(name, "decoder", i, "norm3"));
    }
    declare_norm(&t->dec_norm, ps, D, "transformer.decoder.norm");
    return t;
}

void transformer_destroy(Transformer *t) {
    if (!t) return;
    free(t->enc);
    free(t->dec);
    free(t);
}

static void init_norm(const NormParams *n, const Backend *be, int D) {
    be->fill(n->w, 1.0f, (size_t)D);
    be->fill(n->b, 0.0f, (size_t)D);
}

/* nn.Linear bias default and xavier_uniform weight (Transformer._reset_parameters). */
static void init_linear(const LinearParams *l, const Backend *be, Rng *rng, int O, int I) {
    init_uniform(be, rng, l->w, (size_t)O * I, xavier_bound(O, I));
    init_uniform(be, rng, l->b, (size_t)O, 1.0f / sqrtf((float)I));
}

void transformer_init(Transformer *t, const Backend *be, Rng *rng) {
    int D = t->D, F = t->F;
    for (int i = 0; i < t->L_enc; i++) {
        EncoderLayer *e = &t->enc[i];
        mha_init(&e->self_attn, be, rng, D);
        init_linear(&e->linear1, be, rng, F, D);
        init_linear(&e->linear2, be, rng, D, F);
        init_norm(&e->norm1, be, D);
        init_norm(&e->norm2, be, D);
    }
    if (t->pre_norm) init_norm(&t->enc_norm, be, D);
    for (int i = 0; i < t->L_dec; i++) {
        DecoderLayer *d = &t->dec[i];
        mha_init(&d->self_attn, be, rng, D);
        mha_init(&d->cross_attn, be, rng, D);
        init_linear(&d->linear1, be, rng, F, D);
        init_linear(&d->linear2, be, rng, D, F);
        init_norm(&d->norm1, be, D);
        init_norm(&d->norm2, be, D);
        init_norm(&d->norm3, be, D);
    }
    init_norm(&t->dec_norm, be, D);
}

/* ------------------------------------------------------------------ residual blocks */

static uint64_t site_seed(const Transformer *t, int site) {
    return rng_hash64(t->seed, (uint64_t)site);
}

/* Starts a block on x [T, D]; returns the body input (LN(x) for pre-norm, else x). */
static const float *block_begin(Transformer *t, const Backend *be, Arena *acts, BlockSaved *bs,
                                const NormParams *n, const float *x, int T) {
    size_t TD = (size_t)T * t->D;
    bs->x = x;
    bs->mean = arena_alloc(acts, (size_t)T); /* [T] */
    bs->rstd = arena_alloc(acts, (size_t)T); /* [T] */
    bs->out = arena_alloc(acts, TD);         /* [T, D] */
    bs->normed = bs->resid = NULL;
    if (!t->pre_norm) return x;
    bs->normed = arena_alloc(acts, TD); /* [T, D] */
    be->layernorm_forward(x, n->w, n->b, bs->normed, bs->mean, bs->rstd, T, t->D, LN_EPS);
    return bs->normed;
}

/* Finishes a block from the body output body_out [T, D] (in t->fs.body_out). */
static void block_end(Transformer *t, const Backend *be, Arena *acts, BlockSaved *bs,
                      const NormParams *n, const float *body_out, uint64_t seed, int T) {
    size_t TD = (size_t)T * t->D;
    const float *dropped = body_out; /* [T, D] */
    bs->seed = seed;
    if (t->p > 0.0f) {
        be->dropout_forward(body_out, t->fs.body_drop, TD, t->p, seed);
        dropped = t->fs.body_drop;
    }
    if (t->pre_norm) {
        be->add(bs->x, dropped, bs->out, TD);
        return;
    }
    bs->resid = arena_alloc(acts, TD); /* [T, D] */
    be->add(bs->x, dropped, bs->resid, TD);
    be->layernorm_forward(bs->resid, n->w, n->b, bs->out, bs->mean, bs->rstd, T, t->D, LN_EPS);
}

static const float *block_body_input(const BlockSaved *bs) {
    return bs->normed ? bs->normed : bs->x;
}

/* Backward through the end of a block: adds the residual gradient into din (if din) and returns
 * the gradient of the body output (before dropout), dout [T, D] being the block output gradient. */
static const float *block_end_backward(const Transformer *t, const Backend *be,
                                       const BwdScratch *ws, const BlockSaved *bs,
                                       const NormParams *n, const float *dout, float *din, int T) {
    size_t TD = (size_t)T * t->D;
    const float *d_sum = dout; /* [T, D] gradient of x + Drop(body) */
    if (!t->pre_norm) {
        be->fill(ws->d_resid, 0.0f, TD);
        be->layernorm_backward(dout, bs->resid, bs->mean, bs->rstd, n->w, ws->d_resid, n->dw, n->db,
                               T, t->D);
        d_sum = ws->d_resid;
    }
    if (din) be->axpy(1.0f, d_sum, din, TD);
    if (t->p == 0.0f) return d_sum;
    be->fill(ws->d_body_out, 0.0f, TD);
    be->dropout_backward(d_sum, ws->d_body_out, TD, t->p, bs->seed);
    return ws->d_body_out;
}

/* Where the body accumulates its input gradient: din itself for post-norm (the body reads x),
 * a zeroed temporary for pre-norm (the body reads LN(x)). */
static float *block_body_input_grad(const Transformer *t, const Backend *be, const BwdScratch *ws,
                                    float *din, int T) {
    if (!t->pre_norm) return din;
    be->fill(ws->d_body_in, 0.0f, (size_t)T * t->D);
    return ws->d_body_in;
}

/* Pre-norm: backward of the block's leading LN from the body input gradient into din. */
static void block_begin_backward(const Transformer *t, const Backend *be, const BlockSaved *bs,
                                 const NormParams *n, const float *d_body_in, float *din, int T) {
    if (!t->pre_norm) return;
    be->layernorm_backward(d_body_in, bs->x, bs->mean, bs->rstd, n->w, din, n->dw, n->db, T, t->D);
}

/* ------------------------------------------------------------------ bodies */

/* Self-attention on x [B*S, D] with q = k = x + pos, v = x. */
static void self_attn_forward(Transformer *t, const Backend *be, Arena *acts, const MhaParams *p,
                              MhaSaved *sv, const float *x, const float *pos, const uint8_t *mask,
                              int B, int S, uint64_t seed, float *y) {
    float *xp = t->fs.pos_added; /* [B*S, D] */
    be->add(x, pos, xp, (size_t)B * S * t->D);
    mha_forward(p, be, acts, sv, xp, xp, x, mask, B, S, S, t->D, t->H, t->p, seed, y);
}

/* Accumulates into dx (may be NULL) and, if dpos, into dpos [B*S, D]. */
static void self_attn_backward(const Transformer *t, const Backend *be, const BwdScratch *ws,
                               const MhaParams *p, const MhaSaved *sv, const float *dy,
                               const float *x, const float *pos, float *dx, float *dpos) {
    size_t TD = (size_t)sv->shape.B * sv->shape.Sq * t->D;
    float *xp = ws->pos_added; /* [T, D] recomputed x + pos */
    be->add(x, pos, xp, TD);
    if (!dpos) {
        /* the gradient of x + pos w.r.t. x is the identity: accumulate straight into dx */
        mha_backward(p, be, sv, &ws->mha, dy, xp, xp, x, dx, dx, dx);
        return;
    }
    be->fill(ws->d_pos_added, 0.0f, TD);
    mha_backward(p, be, sv, &ws->mha, dy, xp, xp, x, ws->d_pos_added, ws->d_pos_added, dx);
    if (dx) be->axpy(1.0f, ws->d_pos_added, dx, TD);
    be->axpy(1.0f, ws->d_pos_added, dpos, TD);
}

/* Decoder cross-attention: q = x + query_pos, k = memory + pos, v = memory. */
static void cross_attn_forward(Transformer *t, const Backend *be, Arena *acts, const MhaParams *p,
                               MhaSaved *sv, const float *x, uint64_t seed, float *y) {
    float *xq = t->fs.pos_added; /* [B*Q, D] */
    be->add(x, t->query_pos, xq, (size_t)t->B * t->Q * t->D);
    mha_forward(p, be, acts, sv, xq, t->memory_pos, t->memory, t->mask, t->B, t->Q, t->S, t->D,
                t->H, t->p, seed, y);
}

/* Accumulates into dx (may be NULL), dquery_pos (may be NULL) [B*Q, D] and dmemory [B*S, D]. */
static void cross_attn_backward(const Transformer *t, const Backend *be, const BwdScratch *ws,
                                const MhaParams *p, const MhaSaved *sv, const float *dy,
                                const float *x, float *dx, float *dquery_pos, float *dmemory) {
    size_t TD = (size_t)t->B * t->Q * t->D;
    float *xq = ws->pos_added; /* [B*Q, D] recomputed x + query_pos */
    be->add(x, t->query_pos, xq, TD);
    float *dxq = dx; /* [B*Q, D] */
    if (dquery_pos) {
        be->fill(ws->d_pos_added, 0.0f, TD);
        dxq = ws->d_pos_added;
    }
    /* memory + pos and memory both lead to dmemory (pos is constant) */
    mha_backward(p, be, sv, &ws->mha, dy, xq, t->memory_pos, t->memory, dxq, dmemory, dmemory);
    if (dquery_pos) {
        if (dx) be->axpy(1.0f, dxq, dx, TD);
        be->axpy(1.0f, dxq, dquery_pos, TD);
    }
}

/* y [T, D] = linear2(Drop(ReLU(linear1(x)))). */
static void ffn_forward(Transformer *t, const Backend *be, Arena *acts, const LinearParams *l1,
                        const LinearParams *l2, FfnSaved *sv, const float *x, int T, uint64_t seed,
                        float *y) {
    size_t TF = (size_t)T * t->F;
    sv->h = arena_alloc(acts, TF); /* [T, F] */
    sv->seed = seed;
    if (t->p > 0.0f) {
        be->linear_forward(x, l1->w, l1->b, sv->h, T, t->D, t->F);
        be->relu_forward(sv->h, t->fs.ffn_pre, TF);
        be->dropout_forward(t->fs.ffn_pre, sv->h, TF, t->p, seed);
    } else {
        be->linear_forward(x, l1->w, l1->b, t->fs.ffn_pre, T, t->D, t->F);
        be->relu_forward(t->fs.ffn_pre, sv->h, TF);
    }
    be->linear_forward(sv->h, l2->w, l2->b, y, T, t->F, t->D);
}

/* Accumulates into dx [T, D] (may be NULL). h = Drop(ReLU(z)) is zero wherever ReLU or dropout
 * zeroed it and equals ReLU(z) / (1-p) elsewhere, so dz = (h > 0) * dh / (1-p): one ReLU
 * backward against h and a scale replace regenerating the dropout mask. */
static void ffn_backward(const Transformer *t, const Backend *be, const BwdScratch *ws,
                         const LinearParams *l1, const LinearParams *l2, const FfnSaved *sv,
                         const float *dy, const float *x, float *dx, int T) {
    size_t TF = (size_t)T * t->F;
    float *d_h = ws->d_h; /* [T, F] gradient of h */
    float *d_z = ws->d_z; /* [T, F] gradient of the linear1 output z */
    /* d_h = dy [T, D] w2 [D, F], overwritten (no zero fill), then linear2's parameter grads */
    be->gemm(0, 0, T, t->F, t->D, 1.0f, dy, t->D, 0, l2->w, t->F, 0, 0.0f, d_h, t->F, 0, 1);
    be->linear_backward(dy, sv->h, l2->w, NULL, l2->dw, l2->db, T, t->F, t->D);
    be->fill(d_z, 0.0f, TF);
    be->relu_backward(d_h, sv->h, d_z, TF);
    if (t->p > 0.0f) be->scale(d_z, 1.0f / (1.0f - t->p), TF);
    be->linear_backward(d_z, x, l1->w, dx, l1->dw, l1->db, T, t->D, t->F);
}

/* ------------------------------------------------------------------ layers */

/* x [B*S, D] -> e->ffn_blk.out [B*S, D] */
static const float *encoder_layer_forward(Transformer *t, const Backend *be, Arena *acts, int l,
                                          const float *x) {
    EncoderLayer *e = &t->enc[l];
    int T = t->B * t->S, site = 4 * l;
    const float *in = block_begin(t, be, acts, &e->sa_blk, &e->norm1, x, T);
    self_attn_forward(t, be, acts, &e->self_attn, &e->sa, in, t->pos, t->mask, t->B, t->S,
                      site_seed(t, site + 0), t->fs.body_out);
    block_end(t, be, acts, &e->sa_blk, &e->norm1, t->fs.body_out, site_seed(t, site + 1), T);

    in = block_begin(t, be, acts, &e->ffn_blk, &e->norm2, e->sa_blk.out, T);
    ffn_forward(t, be, acts, &e->linear1, &e->linear2, &e->ffn, in, T, site_seed(t, site + 2),
                t->fs.body_out);
    block_end(t, be, acts, &e->ffn_blk, &e->norm2, t->fs.body_out, site_seed(t, site + 3), T);
    return e->ffn_blk.out;
}

/* dout [B*S, D] -> din += (din may be NULL) */
static void encoder_layer_backward(const Transformer *t, const Backend *be, const BwdScratch *ws,
                                   int l, const float *dout, float *din) {
    const EncoderLayer *e = &t->enc[l];
    int T = t->B * t->S;
    float *d_mid = ws->d_mid[0]; /* [T, D] gradient of the self-attention block output */
    be->fill(d_mid, 0.0f, (size_t)T * t->D);

    const float *d_body = block_end_backward(t, be, ws, &e->ffn_blk, &e->norm2, dout, d_mid, T);
    float *d_in = block_body_input_grad(t, be, ws, d_mid, T);
    ffn_backward(t, be, ws, &e->linear1, &e->linear2, &e->ffn, d_body,
                 block_body_input(&e->ffn_blk), d_in, T);
    block_begin_backward(t, be, &e->ffn_blk, &e->norm2, d_in, d_mid, T);

    d_body = block_end_backward(t, be, ws, &e->sa_blk, &e->norm1, d_mid, din, T);
    d_in = block_body_input_grad(t, be, ws, din, T);
    self_attn_backward(t, be, ws, &e->self_attn, &e->sa, d_body, block_body_input(&e->sa_blk),
                       t->pos, d_in, NULL);
    block_begin_backward(t, be, &e->sa_blk, &e->norm1, d_in, din, T);
}

/* x [B*Q, D] -> d->ffn_blk.out [B*Q, D]; hs_l [B*Q, D] = decoder.norm of it */
static const float *decoder_layer_forward(Transformer *t, const Backend *be, Arena *acts, int l,
                                          const float *x, float *hs_l) {
    DecoderLayer *d = &t->dec[l];
    int T = t->B * t->Q, site = 4 * t->L_enc + 6 * l;
    const float *in = block_begin(t, be, acts, &d->sa_blk, &d->norm1, x, T);
    self_attn_forward(t, be, acts, &d->self_attn, &d->sa, in, t->query_pos, NULL, t->B, t->Q,
                      site_seed(t, site + 0), t->fs.body_out);
    block_end(t, be, acts, &d->sa_blk, &d->norm1, t->fs.body_out, site_seed(t, site + 1), T);

    in = block_begin(t, be, acts, &d->ca_blk, &d->norm2, d->sa_blk.out, T);
    cross_attn_forward(t, be, acts, &d->cross_attn, &d->ca, in, site_seed(t, site + 2),
                       t->fs.body_out);
    block_end(t, be, acts, &d->ca_blk, &d->norm2, t->fs.body_out, site_seed(t, site + 3), T);

    in = block_begin(t, be, acts, &d->ffn_blk, &d->norm3, d->ca_blk.out, T);
    ffn_forward(t, be, acts, &d->linear1, &d->linear2, &d->ffn, in, T, site_seed(t, site + 4),
                t->fs.body_out);
    block_end(t, be, acts, &d->ffn_blk, &d->norm3, t->fs.body_out, site_seed(t, site + 5), T);

    d->hs_mean = arena_alloc(acts, (size_t)T); /* [T] */
    d->hs_rstd = arena_alloc(acts, (size_t)T); /* [T] */
    be->layernorm_forward(d->ffn_blk.out, t->dec_norm.w, t->dec_norm.b, hs_l, d->hs_mean,
                          d->hs_rstd, T, t->D, LN_EPS);
    return d->ffn_blk.out;
}

/* dout [B*Q, D] (layer output gradient, decoder.norm part included) -> din += (may be NULL),
 * dquery_pos += (may be NULL) [B*Q, D], dmemory += [B*S, D] */
static void decoder_layer_backward(const Transformer *t, const Backend *be, const BwdScratch *ws,
                                   int l, const float *dout, float *din, float *dquery_pos,
                                   float *dmemory) {
    const DecoderLayer *d = &t->dec[l];
    int T = t->B * t->Q;
    size_t TD = (size_t)T * t->D;
    float *d_ca_out = ws->d_mid[0]; /* [T, D] gradient of the cross-attention block output */
    float *d_sa_out = ws->d_mid[1]; /* [T, D] gradient of the self-attention block output */

    be->fill(d_ca_out, 0.0f, TD);
    const float *d_body = block_end_backward(t, be, ws, &d->ffn_blk, &d->norm3, dout, d_ca_out, T);
    float *d_in = block_body_input_grad(t, be, ws, d_ca_out, T);
    ffn_backward(t, be, ws, &d->linear1, &d->linear2, &d->ffn, d_body,
                 block_body_input(&d->ffn_blk), d_in, T);
    block_begin_backward(t, be, &d->ffn_blk, &d->norm3, d_in, d_ca_out, T);

    be->fill(d_sa_out, 0.0f, TD);
    d_body = block_end_backward(t, be, ws, &d->ca_blk, &d->norm2, d_ca_out, d_sa_out, T);
    d_in = block_body_input_grad(t, be, ws, d_sa_out, T);
    cross_attn_backward(t, be, ws, &d->cross_attn, &d->ca, d_body, block_body_input(&d->ca_blk),
                        d_in, dquery_pos, dmemory);
    block_begin_backward(t, be, &d->ca_blk, &d->norm2, d_in, d_sa_out, T);

    d_body = block_end_backward(t, be, ws, &d->sa_blk, &d->norm1, d_sa_out, din, T);
    d_in = block_body_input_grad(t, be, ws, din, T);
    self_attn_backward(t, be, ws, &d->self_attn, &d->sa, d_body, block_body_input(&d->sa_blk),
                       t->query_pos, d_in, dquery_pos);
    block_begin_backward(t, be, &d->sa_blk, &d->norm1, d_in, din, T);
}

/* ------------------------------------------------------------------ stacks */

static int max_int(int a, int b) { return a > b ? a : b; }

void transformer_forward(Transformer *t, const Backend *be, Arena *acts, const float *src,
                         const float *pos, const uint8_t *mask, const float *query_pos, int B,
                         int S, float *hs, int training, uint64_t seed) {
    if (B < 1 || S < 1) {
        fprintf(stderr,
                "transformer.c: transformer_forward needs B >= 1 and S >= 1 (got B=%d, "
                "S=%d); pass a non-empty batch of feature maps\n",
                B, S);
        t->have_forward = 0;
        return;
    }
    int D = t->D, Q = t->Q;
    size_t Te = (size_t)B * S, Tq = (size_t)B * Q, Tmax = (size_t)max_int(B * S, B * Q);
    t->B = B, t->S = S, t->src = src, t->pos = pos, t->mask = mask, t->seed = seed;
    t->p = training ? t->dropout : 0.0f;

    t->fs.pos_added = arena_alloc(acts, Tmax * D);  /* [Tmax, D] */
    t->fs.body_out = arena_alloc(acts, Tmax * D);   /* [Tmax, D] */
    t->fs.body_drop = arena_alloc(acts, Tmax * D);  /* [Tmax, D] */
    t->fs.ffn_pre = arena_alloc(acts, Tmax * t->F); /* [Tmax, F] */

    const float *x = src; /* [B*S, D] */
    prof_range_push(t->prof, PROF_PHASE_ENCODER);
    for (int l = 0; l < t->L_enc; l++) x = encoder_layer_forward(t, be, acts, l, x);
    if (t->pre_norm) {
        t->memory_normed = arena_alloc(acts, Te * D); /* [B*S, D] */
        t->enc_mean = arena_alloc(acts, Te);          /* [B*S] */
        t->enc_rstd = arena_alloc(acts, Te);          /* [B*S] */
        be->layernorm_forward(x, t->enc_norm.w, t->enc_norm.b, t->memory_normed, t->enc_mean,
                              t->enc_rstd, (int)Te, D, LN_EPS);
        t->memory = t->memory_normed;
    } else {
        t->memory = x; /* the last layer's output (src itself without encoder layers) */
    }
    t->memory_pos = arena_alloc(acts, Te * D); /* [B*S, D] */
    be->add(t->memory, pos, t->memory_pos, Te * D);
    prof_range_pop(t->prof);
    prof_range_push(t->prof, PROF_PHASE_DECODER);

    t->query_pos = arena_alloc(acts, Tq * D); /* [B*Q, D] */
    for (int b = 0; b < B; b++)
        be->copy(t->query_pos + (size_t)b * Q * D, query_pos, (size_t)Q * D);
    t->tgt = arena_zeros(acts, Tq * D); /* [B*Q, D] */

    const float *y = t->tgt; /* [B*Q, D] */
    for (int l = 0; l < t->L_dec; l++)
        y = decoder_layer_forward(t, be, acts, l, y, hs + (size_t)l * Tq * D);
    prof_range_pop(t->prof);
    t->have_forward = 1;
}

void transformer_set_profiler(Transformer *t, Prof *prof) { t->prof = prof; }

static void bwd_scratch_alloc(const Transformer *t, Arena *acts, BwdScratch *ws) {
    size_t D = (size_t)t->D, Tq = (size_t)t->B * t->Q, Te = (size_t)t->B * t->S;
    size_t Tmax = Tq > Te ? Tq : Te;
    ws->pos_added = arena_alloc(acts, Tmax * D);   /* [Tmax, D] */
    ws->d_pos_added = arena_alloc(acts, Tmax * D); /* [Tmax, D] */
    ws->d_resid = arena_alloc(acts, Tmax * D);     /* [Tmax, D] */
    ws->d_body_out = arena_alloc(acts, Tmax * D);  /* [Tmax, D] */
    ws->d_body_in = arena_alloc(acts, Tmax * D);   /* [Tmax, D] */
    ws->d_mid[0] = arena_alloc(acts, Tmax * D);    /* [Tmax, D] */
    ws->d_mid[1] = arena_alloc(acts, Tmax * D);    /* [Tmax, D] */
    ws->d_h = arena_alloc(acts, Tmax * t->F);      /* [Tmax, F] */
    ws->d_z = arena_alloc(acts, Tmax * t->F);      /* [Tmax, F] */
    ws->mha.d_ctx = arena_alloc(acts, Tmax * D);   /* [Tmax, D] */
    /* self-attention [Tmax, 2D]; cross-attention [Tq, D] followed by [Te, D] */
    size_t qk_rows = Tmax * 2 > Tq + Te ? Tmax * 2 : Tq + Te;
    ws->mha.d_qk = arena_alloc(acts, qk_rows * D); /* [qk_rows, D] */
    ws->mha.d_v = arena_alloc(acts, Tmax * D);     /* [Tmax, D] */
}

void transformer_backward(Transformer *t, const Backend *be, Arena *acts, const float *dhs,
                          float *dsrc, float *dquery_pos) {
    if (!t->have_forward) {
        fprintf(stderr, "transformer.c: transformer_backward called before transformer_forward\n");
        return;
    }
    int D = t->D, Q = t->Q;
    size_t Te = (size_t)t->B * t->S, Tq = (size_t)t->B * Q;
    BwdScratch ws;
    bwd_scratch_alloc(t, acts, &ws);
    float *dqpos = dquery_pos ? arena_zeros(acts, Tq * D) : NULL; /* [B*Q, D] */
    float *dmemory = arena_zeros(acts, Te * D);                   /* [B*S, D] */

    /* decoder, top down; dy[cur] holds the gradient of layer l's output */
    float *dy[2] = {arena_zeros(acts, Tq * D), arena_alloc(acts, Tq * D)}; /* [B*Q, D] each */
    int cur = 0;
    for (int l = t->L_dec - 1; l >= 0; l--) {
        const DecoderLayer *d = &t->dec[l];
        be->layernorm_backward(dhs + (size_t)l * Tq * D, d->ffn_blk.out, d->hs_mean, d->hs_rstd,
                               t->dec_norm.w, dy[cur], t->dec_norm.dw, t->dec_norm.db, (int)Tq, D);
        float *din = NULL; /* the first decoder input is the constant zero tgt */
        if (l > 0) {
            din = dy[1 - cur];
            be->fill(din, 0.0f, Tq * D);
        }
        decoder_layer_backward(t, be, &ws, l, dy[cur], din, dqpos, dmemory);
        cur = 1 - cur;
    }

    /* encoder, top down, ping-ponging between dmemory and one more buffer; dx[cur] holds the
     * gradient of the encoder stack output (of layer l's output inside the loop) */
    float *dx[2] = {dmemory, arena_alloc(acts, Te * D)}; /* [B*S, D] each */
    cur = 0;
    if (t->pre_norm) {
        const float *stack_out = t->L_enc ? t->enc[t->L_enc - 1].ffn_blk.out : t->src;
        be->fill(dx[1], 0.0f, Te * D);
        be->layernorm_backward(dmemory, stack_out, t->enc_mean, t->enc_rstd, t->enc_norm.w, dx[1],
                               t->enc_norm.dw, t->enc_norm.db, (int)Te, D);
        cur = 1;
    }
    for (int l = t->L_enc - 1; l >= 0; l--) {
        float *din = dsrc;
        if (l > 0) {
            din = dx[1 - cur];
            be->fill(din, 0.0f, Te * D);
        }
        encoder_layer_backward(t, be, &ws, l, dx[cur], din);
        cur = 1 - cur;
    }
    if (t->L_enc == 0 && dsrc) be->axpy(1.0f, dx[cur], dsrc, Te * D);

    if (dquery_pos)
        for (int b = 0; b < t->B; b++)
            be->axpy(1.0f, dqpos + (size_t)b * Q * D, dquery_pos, (size_t)Q * D);
}
