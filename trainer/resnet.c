/* resnet.c - see resnet.h. Reference: detr.md §1.2 (torchvision ResNet v1.5, FrozenBatchNorm2d).
 * Activation recomputation (backbone_set_recompute): docs/recompute.md. */
#include "resnet.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BN_EPS 1e-5f

/* One convolution followed by its FrozenBatchNorm. */
typedef struct {
    int cin, cout, k, stride, pad, dil;
    int frozen;
    float *w, *gw;                     /* [cout, cin, k, k] and its gradient (NULL if frozen) */
    float *bn_w, *bn_b, *bn_rm, *bn_rv; /* [cout] FrozenBN buffers */
    float *scale, *shift;              /* [cout] derived: w*rsqrt(rv+eps), b - rm*scale */
    float *wfold;                      /* [cout, cin, k, k] frozen only: w * scale[co] */
    ConvShape shape;                   /* geometry of the last forward */
} ConvBN;

typedef struct {
    ConvBN c1, c2, c3, ds;
    int bottleneck, has_ds;
    /* saved by forward (CNHW, from the arena) */
    const float *x;     /* [cin, B, H, W] block input */
    float *y1, *y2;     /* outputs of bn1+relu, bn2+relu (y2 only for bottleneck); with
                         * recomputation, rebuilt in the scratch just before the block's backward */
    float *z;           /* [cout, B, Ho, Wo] block output after the residual ReLU */
} Block;

struct Backbone {
    int depth, channels;
    ConvBN stem;                 /* conv1 7x7/2 + bn1, frozen */
    Block *blocks;
    int nblocks;
    int first_trainable;         /* index of the first block of layer2 */
    PoolShape pool;
    int B;
    double fwd_flops, bwd_flops;
    int recompute;               /* backbone_set_recompute: applies from the next forward */
    int recomputed;              /* the last forward kept checkpoints only: its backward recomputes */
    Arena *scratch;              /* one block's internals and gradient temporaries, reset per block */
    Arena *carry[2];             /* ping-pong: frozen block outputs (forward), input gradients
                                  * (backward); each holds one tensor at a time */
};

static int block_trainable(const Block *b) { return !b->c1.frozen; }

static void declare_convbn(ParamSet *ps, ConvBN *c, int frozen, const char *wname,
                           const char *bnprefix, int cin, int cout, int k, int stride, int pad,
                           int dil) {
    c->cin = cin; c->cout = cout; c->k = k;
    c->stride = stride; c->pad = pad; c->dil = dil;
    c->frozen = frozen;
    int wshape[4] = {cout, cin, k, k};
    params_declare(ps, frozen ? GROUP_FROZEN : GROUP_BACKBONE, &c->w, frozen ? NULL : &c->gw, 4,
                   wshape, "%s", wname);
    int bshape[1] = {cout};
    params_declare(ps, GROUP_FROZEN, &c->bn_w, NULL, 1, bshape, "%s.weight", bnprefix);
    params_declare(ps, GROUP_FROZEN, &c->bn_b, NULL, 1, bshape, "%s.bias", bnprefix);
    params_declare(ps, GROUP_FROZEN, &c->bn_rm, NULL, 1, bshape, "%s.running_mean", bnprefix);
    params_declare(ps, GROUP_FROZEN, &c->bn_rv, NULL, 1, bshape, "%s.running_var", bnprefix);
}

