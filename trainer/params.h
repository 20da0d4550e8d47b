/* params.h - the model's named tensors.
 *
 * Model code declares every tensor once (name under the reference DETR's state-dict naming,
 * shape, group) with the addresses of the pointers it will use; params_allocate() then puts
 * all trainable tensors in one contiguous block (and their gradients in another, so clipping
 * and AdamW are single calls), and all frozen tensors (frozen weights, FrozenBN buffers) in a
 * third block, and fills in the pointers. */
#ifndef DETR_PARAMS_H
#define DETR_PARAMS_H
#include <stddef.h>
#include "backend.h"

typedef enum {
    GROUP_MAIN = 0,      /* transformer, heads, input_proj, query_embed: lr */
    GROUP_BACKBONE = 1,  /* layer2-4: lr_backbone */
    GROUP_FROZEN = 2,    /* stem, layer1, FrozenBN buffers: no gradient */
} ParamGroup;

#define PARAM_MAX_DIMS 4
#define PARAM_NAME_LEN 112

typedef struct {
    char name[PARAM_NAME_LEN];
    int ndim;
    int shape[PARAM_MAX_DIMS];
    size_t numel;
    ParamGroup group;
    size_t offset;       /* in floats, within its block */
    float **data_slot;   /* where to store the data pointer */
    float **grad_slot;   /* where to store the grad pointer (may be NULL); set NULL if frozen */
    float *data, *grad;
} Param;

typedef struct {
    Param *p;
    int n, cap;
    const Backend *be;
    float *train_data, *train_grad;  /* [n_train] each, MEM_PARAMS / MEM_GRADS */
    float *frozen_data;              /* [n_frozen], MEM_PARAMS */
    size_t n_train, n_frozen;
    size_t n_train_group[2];         /* trainable floats per group (main, backbone) */
} ParamSet;

void params_init(ParamSet *ps, const Backend *be);
/* Declares a tensor; shape is given as ndim ints. Returns its index. The name is printf-style
 * formatted from fmt. */
int params_declare(ParamSet *ps, ParamGroup group, float **data_slot, float **grad_slot, int ndim,
                   const int *shape, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* Allocates the blocks (trainable tensors of GROUP_MAIN first, then GROUP_BACKBONE, so each
 * group is one contiguous range) and fills every slot. Gradients start at zero. */
void params_allocate(ParamSet *ps);
void params_free(ParamSet *ps);
Param *params_find(ParamSet *ps, const char *name);
/* Zero all gradients. */
void params_zero_grad(ParamSet *ps);

#endif
