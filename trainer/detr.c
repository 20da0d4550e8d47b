/* detr.c - see detr.h. Reference: detr.md §1.1-§1.7. */
#include "detr.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "input_batch.h"
#include "posenc.h"
#include "timer.h"

const char *const PHASE_NAMES[PHASE_N] = {"backbone", "transformer", "heads", "matcher", "loss",
    "backward_heads", "backward_transformer", "backward_backbone", "optimizer"};

static void declare_linear(ParamSet *ps, float **w, float **gw, float **b, float **gb, int out,
                           int in, const char *prefix) {
    int ws[2] = {out, in}, bs[1] = {out};
    params_declare(ps, GROUP_MAIN, w, gw, 2, ws, "%s.weight", prefix);
    params_declare(ps, GROUP_MAIN, b, gb, 1, bs, "%s.bias", prefix);
}

Detr *detr_create(const DetrConfig *cfg, const Backend *be, int train_backbone) {
    if (cfg->dec_layers < 1 || cfg->dec_layers > DETR_MAX_LAYERS) {
        fprintf(stderr, "error: dec_layers must be in 1..%d (got %d)\n", DETR_MAX_LAYERS, cfg->dec_layers);
        exit(2);
    }
    if (cfg->hidden % cfg->nheads != 0 || cfg->hidden % 2 != 0) {
        fprintf(stderr, "error: hidden dim %d must be even and divisible by nheads %d\n", cfg->hidden,
                cfg->nheads);
        exit(2);
    }
    Detr *m = calloc(1, sizeof(Detr));
    m->cfg = *cfg;
    m->be = be;
    m->C1 = cfg->num_classes + 1;
    params_init(&m->ps, be);
    m->bb = backbone_create(cfg, &m->ps, train_backbone);
    int D = cfg->hidden, Cb = backbone_channels(m->bb);
    m->tf = transformer_create(cfg, &m->ps);
    int pw[4] = {D, Cb, 1, 1}, pb[1] = {D}, qs[2] = {cfg->queries, D};
    params_declare(&m->ps, GROUP_MAIN, &m->proj_w, &m->proj_gw, 4, pw, "input_proj.weight");
    params_declare(&m->ps, GROUP_MAIN, &m->proj_b, &m->proj_gb, 1, pb, "input_proj.bias");
    params_declare(&m->ps, GROUP_MAIN, &m->query, &m->gquery, 2, qs, "query_embed.weight");
    declare_linear(&m->ps, &m->cls_w, &m->cls_gw, &m->cls_b, &m->cls_gb, m->C1, D, "class_embed");
    const int mlp_out[3] = {D, D, 4};
    for (int i = 0; i < 3; i++) {
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "bbox_embed.layers.%d", i);
        declare_linear(&m->ps, &m->mlp_w[i], &m->mlp_gw[i], &m->mlp_b[i], &m->mlp_gb[i], mlp_out[i],
                       D, prefix);
    }
    params_allocate(&m->ps);
    m->acts = arena_create(be, MEM_ACTS);
    return m;
}

void detr_destroy(Detr *m) {
    if (!m) return;
    arena_destroy(m->acts);
    backbone_destroy(m->bb, m->be);
    transformer_destroy(m->tf);
    params_free(&m->ps);
    free(m->logits_host);
    free(m->boxes_host);
    free(m);
}

/* U(-bound, bound) into a backend tensor of n floats. */
static void init_uniform(const Backend *be, float *dst, size_t n, float bound, Rng *rng) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = bound * (2.0f * rng_next_uniform(rng) - 1.0f);
    be->upload(dst, h, n * sizeof(float));
    free(h);
}

/* PyTorch's default Linear/Conv init: weight and bias U(+-1/sqrt(fan_in)). */
static void init_linear(const Backend *be, float *w, float *b, int out, int fan_in, Rng *rng) {
    float bound = 1.0f / sqrtf((float)fan_in);
    init_uniform(be, w, (size_t)out * fan_in, bound, rng);
    init_uniform(be, b, (size_t)out, bound, rng);
}