Backbone *backbone_create(const DetrConfig *cfg, ParamSet *ps, int train_backbone) {
    static const int blocks18[4] = {2, 2, 2, 2}, blocks34[4] = {3, 4, 6, 3};
    static const int blocks50[4] = {3, 4, 6, 3}, blocks101[4] = {3, 4, 23, 3};
    const int *nb;
    int bottleneck = cfg->depth >= 50;
    switch (cfg->depth) {
    case 18: nb = blocks18; break;
    case 34: nb = blocks34; break;
    case 50: nb = blocks50; break;
    case 101: nb = blocks101; break;
    default:
        fprintf(stderr, "error: unsupported ResNet depth %d (use 18, 34, 50 or 101)\n", cfg->depth);
        exit(2);
    }
    if (cfg->dilation && !bottleneck) {
        fprintf(stderr, "error: dilation (DC5) needs a bottleneck ResNet (50 or 101), as torchvision\n");
        exit(2);
    }
    Backbone *bb = calloc(1, sizeof(Backbone));
    bb->depth = cfg->depth;
    bb->nblocks = nb[0] + nb[1] + nb[2] + nb[3];
    bb->blocks = calloc((size_t)bb->nblocks, sizeof(Block));
    declare_convbn(ps, &bb->stem, 1, "backbone.0.body.conv1.weight", "backbone.0.body.bn1", 3, 64,
                   7, 2, 3, 1);
    int expansion = bottleneck ? 4 : 1;
    int inplanes = 64, dilation = 1, bi = 0;
    char w[PARAM_NAME_LEN], bn[PARAM_NAME_LEN];
    for (int L = 0; L < 4; L++) {
        int planes = 64 << L;
        int stride = L == 0 ? 1 : 2;
        int prev_dilation = dilation;
        if (L == 3 && cfg->dilation) { /* torchvision replace_stride_with_dilation */
            dilation *= stride;
            stride = 1;
        }
        int frozen = (L == 0) || !train_backbone;
        if (L == 1) bb->first_trainable = bi;
        for (int b = 0; b < nb[L]; b++, bi++) {
            Block *blk = &bb->blocks[bi];
            blk->bottleneck = bottleneck;
            int s = b == 0 ? stride : 1;
            int d = b == 0 ? prev_dilation : dilation;
            char pre[64];
            snprintf(pre, sizeof(pre), "backbone.0.body.layer%d.%d", L + 1, b);
#define NAMES(conv, bnn) snprintf(w, sizeof(w), "%s.%s.weight", pre, conv), snprintf(bn, sizeof(bn), "%s.%s", pre, bnn)
            if (bottleneck) {
                NAMES("conv1", "bn1");
                declare_convbn(ps, &blk->c1, frozen, w, bn, inplanes, planes, 1, 1, 0, 1);
                NAMES("conv2", "bn2");
                declare_convbn(ps, &blk->c2, frozen, w, bn, planes, planes, 3, s, d, d);
                NAMES("conv3", "bn3");
                declare_convbn(ps, &blk->c3, frozen, w, bn, planes, planes * 4, 1, 1, 0, 1);
            } else {
                NAMES("conv1", "bn1");
                declare_convbn(ps, &blk->c1, frozen, w, bn, inplanes, planes, 3, s, 1, 1);
                NAMES("conv2", "bn2");
                declare_convbn(ps, &blk->c2, frozen, w, bn, planes, planes, 3, 1, 1, 1);
            }
            if (b == 0 && (s != 1 || inplanes != planes * expansion)) {
                blk->has_ds = 1;
                NAMES("downsample.0", "downsample.1");
                declare_convbn(ps, &blk->ds, frozen, w, bn, inplanes, planes * expansion, 1, s, 0, 1);
            }
#undef NAMES
            inplanes = planes * expansion;
        }
    }
    bb->channels = inplanes;
    return bb;
}

static void convbn_free(ConvBN *c, const Backend *be) {
    if (c->scale) be->free(c->scale);
    if (c->shift) be->free(c->shift);
    if (c->wfold) be->free(c->wfold);
}

void backbone_destroy(Backbone *bb, const Backend *be) {
    if (!bb) return;
    convbn_free(&bb->stem, be);
    for (int i = 0; i < bb->nblocks; i++) {
        Block *b = &bb->blocks[i];
        convbn_free(&b->c1, be);
        convbn_free(&b->c2, be);
        if (b->bottleneck) convbn_free(&b->c3, be);
        if (b->has_ds) convbn_free(&b->ds, be);
    }
    free(bb->blocks);
    arena_destroy(bb->scratch);
    arena_destroy(bb->carry[0]);
    arena_destroy(bb->carry[1]);
    free(bb);
}

