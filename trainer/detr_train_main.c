/* detr-train: trains DETR on the CPU, or on a GPU with --device cuda (CUDA builds).
 *
 * Two modes:
 *  - golden (numerics check against PyTorch): --weights W --inputs X --targets T.json
 *    --dump-grads G [--steps K]: one forward, loss and backward; G receives every loss term and
 *    grad.<name> of every trainable parameter, and with --steps K, param.<name> after K AdamW
 *    steps on that batch.
 *  - training on a COCO-format dataset through the data loader (--data DIR, or --ann/--images;
 *    default: the embedded synthetic dataset, generated on first use into the cache). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "../profiler/prof_schedule.h"
#include "cli.h"
#include "detr.h"
#include "golden.h"
#include "mem.h"
#include "runtime.h"
#include "train_loop.h"
#include "targets.h"
#include "train.h"
#include "weights.h"
#ifdef DETR_CUDA
#include "cuda/backend_cuda.h"
#include "cuda/backend_cuda_table.h"
#endif

static const char *USAGE =
    "usage: detr-train [options]\n"
    "Trains DETR (ResNet backbone + transformer, Hungarian matching, set loss, AdamW) on the CPU,\n"
    "or on GPU 0 with --device cuda (CUDA_VISIBLE_DEVICES picks which GPU that is).\n"
    "Trains on a COCO-format dataset (--data DIR with annotations/instances_train*.json and\n"
    "train*/, or --ann FILE --images DIR; default: the embedded synthetic dataset) and writes\n"
    "OUT/model.safetensors and OUT/train.jsonl. With --inputs/--targets/--dump-grads it runs the\n"
    "golden check: loss terms and gradients (and parameters after --steps K) to G.\n"
    "Exit codes: 0 ok, 1 failure (e.g. non-finite loss), 2 bad usage or input, 3 out of memory\n"
    "budget (--mem-limit).";

typedef struct {
    const char *weights, *inputs, *targets, *dump_grads, *amp, *device, *save_init;
    const char *gpu_preprocess; /* --gpu-preprocess on|off (NULL: on with --device cuda) */
    const char *recompute;      /* --recompute backbone|none (NULL: none) */
    int threads, version, eval_only;
    size_t mem_limit, max_pixels;
    TrainLoopConfig tl;
    ModelOptions mo;
    int set_steps, set_lr_backbone;
    float loss_scale;
} Args;

