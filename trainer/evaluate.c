/* evaluate.c - see evaluate.h */
#include "evaluate.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../dataloader/loader.h"
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
    Loader *ld = loader_create(ds, &lc, err, errlen);
    if (!ld) return -1;
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
        detr_forward(m, b->images, b->mask, b->B, b->H, b->W, 0, 0);
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
