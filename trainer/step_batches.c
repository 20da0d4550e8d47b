/* step_batches.c - see step_batches.h */
#include "step_batches.h"
#include <stdio.h>
#include <stdlib.h>

void step_batches_init(StepBatches *s, int accum, int batch, int uint8_input) {
    *s = (StepBatches){.cap = accum};
    s->held = calloc((size_t)accum, sizeof(LoaderBatch *));
    s->targets = calloc((size_t)accum * batch, sizeof(ImageTargets));
    s->mb = calloc((size_t)accum, sizeof(MicroBatch));
    s->inputs = calloc((size_t)accum, sizeof(InputBatch));
    s->stagers = calloc((size_t)accum, sizeof(InputStager *));
    if (!s->held || !s->targets || !s->mb || !s->inputs || !s->stagers) {
        fprintf(stderr, "error: out of host memory for the step's batch records\n");
        exit(1);
    }
    for (int k = 0; uint8_input && k < accum; k++) s->stagers[k] = input_stager_create(); /* NULL on the CPU */
}

void step_batches_free(StepBatches *s) {
    for (int k = 0; k < s->cap; k++) input_stager_destroy(s->stagers[k]);
    free(s->held);
    free(s->targets);
    free(s->mb);
    free(s->inputs);
    free(s->stagers);
    *s = (StepBatches){0};
}

void step_batches_stage(StepBatches *s) {
    for (; s->staged < s->n; s->staged++) {
        InputBatch *in = &s->inputs[s->staged];
        input_batch_from_loader(in, s->held[s->staged]);
        if (s->stagers[s->staged]) input_batch_upload_async(in, s->stagers[s->staged]);
    }
}

int64_t step_batches_release(StepBatches *s, Loader *ld) {
    int64_t gpu_ns = 0; /* a slot may go back only once its copy has read it */
    for (int k = 0; k < s->staged; k++) gpu_ns += input_batch_wait_copied(&s->inputs[k]);
    for (int k = 0; k < s->n; k++) loader_release(ld, s->held[k]);
    s->n = s->staged = 0;
    return gpu_ns;
}
