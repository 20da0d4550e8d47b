/* train_loop.h - detr-train's epoch loop: the data loader (dataloader/loader.h) feeding
 * trainer_step, progress lines, a JSON-lines log and the final weights. */
#ifndef DETR_TRAIN_LOOP_H
#define DETR_TRAIN_LOOP_H
#include <stddef.h>
#include <stdint.h>
#include "../dataloader/dataset.h"
#include "config.h"
#include "detr.h"

typedef struct {
    /* data: --data DIR, or --ann FILE --images DIR (+ --val-ann/--val-images for evaluation);
     * neither = the embedded synthetic dataset */
    const char *data, *ann, *images, *cache, *val_ann, *val_images;
    int workers, prefetch, batch, group_by_aspect, strict;
    int64_t max_pixels;
    const char *scales; /* "480,512,..." or NULL for the reference's */
    int max_size;       /* 0 = the reference's 1333 */
    const char *resize_choices, *crop; /* "400,500,600" / "384,600" or NULL for the reference's */
    /* evaluation on the val split: every eval_every epochs (0 = never) and at the end */
    int eval_every, val_size;
    /* schedule */
    int epochs, steps;  /* steps > 0 stops early */
    int accum;          /* micro-batches per optimizer step (effective batch = batch x accum) */
    /* checkpoints in out: every checkpoint_every steps (0 = at each epoch end) and at the end */
    int checkpoint_every, keep_last;
    const char *resume; /* NULL = fresh start; "" = latest in out; else a file or folder */
    int log_every;
    uint64_t seed;
    OptimConfig oc;
    const char *out;    /* OUT/model.safetensors, OUT/train.jsonl */
    /* --profile[=basic|trace] into --db (default OUT/profile.sqlite) */
    const char *profile; /* NULL = off, "" or "basic", "trace" */
    const char *db;
    const char *trace_steps; /* --trace-steps wait:warmup:active[:repeat] (--profile=trace on a GPU);
                                NULL = PROF_SCHEDULE_DEFAULT */
    const char *command_line;
    const char *model_json; /* the model's shape as JSON, for the run record */
    /* memory of the loader's batch slots (LoaderConfig.alloc_host/free_host, e.g. pinned memory
     * for the GPU: cuda_host_alloc_pinned); NULL = ordinary host memory */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *p);
    const char *device; /* recorded in the profile: "cpu" (NULL) or "cuda:0" */
    /* --gpu-preprocess: the loader delivers uint8 batches, copied to the GPU on a copy stream
     * and normalised there (trainer/input_batch.h); needs device "cuda..." */
    int gpu_preprocess;
    /* --amp: precision of the matrix products (backend.h Precision; the caller sets it on the
     * backend). PRECISION_FP16 also scales the loss (loss_scaler.h) from loss_scale_init
     * (<= 0: 65536). */
    Precision amp;
    double loss_scale_init;
} TrainLoopConfig;

/* Opens a split ("train" or "val"). Returns 0, 1 if the split does not exist (val only), or
 * -1 with err. */
int train_open_dataset(const TrainLoopConfig *c, const char *split, Dataset *ds, char *err,
                       size_t errlen);
/* Trains; val may be NULL (no evaluation). Returns the process exit code (0, 1 failure,
 * 2 bad input). */
int train_on_dataset(const TrainLoopConfig *c, Detr *m, const Dataset *ds, const Dataset *val);
/* Evaluates m on val, prints and logs the result; returns the exit code. */
int train_evaluate_only(const TrainLoopConfig *c, Detr *m, const Dataset *val);

/* With a memory budget (limit > 0, not yet in force): estimates the run's need per category at
 * its largest batch (mem_estimate.h) and returns 0 when it fits, printing one line; otherwise
 * prints the estimate per category with a hint and returns EXIT_OOM (2 when the probe fails). */
int train_check_memory(const TrainLoopConfig *c, Detr *m, size_t limit);

#endif
