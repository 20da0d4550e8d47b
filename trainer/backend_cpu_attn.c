/* backend_cpu_attn.c - multi-head attention core on the CPU (see AttnShape in backend.h).
 *
 * Per (batch b, head h), with Q_bh = rows of batch b, columns [h*dh, (h+1)*dh) of q (row
 * stride ldq), and likewise K_bh, V_bh, O_bh:
 *   S = Q_bh K_bh^T / sqrt(dh)        one sgemm, written straight into probs[b, h]
 *   P = softmax(S + mask)             all B*H*Sq rows in one OpenMP loop (saved for backward)
 *   O_bh = Drop(P) V_bh               one sgemm (the dropped copy of P in the workspace)
 * Backward, per (b, h):
 *   dV_bh += Drop(P)^T dO_bh;  dPdrop = dO_bh V_bh^T;  dP = Drop'(dPdrop);
 *   dS = P * (dP - rowsum(dP * P));  dQ_bh += dS K_bh / sqrt(dh);  dK_bh += dS^T Q_bh / sqrt(dh)
 * Dropout keeps probs element e (flat index into [B, H, Sq, Sk]) when rng_uniform(seed, e) >= p
 * and scales it by 1/(1-p); backward regenerates the mask from the seed. */
#include <math.h>
#include "backend_cpu_internal.h"
#include "rng.h"

static void attn_check_shape(const char *op, const AttnShape *s) {
    if (s->B < 1 || s->Sq < 1 || s->Sk < 1 || s->D < 1 || s->H < 1)
        cpu_shape_error(op, "AttnShape has a non-positive size");
    if (s->D % s->H != 0) cpu_shape_error(op, "D is not a multiple of the number of heads H");
    if (s->ldq < s->D || s->ldk < s->D || s->ldv < s->D)
        cpu_shape_error(op, "a leading dimension (ldq/ldk/ldv) is smaller than D");
    if (!(s->dropout >= 0.0f && s->dropout < 1.0f))
        cpu_shape_error(op, "dropout probability outside [0, 1)");
}

/* dst [n] = Drop(P [n]) for the (b, h) block whose first element has flat index base. */
static void dropout_block(const float *P, float *dst, size_t n, uint64_t base, float p,
                          uint64_t seed) {
    const long spans = (long)((n + CPU_SPAN - 1) / CPU_SPAN);
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN / 4)
    for (long sp = 0; sp < spans; sp++) {
        const size_t lo = (size_t)sp * CPU_SPAN, len = n - lo < CPU_SPAN ? n - lo : CPU_SPAN;
        cpu_dropout_span(P + lo, dst + lo, len, base + lo, p, seed);
    }
}

void cpu_attention_forward(const AttnShape *s, const float *q, const float *k, const float *v,
                           const uint8_t *key_padding_mask, float *probs, float *out) {
    attn_check_shape("attention_forward", s);
    const int B = s->B, H = s->H, Sq = s->Sq, Sk = s->Sk, D = s->D, dh = D / H;
    const float scale = 1.0f / sqrtf((float)dh);
    const size_t block = (size_t)Sq * Sk; /* one [Sq, Sk] score matrix */

    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) /* probs[b, h] = scale * Q_bh K_bh^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Sq, Sk, dh, scale,
                        q + (size_t)b * Sq * s->ldq + (size_t)h * dh, s->ldq,
                        k + (size_t)b * Sk * s->ldk + (size_t)h * dh, s->ldk, 0.0f,
                        probs + ((size_t)b * H + h) * block, Sk);

    const size_t n_bias = key_padding_mask ? (size_t)B * Sk : 0;
    float *ws = cpu_workspace(n_bias + (s->dropout > 0.0f ? block : 0));
    float *mask_bias = key_padding_mask ? ws : NULL;            /* [B, Sk]: 0 or -inf */
    float *dropped = s->dropout > 0.0f ? ws + n_bias : NULL;  /* [Sq, Sk] */
    for (size_t e = 0; e < n_bias; e++) mask_bias[e] = key_padding_mask[e] ? -INFINITY : 0.0f;

    const long rows = (long)B * H * Sq;
