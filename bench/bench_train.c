/* bench_train: training-step throughput of the C trainer on fixed-size synthetic batches, with
 * the per-phase time and achieved GFLOP/s, the machine's measured sgemm peak (CPU), and on a GPU
 * the caching allocator's peak memory.
 *
 * Backend and precision as detr-train selects them: --device cuda calls cuda_device_init(0) and
 * trains on backend_cuda(); --amp bf16|fp16 calls the backend's set_precision (on the CPU the low
 * types are emulated: same numbers, slower), and fp16 scales the loss as detr-train does
 * (trainer_enable_loss_scaling, torch's GradScaler defaults).
 *
 * Timing: each step is timed from before trainer_step to after the backend's synchronize, so
 * GPU work still queued at the end of a step (the AdamW kernels) counts in its step; the batch
 * is drawn before the clock starts (its upload to the device is inside the step, as the
 * PyTorch side's .to(device) is). Peak memory on a GPU: the allocator's peaks are reset after
 * the warm-up steps, so they are those of the timed steps (torch.cuda.max_memory_allocated
 * after reset_peak_memory_stats on the PyTorch side).
 *
 * Prints one JSON object per batch size on stdout, each as soon as it is measured (so a run
 * cut short keeps the sizes already done); bench/run_bench.py and bench/gpu_bench.py read them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "detr.h"
#include "mem.h"
#include "runtime.h"
#include "synth_batch.h"
#include "timer.h"
#include "sgemm_peak.h"
#include "train.h"
#ifdef DETR_CUDA
#include "cuda/backend_cuda.h"
#include "cuda/backend_cuda_table.h"
#endif

#define MAX_BATCHES 16

/* "N" or "HxW" -> H, W (each 32..8192). Returns 0 or -1. */
static int parse_size(const char *s, int *H, int *W) {
    char *end;
    long h = strtol(s, &end, 10), w = h;
    if (end != s && (*end == 'x' || *end == 'X')) {
        const char *ws = end + 1;
        w = strtol(ws, &end, 10);
        if (end == ws) return -1;
    }
    if (end == s || *end || h < 32 || w < 32 || h > 8192 || w > 8192) return -1;
    *H = (int)h, *W = (int)w;
    return 0;
}

/* "2,4,8" -> batches[]; returns the count, or -1. */
static int parse_batches(const char *s, int *batches) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long b = strtol(p, &end, 10);
        if (end == p || b < 1 || b > 4096 || n == MAX_BATCHES || (*end && *end != ',')) return -1;
        batches[n++] = (int)b;
        p = *end ? end + 1 : end;
    }
    return n;
}

static int parse_amp(const char *s, Precision *p) {
    if (!strcmp(s, "off")) *p = PRECISION_FP32;
    else if (!strcmp(s, "bf16")) *p = PRECISION_BF16;
    else if (!strcmp(s, "fp16")) *p = PRECISION_FP16;
    else return -1;
    return 0;
}

