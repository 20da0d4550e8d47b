/* detr-train: trains DETR on the CPU.
 *
 * Two modes:
 *  - golden (numerics check against PyTorch): --weights W --inputs X --targets T.json
 *    --dump-grads G [--steps K]: one forward, loss and backward; G receives every loss term and
 *    grad.<name> of every trainable parameter, and with --steps K, param.<name> after K AdamW
 *    steps on that batch.
 *  - training on generated in-memory synthetic batches (until the data loader lands). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cli.h"
#include "detr.h"
#include "golden.h"
#include "mem.h"
#include "runtime.h"
#include "synth.h"
#include "targets.h"
#include "train.h"
#include "weights.h"

static const char *USAGE =
    "usage: detr-train [options]\n"
    "Trains DETR (ResNet backbone + transformer, Hungarian matching, set loss, AdamW) on the CPU.\n"
    "Without --inputs it trains on generated synthetic batches (--steps, --batch, --image-size)\n"
    "and writes OUT/model.safetensors and OUT/train.jsonl. With --inputs/--targets/--dump-grads it\n"
    "runs the golden check: loss terms and gradients (and parameters after --steps K) to G.\n"
    "Exit codes: 0 ok, 1 failure (e.g. non-finite loss), 2 bad usage or input, 3 out of memory\n"
    "budget (--mem-limit).";

typedef struct {
    const char *weights, *inputs, *targets, *dump_grads, *out;
    int steps, batch, image_size, threads, log_every, version, max_objects;
    uint64_t seed;
    size_t mem_limit;
    OptimConfig oc;
    ModelOptions mo;
    int set_steps;
} Args;

static int parse_args(int argc, char **argv, Args *a) {
    memset(a, 0, sizeof(*a));
    optim_config_default(&a->oc);
    a->steps = 100;
    a->batch = 8;
    a->image_size = 128;
    a->log_every = 10;
    a->seed = 42;
    a->out = "out";
    a->max_objects = 2;
    CliOption o[48] = {
        {"weights", OPT_STR, &a->weights, "FILE", "initial weights (safetensors); shape inferred", NULL},
        {"inputs", OPT_STR, &a->inputs, "FILE", "golden mode: images/mask safetensors", NULL},
        {"targets", OPT_STR, &a->targets, "FILE", "golden mode: targets JSON (list of {labels, boxes})", NULL},
        {"dump-grads", OPT_STR, &a->dump_grads, "FILE", "golden mode: write losses, grads (and params) here", NULL},
        {"steps", OPT_INT, &a->steps, "N", "training steps (golden mode: AdamW steps, default 0)", &a->set_steps},
        {"batch", OPT_INT, &a->batch, "N", "images per step (default 8)", NULL},
        {"image-size", OPT_INT, &a->image_size, "N", "synthetic image side in pixels (default 128)", NULL},
        {"max-objects", OPT_INT, &a->max_objects, "N", "synthetic objects per image, 1..N (default 2)", NULL},
        {"lr", OPT_FLOAT, &a->oc.lr, "LR", "learning rate (default 1e-4)", NULL},
        {"lr-backbone", OPT_FLOAT, &a->oc.lr_backbone, "LR", "backbone learning rate (default 1e-5; 0 freezes it)", NULL},
        {"weight-decay", OPT_FLOAT, &a->oc.weight_decay, "W", "AdamW weight decay (default 1e-4)", NULL},
        {"clip", OPT_FLOAT, &a->oc.clip, "N", "gradient clipping max norm (default 0.1; 0 disables)", NULL},
        {"seed", OPT_U64, &a->seed, "N", "seed of initialisation, data and dropout (default 42)", NULL},
        {"mem-limit", OPT_SIZE, &a->mem_limit, "BYTES", "memory budget, e.g. 2G; beyond it: exit code 3", NULL},
        {"threads", OPT_INT, &a->threads, "N", "CPU threads (default: all cores)", NULL},
        {"log-every", OPT_INT, &a->log_every, "N", "print a progress line every N steps (default 10)", NULL},
        {"out", OPT_STR, &a->out, "DIR", "output folder (default out)", NULL},
        {"version", OPT_FLAG, &a->version, NULL, "print versions of the program and its libraries", NULL},
    };
    int n = 18;
    n = cli_model_options(o, n, &a->mo);
    int rc = cli_parse(argc, argv, o, n, USAGE);
    if (rc) return rc;
    if (a->inputs && !a->set_steps) a->steps = 0;
    if (a->steps < 0 || a->batch < 1 || a->image_size < 32 || a->max_objects < 1) {
        fprintf(stderr, "error: --steps must be >= 0, --batch >= 1, --image-size >= 32, --max-objects >= 1\n");
        return -1;
    }
    if (a->inputs && (!a->targets || !a->dump_grads || !a->weights)) {
        fprintf(stderr, "error: golden mode needs --weights, --inputs, --targets and --dump-grads\n");
        return -1;
    }
    return 0;
}

static Detr *build_model(const Args *a) {
    DetrConfig cfg;
    if (cli_model_resolve(&a->mo, a->weights, &cfg) != 0) return NULL;
    Detr *m = detr_create(&cfg, backend_cpu(), a->oc.lr_backbone > 0);
    detr_init(m, a->seed);
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
    trainer_init(&tr, m, &a->oc);
    StWriter *w = st_writer_new();
    int rc = 0;
    /* forward, loss and backward without dropout; gradients before clipping */
    params_zero_grad(&m->ps);
    detr_forward(m, in.images, in.mask, in.B, in.H, in.W, 0, a->seed);
    DetrLosses losses;
    if (detr_loss_backward(m, t, &tr.lw, 1, 1.0, &losses, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
        goto done;
    }
    golden_add_losses(w, &losses);
    add_params(w, m, "grad.", 1);
    for (int k = 0; k < a->steps; k++) {
        StepResult res; /* a full training step; golden mode defaults to --dropout 0 */
        if (trainer_step(&tr, in.images, in.mask, t, in.B, in.H, in.W, a->oc.lr, a->oc.lr_backbone,
                         a->seed, &res, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
            goto done;
        }
    }
    if (a->steps > 0) add_params(w, m, "param.", 0);
    if (st_writer_save(w, a->dump_grads, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
    }
done:
    st_writer_free(w);
    trainer_free(&tr);
    free(t);
    targets_free(owned, in.B);
    golden_free_inputs(&in);
    return rc;
}

static int ensure_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) return S_ISDIR(st.st_mode) ? 0 : -1;
    return mkdir(dir, 0755);
}

