/* resnet.h - the ResNet backbone (torchvision v1.5 layout) with FrozenBatchNorm2d.
 *
 * Tensors are named as in the reference checkpoint: backbone.0.body.conv1.weight,
 * backbone.0.body.layer2.0.bn1.running_var, ... The stem and layer1 are frozen (their FrozenBN
 * is folded into the conv as a bias); layer2-4 train at the backbone learning rate and apply
 * FrozenBN as a per-channel scale/shift fused with the ReLU. Activations are CNHW. */
#ifndef DETR_RESNET_H
#define DETR_RESNET_H
#include "arena.h"
#include "backend.h"
#include "config.h"
#include "params.h"
#include "rng.h"

typedef struct Backbone Backbone;

/* Declares every backbone tensor. train_backbone = 0 freezes layer2-4 too (lr_backbone <= 0). */
Backbone *backbone_create(const DetrConfig *cfg, ParamSet *ps, int train_backbone);
void backbone_destroy(Backbone *bb, const Backend *be);
/* Output channels of layer4: 512 (ResNet-18/34) or 2048 (50/101). */
int backbone_channels(const Backbone *bb);
/* torchvision initialisation: convs kaiming-normal (fan_out, relu gain); FrozenBN buffers at
 * weight 1, bias 0, mean 0, var 1. Call after params_allocate. */
void backbone_init(Backbone *bb, const Backend *be, Rng *rng);
/* Recomputes the FrozenBN scale/shift and the folded frozen convs from the current buffers.
 * Call after init or after loading weights. */
void backbone_prepare(Backbone *bb, const Backend *be);
/* x: [3, B, H, W] -> returns the layer4 features [C, B, h, w] (from acts); sets *h, *w. */
float *backbone_forward(Backbone *bb, const Backend *be, Arena *acts, const float *x, int B, int H,
                        int W, int *h, int *w);
/* dfeat: [C, B, h, w]. Accumulates the gradients of the trainable convs. */
void backbone_backward(Backbone *bb, const Backend *be, Arena *acts, const float *dfeat);
/* Activation recomputation (docs/recompute.md), off by default; applies from the next forward
 * (a backward follows the mode of its forward). On: the forward keeps only the block inputs and
 * outputs (checkpoints) of the trainable blocks and layer1's output, running every block's
 * internals (and the frozen stem and layer1 entirely) in a scratch arena reset per block; the
 * backward re-runs each trainable block's convs from its saved input just before that block's
 * backward, with the block's gradient temporaries in the same scratch. Same ops on the same
 * inputs: results are bitwise those without recomputation. Off again: the scratch is freed at the
 * next forward. */
void backbone_set_recompute(Backbone *bb, int on);
int backbone_recompute(const Backbone *bb);
/* Memory of recomputation's own arenas (scratch and the two carries, charged to MEM_ACTS): bytes
 * reserved and backend allocations held now (3 in the steady state; 0 when never on). */
void backbone_recompute_memory(const Backbone *bb, size_t *bytes, int *chunks);
/* Analytic FLOPs of the last forward (multiply-add = 2 FLOPs), and of its backward (with
 * recomputation, the backward's FLOPs include the re-run convs). */
double backbone_forward_flops(const Backbone *bb);
double backbone_backward_flops(const Backbone *bb);

#endif
