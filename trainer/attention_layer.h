/* attention_layer.h - PyTorch's nn.MultiheadAttention as DETR uses it: a packed input
 * projection in_proj [3D, D] (rows [0,D) = Wq, [D,2D) = Wk, [2D,3D) = Wv), the attention core
 * of the backend (scaling, key padding mask, dropout on the probabilities), and out_proj.
 * Tokens are batch-major rows: [B*Sq, D] for queries, [B*Sk, D] for keys and values.
 *
 * Self-attention (q_in == k_in) projects q and k with ONE linear of width 2D over the first
 * 2D rows of in_proj; cross-attention projects them separately. */
#ifndef DETR_ATTENTION_LAYER_H
#define DETR_ATTENTION_LAYER_H
#include <stdint.h>
#include "arena.h"
#include "backend.h"
#include "params.h"
#include "rng.h"

typedef struct {
    float *in_w, *in_b;     /* [3D, D], [3D] */
    float *out_w, *out_b;   /* [D, D], [D] */
    float *d_in_w, *d_in_b; /* gradients, same shapes */
    float *d_out_w, *d_out_b;
} MhaParams;

/* What one forward keeps for its backward (buffers from the caller's arena). */
typedef struct {
    AttnShape shape;     /* B, Sq, Sk, D, H, leading dims, dropout p and seed */
    const uint8_t *mask; /* [B, Sk] key padding mask or NULL (not owned) */
    float *q, *k;        /* self: q = [B*Sq, 2D] (k = q + D, ld 2D); cross: [B*Sq, D], [B*Sk, D] */
    float *v;            /* [B*Sk, D] */
    float *probs;        /* [B, H, Sq, Sk] softmax before dropout */
    float *ctx;          /* [B*Sq, D] attention output, the input of out_proj */
} MhaSaved;

/* Gradient temporaries shared by every attention backward of one step; the caller sizes them
 * for the largest call (Tq = B*Sq, Tk = B*Sk). */
typedef struct {
    float *d_ctx; /* [Tq, D] */
    float *d_qk;  /* [max(Tq*2D, Tq*D + Tk*D)] q/k projection gradients */
    float *d_v;   /* [Tk, D] */
} MhaScratch;

/* Declares "<prefix>.in_proj_weight", ".in_proj_bias", ".out_proj.weight", ".out_proj.bias"
 * in GROUP_MAIN. */
void mha_declare(MhaParams *p, ParamSet *ps, int D, const char *prefix);

/* Reference init: xavier_uniform on in_proj (as one [3D, D] matrix) and out_proj, biases zero. */
void mha_init(const MhaParams *p, const Backend *be, Rng *rng, int D);

/* y [B*Sq, D] = out_proj(attention(q_in Wq + bq, k_in Wk + bk, v_in Wv + bv)).
 *   q_in: [B*Sq, D]; k_in, v_in: [B*Sk, D]; q_in == k_in selects the fused self-attention path.
 *   mask: [B, Sk] uint8 (1 = padding) or NULL. dropout: p on the probabilities (0 = off). */
void mha_forward(const MhaParams *p, const Backend *be, Arena *acts, MhaSaved *sv,
                 const float *q_in, const float *k_in, const float *v_in, const uint8_t *mask,
                 int B, int Sq, int Sk, int D, int H, float dropout, uint64_t seed, float *y);

/* Backward of mha_forward given dy [B*Sq, D] and the same inputs: ACCUMULATES into d_q_in,
 * d_k_in, d_v_in (any may be NULL; in the self-attention case d_q_in must equal d_k_in) and into
 * every parameter gradient. */
void mha_backward(const MhaParams *p, const Backend *be, const MhaSaved *sv, const MhaScratch *ws,
                  const float *dy, const float *q_in, const float *k_in, const float *v_in,
                  float *d_q_in, float *d_k_in, float *d_v_in);

/* Host-side init helpers shared with transformer.c: fill dst (backend memory, n floats) with
 * U(-bound, bound) drawn from rng. */
void init_uniform(const Backend *be, Rng *rng, float *dst, size_t n, float bound);
/* xavier_uniform bound of a [fan_out, fan_in] matrix: sqrt(6 / (fan_in + fan_out)). */
float xavier_bound(int fan_out, int fan_in);

#endif