/* The backend of --device, as detr-train's select_backend (NULL with a message). */
static const Backend *select_backend(const char *device) {
    if (!strcmp(device, "cpu")) return backend_cpu();
    if (strcmp(device, "cuda") != 0) {
        fprintf(stderr, "error: --device '%s': use cpu or cuda\n", device);
        return NULL;
    }
#ifdef DETR_CUDA
    char err[1024];
    if (cuda_device_init(0, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s", err);
        return NULL;
    }
    return backend_cuda();
#else
    fprintf(stderr, "error: --device cuda: this bench_train was built without CUDA\nHINT: rebuild "
            "with make CUDA=1 (needs the CUDA toolkit), or use --device cpu.\n");
    return NULL;
#endif
}

static void reset_device_peaks(const Backend *be) {
#ifdef DETR_CUDA
    if (be != backend_cpu()) cuda_reset_peak_memory_stats();
#else
    (void)be;
#endif
}

/* ,"peak_allocated_bytes":..,"peak_reserved_bytes":.. of the GPU's caching allocator (since
 * the last reset); nothing on the CPU backend. */
static void print_device_peaks(const Backend *be) {
#ifdef DETR_CUDA
    if (be == backend_cpu()) return;
    DevCacheStats st = cuda_memory_stats();
    printf(",\"peak_allocated_bytes\":%zu,\"peak_reserved_bytes\":%zu", st.total.allocated.peak,
           st.total.reserved.peak);
#else
    (void)be;
#endif
}

typedef struct {
    int warmup, steps;
    uint64_t seed;
    const char *preset, *device, *amp;
    int H, W;
    double sgemm_peak_gflops; /* < 0: not measured */
} BenchSetup;

/* Warm-up and timed steps at batch size B; prints the JSON line. Returns 0, or 1 after a
 * failed step (message printed). */
static int bench_batch(const BenchSetup *bs, Detr *m, Trainer *tr, const OptimConfig *oc, int B) {
    const Backend *be = m->be;
    SynthBatch sb;
    synth_batch_alloc(&sb, B, bs->H, bs->W, 3);
    double phase[PHASE_N] = {0}, flops[PHASE_N] = {0}, total = 0, fastest = 0, slowest = 0;
    int skipped = 0;
    char err[4096];
    for (int s = 0; s < bs->warmup + bs->steps; s++) {
        if (s == bs->warmup) reset_device_peaks(be);
        synth_batch_fill(&sb, bs->seed, (uint64_t)s * B, m->cfg.num_classes, 3, 1);
        StepResult res;
        be->synchronize();
        double t0 = timer_now();
        int rc = trainer_step(tr, sb.images, sb.mask, sb.targets, B, bs->H, bs->W, oc->lr,
                              oc->lr_backbone, bs->seed + s, &res, err, sizeof(err));
        be->synchronize();
        double dt = timer_now() - t0;
        if (rc != 0) {
            fprintf(stderr, "error: batch %d, step %d: %s\n", B, s + 1, err);
            synth_batch_free(&sb);
            return 1;
        }
        if (s < bs->warmup) continue;
        skipped += res.skipped;
        total += dt;
        if (s == bs->warmup || dt < fastest) fastest = dt;
        if (dt > slowest) slowest = dt;
        for (int p = 0; p < PHASE_N; p++) phase[p] += m->phase_s[p], flops[p] += m->phase_flops[p];
    }
    double all_flops = 0;
    for (int p = 0; p < PHASE_N; p++) all_flops += flops[p];
    int S = bs->steps;
    printf("{\"impl\":\"c\",\"preset\":\"%s\",\"device\":\"%s\",\"amp\":\"%s\",\"batch\":%d,",
           bs->preset, bs->device, bs->amp, B);
    if (bs->H == bs->W) printf("\"size\":%d,", bs->H);
    else printf("\"size\":\"%dx%d\",", bs->H, bs->W);
    printf("\"height\":%d,\"width\":%d,\"warmup\":%d,\"steps\":%d,\"images_per_s\":%.4f,"
           "\"step_ms\":%.2f,\"step_ms_min\":%.2f,\"step_ms_max\":%.2f,\"gflops\":%.2f,"
           "\"skipped_steps\":%d",
           bs->H, bs->W, bs->warmup, S, S * B / total, 1e3 * total / S, 1e3 * fastest,
           1e3 * slowest, all_flops / total * 1e-9, skipped);
    print_device_peaks(be);
    printf(",\"host_mem_peak_bytes\":%zu", mem_stats().total_peak);
    if (bs->sgemm_peak_gflops >= 0) printf(",\"sgemm_peak_gflops\":%.2f", bs->sgemm_peak_gflops);
    /* Phase times are host wall times between the trainer's phase marks: on a GPU they include
     * waits at synchronising calls and miss work still queued, so they are indicative only. */
    printf(",\"phases\":{");
    for (int p = 0; p < PHASE_N; p++)
        printf("%s\"%s\":{\"ms\":%.2f,\"gflops\":%.2f}", p ? "," : "", PHASE_NAMES[p],
               1e3 * phase[p] / S, phase[p] > 0 ? flops[p] / phase[p] * 1e-9 : 0.0);
    printf("}}\n");
    fflush(stdout);
    synth_batch_free(&sb);
    return 0;
}

int main(int argc, char **argv) {
    runtime_configure_openmp(argv);
    int batch = 8, warmup = 2, steps = 5, threads = 0, peak = 0;
    const char *size_text = "128", *batches_text = NULL, *device = "cpu", *amp = "off";
    uint64_t seed = 1;
    CliOption o[48] = {
        {"batch", OPT_INT, &batch, "N", "images per step (default 8)", NULL},
        {"batches", OPT_STR, &batches_text, "LIST", "several batch sizes in turn, e.g. 2,4,8 (one JSON line each; overrides --batch)", NULL},
        {"size", OPT_STR, &size_text, "N|HxW", "image size: N x N, or H x W, e.g. 800x1066 (default 128)", NULL},
        {"warmup", OPT_INT, &warmup, "N", "untimed steps first, per batch size (default 2)", NULL},
        {"steps", OPT_INT, &steps, "N", "timed steps per batch size (default 5)", NULL},
        {"threads", OPT_INT, &threads, "N", "threads (default all cores)", NULL},
        {"seed", OPT_U64, &seed, "N", "seed", NULL},
        {"device", OPT_STR, &device, "cpu|cuda", "backend: cpu (default) or cuda (GPU 0; CUDA builds)", NULL},
        {"amp", OPT_STR, &amp, "off|bf16|fp16", "precision of convolutions and matrix products, as detr-train --amp (default off; emulated on the CPU)", NULL},
        {"sgemm-peak", OPT_FLAG, &peak, NULL, "also measure the sgemm peak (2048^3, CPU)", NULL},
    };
    int n = 10;
    ModelOptions mo;
    n = cli_model_options(o, n, &mo);
    int rc = cli_parse(argc, argv, o, n,
                       "usage: bench_train [--preset tiny|r50] [--device cpu|cuda] [--amp off|bf16|fp16]\n"
                       "                   [--batch N | --batches 2,4,8] [--size N|HxW] [--warmup N] [--steps N]");
    if (rc) return rc > 0 ? 0 : 2;
    BenchSetup bs = {.warmup = warmup, .steps = steps, .seed = seed, .preset = mo.preset,
                     .device = device, .amp = amp, .sgemm_peak_gflops = -1};
    int batches[MAX_BATCHES], nb = 1;
    batches[0] = batch;
    Precision prec;
    if (parse_size(size_text, &bs.H, &bs.W) != 0) {
        fprintf(stderr, "error: --size '%s': give N or HxW, each side 32..8192 (e.g. 800x1066)\n", size_text);
        return 2;
    }
    if (batches_text && (nb = parse_batches(batches_text, batches)) < 1) {
        fprintf(stderr, "error: --batches '%s': give up to %d comma-separated sizes >= 1, e.g. 2,4,8\n",
                batches_text, MAX_BATCHES);
        return 2;
    }
    if (batch < 1 || warmup < 0 || steps < 1) {
        fprintf(stderr, "error: --batch and --steps must be >= 1, --warmup >= 0\n");
        return 2;
    }
    if (parse_amp(amp, &prec) != 0) {
        fprintf(stderr, "error: --amp '%s': use off, bf16 or fp16\n", amp);
        return 2;
    }
    if (runtime_init(threads) != 0) return 2;
    const Backend *be = select_backend(device);
    if (!be) return 2;
    if (prec != PRECISION_FP32 && !be->set_precision) {
        fprintf(stderr, "error: --amp %s: this build's %s backend has no mixed precision (use --amp off)\n",
                amp, be->name);
        return 2;
    }
    if (be->set_precision) be->set_precision(prec);
    DetrConfig cfg;
    if (cli_model_resolve(&mo, NULL, &cfg) != 0) return 2;
    Detr *m = detr_create(&cfg, be, 1);
    detr_init(m, seed);
    OptimConfig oc;
    optim_config_default(&oc);
    Trainer tr;
    trainer_init(&tr, m, &oc);
    if (prec == PRECISION_FP16) trainer_enable_loss_scaling(&tr, 0); /* as detr-train --amp fp16 */
    if (peak) bs.sgemm_peak_gflops = sgemm_peak_flops(2048) * 1e-9; /* CPU; in every line */
    rc = 0;
    for (int i = 0; i < nb && rc == 0; i++) rc = bench_batch(&bs, m, &tr, &oc, batches[i]);
    trainer_free(&tr);
    detr_destroy(m);
    return rc;
}
