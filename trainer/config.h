/* config.h - the DETR model's shape and the training hyper-parameters. */
#ifndef DETR_CONFIG_H
#define DETR_CONFIG_H

typedef struct {
    int depth;        /* ResNet depth: 18, 34, 50, 101 */
    int dilation;     /* DC5: layer4 with stride 1, dilation 2 */
    int hidden;       /* transformer width d_model */
    int nheads;
    int enc_layers, dec_layers;
    int ffn;          /* dim_feedforward */
    int queries;
    int num_classes;  /* max category id + 1; the class head has num_classes + 1 outputs */
    float dropout;
    int pre_norm;
    int aux_loss;     /* auxiliary losses on every decoder layer (default on) */
} DetrConfig;

/* Presets: "tiny" (resnet18, hidden 64, 4 heads, 2+2 layers, FFN 128, 20 queries, dropout 0.1)
 * and "r50" (the paper's model). Returns 0, or -1 for an unknown name. */
int detr_config_preset(const char *name, DetrConfig *cfg);

/* Loss and matcher weights (reference defaults: 1/5/2, eos 0.1). */
typedef struct {
    float cost_class, cost_bbox, cost_giou;
    float ce_coef, bbox_coef, giou_coef;
    float eos_coef;
} LossWeights;

void loss_weights_default(LossWeights *w);

typedef struct {
    float lr, lr_backbone;  /* 1e-4, 1e-5 */
    float weight_decay;     /* 1e-4 */
    float beta1, beta2, eps;
    float clip;             /* global grad-norm clip, 0.1; <= 0 disables */
    int lr_drop;            /* StepLR step size in epochs (x0.1) */
} OptimConfig;

void optim_config_default(OptimConfig *o);

#endif