void backbone_set_recompute(Backbone *bb, int on) { bb->recompute = on != 0; }

int backbone_recompute(const Backbone *bb) { return bb->recompute; }

void backbone_recompute_memory(const Backbone *bb, size_t *bytes, int *chunks) {
    const Arena *a[3] = {bb->scratch, bb->carry[0], bb->carry[1]};
    *bytes = 0;
    *chunks = 0;
    for (int i = 0; i < 3; i++)
        if (a[i]) *bytes += arena_reserved_bytes(a[i]), *chunks += arena_chunk_count(a[i]);
}

int backbone_channels(const Backbone *bb) { return bb->channels; }

/* Applies fn to every ConvBN of the backbone. */
static void for_each_convbn(Backbone *bb, void (*fn)(ConvBN *, const Backend *, void *),
                            const Backend *be, void *arg) {
    fn(&bb->stem, be, arg);
    for (int i = 0; i < bb->nblocks; i++) {
        Block *b = &bb->blocks[i];
        fn(&b->c1, be, arg);
        fn(&b->c2, be, arg);
        if (b->bottleneck) fn(&b->c3, be, arg);
        if (b->has_ds) fn(&b->ds, be, arg);
    }
}

static void upload_const(const Backend *be, float *dst, float v, int n) { be->fill(dst, v, (size_t)n); }

static void init_convbn(ConvBN *c, const Backend *be, void *arg) {
    Rng *rng = arg;
    size_t n = (size_t)c->cout * c->cin * c->k * c->k;
    float std = sqrtf(2.0f / (float)(c->cout * c->k * c->k)); /* kaiming normal, fan_out, relu */
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = std * rng_next_normal(rng);
    be->upload(c->w, h, n * sizeof(float));
    free(h);
    upload_const(be, c->bn_w, 1.0f, c->cout);
    upload_const(be, c->bn_b, 0.0f, c->cout);
    upload_const(be, c->bn_rm, 0.0f, c->cout);
    upload_const(be, c->bn_rv, 1.0f, c->cout);
}

void backbone_init(Backbone *bb, const Backend *be, Rng *rng) {
    for_each_convbn(bb, init_convbn, be, rng);
}

/* scale = w * rsqrt(rv + eps), shift = b - rm * scale; frozen convs also get w * scale. */
static void prepare_convbn(ConvBN *c, const Backend *be, void *arg) {
    (void)arg;
    int C = c->cout;
    float *h = malloc(4 * (size_t)C * sizeof(float)); /* [4, C]: w, b, rm, rv */
    be->download(h, c->bn_w, C * sizeof(float));
    be->download(h + C, c->bn_b, C * sizeof(float));
    be->download(h + 2 * C, c->bn_rm, C * sizeof(float));
    be->download(h + 3 * C, c->bn_rv, C * sizeof(float));
    float *scale = malloc(2 * (size_t)C * sizeof(float)), *shift = scale + C;
    for (int i = 0; i < C; i++) {
        scale[i] = h[i] * (1.0f / sqrtf(h[3 * C + i] + BN_EPS));
        shift[i] = h[C + i] - h[2 * C + i] * scale[i];
    }
    if (!c->scale) c->scale = be->alloc(MEM_PARAMS, (size_t)C);
    if (!c->shift) c->shift = be->alloc(MEM_PARAMS, (size_t)C);
    be->upload(c->scale, scale, C * sizeof(float));
    be->upload(c->shift, shift, C * sizeof(float));
    if (c->frozen) {
        size_t per = (size_t)c->cin * c->k * c->k, n = per * C;
        float *w = malloc(n * sizeof(float));
        be->download(w, c->w, n * sizeof(float));
        for (int co = 0; co < C; co++)
            for (size_t j = 0; j < per; j++) w[co * per + j] *= scale[co];
        if (!c->wfold) c->wfold = be->alloc(MEM_PARAMS, n);
        be->upload(c->wfold, w, n * sizeof(float));
        free(w);
    }
    free(scale);
    free(h);
}

