/* weight_names.h - Hugging Face DETR tensor names <-> reference (facebookresearch/detr) names.
 *
 * The reference names are those of the PyTorch state dict (docs: detr.md section 7.1, e.g.
 * "transformer.encoder.layers.0.self_attn.in_proj_weight"); the Hugging Face names are those of
 * `DetrForObjectDetection` (detr.md section 7.2). Two HF backbone namings are understood:
 *   timm   model.backbone.conv_encoder.model.layer1.0.conv1.weight   (hub facebook/detr-resnet-50)
 *   native model.backbone.conv_encoder.model.encoder.stages.0.layers.0.layer.0.convolution.weight
 * HF splits the packed attention projection: q_proj/k_proj/v_proj hold rows [0:D), [D:2D), [2D:3D)
 * of the reference in_proj_weight (and the same slices of in_proj_bias); qkv_part says which. */
#ifndef DETR_WEIGHT_NAMES_H
#define DETR_WEIGHT_NAMES_H
#include <stddef.h>

#include "safetensors.h"

typedef enum { WN_BACKBONE_TIMM = 1, WN_BACKBONE_NATIVE = 2 } WeightBackboneNaming;

/* Maps an HF name to the reference name. *qkv_part (may be NULL) gets -1, or 0/1/2 when the HF tensor
 * is the q/k/v slice of a packed in_proj. Returns 1 if mapped, 0 if hf_name is not an HF DETR
 * parameter name (e.g. "...num_batches_tracked", which callers ignore), -1 if out is too small. */
int weight_name_from_hf(const char *hf_name, char *out, size_t outlen, int *qkv_part);

/* The inverse: the HF name of a reference name (for an in_proj name, of its qkv_part slice; qkv_part
 * must be 0..2 for in_proj names and -1 otherwise). Returns 1, 0 if there is no such name, -1 if out
 * is too small. */
int weight_name_to_hf(const char *ref_name, int qkv_part, WeightBackboneNaming naming, char *out, size_t outlen);

/* 1 if name is a well-formed reference DETR parameter/buffer name, else 0. */
int weight_name_is_reference(const char *name);

/* 1 if the file's tensors use HF names: at least one HF DETR name and no reference name (other keys,
 * such as the hub file's stray num_batches_tracked, are ignored); 0 otherwise (reference names, a
 * mix of both, or no DETR name at all). */
int weight_names_are_hf(const StFile *f);

#endif