#pragma omp parallel for schedule(static) if ((size_t)rows * Sk > CPU_PAR_MIN / 4)
    for (long r = 0; r < rows; r++) {
        const int b = (int)(r / ((long)H * Sq));
        cpu_softmax_row_inplace(probs + (size_t)r * Sk, Sk,
                                mask_bias ? mask_bias + (size_t)b * Sk : NULL);
    }

    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const size_t base = ((size_t)b * H + h) * block;
            const float *P = probs + base;
            if (dropped) {
                dropout_block(P, dropped, block, base, s->dropout, s->seed);
                P = dropped;
            }
            /* O_bh [Sq, dh] (row stride D) = P [Sq, Sk] x V_bh [Sk, dh] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Sq, dh, Sk, 1.0f, P, Sk,
                        v + (size_t)b * Sk * s->ldv + (size_t)h * dh, s->ldv, 0.0f,
                        out + (size_t)b * Sq * D + (size_t)h * dh, D);
        }
}

/* One row of dS [Sk] (holding dPdrop on entry), in place: undo the dropout scaling (the row's
 * first probability has flat index row_base), then the softmax backward against P's row. */
CPU_HOT static void scores_grad_row(float *g, const float *pr, int Sk, uint64_t row_base, float p,
                                    uint64_t seed) {
    if (p > 0.0f) {
        const float keep_scale = 1.0f / (1.0f - p);
#pragma omp simd
        for (int j = 0; j < Sk; j++) {
            const float kept = g[j] * keep_scale;
            g[j] = rng_uniform(seed, row_base + (uint64_t)j) >= p ? kept : 0.0f;
        }
    }
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < Sk; j++) dot += g[j] * pr[j];
#pragma omp simd
    for (int j = 0; j < Sk; j++) g[j] = pr[j] * (g[j] - dot);
}

/* dS [Sq, Sk] in place from dPdrop, against the saved P [Sq, Sk] of the block at flat index base. */
static void probs_grad_to_scores_grad(float *dS, const float *P, int Sq, int Sk, uint64_t base,
                                      float p, uint64_t seed) {
#pragma omp parallel for schedule(static) if ((size_t)Sq * Sk > CPU_PAR_MIN / 4)
    for (int i = 0; i < Sq; i++)
        scores_grad_row(dS + (size_t)i * Sk, P + (size_t)i * Sk, Sk, base + (uint64_t)i * Sk, p,
                        seed);
}

void cpu_attention_backward(const AttnShape *s, const float *dout, const float *q, const float *k,
                            const float *v, const float *probs, float *dq, float *dk, float *dv) {
    attn_check_shape("attention_backward", s);
    if (!dq && !dk && !dv) return;
    const int B = s->B, H = s->H, Sq = s->Sq, Sk = s->Sk, D = s->D, dh = D / H;
    const float scale = 1.0f / sqrtf((float)dh);
    const size_t block = (size_t)Sq * Sk;
    const int need_dropped = dv && s->dropout > 0.0f;
    float *ws = cpu_workspace(2 * block);
    float *dS = ws;                                     /* [Sq, Sk] */
    float *dropped = need_dropped ? ws + block : NULL;  /* [Sq, Sk] */

    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const size_t base = ((size_t)b * H + h) * block;
            const float *P = probs + base;
            const float *dO = dout + (size_t)b * Sq * D + (size_t)h * dh; /* [Sq, dh], ld D */
            const size_t qo = (size_t)b * Sq * s->ldq + (size_t)h * dh;
            const size_t ko = (size_t)b * Sk * s->ldk + (size_t)h * dh;
            const size_t vo = (size_t)b * Sk * s->ldv + (size_t)h * dh;
            if (dv) {
                const float *Pd = P;
                if (dropped) {
                    dropout_block(P, dropped, block, base, s->dropout, s->seed);
                    Pd = dropped;
                }
                /* dV_bh [Sk, dh] += Pd^T [Sk, Sq] x dO [Sq, dh] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Sk, dh, Sq, 1.0f, Pd, Sk, dO,
                            D, 1.0f, dv + vo, s->ldv);
            }
            if (!dq && !dk) continue;
            /* dPdrop [Sq, Sk] = dO [Sq, dh] x V_bh^T [dh, Sk] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Sq, Sk, dh, 1.0f, dO, D, v + vo,
                        s->ldv, 0.0f, dS, Sk);
            probs_grad_to_scores_grad(dS, P, Sq, Sk, base, s->dropout, s->seed);
            if (dq) /* dQ_bh [Sq, dh] += scale * dS [Sq, Sk] x K_bh [Sk, dh] */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Sq, dh, Sk, scale, dS, Sk,
                            k + ko, s->ldk, 1.0f, dq + qo, s->ldq);
            if (dk) /* dK_bh [Sk, dh] += scale * dS^T [Sk, Sq] x Q_bh [Sq, dh] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Sk, dh, Sq, scale, dS, Sk,
                            q + qo, s->ldq, 1.0f, dk + ko, s->ldk);
        }
}
