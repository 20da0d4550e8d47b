/* weights.h - DETR weights in safetensors under the reference state-dict names
 * (backbone.0.body.*, input_proj.*, transformer.*, query_embed.weight, class_embed.*,
 * bbox_embed.layers.N.*; FrozenBN buffers included). Hugging Face DETR names load too.
 * The model's shape is inferred from names and shapes; what shapes cannot tell comes from the
 * __metadata__ keys "nheads" (default 8) and "dilation" ("true"/"false", default false). */
#ifndef DETR_WEIGHTS_H
#define DETR_WEIGHTS_H
#include <stddef.h>
#include "config.h"
#include "detr.h"
#include "safetensors.h"

/* Tensors whose names start with this are a checkpoint's optimizer state (checkpoint.h), not
 * model tensors: loading weights ignores them, so a checkpoint is also a weights file. */
#define WEIGHTS_OPTIM_PREFIX "optim."

/* Fills cfg (dropout 0.1, aux_loss 1) from a weights file. Returns 0 or -1 with err. */
int weights_infer_config(const char *path, DetrConfig *cfg, char *err, size_t errlen);
/* Loads every tensor of the model. Missing, extra or mis-shaped tensors are all listed in err
 * (expected and found shapes), and nothing is loaded. Calls detr_prepare on success. */
int weights_load(Detr *m, const char *path, char *err, size_t errlen);
/* The same from an opened file (f->path names it in messages). */
int weights_load_file(Detr *m, const StFile *f, char *err, size_t errlen);
/* Writes every tensor (trainable and frozen) plus the metadata keys, atomically. */
int weights_save(Detr *m, const char *path, char *err, size_t errlen);
/* Adds a copy of every model tensor under its reference name, and the metadata keys nheads,
 * dilation, pre_norm and format, to w (what weights_save writes; checkpoints add more). */
void weights_add_to_writer(Detr *m, StWriter *w);

#endif
