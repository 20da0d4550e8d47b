/* detr.h - the whole DETR model: backbone -> input_proj + sine positions -> transformer ->
 * class head and box MLP on every decoder layer; forward, loss (criterion.h) and backward.
 * Reference: detr.md §1. */
#ifndef DETR_DETR_H
#define DETR_DETR_H
#include <stdint.h>
#include "arena.h"
#include "backend.h"
#include "config.h"
#include "criterion.h"
#include "params.h"
#include "resnet.h"
#include "transformer.h"

#define DETR_MAX_LAYERS 16

/* Phases of one step, timed by detr_forward / detr_loss_backward (wall seconds) and counted in
 * FLOPs (analytic, multiply-add = 2). The optimizer phase is filled by the trainer. */
typedef enum {
    PHASE_BACKBONE, PHASE_TRANSFORMER, PHASE_HEADS, PHASE_MATCHER, PHASE_LOSS,
    PHASE_BWD_HEADS, PHASE_BWD_TRANSFORMER, PHASE_BWD_BACKBONE, PHASE_OPTIMIZER, PHASE_N
} Phase;
extern const char *const PHASE_NAMES[PHASE_N];

/* Produces a batch's backbone input when detr_forward gets images == NULL: backend CNHW
 * [3, B, H, W] normalised floats, 0 on padding, allocated from acts (already reset for this
 * forward). The batch is identified by its host mask pointer. NULL = unknown batch.
 * (trainer/input_batch.h: input_batch_set_images, the uint8 / GPU data path.) */
typedef float *(*DetrInputHook)(void *ctx, const Backend *be, Arena *acts, const uint8_t *mask,
                                int B, int H, int W);

typedef struct {
    DetrConfig cfg;
    const Backend *be;
    ParamSet ps;
    Backbone *bb;
    Transformer *tf;
    int C1; /* num_classes + 1 */

    /* parameters (data, grad) */
    float *proj_w, *proj_gw;          /* input_proj.weight [D, Cb, 1, 1] */
    float *proj_b, *proj_gb;          /* input_proj.bias [D] */
    float *query, *gquery;            /* query_embed.weight [Q, D] */
    float *cls_w, *cls_gw;            /* class_embed.weight [C1, D] */
    float *cls_b, *cls_gb;            /* class_embed.bias [C1] */
    float *mlp_w[3], *mlp_gw[3];      /* bbox_embed.layers.i.weight [D,D], [D,D], [4,D] */
    float *mlp_b[3], *mlp_gb[3];      /* bbox_embed.layers.i.bias [D], [D], [4] */

    Arena *acts; /* per-step activations and their gradients */
    Prof *prof;  /* phase ranges (NULL: NVTX only); set with detr_set_profiler */
    DetrInputHook input_hook; /* images of batches given without host images; detr_set_input_hook */
    void *input_ctx;

    /* state of the last forward */
    int B, H, W, h, w, S, L;
    ConvShape proj_shape;
    float *feat;       /* [Cb, B, h, w] backbone output */
    float *src;        /* [B*S, D] projected features, tokens */
    float *pos;        /* [B*S, D] sine position encoding */
    uint8_t *mask_s;   /* [B, S] downsampled padding mask (backend memory) */
    float *hs;         /* [L, B*Q, D] decoder outputs after the shared norm */
    float *mlp_h1, *mlp_h2; /* [L*B*Q, D] box MLP hidden activations (post-ReLU) */
    float *logits;     /* [L, B*Q, C1] */
    float *boxes;      /* [L, B*Q, 4] post-sigmoid cxcywh */
    float *logits_host, *boxes_host; /* host copies, same shapes */
    double phase_s[PHASE_N];         /* wall time of each phase in the last step */
    double phase_flops[PHASE_N];     /* analytic FLOPs of each phase in the last step */
} Detr;

/* Builds the model and allocates its parameters (zero); train_backbone = lr_backbone > 0. */
Detr *detr_create(const DetrConfig *cfg, const Backend *be, int train_backbone);
void detr_destroy(Detr *m);
/* Reference initialisation (detr.md §1.7), seeded. */
void detr_init(Detr *m, uint64_t seed);
/* Phase ranges (backbone, encoder, decoder, heads, loss, backward) go to prof. */
void detr_set_profiler(Detr *m, Prof *prof);
/* Call after weights change outside the optimizer (load): refreshes derived tensors. */
void detr_prepare(Detr *m);

/* Forward. images: host [B, 3, H, W] normalised and padded, or NULL: the input hook makes the
 * batch's images on the backend (uint8 batches, GPU preprocessing); mask: host [B, H, W]
 * (1 = padding). After it, logits_host / boxes_host hold every layer's predictions. Activations
 * are kept for detr_backward until the next forward. */
void detr_forward(Detr *m, const float *images, const uint8_t *mask, int B, int H, int W,
                  int training, uint64_t seed);
/* Sets (fn != NULL) or clears the input hook used by detr_forward for images == NULL. */
void detr_set_input_hook(Detr *m, DetrInputHook fn, void *ctx);

/* Losses of every decoder layer (index L-1 is the final one), and their gradient:
 * computes the criterion on the last forward's predictions and, if want_grad, backpropagates
 * the weighted total through the whole model, ACCUMULATING parameter gradients (scaled by
 * grad_scale, e.g. 1/accum). Returns 0, or -1 with err filled on a non-finite value. */
typedef struct {
    LayerLosses layer[DETR_MAX_LAYERS];
    int L;
    int first;    /* first layer with losses: 0 with auxiliary losses, else L-1 */
    double total; /* weighted sum over layers */
} DetrLosses;
/* The reference's loss-dict name of a term of one decoder layer: "loss_ce" for the final layer,
 * "loss_ce_0", "loss_ce_1", ... for the auxiliary ones. */
void detr_loss_name(const DetrLosses *l, int layer, const char *term, char *buf, size_t len);
int detr_loss_backward(Detr *m, const ImageTargets *targets, const LossWeights *w, int want_grad,
                       double grad_scale, DetrLosses *out, char *err, size_t errlen);

/* The same for one micro-batch of a larger batch (gradient accumulation): every loss term and
 * the gradient are this micro-batch's share, divided by the WHOLE batch's normalisers
 * (criterion.h: LossNormalisers, which must include these targets), so that the micro-batches'
 * losses (detr_losses_add) and accumulated gradients equal those of the whole batch in one
 * forward. detr_loss_backward is this with the normalisers of its own batch. Exact only when the
 * forward does not depend on the batch's composition: no dropout (or the same dropout masks), and
 * the same padded size (a big batch pads its images to its largest image, a micro-batch to its
 * own; padding changes the outputs slightly, in the reference too). */
int detr_loss_backward_partial(Detr *m, const ImageTargets *targets, const LossWeights *w,
                               const LossNormalisers *norm, int want_grad, double grad_scale,
                               DetrLosses *out, char *err, size_t errlen);
/* acc += part, term by term (acc zeroed first for the first part). */
void detr_losses_add(DetrLosses *acc, const DetrLosses *part);

/* Counts of trainable floats (excluding alignment padding). */
size_t detr_num_trainable(const Detr *m);

#endif