void detr_init(Detr *m, uint64_t seed) {
    const Backend *be = m->be;
    Rng rng = {seed, 0};
    int D = m->cfg.hidden, Cb = backbone_channels(m->bb), Q = m->cfg.queries;
    backbone_init(m->bb, be, &rng);
    transformer_init(m->tf, be, &rng);
    init_linear(be, m->proj_w, m->proj_b, D, Cb, &rng);
    float *q = malloc((size_t)Q * D * sizeof(float));
    for (int i = 0; i < Q * D; i++) q[i] = rng_next_normal(&rng); /* nn.Embedding: N(0, 1) */
    be->upload(m->query, q, (size_t)Q * D * sizeof(float));
    free(q);
    init_linear(be, m->cls_w, m->cls_b, m->C1, D, &rng);
    const int mlp_out[3] = {D, D, 4};
    for (int i = 0; i < 3; i++) init_linear(be, m->mlp_w[i], m->mlp_b[i], mlp_out[i], D, &rng);
    detr_prepare(m);
}

void detr_set_profiler(Detr *m, Prof *prof) {
    m->prof = prof;
    transformer_set_profiler(m->tf, prof);
}

void detr_prepare(Detr *m) { backbone_prepare(m->bb, m->be); }

size_t detr_num_trainable(const Detr *m) {
    size_t n = 0;
    for (int i = 0; i < m->ps.n; i++)
        if (m->ps.p[i].group != GROUP_FROZEN) n += m->ps.p[i].numel;
    return n;
}

/* Forward FLOPs of the transformer (multiply-add = 2), S memory tokens and Q queries per
 * image: projections, attention score and value products, FFNs. */
static double transformer_flops_estimate(const DetrConfig *c, int B, int S) {
    double D = c->hidden, F = c->ffn, Q = c->queries, s = S;
    double enc = s * (4 * D * D + 2 * D * F) + 2 * s * s * D;       /* per image, per layer */
    double dec = Q * (4 * D * D + 2 * D * F) + 2 * Q * Q * D        /* self-attention + FFN */
               + Q * 2 * D * D + s * 2 * D * D + 2 * Q * s * D;      /* cross-attention */
    return 2.0 * B * (c->enc_layers * enc + c->dec_layers * dec);
}

void detr_set_input_hook(Detr *m, DetrInputHook fn, void *ctx) {
    m->input_hook = fn;
    m->input_ctx = fn ? ctx : NULL;
}

/* The backbone's input, CNHW [3, B, H, W] in backend memory: the host images [B, 3, H, W]
 * uploaded (input_batch.h), or (images == NULL) what the input hook makes. */
static float *backbone_input(Detr *m, const float *images, const uint8_t *mask, int B, int H,
                             int W) {
    const Backend *be = m->be;
    if (!images) {
        float *x = m->input_hook ? m->input_hook(m->input_ctx, be, m->acts, mask, B, H, W) : NULL;
        if (!x) {
            fprintf(stderr, "error: detr_forward: no images for this %d x %d x %d batch (host images "
                    "NULL and %s)\n", B, H, W, m->input_hook ? "the input hook does not know its "
                    "mask" : "no input hook set");
            exit(1);
        }
        return x;
    }
    InputBatch in = {.B = B, .H = H, .W = W, .images = images, .mask = mask};
    return input_batch_images_cnhw(&in, be, m->acts);
}

