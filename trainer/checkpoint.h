/* checkpoint.h - training checkpoints: everything --resume needs to continue a run so that, on the
 * CPU, the loss sequence is bitwise identical to an uninterrupted run.
 *
 * One checkpoint is one safetensors file DIR/checkpoint-<step, 8 digits>.safetensors holding
 *   - every model tensor under its reference name (what weights_save writes, so a checkpoint is
 *     also a weights file: weights_load / --weights / detr-infer read it and ignore the rest),
 *   - the AdamW moments: optim.m.<name> and optim.v.<name> [shape of <name>] for every trainable
 *     tensor,
 *   - __metadata__ (strings): format "detr-c checkpoint", checkpoint_version, step (completed
 *     optimizer steps), epoch and batch_pos (the loader position of the NEXT batch:
 *     loader_start_epoch(epoch, batch_pos)), optimizer_step (AdamW's bias-correction count),
 *     seed, lr and lr_backbone (of the last step; StepLR's state is the base rates and lr_drop in
 *     the config plus the epoch), rng (see below), config (JSON: "model" shape and training
 *     switches, "trainable_backbone", "optimizer" hyper-parameters, "run": the caller's options),
 *     loss_scale and loss_scale_growth_tracker (fp16 runs only),
 *     checksum (64-bit hash of every tensor's name and bytes, hex), and the weights' nheads,
 *     dilation, pre_norm.
 * RNG state: every random draw of training is counter-based, a pure function of the seed and a
 * position (dropout: the step's seed from (seed, step); the loader: (seed, epoch, sample)), so
 * seed + step + epoch + batch_pos IS the whole RNG state; there is no generator to save.
 *
 * Writing is crash-safe: the file is written to a temporary file in DIR, fsynced, renamed into
 * place and the folder fsynced (st_writer_save); then DIR/latest.txt (one line: the file name) is
 * replaced the same way; then older checkpoints beyond keep_last are deleted. A kill -9 or a full
 * disk at any moment leaves the previous checkpoint and latest.txt intact; what it can leave is a
 * temporary file "*.tmp.XXXXXX", which loading ignores and the next save deletes. One process
 * writes into a DIR at a time.
 *
 * "Latest": DIR/latest.txt names it; without latest.txt (or if it names no such file) the
 * highest step wins. When the latest file is unreadable (truncated, corrupt bytes: the checksum),
 * loading warns on stderr and falls back to the next lower step, and so on. A file that reads
 * well but does not fit the run (model shape, optimizer, run options) is an error, never skipped.
 *
 * Wiring (detr-train): at the end of a step whose loader batches came up to position
 * (epoch, next batch index): checkpoint_save(out, &s, m, &trainer.opt, keep_last, ...);
 * resume: checkpoint_load(path_or_out, &s, m, &trainer.opt, ...), then trainer.step = s.step,
 * loader_start_epoch(s.epoch, s.batch_pos), and the step seeds continue from s.step. */
#ifndef DETR_CHECKPOINT_H
#define DETR_CHECKPOINT_H
#include <stddef.h>
#include <stdint.h>
#include "detr.h"
#include "optim.h"

#define CHECKPOINT_FORMAT "detr-c checkpoint"
#define CHECKPOINT_VERSION 1
#define CHECKPOINT_LATEST_FILE "latest.txt"

typedef struct {
    /* Saved by checkpoint_save, filled by checkpoint_load: */
    int64_t step;          /* completed optimizer steps */
    int epoch;             /* epoch of the next batch to load */
    int64_t batch_pos;     /* index within that epoch of the next loader batch */
    uint64_t seed;         /* the run's seed */
    float lr, lr_backbone; /* learning rates of the last step */
    /* fp16 dynamic loss scaling (loss_scaler.h): the scale and growth tracker after the last
     * step; loss_scale 0 = none (save: not stored; load: the file has none). */
    double loss_scale;
    int64_t loss_scale_tracker;
    /* Inputs of both: the run's options that must not change on resume, as a JSON object (e.g.
     * {"batch":2,"accum":1,"seed":42,"data":"...","scales":"..."}; the seed belongs here), or
     * NULL (save: none stored; load: not compared). */
    const char *run_json;
    /* Input of checkpoint_load: 1 lets the optimizer hyper-parameters, dropout, aux_loss and the
     * run options differ from the checkpoint's (each difference is then a warning); the model
     * shape and the set of trainable tensors must always match. */
    int allow_changes;
    /* Filled by checkpoint_load: the file that was loaded. */
    char path[4096];
} CheckpointState;

/* Writes DIR/checkpoint-<s->step>.safetensors (DIR is created if missing; one level), points
 * DIR/latest.txt at it, then deletes the checkpoints with a lower step beyond the keep_last
 * newest (keep_last <= 0: keep all; the file just written is never deleted, nor any with a
 * higher step). Returns 0, or -1 with err (disk full, folder not writable, ...): the previous
 * checkpoints and latest.txt are then untouched. */
int checkpoint_save(const char *dir, const CheckpointState *s, Detr *m, const AdamW *opt,
                    int keep_last, char *err, size_t errlen);

/* Loads a checkpoint file, or the latest readable one of a folder (see above), into the model,
 * the optimizer (moments and step count; opt->cfg stays the caller's) and *s. The model and the
 * optimizer must have been created for the same shape and trainable set (e.g. from the run's
 * options). Everything is checked before anything changes: on -1 (err names the file and every
 * difference, missing or mis-shaped tensor) m, opt and *s are untouched. */
int checkpoint_load(const char *path_or_dir, CheckpointState *s, Detr *m, AdamW *opt, char *err,
                    size_t errlen);

/* DIR/checkpoint-<step 8 digits>.safetensors */
void checkpoint_path(const char *dir, int64_t step, char *out, size_t len);
/* The file checkpoint_load(dir) tries first, into path: 0, or -1 if DIR has no checkpoint. */
int checkpoint_find_latest(const char *dir, char *path, size_t len);

#endif
