/* config.c - presets and defaults (values from the reference DETR, detr.md §1 and §3.1). */
#include "config.h"
#include <string.h>

int detr_config_preset(const char *name, DetrConfig *c) {
    memset(c, 0, sizeof(*c));
    c->aux_loss = 1;
    c->dropout = 0.1f;
    if (strcmp(name, "tiny") == 0) {
        c->depth = 18;
        c->hidden = 64;
        c->nheads = 4;
        c->enc_layers = 2;
        c->dec_layers = 2;
        c->ffn = 128;
        c->queries = 10;  /* the embedded dataset has one object per image (see dataloader/synth.c) */
        c->num_classes = 8;
        c->dropout = 0;   /* small model, small data: it underfits; dropout 0.1 slowed the val AP
                           * of `make run` about 5x (docs/make-run.md) */
        return 0;
    }
    if (strcmp(name, "r50") == 0) {
        c->depth = 50;
        c->hidden = 256;
        c->nheads = 8;
        c->enc_layers = 6;
        c->dec_layers = 6;
        c->ffn = 2048;
        c->queries = 100;
        c->num_classes = 91;
        return 0;
    }
    return -1;
}

void optim_config_default(OptimConfig *o) {
    o->lr = 1e-4f;
    o->lr_backbone = 1e-5f;
    o->weight_decay = 1e-4f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->clip = 0.1f;
    o->lr_drop = 200;
}