void backbone_prepare(Backbone *bb, const Backend *be) {
    for_each_convbn(bb, prepare_convbn, be, NULL);
}

/* Output positions B*Ho*Wo of the last forward's geometry. */
static size_t convbn_positions(const ConvBN *c) {
    return (size_t)c->shape.B * c->shape.Ho * c->shape.Wo;
}

static double convbn_flops(const ConvBN *c) {
    return 2.0 * c->cout * (double)c->cin * c->k * c->k * (double)convbn_positions(c);
}

/* y = FrozenBN(conv(x)) (+ReLU) with the geometry in c->shape. The forward and the recomputation
 * both run this, so a recomputed activation is the same computation as the original. */
static void convbn_apply(const ConvBN *c, const Backend *be, const float *x, float *y, int relu) {
    size_t n = convbn_positions(c);
    if (c->frozen) {
        be->conv2d_forward(&c->shape, x, c->wfold, c->shift, y);
        if (relu) be->relu_forward(y, y, (size_t)c->cout * n);
    } else {
        be->conv2d_forward(&c->shape, x, c->w, NULL, y);
        be->channel_affine(y, c->scale, c->shift, y, c->cout, n, relu);
    }
}

/* conv + FrozenBN (+ReLU) forward: x [cin, B, H, W] -> y [cout, B, Ho, Wo] from the arena. */
static float *convbn_forward(Backbone *bb, ConvBN *c, const Backend *be, Arena *acts,
                             const float *x, int B, int H, int W, int relu) {
    ConvShape *s = &c->shape;
    *s = (ConvShape){.B = B, .Cin = c->cin, .H = H, .W = W, .Cout = c->cout, .kh = c->k,
                     .kw = c->k, .stride = c->stride, .pad = c->pad, .dil = c->dil};
    conv_shape_init(s);
    float *y = arena_alloc(acts, (size_t)c->cout * convbn_positions(c));
    double flops = convbn_flops(c);
    bb->fwd_flops += flops;
    if (!c->frozen) bb->bwd_flops += 2 * flops; /* weight grad + data grad */
    convbn_apply(c, be, x, y, relu);
    return y;
}

/* The forward of c again, on the geometry of the last forward, into the arena. */
static float *convbn_recompute(const ConvBN *c, const Backend *be, Arena *a, const float *x,
                               int relu) {
    float *y = arena_alloc(a, (size_t)c->cout * convbn_positions(c));
    convbn_apply(c, be, x, y, relu);
    return y;
}

/* The block's internal activations (y1, y2, the downsample branch) come from `inner`, its output
 * z from `out` (the same arena without recomputation). */
static float *block_forward(Backbone *bb, Block *b, const Backend *be, Arena *inner, Arena *out,
                            const float *x, int B, int *H, int *W) {
    b->x = x;
    b->y1 = convbn_forward(bb, &b->c1, be, inner, x, B, *H, *W, 1);
    ConvShape *s1 = &b->c1.shape;
    float *last;
    ConvShape *sl;
    if (b->bottleneck) {
        b->y2 = convbn_forward(bb, &b->c2, be, inner, b->y1, B, s1->Ho, s1->Wo, 1);
        ConvShape *s2 = &b->c2.shape;
        last = convbn_forward(bb, &b->c3, be, out, b->y2, B, s2->Ho, s2->Wo, 0);
        sl = &b->c3.shape;
    } else {
        last = convbn_forward(bb, &b->c2, be, out, b->y1, B, s1->Ho, s1->Wo, 0);
        sl = &b->c2.shape;
    }
    size_t n = (size_t)sl->Cout * B * sl->Ho * sl->Wo;
    const float *identity = x;
    if (b->has_ds) identity = convbn_forward(bb, &b->ds, be, inner, x, B, *H, *W, 0);
    be->add_relu(last, identity, last, n); /* z = relu(bn(conv) + identity), in place */
    b->z = last;
    *H = sl->Ho;
    *W = sl->Wo;
    return last;
}