void detr_forward(Detr *m, const float *images, const uint8_t *mask, int B, int H, int W,
                  int training, uint64_t seed) {
    const Backend *be = m->be;
    const DetrConfig *cfg = &m->cfg;
    int D = cfg->hidden, Q = cfg->queries, L = cfg->dec_layers, C1 = m->C1;
    arena_reset(m->acts);
    m->B = B; m->H = H; m->W = W; m->L = L;
    for (int p = 0; p < PHASE_N; p++) m->phase_s[p] = m->phase_flops[p] = 0;
    double t0 = timer_now();
    prof_range_push(m->prof, PROF_PHASE_BACKBONE);

    /* backbone: [3, B, H, W] -> [Cb, B, h, w] */
    float *x = backbone_input(m, images, mask, B, H, W);
    m->feat = backbone_forward(m->bb, be, m->acts, x, B, H, W, &m->h, &m->w);
    int h = m->h, w = m->w, S = h * w, Cb = backbone_channels(m->bb);
    m->S = S;

    /* padding mask at feature resolution and the sine position encoding, on the host */
    uint8_t *mask_s = malloc((size_t)B * S);            /* [B, h, w] */
    float *pos = malloc((size_t)B * S * D * sizeof(float)); /* [B*S, D] */
    mask_downsample_nearest(mask, B, H, W, h, w, mask_s);
    position_encoding_sine(mask_s, B, h, w, D, pos);
    m->mask_s = arena_alloc_bytes(m->acts, (size_t)B * S);
    m->pos = arena_alloc(m->acts, (size_t)B * S * D);
    be->upload(m->mask_s, mask_s, (size_t)B * S);
    be->upload(m->pos, pos, (size_t)B * S * D * sizeof(float));
    free(mask_s);
    free(pos);


    /* input_proj (1x1 conv with bias): [Cb, B*S] -> [D, B*S] -> tokens [B*S, D] */
    m->proj_shape = (ConvShape){.B = B, .Cin = Cb, .H = h, .W = w, .Cout = D, .kh = 1, .kw = 1,
                                .stride = 1, .pad = 0, .dil = 1};
    conv_shape_init(&m->proj_shape);
    float *proj = arena_alloc(m->acts, (size_t)D * B * S); /* [D, B*S] */
    be->conv2d_forward(&m->proj_shape, m->feat, m->proj_w, m->proj_b, proj);
    m->src = arena_alloc(m->acts, (size_t)B * S * D);
    be->transpose(proj, m->src, 1, D, B * S);

    prof_range_pop(m->prof);
    double t1 = timer_now();
    m->phase_s[PHASE_BACKBONE] = t1 - t0; /* with input_proj and the position encoding */

    /* transformer -> hs [L, B*Q, D] */
    m->hs = arena_alloc(m->acts, (size_t)L * B * Q * D);
    transformer_forward(m->tf, be, m->acts, m->src, m->pos, m->mask_s, m->query, B, S, m->hs,
                        training, seed);

    double t2 = timer_now();
    m->phase_s[PHASE_TRANSFORMER] = t2 - t1;
    prof_range_push(m->prof, PROF_PHASE_HEADS);

    /* heads on all L*B*Q decoder outputs at once */
    int T = L * B * Q;
    m->logits = arena_alloc(m->acts, (size_t)T * C1);
    be->linear_forward(m->hs, m->cls_w, m->cls_b, m->logits, T, D, C1);
    m->mlp_h1 = arena_alloc(m->acts, (size_t)T * D);
    m->mlp_h2 = arena_alloc(m->acts, (size_t)T * D);
    m->boxes = arena_alloc(m->acts, (size_t)T * 4);
    be->linear_forward(m->hs, m->mlp_w[0], m->mlp_b[0], m->mlp_h1, T, D, D);
    be->relu_forward(m->mlp_h1, m->mlp_h1, (size_t)T * D);
    be->linear_forward(m->mlp_h1, m->mlp_w[1], m->mlp_b[1], m->mlp_h2, T, D, D);
    be->relu_forward(m->mlp_h2, m->mlp_h2, (size_t)T * D);
    be->linear_forward(m->mlp_h2, m->mlp_w[2], m->mlp_b[2], m->boxes, T, D, 4);
    be->sigmoid_forward(m->boxes, m->boxes, (size_t)T * 4);

    m->logits_host = realloc(m->logits_host, (size_t)T * C1 * sizeof(float));
    m->boxes_host = realloc(m->boxes_host, (size_t)T * 4 * sizeof(float));
    be->download(m->logits_host, m->logits, (size_t)T * C1 * sizeof(float));
    be->download(m->boxes_host, m->boxes, (size_t)T * 4 * sizeof(float));

    m->phase_s[PHASE_HEADS] = timer_now() - t2;
    prof_range_pop(m->prof);

    /* analytic FLOPs (multiply-add = 2); input_proj counts with the backbone phase forward
     * and with the transformer's backward (where its backward runs). Backward: twice the forward
     * where both data and weight gradients exist; the backbone counts only what its trainable
     * layers compute. */
    double proj_flops = 2.0 * D * Cb * (double)B * S;
    double heads = 2.0 * T * ((double)D * C1 + 2.0 * D * D + 4.0 * D);
    double tf = transformer_flops_estimate(cfg, B, S);
    m->phase_flops[PHASE_BACKBONE] = backbone_forward_flops(m->bb) + proj_flops;
    m->phase_flops[PHASE_TRANSFORMER] = tf;
    m->phase_flops[PHASE_HEADS] = heads;
    m->phase_flops[PHASE_BWD_HEADS] = 2 * heads;
    m->phase_flops[PHASE_BWD_TRANSFORMER] = 2 * (tf + proj_flops);
    m->phase_flops[PHASE_BWD_BACKBONE] = backbone_backward_flops(m->bb);
}

