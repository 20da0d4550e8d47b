/* train_loop.c - see train_loop.h */
#include "train_loop.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../dataloader/loader.h"
#include "../dataloader/synth.h"
#include "checkpoint.h"
#include "evaluate.h"
#include <jansson.h>
#include <signal.h>
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

/* Set by SIGINT/SIGTERM: finish the step, checkpoint, exit 130/143. */
static volatile sig_atomic_t g_stop_signal;

static void on_stop_signal(int sig) { g_stop_signal = sig; }

/* The options that change results, as JSON (checkpoints refuse a resume that changes them). */
static char *run_json(const TrainLoopConfig *c) {
    json_t *o = json_object();
    json_object_set_new(o, "batch", json_integer(c->batch));
    json_object_set_new(o, "accum", json_integer(c->accum));
    json_object_set_new(o, "seed", json_integer((json_int_t)c->seed));
    json_object_set_new(o, "data", c->data ? json_string(c->data) : json_null());
    json_object_set_new(o, "ann", c->ann ? json_string(c->ann) : json_null());
    json_object_set_new(o, "scales", c->scales ? json_string(c->scales) : json_null());
    json_object_set_new(o, "max_size", json_integer(c->max_size));
    json_object_set_new(o, "resize_choices", c->resize_choices ? json_string(c->resize_choices) : json_null());
    json_object_set_new(o, "crop", c->crop ? json_string(c->crop) : json_null());
    json_object_set_new(o, "group_by_aspect", json_integer(c->group_by_aspect));
    json_object_set_new(o, "max_pixels", json_integer(c->max_pixels));
    char *text = json_dumps(o, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(o);
    return text;
}

static Loader *make_loader(const TrainLoopConfig *c, const Dataset *ds, char *err, size_t errlen) {
    LoaderConfig lc;
    loader_config_default(&lc);
    lc.batch = c->batch;
    lc.workers = c->workers;
    /* the consumer holds accum batches at once, plus one being prepared */
    lc.prefetch = c->prefetch > c->accum + 1 ? c->prefetch : c->accum + 1;
    lc.seed = c->seed;
    lc.group_by_aspect = c->group_by_aspect;
    lc.strict = c->strict;
    if (c->max_pixels > 0) lc.max_pixels = c->max_pixels;
    if (transform_config_from_options(&lc.tf, 1, c->scales, c->max_size, 0, c->resize_choices,
                                      c->crop, err, errlen) != 0)
        return NULL;
    return loader_create(ds, &lc, err, errlen);
}

static void log_step(FILE *log, int step, int epoch, const StepResult *res, float lr, int images,
                     double wait_s, const LoaderStats *st, int H, int W) {
    MemStats ms = mem_stats();
    const LayerLosses *fin = &res->losses.layer[res->losses.L - 1];
    fprintf(log, "{\"step\":%d,\"epoch\":%d,\"loss\":%.6f,\"loss_ce\":%.6f,\"loss_bbox\":%.6f,"
            "\"loss_giou\":%.6f,\"class_error\":%.3f,\"grad_norm\":%.6f,\"lr\":%.3g,\"images\":%d,"
            "\"step_s\":%.4f,\"data_wait_s\":%.4f,\"images_per_s\":%.3f,\"batch_hw\":[%d,%d],"
            "\"padded_fraction\":%.4f,\"skipped\":%d,\"mem_peak_bytes\":%zu}\n",
            step, epoch, res->losses.total, fin->loss_ce, fin->loss_bbox, fin->loss_giou,
            fin->class_error, res->grad_norm, lr, images, res->seconds, wait_s,
            images / (res->seconds + wait_s), H, W, st->padded_fraction, st->skipped, ms.total_peak);
}

static int save_checkpoint(const TrainLoopConfig *c, Trainer *tr, int step, int epoch,
                           int64_t pos, int64_t per_epoch, float lr, float lr_bb, const char *rj) {
    char err[8192];
    CheckpointState cs = {.step = step, .epoch = pos >= per_epoch ? epoch + 1 : epoch,
                          .batch_pos = pos >= per_epoch ? 0 : pos, .seed = c->seed, .lr = lr,
                          .lr_backbone = lr_bb, .run_json = rj};
    if (checkpoint_save(c->out, &cs, tr->m, &tr->opt, c->keep_last, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: checkpoint at step %d not written: %s (the previous checkpoint is "
                "intact)\n", step, err);
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
    Loader *ld = make_loader(c, ds, err, sizeof(err));
    if (!ld) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    char *rj = run_json(c);
    Trainer tr;
    trainer_init(&tr, m, &c->oc);
    int step = 0, start_epoch = 0, rc = 0;
    int64_t start_pos = 0;
    if (c->resume) {
        CheckpointState cs = {.run_json = rj};
        const char *from = *c->resume ? c->resume : c->out;
        if (checkpoint_load(from, &cs, m, &tr.opt, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: --resume: %s\n", err);
            rc = 2;
        } else {
            tr.step = step = (int)cs.step;
            start_epoch = cs.epoch;
            start_pos = cs.batch_pos;
            printf("resumed from %s: step %d, epoch %d, batch %lld\n", cs.path, step, start_epoch,
                   (long long)start_pos);
        }
    }
    snprintf(path, sizeof(path), "%s/train.jsonl", c->out);
    FILE *log = rc ? NULL : fopen(path, c->resume ? "a" : "w");
    if (!rc && !log) {
        fprintf(stderr, "error: cannot write %s\n", path);
        rc = 2;
    }
    CocoEval *gt = NULL;
    if (!rc && val && c->eval_every > 0 && !(gt = coco_eval_load_gt(val->ann_path, err, sizeof(err)))) {
        fprintf(stderr, "error: %s\n", err);
        rc = 2;
    }
    if (rc) {
        if (log) fclose(log);
        trainer_free(&tr);
        loader_destroy(ld);
        free(rj);
        return rc;
    }
    const DetrConfig *mc = &m->cfg;
    int64_t per_epoch = loader_batches_per_epoch(ld);
    int steps_per_epoch = (int)((per_epoch + c->accum - 1) / c->accum);
    printf("detr-train: ResNet-%d, hidden %d, %d heads, %d+%d layers, FFN %d, %d queries, %d classes, "
           "%zu trainable parameters\n", mc->depth, mc->hidden, mc->nheads, mc->enc_layers,
           mc->dec_layers, mc->ffn, mc->queries, mc->num_classes, detr_num_trainable(m));
    printf("data: %s (%lld images%s), %lld batches of %d per epoch (%d steps of %d x %d images), "
           "%d workers\n", ds->ann_path, (long long)ds->n_images, ds->from_cache ? ", index from cache" : "",
           (long long)per_epoch, c->batch, steps_per_epoch, c->accum, c->batch, c->workers);
    if (gt)
        printf("eval: %s (%lld images) every %d epoch%s\n", val->ann_path, (long long)val->n_images,
               c->eval_every, c->eval_every > 1 ? "s" : "");
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    g_stop_signal = 0;

    int n_slots = c->accum;
    ImageTargets *targets = calloc((size_t)c->batch * n_slots, sizeof(ImageTargets));
    LoaderBatch **held = calloc((size_t)n_slots, sizeof(LoaderBatch *));
    MicroBatch *mb = calloc((size_t)n_slots, sizeof(MicroBatch));
    int total_steps = steps_per_epoch * c->epochs;
    if (c->steps > 0 && c->steps < total_steps) total_steps = c->steps;
    double ema = 0, t_start = timer_now(), t_train = 0, last_draw = 0;
    int tty = isatty(STDOUT_FILENO), steps_here = 0;
    float lr = c->oc.lr, lr_bb = c->oc.lr_backbone;
    int epoch = start_epoch;
    int64_t pos = start_pos;
    for (; epoch < c->epochs && rc == 0 && step < total_steps && !g_stop_signal; epoch++) {
        pos = epoch == start_epoch ? start_pos : 0;
        if (loader_start_epoch(ld, epoch, pos) != 0) {
            fprintf(stderr, "error: cannot start epoch %d at batch %lld\n", epoch, (long long)pos);
            rc = 1;
            break;
        }
        lr = lr_at_epoch(c->oc.lr, epoch, c->oc.lr_drop);
        lr_bb = lr_at_epoch(c->oc.lr_backbone, epoch, c->oc.lr_drop);
        int epoch_done = 0;
        while (rc == 0 && step < total_steps && !g_stop_signal) {
            /* up to accum batches of this epoch make one step */
            int n = 0, images = 0, got = 1;
            double wait = 0;
            while (n < c->accum && (got = loader_next(ld, &held[n], 600.0, err, sizeof(err))) == 1) {
                LoaderBatch *b = held[n];
                if (labels_in_range(b, mc->num_classes, err, sizeof(err)) != 0) {
                    n++;
                    got = -2;
                    break;
                }
                batch_targets(b, targets + (size_t)n * c->batch);
                mb[n] = (MicroBatch){b->images, b->mask, targets + (size_t)n * c->batch, b->B, b->H, b->W};
                images += b->B;
                wait += b->stats.wait_s;
                n++;
            }
            if (got < 0) {
                fprintf(stderr, "error: %s%s\n", got == -1 ? "data loader: " : "", err);
                rc = got == -1 ? 1 : 2;
            }
            StepResult res;
            if (rc == 0 && n > 0) {
                uint64_t step_seed = rng_hash64(c->seed, 0x5eed0000u + (uint64_t)step);
                if (trainer_step_accum(&tr, mb, n, lr, lr_bb, step_seed, &res, err, sizeof(err)) != 0) {
                    fprintf(stderr, "error: training stopped: %s\n", err);
                    rc = 1;
                }
            }
            LoaderStats st = n ? held[n - 1]->stats : (LoaderStats){0};
            int H = n ? held[n - 1]->H : 0, W = n ? held[n - 1]->W : 0;
            for (int k = 0; k < n; k++) loader_release(ld, held[k]);
            if (rc == 0 && n == 0) epoch_done = 1;
            if (rc || n == 0) break; /* failure, or the end of the epoch */
            step++;
            steps_here++;
            pos += n;
            t_train += res.seconds;
            ema = steps_here > 1 ? 0.9 * ema + 0.1 * res.losses.total : res.losses.total;
            log_step(log, step, epoch, &res, lr, images, wait, &st, H, W);
            int milestone = step % c->log_every == 0 || steps_here == 1 || step == total_steps;
            double now = timer_now();
            if (milestone || (tty && now - last_draw > 0.25)) {
                /* on a terminal the line is redrawn in place and kept at milestones */
                const LayerLosses *fin = &res.losses.layer[res.losses.L - 1];
                double elapsed = now - t_start;
                double eta = elapsed / steps_here * (total_steps - step);
                printf("%sepoch %d step %5d/%d  loss %.4f (avg %.4f)  ce %.3f  l1 %.3f  giou %.3f  "
                       "%.1f img/s  data wait %.0f ms  ETA %.0fs  mem peak %.0f MiB%s",
                       tty ? "\r\033[K" : "", epoch, step, total_steps, res.losses.total, ema,
                       fin->loss_ce, fin->loss_bbox, fin->loss_giou,
                       steps_here * (double)c->batch * c->accum / elapsed, wait * 1e3, eta,
                       mem_stats().total_peak / 1048576.0, tty && !milestone ? "" : "\n");
                fflush(stdout);
                last_draw = now;
            }
            if (c->checkpoint_every > 0 && step % c->checkpoint_every == 0)
                save_checkpoint(c, &tr, step, epoch, pos, per_epoch, lr, lr_bb, rj);
        }
        if (rc || g_stop_signal) break;
        if (!epoch_done) { /* --steps reached inside the epoch: check whether it is complete */
            LoaderBatch *b;
            if (loader_next(ld, &b, 600.0, err, sizeof(err)) == 1) {
                loader_release(ld, b);
                break; /* more batches: the run ends mid-epoch at pos */
            }
        }
        pos = per_epoch; /* the epoch is complete */
        int last_epoch = epoch + 1 == c->epochs || step >= total_steps;
        if (gt && ((epoch + 1) % c->eval_every == 0 || last_epoch) &&
            run_eval(c, m, val, gt, log, epoch, step) != 0)
            rc = 1;
        if (rc == 0 && c->checkpoint_every == 0 && !last_epoch)
            save_checkpoint(c, &tr, step, epoch, pos, per_epoch, lr, lr_bb, rj);
    }
    if (pos >= per_epoch && epoch > 0 && (epoch >= c->epochs || step >= total_steps))
        epoch--; /* the loop's increment went past the last trained epoch */
    if (rc == 0 && steps_here > 0) {
        double elapsed = timer_now() - t_start;
        printf("trained %d steps in %.1f s (%.2f images/s; %.0f%% of the time in training steps)\n",
               steps_here, elapsed, steps_here * (double)c->batch * c->accum / elapsed,
               100.0 * t_train / elapsed);
        if (save_checkpoint(c, &tr, step, epoch, pos, per_epoch, lr, lr_bb, rj) != 0) rc = 1;
        snprintf(path, sizeof(path), "%s/model.safetensors", c->out);
        if (weights_save(m, path, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
        } else {
            printf("weights: %s\ncheckpoints: %s/checkpoint-*.safetensors\nlog: %s/train.jsonl\n", path,
                   c->out, c->out);
        }
    }
    if (g_stop_signal) {
        printf("\nstopped by signal %d after step %d: checkpoint written, exiting\n", (int)g_stop_signal, step);
        rc = 128 + (int)g_stop_signal;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    fclose(log);
    coco_eval_free(gt);
    free(targets);
    free(held);
    free(mb);
    free(rj);
    trainer_free(&tr);
    loader_destroy(ld);
    return rc;
}