/* With recomputation: where the output of block i (i = -1: the stem's max-pool) goes. The
 * backward needs it when block i or i+1 trains, and the caller needs the last one: the step's
 * arena. Otherwise it only feeds the next frozen block: a carry arena, alternating so that the
 * block's input (in the other one) stays intact while it runs. */
static Arena *recompute_output_arena(Backbone *bb, int i, Arena *acts) {
    if (i == bb->nblocks - 1 || (i >= 0 && block_trainable(&bb->blocks[i])) ||
        block_trainable(&bb->blocks[i + 1]))
        return acts;
    Arena *c = bb->carry[(i + 2) % 2];
    arena_reset(c); /* it held the output of block i-2, consumed by block i-1 */
    return c;
}

float *backbone_forward(Backbone *bb, const Backend *be, Arena *acts, const float *x, int B, int H,
                        int W, int *h, int *w) {
    bb->B = B;
    bb->fwd_flops = bb->bwd_flops = 0;
    int recomp = bb->recomputed = bb->recompute;
    if (recomp && !bb->scratch) {
        bb->scratch = arena_create(be, MEM_ACTS);
        bb->carry[0] = arena_create(be, MEM_ACTS);
        bb->carry[1] = arena_create(be, MEM_ACTS);
    } else if (!recomp && bb->scratch) { /* switched off: give the memory back */
        arena_destroy(bb->scratch);
        arena_destroy(bb->carry[0]);
        arena_destroy(bb->carry[1]);
        bb->scratch = bb->carry[0] = bb->carry[1] = NULL;
    }
    /* without recomputation every buffer comes from acts, in this order */
    Arena *inner = recomp ? bb->scratch : acts;
    if (recomp) arena_reset(inner);
    float *y = convbn_forward(bb, &bb->stem, be, inner, x, B, H, W, 1);
    bb->pool = (PoolShape){.C = 64, .B = B, .H = bb->stem.shape.Ho, .W = bb->stem.shape.Wo,
                           .k = 3, .stride = 2, .pad = 1};
    pool_shape_init(&bb->pool);
    size_t np = (size_t)64 * B * bb->pool.Ho * bb->pool.Wo;
    float *p = arena_alloc(recomp ? recompute_output_arena(bb, -1, acts) : acts, np);
    int32_t *argmax = arena_alloc_bytes(inner, np * sizeof(int32_t));
    be->maxpool_forward(&bb->pool, y, p, argmax);
    H = bb->pool.Ho;
    W = bb->pool.Wo;
    const float *cur = p;
    for (int i = 0; i < bb->nblocks; i++) {
        Block *b = &bb->blocks[i];
        if (!recomp) {
            cur = block_forward(bb, b, be, acts, acts, cur, B, &H, &W);
            continue;
        }
        arena_reset(inner); /* the previous block's internals are dead */
        cur = block_forward(bb, b, be, inner, recompute_output_arena(bb, i, acts), cur, B, &H, &W);
        if (block_trainable(b)) {
            b->y1 = b->y2 = NULL; /* in the scratch: rebuilt by the backward */
            bb->bwd_flops += convbn_flops(&b->c1) + (b->bottleneck ? convbn_flops(&b->c2) : 0);
        }
    }
    *h = H;
    *w = W;
    return (float *)cur;
}

/* Backward through conv + FrozenBN (+ReLU): dy is the gradient of the post-BN output y.
 * Accumulates dw, and dx if dx != NULL. */