/* Backpropagates host gradients of logits/boxes [L, B*Q, *] through heads, transformer,
 * input_proj and backbone. */
static void detr_backward(Detr *m, const float *dlogits_host, const float *dboxes_host) {
    const Backend *be = m->be;
    int D = m->cfg.hidden, Q = m->cfg.queries, L = m->L, B = m->B, S = m->S, C1 = m->C1;
    int T = L * B * Q;
    Arena *a = m->acts;
    float *dlogits = arena_alloc(a, (size_t)T * C1); /* [T, C1] */
    float *dsig = arena_alloc(a, (size_t)T * 4);     /* [T, 4] grad of sigmoid output */
    be->upload(dlogits, dlogits_host, (size_t)T * C1 * sizeof(float));
    be->upload(dsig, dboxes_host, (size_t)T * 4 * sizeof(float));

    double t0 = timer_now();
    float *dhs = arena_zeros(a, (size_t)T * D); /* [L, B*Q, D] */
    be->linear_backward(dlogits, m->hs, m->cls_w, dhs, m->cls_gw, m->cls_gb, T, D, C1);
    float *dpre = arena_zeros(a, (size_t)T * 4);
    be->sigmoid_backward(dsig, m->boxes, dpre, (size_t)T * 4);
    float *dh2 = arena_zeros(a, (size_t)T * D), *dh1 = arena_zeros(a, (size_t)T * D);
    be->linear_backward(dpre, m->mlp_h2, m->mlp_w[2], dh2, m->mlp_gw[2], m->mlp_gb[2], T, D, 4);
    float *dz = arena_zeros(a, (size_t)T * D);
    be->relu_backward(dh2, m->mlp_h2, dz, (size_t)T * D);
    be->linear_backward(dz, m->mlp_h1, m->mlp_w[1], dh1, m->mlp_gw[1], m->mlp_gb[1], T, D, D);
    be->fill(dz, 0.0f, (size_t)T * D);
    be->relu_backward(dh1, m->mlp_h1, dz, (size_t)T * D);
    be->linear_backward(dz, m->hs, m->mlp_w[0], dhs, m->mlp_gw[0], m->mlp_gb[0], T, D, D);

    double t1 = timer_now();
    m->phase_s[PHASE_BWD_HEADS] = t1 - t0;
    float *dsrc = arena_zeros(a, (size_t)B * S * D); /* [B*S, D] */
    transformer_backward(m->tf, be, a, dhs, dsrc, m->gquery);

    float *dproj = arena_alloc(a, (size_t)D * B * S); /* [D, B*S] */
    be->transpose(dsrc, dproj, 1, B * S, D);
    int Cb = backbone_channels(m->bb);
    float *dfeat = arena_zeros(a, (size_t)Cb * B * S); /* [Cb, B, h, w] */
    be->conv2d_backward_weight(&m->proj_shape, dproj, m->feat, m->proj_gw, m->proj_gb);
    be->conv2d_backward_data(&m->proj_shape, dproj, m->proj_w, dfeat);
    double t2 = timer_now();
    m->phase_s[PHASE_BWD_TRANSFORMER] = t2 - t1;
    backbone_backward(m->bb, be, a, dfeat);
    m->phase_s[PHASE_BWD_BACKBONE] = timer_now() - t2;
}

