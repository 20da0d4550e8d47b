/* step_batches.h - the loader batches of one training step (up to accum micro-batches), with
 * their targets, model inputs and GPU copy stagers.
 *
 * The training loop keeps two: the step it trains and the next one. Before a step's compute it
 * takes the next step's batches that are already ready (loader_try_next, never waiting) and
 * starts their host-to-device copies on the copy stream, so on a GPU those copies overlap this
 * step's kernels instead of delaying the next step; the next step then only fetches (blocking)
 * what was not ready. Batches, their order and the results are the same as without it. */
#ifndef DETR_STEP_BATCHES_H
#define DETR_STEP_BATCHES_H
#include "../dataloader/loader.h"
#include "input_batch.h"
#include "train.h"

typedef struct {
    int cap;                /* accum: micro-batches per step */
    LoaderBatch **held;     /* [cap] batches held from the loader */
    ImageTargets *targets;  /* [cap * batch] */
    MicroBatch *mb;         /* [cap] */
    InputBatch *inputs;     /* [cap] views of held[k] as model inputs */
    InputStager **stagers;  /* [cap] GPU copy engines (NULL entries: host path) */
    int n;                  /* batches held */
    int staged;             /* inputs[0..staged) made (and their copies started) */
} StepBatches;

/* uint8_input (--gpu-preprocess): one GPU stager per micro-batch slot when a CUDA device is
 * current (input_stager_create). */
void step_batches_init(StepBatches *s, int accum, int batch, int uint8_input);
void step_batches_free(StepBatches *s);
/* Makes the model inputs of held[staged..n) and starts their copies (no-op on the host path). */
void step_batches_stage(StepBatches *s);
/* Waits for the copies of every staged batch and returns their GPU time in ns (0 on the host
 * path); then gives every held batch back to the loader. Leaves n = staged = 0. */
int64_t step_batches_release(StepBatches *s, Loader *ld);

#endif