static int run_synthetic(const Args *a, Detr *m) {
    char err[16384], path[4096];
    if (ensure_dir(a->out) != 0) {
        fprintf(stderr, "error: --out %s: cannot create the folder (or a file has that name)\n", a->out);
        return 2;
    }
    snprintf(path, sizeof(path), "%s/train.jsonl", a->out);
    FILE *log = fopen(path, "w");
    if (!log) {
        fprintf(stderr, "error: cannot write %s\n", path);
        return 2;
    }
    const DetrConfig *c = &m->cfg;
    printf("detr-train: ResNet-%d, hidden %d, %d heads, %d+%d layers, FFN %d, %d queries, %d classes, "
           "%zu trainable parameters\n", c->depth, c->hidden, c->nheads, c->enc_layers, c->dec_layers,
           c->ffn, c->queries, c->num_classes, detr_num_trainable(m));
    printf("data: synthetic in-memory batches of %d images of up to %dx%d, 1-%d objects\n", a->batch,
           a->image_size, a->image_size, a->max_objects);
    SynthBatch sb;
    synth_batch_alloc(&sb, a->batch, a->image_size, a->image_size, a->max_objects);
    Trainer tr;
    trainer_init(&tr, m, &a->oc);
    int rc = 0;
    double ema = 0, total_time = 0;
    for (int s = 0; s < a->steps; s++) {
        synth_batch_fill(&sb, a->seed, (uint64_t)s * a->batch, c->num_classes, a->max_objects, 0);
        StepResult res;
        if (trainer_step(&tr, sb.images, sb.mask, sb.targets, sb.B, sb.H, sb.W, a->oc.lr,
                         a->oc.lr_backbone, rng_hash64(a->seed, 0x5eed0000u + s), &res, err,
                         sizeof(err)) != 0) {
            fprintf(stderr, "error: training stopped: %s\n", err);
            rc = 1;
            break;
        }
        double loss = res.losses.total;
        ema = s ? 0.9 * ema + 0.1 * loss : loss;
        total_time += res.seconds;
        MemStats ms = mem_stats();
        const LayerLosses *fin = &res.losses.layer[res.losses.L - 1];
        fprintf(log, "{\"step\":%d,\"loss\":%.6f,\"loss_ce\":%.6f,\"loss_bbox\":%.6f,\"loss_giou\":%.6f,"
                "\"class_error\":%.3f,\"grad_norm\":%.6f,\"seconds\":%.4f,\"images_per_s\":%.3f,"
                "\"mem_peak_bytes\":%zu}\n", s + 1, loss, fin->loss_ce, fin->loss_bbox, fin->loss_giou,
                fin->class_error, res.grad_norm, res.seconds, a->batch / res.seconds, ms.total_peak);
        if ((s + 1) % a->log_every == 0 || s == 0 || s + 1 == a->steps) {
            double eta = total_time / (s + 1) * (a->steps - s - 1);
            printf("step %5d/%d  loss %.4f (avg %.4f)  ce %.3f  l1 %.3f  giou %.3f  %.1f img/s  "
                   "ETA %.0fs  mem peak %.1f MiB\n", s + 1, a->steps, loss, ema, fin->loss_ce,
                   fin->loss_bbox, fin->loss_giou, a->batch / res.seconds, eta,
                   ms.total_peak / 1048576.0);
            fflush(stdout);
        }
    }
    fclose(log);
    if (rc == 0 && a->steps > 0) {
        printf("trained %d steps in %.1f s (%.2f images/s)\n", a->steps, total_time,
               a->steps * a->batch / total_time);
        snprintf(path, sizeof(path), "%s/model.safetensors", a->out);
        if (weights_save(m, path, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
        } else {
            printf("weights: %s\nlog: %s/train.jsonl\n", path, a->out);
        }
    }
    trainer_free(&tr);
    synth_batch_free(&sb);
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
    if (a.mem_limit) mem_set_limit(a.mem_limit);
    if (a.inputs && !a.mo.set_dropout) a.mo.dropout = 0, a.mo.set_dropout = 1; /* golden: no dropout */
    Detr *m = build_model(&a);
    if (!m) return 2;
    rc = a.inputs ? run_golden(&a, m) : run_synthetic(&a, m);
    detr_destroy(m);
    return rc;
}
