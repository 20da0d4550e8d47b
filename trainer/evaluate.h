/* evaluate.h - COCO evaluation of the model on a dataset split: the val transform through the
 * data loader, eval-mode forward, the reference PostProcess (every query reported with its best
 * real class, boxes in original-image pixels) and COCO bbox AP (trainer/coco_eval.h). */
#ifndef DETR_EVALUATE_H
#define DETR_EVALUATE_H
#include <stddef.h>
#include "../dataloader/dataset.h"
#include "coco_eval.h"
#include "detr.h"

typedef struct {
    int batch, workers;
    int val_size, max_size;   /* val transform: short side, longest side (0 = 800 / 1333) */
    const char *detections_out; /* COCO result JSON written here (NULL = none) */
    /* The uint8 data path (trainer/input_batch.h), as training uses with --gpu-preprocess: the
     * loader delivers uint8 batches; with a CUDA device current they are copied on a copy stream
     * and normalised on the GPU, else normalised on the host with the loader's exact operations
     * (same images bit for bit). 0 = the loader's float batches. */
    int uint8_input;
    /* memory of the loader's batch slots (pinned on a GPU), NULL = ordinary host memory */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *p);
} EvalOptions;

typedef struct {
    CocoEvalResult r;         /* stats[12], per-category AP */
    int images;
    double seconds;
} EvalSummary;

/* Evaluates m on ds against the ground truth gt (loaded from ds's annotation file).
 * Returns 0 or -1 with err. Free out->r with coco_eval_result_free. */
int evaluate_dataset(Detr *m, const Dataset *ds, CocoEval *gt, const EvalOptions *o,
                     EvalSummary *out, char *err, size_t errlen);

#endif
