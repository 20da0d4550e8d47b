/* train_loop.c - see train_loop.h */
#include "train_loop.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../dataloader/loader.h"
#include "../dataloader/synth.h"
#include "evaluate.h"
#include "mem.h"
#include "timer.h"
#include "train.h"
#include "weights.h"

static int ensure_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) return S_ISDIR(st.st_mode) ? 0 : -1;
    return mkdir(dir, 0755);
}

int train_open_dataset(const TrainLoopConfig *c, const char *split, Dataset *ds, char *err,
                       size_t errlen) {
    char ann[4096], images[4096], dir[4096];
    int val = strcmp(split, "val") == 0;
    const char *a = val ? c->val_ann : c->ann, *im = val ? c->val_images : c->images;
    if (a || im || c->ann || c->images) {
        if (!a && !im && val) return 1; /* explicit files and no val files: no evaluation */
        if (!a || !im) {
            snprintf(err, errlen, "--%sann and --%simages go together (the instances JSON and its image "
                     "folder)", val ? "val-" : "", val ? "val-" : "");
            return -1;
        }
        return dataset_open(a, im, c->cache, ds, err, errlen);
    }
    const char *root = c->data;
    if (!root) {
        if (synth_dataset_default(dir, sizeof(dir), err, errlen) != 0) return -1;
        root = dir;
    }
    if (dataset_find(root, split, ann, sizeof(ann), images, sizeof(images), err, errlen) != 0)
        return val ? 1 : -1;
    return dataset_open(ann, images, c->cache, ds, err, errlen);
}

