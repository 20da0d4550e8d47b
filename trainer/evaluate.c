/* evaluate.c - see evaluate.h */
#include "evaluate.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../dataloader/loader.h"
#include "input_batch.h"
#include "postprocess.h"
#include "timer.h"

int evaluate_dataset(Detr *m, const Dataset *ds, CocoEval *gt, const EvalOptions *o,
                     EvalSummary *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    double t0 = timer_now();
    LoaderConfig lc;
    loader_config_default(&lc);
    lc.batch = o->batch;
    lc.workers = o->workers;
    lc.shuffle = 0;
    lc.drop_last = 0; /* every val image is evaluated */
    transform_config_default(&lc.tf, 0);
    if (o->val_size > 0) lc.tf.val_size = o->val_size;
    if (o->max_size > 0) lc.tf.max_size = o->max_size;
    lc.uint8_output = o->uint8_input;
    lc.alloc_host = o->alloc_host;
    lc.free_host = o->free_host;
    Loader *ld = loader_create(ds, &lc, err, errlen);
    if (!ld) return -1;
    /* uint8 batches reach the model through its input hook (training's hook is put back after);
     * with a CUDA device their copies run on the stager's copy stream */
    InputBatch in;
    InputBatchSet set = {&in, 1};
    InputStager *stager = o->uint8_input ? input_stager_create() : NULL; /* NULL on the CPU */
    DetrInputHook saved_hook = m->input_hook;
    void *saved_ctx = m->input_ctx;
    if (o->uint8_input) detr_set_input_hook(m, input_batch_set_images, &set);
    coco_eval_clear_detections(gt);
    int Q = m->cfg.queries, C1 = m->C1, rc = 0;
    int *labels = malloc((size_t)Q * sizeof(int));           /* [Q] */
    float *scores = malloc((size_t)Q * sizeof(float));       /* [Q] */
    float *boxes = malloc((size_t)Q * 4 * sizeof(float));    /* [Q, 4] xywh pixels */
    LoaderBatch *b;
    int got;
    if (loader_start_epoch(ld, 0, 0) != 0) {
        snprintf(err, errlen, "evaluation: cannot start the val loader");
        rc = -1;
    }
    while (rc == 0 && (got = loader_next(ld, &b, 600.0, err, errlen)) != 0) {
        if (got < 0) {
            rc = -1;
            break;
        }
        if (o->uint8_input) {
            input_batch_from_loader(&in, b);
            if (stager) input_batch_upload_async(&in, stager);
            detr_forward(m, NULL, b->mask, b->B, b->H, b->W, 0, 0);
            input_batch_wait_copied(&in); /* before the slot goes back to the loader */
        } else {
            detr_forward(m, b->images, b->mask, b->B, b->H, b->W, 0, 0);
        }
        int L = m->L;
        for (int i = 0; i < b->B && rc == 0; i++) {
            /* the final decoder layer's predictions of image i */
            const float *lg = m->logits_host + ((size_t)(L - 1) * b->B + i) * Q * C1; /* [Q, C1] */
            const float *bx = m->boxes_host + ((size_t)(L - 1) * b->B + i) * Q * 4;   /* [Q, 4] */
            detr_postprocess(lg, bx, Q, C1, b->orig_w[i], b->orig_h[i], labels, scores, boxes);
            if (coco_eval_add_detections(gt, b->image_ids[i], Q, labels, boxes, scores) != 0) {
                snprintf(err, errlen, "evaluation: %s", coco_eval_last_error(gt));
                rc = -1;
            }
            out->images++;
        }
        loader_release(ld, b);
    }
    loader_destroy(ld);
    if (o->uint8_input) detr_set_input_hook(m, saved_hook, saved_ctx);
    input_stager_destroy(stager);
    free(labels);
    free(scores);
    free(boxes);
    if (rc == 0 && coco_eval_run(gt, &out->r, err, errlen) != 0) rc = -1;
    if (rc == 0 && o->detections_out &&
        coco_eval_write_results(gt, o->detections_out, err, errlen) != 0) {
        coco_eval_result_free(&out->r);
        rc = -1;
    }
    out->seconds = timer_now() - t0;
    return rc;
}