static int parse_args(int argc, char **argv, Args *a) {
    memset(a, 0, sizeof(*a));
    TrainLoopConfig *t = &a->tl;
    optim_config_default(&t->oc);
    t->batch = 2;
    t->epochs = 1;
    t->workers = 2;
    t->prefetch = 2;
    t->log_every = 10;
    t->seed = 42;
    t->out = "out";
    t->eval_every = 1;
    t->accum = 1;
    t->keep_last = 3;
    CliOption o[64] = {
        {"weights", OPT_STR, &a->weights, "FILE", "initial weights (safetensors); shape inferred", NULL},
        {"save-init", OPT_STR, &a->save_init, "FILE", "write the initial weights (reference names) to FILE before training, "
         "e.g. to start the PyTorch reference from them", NULL},
        {"inputs", OPT_STR, &a->inputs, "FILE", "golden mode: images/mask safetensors", NULL},
        {"targets", OPT_STR, &a->targets, "FILE", "golden mode: targets JSON (list of {labels, boxes})", NULL},
        {"dump-grads", OPT_STR, &a->dump_grads, "FILE", "golden mode: write losses, grads (and params) here", NULL},
        {"data", OPT_STR, &t->data, "DIR", "COCO-format dataset folder (default: embedded synthetic set)", NULL},
        {"ann", OPT_STR, &t->ann, "FILE", "instances JSON (with --images, instead of --data)", NULL},
        {"images", OPT_STR, &t->images, "DIR", "image folder of --ann", NULL},
        {"cache", OPT_STR, &t->cache, "DIR", "index cache folder (default $XDG_CACHE_HOME/detr)", NULL},
        {"workers", OPT_INT, &t->workers, "N", "data loader threads (default 2)", NULL},
        {"prefetch", OPT_INT, &t->prefetch, "K", "batches prepared ahead (default 2)", NULL},
        {"scales", OPT_STR, &t->scales, "LIST", "train resize scales (default 480,512,...,800; embedded dataset: 64)", NULL},
        {"max-size", OPT_INT, &t->max_size, "N", "longest side after resizing (default 1333; embedded dataset: 64)", NULL},
        {"resize-choices", OPT_STR, &t->resize_choices, "A,B,C", "pre-crop resize sizes (default 400,500,600; embedded dataset: 64,64,64)", NULL},
        {"crop", OPT_STR, &t->crop, "MIN,MAX", "random crop side range (default 384,600; embedded dataset: 64,64)", NULL},
        {"group-by-aspect", OPT_FLAG, &t->group_by_aspect, NULL, "batch images of similar aspect ratio", NULL},
        {"strict", OPT_FLAG, &t->strict, NULL, "stop at the first unreadable sample (default: skip it)", NULL},
        {"max-pixels", OPT_SIZE, &a->max_pixels, "N", "refuse images above N pixels (default 100M)", NULL},
        {"epochs", OPT_INT, &t->epochs, "N", "epochs (default 1)", NULL},
        {"steps", OPT_INT, &t->steps, "N", "stop after N steps (golden mode: AdamW steps, default 0)", &a->set_steps},
        {"batch", OPT_INT, &t->batch, "N", "images per step (default 2, as the reference)", NULL},
        {"lr", OPT_FLOAT, &t->oc.lr, "LR", "learning rate (default 1e-4)", NULL},
        {"lr-backbone", OPT_FLOAT, &t->oc.lr_backbone, "LR", "backbone learning rate (default 1e-5, the reference's with ImageNet weights; the tiny "
         "preset: --lr, as it starts from random weights; 0 freezes it)", &a->set_lr_backbone},
        {"lr-drop", OPT_INT, &t->oc.lr_drop, "N", "multiply the learning rates by 0.1 every N epochs (default 200)", NULL},
        {"weight-decay", OPT_FLOAT, &t->oc.weight_decay, "W", "AdamW weight decay (default 1e-4)", NULL},
        {"clip", OPT_FLOAT, &t->oc.clip, "N", "gradient clipping max norm (default 0.1; 0 disables)", NULL},
        {"seed", OPT_U64, &t->seed, "N", "seed of initialisation, data order, augmentation, dropout (default 42)", NULL},
        {"mem-limit", OPT_SIZE, &a->mem_limit, "BYTES", "memory budget, e.g. 2G; beyond it: exit code 3", NULL},
        {"threads", OPT_INT, &a->threads, "N", "CPU threads (default: all cores)", NULL},
        {"log-every", OPT_INT, &t->log_every, "N", "print a progress line every N steps (default 10)", NULL},
        {"out", OPT_STR, &t->out, "DIR", "output folder (default out)", NULL},
        {"profile", OPT_OPTSTR, &t->profile, "[=basic|trace]", "record steps, phases, memory, loader and eval into SQLite (default basic)", NULL},
        {"db", OPT_STR, &t->db, "FILE", "profile database (default OUT/profile.sqlite; may hold many runs)", NULL},
        {"trace-steps", OPT_STR, &t->trace_steps, "W:WU:A[:R]", "with --profile=trace on a GPU: steps whose CUDA activity is traced, wait:warmup:active[:repeat] (default " PROF_SCHEDULE_DEFAULT ")", NULL},
        {"accum", OPT_INT, &t->accum, "N", "gradient accumulation: N batches per optimizer step (default 1)", NULL},
        {"resume", OPT_OPTSTR, &t->resume, "[PATH]", "continue from a checkpoint file or folder (default: the latest in --out)", NULL},
        {"checkpoint-every", OPT_INT, &t->checkpoint_every, "N", "checkpoint every N steps (default 0: each epoch end; always at the end)", NULL},
        {"keep-last", OPT_INT, &t->keep_last, "N", "checkpoints kept in --out (default 3; 0 = all)", NULL},
        {"val-ann", OPT_STR, &t->val_ann, "FILE", "val instances JSON (with --val-images)", NULL},
        {"val-images", OPT_STR, &t->val_images, "DIR", "image folder of --val-ann", NULL},
        {"eval-every", OPT_INT, &t->eval_every, "N", "COCO evaluation on the val split every N epochs and at the end (default 1; 0 = never)", NULL},
        {"val-size", OPT_INT, &t->val_size, "N", "val transform's short side (default 800; embedded dataset: 64)", NULL},
        {"eval-only", OPT_FLAG, &a->eval_only, NULL, "evaluate --weights on the val split and exit", NULL},
        {"amp", OPT_STR, &a->amp, "off|bf16|fp16", "mixed precision of convolutions and matrix products (fp32 master weights and optimizer; fp16 with dynamic loss scaling); on the CPU emulated, for checking numerics, not speed (default off)", NULL},
        {"loss-scale", OPT_FLOAT, &a->loss_scale, "S", "with --amp fp16: the initial loss scale (default 65536, as torch's GradScaler)", NULL},
        {"device", OPT_STR, &a->device, "cpu|cuda", "where to train: cpu (default) or cuda (GPU 0; CUDA builds)", NULL},
        {"gpu-preprocess", OPT_STR, &a->gpu_preprocess, "on|off", "with --device cuda: the loader delivers uint8 images, copied on a copy stream and normalised on the GPU (default on)", NULL},
        {"recompute", OPT_STR, &a->recompute, "backbone|none", "activation recomputation: backbone keeps only the "
         "ResNet blocks' inputs/outputs and re-runs their convs in the backward (less activation memory, more backbone "
         "compute, bitwise the same results; docs/recompute.md); default none", NULL},
        {"version", OPT_FLAG, &a->version, NULL, "print versions of the program and its libraries", NULL},
    };
    int n = 0;
    while (n < 64 && o[n].name) n++;
    n = cli_model_options(o, n, &a->mo);
    int rc = cli_parse(argc, argv, o, n, USAGE);
    if (rc) return rc;
    if (a->inputs && !a->set_steps) t->steps = 0;
    /* Without ImageNet weights the backbone must learn at the full rate (the tiny preset always
     * starts from random weights unless --weights is given). */
    if (!a->set_lr_backbone && !a->weights && strcmp(a->mo.preset, "tiny") == 0) t->oc.lr_backbone = t->oc.lr;
    /* The embedded dataset's 64x64 images get transforms sized for them (flip only, as the
     * reference's resize/crop pipeline at 64: see dataloader/synth.c), unless overridden. */
    if (!t->data && !t->ann) {
        if (!t->scales) t->scales = "64";
        if (!t->max_size) t->max_size = 64;
        if (!t->resize_choices) t->resize_choices = "64,64,64";
        if (!t->crop) t->crop = "64,64";
        if (!t->val_size) t->val_size = 64;
    }
    t->max_pixels = (int64_t)a->max_pixels;
    if (t->steps < 0 || t->batch < 1 || t->epochs < 1 || t->workers < 1 || t->prefetch < 1 || t->log_every < 1) {
        fprintf(stderr, "error: --steps must be >= 0; --batch, --epochs, --workers, --prefetch and "
                "--log-every >= 1\n");
        return -1;
    }
    if (a->amp && strcmp(a->amp, "off") && strcmp(a->amp, "bf16") && strcmp(a->amp, "fp16")) {
        fprintf(stderr, "error: --amp '%s': use off, bf16 or fp16\n", a->amp);
        return -1;
    }
    if (a->recompute && strcmp(a->recompute, "backbone") && strcmp(a->recompute, "none")) {
        fprintf(stderr, "error: --recompute '%s': use backbone or none\n", a->recompute);
        return -1;
    }
    if (a->device && strcmp(a->device, "cpu") && strcmp(a->device, "cuda")) {
        fprintf(stderr, "error: --device '%s': use cpu or cuda\n", a->device);
        return -1;
    }
    int on_gpu = a->device && !strcmp(a->device, "cuda");
#ifndef DETR_CUDA
    if (on_gpu) {
        fprintf(stderr, "error: --device cuda: this detr-train was built without CUDA (make CUDA=0, or "
                "nvcc was not found)\nHINT: rebuild with make CUDA=1 (needs the CUDA toolkit), or use "
                "--device cpu.\n");
        return -1;
    }
#endif
    if (a->gpu_preprocess && strcmp(a->gpu_preprocess, "on") && strcmp(a->gpu_preprocess, "off")) {
        fprintf(stderr, "error: --gpu-preprocess '%s': use on or off\n", a->gpu_preprocess);
        return -1;
    }
    if (!on_gpu && a->gpu_preprocess && !strcmp(a->gpu_preprocess, "on")) {
        fprintf(stderr, "error: --gpu-preprocess on needs --device cuda: on the CPU the data loader "
                "normalises the images itself (leave the option out, or use --gpu-preprocess off)\n");
        return -1;
    }
    t->gpu_preprocess = on_gpu && !(a->gpu_preprocess && !strcmp(a->gpu_preprocess, "off"));
    t->amp = !a->amp || !strcmp(a->amp, "off") ? PRECISION_FP32
             : !strcmp(a->amp, "bf16")             ? PRECISION_BF16
                                                   : PRECISION_FP16;
    if (a->loss_scale != 0 && (t->amp != PRECISION_FP16 || !(a->loss_scale >= 1) || !isfinite(a->loss_scale))) {
        fprintf(stderr, "error: --loss-scale %g: %s\n", a->loss_scale,
                t->amp != PRECISION_FP16 ? "only --amp fp16 scales the loss (bf16 and float32 need no scaling)"
                                         : "use a finite scale >= 1, e.g. 65536 (the default)");
        return -1;
    }
    t->loss_scale_init = a->loss_scale;
    if (t->data && (t->ann || t->images)) {
        fprintf(stderr, "error: --data conflicts with --ann/--images: give a dataset folder, or an "
                "instances JSON with its image folder, not both\n");
        return -1;
    }
    if (a->eval_only && !a->weights) {
        fprintf(stderr, "error: --eval-only needs --weights (the model to evaluate)\n");
        return -1;
    }
    if (t->profile && *t->profile && strcmp(t->profile, "basic") && strcmp(t->profile, "trace")) {
        fprintf(stderr, "error: --profile=%s: use basic or trace\n", t->profile);
        return -1;
    }
    if (t->db && !t->profile) t->profile = "basic"; /* --db implies profiling */
    if (t->trace_steps) { /* GPU trace schedule (profiler/prof_schedule.h) */
        ProfSchedule sched;
        char err[256];
        if (!t->profile || strcmp(t->profile, "trace") != 0) {
            fprintf(stderr, "error: --trace-steps needs --profile=trace\n");
            return -1;
        }
        if (prof_schedule_parse(t->trace_steps, &sched, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            return -1;
        }
    }
    if (t->accum < 1 || t->checkpoint_every < 0 || t->keep_last < 0) {
        fprintf(stderr, "error: --accum must be >= 1, --checkpoint-every and --keep-last >= 0\n");
        return -1;
    }
    if (t->eval_every < 0 || t->val_size < 0) {
        fprintf(stderr, "error: --eval-every and --val-size must be >= 0\n");
        return -1;
    }
    if (a->inputs && (!a->targets || !a->dump_grads || !a->weights)) {
        fprintf(stderr, "error: golden mode needs --weights, --inputs, --targets and --dump-grads\n");
        return -1;
    }
    return 0;
}

/* The backend of --device: the CPU's, or the GPU's after selecting GPU 0 (NULL with a message
 * when there is no usable GPU). With the GPU, the loader's batch slots become pinned memory. */
static const Backend *select_backend(Args *a) {
    if (!a->device || strcmp(a->device, "cuda") != 0) return backend_cpu();
#ifdef DETR_CUDA
    char err[1024];
    if (cuda_device_init(0, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s", err);
        return NULL;
    }
    a->tl.alloc_host = cuda_host_alloc_pinned;
    a->tl.free_host = cuda_host_free_pinned;
    a->tl.device = "cuda:0";
    return backend_cuda();
#else
    return NULL; /* refused by parse_args */
#endif
}

/* num_classes: from the weights, else --num-classes, else the dataset (0 = none). */
static Detr *build_model(const Args *a, const Backend *be, int dataset_classes) {
    DetrConfig cfg;
    if (cli_model_resolve(&a->mo, a->weights, &cfg) != 0) return NULL;
    if (!a->weights && !a->mo.set_classes && dataset_classes > 0) cfg.num_classes = dataset_classes;
    Detr *m = detr_create(&cfg, be, a->tl.oc.lr_backbone > 0);
    detr_init(m, a->tl.seed);
    /* before any forward: the memory estimate and the golden check see it too */
    if (a->recompute && strcmp(a->recompute, "backbone") == 0) backbone_set_recompute(m->bb, 1);
    if (a->weights) {
        char err[16384];
        if (weights_load(m, a->weights, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            detr_destroy(m);
            return NULL;
        }
    }
    return m;
}

/* Adds a copy of every trainable parameter (or gradient) as <prefix><name>. */
static void add_params(StWriter *w, Detr *m, const char *prefix, int grads) {
    for (int i = 0; i < m->ps.n; i++) {
        const Param *p = &m->ps.p[i];
        if (p->group == GROUP_FROZEN) continue;
        float *h = malloc(p->numel * sizeof(float));
        m->be->download(h, grads ? p->grad : p->data, p->numel * sizeof(float));
        int64_t shape[PARAM_MAX_DIMS];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        char name[PARAM_NAME_LEN + 8];
        snprintf(name, sizeof(name), "%s%s", prefix, p->name);
        st_writer_add_copy(w, name, ST_F32, p->ndim, shape, h);
        free(h);
    }
}

static int run_golden(const Args *a, Detr *m) {
    char err[16384];
    GoldenInputs in;
    if (golden_load_inputs(a->inputs, &in, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    ImageTargetsOwned *owned = NULL;
    if (targets_load_json(a->targets, in.B, &owned, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        golden_free_inputs(&in);
        return 2;
    }
    ImageTargets *t = calloc((size_t)in.B, sizeof(ImageTargets));
    for (int b = 0; b < in.B; b++) t[b] = (ImageTargets){owned[b].n, owned[b].labels, owned[b].boxes};
    Trainer tr;
    trainer_init(&tr, m, &a->tl.oc);
    StWriter *w = st_writer_new();
    float *step_loss = calloc((size_t)a->tl.steps + 1, sizeof(float)); /* [steps] */
    float *step_norm = calloc((size_t)a->tl.steps + 1, sizeof(float)); /* [steps] */
    int rc = 0;
    /* forward, loss and backward without dropout; gradients before clipping */
    params_zero_grad(&m->ps);
    detr_forward(m, in.images, in.mask, in.B, in.H, in.W, 0, a->tl.seed);
    DetrLosses losses;
    if (detr_loss_backward(m, t, &tr.lw, 1, 1.0, &losses, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
        goto done;
    }
    golden_add_losses(w, &losses);
    add_params(w, m, "grad.", 1);
    for (int k = 0; k < a->tl.steps; k++) {
        StepResult res; /* a full training step; golden mode defaults to --dropout 0 */
        if (trainer_step(&tr, in.images, in.mask, t, in.B, in.H, in.W, a->tl.oc.lr,
                         a->tl.oc.lr_backbone, a->tl.seed, &res, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
            goto done;
        }
        step_loss[k] = (float)res.losses.total;
        step_norm[k] = (float)res.grad_norm;
    }
    if (a->tl.steps > 0) {
        add_params(w, m, "param.", 0);
        int64_t ks[1] = {a->tl.steps};
        st_writer_add_f32(w, "steps.loss", 1, ks, step_loss);      /* weighted total per step */
        st_writer_add_f32(w, "steps.grad_norm", 1, ks, step_norm); /* before clipping */
    }
    if (st_writer_save(w, a->dump_grads, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
    }
done:
    st_writer_free(w);
    free(step_loss);
    free(step_norm);
    trainer_free(&tr);
    free(t);
    targets_free(owned, in.B);
    golden_free_inputs(&in);
    return rc;
}

int main(int argc, char **argv) {
    runtime_configure_openmp(argv);
    Args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc > 0 ? 0 : 2;
    if (a.version) {
        runtime_print_versions(stdout);
        return 0;
    }
    if (runtime_init(a.threads) != 0) return 2;
    const Backend *be = select_backend(&a); /* first: no GPU fails before any work */
    if (!be) return 2;
    if (a.tl.amp != PRECISION_FP32 && !strcmp(be->name, "cpu"))
        printf("amp: %s on the CPU is emulated (operands and results rounded around float32 "
               "arithmetic): for checking numerics; it is slower than --amp off\n", a.amp);
    be->set_precision(a.tl.amp); /* training, evaluation and the memory probe */
    /* training sets the budget after its start-up estimate (train_check_memory) */
    if (a.mem_limit && (a.inputs || a.eval_only)) mem_set_limit(a.mem_limit);
    if (a.inputs && !a.mo.set_dropout) a.mo.dropout = 0, a.mo.set_dropout = 1; /* golden: no dropout */
    if (a.inputs) {
        Detr *m = build_model(&a, be, 0);
        if (!m) return 2;
        rc = run_golden(&a, m);
        detr_destroy(m);
        return rc;
    }
    char err[8192];
    Dataset ds, val;
    int have_train = 0, have_val = 0;
    if (!a.eval_only) {
        if (train_open_dataset(&a.tl, "train", &ds, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            return 2;
        }
        have_train = 1;
    }
    int vr = train_open_dataset(&a.tl, "val", &val, err, sizeof(err));
    if (vr < 0 || (vr == 1 && a.eval_only)) {
        fprintf(stderr, "error: %s\n", vr < 0 ? err : "--eval-only: no val split found (give --data with "
                "annotations/instances_val*.json and val*/, or --val-ann and --val-images)");
        if (have_train) dataset_close(&ds);
        return 2;
    }
    have_val = vr == 0;
    if (vr == 1) printf("eval: no val split found: training without evaluation\n");
    Detr *m = build_model(&a, be, have_train ? ds.num_classes : val.num_classes);
    char cmdline[4096] = "", model_json[512] = "null";
    for (int i = 0, used = 0; i < argc && used < (int)sizeof(cmdline) - 1; i++)
        used += snprintf(cmdline + used, sizeof(cmdline) - used, "%s%s", i ? " " : "", argv[i]);
    if (m)
        snprintf(model_json, sizeof(model_json),
                 "{\"depth\":%d,\"dilation\":%d,\"hidden\":%d,\"nheads\":%d,\"enc_layers\":%d,"
                 "\"dec_layers\":%d,\"ffn\":%d,\"queries\":%d,\"num_classes\":%d,\"dropout\":%g,"
                 "\"pre_norm\":%d,\"aux_loss\":%d,\"recompute\":\"%s\"}", m->cfg.depth, m->cfg.dilation,
                 m->cfg.hidden, m->cfg.nheads, m->cfg.enc_layers, m->cfg.dec_layers, m->cfg.ffn,
                 m->cfg.queries, m->cfg.num_classes, m->cfg.dropout, m->cfg.pre_norm, m->cfg.aux_loss,
                 backbone_recompute(m->bb) ? "backbone" : "none");
    a.tl.command_line = cmdline;
    a.tl.model_json = model_json;
    if (!m) {
        rc = 2;
    } else if (a.eval_only) {
        rc = train_evaluate_only(&a.tl, m, &val);
    } else {
        rc = a.save_init && weights_save(m, a.save_init, err, sizeof(err)) != 0 ? 2 : 0;
        if (rc) fprintf(stderr, "error: --save-init: %s\n", err);
        if (rc == 0 && a.mem_limit) rc = train_check_memory(&a.tl, m, a.mem_limit);
        if (rc == 0) {
            if (a.mem_limit) mem_set_limit(a.mem_limit);
            rc = train_on_dataset(&a.tl, m, &ds, have_val ? &val : NULL);
        }
    }
    detr_destroy(m);
    if (have_train) dataset_close(&ds);
    if (have_val) dataset_close(&val);
    return rc;
}
