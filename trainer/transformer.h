/* transformer.h - DETR's encoder-decoder transformer (reference models/transformer.py):
 * post-norm by default, pre-norm with cfg->pre_norm; positions added to q and k only; every
 * decoder layer's output goes through the shared decoder.norm for hs, while the un-normalised
 * output feeds the next layer. Forward overwrites its outputs; backward accumulates. */
#ifndef DETR_TRANSFORMER_H
#define DETR_TRANSFORMER_H
#include <stdint.h>
#include "arena.h"
#include "backend.h"
#include "config.h"
#include "params.h"
#include "rng.h"
#include "../profiler/prof.h"

typedef struct Transformer Transformer;

/* Declares every transformer parameter under the reference names
 *   transformer.encoder.layers.{i}.self_attn.in_proj_weight [3D,D] / in_proj_bias [3D] /
 *     out_proj.weight [D,D] / out_proj.bias [D], linear1.weight [F,D] / linear1.bias [F] /
 *     linear2.weight [D,F] / linear2.bias [D], norm1/norm2.{weight,bias} [D];
 *   transformer.encoder.norm.{weight,bias} only if pre_norm;
 *   transformer.decoder.layers.{i}.self_attn.*, .multihead_attn.*, linear1/2, norm1/2/3;
 *   transformer.decoder.norm.{weight,bias}.
 * All in GROUP_MAIN. Returns NULL (with a message) on an invalid configuration. */
Transformer *transformer_create(const DetrConfig *cfg, ParamSet *ps);
void transformer_destroy(Transformer *t);
/* Records the encoder and decoder forward as profiler ranges (prof may be NULL). */
void transformer_set_profiler(Transformer *t, Prof *prof);

/* Reference initialisation (after params_allocate): xavier_uniform on every matrix (in_proj as
 * one [3D,D] matrix), MHA biases zero, linear1/linear2 biases U(+-1/sqrt(fan_in)), LayerNorm
 * weight 1 and bias 0. Drawn on the host from rng, then uploaded. */
void transformer_init(Transformer *t, const Backend *be, Rng *rng);

/* Forward.
 *   src, pos:  [B*S, D] batch-major tokens (row b*S + s), backend memory
 *   mask:      [B, S] uint8, 1 = padding (key padding mask of encoder self-attention and decoder
 *              cross-attention, not of decoder self-attention), backend memory
 *   query_pos: [Q, D] (query_embed.weight, the same for every image)
 *   hs (out):  [L, B*Q, D] every decoder layer's output through decoder.norm (row b*Q + q)
 *   training:  nonzero -> dropout p = cfg->dropout at every site, each with its own seed
 *              rng_hash64(seed, site), remembered for backward; zero -> no dropout.
 * Saved activations come from acts and stay valid until the caller resets the arena. */
void transformer_forward(Transformer *t, const Backend *be, Arena *acts, const float *src,
                         const float *pos, const uint8_t *mask, const float *query_pos, int B,
                         int S, float *hs, int training, uint64_t seed);

/* Backward of the last forward: dhs [L, B*Q, D]; ACCUMULATES into dsrc [B*S, D] (may be NULL),
 * dquery_pos [Q, D] (may be NULL; summed over the batch) and every transformer parameter
 * gradient. Temporary gradient buffers come from acts. */
void transformer_backward(Transformer *t, const Backend *be, Arena *acts, const float *dhs,
                          float *dsrc, float *dquery_pos);

#endif