static void convbn_backward(Backbone *bb, ConvBN *c, const Backend *be, Arena *acts,
                            const float *dy, const float *y, int relu, const float *x, float *dx) {
    (void)bb;
    const ConvShape *s = &c->shape;
    size_t n = (size_t)s->B * s->Ho * s->Wo;
    float *dc = arena_zeros(acts, (size_t)c->cout * n); /* [cout, B, Ho, Wo] grad of conv output */
    be->channel_affine_backward(dy, y, c->scale, dc, c->cout, n, relu);
    if (c->gw) be->conv2d_backward_weight(s, dc, x, c->gw, NULL);
    if (dx) be->conv2d_backward_data(s, dc, c->w, dx);
}

/* dz: gradient of the block output. Accumulates into dx when dx != NULL. */
static void block_backward(Backbone *bb, Block *b, const Backend *be, Arena *acts, const float *dz,
                           float *dx) {
    ConvShape *sl = b->bottleneck ? &b->c3.shape : &b->c2.shape;
    size_t nz = (size_t)sl->Cout * sl->B * sl->Ho * sl->Wo;
    float *dsum = arena_zeros(acts, nz); /* gradient of bn(conv) + identity */
    be->relu_backward(dz, b->z, dsum, nz);
    if (b->has_ds)
        convbn_backward(bb, &b->ds, be, acts, dsum, NULL, 0, b->x, dx);
    else if (dx)
        be->axpy(1.0f, dsum, dx, nz);
    const ConvShape *s1 = &b->c1.shape;
    float *dy1 = arena_zeros(acts, (size_t)b->c1.cout * s1->B * s1->Ho * s1->Wo);
    if (b->bottleneck) {
        const ConvShape *s2 = &b->c2.shape;
        float *dy2 = arena_zeros(acts, (size_t)b->c2.cout * s2->B * s2->Ho * s2->Wo);
        convbn_backward(bb, &b->c3, be, acts, dsum, NULL, 0, b->y2, dy2);
        convbn_backward(bb, &b->c2, be, acts, dy2, b->y2, 1, b->y1, dy1);
    } else {
        convbn_backward(bb, &b->c2, be, acts, dsum, NULL, 0, b->y1, dy1);
    }
    convbn_backward(bb, &b->c1, be, acts, dy1, b->y1, 1, b->x, dx);
}

/* Rebuilds what block_backward reads besides the checkpoints x and z: y1 (and y2). The output
 * of the last conv and the downsample branch are not needed (z stands for them). */
static void block_recompute(Block *b, const Backend *be, Arena *a) {
    b->y1 = convbn_recompute(&b->c1, be, a, b->x, 1);
    if (b->bottleneck) b->y2 = convbn_recompute(&b->c2, be, a, b->y1, 1);
}

void backbone_backward(Backbone *bb, const Backend *be, Arena *acts, const float *dfeat) {
    const float *dz = dfeat;
    for (int i = bb->nblocks - 1; i >= bb->first_trainable; i--) {
        Block *b = &bb->blocks[i];
        if (!block_trainable(b)) break; /* the whole backbone is frozen */
        Arena *tmp = acts, *dx_arena = acts;
        if (bb->recomputed) {
            tmp = bb->scratch;
            arena_reset(tmp); /* the previous block's recomputed activations and temporaries */
            block_recompute(b, be, tmp);
            dx_arena = bb->carry[i % 2]; /* dz is in the other one (or is dfeat) */
        }
        float *dx = NULL;
        if (i > bb->first_trainable) {
            const ConvShape *s = &b->c1.shape; /* block input geometry */
            if (bb->recomputed) arena_reset(dx_arena);
            dx = arena_zeros(dx_arena, (size_t)s->Cin * s->B * s->H * s->W);
        }
        block_backward(bb, b, be, tmp, dz, dx);
        dz = dx;
    }
}

double backbone_forward_flops(const Backbone *bb) { return bb->fwd_flops; }
double backbone_backward_flops(const Backbone *bb) { return bb->bwd_flops; }