int detr_loss_backward_partial(Detr *m, const ImageTargets *targets, const LossWeights *w,
                               const LossNormalisers *norm, int want_grad, double grad_scale,
                               DetrLosses *out, char *err, size_t errlen) {
    int B = m->B, Q = m->cfg.queries, L = m->L, C1 = m->C1;
    size_t per_logits = (size_t)B * Q * C1, per_boxes = (size_t)B * Q * 4;
    float *dlogits = NULL, *dboxes = NULL; /* host [L, B*Q, C1], [L, B*Q, 4] */
    if (want_grad) {
        dlogits = calloc((size_t)L * per_logits, sizeof(float));
        dboxes = calloc((size_t)L * per_boxes, sizeof(float));
    }
    memset(out, 0, sizeof(*out));
    out->L = L;
    out->first = m->cfg.aux_loss ? 0 : L - 1; /* the final layer always, the others with aux loss */
    int rc = 0;
    /* Every layer's matching first (its own phase), then every layer's losses. */
    int *matching = host_alloc(MEM_WORKSPACE, (size_t)L * B * Q * sizeof(int)); /* [L, B, Q] */
    if (!matching) {
        snprintf(err, errlen, "criterion: out of memory budget for the matching");
        rc = -1;
    }
    double t0 = timer_now();
    prof_range_push(m->prof, PROF_PHASE_MATCHER);
    for (int l = out->first; rc == 0 && l < L; l++)
        rc = criterion_match(m->logits_host + l * per_logits, m->boxes_host + l * per_boxes, B, Q, C1,
                             targets, w, matching + (size_t)l * B * Q, err, errlen);
    prof_range_pop(m->prof);
    double t1 = timer_now();
    m->phase_s[PHASE_MATCHER] = t1 - t0;
    prof_range_push(m->prof, PROF_PHASE_LOSS);
    for (int l = out->first; rc == 0 && l < L; l++) {
        LayerLosses *ll = &out->layer[l];
        rc = criterion_layer_matched(m->logits_host + l * per_logits, m->boxes_host + l * per_boxes, B,
                                     Q, C1, targets, norm, w, matching + (size_t)l * B * Q, grad_scale,
                                     ll, want_grad ? dlogits + l * per_logits : NULL,
                                     want_grad ? dboxes + l * per_boxes : NULL, err, errlen);
        if (rc == 0)
            out->total += w->ce_coef * ll->loss_ce + w->bbox_coef * ll->loss_bbox +
                          w->giou_coef * ll->loss_giou;
    }
    host_free(matching);
    m->phase_s[PHASE_LOSS] = timer_now() - t1;
    prof_range_pop(m->prof);
    if (rc == 0 && want_grad) {
        prof_range_push(m->prof, PROF_PHASE_BACKWARD);
        detr_backward(m, dlogits, dboxes);
        prof_range_pop(m->prof);
    }
    free(dlogits);
    free(dboxes);
    return rc;
}

void detr_loss_name(const DetrLosses *l, int layer, const char *term, char *buf, size_t len) {
    if (layer == l->L - 1) snprintf(buf, len, "%s", term);
    else snprintf(buf, len, "%s_%d", term, layer);
}

int detr_loss_backward(Detr *m, const ImageTargets *targets, const LossWeights *w, int want_grad,
                       double grad_scale, DetrLosses *out, char *err, size_t errlen) {
    LossNormalisers norm; /* this batch alone: num_boxes = max(sum of n, 1) */
    loss_normalisers_init(&norm);
    loss_normalisers_add(&norm, targets, m->B, m->cfg.queries, w->eos_coef);
    return detr_loss_backward_partial(m, targets, w, &norm, want_grad, grad_scale, out, err, errlen);
}

void detr_losses_add(DetrLosses *acc, const DetrLosses *part) {
    acc->L = part->L;
    acc->first = part->first;
    for (int l = part->first; l < part->L; l++) {
        LayerLosses *a = &acc->layer[l];
        const LayerLosses *p = &part->layer[l];
        a->loss_ce += p->loss_ce;
        a->loss_bbox += p->loss_bbox;
        a->loss_giou += p->loss_giou;
        a->class_error += p->class_error;
        a->cardinality_error += p->cardinality_error;
    }
    acc->total += part->total;
}
