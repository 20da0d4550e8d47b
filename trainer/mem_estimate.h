/* mem_estimate.h - what a training run needs in memory, per category (mem.h), at its largest
 * batch, known before the first step: `detr-train --mem-limit` refuses a configuration that
 * cannot fit at start, with this estimate, instead of failing somewhere in training.
 *
 * How it is measured, not guessed: parameters and gradients are what the model allocated;
 * activations and workspace are the peaks of one forward + backward pass of the model's own
 * code on a zero batch of the largest shape the transforms can produce (B images padded to
 * side x side, side = max_size + 1 as the loader sizes its slots: a batch that mixes a portrait
 * and a landscape image reaches it); the AdamW moments (2 x trainable parameters) and the
 * loader's batch slots (slots x B x side^2 x (3 floats + 1 mask byte)) are computed. */
#ifndef DETR_MEM_ESTIMATE_H
#define DETR_MEM_ESTIMATE_H
#include <stddef.h>
#include <stdio.h>
#include "detr.h"
#include "mem.h"

typedef struct {
    size_t bytes[MEM_NCAT]; /* per category */
    size_t total;           /* their sum (the categories' peaks may not coincide: an upper bound) */
    int B, side;            /* the probed batch: B x 3 x side x side */
    int slots;              /* loader batch slots counted in MEM_INPUTS */
} MemEstimate;

/* Probes m (which must have no budget in force: call before mem_set_limit) with a B x side x side
 * zero batch and fills *e. The pass leaves the parameters unchanged and the gradients zero; its
 * activation memory stays reserved for the steps that follow. Returns 0, or -1 with err. */
int mem_estimate_training(Detr *m, int B, int side, int slots, MemEstimate *e, char *err,
                          size_t errlen);

/* "category  bytes" lines, the total and the budget, for an error message. */
void mem_estimate_print(FILE *f, const MemEstimate *e, size_t limit);

#endif
