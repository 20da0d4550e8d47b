/* bench_train: training-step throughput of the C trainer on fixed-size synthetic batches, with
 * the per-phase time and achieved GFLOP/s, and the machine's measured sgemm peak.
 * Prints one JSON object on stdout (bench/run_bench.sh collects them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "detr.h"
#include "runtime.h"
#include "synth_batch.h"
#include "timer.h"
#include "sgemm_peak.h"
#include "train.h"

int main(int argc, char **argv) {
    runtime_configure_openmp(argv);
    int batch = 8, size = 128, warmup = 2, steps = 5, threads = 0, peak = 0;
    uint64_t seed = 1;
    CliOption o[40] = {
        {"batch", OPT_INT, &batch, "N", "images per step (default 8)", NULL},
        {"size", OPT_INT, &size, "N", "image side (default 128)", NULL},
        {"warmup", OPT_INT, &warmup, "N", "untimed steps first (default 2)", NULL},
        {"steps", OPT_INT, &steps, "N", "timed steps (default 5)", NULL},
        {"threads", OPT_INT, &threads, "N", "threads (default all cores)", NULL},
        {"seed", OPT_U64, &seed, "N", "seed", NULL},
        {"sgemm-peak", OPT_FLAG, &peak, NULL, "also measure the sgemm peak (2048^3)", NULL},
    };
    int n = 7;
    ModelOptions mo;
    n = cli_model_options(o, n, &mo);
    int rc = cli_parse(argc, argv, o, n,
                       "usage: bench_train [--preset tiny|r50] [--batch N] [--size N] [--steps N]");
    if (rc) return rc > 0 ? 0 : 2;
    if (runtime_init(threads) != 0) return 2;
    DetrConfig cfg;
    if (cli_model_resolve(&mo, NULL, &cfg) != 0) return 2;
    Detr *m = detr_create(&cfg, backend_cpu(), 1);
    detr_init(m, seed);
    OptimConfig oc;
    optim_config_default(&oc);
    Trainer tr;
    trainer_init(&tr, m, &oc);
    SynthBatch sb;
    synth_batch_alloc(&sb, batch, size, size, 3);
    double phase[PHASE_N] = {0}, flops[PHASE_N] = {0}, total = 0;
    char err[4096];
    for (int s = 0; s < warmup + steps; s++) {
        synth_batch_fill(&sb, seed, (uint64_t)s * batch, cfg.num_classes, 3, 1);
        StepResult res;
        if (trainer_step(&tr, sb.images, sb.mask, sb.targets, batch, size, size, oc.lr,
                         oc.lr_backbone, seed + s, &res, err, sizeof(err)) != 0) {
            fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        if (s < warmup) continue;
        total += res.seconds;
        for (int p = 0; p < PHASE_N; p++) phase[p] += m->phase_s[p], flops[p] += m->phase_flops[p];
    }
    double all_flops = 0;
    for (int p = 0; p < PHASE_N; p++) all_flops += flops[p];
    printf("{\"impl\":\"c\",\"preset\":\"%s\",\"batch\":%d,\"size\":%d,\"steps\":%d,"
           "\"images_per_s\":%.4f,\"step_ms\":%.2f,\"gflops\":%.2f", mo.preset, batch, size, steps,
           steps * batch / total, 1e3 * total / steps, all_flops / total * 1e-9);
    printf(",\"phases\":{");
    for (int p = 0; p < PHASE_N; p++)
        printf("%s\"%s\":{\"ms\":%.2f,\"gflops\":%.2f}", p ? "," : "", PHASE_NAMES[p],
               1e3 * phase[p] / steps, phase[p] > 0 ? flops[p] / phase[p] * 1e-9 : 0.0);
    printf("}");
    if (peak) printf(",\"sgemm_peak_gflops\":%.2f", sgemm_peak_flops(2048) * 1e-9);
    printf("}\n");
    synth_batch_free(&sb);
    trainer_free(&tr);
    detr_destroy(m);
    return 0;
}
