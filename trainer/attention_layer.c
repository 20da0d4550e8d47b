/* attention_layer.c - see attention_layer.h */
#include "attention_layer.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void mha_declare(MhaParams *p, ParamSet *ps, int D, const char *prefix) {
    int in_w[2] = {3 * D, D}, in_b[1] = {3 * D}, out_w[2] = {D, D}, out_b[1] = {D};
    params_declare(ps, GROUP_MAIN, &p->in_w, &p->d_in_w, 2, in_w, "%s.in_proj_weight", prefix);
    params_declare(ps, GROUP_MAIN, &p->in_b, &p->d_in_b, 1, in_b, "%s.in_proj_bias", prefix);
    params_declare(ps, GROUP_MAIN, &p->out_w, &p->d_out_w, 2, out_w, "%s.out_proj.weight", prefix);
    params_declare(ps, GROUP_MAIN, &p->out_b, &p->d_out_b, 1, out_b, "%s.out_proj.bias", prefix);
}

float xavier_bound(int fan_out, int fan_in) { return sqrtf(6.0f / (float)(fan_in + fan_out)); }

void init_uniform(const Backend *be, Rng *rng, float *dst, size_t n, float bound) {
    float *host = malloc(n * sizeof(float)); /* [n] */
    if (!host) {
        fprintf(stderr, "attention_layer.c: out of host memory drawing %zu initial weights\n", n);
        exit(EXIT_FAILURE);
    }
    for (size_t i = 0; i < n; i++) host[i] = (2.0f * rng_next_uniform(rng) - 1.0f) * bound;
    be->upload(dst, host, n * sizeof(float));
    free(host);
}

void mha_init(const MhaParams *p, const Backend *be, Rng *rng, int D) {
    init_uniform(be, rng, p->in_w, (size_t)3 * D * D, xavier_bound(3 * D, D));
    be->fill(p->in_b, 0.0f, (size_t)3 * D);
    init_uniform(be, rng, p->out_w, (size_t)D * D, xavier_bound(D, D));
    be->fill(p->out_b, 0.0f, (size_t)D);
}

/* Projects q, k, v into fresh saved buffers and fills the attention shape's leading dims. */
static void project_qkv(const MhaParams *p, const Backend *be, Arena *acts, MhaSaved *sv,
                        const float *q_in, const float *k_in, const float *v_in) {
    AttnShape *s = &sv->shape;
    int D = s->D, Tq = s->B * s->Sq, Tk = s->B * s->Sk;
    const float *wk = p->in_w + (size_t)D * D, *wv = p->in_w + (size_t)2 * D * D;
    if (q_in == k_in) {
        /* q and k from the same tokens: one GEMM over [Wq; Wk] (contiguous rows [0, 2D)) */
        sv->q = arena_alloc(acts, (size_t)Tq * 2 * D); /* [Tq, 2D] = [q | k] */
        sv->k = sv->q + D;
        be->linear_forward(q_in, p->in_w, p->in_b, sv->q, Tq, D, 2 * D);
        s->ldq = s->ldk = 2 * D;
    } else {
        sv->q = arena_alloc(acts, (size_t)Tq * D); /* [Tq, D] */
        sv->k = arena_alloc(acts, (size_t)Tk * D); /* [Tk, D] */
        be->linear_forward(q_in, p->in_w, p->in_b, sv->q, Tq, D, D);
        be->linear_forward(k_in, wk, p->in_b + D, sv->k, Tk, D, D);
        s->ldq = s->ldk = D;
    }
    sv->v = arena_alloc(acts, (size_t)Tk * D); /* [Tk, D] */
    be->linear_forward(v_in, wv, p->in_b + 2 * D, sv->v, Tk, D, D);
    s->ldv = D;
}

void mha_forward(const MhaParams *p, const Backend *be, Arena *acts, MhaSaved *sv,
                 const float *q_in, const float *k_in, const float *v_in, const uint8_t *mask,
                 int B, int Sq, int Sk, int D, int H, float dropout, uint64_t seed, float *y) {
    AttnShape *s = &sv->shape;
    *s = (AttnShape){.B = B, .Sq = Sq, .Sk = Sk, .D = D, .H = H, .dropout = dropout, .seed = seed};
    sv->mask = mask;
    project_qkv(p, be, acts, sv, q_in, k_in, v_in);
    sv->probs = arena_alloc(acts, (size_t)B * H * Sq * Sk); /* [B, H, Sq, Sk] */
    sv->ctx = arena_alloc(acts, (size_t)B * Sq * D);        /* [B*Sq, D] */
    be->attention_forward(s, sv->q, sv->k, sv->v, mask, sv->probs, sv->ctx);
    be->linear_forward(sv->ctx, p->out_w, p->out_b, y, B * Sq, D, D);
}

void mha_backward(const MhaParams *p, const Backend *be, const MhaSaved *sv, const MhaScratch *ws,
                  const float *dy, const float *q_in, const float *k_in, const float *v_in,
                  float *d_q_in, float *d_k_in, float *d_v_in) {
    const AttnShape *s = &sv->shape;
    int D = s->D, Tq = s->B * s->Sq, Tk = s->B * s->Sk;
    int fused = (q_in == k_in);
    const float *wk = p->in_w + (size_t)D * D, *wv = p->in_w + (size_t)2 * D * D;

    /* out_proj: d_ctx [Tq, D] = dy [Tq, D] out_w [D, D] overwritten (no zero fill), then the
     * parameter gradients */
    be->gemm(0, 0, Tq, D, D, 1.0f, dy, D, 0, p->out_w, D, 0, 0.0f, ws->d_ctx, D, 0, 1);
    be->linear_backward(dy, sv->ctx, p->out_w, NULL, p->d_out_w, p->d_out_b, Tq, D, D);

    /* attention core; q/k gradients share the layout of q/k */
    float *dq = ws->d_qk;                                         /* fused [Tq, 2D], else [Tq, D] */
    float *dk = fused ? ws->d_qk + D : ws->d_qk + (size_t)Tq * D; /* else [Tk, D] */
    float *dv = ws->d_v;                                          /* [Tk, D] */
    be->fill(ws->d_qk, 0.0f, (size_t)Tq * D + (size_t)Tk * D);    /* = Tq*2D when fused */
    be->fill(dv, 0.0f, (size_t)Tk * D);
    be->attention_backward(s, ws->d_ctx, sv->q, sv->k, sv->v, sv->probs, dq, dk, dv);

    /* in_proj */
    be->linear_backward(dv, v_in, wv, d_v_in, p->d_in_w + (size_t)2 * D * D, p->d_in_b + 2 * D, Tk,
                        D, D);
    if (fused) {
        if (d_q_in != d_k_in) {
            fprintf(stderr, "attention_layer.c: self-attention backward needs d_q_in == d_k_in\n");
            abort();
        }
        be->linear_backward(dq, q_in, p->in_w, d_q_in, p->d_in_w, p->d_in_b, Tq, D, 2 * D);
    } else {
        be->linear_backward(dq, q_in, p->in_w, d_q_in, p->d_in_w, p->d_in_b, Tq, D, D);
        be->linear_backward(dk, k_in, wk, d_k_in, p->d_in_w + (size_t)D * D, p->d_in_b + D, Tk, D,
                            D);
    }
}