/* Evaluates on val; prints a line, appends a JSON line to log (if any). Returns 0 or -1. */
static int run_eval(const TrainLoopConfig *c, Detr *m, const Dataset *val, CocoEval *gt, FILE *log,
                    int epoch, int step) {
    char err[4096], path[4096];
    snprintf(path, sizeof(path), "%s/detections.json", c->out);
    EvalOptions eo = {.batch = c->batch, .workers = c->workers, .val_size = c->val_size,
                      .max_size = c->max_size, .detections_out = path};
    EvalSummary es;
    if (evaluate_dataset(m, val, gt, &eo, &es, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    const double *st = es.r.stats;
    printf("eval after epoch %d (step %d): AP %.4f  AP50 %.4f  AP75 %.4f  AR100 %.4f  (%d images, %.1f s; "
           "detections: %s)\n", epoch, step, st[0], st[1], st[2], st[8], es.images, es.seconds, path);
    if (log) {
        fprintf(log, "{\"eval\":{\"epoch\":%d,\"step\":%d,\"images\":%d,\"seconds\":%.3f,\"stats\":[",
                epoch, step, es.images, es.seconds);
        for (int i = 0; i < COCO_EVAL_NUM_STATS; i++) fprintf(log, "%s%.6f", i ? "," : "", st[i]);
        fprintf(log, "]}}\n");
        fflush(log);
    }
    coco_eval_result_free(&es.r);
    return 0;
}

int train_evaluate_only(const TrainLoopConfig *c, Detr *m, const Dataset *val) {
    char err[4096];
    if (ensure_dir(c->out) != 0) {
        fprintf(stderr, "error: --out %s: cannot create the folder (or a file has that name)\n", c->out);
        return 2;
    }
    CocoEval *gt = coco_eval_load_gt(val->ann_path, err, sizeof(err));
    if (!gt) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    int rc = run_eval(c, m, val, gt, NULL, 0, 0) == 0 ? 0 : 1;
    coco_eval_free(gt);
    return rc;
}

/* Views of one loader batch as the criterion's targets. */
static void batch_targets(const LoaderBatch *b, ImageTargets *t) {
    for (int i = 0; i < b->B; i++) t[i] = (ImageTargets){b->n_boxes[i], b->labels[i], b->boxes[i]};
}

static int labels_in_range(const LoaderBatch *b, int num_classes, char *err, size_t errlen) {
    for (int i = 0; i < b->B; i++)
        for (int k = 0; k < b->n_boxes[i]; k++)
            if (b->labels[i][k] < 0 || b->labels[i][k] >= num_classes) {
                snprintf(err, errlen, "image id %lld has category id %d, but the model has %d classes "
                         "(ids 0..%d); HINT: --num-classes %d, or weights with a larger class head",
                         (long long)b->image_ids[i], b->labels[i][k], num_classes, num_classes - 1,
                         b->labels[i][k] + 1);
                return -1;
            }
    return 0;
}

int train_on_dataset(const TrainLoopConfig *c, Detr *m, const Dataset *ds, const Dataset *val) {
    char err[16384], path[4096];
    if (ensure_dir(c->out) != 0) {
        fprintf(stderr, "error: --out %s: cannot create the folder (or a file has that name)\n", c->out);
        return 2;
    }
    LoaderConfig lc;
    loader_config_default(&lc);
    lc.batch = c->batch;
    lc.workers = c->workers;
    lc.prefetch = c->prefetch;
    lc.seed = c->seed;
    lc.group_by_aspect = c->group_by_aspect;
    lc.strict = c->strict;
    if (c->max_pixels > 0) lc.max_pixels = c->max_pixels;
    if (transform_config_from_options(&lc.tf, 1, c->scales, c->max_size, 0, c->resize_choices,
                                      c->crop, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    Loader *ld = loader_create(ds, &lc, err, sizeof(err));
    if (!ld) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    snprintf(path, sizeof(path), "%s/train.jsonl", c->out);
    FILE *log = fopen(path, "w");
    if (!log) {
        fprintf(stderr, "error: cannot write %s\n", path);
        loader_destroy(ld);
        return 2;
    }
    const DetrConfig *mc = &m->cfg;
    int64_t per_epoch = loader_batches_per_epoch(ld);
    printf("detr-train: ResNet-%d, hidden %d, %d heads, %d+%d layers, FFN %d, %d queries, %d classes, "
           "%zu trainable parameters\n", mc->depth, mc->hidden, mc->nheads, mc->enc_layers,
           mc->dec_layers, mc->ffn, mc->queries, mc->num_classes, detr_num_trainable(m));
    printf("data: %s (%lld images%s), %lld batches of %d per epoch, %d workers\n", ds->ann_path,
           (long long)ds->n_images, ds->from_cache ? ", index from cache" : "", (long long)per_epoch,
           c->batch, c->workers);
    CocoEval *gt = NULL;
    if (val && c->eval_every > 0) {
        gt = coco_eval_load_gt(val->ann_path, err, sizeof(err));
        if (!gt) {
            fprintf(stderr, "error: %s\n", err);
            fclose(log);
            loader_destroy(ld);
            return 2;
        }
        printf("eval: %s (%lld images) every %d epoch%s\n", val->ann_path, (long long)val->n_images,
               c->eval_every, c->eval_every > 1 ? "s" : "");
    }
    Trainer tr;
    trainer_init(&tr, m, &c->oc);
    ImageTargets *targets = calloc((size_t)c->batch, sizeof(ImageTargets));
    int rc = 0, step = 0;
    double ema = 0, t_start = timer_now(), t_train = 0, last_draw = 0;
    int tty = isatty(STDOUT_FILENO);
    int total_steps = (int)(per_epoch * c->epochs);
    if (c->steps > 0 && c->steps < total_steps) total_steps = c->steps;
    for (int epoch = 0; epoch < c->epochs && rc == 0 && (c->steps <= 0 || step < c->steps); epoch++) {
        if (loader_start_epoch(ld, epoch, 0) != 0) {
            fprintf(stderr, "error: cannot start epoch %d\n", epoch);
            rc = 1;
            break;
        }
        float lr = lr_at_epoch(c->oc.lr, epoch, c->oc.lr_drop);
        float lr_bb = lr_at_epoch(c->oc.lr_backbone, epoch, c->oc.lr_drop);
        LoaderBatch *b;
        int got;
        while (rc == 0 && (c->steps <= 0 || step < c->steps) &&
               (got = loader_next(ld, &b, 600.0, err, sizeof(err))) != 0) {
            if (got < 0) {
                fprintf(stderr, "error: data loader: %s\n", err);
                rc = 1;
                break;
            }
            if (labels_in_range(b, mc->num_classes, err, sizeof(err)) != 0) {
                fprintf(stderr, "error: %s\n", err);
                loader_release(ld, b);
                rc = 2;
                break;
            }
            batch_targets(b, targets);
            StepResult res;
            uint64_t step_seed = rng_hash64(c->seed, 0x5eed0000u + (uint64_t)step);
            if (trainer_step(&tr, b->images, b->mask, targets, b->B, b->H, b->W, lr, lr_bb, step_seed,
                             &res, err, sizeof(err)) != 0) {
                fprintf(stderr, "error: training stopped: %s\n", err);
                loader_release(ld, b);
                rc = 1;
                break;
            }
            step++;
            t_train += res.seconds;
            const LoaderStats st = b->stats;
            int B = b->B, H = b->H, W = b->W;
            loader_release(ld, b);
            double loss = res.losses.total;
            ema = step > 1 ? 0.9 * ema + 0.1 * loss : loss;
            MemStats ms = mem_stats();
            const LayerLosses *fin = &res.losses.layer[res.losses.L - 1];
            fprintf(log, "{\"step\":%d,\"epoch\":%d,\"loss\":%.6f,\"loss_ce\":%.6f,\"loss_bbox\":%.6f,"
                    "\"loss_giou\":%.6f,\"class_error\":%.3f,\"grad_norm\":%.6f,\"lr\":%.3g,"
                    "\"step_s\":%.4f,\"data_wait_s\":%.4f,\"images_per_s\":%.3f,\"batch_hw\":[%d,%d],"
                    "\"padded_fraction\":%.4f,\"mem_peak_bytes\":%zu}\n",
                    step, epoch, loss, fin->loss_ce, fin->loss_bbox, fin->loss_giou, fin->class_error,
                    res.grad_norm, lr, res.seconds, st.wait_s, B / (res.seconds + st.wait_s), H, W,
                    st.padded_fraction, ms.total_peak);
            int milestone = step % c->log_every == 0 || step == 1 || step == total_steps;
            double now = timer_now();
            if (milestone || (tty && now - last_draw > 0.25)) {
                /* on a terminal the line is redrawn in place and kept at milestones */
                double elapsed = now - t_start;
                double eta = elapsed / step * (total_steps - step);
                printf("%sepoch %d step %5d/%d  loss %.4f (avg %.4f)  ce %.3f  l1 %.3f  giou %.3f  "
                       "%.1f img/s  data wait %.0f ms  ETA %.0fs  mem peak %.0f MiB%s",
                       tty ? "\r\033[K" : "", epoch, step, total_steps, loss, ema, fin->loss_ce,
                       fin->loss_bbox, fin->loss_giou, step * (double)c->batch / elapsed, st.wait_s * 1e3,
                       eta, ms.total_peak / 1048576.0, tty && !milestone ? "" : "\n");
                fflush(stdout);
                last_draw = now;
            }
        }
        int last_epoch = epoch + 1 == c->epochs || (c->steps > 0 && step >= c->steps);
        if (rc == 0 && gt && ((epoch + 1) % c->eval_every == 0 || last_epoch) &&
            run_eval(c, m, val, gt, log, epoch, step) != 0)
            rc = 1;
    }
    fclose(log);
    coco_eval_free(gt);
    if (rc == 0 && step > 0) {
        double elapsed = timer_now() - t_start;
        printf("trained %d steps in %.1f s (%.2f images/s; %.0f%% of the time in training steps)\n",
               step, elapsed, step * (double)c->batch / elapsed, 100.0 * t_train / elapsed);
        snprintf(path, sizeof(path), "%s/model.safetensors", c->out);
        if (weights_save(m, path, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
        } else {
            printf("weights: %s\nlog: %s/train.jsonl\n", path, c->out);
        }
    }
    free(targets);
    trainer_free(&tr);
    loader_destroy(ld);
    return rc;
}
